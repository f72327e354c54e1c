//! `pages`: per pathname, pageviews and distinct visitors (by the pageview's bucket), entries
//! and exits (by the visit's bucket), and time on page: the time from a pageview to the
//! visit's next pageview, summed, with the number of pageviews that have one (the last
//! pageview of a visit has no measured time). The API divides the two for the average.

use std::sync::Arc;

use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{sums_rows, visitor_rows};
use crate::family::{Denominator, Derived, Family, Inputs};
use crate::metric::{visit_rows_open_until, Row, RowKey, VISIT_GRANULARITIES};
use crate::settings::Settings;
use crate::symbol::Sym;
use crate::visits::Visit;

pub const FAMILY: Family = Family {
    name: "pages",
    metrics: &[
        "pageviews",
        "visitors",
        "visitors_hll",
        "entries",
        "exits",
        "time_on_page_ms",
        "timed_pageviews",
    ],
    distinct: &["visitors"],
    derived: &[Derived {
        name: "time_on_page",
        numerator: "time_on_page_ms",
        denominator: Denominator::Metric("timed_pageviews"),
        scale: 0.001,
        decimals: 1,
    }],
    dimensions: &["page"],
    build,
};

/// (site, bucket, path, until when the bucket's visit rows stay open)
type Key = (Sym, Bucket, Sym, i64);

