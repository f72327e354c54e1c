#!/usr/bin/env bash
# The whole test suite against a real PostgreSQL (plain, and with TimescaleDB) and a real
# Kafka-protocol broker: installs what is missing, starts the servers, runs every test,
# stops the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh --tests
bash scripts/test-env.sh start
trap 'bash scripts/test-env.sh stop' EXIT
# shellcheck disable=SC1091
source .testenv/env
cargo build --release --bins
# Plain Postgres first (monthly partitions), then every test of the clickflow crate again on
# TimescaleDB (a hypertable with compression): the end-to-end suite runs on both stores.
CLICKFLOW__DATABASE__STORE=postgres cargo test --release --workspace -- --test-threads=2 "$@"
echo "test.sh: the clickflow tests again, on TimescaleDB ($CLICKFLOW_TEST_TIMESCALE)"
CLICKFLOW_TEST_PG="$CLICKFLOW_TEST_TIMESCALE" CLICKFLOW__DATABASE__STORE=timescale \
  cargo test --release -p clickflow --tests -- --test-threads=2 "$@"
