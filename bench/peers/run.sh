#!/usr/bin/env bash
# Clickflow beside its peers on one seeded stream: Pathway (the same (site, hour) pageviews +
# distinct visitors job, and traffic's) and DuckDB (a batch recompute of it); Clickflow runs
# that job, its traffic family and every family. Creates its own virtualenv.
#
#   bash bench/peers/run.sh [--events N] [--days D] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
venv=target/peers-venv
if ! "$venv/bin/python" -c 'import pathway, duckdb, numpy' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'pathway==0.33.0' 'duckdb==2.0.1' numpy
fi
binary=$(cargo bench --bench peers --no-run --message-format=json 2>/dev/null |
    "$venv/bin/python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "peers" and m.get("executable"):
        print(m["executable"])')
exec "$venv/bin/python" bench/peers/peers.py --clickflow "$binary" "$@"
