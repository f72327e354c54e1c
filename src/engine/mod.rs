//! The engine: a timely job reading the log, running every metric family, and committing
//! results with offsets to Postgres. Partition `p` is read by global worker `p mod W`.
//!
//! A restart rebuilds state instead of checkpointing it: readers seek back to the oldest
//! offset that can still touch an open bucket, and the sink holds its output until the input
//! has passed the committed offsets, then replaces the open rows wholesale.

pub mod cluster;
pub mod erase;
pub mod pg_sink;
pub mod replay;
pub mod start;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clickflow_dataflows::{registry, Record};
use clickflow_operators::sink::{SinkConfig, SinkStatus};
use clickflow_operators::source::{log_source, LogRecord, PartitionReader, SourceConfig};
use differential_dataflow::AsCollection;
use postgres::Client;
use timely::dataflow::operators::ToStream;

use crate::config::Config;
use crate::log::{Log, LogReader};
use crate::store;
use pg_sink::PgSink;

const DAY_MS: i64 = 86_400_000;

/// What one run of the engine reads and where it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub generation: i32,
    /// True for the live job; false for a replay building a new generation.
    pub live: bool,
    pub start: BTreeMap<u32, u64>,
    /// Bounded runs (replays) stop at these offsets.
    pub end: Option<BTreeMap<u32, u64>>,
    pub hold_until: BTreeMap<u32, u64>,
    pub write_from: i64,
}

fn floor_day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The plan of the live job: from the beginning on a fresh generation, or rehydrating every
/// bucket that can still change since the committed progress.
pub fn plan_live(client: &mut Client, log: &dyn Log, config: &Config) -> anyhow::Result<Plan> {
    let generation = store::active_generation(client)?;
    let progress = store::progress(client, generation)?;
    let partitions = log.partitions()?;
    // A fresh generation starts where the log (with its archive) starts: what retention
    // dropped before the first run is not there to count.
    let mut start = BTreeMap::new();
    for p in 0..partitions {
        start.insert(p, log.low_watermark(p)?);
    }
    let mut plan = Plan {
        generation,
        live: true,
        start,
        end: None,
        hold_until: BTreeMap::new(),
        write_from: i64::MIN,
    };
    if let Some(frontier) = progress.frontier_ms {
        // Any bucket still open at the committed frontier starts after this instant (days are
        // at most 25 h long, and a day bucket of any zone starts within 14 h of a UTC midnight).
        let rehydrate_from = floor_day(frontier - config.seal_lateness_ms() as i64 - 2 * DAY_MS);
        for p in 0..partitions {
            let committed = progress.offsets.get(&p).copied().unwrap_or(0);
            let from = log.offset_for_time(p, rehydrate_from)?.min(committed);
            plan.start.insert(p, from);
            plan.hold_until.insert(p, committed);
        }
        plan.write_from = rehydrate_from;
    }
    Ok(plan)
}

/// Prepares a replay from `from_ms`: a new generation holding a copy of every row before the
/// aligned start (the UTC day before `from_ms`, so day buckets of every zone are whole), and
/// readers from that instant to the current end of the log.
pub fn plan_replay(client: &mut Client, log: &dyn Log, from_ms: i64) -> anyhow::Result<Plan> {
    let aligned = floor_day(from_ms) - DAY_MS;
    let partitions = log.partitions()?;
    let mut start = BTreeMap::new();
    let mut end = BTreeMap::new();
    for p in 0..partitions {
        let from = log.offset_for_time(p, aligned)?;
        let low = log.low_watermark(p)?;
        // The first record held is already at or after the start: the records retention
        // dropped before it may have been too, and a replay without them would be wrong.
        if from == low && low > 0 {
            anyhow::bail!(
                "partition {p} no longer holds records from {} (it starts at offset {low}, dropped by retention) and the archive does not reach back that far: replay from a later time, or archive the log (`clickflow archive`) before its retention drops it",
                chrono::DateTime::from_timestamp_millis(aligned)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default()
            );
        }
        start.insert(p, from);
        end.insert(p, log.high_watermark(p)?);
    }
    let mut tx = client.transaction()?;
    let old = store::active_generation(&mut tx)?;
    let generation: i32 = tx
        .query_one("SELECT coalesce(max(id), 0) + 1 FROM generations", &[])?
        .get(0);
    tx.execute(
        "INSERT INTO generations (id, status, replay_from) VALUES ($1, 'building', to_timestamp($2::bigint / 1000.0))",
        &[&generation, &aligned],
    )?;
    tx.execute(
        "INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family, dimension, dimension_value, metrics, sketch, open_until)
         SELECT $1, site_id, granularity, bucket, bucket_end, family, dimension, dimension_value, metrics, sketch, open_until
           FROM rollups WHERE generation = $2 AND bucket < to_timestamp($3::bigint / 1000.0)",
        &[&generation, &old, &aligned],
    )?;
    tx.commit()?;
    Ok(Plan {
        generation,
        live: false,
        start,
        end: Some(end),
        hold_until: BTreeMap::new(),
        write_from: aligned,
    })
}

