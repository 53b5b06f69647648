#!/usr/bin/env bash
# regionflow benchmarks, one command (see BENCHMARKS.md).
#
#   scripts/bench.sh              end-to-end benchmark: W1, W2, W3, W1 over
#                                 10M keys, W1 and W2 over 100 keys (dense),
#                                 state at 10M open window-keys,
#                                 latency at half of W1's throughput, then
#                                 the Flink peer (BENCH_FLINK)
#   scripts/bench.sh --criterion  also the criterion micro-benchmarks
#                                 (decode, operator, region layout,
#                                 state encoding)
#   scripts/bench.sh --criterion-only
#   scripts/bench.sh --merge-only the merge function alone on one idle
#                                 redis-server: Redis µs per FCALL of a W1
#                                 entry write (as sent, into new entries,
#                                 without the sole writer's fields,
#                                 capturing its change), vs the floors of
#                                 any function (an empty one; HGETALL +
#                                 HSET, no checks) and a plain HSET
#   scripts/bench.sh -h           this help, with the knobs below
#
# Builds in release (the `bench` profile) and runs benches/end_to_end.rs,
# which starts its own six-node Redis Cluster and librdkafka mock Kafka
# cluster; needs redis-server and redis-cli (scripts/setup-test-deps.sh).
# A full run takes about five minutes on a 2-core machine.
#
# Knobs (environment variables, `_` allowed in numbers):
#   BENCH_EVENTS=1000000       events of the W1/W3 data set
#   BENCH_W2_EVENTS=250000     events of the W2 data set (default events/4:
#                              W2 writes ~4.5 entries per event)
#   BENCH_KEYS=100000          keys of the standard workloads
#   BENCH_HIGH_KEYS=10000000   keys of the high-cardinality W1 variant
#   BENCH_HIGH_EVENTS=$BENCH_EVENTS
#   BENCH_STRESS_KEYS=10000000 open window-keys in the state-at-scale run (0 skips)
#   BENCH_DENSE_KEYS=100       keys of the dense workloads (W1-dense, W2-dense)
#   BENCH_DENSE_EVENTS=        their events (default 3 x BENCH_EVENTS)
#   BENCH_WORKLOADS=w1,w2,w3,w1-10m,w1-dense,w2-dense,latency
#   BENCH_CHANGES=1            rounds of W1 with the change feed on
#                              (region.changes, mode every) against W1
#                              without it; 0 skips, more alternate the order
#   BENCH_PARTITIONS=0         0 = auto (8, more if the mock broker's 5 MiB
#                              per partition would not hold the data)
#   BENCH_COMPRESSION=lz4      producer compression.type
#   BENCH_BROKERS=3            mock Kafka brokers
#   BENCH_LATENCY_SECS=25      length of the live latency run
#   BENCH_LATENCY_RATE=        events/s of the latency run (default: half
#                              of the W1 end-to-end rate just measured)
#   BENCH_LATENCY_EMIT=        the latency run's `emit` (TOML inline), e.g.
#                              '{ mode = "updates", interval = "200ms" }'
#   BENCH_LATENCY_FLUSH=       the latency run's connector.flush_interval
#                              (default: the connector's, 200ms)
#   BENCH_SINK_PIPELINE=1000   commands per pipeline in the sink ceiling
#   BENCH_SINK_INFLIGHT=4      pipelines in flight per primary
#   BENCH_PROFILE_DIR=         if set, `perf record` each connector run there
#   BENCH_PROFILE_SYSTEM=      1: record every process (perf record -a -g),
#                              not just the connector (dwarf call graphs)
#   BENCH_SOURCE_DEBUG=        `k=v;k=v` librdkafka properties: only repeat the
#                              source-ceiling read with them (diagnostics)
#   RUST_LOG=warn              the connector child's log filter
#   BENCH_SUMMARY=target/bench-summary.txt
#                              the run's ceilings, one line per workload
#   BENCH_FLINK=1              then W1 on Apache Flink, compute only, with
#                              regionflow's ceilings as ratios to it
#                              (scripts/flink-peer.sh -h); 0 skips; skipped
#                              with a message where Java is missing
set -euo pipefail

cd "$(dirname "$0")/.."

criterion=false
end_to_end=true
merge_only=false
for arg in "$@"; do
    case "$arg" in
        --criterion) criterion=true ;;
        --criterion-only) criterion=true; end_to_end=false ;;
        --merge-only) merge_only=true; end_to_end=false ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (try -h)" >&2; exit 2 ;;
    esac
done

for program in redis-server redis-cli; do
    command -v "$program" >/dev/null || { echo "bench.sh: $program not on PATH: run scripts/setup-test-deps.sh" >&2; exit 1; }
done

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
echo "== commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"

