//! Generic timely/differential operators used by Clickflow's dataflows.
//!
//! - [`source::log_source`]: reads a partitioned log into a collection at ingest time.
//! - [`time::bucket_of`]: event-time buckets (minute, hour, day in a time zone).
//! - [`expiry::Expire`]: retracts records when their window seals, bounding state.
//! - [`dedupe::FirstOfKey`]: the first record of each key, remembering keys, not records.
//! - [`forget::ExpireOrForget`]: expiry that also retracts a forgotten (erased) group.
//! - [`stash::Stash`]: updates held by time until complete, for operators judging a time whole.
//! - [`distinct::DistinctTotal`]: exact distinct counts per key with their HyperLogLog registers.
//! - [`reduce::ReduceTotal`]: `reduce` for `u64` time keeping each key's input only.
//! - [`sink::transactional_sink`]: absolute-value upserts plus offsets in one transaction.

pub mod dedupe;
pub mod distinct;
pub mod expiry;
pub mod forget;
pub mod members;
pub mod reduce;
pub mod sink;
pub mod source;
pub mod stash;
pub mod tables;
pub mod time;
