//! What a metric family is and what it reads: the two types every family file names, kept
//! apart from the pipeline that builds [`Inputs`] and the registry that lists families, so
//! that a family depends on neither.

use std::cell::RefCell;
use std::sync::Arc;

use differential_dataflow::VecCollection;

use crate::hit::{Bot, Hit};
use crate::metric::Row;
use crate::settings::Settings;
use crate::visits::{visits, Visit};

/// A metric family: a named group of metrics computed by one dataflow fragment, and what the
/// query API needs to know to read them.
pub struct Family {
    pub name: &'static str,
    /// Every metric it stores, sketches (`…_hll`) included.
    pub metrics: &'static [&'static str],
    /// Which of `metrics` count distinct members (visitors): never added up across buckets
    /// or breakdown values. Where the family also stores `<metric>_hll`, ranges of several
    /// buckets are answered by merging those registers.
    pub distinct: &'static [&'static str],
    /// Metrics the query API computes from stored ones (rates, averages, amounts).
    pub derived: &'static [Derived],
    /// The breakdowns it materializes; `""` is the total without a breakdown. A breakdown by
    /// several dimensions is their names joined by `,`.
    pub dimensions: &'static [&'static str],
    pub build: for<'s> fn(&Inputs<'s>, &Settings) -> VecCollection<'s, u64, Row>,
}

/// A metric computed at query time: `numerator / denominator × scale`, rounded to
/// `decimals`. Its numerator and denominator are read from whichever family stores them for
/// the breakdown asked, so `bounce_rate` by source divides `sources`' bounces by its visits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Derived {
    pub name: &'static str,
    pub numerator: &'static str,
    pub denominator: Denominator,
    pub scale: f64,
    pub decimals: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denominator {
    /// Another metric of the same breakdown.
    Metric(&'static str),
    /// The total of `(family, metric)` without a breakdown, for the same time slots: the share
    /// of all visitors that converted. Available only for the declaring family's breakdowns.
    Total(&'static str, &'static str),
    /// None: the numerator scaled is an amount (revenue in currency units).
    Amount,
}

/// What every family builds on. All collections are over ingest time and already free of
/// duplicates, erased visitors and state of sealed days.
///
/// Hits and visits are shared (`Arc`): every family reads them, and a stream with many
/// readers hands each its own copy.
pub struct Inputs<'s> {
    /// Pageviews and custom events (refunds are not visitor activity and live apart).
    pub hits: VecCollection<'s, u64, Arc<Hit>>,
    /// `refund` events; `refund_of` names the purchase they take back.
    pub refunds: VecCollection<'s, u64, Arc<Hit>>,
    /// Hits the collector recognised as bots.
    pub bots: VecCollection<'s, u64, Bot>,
    /// Visits rebuilt from `hits`, once a family asks for them ([`Inputs::visits`]).
    visits: RefCell<Option<VecCollection<'s, u64, Arc<Visit>>>>,
    settings: Settings,
}

impl<'s> Inputs<'s> {
    pub fn new(
        hits: VecCollection<'s, u64, Arc<Hit>>,
        refunds: VecCollection<'s, u64, Arc<Hit>>,
        bots: VecCollection<'s, u64, Bot>,
        settings: &Settings,
    ) -> Inputs<'s> {
        Inputs {
            hits,
            refunds,
            bots,
            visits: RefCell::new(None),
            settings: settings.clone(),
        }
    }

    /// Visits rebuilt from `hits`. Sessionizing is built on the first call only: a job whose
    /// families read no visits (traffic, goals, revenue) does not pay for it.
    pub fn visits(&self) -> VecCollection<'s, u64, Arc<Visit>> {
        self.visits
            .borrow_mut()
            .get_or_insert_with(|| visits(self.hits.clone(), &self.settings).map(Arc::new))
            .clone()
    }
}
