//! The list of metric families. Adding a family is one file plus one line here.

use differential_dataflow::VecCollection;

use crate::event::Event;
use crate::metric::MetricRow;
use crate::settings::Settings;

/// A metric family: a named group of metrics computed by one dataflow fragment.
pub struct Family {
    pub name: &'static str,
    pub metrics: &'static [&'static str],
    pub build:
        for<'s> fn(VecCollection<'s, u64, Event>, &Settings) -> VecCollection<'s, u64, MetricRow>,
}

pub static FAMILIES: &[Family] = &[crate::traffic::FAMILY];

/// The family that computes `metric`, if any.
pub fn family_of(metric: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.metrics.contains(&metric))
}
