//! Updates held by time until their time is complete, each time with the capability to send
//! at it: what an operator needs to judge a time's updates together and in time order,
//! whatever order the exchange delivers them in.

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};

/// Updates grouped by time, each group with a capability for its time.
pub struct Stash<D> {
    waiting: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
}

impl<D> Default for Stash<D> {
    fn default() -> Self {
        Stash {
            waiting: BTreeMap::new(),
        }
    }
}

impl<D> Stash<D> {
    /// Holds `update` for `time`, which `cap` (the capability it arrived with) can reach.
    pub fn push(&mut self, cap: &InputCapability<u64>, time: u64, update: D) {
        self.waiting
            .entry(time)
            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
            .1
            .push(update);
    }

    /// Holds `updates` (time, update), which `cap` can reach. A message's updates mostly
    /// share one time: each run of one time finds its group once.
    pub fn extend(
        &mut self,
        cap: &InputCapability<u64>,
        updates: impl IntoIterator<Item = (u64, D)>,
    ) {
        let mut updates = updates.into_iter().peekable();
        while let Some((time, update)) = updates.next() {
            let group = &mut self
                .waiting
                .entry(time)
                .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
                .1;
            group.push(update);
            while let Some((_, update)) = updates.next_if(|(t, _)| *t == time) {
                group.push(update);
            }
        }
    }

    /// The earliest time held.
    pub fn next_time(&self) -> Option<u64> {
        self.waiting.keys().next().copied()
    }

    /// The updates of `time`, with a capability for it.
    pub fn take(&mut self, time: u64) -> Option<(Capability<u64>, Vec<D>)> {
        self.waiting.remove(&time)
    }

    /// The earliest time held if `complete(time)`, with its capability and updates.
    pub fn pop_complete(
        &mut self,
        complete: impl Fn(u64) -> bool,
    ) -> Option<(u64, Capability<u64>, Vec<D>)> {
        let time = self.next_time().filter(|t| complete(*t))?;
        let (cap, updates) = self.take(time)?;
        Some((time, cap, updates))
    }
}
