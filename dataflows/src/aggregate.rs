//! Building blocks families are written with: each turns keyed records into metric rows.
//! They are thin layers over differential's `count`, `distinct` and `reduce`, so a family
//! stays a handful of lines and every number it produces corrects itself on retraction.

use std::hash::Hash;

use clickflow_operators::time::{bucket_of, parse_tz, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::{ExchangeData, Hashable, VecCollection};

use crate::metric::{
    visit_rows_open_until, MetricKey, MetricRow, VALUE_SEPARATOR, VISIT_GRANULARITIES,
};
use crate::uniques::register_of;
use crate::visits::Visit;

/// How many records each key has: `count(*) GROUP BY key`.
///
/// ```
/// use clickflow_dataflows::aggregate::count_rows;
/// use clickflow_dataflows::MetricKey;
/// use clickflow_operators::time::{Bucket, Granularity};
/// use differential_dataflow::input::Input;
///
/// timely::example(|scope| {
///     let b = Bucket { granularity: Granularity::Hour, start: 0, end: 3_600_000 };
///     let hits = scope.new_collection_from(vec![("s".to_string(), b), ("s".to_string(), b)]).1;
///     let rows = count_rows(hits, |(site, b): (String, Bucket)| MetricKey::new(&site, b, "demo", "hits"));
///     rows.assert_eq(scope.new_collection_from(vec![(MetricKey::new("s", b, "demo", "hits"), 2)]).1);
/// });
/// ```
pub fn count_rows<'s, K, F>(
    keys: VecCollection<'s, u64, K>,
    row: F,
) -> VecCollection<'s, u64, MetricRow>
where
    K: ExchangeData + Hashable,
    F: Fn(K) -> MetricKey + 'static,
{
    keys.count().map(move |(k, n)| (row(k), n as i64))
}

/// How many distinct values each key has: `count(DISTINCT v) GROUP BY key`. Exact for every
/// materialized bucket; never add these up across buckets.
pub fn count_distinct_rows<'s, K, V, F>(
    pairs: VecCollection<'s, u64, (K, V)>,
    row: F,
) -> VecCollection<'s, u64, MetricRow>
where
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
    F: Fn(K) -> MetricKey + 'static,
{
    count_rows(pairs.distinct().map(|(k, _)| k), row)
}

/// The sum of the values of each key: `sum(v) GROUP BY key`. A sum of zero is no row.
pub fn sum_rows<'s, K, F>(
    pairs: VecCollection<'s, u64, (K, i64)>,
    row: F,
) -> VecCollection<'s, u64, MetricRow>
where
    K: ExchangeData + Hashable,
    F: Fn(K) -> MetricKey + 'static,
{
    count_rows(pairs.explode(|(k, v)| Some((k, v as isize))), row)
}

/// HyperLogLog registers (see [`crate::uniques`]) of the visitors of each key, so visitors of
/// one breakdown value over several buckets can be estimated by merging registers. Each row is
/// the key's row with metric `<metric>_hll` and the register index appended to the value.
pub fn visitor_sketch_rows<'s, K, F>(
    pairs: VecCollection<'s, u64, (K, u64)>,
    row: F,
) -> VecCollection<'s, u64, MetricRow>
where
    K: ExchangeData + Hash,
    F: Fn(K) -> MetricKey + 'static,
{
    pairs
        .map(|(k, visitor)| {
            let (index, rank) = register_of(visitor);
            ((k, index), rank)
        })
        .reduce_named("SketchRegisters", |_key, ranks, out| {
            // ranks arrive sorted: the last present one is the maximum
            if let Some((rank, _)) = ranks.iter().rev().find(|(_, n)| *n > 0) {
                out.push((**rank, 1));
            }
        })
        .map(move |((k, index), rank): ((K, u16), u8)| (sketch_key(row(k), index), rank as i64))
}

/// The sketch row of register `index` for the row `key`.
pub fn sketch_key(mut key: MetricKey, index: u16) -> MetricKey {
    key.metric.push_str(SKETCH_SUFFIX);
    key.dimension_value.push(VALUE_SEPARATOR);
    key.dimension_value.push_str(&index.to_string());
    key
}

/// Appended to a distinct metric's name for its sketch rows.
pub const SKETCH_SUFFIX: &str = "_hll";

/// A breakdown of visits: for each bucket of a visit's start and each `(dimension, value)`
/// that `dimensions` gives the visit, the rows `visits`, `visitors` (distinct, with its
/// sketch `visitors_hll`) and, with `bounces`, `bounces`. Rows stay open until the end of the visit's day.
pub fn visit_breakdown<'s>(
    visits: VecCollection<'s, u64, std::sync::Arc<Visit>>,
    family: &'static str,
    dimensions: fn(&Visit) -> Vec<(&'static str, String)>,
    bounces: bool,
) -> VecCollection<'s, u64, MetricRow> {
    type Key = (String, Bucket, i64, String, String);
    let scope = visits.scope();
    let keyed = visits.flat_map(move |v| {
        let tz = parse_tz(&v.tz);
        let dims = dimensions(&v);
        let mut out: Vec<(Key, u64, bool)> = Vec::new();
        for g in VISIT_GRANULARITIES {
            let bucket = bucket_of(v.start, g, tz);
            for (d, value) in &dims {
                let key = (
                    v.site.clone(),
                    bucket,
                    visit_rows_open_until(bucket, tz),
                    d.to_string(),
                    value.clone(),
                );
                out.push((key, v.visitor, v.is_bounce()));
            }
        }
        out
    });
    let row = move |metric: &'static str| {
        move |(site, bucket, until, d, value): Key| {
            MetricKey::new(&site, bucket, family, metric)
                .by(&d, &value)
                .open_until(until)
        }
    };
    let mut parts = vec![
        count_rows(keyed.clone().map(|(k, _, _)| k), row("visits")),
        count_distinct_rows(keyed.clone().map(|(k, v, _)| (k, v)), row("visitors")),
        visitor_sketch_rows(keyed.clone().map(|(k, v, _)| (k, v)), row("visitors")),
    ];
    if bounces {
        parts.push(count_rows(
            keyed.filter(|(_, _, b)| *b).map(|(k, _, _)| k),
            row("bounces"),
        ));
    }
    concatenate(scope, parts)
}