/// Switches readers to a finished replay's generation in one transaction.
pub fn switch_to(client: &mut Client, generation: i32) -> anyhow::Result<i32> {
    let mut tx = client.transaction()?;
    let old = store::active_generation(&mut tx)?;
    tx.execute(
        "UPDATE generations SET status = 'retired' WHERE id = $1",
        &[&old],
    )?;
    tx.execute(
        "UPDATE generations SET status = 'live', switched_at = now() WHERE id = $1",
        &[&generation],
    )?;
    tx.execute(
        "UPDATE active_generation SET generation = $1",
        &[&generation],
    )?;
    tx.commit()?;
    Ok(old)
}

/// Messages read from the log at a time: a message carries up to
/// [`clickflow_dataflows::event::MAX_RECORDS_PER_MESSAGE`] records, so the source's batch
/// (counted in records) is filled a few messages at a time rather than all at once.
const MESSAGES_PER_READ: usize = 256;

/// Decodes log messages into records for the source operator. A message holds one record or
/// several: the source asks for at most `max` records, so records decoded beyond that wait
/// here, and the positions reported never pass a message with records still waiting.
struct RecordReader {
    inner: Box<dyn LogReader>,
    waiting: VecDeque<LogRecord<Record>>,
}

impl RecordReader {
    fn new(inner: Box<dyn LogReader>) -> RecordReader {
        RecordReader {
            inner,
            waiting: VecDeque::new(),
        }
    }
}

impl PartitionReader for RecordReader {
    type Item = Record;

    fn poll(&mut self, max: usize, out: &mut Vec<LogRecord<Record>>) -> Result<(), String> {
        let mut read = false;
        while self.waiting.len() < max {
            let messages = self
                .inner
                .poll(MESSAGES_PER_READ.min(max), Duration::ZERO)
                .map_err(|e| e.to_string())?;
            if messages.is_empty() {
                break;
            }
            read = true;
            for m in messages {
                match Record::decode_all(&m.value) {
                    Ok(records) => self
                        .waiting
                        .extend(records.into_iter().map(|data| LogRecord {
                            partition: m.partition,
                            offset: m.offset,
                            timestamp: m.timestamp,
                            data,
                        })),
                    Err(e) => {
                        crate::telemetry::DECODE_ERRORS.inc();
                        tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "skipping undecodable record");
                    }
                }
            }
        }
        let take = max.min(self.waiting.len());
        out.extend(self.waiting.drain(..take));
        // Positions move only when messages were read: an idle poll (the common case once
        // caught up) leaves the gauges as they are.
        if !read && take == 0 {
            return Ok(());
        }
        for (partition, offset) in self.positions() {
            crate::telemetry::SOURCE_OFFSET
                .with_label_values(&[&partition.to_string()])
                .set(offset as i64);
        }
        Ok(())
    }

    fn positions(&self) -> Vec<(u32, u64)> {
        let mut positions = self.inner.positions();
        // A message with records still waiting is not yet read: its offset is the position.
        for r in self.waiting.iter().rev() {
            positions.insert(r.partition, r.offset);
        }
        positions.into_iter().collect()
    }

    fn caught_up(&self, partition: u32) -> bool {
        self.inner.caught_up(partition) && self.waiting.iter().all(|r| r.partition != partition)
    }

    fn finished(&self) -> bool {
        self.waiting.is_empty() && self.inner.finished()
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A bounded run read and committed everything.
    Finished,
    /// Another generation became active: this job must stop (a supervisor restarts it).
    Retired,
}

