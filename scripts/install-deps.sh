#!/usr/bin/env bash
# Installs everything Clickflow's build needs on a fresh Debian 12 machine; with --tests, what
# its tests need too.
# Idempotent: every step checks before it acts, so a second run is a no-op.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -e /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -e /usr/include/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# With --tests: headless Chromium and its WebDriver, for the tracker and dashboard tests
# (tests/browser.rs). Running Clickflow does not need them.
# and TimescaleDB built from its source release, so that the suite runs on both stores.
# Running Clickflow needs none of them.
TESTS=""; [ "${1:-}" = "--tests" ] && TESTS=1
PG_EXT=/usr/share/postgresql/15/extension
if [ -n "$TESTS" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
  if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
  fi
  if [ ! -f "$PG_EXT/timescaledb.control" ]; then
    [ -f /usr/include/postgresql/15/server/postgres.h ] || need_apt+=(postgresql-server-dev-15)
    command -v make >/dev/null 2>&1 || need_apt+=(make)
    command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
  fi
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The CC0 country database (MaxMind format) from npm, for geo lookups and their test.
# Optional at run time: without it every country is "unknown".
GEO_DIR="$(cd "$(dirname "$0")/.." && pwd)/.deps/geo"
if [ ! -s "$GEO_DIR/geo-whois-asn-country.mmdb" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "install-deps: fetching the geo-whois-asn-country database (npm, CC0)"
    tmp="$(mktemp -d)"
    if (cd "$tmp" && npm pack --silent @ip-location-db/geo-whois-asn-country-mmdb >/dev/null 2>&1 \
        && tar xzf ./*.tgz); then
      mkdir -p "$GEO_DIR"
      cp "$tmp/package/geo-whois-asn-country.mmdb" "$tmp/package/README.md" "$GEO_DIR/"
    else
      echo "install-deps: npm could not fetch the geo database; countries will be unknown" >&2
    fi
    rm -rf "$tmp"
  else
    echo "install-deps: npm not found; skipping the optional geo database" >&2
  fi
fi

# TimescaleDB has no Debian 12 package: the tests build it from the source release the
# machines carry (../shared/timescaledb/, TimescaleDB 2.28.3, the newest for PostgreSQL 15)
# and install it into the machine's PostgreSQL 15, once. Elsewhere install it the usual way
# (Timescale's packages); `clickflow migrate` finds it either way.
timescale_source() {
  local root; root="$(cd "$(dirname "$0")/.." && pwd)"
  for dir in "${TIMESCALEDB_SOURCE:-}" "$root/../shared/timescaledb" /work/shared/timescaledb; do
    [ -n "$dir" ] && [ -f "$dir/timescaledb-2.28.3.tar.gz" ] && { echo "$dir/timescaledb-2.28.3.tar.gz"; return; }
  done
}
if [ -n "$TESTS" ] && [ ! -f "$PG_EXT/timescaledb.control" ]; then
  tarball="$(timescale_source)"
  if [ -z "$tarball" ]; then
    echo "install-deps: TimescaleDB source (timescaledb-2.28.3.tar.gz) not found in \$TIMESCALEDB_SOURCE or ../shared/timescaledb" >&2
    exit 1
  fi
  echo "install-deps: building TimescaleDB 2.28.3 from $tarball (about 2-3 minutes)"
  build="$(mktemp -d)"
  tar xzf "$tarball" -C "$build"
  if ! (cd "$build/timescaledb-2.28.3" \
    && ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DUSE_OPENSSL=OFF -DWARNINGS_AS_ERRORS=OFF \
         -DPG_CONFIG=/usr/lib/postgresql/15/bin/pg_config \
    && make -C build -j"$(nproc)" \
    && $SUDO make -C build install) >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2
    echo "install-deps: the TimescaleDB build failed (log above)" >&2
    exit 1
  fi
  rm -rf "$build"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "install-deps: cargo install tansu (Kafka-protocol broker for tests; ~10 min once)"
  cargo install tansu --locked --features libsql
fi
# An S3-compatible server for the archive's bucket test (moto, in Python; pure user space).
if [ -n "$TESTS" ] && ! command -v moto_server >/dev/null 2>&1; then
  echo "install-deps: pip install moto[server] (S3-compatible server for tests)"
  python3 -m pip install --user --quiet 'moto[server]>=5,<6' \
    || python3 -m pip install --user --quiet --break-system-packages 'moto[server]>=5,<6'
fi
echo "install-deps: ok"
