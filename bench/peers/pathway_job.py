"""Pathway over the stream CSV, static mode.

    python pathway_job.py <stream.csv> <out.csv> [hourly|traffic]   (threads: PATHWAY_THREADS)

`hourly` (the default): (site, hour) pageviews and distinct visitors, the job the peers
compare. `traffic`: the work of Clickflow's `traffic` family on this stream, pageviews,
events and distinct visitors per (site, minute), (site, hour) and (site, day) (UTC); the
hours go to <out.csv>, minutes and days beside it. Prints one JSON line: seconds of the run
(graph built, input read, output written)."""
import json
import sys
import time

import pathway as pw


class Hit(pw.Schema):
    ts_ms: int
    site: str
    page: str
    visitor: str


def per_bucket(hits, width_ms, with_events):
    bucketed = hits.with_columns(bucket=pw.this.ts_ms // width_ms)
    sums = dict(
        pageviews=pw.reducers.count(),
        visitors=pw.reducers.count_distinct(pw.this.visitor),
    )
    if with_events:
        # Every hit of the stream is a pageview; events are counted all the same.
        sums["events"] = pw.reducers.count()
    return bucketed.groupby(pw.this.site, pw.this.bucket).reduce(pw.this.site, pw.this.bucket, **sums)


def peak_rss_kib():
    """This process's own high-water mark. Not the parent's wait4 figure: Linux carries the
    RSS of the process that forked a child into its ru_maxrss across exec."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))


def main(stream: str, out: str, job: str) -> None:
    hits = pw.io.csv.read(stream, schema=Hit, mode="static")
    if job == "hourly":
        pw.io.csv.write(per_bucket(hits, 3_600_000, False), out)
    elif job == "traffic":
        pw.io.csv.write(per_bucket(hits, 3_600_000, True), out)
        for name, width in [("minute", 60_000), ("day", 86_400_000)]:
            pw.io.csv.write(per_bucket(hits, width, True), f"{out}.{name}.csv")
    else:
        sys.exit(f"job must be hourly or traffic, not {job!r}")
    started = time.monotonic()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    print(json.dumps({"seconds": time.monotonic() - started, "peak_rss_kib": peak_rss_kib()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "hourly")
