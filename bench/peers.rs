//! Clickflow's side of `bench/peers/run.sh`: one seeded stream (a CSV of
//! `ts_ms,site,page,visitor`, sorted by time) through the engine's pipeline and sink.
//!
//!     cargo bench --bench peers -- <stream.csv> <traffic|hourly|all> <workers> [events per epoch] [hourly.csv]
//!
//! Each worker reads the file and takes every `workers`-th line, as workers share a log's
//! partitions; ingest time follows event time, so a day's state expires a lateness after it
//! ends, as in production. Prints one JSON line: events, seconds, events/s, rows stored and
//! the peak RSS. `hourly` is the peers' own job, per (site, hour) pageviews and distinct
//! visitors, built from the same blocks as the registered families. With `hourly.csv`, every
//! committed value of its (or traffic's) (site, hour) pageviews and visitors is appended there (the last per key is the final), so the driver can check
//! the three systems agree.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clickflow_dataflows::aggregate::{count_distinct_rows, sums_rows};
use clickflow_dataflows::event::Client;
use clickflow_dataflows::family::Inputs;
use clickflow_dataflows::metric::Cell;
use clickflow_dataflows::registry::{Family, FAMILIES};
use clickflow_dataflows::symbol::fingerprint;
use clickflow_dataflows::{pipeline, Event, MetricKey, Record, Settings};
use clickflow_dataflows::{Row, RowKey};
use clickflow_operators::sink::{CommitBatch, Transaction};
use clickflow_operators::time::bucket_of;
use clickflow_operators::time::Granularity;
use differential_dataflow::collection::concatenate;
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;

use common::{probe_and_sink, status_kib, TableSize};

/// [`TableSize`], and traffic's hourly rows appended to a file.
#[derive(Clone)]
struct Target {
    size: TableSize,
    hourly: Option<Arc<Mutex<BufWriter<std::fs::File>>>>,
}

impl Transaction<MetricKey, Cell> for Target {
    fn commit(&mut self, batch: &CommitBatch<MetricKey, Cell>) -> Result<(), String> {
        self.size.commit(batch)?;
        let Some(out) = &self.hourly else {
            return Ok(());
        };
        let mut out = out.lock().map_err(|e| e.to_string())?;
        for (k, cell) in &batch.upserts {
            if (k.family == "traffic" || k.family == HOURLY.name)
                && k.granularity == Granularity::Hour
            {
                let get = |m: &str| cell.numbers.iter().find(|n| n.0 == m).map_or(0, |n| n.1);
                writeln!(
                    out,
                    "{},{},{},{}",
                    k.site,
                    k.bucket_start / 3_600_000,
                    get("pageviews"),
                    get("visitors")
                )
                .map_err(|e| e.to_string())?;
            }
        }
        out.flush().map_err(|e| e.to_string())
    }
}

/// The job Pathway and DuckDB run: per (site, hour), pageviews and exact distinct visitors,
/// built from the same blocks as the registered families.
static HOURLY: Family = Family {
    name: "hourly",
    metrics: &["pageviews", "visitors"],
    distinct: &["visitors"],
    derived: &[],
    dimensions: &[""],
    build: hourly,
};

fn hourly<'s>(inputs: &Inputs<'s>, _: &Settings) -> VecCollection<'s, u64, Row> {
    let row = |metric: &'static str| move |(site, b)| RowKey::new(site, b, HOURLY.name, metric);
    let hours = inputs.hits.clone().map(|h| {
        let hour = bucket_of(h.ts, Granularity::Hour, h.zone.tz());
        ((h.site, hour), h.visitor, h.is_pageview())
    });
    let pageviews = hours.clone().map(|(k, _, pageview)| (k, pageview as isize));
    let visitors = hours.map(|(k, v, _)| (k, v));
    concatenate(
        inputs.hits.scope(),
        [
            sums_rows(pageviews, move |k, n| [(row("pageviews")(k), n as i64)]),
            count_distinct_rows(visitors, row("visitors")),
        ],
    )
}

fn parse(line: &str, i: usize) -> Option<Record> {
    let mut parts = line.split(',');
    let ts: i64 = parts.next()?.parse().ok()?;
    let site = parts.next()?;
    let page = parts.next()?;
    let visitor = parts.next()?;
    Some(Record::Event(Event {
        site: site.to_owned(),
        event_id: format!("e{i}"),
        name: "pageview".into(),
        ts,
        received: ts,
        // Visitor ids are uniform 64-bit hashes in production (the collector's salted hash).
        visitor: fingerprint(visitor),
        url: format!("https://{site}.test{page}"),
        referrer: None,
        props: Vec::new(),
        revenue: None,
        refund_of: None,
        tz: "UTC".into(),
        client: Client::default(),
        country: "unknown".into(),
    }))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage =
        "usage: peers <stream.csv> <traffic|hourly|all> <workers> [events per epoch] [hourly.csv]";
    let path = args.first().ok_or_else(|| anyhow::anyhow!(usage))?.clone();
    let families = args.get(1).cloned().unwrap_or_else(|| "all".into());
    if !["traffic", "all", "hourly"].contains(&families.as_str()) {
        anyhow::bail!("{usage}: families must be traffic, hourly or all, not {families:?}");
    }
    let workers: usize = args.get(2).map_or(Ok(1), |w| w.parse())?;
    let epoch_events: usize = args.get(3).map_or(Ok(10_000), |e| e.parse())?;
    let hourly = match args.get(4) {
        Some(p) => Some(Arc::new(Mutex::new(BufWriter::new(std::fs::File::create(
            p,
        )?)))),
        None => None,
    };
    let target = Target {
        size: TableSize::default(),
        hourly,
    };
    let size = target.size.clone();
    let started = Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let settings = Settings::default();
        let job: Vec<&'static Family> = match families.as_str() {
            "hourly" => vec![&HOURLY],
            "traffic" => FAMILIES.iter().filter(|f| f.name == "traffic").collect(),
            _ => FAMILIES.iter().collect(),
        };
        let target = target.clone();
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Record, isize>();
            let rollup = pipeline::metrics_with(records, &settings, job.clone());
            let probe = probe_and_sink(rollup, target);
            (input, probe)
        });
        let file = std::fs::File::open(&path).expect("the stream file");
        let per_worker = (epoch_events / peers).max(1);
        let (mut mine, mut events) = (0usize, 0usize);
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let Ok(line) = line else { break };
            if i % peers != index {
                continue;
            }
            let Some(record) = parse(&line, i) else {
                continue;
            };
            let Record::Event(e) = &record else { continue };
            let t = (e.ts.max(0) as u64).div_ceil(1_000) * 1_000;
            if mine.is_multiple_of(per_worker) && t > *input.time() {
                input.advance_to(t);
                input.flush();
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
            input.insert(record);
            mine += 1;
            events += 1;
        }
        input.close();
        while worker.step() {}
        events
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    let events: usize = guards
        .join()
        .into_iter()
        .map(|r| r.map_err(|e| anyhow::anyhow!(e)))
        .sum::<anyhow::Result<usize>>()?;
    let seconds = started.elapsed().as_secs_f64();
    let (rows, sketch_bytes) = size.size();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "seconds": seconds,
            "events_per_s": events as f64 / seconds,
            "rows": rows,
            "sketch_bytes": sketch_bytes,
            "peak_rss_kib": status_kib("VmHWM:"),
        })
    );
    Ok(())
}
