#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (redis-server, prometheus/promtool from Debian's packages), checks format
# and lints, then runs every test against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) and retry" >&2
    exit 1
fi

# librdkafka's mock cluster and the Redis Cluster harness use loopback
# ports only; tests start and stop their own servers.
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --workspace -- --test-threads="${REGIONFLOW_TEST_THREADS:-2}"
