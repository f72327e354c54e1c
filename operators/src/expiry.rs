//! Expiry: each record is inserted at its time and retracted at the time its window seals,
//! the temporal-filter idiom from Materialize. State downstream then follows open windows,
//! not history.

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

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
            .unary(Pipeline, "Expire", move |_cap, _info| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for (record, time, diff) in data.drain(..) {
                            let until = seal(&record);
                            if until != u64::MAX {
                                // Differential lets an update carry any time at or after its
                                // capability's, so the retraction needs no delayed capability.
                                session.give((record.clone(), until.max(time), -diff));
                            }
                            session.give((record, time, diff));
                        }
                    });
                }
            })
            .as_collection()
    }
}
