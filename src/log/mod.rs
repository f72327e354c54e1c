//! The event log: Kafka in production, an embedded on-disk log in local mode. Both keep the
//! same contract (see `tests/log_contract.rs`): records are appended to partitions chosen by
//! key, get dense offsets from 0, carry a timestamp that never decreases within a partition
//! (embedded) or the producer's create time (Kafka), and can be read from any offset or from
//! the first offset at or after a timestamp.

pub mod embedded;
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::LogConfig;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log unavailable: {0}")]
    Unavailable(String),
    #[error("log i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
    #[error("no such partition {0}")]
    NoPartition(u32),
    #[error("partition {partition}: offset {offset} is gone from the log, which now starts at {low} (retention)")]
    Trimmed {
        partition: u32,
        offset: u64,
        low: u64,
    },
}

pub type LogResult<T> = Result<T, LogError>;

/// A record to append: the key picks the partition (the site id, so a site stays ordered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub key: String,
    pub value: Vec<u8>,
    pub timestamp: i64,
}

/// A record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A position of the log acknowledged durable: only after this may the collector answer 202.
pub type Ack = (u32, u64);

#[async_trait]
pub trait Log: Send + Sync {
    /// Appends the records; each gets its own result, in order. `Ok` means durable.
    async fn append(&self, records: Vec<Append>) -> Vec<LogResult<Ack>>;
    fn partitions(&self) -> LogResult<u32>;
    /// The offset the next appended record of `partition` will get.
    fn high_watermark(&self, partition: u32) -> LogResult<u64>;
    /// The first offset of `partition` the log still holds: 0 until retention drops records.
    fn low_watermark(&self, partition: u32) -> LogResult<u64>;
    /// Drops the records of `partition` before offset `before` (Kafka's `DeleteRecords`) and
    /// returns the partition's new first offset. Only the embedded log's writer does this:
    /// Kafka topics apply their own `retention.ms`.
    fn delete_records(&self, partition: u32, before: u64) -> LogResult<u64> {
        let _ = before;
        Err(LogError::Unavailable(format!(
            "partition {partition}: this log keeps its own retention"
        )))
    }
    /// The first offset still held whose timestamp is at or after `timestamp`; the high
    /// watermark when there is none.
    fn offset_for_time(&self, partition: u32, timestamp: i64) -> LogResult<u64>;
    /// A reader positioned at the given offsets. With `end`, it stops at those offsets.
    fn reader(
        &self,
        start: &BTreeMap<u32, u64>,
        end: Option<BTreeMap<u32, u64>>,
    ) -> LogResult<Box<dyn LogReader>>;
}

pub trait LogReader: Send {
    /// Up to `max` records from the assigned partitions, waiting at most `timeout` for one.
    fn poll(&mut self, max: usize, timeout: Duration) -> LogResult<Vec<Record>>;
    /// The next offset this reader will return for each assigned partition.
    fn positions(&self) -> BTreeMap<u32, u64>;
    /// True when `partition` had nothing more to read at the last poll (or reached its end).
    fn caught_up(&self, partition: u32) -> bool;
    /// True when a bounded reader has reached every end offset.
    fn finished(&self) -> bool;
}

/// One pass of the log's retention: drops each partition's records appended before
/// `now_ms - keep_ms`, but never one the archive has not taken yet when `archived` (each
/// partition's archive progress) is given. Returns the partitions whose start moved.
pub fn apply_retention(
    log: &dyn Log,
    keep_ms: i64,
    now_ms: i64,
    archived: Option<&BTreeMap<u32, u64>>,
) -> LogResult<Vec<(u32, u64)>> {
    let mut moved = Vec::new();
    for p in 0..log.partitions()? {
        let mut before = log.offset_for_time(p, now_ms.saturating_sub(keep_ms))?;
        if let Some(archived) = archived {
            before = before.min(archived.get(&p).copied().unwrap_or(0));
        }
        if before > log.low_watermark(p)? {
            moved.push((p, log.delete_records(p, before)?));
        }
    }
    Ok(moved)
}

/// The partition a key goes to: CRC32 of the key, as librdkafka's `consistent` partitioner.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// Opens the log the configuration names: for appending (the collector) or for reading only
/// (the engine and replays, which may run beside the collector).
pub fn open(config: &LogConfig, access: Access) -> anyhow::Result<Arc<dyn Log>> {
    Ok(match (config.kind.as_str(), access) {
        ("embedded", Access::Append) => Arc::new(embedded::EmbeddedLog::open(
            &config.dir,
            config.partitions,
            config.fsync,
        )?),
        ("embedded", Access::Read) => Arc::new(embedded::EmbeddedLog::open_read_only(&config.dir)?),
        ("kafka", _) => Arc::new(kafka::KafkaLog::connect(&config.brokers, &config.topic)?),
        (other, _) => anyhow::bail!("log.kind must be \"embedded\" or \"kafka\", not {other:?}"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Append,
    Read,
}
