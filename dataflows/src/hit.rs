//! What the families read: events and bot hits with every text interned ([`Sym`]), ids as
//! fingerprints and zones as indexes, so a hit is a fixed handful of integers.

use serde::{Deserialize, Serialize};

use crate::enrich::TextHit;
use crate::event::{BotHit, Event, PAGEVIEW, REFUND};
use crate::symbol::{fingerprint, Interner, Sym, Zone};

pub const PAGEVIEW_SYM: Sym = Sym::word(PAGEVIEW);
pub const REFUND_SYM: Sym = Sym::word(REFUND);

/// An accepted event, enriched and interned.
///
/// Field order is the tie-break of deduplication: of two copies of one event id logged in the
/// same epoch, the one with the earlier time (then the lesser visitor) counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hit {
    pub site: Sym,
    /// Event time in ms.
    pub ts: i64,
    pub visitor: u64,
    /// Fingerprint of the event id.
    pub id: u64,
    /// `pageview`, `refund` or the custom event's name (a goal).
    pub name: Sym,
    pub zone: Zone,
    /// Path without query string or fragment.
    pub page: Sym,
    pub source: Source,
    pub client: Client,
    /// ISO 3166-1 alpha-2 code or `unknown`.
    pub country: Sym,
    /// What few hits have (properties, revenue, a refund's purchase), behind one pointer:
    /// every open hit is held until its day seals, so its size is the engine's memory.
    pub extra: Option<Box<Extra>>,
}

/// The parts of a hit most hits lack.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Extra {
    /// `(prop:<key>, value)`: the key already as the dimension the goals family names.
    pub props: Vec<(Sym, Sym)>,
    /// Amount in millionths and the currency, when the amount parses exactly.
    pub revenue: Option<(i64, Sym)>,
    /// For refunds: the fingerprint of the purchase's event id.
    pub refund_of: Option<u64>,
}

/// Where a visit came from (see [`crate::enrich::Source`]); empty fields are [`Sym::EMPTY`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    pub source: Sym,
    pub referrer: Sym,
    pub channel: Sym,
    /// `utm_source`, `utm_medium`, `utm_campaign`, `utm_term`, `utm_content`; `None` when all
    /// are empty, as on most hits.
    pub utm: Option<Box<[Sym; 5]>>,
}

impl Source {
    /// The `i`-th UTM value (see [`Source::utm`]), [`Sym::EMPTY`] when absent.
    pub fn utm(&self, i: usize) -> Sym {
        self.utm.as_ref().map_or(Sym::EMPTY, |utm| utm[i])
    }
}

/// Device, browser and operating system; versions already next to their name (`Chrome 120`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Client {
    pub device: Sym,
    pub browser: Sym,
    pub browser_version: Sym,
    pub os: Sym,
    pub os_version: Sym,
}

impl Hit {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW_SYM
    }

    pub fn is_refund(&self) -> bool {
        self.name == REFUND_SYM
    }

    pub fn props(&self) -> &[(Sym, Sym)] {
        self.extra.as_ref().map_or(&[], |x| &x.props)
    }

    pub fn revenue(&self) -> Option<(i64, Sym)> {
        self.extra.as_ref().and_then(|x| x.revenue)
    }

    pub fn refund_of(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|x| x.refund_of)
    }

    /// Enriches and interns a logged event.
    pub fn intern(event: Event, words: &mut Interner) -> Hit {
        let t = TextHit::from(event);
        let s = &t.source;
        let c = &t.client;
        Hit {
            site: words.intern(&t.site),
            ts: t.ts,
            visitor: t.visitor,
            id: fingerprint(&t.event_id),
            name: words.intern(&t.name),
            zone: Zone::of(&t.tz),
            page: words.intern(&t.pathname),
            source: Source {
                source: words.intern(&s.source),
                referrer: words.intern(&s.referrer),
                channel: words.intern(s.channel.as_str()),
                utm: {
                    let utm = [
                        words.intern(&s.utm_source),
                        words.intern(&s.utm_medium),
                        words.intern(&s.utm_campaign),
                        words.intern(&s.utm_term),
                        words.intern(&s.utm_content),
                    ];
                    (utm != [Sym::EMPTY; 5]).then(|| Box::new(utm))
                },
            },
            client: Client {
                device: words.intern(&c.device),
                browser: words.intern(&c.browser),
                browser_version: words.intern_parts(&[&c.browser, " ", &c.browser_version]),
                os: words.intern(&c.os),
                os_version: words.intern_parts(&[&c.os, " ", &c.os_version]),
            },
            country: words.intern(&t.country),
            extra: {
                let extra = Extra {
                    props: t
                        .props
                        .iter()
                        .map(|(k, v)| (words.intern_parts(&["prop:", k]), words.intern(v)))
                        .collect(),
                    revenue: t
                        .revenue
                        .as_ref()
                        .and_then(|r| Some((r.micros()?, words.intern(&r.currency)))),
                    refund_of: t.refund_of.as_deref().map(fingerprint),
                };
                (extra != Extra::default()).then(|| Box::new(extra))
            },
        }
    }
}

/// A bot hit, interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bot {
    pub site: Sym,
    pub ts: i64,
    pub id: u64,
    pub zone: Zone,
}

impl Bot {
    pub fn intern(bot: &BotHit, words: &mut Interner) -> Bot {
        Bot {
            site: words.intern(&bot.site),
            ts: bot.ts,
            id: fingerprint(&bot.event_id),
            zone: Zone::of(&bot.tz),
        }
    }
}