/// Runs the job in this process with timely configuration `timely_config`.
pub fn run(
    config: &Config,
    timely_config: timely::Config,
    plan: Plan,
    log: Arc<dyn Log>,
    status: Arc<SinkStatus>,
) -> anyhow::Result<Outcome> {
    let retired = Arc::new(AtomicBool::new(false));
    let failed: Arc<parking_lot::Mutex<Option<String>>> = Arc::default();
    let settings = config.settings();
    let source_config = SourceConfig {
        epoch_ms: config.engine.epoch_ms,
        batch: config.engine.source_batch,
        ..SourceConfig::default()
    };
    let sink_config = SinkConfig {
        hold_until: plan.hold_until.clone(),
        write_from: plan.write_from,
        min_commit_interval: Duration::from_millis(config.engine.commit_interval_ms),
    };
    let db_url = config.database.url.clone();
    // Erased visitors are forgotten from the first epoch on, whatever this run re-reads.
    let erasures = crate::engine::erase::stored_erasures(&mut store::connect(&db_url)?, None)
        .context("loading erasures")?;
    let stop_watching = Arc::new(AtomicBool::new(false));
    // An idle live job commits nothing, so it would never learn from the sink that a replay
    // retired its generation; this watcher makes the old job stop within seconds.
    let watcher = plan.live.then(|| {
        let (url, generation) = (db_url.clone(), plan.generation);
        let (retired, stop) = (retired.clone(), stop_watching.clone());
        std::thread::spawn(move || watch_generation(&url, generation, &retired, &stop))
    });
    let (retired_w, failed_w) = (retired.clone(), failed.clone());
    let guards = timely::execute(timely_config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = |offsets: &BTreeMap<u32, u64>| -> BTreeMap<u32, u64> {
            offsets
                .iter()
                .filter(|(p, _)| **p as usize % peers == index)
                .map(|(p, o)| (*p, *o))
                .collect()
        };
        let start = mine(&plan.start);
        let end = plan.end.as_ref().map(mine);
        let reader = match log.reader(&start, end) {
            Ok(r) => r,
            Err(e) => {
                *failed_w.lock() = Some(format!("worker {index}: opening the log: {e}"));
                // The stop signal the other workers already watch; `run` reports the failure.
                retired_w.store(true, Ordering::SeqCst);
                return;
            }
        };
        let lateness = settings.seal_lateness_ms;
        let sink = PgSink::new(
            &db_url,
            plan.generation,
            plan.live,
            lateness,
            retired_w.clone(),
        );
        let (settings, source_config, sink_config, status) = (
            settings.clone(),
            source_config.clone(),
            sink_config.clone(),
            status.clone(),
        );
        let preloaded: Vec<(Record, u64, isize)> = if index == 0 {
            erasures.iter().map(|r| (r.clone(), 0, 1)).collect()
        } else {
            Vec::new()
        };
        worker.dataflow::<u64, _, _>(move |scope| {
            let (events, progress) = log_source(scope, "Events", source_config, move |_, _| {
                RecordReader::new(reader)
            });
            let events = events.concat(preloaded.to_stream(scope).as_collection());
            registry::metrics(events, &settings).sink(progress, sink_config, sink, status);
        });
        while worker.step_or_park(Some(Duration::from_millis(50))) {
            if retired_w.load(Ordering::SeqCst) {
                // timely keeps stepping installed dataflows after this closure returns; a
                // live dataflow never completes, so it has to be dropped to stop.
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                break;
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    let joined: Result<Vec<()>, String> = guards.join().into_iter().collect();
    stop_watching.store(true, Ordering::SeqCst);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    joined.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
    if let Some(e) = failed.lock().take() {
        anyhow::bail!(e);
    }
    if retired.load(Ordering::SeqCst) {
        return Ok(Outcome::Retired);
    }
    Ok(Outcome::Finished)
}

fn watch_generation(url: &str, generation: i32, retired: &AtomicBool, stop: &AtomicBool) {
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) && !retired.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = store::connect(url).ok();
        }
        if let Some(c) = client.as_mut() {
            if let Ok(active) = store::active_generation(c) {
                if active != generation {
                    tracing::info!(
                        generation,
                        active,
                        "a replay switched readers; stopping this job"
                    );
                    retired.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Builds timely's configuration from the standard flags.
pub fn timely_config(
    workers: usize,
    processes: usize,
    process: usize,
    hostfile: Option<&str>,
) -> anyhow::Result<timely::Config> {
    let mut args = vec![
        "clickflow".to_string(),
        "-w".into(),
        workers.to_string(),
        "-n".into(),
        processes.to_string(),
        "-p".into(),
        process.to_string(),
    ];
    if let Some(h) = hostfile {
        args.push("-h".into());
        args.push(h.to_string());
    }
    if processes > 1 && hostfile.is_none() {
        anyhow::bail!("-n {processes} needs a hostfile (-h) listing one host:port per process");
    }
    if process >= processes {
        anyhow::bail!("-p {process} must be below -n {processes}");
    }
    timely::Config::from_args(args.into_iter())
        .map_err(|e| anyhow::anyhow!("timely flags: {e}"))
        .context("configuring timely")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickflow_dataflows::event::Erasure;

    /// Messages of one partition, read in order.
    struct Messages {
        messages: VecDeque<crate::log::Record>,
        next: u64,
    }

    impl LogReader for Messages {
        fn poll(
            &mut self,
            max: usize,
            _: Duration,
        ) -> crate::log::LogResult<Vec<crate::log::Record>> {
            let n = max.min(self.messages.len());
            let read: Vec<_> = self.messages.drain(..n).collect();
            if let Some(last) = read.last() {
                self.next = last.offset + 1;
            }
            Ok(read)
        }
        fn positions(&self) -> BTreeMap<u32, u64> {
            BTreeMap::from([(0, self.next)])
        }
        fn caught_up(&self, _: u32) -> bool {
            self.messages.is_empty()
        }
        fn finished(&self) -> bool {
            self.messages.is_empty()
        }
    }

    fn erase(visitor: u64) -> Record {
        Record::Erase(Erasure {
            site: "s".into(),
            visitor,
        })
    }

    /// Messages of one and of several records come out one record at a time, in order, never
    /// more than asked for, and the position stays on a message until all of it is out.
    #[test]
    fn messages_of_several_records_are_read_within_the_batch() {
        let bodies = [
            vec![erase(1)],
            vec![erase(2), erase(3), erase(4)],
            vec![erase(5)],
        ];
        let messages = bodies
            .iter()
            .enumerate()
            .map(|(offset, records)| crate::log::Record {
                partition: 0,
                offset: offset as u64,
                timestamp: 1_000,
                key: b"s".to_vec(),
                value: Record::encode_all(records).unwrap(),
            })
            .collect();
        let mut reader = RecordReader::new(Box::new(Messages { messages, next: 0 }));
        let mut read = |max| {
            let mut out = Vec::new();
            reader.poll(max, &mut out).unwrap();
            let got: Vec<(u64, Record)> = out.into_iter().map(|r| (r.offset, r.data)).collect();
            (
                got,
                reader.positions(),
                reader.caught_up(0),
                reader.finished(),
            )
        };
        assert_eq!(
            read(2),
            (
                vec![(0, erase(1)), (1, erase(2))],
                vec![(0, 1)],
                false,
                false
            )
        );
        assert_eq!(read(1), (vec![(1, erase(3))], vec![(0, 1)], false, false));
        assert_eq!(
            read(5),
            (vec![(1, erase(4)), (2, erase(5))], vec![(0, 3)], true, true)
        );
    }
}
