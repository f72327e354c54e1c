//! Memory over a long simulated run: several days of constant traffic through the whole
//! pipeline (every family), ingest time advancing with the simulated clock, so state should
//! plateau once the first days seal and expire.
//!
//!     cargo bench --bench soak -- [days] [events per day] [events per epoch]
//!
//! Rows go through the transactional sink, as in the engine, into a table that keeps only a
//! hash and a size per row (so the bench measures what the engine holds, not a copy of the
//! table). Prints, at the end of each simulated day, the day's throughput, the latency from
//! closing an epoch to its rows being ready (p50, p99), the resident set (VmRSS), the peak so
//! far (VmHWM), the events and visitor-days still open (their day not sealed), RSS per open
//! event, the rows stored so far per event with their sketch bytes, and the memory of the
//! bench's stand-in table (part of VmRSS, not of the engine). Flat RSS and latency
//! from day 3 on is the target.
//!
//! `SOAK_DATABASE=postgres://…/db` writes the rows through the engine's Postgres sink into a
//! real `rollups` table there instead (migrated first; TimescaleDB where the server has it
//! preloaded) and ends with the table's bytes per event; on TimescaleDB, again after
//! compressing every chunk but the timeless realtime one. The figures then include the
//! sink's Postgres round trips, so events/s is lower than without it.
//!
//! `SOAK_SNAPSHOT=1` ends the process right after the last day's report without freeing
//! anything: under `heaptrack` (with the bench built on the system allocator, see
//! `bench/RESULTS.md`), the "leaked" report is then a snapshot of everything the engine holds,
//! by allocation site.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clickflow::engine::pg_sink::PgSink;
use clickflow::store;

use clickflow_operators::time::parse_tz;

use clickflow_dataflows::event::{Client, Revenue};
use clickflow_dataflows::{pipeline, registry, Event, Record, Settings};
use common::{probe_and_sink, status_kib, TableSize};
use differential_dataflow::input::Input;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SITES: u32 = 100;
const VISITORS: u64 = 20_000;

/// An event, with its site and visitor numbers (for counting open visitor-days).
fn event(rng: &mut StdRng, i: u64, now: i64) -> (Record, u32, u64) {
    let site = rng.random_range(0..SITES);
    let visitor_number = rng.random_range(0..VISITORS);
    let visitor = visitor_number.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let kind = rng.random_range(0..100);
    let (name, revenue) = match kind {
        0..75 => ("pageview", None),
        75..90 => ("signup", None),
        _ => (
            "purchase",
            Some(Revenue {
                amount: format!("{}.99", rng.random_range(1..100)),
                currency: "EUR".into(),
            }),
        ),
    };
    let record = Record::Event(Event {
        site: format!("site{site}"),
        event_id: format!("e{i}"),
        name: name.into(),
        // mostly on time, some up to an hour late
        ts: now
            - if rng.random_bool(0.1) {
                rng.random_range(0..3_600_000)
            } else {
                rng.random_range(0..5_000)
            },
        received: now,
        visitor,
        url: format!("https://site{site}.test/p{}", rng.random_range(0..30)),
        referrer: rng
            .random_bool(0.3)
            .then(|| "https://www.google.com/".to_string()),
        props: if (75..90).contains(&kind) {
            vec![("plan".into(), "pro".into())]
        } else {
            Vec::new()
        },
        revenue,
        refund_of: None,
        tz: if site % 2 == 0 {
            "UTC".into()
        } else {
            "Europe/Paris".into()
        },
        client: Client::default(),
        country: ["FR", "US", "DE"][rng.random_range(0..3)].into(),
    });
    (record, site, visitor_number)
}

fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let days = args.first().copied().unwrap_or(5);
    let per_day = args.get(1).copied().unwrap_or(200_000);
    let epoch_events = args.get(2).copied().unwrap_or(500).max(1);
    let families = std::env::var("SOAK_FAMILIES").unwrap_or_else(|_| "all families".into());
    println!(
        "soak: {days} simulated days × {per_day} events/day, {epoch_events}-event epochs, {families}, 1 worker"
    );
    println!("  day  events/s  epoch p50 ms  p99 ms  VmRSS MiB  VmHWM MiB  open events  open visitor-days  RSS B/open event  rows/event  sketch B/event  bench table MiB");
    let table = TableSize::default();
    let stored = table.clone();
    let database = std::env::var("SOAK_DATABASE").ok();
    let generation = match &database {
        Some(url) => {
            let mut client = store::connect(url).expect("SOAK_DATABASE: connect");
            let layout = store::migrate(&mut client, &Default::default()).expect("migrate");
            println!("  into {} ({})", store::redact(url), layout.describe());
            client
                .query_one("SELECT generation FROM active_generation", &[])
                .expect("generation")
                .get(0)
        }
        None => 0,
    };
    let into = database.clone();
    timely::execute_directly(move |worker| {
        let settings = Settings::default();
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Record, isize>();
            // SOAK_FAMILIES=traffic,sessions limits the run to those families (diagnosis).
            let only = std::env::var("SOAK_FAMILIES").ok();
            let rollup = registry::metrics_of(records, &settings, |f| {
                only.as_deref()
                    .is_none_or(|o| o.split(',').any(|n| n == f.name))
            });
            let probe = match &into {
                Some(url) => probe_and_sink(
                    rollup,
                    PgSink::new(
                        url,
                        generation,
                        true,
                        settings.seal_lateness_ms,
                        Arc::new(AtomicBool::new(false)),
                    ),
                ),
                None => probe_and_sink(rollup, table),
            };
            (input, probe)
        });
        let mut rng = StdRng::seed_from_u64(1);
        let start_ms = 1_795_392_000_000i64; // a UTC midnight
        let step = 86_400_000 / per_day as i64;
        let mut i = 0u64;
        // What the engine must hold: events (and visitor-days) whose day has not sealed.
        let mut open_events: BTreeMap<u64, u64> = BTreeMap::new();
        // One bit per (site, visitor) per sealing day and zone.
        let mut open_visitor_days: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let bits = (SITES as u64 * VISITORS) as usize;
        for day in 0..days {
            let began = Instant::now();
            let mut latencies = Vec::new();
            for k in 0..per_day {
                let now = start_ms + (day * per_day + k) as i64 * step;
                let (record, site, visitor) = event(&mut rng, i, now);
                if let Record::Event(e) = &record {
                    let tz = parse_tz(&e.tz);
                    let seal = pipeline::day_seal_time(e.ts, tz, &settings);
                    *open_events.entry(seal).or_default() += 1;
                    // Sites of one zone share seal times, so a seal names a day of each site.
                    let seen = open_visitor_days
                        .entry(seal)
                        .or_insert_with(|| vec![0; bits.div_ceil(64)]);
                    let bit = site as usize * VISITORS as usize + visitor as usize;
                    seen[bit / 64] |= 1 << (bit % 64);
                }
                input.insert(record);
                i += 1;
                let t = (now as u64).div_ceil(1_000) * 1_000;
                if t > *input.time() && k % epoch_events == 0 {
                    input.advance_to(t);
                    input.flush();
                    let closed = Instant::now();
                    while probe.less_than(input.time()) {
                        worker.step();
                    }
                    latencies.push(closed.elapsed());
                }
            }
            let rate = per_day as f64 / began.elapsed().as_secs_f64();
            let now = (start_ms + ((day + 1) * per_day) as i64 * step) as u64;
            open_events = open_events.split_off(&now);
            open_visitor_days = open_visitor_days.split_off(&now);
            let open: u64 = open_events.values().sum();
            let visitor_days: u64 = open_visitor_days
                .values()
                .flatten()
                .map(|w| w.count_ones() as u64)
                .sum();
            let (rows, sketch_bytes) = stored.size();
            latencies.sort();
            let rss = status_kib("VmRSS:");
            let events = ((day + 1) * per_day) as f64;
            println!(
                "  {:>3}  {:>8.0}  {:>12.1}  {:>6.1}  {:>9.1}  {:>9.1}  {:>11}  {:>17}  {:>16.0}  {:>10.4}  {:>14.1}  {:>15.1}",
                day + 1,
                rate,
                percentile_ms(&latencies, 0.5),
                percentile_ms(&latencies, 0.99),
                rss as f64 / 1024.0,
                status_kib("VmHWM:") as f64 / 1024.0,
                open,
                visitor_days,
                (rss * 1024) as f64 / open.max(1) as f64,
                rows as f64 / events,
                sketch_bytes as f64 / events,
                stored.own_bytes() as f64 / 1_048_576.0,
            );
        }
        if std::env::var_os("SOAK_SNAPSHOT").is_some() {
            std::process::exit(0);
        }
    });
    if let Some(url) = database {
        stored_bytes(&url, days * per_day).expect("measuring the rollups table");
    }
}

/// The rollups table's bytes per event; on TimescaleDB also after compressing its chunks.
fn stored_bytes(url: &str, events: u64) -> anyhow::Result<()> {
    let mut client = store::connect(url)?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM rollups", &[])?
        .get(0);
    let layout = store::layout(&mut client)?;
    let size = |client: &mut postgres::Client| -> anyhow::Result<i64> {
        let sql = match layout {
            store::Layout::Hypertable => "SELECT hypertable_size('rollups')",
            store::Layout::NativePartitions => {
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint
                   FROM pg_inherits WHERE inhparent = 'rollups'::regclass"
            }
        };
        Ok(client.query_one(sql, &[])?.get(0))
    };
    let per_event = |bytes: i64| bytes as f64 / events as f64;
    // Rewritten without the dead versions the sink's upserts leave, which autovacuum would
    // reclaim in time: the figure is what the rows take, not how far vacuum lags.
    client.batch_execute("VACUUM FULL rollups")?;
    let written = size(&mut client)?;
    println!(
        "  rollups: {rows} rows ({:.3} per event), {:.1} MiB, {:.0} B per event",
        rows as f64 / events as f64,
        written as f64 / 1_048_576.0,
        per_event(written)
    );
    if layout == store::Layout::Hypertable {
        let began = Instant::now();
        let chunks: i64 = client
            .query_one(
                "SELECT count(compress_chunk(c, if_not_compressed => true))
                   FROM show_chunks('rollups', older_than => '3000-01-01'::timestamptz) c",
                &[],
            )?
            .get(0);
        let compressed = size(&mut client)?;
        println!(
            "  compressed {chunks} chunks in {:.1} s: {:.1} MiB, {:.0} B per event ({:.1}× smaller)",
            began.elapsed().as_secs_f64(),
            compressed as f64 / 1_048_576.0,
            per_event(compressed),
            written as f64 / compressed.max(1) as f64
        );
    }
    Ok(())
}