# The merge function (src/redis/merge.lua, loaded as regionflow does: see
# src/redis/function.rs) on one idle redis-server, against a plain HSET of
# the same fields: Redis's own time per call from INFO commandstats.
merge_function() {
    command -v redis-benchmark >/dev/null || { echo "bench.sh: redis-benchmark not on PATH: run scripts/setup-test-deps.sh" >&2; exit 1; }
    local port dir name key partial attempt tries
    dir=$(mktemp -d)
    trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' RETURN
    # A port below Linux's ephemeral range (32768-), and another one if
    # something holds it.
    for attempt in 1 2 3 4 5; do
        port=$(shuf -i 23000-32000 -n 1)
        redis-server --port "$port" --save '' --appendonly no --daemonize yes --dir "$dir" --logfile "$dir/redis.log"
        tries=0
        until redis-cli -p "$port" ping >/dev/null 2>&1 || [ "$tries" -gt 100 ]; do
            tries=$((tries + 1))
            sleep 0.1
        done
        [ "$tries" -le 100 ] && break
        if [ "$attempt" = 5 ]; then
            echo "bench.sh: redis-server did not start:" >&2; cat "$dir/redis.log" >&2; exit 1
        fi
    done
    name="regionflow_merge_$(sha1sum src/redis/merge.lua | cut -c1-16)"
    { printf '#!lua name=%s\nlocal FUNCTION_NAME = %s\n' "$name" "'$name'"; cat src/redis/merge.lua; } |
        redis-cli -p "$port" -x FUNCTION LOAD REPLACE >/dev/null
    # Floors for any function: an FCALL that does nothing, and one that
    # only reads the entry and writes its fields (no checks at all).
    redis-cli -p "$port" -x FUNCTION LOAD REPLACE >/dev/null <<'LUA'
#!lua name=regionflow_floor
redis.register_function('floor_noop', function(keys, args) return 1 end)
redis.register_function('floor_hgetall_hset', function(keys, args)
  redis.call('HGETALL', keys[1])
  redis.call('HSET', keys[1], args[1], args[5], 'window_start', args[6], 'window_end', args[7], 'count', args[13], 'sum', args[14])
  return 1
end)
LUA
    key='u__rand_int__:1700000010000'
    partial='{"a":[3,1627.5],"e":1,"o":12345}'
    echo "== merge function on one idle redis-server ($(redis-server --version | cut -d' ' -f3)), 200000 writes, 100 per pipeline"
    # Over 100000 keys (about half the writes replace an entry), except
    # FCALL-new: every write a new entry, as `emit = final` writes them.
    # FCALL: the write as the region sends it, with the sole writer's
    # fields (ARGV[12..]); FCALL-merge: without them, so the function
    # decodes, merges and renders; FCALL+c: capturing the entry's change
    # (ARGV[11] = c), as a region with a change feed sends it; floor-*: the
    # same arguments to the floors above, new keys.
    for round in 1 2 3; do
        for variant in FCALL FCALL-new FCALL-merge FCALL+c floor-noop floor-hgetall-hset HSET; do
            local command=FCALL function=$name capture= sole=(11 3 1627.5) keys=100000
            case "$variant" in
                *+c) capture=c ;;
                *-merge) sole=() ;;
                *-new) keys=1000000000 ;;
                floor-*) function=${variant//-/_}; keys=1000000000 ;;
                HSET) command=HSET ;;
            esac
            redis-cli -p "$port" flushall >/dev/null
            redis-cli -p "$port" config resetstat >/dev/null
            if [ "$command" = FCALL ]; then
                redis-benchmark -p "$port" -n 200000 -r "$keys" -P 100 -q FCALL "$function" 1 "$key" _p:bench:0 1 12345 r \
                    "$partial" 1700000010000 1700000020000 n 0 count:count,sum:sum "$capture" "${sole[@]}" >/dev/null
            else
                redis-benchmark -p "$port" -n 200000 -r "$keys" -P 100 -q HSET "$key" _p:bench:0 "$partial" \
                    window_start 1700000010000 window_end 1700000020000 count 3 sum 1627.5 >/dev/null
            fi
            local stat
            stat=$(redis-cli -p "$port" info commandstats | tr -d '\r' | grep "^cmdstat_${command,,}:")
            case "$stat" in
                *failed_calls=0*) ;;
                *) echo "bench.sh: $command failed: $stat" >&2; redis-cli -p "$port" "${command}" 2>&1 | head -1 >&2; exit 1 ;;
            esac
            echo "  round $round: $variant ${stat##*usec_per_call=}" | sed 's/,.*//; s/$/ µs per call/'
        done
    done
}

if $merge_only; then
    merge_function
fi
if $criterion; then
    cargo bench --bench decode --bench operator --bench state_encoding
fi
if $end_to_end; then
    summary=${BENCH_SUMMARY:-target/bench-summary.txt}
    rm -f "$summary"
    cargo bench --bench end_to_end --no-run
    BENCH_SUMMARY=$summary cargo bench --bench end_to_end
    [ "${BENCH_FLINK:-1}" = 0 ] || scripts/flink-peer.sh "$summary"
fi
