#!/usr/bin/env bash
# Installs the external programs regionflow's integration tests run for real,
# from Debian's own packages:
#   redis-server  (package redis-server) - tests/common/redis_cluster.rs starts
#                                          a local six-node Redis Cluster
#   redis-cli     (package redis-tools)  - creates that cluster
#   prometheus, promtool (package prometheus) - metrics tests
# and the C libraries the build links (librdkafka with TLS, SASL and every
# compression codec):
#   libssl-dev, libsasl2-dev, libcurl4-openssl-dev, pkg-config (found by pkg-config)
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
    pkg-config:pkg-config
)

# pkg-config module:package pairs, for the libraries the build links.
readonly LIBRARIES=(
    openssl:libssl-dev
    libsasl2:libsasl2-dev
    libcurl:libcurl4-openssl-dev
)

missing_packages() {
    local entry program package module
    local -A seen=()
    for entry in "${REQUIRED[@]}"; do
        program=${entry%%:*}
        package=${entry#*:}
        if ! command -v "$program" >/dev/null 2>&1 && [[ -z ${seen[$package]:-} ]]; then
            seen[$package]=1
            echo "$package"
        fi
    done
    for entry in "${LIBRARIES[@]}"; do
        module=${entry%%:*}
        package=${entry#*:}
        if ! pkg-config --exists "$module" 2>/dev/null && [[ -z ${seen[$package]:-} ]]; then
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
    for entry in "${LIBRARIES[@]}"; do
        module=${entry%%:*}
        pkg-config --exists "$module" 2>/dev/null || echo "$module (pkg-config)"
    done
}

fail() {
    local programs
    programs=$(missing_programs | tr '\n' ' ')
    cat >&2 <<EOF
setup-test-deps: $1
Missing on PATH: ${programs:-nothing?}
The integration tests need Redis 7 (redis-server, redis-cli) and Prometheus (prometheus, promtool);
the build needs OpenSSL, Cyrus SASL and libcurl headers (libssl-dev, libsasl2-dev, libcurl4-openssl-dev) and pkg-config.
  Debian/Ubuntu, as root:  apt-get update && apt-get install -y redis-server redis-tools prometheus libssl-dev libsasl2-dev libcurl4-openssl-dev pkg-config
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
echo "  openssl $(pkg-config --modversion openssl), libsasl2 $(pkg-config --modversion libsasl2), libcurl $(pkg-config --modversion libcurl)"
