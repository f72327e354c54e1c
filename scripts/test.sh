#!/usr/bin/env bash
# The whole test suite against a real PostgreSQL and a real Kafka-protocol broker:
# installs what is missing, starts the servers, runs every test, stops the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh --tests
bash scripts/test-env.sh start
trap 'bash scripts/test-env.sh stop' EXIT
# shellcheck disable=SC1091
source .testenv/env
cargo build --release --bins
cargo test --release --workspace -- --test-threads=2 "$@"
