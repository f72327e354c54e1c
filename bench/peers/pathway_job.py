"""Pathway: (site, hour) pageviews and distinct visitors over the stream CSV, static mode.

    python pathway_job.py <stream.csv> <out.csv>   (threads: PATHWAY_THREADS)
Prints one JSON line: seconds of the run (graph built, input read, output written)."""
import json
import sys
import time

import pathway as pw


class Hit(pw.Schema):
    ts_ms: int
    site: str
    page: str
    visitor: str


def main(stream: str, out: str) -> None:
    hits = pw.io.csv.read(stream, schema=Hit, mode="static")
    hits = hits.with_columns(hour=pw.this.ts_ms // 3_600_000)
    hourly = hits.groupby(pw.this.site, pw.this.hour).reduce(
        pw.this.site,
        pw.this.hour,
        pageviews=pw.reducers.count(),
        visitors=pw.reducers.count_distinct(pw.this.visitor),
    )
    pw.io.csv.write(hourly, out)
    started = time.monotonic()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    print(json.dumps({"seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
