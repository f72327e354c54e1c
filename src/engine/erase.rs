//! Erasure: forgetting one visitor of one site in every rollup.
//!
//! The admin endpoint appends an erase record to the site's partition (the live engine then
//! retracts the visitor from every open bucket at once) and stores the erasure in Postgres
//! (engines load the table at start, so restarts and replays never count the visitor again).
//! Buckets that had already sealed when the erase record arrived are out of the engine's reach;
//! [`recompute_sealed_days`] rebuilds the days that hold them from the log, through the same
//! pipeline, and swaps their rows in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clickflow_dataflows::event::Erasure;
use clickflow_dataflows::metric::Cell;
use clickflow_dataflows::registry::metrics;
use clickflow_dataflows::{MetricKey, Record};
use clickflow_operators::sink::{MemoryTable, SinkConfig, SinkStatus};
use clickflow_operators::time::{bucket_of, epoch_of, parse_tz, Granularity};
use differential_dataflow::input::Input;
use postgres::GenericClient;
use timely::dataflow::operators::ToStream;

use crate::config::Config;
use crate::log::{partition_for, Log};
use crate::store;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Every erasure stored for `site` (all sites when `None`), as records for the pipeline.
pub fn stored_erasures(
    client: &mut impl GenericClient,
    site: Option<&str>,
) -> anyhow::Result<Vec<Record>> {
    let rows = client.query(
        "SELECT site_id, visitor FROM erasures WHERE $1::text IS NULL OR site_id = $1",
        &[&site],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            Record::Erase(Erasure {
                site: r.get(0),
                visitor: r.get::<_, i64>(1) as u64,
            })
        })
        .collect())
}

/// Records a requested erasure (idempotent: asking again restarts its recompute).
pub fn store_erasure(
    client: &mut impl GenericClient,
    site: &str,
    visitor: u64,
    log_time_ms: i64,
) -> anyhow::Result<()> {
    client.execute(
        "INSERT INTO erasures (site_id, visitor, log_time_ms) VALUES ($1, $2, $3)
         ON CONFLICT (site_id, visitor) DO UPDATE
           SET log_time_ms = EXCLUDED.log_time_ms, status = 'pending', requested_at = now()",
        &[&site, &(visitor as i64), &log_time_ms],
    )?;
    Ok(())
}

/// A site-zone day whose rows are rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Day {
    start: i64,
    end: i64,
}

/// Rebuilds every day of `site` in which `visitor` touched a bucket that was already sealed
/// when the live engine applied the erase record (logged at `erased_at`). Returns the number
/// of days rebuilt.
pub fn recompute_sealed_days(
    config: &Config,
    log: &dyn Log,
    site: &str,
    visitor: u64,
    erased_at: i64,
) -> anyhow::Result<usize> {
    let settings = config.settings();
    let lateness = settings.seal_lateness_ms as i64;
    let mut client = store::connect(&config.database.url)?;
    // One recompute per site at a time, each reading the erasures after taking the lock: a
    // recompute that started before a second erasure cannot overwrite the second's rows.
    client.execute(
        "SELECT pg_advisory_lock(hashtextextended($1, 0))",
        &[&format!("clickflow-erase:{site}")],
    )?;
    let erased_at = wait_for_engine(&mut client, erased_at, config.engine.epoch_ms)?;
    let partition = partition_for(site, log.partitions()?);
    let end = log.high_watermark(partition)?;
    let start = log.offset_for_time(partition, 0)?;

    // 1. Which days: scan the site's partition for the visitor's events.
    let mut days: BTreeSet<Day> = BTreeSet::new();
    scan(log, partition, start, end, |record, _| {
        if let Record::Event(e) = record {
            if e.site == site && e.visitor == visitor {
                let minute = bucket_of(e.ts, Granularity::Minute, parse_tz(&e.tz));
                // Its minute row is the first to seal; if even that is open, the live
                // engine's retraction fixes every row of this event.
                if minute.end + lateness <= erased_at {
                    let day = bucket_of(e.ts, Granularity::Day, parse_tz(&e.tz));
                    days.insert(Day {
                        start: day.start,
                        end: day.end,
                    });
                }
            }
        }
    })?;
    if days.is_empty() {
        return Ok(0);
    }

    // 2. Re-run the pipeline over those days and one day either side (so visits and hour
    // buckets that cross a day boundary are whole), without every erased visitor.
    let first = days.iter().map(|d| d.start).min().unwrap_or(0) - DAY_MS;
    let last = days.iter().map(|d| d.end).max().unwrap_or(0) + DAY_MS;
    let from_offset = log.offset_for_time(partition, first)?;
    let until_offset = log
        .offset_for_time(partition, last + lateness + HOUR_MS)?
        .min(end);
    let wanted = |ts: i64| {
        days.iter()
            .any(|d| ts >= d.start - DAY_MS && ts < d.end + DAY_MS)
    };
    let mut input: Vec<(Record, u64)> = stored_erasures(&mut client, Some(site))?
        .into_iter()
        .map(|r| (r, 0))
        .collect();
    let epoch_ms = config.engine.epoch_ms;
    scan(
        log,
        partition,
        from_offset,
        until_offset,
        |record, log_time| {
            let keep = match &record {
                Record::Event(e) => e.site == site && wanted(e.ts),
                Record::Bot(b) => b.site == site && wanted(b.ts),
                Record::Erase(x) => x.site == site,
            };
            if keep {
                input.push((record, epoch_of(log_time, epoch_ms).max(1)));
            }
        },
    )?;
    let rows = run_pipeline(input, &settings)?;

    // 3. Swap the rows of those days that had sealed by `erased_at`, in one transaction.
    let generation = store::active_generation(&mut client)?;
    let sealed = |k: &MetricKey| k.open_until + lateness <= erased_at;
    let inside = |d: &Day, k: &MetricKey| {
        k.bucket_start >= floor_hour(d.start) && k.bucket_end <= ceil_hour(d.end)
    };
    let mut tx = client.transaction()?;
    for d in &days {
        tx.execute(
            "DELETE FROM rollups WHERE site_id = $1 AND generation = $2 AND family <> 'realtime'
               AND bucket >= to_timestamp($3::bigint / 1000.0) AND bucket_end <= to_timestamp($4::bigint / 1000.0)
               AND coalesce(open_until, bucket_end) + $5::bigint * interval '1 millisecond' <= to_timestamp($6::bigint / 1000.0)",
            &[&site, &generation, &floor_hour(d.start), &ceil_hour(d.end), &lateness, &erased_at],
        )?;
    }
    let written = crate::engine::pg_sink::upsert(
        &mut tx,
        generation,
        rows.iter()
            .filter(|(k, _)| sealed(k) && days.iter().any(|d| inside(d, k))),
    )?;
    tx.execute(
        "UPDATE erasures SET status = 'done', recomputed_days = $3 WHERE site_id = $1 AND visitor = $2",
        &[&site, &(visitor as i64), &(days.len() as i32)],
    )?;
    tx.commit()?;
    tracing::info!(
        site,
        days = days.len(),
        rows = written,
        "erasure: sealed days recomputed"
    );
    Ok(days.len())
}

