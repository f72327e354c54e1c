"""Drives bench/peers: generates one seeded stream, runs each system on it in its own process,
and prints events/s, peak RSS (each job's own VmHWM) and the ratios, after checking that the
three agree on every (site, hour) pageviews and visitors.

Run through run.sh, which builds Clickflow's side and the virtualenv."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE.parent.parent / "target" / "peers"


def zipf_choice(rng, n, s, size):
    """`size` draws from 0..n with P(k) proportional to 1/(k+1)^s."""
    weights = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=weights / weights.sum())


def generate(events, days, seed):
    """A month of traffic: Zipf sites (a few big shops, a long tail), Zipf pages within a site,
    Zipf visitors (regulars and one-off visits), event times spread over `days`, in order."""
    path = WORK / f"stream-{events}-{days}d-{seed}.csv"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = 1_793_491_200_000  # 2026-10-31T00:00:00Z
    ts = np.sort(rng.integers(start, start + days * 86_400_000, size=events))
    sites = zipf_choice(rng, 1_000, 1.1, events)
    pages = zipf_choice(rng, 200, 1.0, events)
    visitors = zipf_choice(rng, 500_000, 0.8, events)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("ts_ms,site,page,visitor\n")
        for t, s, p, v in zip(ts.tolist(), sites.tolist(), pages.tolist(), visitors.tolist()):
            f.write(f"{t},site{s},/p{p},v{v}\n")
    tmp.rename(path)
    return path


def run(name, argv, env=None):
    """Runs one job; returns its JSON report and its peak RSS in KiB, as the job reports it
    from /proc/self/status. wait4's ru_maxrss would be wrong: Linux carries the RSS of the
    forking process (this driver, holding earlier outputs) into a child's maxrss across exec."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "job.out", "w+") as out, open(WORK / "job.err", "w+") as err:
        proc = subprocess.run(argv, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"{name} printed no report:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    report = json.loads(lines[-1])
    return report, report["peak_rss_kib"]


def hourly(path, last_wins):
    """(site, hour) -> (pageviews, visitors) from a job's output CSV (columns site, hour,
    pageviews, visitors first; Pathway's end with time and diff)."""
    table = {}
    diff_at = None
    with open(path) as f:
        for row in csv.reader(f):
            if len(row) < 4 or not row[1].isdigit():
                if "diff" in row:
                    diff_at = row.index("diff")
                continue  # a header
            if diff_at is not None and row[diff_at] != "1":
                continue  # Pathway's retractions (none in static mode)
            key = (row[0], int(row[1]))
            value = (int(row[2]), int(row[3]))
            if last_wins or key not in table:
                table[key] = value
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clickflow", required=True, help="the bench/peers.rs binary")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    stream = generate(args.events, args.days, args.seed)
    py = sys.executable
    results = []
    outputs = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for families in ["hourly", "traffic", "all"]:
            out = WORK / f"clickflow-{families}-{threads}.csv"
            report, peak = run("clickflow", [args.clickflow, str(stream), families, str(threads), "10000", str(out)])
            results.append((f"clickflow ({families})", threads, report["seconds"], peak))
            outputs[f"clickflow-{families}-{threads}"] = hourly(out, last_wins=True)
        out = WORK / f"pathway-{threads}.csv"
        report, peak = run("pathway", [py, str(HERE / "pathway_job.py"), str(stream), str(out)],
                                    {"PATHWAY_THREADS": str(threads)})
        results.append(("pathway", threads, report["seconds"], peak))
        outputs[f"pathway-{threads}"] = hourly(out, last_wins=False)
        # Clickflow's traffic family does more than the hourly job: minutes and days too, and
        # events beside pageviews. Pathway doing that same work, for a like-for-like ratio.
        out = WORK / f"pathway-traffic-{threads}.csv"
        report, peak = run("pathway", [py, str(HERE / "pathway_job.py"), str(stream), str(out), "traffic"],
                                    {"PATHWAY_THREADS": str(threads)})
        results.append(("pathway (traffic's job)", threads, report["seconds"], peak))
        outputs[f"pathway-traffic-{threads}"] = hourly(out, last_wins=False)
        out = WORK / f"duckdb-{threads}.csv"
        report, peak = run("duckdb", [py, str(HERE / "duckdb_job.py"), str(stream), str(out), str(threads)])
        results.append(("duckdb (batch)", threads, report["seconds"], peak))
        outputs[f"duckdb-{threads}"] = hourly(out, last_wins=False)

    reference = outputs[next(k for k in outputs if k.startswith("duckdb"))]
    print(f"peers: {args.events} events over {args.days} days (seed {args.seed}), "
          f"{len(reference)} (site, hour) rows")
    for name, table in outputs.items():
        differing = sum(1 for k in reference.keys() | table.keys() if reference.get(k) != table.get(k))
        print(f"  {name:<26} agrees with DuckDB on every (site, hour): "
              f"{'yes' if differing == 0 else f'NO, {differing} rows differ'}")
    print(f"  {'system':<22} {'threads':>7} {'events/s':>12} {'seconds':>8} {'peak RSS MiB':>13}")
    for name, threads, seconds, peak in results:
        print(f"  {name:<22} {threads:>7} {args.events / seconds:>12,.0f} {seconds:>8.2f} {peak / 1024:>13.1f}")
    for threads in sorted({r[1] for r in results}):
        get = lambda n: next(r for r in results if r[0] == n and r[1] == threads)
        cf, pw, pw_traffic = get("clickflow (traffic)"), get("pathway"), get("pathway (traffic's job)")
        same = get("clickflow (hourly)")
        print(f"  {threads} thread(s): on the same (site, hour) job, clickflow is {pw[2] / same[2]:.2f}x "
              f"Pathway's speed at {same[3] / pw[3]:.2f}x its memory")
        print(f"  {threads} thread(s): clickflow traffic-only is {pw[2] / cf[2]:.2f}x Pathway's speed "
              f"at {cf[3] / pw[3]:.2f}x its memory (Pathway's hourly job); "
              f"{pw_traffic[2] / cf[2]:.2f}x at {cf[3] / pw_traffic[3]:.2f}x "
              f"(Pathway doing traffic's minutes, hours and days)")


if __name__ == "__main__":
    main()
