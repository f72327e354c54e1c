//! Expiry: each record is inserted at its time and retracted at the time its window seals,
//! the temporal-filter idiom from Materialize. State downstream then follows open windows,
//! not history.
//!
//! The retractions are held here until the input frontier reaches their time. Sending them
//! downstream at once (legal in differential) would park every future retraction in each
//! downstream batcher, which re-examines them at every epoch: quadratic in open state.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

/// Extension trait adding [`Expire::expire_at`] to collections over ingest time.
pub trait Expire<'scope, D> {
    /// Retracts every record at `seal(record)` (or at its own time, if that is later).
    /// A `seal` of `u64::MAX` keeps the record forever.
    ///
    /// ```
    /// use clickflow_operators::expiry::Expire;
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    ///
    /// let captured = timely::example(|scope| {
    ///     let (mut input, events) = scope.new_collection::<u64, isize>();
    ///     input.insert(5);
    ///     // the record 5 lives until time 10
    ///     events.expire_at(|x| *x * 2).inner.capture()
    /// });
    /// let mut updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// updates.sort();
    /// assert_eq!(updates, vec![(5, 0, 1), (5, 10, -1)]);
    /// ```
    fn expire_at<F>(self, seal: F) -> VecCollection<'scope, u64, D, isize>
    where
        F: Fn(&D) -> u64 + 'static;
}

impl<'scope, D: Clone + 'static> Expire<'scope, D> for VecCollection<'scope, u64, D, isize> {
    fn expire_at<F>(self, seal: F) -> VecCollection<'scope, u64, D, isize>
    where
        F: Fn(&D) -> u64 + 'static,
    {
        self.inner
            .unary_frontier(Pipeline, "Expire", move |_cap, _info| {
                let mut pending: BTreeMap<u64, Vec<(D, isize)>> = BTreeMap::new();
                // Held at the earliest pending retraction, so downstream cannot pass it.
                let mut held: Option<Capability<u64>> = None;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&earliest) = cap.least() else { return };
                        let mut session = output.session(&cap);
                        for (record, time, diff) in data.drain(..) {
                            let until = seal(&record);
                            if until != u64::MAX {
                                let until = until.max(time);
                                if held.as_ref().is_none_or(|h| *h.time() > until) {
                                    held = Some(cap.delayed(&until.max(earliest), 0));
                                }
                                pending
                                    .entry(until)
                                    .or_default()
                                    .push((record.clone(), -diff));
                            }
                            session.give((record, time, diff));
                        }
                    });
                    let Some(cap) = held.as_mut() else { return };
                    while let Some((&time, _)) = pending.first_key_value() {
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let retractions = pending.pop_first().map(|(_, r)| r).unwrap_or_default();
                        let at = cap.delayed(&time);
                        output
                            .session(&at)
                            .give_iterator(retractions.into_iter().map(|(d, r)| (d, time, r)));
                    }
                    match pending.first_key_value() {
                        Some((&next, _)) => cap.downgrade(&next),
                        None => held = None,
                    }
                }
            })
            .as_collection()
    }
}
