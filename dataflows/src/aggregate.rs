//! Building blocks families are written with: each turns keyed records into metric rows.
//! They are thin layers over Clickflow's `sum_changes` and `distinct_total_sketched`, so a
//! family stays a handful of lines and every number it produces corrects itself on
//! retraction. Sums travel as changes that the sink adds up (see [`Row`]): no operator holds
//! their totals. Distinct counts keep each key's members, and rely on ingest time being
//! totally ordered (`u64`).

use std::hash::Hash;
use std::sync::Arc;

use clickflow_operators::combine::SumChanges;
use clickflow_operators::distinct::{Distinct, DistinctTotal};
use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::{ExchangeData, VecCollection};

use crate::metric::{visit_rows_open_until, Row, RowKey, VISIT_GRANULARITIES};
use crate::symbol::Sym;
use crate::uniques;
use crate::visits::Visit;

/// How many records each key has: `count(*) GROUP BY key`.
///
/// ```
/// use clickflow_dataflows::aggregate::count_rows;
/// use clickflow_dataflows::metric::RowKey;
/// use clickflow_dataflows::symbol::Sym;
/// use clickflow_operators::time::{Bucket, Granularity};
/// use differential_dataflow::input::Input;
///
/// timely::example(|scope| {
///     let b = Bucket { granularity: Granularity::Hour, start: 0, end: 3_600_000 };
///     let site = Sym::word("s");
///     let hits = scope.new_collection_from(vec![(site, b), (site, b)]).1;
///     let rows = count_rows(hits, |(site, b): (Sym, Bucket)| RowKey::new(site, b, "demo", "hits"));
///     rows.assert_eq(scope.new_collection_from(vec![(RowKey::new(site, b, "demo", "hits"), 2)]).1);
/// });
/// ```
pub fn count_rows<'s, K, F>(keys: VecCollection<'s, u64, K>, row: F) -> VecCollection<'s, u64, Row>
where
    K: Hash + Eq + Clone + 'static,
    F: Fn(K) -> RowKey + 'static,
{
    sum_rows(keys.map(|k| (k, 1)), row)
}

/// Several sums of each key at once: each record weighs in with a tuple of `isize` (one per
/// sum), and `rows(key, sums)` names the rows the sums become; it must be linear, as it is
/// given changes of the sums, not totals. A row whose total is zero is not stored.
/// `count_rows` and `sum_rows` are the one-sum case.
///
/// ```
/// use clickflow_dataflows::aggregate::sums_rows;
/// use clickflow_dataflows::metric::RowKey;
/// use clickflow_dataflows::symbol::Sym;
/// use clickflow_operators::time::{Bucket, Granularity};
/// use differential_dataflow::input::Input;
///
/// timely::example(|scope| {
///     let b = Bucket { granularity: Granularity::Hour, start: 0, end: 3_600_000 };
///     let s = Sym::word("s");
///     // (key, (is a pageview, 1 event))
///     let hits = scope.new_collection_from(vec![(s, (1isize, 1isize)), (s, (0, 1))]).1;
///     let rows = sums_rows(hits, move |site: Sym, (pageviews, events): (isize, isize)| {
///         [(RowKey::new(site, b, "demo", "pageviews"), pageviews as i64),
///          (RowKey::new(site, b, "demo", "events"), events as i64)]
///     });
///     let want = vec![(RowKey::new(s, b, "demo", "pageviews"), 1), (RowKey::new(s, b, "demo", "events"), 2)];
///     rows.assert_eq(scope.new_collection_from(want).1);
/// });
/// ```
pub fn sums_rows<'s, K, R, F, I>(
    weighted: VecCollection<'s, u64, (K, R)>,
    rows: F,
) -> VecCollection<'s, u64, Row>
where
    K: Hash + Eq + Clone + 'static,
    R: Semigroup + Multiply<isize, Output = R> + 'static,
    F: Fn(K, R) -> I + 'static,
    I: IntoIterator<Item = Row>,
{
    weighted
        .sum_changes()
        .flat_map(move |(k, r)| rows(k, r).into_iter().filter(|(_, v)| *v != 0))
}

/// How many distinct visitors each key has: `count(DISTINCT visitor) GROUP BY key`. Exact for
/// every materialized bucket; never add these up across buckets (merge the sketch that
/// [`visitor_rows`] adds instead). Each key holds its visitors once, sorted (about 10 bytes a
/// visitor in large sets); visitor ids must be uniform 64-bit hashes.
pub fn count_distinct_rows<'s, K, F>(
    pairs: VecCollection<'s, u64, (K, u64)>,
    row: F,
) -> VecCollection<'s, u64, Row>
where
    K: ExchangeData + Hash,
    F: Fn(K) -> RowKey + 'static,
{
    visitor_rows_with(pairs, row, None::<fn(K) -> RowKey>)
}