/// Waits until the live engine has committed past the erase record, and returns that
/// committed frontier: the engine gave the record an ingest time below it, so every row it
/// could not correct had sealed by then, and every row sealed by then is final. Rebuilding
/// exactly those rows means the engine never writes them again afterwards.
fn wait_for_engine(
    client: &mut postgres::Client,
    erased_at: i64,
    epoch_ms: u64,
) -> anyhow::Result<i64> {
    let needed = epoch_of(erased_at, epoch_ms) as i64 + epoch_ms as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(15 * 60);
    loop {
        let frontier: Option<i64> = client
            .query_one(
                "SELECT min(p.frontier_ms) FROM progress p JOIN active_generation a ON p.generation = a.generation",
                &[],
            )?
            .get(0);
        if let Some(f) = frontier.filter(|f| *f >= needed) {
            return Ok(f);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the live engine has not committed past the erase record after 15 minutes; sealed days were not rebuilt (ask again once it runs)"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn floor_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

fn ceil_hour(ms: i64) -> i64 {
    floor_hour(ms + HOUR_MS - 1)
}

/// Reads `[from, until)` of one partition, decoding records; undecodable ones are skipped
/// as the engine skips them.
fn scan(
    log: &dyn Log,
    partition: u32,
    from: u64,
    until: u64,
    mut each: impl FnMut(Record, i64),
) -> anyhow::Result<()> {
    if from >= until {
        return Ok(());
    }
    let mut reader = log.reader(
        &BTreeMap::from([(partition, from)]),
        Some(BTreeMap::from([(partition, until)])),
    )?;
    while !reader.finished() {
        for r in reader.poll(10_000, Duration::from_millis(200))? {
            for record in Record::decode_all(&r.value).unwrap_or_default() {
                each(record, r.timestamp);
            }
        }
    }
    Ok(())
}

/// Runs the pipeline over timed records on one worker, through the same sink logic as the
/// engine (rows freeze at their seal), and returns the final rows.
fn run_pipeline(
    mut input: Vec<(Record, u64)>,
    settings: &clickflow_dataflows::Settings,
) -> anyhow::Result<BTreeMap<MetricKey, Cell>> {
    input.sort_by_key(|(_, t)| *t);
    let target: MemoryTable<MetricKey, Cell> = MemoryTable::default();
    let rows = target.0.clone();
    let settings = settings.clone();
    timely::execute_directly(move |worker| {
        let mut session = worker.dataflow::<u64, _, _>(|scope| {
            let (session, records) = scope.new_collection::<Record, isize>();
            let progress = Vec::<(u32, u64)>::new()
                .to_stream(scope)
                .container::<Vec<_>>();
            metrics(records, &settings).sink(
                progress,
                SinkConfig::default(),
                target,
                Arc::new(SinkStatus::default()),
            );
            session
        });
        for (record, t) in input {
            if t > *session.time() {
                session.advance_to(t);
            }
            session.insert(record);
        }
        session.close();
        while worker.step() {}
    });
    let rows = rows
        .lock()
        .map_err(|_| anyhow::anyhow!("recompute table lock poisoned"))?
        .clone();
    Ok(rows)
}

/// Runs the recompute and records a failure in the erasures table.
pub fn recompute_and_record(
    config: &Config,
    log: &dyn Log,
    site: &str,
    visitor: u64,
    erased_at: i64,
) {
    let result = recompute_sealed_days(config, log, site, visitor, erased_at)
        .with_context(|| format!("recomputing sealed days of site {site}"));
    if let Err(e) = result {
        tracing::error!(error = %format!("{e:#}"), "erasure recompute failed");
        if let Ok(mut c) = store::connect(&config.database.url) {
            let _ = c.execute(
                "UPDATE erasures SET status = $3 WHERE site_id = $1 AND visitor = $2",
                &[&site, &(visitor as i64), &format!("failed: {e:#}")],
            );
        }
    } else if let Ok(mut c) = store::connect(&config.database.url) {
        // no sealed day was touched: nothing to rebuild
        let _ = c.execute(
            "UPDATE erasures SET status = 'done', recomputed_days = coalesce(recomputed_days, 0)
              WHERE site_id = $1 AND visitor = $2 AND status = 'pending'",
            &[&site, &(visitor as i64)],
        );
    }
}
