"""DuckDB: the same (site, hour) pageviews and distinct visitors, recomputed in one batch.

    python duckdb_job.py <stream.csv> <out.csv> <threads>
Prints one JSON line: seconds of the query (CSV read included)."""
import json
import sys
import time

import duckdb


def peak_rss_kib():
    """This process's own high-water mark. Not the parent's wait4 figure: Linux carries the
    RSS of the process that forked a child into its ru_maxrss across exec."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))


def main(stream: str, out: str, threads: int) -> None:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    started = time.monotonic()
    con.execute(
        f"""COPY (SELECT site, ts_ms // 3600000 AS hour, count(*) AS pageviews,
                        count(DISTINCT visitor) AS visitors
                   FROM read_csv('{stream}', header = true,
                                 columns = {{'ts_ms': 'BIGINT', 'site': 'VARCHAR', 'page': 'VARCHAR', 'visitor': 'VARCHAR'}})
                  GROUP BY ALL) TO '{out}' (HEADER)"""
    )
    print(json.dumps({"seconds": time.monotonic() - started, "peak_rss_kib": peak_rss_kib()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