/// [`count_distinct_rows`] plus the HyperLogLog registers of the same visitors (see
/// [`crate::uniques`]), so visitors of one key over several buckets can be estimated by
/// merging registers. `sketch` names the sketch's row (metric `visitors_hll`), whose values
/// are its registers ([`uniques::pack`]). The registers are read off the exact set, at no
/// cost in memory.
pub fn visitor_rows<'s, K, F, G>(
    pairs: VecCollection<'s, u64, (K, u64)>,
    visitors: F,
    sketch: G,
) -> VecCollection<'s, u64, Row>
where
    K: ExchangeData + Hash,
    F: Fn(K) -> RowKey + 'static,
    G: Fn(K) -> RowKey + 'static,
{
    visitor_rows_with(pairs, visitors, Some(sketch))
}

fn visitor_rows_with<'s, K, F, G>(
    pairs: VecCollection<'s, u64, (K, u64)>,
    visitors: F,
    sketch: Option<G>,
) -> VecCollection<'s, u64, Row>
where
    K: ExchangeData + Hash,
    F: Fn(K) -> RowKey + 'static,
    G: Fn(K) -> RowKey + 'static,
{
    let sketching = sketch.as_ref().map(|_| uniques::SKETCHING);
    pairs
        .distinct_total_sketched(sketching)
        .flat_map(move |(k, stat)| match stat {
            Distinct::Count(n) => Some((visitors(k), n as i64)),
            Distinct::Register {
                precision,
                index,
                rank,
            } => sketch
                .as_ref()
                .map(|sketch| (sketch(k), uniques::pack(precision, index, rank))),
        })
}

/// The sum of the values of each key: `sum(v) GROUP BY key`. A sum of zero is no row.
pub fn sum_rows<'s, K, F>(
    pairs: VecCollection<'s, u64, (K, i64)>,
    row: F,
) -> VecCollection<'s, u64, Row>
where
    K: Hash + Eq + Clone + 'static,
    F: Fn(K) -> RowKey + 'static,
{
    sums_rows(pairs.map(|(k, v)| (k, v as isize)), move |k, v| {
        [(row(k), v as i64)]
    })
}

/// A breakdown of visits: for each bucket of a visit's start and each `(dimension, value)`
/// that `dimensions` gives the visit, the rows `visits`, `visitors` (distinct, with its
/// sketch `visitors_hll`) and, with `bounces`, `bounces`. Rows stay open until the end of the
/// visit's day.
pub fn visit_breakdown<'s>(
    visits: VecCollection<'s, u64, Arc<Visit>>,
    family: &'static str,
    dimensions: fn(&Visit) -> Vec<(&'static str, Sym)>,
    bounces: bool,
) -> VecCollection<'s, u64, Row> {
    /// (site, bucket, open until, dimension, value)
    type Key = (Sym, Bucket, i64, Sym, Sym);
    let scope = visits.scope();
    // Every event of a visit replaces the visit, but what a breakdown reads of it (start,
    // attribution, bounce) rarely changes: cancel those replacements before they fan out.
    let heads = visits
        .map(move |v| {
            let dims: Vec<(Sym, Sym)> = dimensions(&v)
                .into_iter()
                .map(|(d, value)| (Sym::of(d), value))
                .collect();
            (v.site, v.visitor, v.zone, v.start, v.is_bounce(), dims)
        })
        .consolidate_stream();
    let keyed = heads.flat_map(move |(site, visitor, zone, start, bounce, dims)| {
        let tz = zone.tz();
        let mut out: Vec<(Key, u64, bool)> = Vec::with_capacity(dims.len() * 2);
        for g in VISIT_GRANULARITIES {
            let bucket = bucket_of(start, g, tz);
            let until = visit_rows_open_until(bucket, tz);
            for (d, value) in &dims {
                out.push(((site, bucket, until, *d, *value), visitor, bounce));
            }
        }
        out
    });
    let row = move |metric: &'static str| {
        move |(site, bucket, until, d, value): Key| {
            let mut key = RowKey::new(site, bucket, family, metric).open_until(until);
            key.dimension[0] = d;
            key.value[0] = value;
            key
        }
    };
    let counts = keyed
        .clone()
        .map(|(k, _, bounce)| (k, (1isize, bounce as isize)));
    concatenate(
        scope,
        [
            sums_rows(counts, move |k, (visits, bounced)| {
                let mut out = vec![(row("visits")(k), visits as i64)];
                if bounces {
                    out.push((row("bounces")(k), bounced as i64));
                }
                out
            }),
            visitor_rows(
                keyed.map(|(k, v, _)| (k, v)),
                row("visitors"),
                row("visitors_hll"),
            ),
        ],
    )
}
