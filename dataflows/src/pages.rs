//! `pages`: per pathname, pageviews and distinct visitors (by the pageview's bucket), entries
//! and exits (by the visit's bucket), and time on page: the time from a pageview to the
//! visit's next pageview, summed, with the number of pageviews that have one (the last
//! pageview of a visit has no measured time). The API divides the two for the average.

use clickflow_operators::time::{bucket_of, parse_tz, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_distinct_rows, count_rows, sum_rows, visitor_sketch_rows};
use crate::metric::{visit_rows_open_until, MetricKey, MetricRow, VISIT_GRANULARITIES};
use crate::pipeline::Inputs;
use crate::registry::Family;
use crate::settings::Settings;

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
    dimensions: &["page"],
    build,
};

/// (site, bucket, path, open until)
type Key = (String, Bucket, String, i64);

fn row(metric: &'static str) -> impl Fn(Key) -> MetricKey {
    move |(site, bucket, path, until)| {
        MetricKey::new(&site, bucket, FAMILY.name, metric)
            .by("page", &path)
            .open_until(until)
    }
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, MetricRow> {
    let views = inputs
        .hits
        .clone()
        .filter(|h| h.is_pageview())
        .flat_map(|h| {
            let tz = parse_tz(&h.tz);
            VISIT_GRANULARITIES.map(|g| {
                let b = bucket_of(h.ts, g, tz);
                ((h.site.clone(), b, h.pathname.clone(), b.end), h.visitor)
            })
        });
    let ends = |entry: bool| {
        move |v: std::sync::Arc<crate::visits::Visit>| {
            let tz = parse_tz(&v.tz);
            let path = if entry { &v.entry_page } else { &v.exit_page };
            if path.is_empty() {
                return Vec::new();
            }
            VISIT_GRANULARITIES
                .map(|g| {
                    let b = bucket_of(v.start, g, tz);
                    (
                        v.site.clone(),
                        b,
                        path.clone(),
                        visit_rows_open_until(b, tz),
                    )
                })
                .to_vec()
        }
    };
    let timed = inputs.visits.clone().flat_map(|v| {
        let tz = parse_tz(&v.tz);
        let mut out: Vec<(Key, i64)> = Vec::new();
        for (ts, path, ms) in &v.page_times {
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(*ts, g, tz);
                out.push((
                    (
                        v.site.clone(),
                        b,
                        path.clone(),
                        visit_rows_open_until(b, tz),
                    ),
                    *ms,
                ));
            }
        }
        out
    });
    concatenate(
        inputs.hits.scope(),
        [
            count_rows(views.clone().map(|(k, _)| k), row("pageviews")),
            count_distinct_rows(views.clone(), row("visitors")),
            visitor_sketch_rows(views, row("visitors")),
            count_rows(inputs.visits.clone().flat_map(ends(true)), row("entries")),
            count_rows(inputs.visits.clone().flat_map(ends(false)), row("exits")),
            sum_rows(timed.clone(), row("time_on_page_ms")),
            count_rows(timed.map(|(k, _)| k), row("timed_pageviews")),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{oracle_property, oracle_visits, Oracle, Put};

    fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        let key = |site: &str, b: Bucket, m: &str, path: &str| {
            MetricKey::new(site, b, "pages", m).by("page", path)
        };
        for h in o.hits.iter().filter(|h| h.is_pageview()) {
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, parse_tz(&h.tz));
                put.add(key(&h.site, b, "pageviews", &h.pathname), 1);
                put.distinct_sketched(key(&h.site, b, "visitors", &h.pathname), h.visitor);
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

    oracle_property!(pages_equal_oracle_at_every_epoch, "pages", oracle);
}
