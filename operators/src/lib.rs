//! Generic timely/differential operators used by Clickflow's dataflows.
//!
//! - [`source::log_source`]: reads a partitioned log into a collection at ingest time.
//! - [`time::bucket_of`]: event-time buckets (minute, hour, day in a time zone).
//! - [`expiry::Expire`]: retracts records when their window seals, bounding state.
//! - [`dedupe::FirstOfKey`]: the first record of each key, remembering keys, not records.
//! - [`forget::ExpireOrForget`]: expiry that also retracts a forgotten (erased) group.
//! - [`stash::Stash`]: updates held by time until complete, for operators judging a time whole.
//! - [`combine::SumChanges`]: sums per key and time sent as changes, for a consumer that adds up.
//! - [`distinct::DistinctTotal`]: exact distinct counts per key with their HyperLogLog registers.
//! - [`reduce::ReduceTotal`]: `reduce` for `u64` time keeping each key's input only.
//! - [`sink::transactional_sink`]: absolute-value upserts plus offsets in one transaction.

pub mod combine;
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

/// A seeded xorshift generator for the operators' randomized tests: no dependency, and the
/// same sequence on every machine.
#[cfg(test)]
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
