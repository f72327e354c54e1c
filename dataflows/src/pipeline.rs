//! The stages every family shares: expiry of sealed state and deduplication by event id.

use clickflow_operators::expiry::Expire;
use clickflow_operators::time::{bucket_of, parse_tz, seal_time, Granularity};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::event::Event;
use crate::metric::MetricRow;
use crate::registry::FAMILIES;
use crate::settings::Settings;

/// The ingest time after which no family needs the event any more: its day bucket (the
/// widest window) is sealed.
pub fn event_seal_time(event: &Event, settings: &Settings) -> u64 {
    let day = bucket_of(event.ts, Granularity::Day, parse_tz(&event.tz));
    seal_time(day.end, settings.seal_lateness_ms)
}

/// Events with the same `(site, event_id)` are client retries: one of them counts.
/// The survivor is the least event in `Ord` order, so every run picks the same one.
pub fn dedupe<'s>(events: VecCollection<'s, u64, Event>) -> VecCollection<'s, u64, Event> {
    events
        .map(|e| ((e.site.clone(), e.event_id.clone()), e))
        .reduce_named("Dedupe", |_id, copies, out| {
            out.push((copies[0].0.clone(), 1))
        })
        .map(|(_, e)| e)
}

/// Everything downstream of the source: expiry, dedupe, and every registered family.
pub fn metrics<'s>(
    events: VecCollection<'s, u64, Event>,
    settings: &Settings,
) -> VecCollection<'s, u64, MetricRow> {
    let scope = events.scope();
    let seal_settings = settings.clone();
    let events = dedupe(events.expire_at(move |e| event_seal_time(e, &seal_settings)));
    concatenate(
        scope,
        FAMILIES
            .iter()
            .map(|family| (family.build)(events.clone(), settings)),
    )
}
