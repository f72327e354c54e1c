//! A timely source over a partitioned, offset-addressed log (Kafka or the embedded log).
//!
//! Records become differential updates at their *ingest* time: the log timestamp rounded up
//! to an epoch. The source also reports, per partition, the next offset it has emitted up to
//! and the time by which those records are in the dataflow, so a sink can store offsets and
//! results in one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use crate::time::{epoch_of, Millis};

/// One record read from a log partition, already decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord<D> {
    pub partition: u32,
    pub offset: u64,
    /// The log's timestamp for the record (append or create time), in ms.
    pub timestamp: Millis,
    pub data: D,
}

/// What the source needs from a log: a reader over the partitions one worker owns.
pub trait PartitionReader: 'static {
    type Item;
    /// Appends up to `max` records to `out`. An error is logged by the caller and retried.
    fn poll(&mut self, max: usize, out: &mut Vec<LogRecord<Self::Item>>) -> Result<(), String>;
    /// The partitions this reader owns with the next offset it will return for each.
    fn positions(&self) -> Vec<(u32, u64)>;
    /// True when the partition had nothing more to read at the last poll.
    fn caught_up(&self, partition: u32) -> bool;
    /// True when a bounded read (a replay up to fixed end offsets) has read everything.
    fn finished(&self) -> bool {
        false
    }
}

/// Settings of [`log_source`].
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Width of an ingest epoch, the unit of timely time, in ms.
    pub epoch_ms: u64,
    /// Records read per activation before yielding to other operators.
    pub batch: usize,
    /// How a caught-up partition learns what time it is; injected so tests control it.
    pub clock: fn() -> Millis,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            epoch_ms: 1_000,
            batch: 10_000,
            clock: wall_clock_ms,
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn wall_clock_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Progress of one partition: offsets below `next_offset` are in the dataflow once the
/// frontier passes the timely time at which this record was sent.
pub type PartitionProgress = (u32, u64);

/// The source's outputs: the records as a collection, and per-partition progress.
pub type SourceStreams<'scope, D> = (
    VecCollection<'scope, u64, D, isize>,
    Stream<'scope, u64, Vec<PartitionProgress>>,
);

/// Builds a source in `scope`; `make_reader(worker_index, peers)` opens the reader for the
/// partitions that worker owns.
///
/// Times never go backwards: a record stamped earlier than the source's current time (clock
/// skew between producers) is counted at the current time. A partition that is caught up lets
/// time advance with the clock, so results keep flowing when traffic stops.
///
/// ```
/// use clickflow_operators::source::{log_source, LogRecord, PartitionReader, SourceConfig};
/// use timely::dataflow::operators::Capture;
/// use timely::dataflow::operators::capture::Extract;
///
/// struct Vec1(Vec<LogRecord<&'static str>>, usize);
/// impl PartitionReader for Vec1 {
///     type Item = &'static str;
///     fn poll(&mut self, max: usize, out: &mut Vec<LogRecord<&'static str>>) -> Result<(), String> {
///         let end = (self.1 + max).min(self.0.len());
///         out.extend(self.0[self.1..end].iter().cloned());
///         self.1 = end;
///         Ok(())
///     }
///     fn positions(&self) -> Vec<(u32, u64)> { vec![(0, self.1 as u64)] }
///     fn caught_up(&self, _: u32) -> bool { self.1 == self.0.len() }
///     fn finished(&self) -> bool { self.1 == self.0.len() }
/// }
///
/// let captured = timely::example(|scope| {
///     let records = vec![
///         LogRecord { partition: 0, offset: 0, timestamp: 1_500, data: "a" },
///         LogRecord { partition: 0, offset: 1, timestamp: 2_500, data: "b" },
///     ];
///     let (events, _progress) = log_source(scope, "Example", SourceConfig::default(),
///         move |_, _| Vec1(records, 0));
///     events.inner.capture()
/// });
/// let updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
/// assert_eq!(updates, vec![("a", 2_000, 1), ("b", 3_000, 1)]);
/// ```
pub fn log_source<'scope, R, F>(
    scope: Scope<'scope, u64>,
    name: &str,
    config: SourceConfig,
    make_reader: F,
) -> SourceStreams<'scope, R::Item>
where
    R: PartitionReader,
    R::Item: Clone + 'static,
    F: FnOnce(usize, usize) -> R,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let (mut data_out, data) = builder.new_output::<Vec<(R::Item, u64, isize)>>();
    let (mut progress_out, progress) = builder.new_output::<Vec<PartitionProgress>>();

    let mut reader = make_reader(scope.index(), scope.peers());
    builder.build(move |mut caps| {
        let mut progress_cap = caps.pop();
        let mut data_cap = caps.pop();
        let mut buffer = Vec::with_capacity(config.batch);
        let mut reported: BTreeMap<u32, u64> = BTreeMap::new();
        let mut last_time: BTreeMap<u32, u64> = BTreeMap::new();
        move |_frontiers| {
            let (Some(dcap), Some(pcap)) = (data_cap.as_mut(), progress_cap.as_mut()) else {
                return;
            };
            let now = *dcap.time();
            buffer.clear();
            if let Err(e) = reader.poll(config.batch, &mut buffer) {
                tracing::warn!(operator = ?info.address, error = %e, "log read failed; retrying");
                activator.activate_after(Duration::from_millis(200));
                return;
            }
            let mut sent_at: BTreeMap<u32, u64> = BTreeMap::new();
            if !buffer.is_empty() {
                let mut out = Vec::with_capacity(buffer.len());
                for record in buffer.drain(..) {
                    let time = epoch_of(record.timestamp, config.epoch_ms).max(now);
                    last_time.insert(record.partition, time);
                    let sent = sent_at.entry(record.partition).or_insert(time);
                    *sent = (*sent).max(time);
                    out.push((record.data, time, 1));
                }
                data_out.activate().give(&*dcap, &mut out);
            }

            let positions = reader.positions();
            let mut progress_by_time: BTreeMap<u64, Vec<PartitionProgress>> = BTreeMap::new();
            for &(partition, next) in &positions {
                if reported.get(&partition) != Some(&next) {
                    reported.insert(partition, next);
                    let at = sent_at.get(&partition).copied().unwrap_or(now);
                    progress_by_time
                        .entry(at)
                        .or_default()
                        .push((partition, next));
                }
            }
            for (time, mut batch) in progress_by_time {
                progress_out
                    .activate()
                    .give(&pcap.delayed(&time), &mut batch);
            }

            if reader.finished() {
                data_cap = None;
                progress_cap = None;
                return;
            }
            // The next record of a backlogged partition is no older than the last one read
            // from it; a caught-up partition only receives records appended from now on.
            let clock = epoch_of((config.clock)(), config.epoch_ms);
            let mut next = u64::MAX;
            for &(partition, _) in &positions {
                let bound = if reader.caught_up(partition) {
                    clock
                } else {
                    last_time.get(&partition).copied().unwrap_or(now)
                };
                next = next.min(bound);
            }
            if next == u64::MAX {
                next = clock;
            }
            if next > now {
                dcap.downgrade(&next);
                pcap.downgrade(&next);
            }
            let idle = positions.iter().all(|(p, _)| reader.caught_up(*p));
            if idle {
                activator.activate_after(Duration::from_millis(config.epoch_ms.clamp(5, 100)));
            } else {
                activator.activate();
            }
        }
    });
    (data.as_collection(), progress)
}
