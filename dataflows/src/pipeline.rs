//! The stages every family shares: expiry of sealed state, erasure, deduplication by event
//! id, enrichment and sessionization. Families read the result as [`Inputs`].

use std::sync::Arc;

use clickflow_operators::expiry::Expire;
use clickflow_operators::time::{bucket_of, parse_tz, seal_time, Granularity};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::enrich::Hit;
use crate::event::{BotHit, Event, Record};
use crate::metric::{visit_rows_open_until, MetricRow};
use crate::registry::FAMILIES;
use crate::settings::Settings;
use crate::visits::{visits, Visit};

/// What every family builds on. All collections are over ingest time and already free of
/// duplicates, erased visitors and state of sealed days.
///
/// Hits and visits are shared (`Arc`): every family reads them, and a stream with many
/// readers hands each its own copy, which for a struct of a dozen strings was most of the
/// engine's time in malloc.
pub struct Inputs<'s> {
    /// Pageviews and custom events (refunds are not visitor activity and live apart).
    pub hits: VecCollection<'s, u64, Arc<Hit>>,
    /// `refund` events; `refund_of` names the purchase they take back.
    pub refunds: VecCollection<'s, u64, Arc<Hit>>,
    /// Visits rebuilt from `hits`.
    pub visits: VecCollection<'s, u64, Arc<Visit>>,
    /// Hits the collector recognised as bots.
    pub bots: VecCollection<'s, u64, BotHit>,
}

/// The ingest time after which no row needs a record of event time `ts` any more. All records
/// of a day share it (a visit is rebuilt from all of its day's events, so none may leave
/// early): the day's own seal, or, where the day's last hour straddles local midnight
/// (UTC+5:30 and the like), the seal of that hour's visit rows, which wait for the next day.
pub fn day_seal_time(ts: i64, tz: &str, settings: &Settings) -> u64 {
    let tz = parse_tz(tz);
    let day = bucket_of(ts, Granularity::Day, tz);
    let last_hour = bucket_of(day.end - 1, Granularity::Hour, tz);
    seal_time(
        day.end.max(visit_rows_open_until(last_hour, tz)),
        settings.seal_lateness_ms,
    )
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

/// How long past its own day's seal a copy of an event is remembered for deduplication. A
/// retry re-sent without its time is stamped anew and may fall on the next day: the first
/// copy must outlive that day too, or the retry would count there once the first expired.
/// The same margin keeps a refund until a purchase on the following day has sealed.
pub const DEDUPE_MARGIN_MS: u64 = 25 * 3_600_000;

/// Expiry, erasure, dedupe, enrichment and sessionization.
pub fn prepare<'s>(records: VecCollection<'s, u64, Record>, settings: &Settings) -> Inputs<'s> {
    let day_seal = settings.clone();
    let events = records
        .clone()
        .flat_map(|r| match r {
            Record::Event(e) => Some(e),
            _ => None,
        })
        .expire_at(move |e| day_seal_time(e.ts, &e.tz, &day_seal) + DEDUPE_MARGIN_MS);
    let (day_seal, bot_seal) = (settings.clone(), settings.clone());
    let bots = records
        .clone()
        .flat_map(|r| match r {
            Record::Bot(b) => Some(b),
            _ => None,
        })
        .expire_at(move |b| day_seal_time(b.ts, &b.tz, &day_seal) + DEDUPE_MARGIN_MS)
        // Retried bot requests count once too.
        .map(|b| ((b.site.clone(), b.event_id.clone()), b))
        .reduce_named("DedupeBots", |_id, copies, out| {
            out.push((copies[0].0.clone(), 1))
        })
        .map(|(_, b)| b)
        // Downstream state follows the survivor's own day (expiries compose: see realtime).
        .expire_at(move |b| day_seal_time(b.ts, &b.tz, &bot_seal));
    // Erasures are kept forever: a visitor stays erased whatever arrives later.
    let erased = records
        .flat_map(|r| match r {
            Record::Erase(x) => Some((x.site, x.visitor)),
            _ => None,
        })
        .distinct();
    let kept = events
        .map(|e| ((e.site.clone(), e.visitor), e))
        .antijoin(erased)
        .map(|(_, e)| e);
    let all = dedupe(kept).map(|e| Arc::new(Hit::from(e)));
    let refunds = all.clone().filter(|h| h.is_refund());
    let hit_seal = settings.clone();
    let hits = all
        .filter(|h| !h.is_refund())
        .expire_at(move |h| day_seal_time(h.ts, &h.tz, &hit_seal));
    Inputs {
        visits: visits(hits.clone(), settings).map(Arc::new),
        hits,
        refunds,
        bots,
    }
}

/// Everything downstream of the source: the shared stages and every registered family.
pub fn metrics<'s>(
    records: VecCollection<'s, u64, Record>,
    settings: &Settings,
) -> VecCollection<'s, u64, MetricRow> {
    let scope = records.scope();
    let inputs = prepare(records, settings);
    concatenate(
        scope,
        FAMILIES
            .iter()
            .map(|family| (family.build)(&inputs, settings)),
    )
}
