//! Sessionization, shared by every family that reports on visits.
//!
//! A visit is a run of one visitor's events on one site with no gap longer than the timeout.
//! Visits also end at midnight in the site's zone (as Universal Analytics did): a visit then
//! lives inside one day bucket, so its state expires with that day and a sealed day can never
//! be changed by the next one.

use std::sync::Arc;

use clickflow_operators::reduce::ReduceTotal;
use clickflow_operators::time::{bucket_of, Granularity};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::hit::{Client, Hit, Source};
use crate::settings::Settings;
use crate::symbol::{Sym, Zone};

/// One visit, rebuilt whenever one of its events changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Visit {
    pub site: Sym,
    pub visitor: u64,
    pub zone: Zone,
    /// Event time of the first and the last event.
    pub start: i64,
    pub end: i64,
    /// End of the site-zone day the visit belongs to: events up to then can still change it.
    pub day_end: i64,
    pub pageviews: i64,
    /// Custom events (anything but a pageview): a visit with one makes no bounce.
    pub interactions: i64,
    /// Path of the first and last pageview; [`Sym::NONE`] for visits without pageviews.
    pub entry_page: Sym,
    pub exit_page: Sym,
    /// Attribution comes from the first pageview (the first event if there is none).
    pub source: Source,
    pub client: Client,
    pub country: Sym,
    /// `(pageview time, path, ms until the next pageview)` for every pageview but the last.
    pub page_times: Vec<(i64, Sym, i64)>,
}

impl Visit {
    pub fn is_bounce(&self) -> bool {
        self.pageviews == 1 && self.interactions == 0
    }

    pub fn duration_ms(&self) -> i64 {
        self.end - self.start
    }
}

/// Groups `hits` into visits per (site, visitor, day in the site's zone).
///
/// The sessionizer's state is one `(time, id, shared hit)` per event of an open day, held once
/// (no arrangement of input or output): the hit itself is the one every family already
/// shares, so a late event re-cuts a visitor's day from integers and pointers.
pub fn visits<'s>(
    hits: VecCollection<'s, u64, Arc<Hit>>,
    settings: &Settings,
) -> VecCollection<'s, u64, Visit> {
    let timeout = settings.visit_timeout_ms;
    hits.map(|h| {
        let day = bucket_of(h.ts, Granularity::Day, h.zone.tz());
        ((h.site, h.visitor, day.end), (h.ts, h.id, h))
    })
    .reduce_total("Sessionize", move |(site, visitor, day_end), steps, out| {
        let mut run: Vec<&Hit> = Vec::new();
        let mut last_ts = i64::MIN;
        // Deduplicated upstream: each step is present once.
        for ((ts, _, hit), _) in steps {
            if !run.is_empty() && ts - last_ts > timeout {
                out.push((close(*site, *visitor, *day_end, &run), 1));
                run.clear();
            }
            run.push(hit);
            last_ts = *ts;
        }
        if !run.is_empty() {
            out.push((close(*site, *visitor, *day_end, &run), 1));
        }
    })
    .map(|(_, visit)| visit)
}

fn close(site: Sym, visitor: u64, day_end: i64, steps: &[&Hit]) -> Visit {
    let pageviews: Vec<&Hit> = steps.iter().copied().filter(|s| s.is_pageview()).collect();
    let first = pageviews.first().copied().unwrap_or(steps[0]);
    let page_times = pageviews
        .windows(2)
        .map(|w| (w[0].ts, w[0].page, w[1].ts - w[0].ts))
        .collect();
    Visit {
        site,
        visitor,
        zone: first.zone,
        start: steps[0].ts,
        end: steps[steps.len() - 1].ts,
        day_end,
        pageviews: pageviews.len() as i64,
        interactions: (steps.len() - pageviews.len()) as i64,
        entry_page: pageviews.first().map_or(Sym::NONE, |s| s.page),
        exit_page: pageviews.last().map_or(Sym::NONE, |s| s.page),
        source: first.source.clone(),
        client: first.client,
        country: first.country,
        page_times,
    }
}
