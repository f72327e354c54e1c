#!/usr/bin/env bash
# Starts or stops the servers the test suite runs against: two throwaway PostgreSQL servers
# (plain, and one with TimescaleDB preloaded when it is installed) and a Kafka-protocol broker
# (tansu, sqlite storage). `start` writes .testenv/env with the variables the tests read.
# Idempotent: `start` on a running environment reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ENV_DIR="$ROOT/.testenv"
PG_PORT=${CLICKFLOW_TEST_PG_PORT:-55432}
TS_PORT=${CLICKFLOW_TEST_TIMESCALE_PORT:-55433}
KAFKA_PORT=${CLICKFLOW_TEST_KAFKA_PORT:-19092}
export PATH="$HOME/.cargo/bin:$PATH"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

wait_port() {
  for _ in $(seq 1 100); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "test-env: nothing listening on port $1" >&2
  return 1
}

# A server in $1 on port $2, with extra server options $3.
start_pg() {
  local dir=$1 port=$2 extra=$3 bin; bin=$(pg_bin)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir" -U postgres -A trust --no-sync >/dev/null
  fi
  if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$dir" -w -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 $extra" start >/dev/null
  fi
}

start() {
  mkdir -p "$ENV_DIR/tansu"
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] || { echo "test-env: PostgreSQL not installed (run scripts/install-deps.sh)" >&2; exit 1; }
  start_pg "$ENV_DIR/pg" "$PG_PORT" ""
  local timescale=""
  if [ -f "$bin/../lib/timescaledb.so" ]; then
    start_pg "$ENV_DIR/pg-timescale" "$TS_PORT" \
      "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
    timescale="postgres://postgres@127.0.0.1:$TS_PORT/postgres"
  fi
  if ! (echo >/dev/tcp/127.0.0.1/"$KAFKA_PORT") 2>/dev/null; then
    # exec: the pid written is the broker's own, so that `stop` kills the broker.
    (cd "$ENV_DIR/tansu" && exec nohup tansu broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db" >"$ENV_DIR/tansu/broker.log" 2>&1) &
    echo $! >"$ENV_DIR/tansu/pid"
  fi
  wait_port "$PG_PORT"
  wait_port "$KAFKA_PORT"
  cat >"$ENV_DIR/env" <<ENV
export CLICKFLOW_TEST_PG="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export CLICKFLOW_TEST_PLAIN="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export CLICKFLOW_TEST_TIMESCALE="$timescale"
export CLICKFLOW_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
export CLICKFLOW_TEST_TANSU="$(command -v tansu)"
export CLICKFLOW_TEST_MOTO="$(command -v moto_server || echo "$HOME/.local/bin/moto_server")"
ENV
  echo "test-env: postgres on $PG_PORT, ${timescale:+timescaledb on $TS_PORT, }tansu on $KAFKA_PORT"
}

stop() {
  local bin; bin=$(pg_bin)
  for dir in "$ENV_DIR/pg" "$ENV_DIR/pg-timescale"; do
    if [ -f "$dir/PG_VERSION" ] && [ -n "$bin" ]; then
      as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true
    fi
  done
  if [ -f "$ENV_DIR/tansu/pid" ]; then
    local pid; pid=$(cat "$ENV_DIR/tansu/pid")
    kill "$pid" 2>/dev/null || true
    # Wait for the port to be free: a `start` that follows (another checkout's, say) would
    # otherwise find this broker still listening, take it for its own, and lose it.
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$ENV_DIR/tansu/pid"
  fi
  echo "test-env: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
