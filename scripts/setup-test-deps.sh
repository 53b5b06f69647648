#!/usr/bin/env bash
# Installs the external programs regionflow's integration tests run for real,
# from Debian's own packages:
#   redis-server  (package redis-server) - tests/common/redis_cluster.rs starts
#                                          a local six-node Redis Cluster
#   redis-cli     (package redis-tools)  - creates that cluster
#   prometheus, promtool (package prometheus) - metrics tests
#
# Does nothing but report versions when everything is already on PATH, so it
# is cheap to run before every test run. Needs root or sudo to install.
set -euo pipefail

# program:package pairs; a program missing from PATH means its package is needed.
readonly REQUIRED=(
    redis-server:redis-server
    redis-cli:redis-tools
    prometheus:prometheus
    promtool:prometheus
)

missing_packages() {
    local entry program package
    local -A seen=()
    for entry in "${REQUIRED[@]}"; do
        program=${entry%%:*}
        package=${entry#*:}
        if ! command -v "$program" >/dev/null 2>&1 && [[ -z ${seen[$package]:-} ]]; then
            seen[$package]=1
            echo "$package"
        fi
    done
}

missing_programs() {
    local entry program
    for entry in "${REQUIRED[@]}"; do
        program=${entry%%:*}
        command -v "$program" >/dev/null 2>&1 || echo "$program"
    done
}

fail() {
    local programs
    programs=$(missing_programs | tr '\n' ' ')
    cat >&2 <<EOF
setup-test-deps: $1
Missing on PATH: ${programs:-nothing?}
The integration tests need Redis 7 (redis-server, redis-cli) and Prometheus (prometheus, promtool).
  Debian/Ubuntu, as root:  apt-get update && apt-get install -y redis-server redis-tools prometheus
  Elsewhere: install Redis 7 (https://redis.io/download) and Prometheus (https://prometheus.io/download)
  and put those programs on PATH.
EOF
    exit 1
}

mapfile -t packages < <(missing_packages)

if ((${#packages[@]} > 0)); then
    echo "setup-test-deps: installing ${packages[*]}"
    command -v apt-get >/dev/null 2>&1 || fail "apt-get not found, so cannot install ${packages[*]} (not Debian/Ubuntu?)"

    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        # Without a terminal a password prompt would hang (e.g. in CI): fail instead.
        if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
    else
        fail "not running as root and sudo is not available, so cannot install ${packages[*]}"
    fi

    # `env` because sudo drops most of the caller's environment.
    apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y)
    "${apt[@]}" update || fail "apt-get update failed"
    "${apt[@]}" install --no-install-recommends "${packages[@]}" || fail "apt-get install ${packages[*]} failed"

    mapfile -t still_missing < <(missing_packages)
    ((${#still_missing[@]} == 0)) || fail "installed ${packages[*]} but some programs are still not on PATH"
fi

echo "setup-test-deps: all test dependencies found:"
echo "  $(command -v redis-server): $(redis-server --version)"
echo "  $(command -v redis-cli): $(redis-cli --version)"
echo "  $(command -v prometheus): $(prometheus --version 2>&1 | head -n 1)"
echo "  $(command -v promtool): $(promtool --version 2>&1 | head -n 1)"
