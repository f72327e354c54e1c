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
# Plain Postgres first (monthly partitions), then the suite again on TimescaleDB (a hypertable
# with compression): the end-to-end tests run on both stores.
# --no-fail-fast: one failing test binary must not hide the others' failures. Both passes run
# whatever the first gave; the script fails if either did.
status=0
CLICKFLOW__DATABASE__STORE=postgres cargo test --release --workspace --no-fail-fast -- --test-threads=2 "$@" || status=$?
echo "test.sh: the suite again, on TimescaleDB ($CLICKFLOW_TEST_TIMESCALE)"
# The same cargo flags as the first pass, so nothing is compiled again (the dataflow crates'
# tests, which touch no database, run again in under a minute).
CLICKFLOW_TEST_PG="$CLICKFLOW_TEST_TIMESCALE" CLICKFLOW__DATABASE__STORE=timescale \
  cargo test --release --workspace --no-fail-fast -- --test-threads=2 "$@" || status=$?
exit "$status"
