//! The stages every family shares: expiry of sealed state, erasure, deduplication by event
//! id, enrichment and sessionization. Families read the result as [`Inputs`]; which
//! families run is the caller's choice ([`crate::registry::metrics`] runs them all).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use chrono_tz::Tz;
use clickflow_operators::dedupe::FirstOfKey;
use clickflow_operators::expiry::Expire;
use clickflow_operators::forget::ExpireOrForget;
use clickflow_operators::sink::{
    transactional_sink, CommitBatch, SinkConfig, SinkStatus, Transaction,
};
use clickflow_operators::source::PartitionProgress;
use clickflow_operators::time::{bucket_of, seal_time, Granularity};
use differential_dataflow::collection::concatenate;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;

use crate::event::Record;
use crate::family::{Family, Inputs};
use crate::hit::{Bot, Hit};
use crate::metric::{visit_rows_open_until, Cell, Measure, MetricKey, Rollups, RowKey, Settled};
use crate::settings::Settings;
use crate::symbol::{Dictionary, Interner, Sym};

/// The ingest time after which no row needs a record of event time `ts` any more. All records
/// of a day share it (a visit is rebuilt from all of its day's events, so none may leave
/// early): the day's own seal, or, where the day's last hour straddles local midnight
/// (UTC+5:30 and the like), the seal of that hour's visit rows, which wait for the next day.
pub fn day_seal_time(ts: i64, tz: Tz, settings: &Settings) -> u64 {
    let day = bucket_of(ts, Granularity::Day, tz);
    let last_hour = bucket_of(day.end - 1, Granularity::Hour, tz);
    seal_time(
        day.end.max(visit_rows_open_until(last_hour, tz)),
        settings.seal_lateness_ms,
    )
}

/// How long past its own day's seal an event id is remembered for deduplication. A retry
/// re-sent without its time is stamped anew and may fall on the next day: the first copy's id
/// must outlive that day too, or the retry would count there. The same margin keeps a refund
/// until a purchase on the following day has sealed.
pub const DEDUPE_MARGIN_MS: u64 = 25 * 3_600_000;

/// A sealed day's records are retracted over the hour after its seal, in one-minute steps,
/// each visitor's at once, rather than all at one instant: the retraction of a whole day would
/// otherwise fan out through every family in one step (hundreds of MiB in flight at a million
/// events a day). Whole minutes keep the number of distinct times small. Rows are final from
/// their seal on, so a later retraction changes nothing the sink writes.
pub const EXPIRY_STEPS: u64 = 60;
pub const EXPIRY_STEP_MS: u64 = 60_000;

/// When a record of `visitor` whose rows all seal at `seal` is retracted.
pub fn expiry_time(seal: u64, visitor: u64) -> u64 {
    seal.saturating_add(visitor % EXPIRY_STEPS * EXPIRY_STEP_MS)
}

/// A log record with its text interned, or a word the dictionary must learn.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Item {
    Hit(Arc<Hit>),
    Bot(Bot),
    Erase(Sym, u64),
    Word(Sym, String),
}

/// Interns every record where it was read. Each worker announces each word once, at the time
/// of the first record that uses it, so a row can always be rendered once its time completes.
fn intern<'s>(records: VecCollection<'s, u64, Record>) -> VecCollection<'s, u64, Item> {
    records
        .inner
        .unary(Pipeline, "Intern", |_cap, _info| {
            let mut words = Interner::default();
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for (record, time, diff) in data.drain(..) {
                        let item = match record {
                            Record::Event(e) => Item::Hit(Arc::new(Hit::intern(e, &mut words))),
                            Record::Bot(b) => Item::Bot(Bot::intern(&b, &mut words)),
                            Record::Erase(x) => Item::Erase(words.intern(&x.site), x.visitor),
                        };
                        for (sym, text) in words.take_fresh() {
                            session.give((Item::Word(sym, text), time, 1));
                        }
                        session.give((item, time, diff));
                    }
                });
            }
        })
        .as_collection()
}

/// Interning, erasure, dedupe and expiry, then sessionization. Also returns the words the
/// dictionary needs to render rows.
pub fn prepare<'s>(
    records: VecCollection<'s, u64, Record>,
    settings: &Settings,
) -> (Inputs<'s>, VecCollection<'s, u64, (Sym, String)>) {
    let items = intern(records);
    let words = items.clone().flat_map(|i| match i {
        Item::Word(sym, text) => Some((sym, text)),
        _ => None,
    });
    // Erasures are kept forever: a visitor stays erased whatever arrives later.
    let erased = items.clone().flat_map(|i| match i {
        Item::Erase(site, visitor) => Some((site, visitor)),
        _ => None,
    });
    let (forget, seal) = (settings.clone(), settings.clone());
    // Dedupe holds ids only; the survivor is held once more, for its retraction at its day's
    // seal (refunds: the margin later, so a refund outlives a purchase of the next day) or at
    // its visitor's erasure, whichever comes first.
    let kept = items
        .clone()
        .flat_map(|i| match i {
            Item::Hit(h) => Some(h),
            _ => None,
        })
        .first_of_key(
            |h| h.site.mix(h.id),
            move |h| day_seal_time(h.ts, h.zone.tz(), &forget) + DEDUPE_MARGIN_MS,
        )
        .expire_or_forget(
            erased,
            |h| (h.site, h.visitor),
            move |h| {
                let margin = if h.is_refund() { DEDUPE_MARGIN_MS } else { 0 };
                expiry_time(day_seal_time(h.ts, h.zone.tz(), &seal) + margin, h.visitor)
            },
        );
    let (forget, seal) = (settings.clone(), settings.clone());
    let bots = items
        .flat_map(|i| match i {
            Item::Bot(b) => Some(b),
            _ => None,
        })
        .first_of_key(
            |b| b.site.mix(b.id),
            move |b| day_seal_time(b.ts, b.zone.tz(), &forget) + DEDUPE_MARGIN_MS,
        )
        .expire_at(move |b| expiry_time(day_seal_time(b.ts, b.zone.tz(), &seal), b.id));
    let refunds = kept.clone().filter(|h| h.is_refund());
    let hits = kept.filter(|h| !h.is_refund());
    (Inputs::new(hits, refunds, bots, settings), words)
}

