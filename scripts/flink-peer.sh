#!/usr/bin/env bash
# The Flink peer of the end-to-end benchmark (issue 14): W1 and W1-dense on
# Apache Flink, compute only (see BENCHMARKS.md, "A peer: Apache Flink").
#
#   scripts/flink-peer.sh [SUMMARY]
#
# Installs the Flink jars (PyPI's apache-flink-libraries) into
# ~/.cache/regionflow/flink-$FLINK_VERSION if they are missing, compiles
# benches/flink/W1Peer.java there and runs it on a local MiniCluster:
# BENCH_KEYS keys over BENCH_EVENTS events (W1), and 100 keys over
# FLINK_DENSE_EVENTS events (W1-dense), at each parallelism. Given the
# summary file the end-to-end bench wrote (BENCH_SUMMARY, as
# scripts/bench.sh runs it), it then prints regionflow's operator and
# decode + operator ceilings as ratios to Flink's rate with as many keys.
# Without java and javac, or without the jars, it says why and exits 0.
#
# Knobs (environment variables, `_` allowed in numbers):
#   FLINK_VERSION=2.2.1        apache-flink-libraries version
#   FLINK_PARALLELISM=1,2      the job's parallelism(s); regionflow's
#                              ceilings are one thread
#   FLINK_RUNS=2               runs per data set and parallelism, best kept
#   BENCH_EVENTS=1000000       events of the W1 run
#   BENCH_KEYS=100000          keys of the W1 run
#   FLINK_DENSE_EVENTS=        events of the 100-key run (default
#                              BENCH_DENSE_EVENTS, else 3 x BENCH_EVENTS,
#                              as the end-to-end bench's W1-dense)
set -euo pipefail

cd "$(dirname "$0")/.."

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
summary=${1:-}

skip() {
    echo "flink-peer: skipped: $*"
    exit 0
}

number() { echo "${1//_/}"; }
version=${FLINK_VERSION:-2.2.1}
parallelism=${FLINK_PARALLELISM:-1,2}
runs=${FLINK_RUNS:-2}
events=$(number "${BENCH_EVENTS:-1000000}")
keys=$(number "${BENCH_KEYS:-100000}")
dense_events=$(number "${FLINK_DENSE_EVENTS:-${BENCH_DENSE_EVENTS:-$((3 * events))}}")

command -v java >/dev/null || skip "java not found (install openjdk-17-jdk-headless)"
command -v javac >/dev/null || skip "javac not found (install openjdk-17-jdk-headless)"
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
[ "${java_major:-0}" -ge 11 ] 2>/dev/null || skip "java $java_major is too old for Flink $version (install openjdk-17-jdk-headless)"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/regionflow/flink-$version"
lib="$cache/pyflink/lib"
if [ ! -f "$lib/flink-dist-$version.jar" ]; then
    echo "== installing apache-flink-libraries==$version (the Flink jars) into $cache"
    staging="$cache.partial"
    rm -rf "$staging"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$staging" \
        "apache-flink-libraries==$version" ||
        { rm -rf "$staging"; skip "could not install apache-flink-libraries==$version from PyPI"; }
    rm -rf "$cache"
    mv "$staging" "$cache"
    [ -f "$lib/flink-dist-$version.jar" ] || skip "apache-flink-libraries==$version has no $lib/flink-dist-$version.jar"
fi

source=benches/flink/W1Peer.java
classes="$cache/classes"
if [ ! -f "$classes/W1Peer.class" ] || [ "$source" -nt "$classes/W1Peer.class" ]; then
    rm -rf "$classes"
    mkdir -p "$classes"
    javac -d "$classes" -cp "$lib/*" "$source"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo
echo "== Flink peer: W1 ($keys keys, $events events) and W1-dense (100 keys, $dense_events events), parallelism $parallelism"
java -cp "$lib/*:$classes" W1Peer --parallelism "$parallelism" --runs "$runs" \
    "$events:$keys" "$dense_events:100" | tee "$out"

if [ -z "$summary" ]; then
    exit 0
fi
if [ ! -s "$summary" ]; then
    echo "flink-peer: no ratios: $summary (the end-to-end bench's summary) is missing or empty"
    exit 0
fi

# Summary lines: `LABEL keys=K events=N operator_events_per_s=R
# decode_operator_events_per_s=R ...`, one per workload row; the W1 rows
# (labels W1...) are set beside Flink's rate at the same key count.
echo
echo "== regionflow's compute ceilings / Flink's compute-only rate (same run)"
echo "Flink's figure has no Kafka, no JSON and no Redis in it: events are made in memory, windowed, and the"
echo "results counted and discarded. regionflow's operator ceiling is the operator core on pre-decoded events,"
echo "one thread; its decode+operator ceiling includes decoding each record's JSON."
awk '
    function field(name,    i) {
        for (i = 2; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
        return ""
    }
    function si(v) { v += 0; return v >= 1e6 ? sprintf("%.2fM", v / 1e6) : sprintf("%.0fk", v / 1e3) }
    FNR == NR {
        if ($1 == "flink") {
            p = field("parallelism"); k = field("keys")
            flink[k, p] = field("events_per_s")
            if (!(p in seen)) { seen[p] = 1; order[++parallelisms] = p }
        }
        next
    }
    $1 ~ /^W1/ {
        label = $1; gsub("_", " ", label); k = field("keys")
        op = field("operator_events_per_s"); dec = field("decode_operator_events_per_s")
        matched = 0
        for (j = 1; j <= parallelisms; j++) {
            p = order[j]
            if (!((k, p) in flink)) continue
            matched = 1; f = flink[k, p]
            printf "%s, %s keys, Flink parallelism %s at %s/s: regionflow operator %s/s / flink = %.2fx; regionflow decode+operator %s/s / flink = %.2fx\n", \
                label, k, p, si(f), si(op), op / f, si(dec), dec / f
        }
        if (!matched) printf "%s, %s keys: no Flink run with as many keys\n", label, k
    }
' "$out" "$summary"
