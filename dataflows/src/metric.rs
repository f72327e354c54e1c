//! The shape every family's output takes: one row per (site, bucket, dimension, metric).

use clickflow_operators::time::{seal_time, Bucket, Granularity};
use serde::{Deserialize, Serialize};

/// Identifies one materialized number. Families without a breakdown use an empty
/// `dimension` and `dimension_value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricKey {
    pub site: String,
    pub granularity: Granularity,
    pub bucket_start: i64,
    pub bucket_end: i64,
    pub family: String,
    pub dimension: String,
    pub dimension_value: String,
    pub metric: String,
}

impl MetricKey {
    pub fn new(site: &str, bucket: Bucket, family: &str, metric: &str) -> MetricKey {
        MetricKey {
            site: site.to_owned(),
            granularity: bucket.granularity,
            bucket_start: bucket.start,
            bucket_end: bucket.end,
            family: family.to_owned(),
            dimension: String::new(),
            dimension_value: String::new(),
            metric: metric.to_owned(),
        }
    }

    /// The ingest time from which this row can no longer change.
    pub fn seal_time(&self, lateness_ms: u64) -> u64 {
        seal_time(self.bucket_end, lateness_ms)
    }
}

/// A family's output: the current value of each metric row.
pub type MetricRow = (MetricKey, i64);