/// Every family's rows, shaped for the sink, and the dictionary that renders them: the sink
/// holds the interned rows (a few integers each) and renders only what it writes.
pub struct Rollup<'s> {
    /// Each metric row as (stored row, (metric, value)).
    pub rows: VecCollection<'s, u64, (RowKey, Measure)>,
    /// Carries nothing; its frontier is that of the words the dictionary has learned. The
    /// sink's commits wait for it, so every word a committed row uses is known by then.
    learned: Stream<'s, u64, Vec<PartitionProgress>>,
    pub dictionary: Rc<RefCell<Dictionary>>,
    pub model: Rollups,
}

impl<'s> Rollup<'s> {
    /// Sinks the rows through [`transactional_sink`], rendered to text for `target`.
    pub fn sink<T: Transaction<MetricKey, Cell> + 'static>(
        self,
        progress: Stream<'s, u64, Vec<PartitionProgress>>,
        config: SinkConfig,
        target: T,
        status: Arc<SinkStatus>,
    ) {
        let target = Rendering {
            dictionary: self.dictionary,
            model: self.model.clone(),
            inner: target,
        };
        let progress = progress.concat(self.learned);
        transactional_sink(self.rows, progress, config, self.model, target, status);
    }
}

/// Everything downstream of the source: the shared stages and exactly `families`
/// (registered or not: tests of examples; [`crate::registry::metrics`] passes them all).
pub fn metrics_with<'s>(
    records: VecCollection<'s, u64, Record>,
    settings: &Settings,
    families: Vec<&'static Family>,
) -> Rollup<'s> {
    let scope = records.scope();
    let (inputs, words) = prepare(records, settings);
    let rows = concatenate(
        scope,
        families
            .iter()
            .map(|family| (family.build)(&inputs, settings)),
    );
    // A row's changes from its seal on are the retractions of its state's expiry, which the
    // sink ignores (the row is final): drop them here rather than ship them, all of a day's
    // rows at once, to the sink. One pass over every row update, which also shapes it for
    // the sink.
    let lateness = settings.seal_lateness_ms;
    let open = rows
        .inner
        .flat_map(move |((key, value), time, diff)| {
            (time < key.seal_time(lateness)).then(|| ((key.row(), (key.metric, value)), time, diff))
        })
        .as_collection();
    let dictionary = Rc::new(RefCell::new(fixed_words(&families)));
    Rollup {
        rows: open,
        learned: learn(words, dictionary.clone()),
        dictionary,
        model: Rollups::new(
            lateness,
            families.iter().flat_map(|f| f.metrics.iter().copied()),
        ),
    }
}

/// The words families may use without announcing them: names, metrics and dimensions.
fn fixed_words(families: &[&'static Family]) -> Dictionary {
    let mut fixed: Vec<&'static str> = Vec::new();
    for f in families {
        fixed.push(f.name);
        fixed.extend(f.metrics.iter().copied());
        for d in f.dimensions {
            fixed.extend(d.split(crate::metric::DIMENSION_SEPARATOR));
        }
    }
    Dictionary::with(fixed)
}

/// Teaches `dictionary` (worker 0's, where the sink writes) every word. The stream returned
/// carries nothing: its frontier says which times' words are all learned.
fn learn<'s>(
    words: VecCollection<'s, u64, (Sym, String)>,
    dictionary: Rc<RefCell<Dictionary>>,
) -> Stream<'s, u64, Vec<PartitionProgress>> {
    let to_writer = Exchange::new(|_: &((Sym, String), u64, isize)| 0);
    type Nothing = CapacityContainerBuilder<Vec<PartitionProgress>>;
    words
        .inner
        .unary::<Nothing, _, _, _>(to_writer, "LearnWords", move |_cap, _info| {
            move |input, _output| {
                input.for_each(|_cap, data| {
                    let mut dictionary = dictionary.borrow_mut();
                    for ((sym, text), _, _) in data.drain(..) {
                        dictionary.insert(sym, &text);
                    }
                });
            }
        })
}

/// Renders the batches of interned rows the sink commits into text for `inner`.
struct Rendering<T> {
    dictionary: Rc<RefCell<Dictionary>>,
    model: Rollups,
    inner: T,
}

impl<T: Transaction<MetricKey, Cell>> Transaction<RowKey, Settled> for Rendering<T> {
    fn commit(&mut self, batch: &CommitBatch<RowKey, Settled>) -> Result<(), String> {
        let dictionary = self.dictionary.borrow();
        let render = |key: &RowKey| {
            let (text, known) = key.render(&dictionary);
            if !known {
                tracing::error!(row = ?text, "a row names a word never announced");
            }
            text
        };
        let rendered = CommitBatch {
            upserts: batch
                .upserts
                .iter()
                .map(|(k, v)| (render(k), self.model.cell(v)))
                .collect(),
            deletes: batch.deletes.iter().map(render).collect(),
            progress: batch.progress.clone(),
            frontier: batch.frontier,
            replace_from: batch.replace_from,
        };
        drop(dictionary);
        self.inner.commit(&rendered)
    }
}