/// Every metric of a page's bucket is stored in one row, so all stay open as long as the
/// visit-derived ones (entries, exits, time on page): until the bucket's day seals.
fn row(metric: &'static str, k: Key) -> RowKey {
    let (site, bucket, path, until) = k;
    RowKey::new(site, bucket, FAMILY.name, metric)
        .by("page", path)
        .open_until(until)
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    let views = inputs
        .hits
        .clone()
        .filter(|h| h.is_pageview())
        .flat_map(|h| {
            let tz = h.zone.tz();
            VISIT_GRANULARITIES.map(|g| {
                let b = bucket_of(h.ts, g, tz);
                ((h.site, b, h.page, visit_rows_open_until(b, tz)), h.visitor)
            })
        });
    // (pageviews, (entries, exits), (ms on page, timed pageviews)): one arrangement per page
    // row (differential's tuple differences go up to four, and nest).
    type Sums = (isize, (isize, isize), (isize, isize));
    let from_visits = inputs.visits().flat_map(|v: Arc<Visit>| {
        let tz = v.zone.tz();
        let mut out: Vec<(Key, Sums)> = Vec::with_capacity(4 + v.page_times.len() * 2);
        for g in VISIT_GRANULARITIES {
            let b = bucket_of(v.start, g, tz);
            let until = visit_rows_open_until(b, tz);
            if !v.entry_page.is_none() {
                out.push(((v.site, b, v.entry_page, until), (0, (1, 0), (0, 0))));
                out.push(((v.site, b, v.exit_page, until), (0, (0, 1), (0, 0))));
            }
            for (ts, path, ms) in &v.page_times {
                let b = bucket_of(*ts, g, tz);
                let key = (v.site, b, *path, visit_rows_open_until(b, tz));
                out.push((key, (0, (0, 0), (*ms as isize, 1))));
            }
        }
        out
    });
    // A visit's replacement (each of its events makes one) mostly repeats its page rows.
    let weighted = views
        .clone()
        .map(|(k, _)| (k, (1, (0, 0), (0, 0))))
        .concat(from_visits.consolidate_stream());
    concatenate(
        inputs.hits.scope(),
        [
            sums_rows(
                weighted,
                |k, (views, (entries, exits), (ms, timed)): Sums| {
                    [
                        (row("pageviews", k), views as i64),
                        (row("entries", k), entries as i64),
                        (row("exits", k), exits as i64),
                        (row("time_on_page_ms", k), ms as i64),
                        (row("timed_pageviews", k), timed as i64),
                    ]
                },
            ),
            visitor_rows(views, |k| row("visitors", k), |k| row("visitors_hll", k)),
        ],
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use clickflow_operators::time::parse_tz;

    use super::*;
    use crate::metric::MetricKey;
    use clickflow_operators::time::Granularity;

    use crate::testing::{oracle_property, oracle_visits, Oracle, Put};

    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        let key = |site: &str, b: Bucket, m: &str, path: &str| {
            MetricKey::new(site, b, "pages", m).by("page", path)
        };
        for h in o.hits.iter().filter(|h| h.is_pageview()) {
            for g in VISIT_GRANULARITIES {
                let tz = parse_tz(&h.tz);
                let b = bucket_of(h.ts, g, tz);
                let key = |m: &str| {
                    key(&h.site, b, m, &h.pathname).open_until(visit_rows_open_until(b, tz))
                };
                put.add(key("pageviews"), 1);
                put.distinct_sketched(key("visitors"), h.visitor);
            }
        }
        for v in oracle_visits(&o.hits, o.settings.visit_timeout_ms) {
            let tz = parse_tz(&v.tz);
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(v.start, g, tz);
                if v.pageviews > 0 {
                    put.add(
                        key(&v.site, b, "entries", &v.entry_page)
                            .open_until(visit_rows_open_until(b, tz)),
                        1,
                    );
                    put.add(
                        key(&v.site, b, "exits", &v.exit_page)
                            .open_until(visit_rows_open_until(b, tz)),
                        1,
                    );
                }
                for (ts, path, ms) in &v.page_times {
                    let b = bucket_of(*ts, g, tz);
                    put.add(
                        key(&v.site, b, "time_on_page_ms", path)
                            .open_until(visit_rows_open_until(b, tz)),
                        *ms,
                    );
                    put.add(
                        key(&v.site, b, "timed_pageviews", path)
                            .open_until(visit_rows_open_until(b, tz)),
                        1,
                    );
                }
            }
        }
        put.rows()
    }

    oracle_property!(pages_equal_oracle_at_every_epoch, &FAMILY, oracle);

    /// The table the sink holds once `stream` has gone through, the sink stepped only every
    /// `step_every` epochs (so a register's old and new rank may fall in different rounds).
    fn final_table(
        stream: &[(crate::Record, u64)],
        step_every: usize,
    ) -> BTreeMap<MetricKey, crate::metric::Cell> {
        use clickflow_operators::sink::{MemoryTable, SinkConfig, SinkStatus};
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::ToStream;
        let table: MemoryTable<MetricKey, crate::metric::Cell> = MemoryTable::default();
        let rows = table.0.clone();
        let (stream, settings) = (stream.to_vec(), crate::testing::test_settings());
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, records) = scope.new_collection::<crate::Record, isize>();
                let out = crate::pipeline::metrics_with(records, &settings, vec![&FAMILY]);
                let progress = Vec::<(u32, u64)>::new()
                    .to_stream(scope)
                    .container::<Vec<_>>();
                let status = std::sync::Arc::new(SinkStatus::default());
                out.sink(progress, SinkConfig::default(), table, status);
                input
            });
            for (i, (record, t)) in stream.into_iter().enumerate() {
                if t > *input.time() {
                    input.advance_to(t);
                    input.flush();
                    if i % step_every == 0 {
                        for _ in 0..20 {
                            worker.step();
                        }
                    }
                }
                input.insert(record);
            }
            input.close();
            while worker.step() {}
        });
        let table = rows.lock().expect("table").clone();
        table
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6)
        ))]
        /// For any stream, a page's registers merged over any range of hours equal the
        /// registers of that range's distinct visitors computed from the events: what the
        /// query API merges loses no visitor and invents none.
        #[test]
        fn merged_hour_registers_equal_the_range_visitors(
            seed in proptest::prelude::any::<u64>(),
            n in 50usize..300,
            skip in 0i64..6,
            hours in 1i64..12,
            step_every in 1usize..8,
        ) {
            // Sealed rows keep an erased visitor by design: no erasures here.
            let stream: Vec<_> = crate::testing::random_stream(seed, n)
                .into_iter()
                .filter(|(r, _)| !matches!(r, crate::Record::Erase(_)))
                .collect();
            let table = final_table(&stream, step_every);
            let oracle = Oracle::at(&stream, None, &crate::testing::test_settings());
            let first = oracle.hits.iter().map(|h| h.ts).min().unwrap_or(0);
            let from = (first.div_euclid(3_600_000) + skip) * 3_600_000;
            let to = from + hours * 3_600_000;
            type Unions = BTreeMap<(String, String), crate::uniques::Union>;
            let mut merged: Unions = BTreeMap::new();
            for (k, cell) in &table {
                let in_range = k.granularity == Granularity::Hour
                    && (from..to).contains(&k.bucket_start);
                if let (true, Some((_, bytes))) = (in_range, &cell.sketch) {
                    let union = merged.entry((k.site.clone(), k.dimension_value.clone())).or_default();
                    union.add(crate::uniques::decode(bytes).expect("a sketch"));
                }
            }
            let mut visitors: BTreeMap<(String, String), std::collections::BTreeSet<u64>> =
                BTreeMap::new();
            for h in oracle.hits.iter().filter(|h| h.is_pageview()) {
                let hour = bucket_of(h.ts, Granularity::Hour, parse_tz(&h.tz)).start;
                if (from..to).contains(&hour) {
                    visitors.entry((h.site.clone(), h.pathname.clone())).or_default().insert(h.visitor);
                }
            }
            // Each visitor's own register, merged: the registers of the range's visitors as
            // a union of rows holds them.
            let want: BTreeMap<_, _> = visitors
                .into_iter()
                .map(|(page, set)| {
                    let mut union = crate::uniques::Union::default();
                    for v in set {
                        union.add(crate::uniques::registers_of(&[v].into()));
                    }
                    (page, union.registers())
                })
                .collect();
            let merged: BTreeMap<_, _> =
                merged.into_iter().map(|(page, union)| (page, union.registers())).collect();
            proptest::prop_assert_eq!(merged, want);
        }
    }
}
