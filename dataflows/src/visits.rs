//! Sessionization, shared by every family that reports on visits.
//!
//! A visit is a run of one visitor's events on one site with no gap longer than the timeout.
//! Visits also end at midnight in the site's zone (as Universal Analytics did): a visit then
//! lives inside one day bucket, so its state expires with that day and a sealed day can never
//! be changed by the next one.

use clickflow_operators::time::{bucket_of, parse_tz, Granularity};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::enrich::{Hit, Source};
use crate::event::Client;
use crate::settings::Settings;

/// One visit, rebuilt whenever one of its events changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Visit {
    pub site: String,
    pub visitor: u64,
    pub tz: String,
    /// Event time of the first and the last event.
    pub start: i64,
    pub end: i64,
    /// End of the site-zone day the visit belongs to: events up to then can still change it.
    pub day_end: i64,
    pub pageviews: i64,
    /// Custom events (anything but a pageview): a visit with one makes no bounce.
    pub interactions: i64,
    /// Path of the first and last pageview; empty for visits without pageviews.
    pub entry_page: String,
    pub exit_page: String,
    /// Attribution comes from the first pageview (the first event if there is none).
    pub source: Source,
    pub client: Client,
    pub country: String,
    /// `(pageview time, path, ms until the next pageview)` for every pageview but the last.
    pub page_times: Vec<(i64, String, i64)>,
}

impl Visit {
    pub fn is_bounce(&self) -> bool {
        self.pageviews == 1 && self.interactions == 0
    }

    pub fn duration_ms(&self) -> i64 {
        self.end - self.start
    }
}

/// What sessionization needs of a hit, ordered by time (then id, so ties are deterministic).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Step {
    ts: i64,
    event_id: String,
    pageview: bool,
    pathname: String,
    tz: String,
    source: Source,
    client: Client,
    country: String,
}

/// Groups `hits` into visits per (site, visitor, day in the site's zone).
pub fn visits<'s>(
    hits: VecCollection<'s, u64, std::sync::Arc<Hit>>,
    settings: &Settings,
) -> VecCollection<'s, u64, Visit> {
    let timeout = settings.visit_timeout_ms;
    hits.map(|h| {
        let day = bucket_of(h.ts, Granularity::Day, parse_tz(&h.tz));
        (
            (h.site.clone(), h.visitor, day.end),
            Step {
                ts: h.ts,
                event_id: h.event_id.clone(),
                pageview: h.is_pageview(),
                pathname: h.pathname.clone(),
                tz: h.tz.clone(),
                source: h.source.clone(),
                client: h.client.clone(),
                country: h.country.clone(),
            },
        )
    })
    .reduce_named("Sessionize", move |(site, visitor, day_end), steps, out| {
        let mut run: Vec<&Step> = Vec::new();
        for (step, count) in steps {
            // Deduplicated upstream: each step is present once.
            if *count <= 0 {
                continue;
            }
            if run.last().is_some_and(|last| step.ts - last.ts > timeout) {
                out.push((close(site, *visitor, *day_end, &run), 1));
                run.clear();
            }
            run.push(step);
        }
        if !run.is_empty() {
            out.push((close(site, *visitor, *day_end, &run), 1));
        }
    })
    .map(|(_, visit)| visit)
}

fn close(site: &str, visitor: u64, day_end: i64, steps: &[&Step]) -> Visit {
    let pageviews: Vec<&&Step> = steps.iter().filter(|s| s.pageview).collect();
    let first = pageviews.first().copied().unwrap_or(&steps[0]);
    let page_times = pageviews
        .windows(2)
        .map(|w| (w[0].ts, w[0].pathname.clone(), w[1].ts - w[0].ts))
        .collect();
    Visit {
        site: site.to_owned(),
        visitor,
        tz: first.tz.clone(),
        start: steps[0].ts,
        end: steps[steps.len() - 1].ts,
        day_end,
        pageviews: pageviews.len() as i64,
        interactions: (steps.len() - pageviews.len()) as i64,
        entry_page: pageviews
            .first()
            .map(|s| s.pathname.clone())
            .unwrap_or_default(),
        exit_page: pageviews
            .last()
            .map(|s| s.pathname.clone())
            .unwrap_or_default(),
        source: first.source.clone(),
        client: first.client.clone(),
        country: first.country.clone(),
        page_times,
    }
}
