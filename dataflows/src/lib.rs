//! Clickflow's metric families. Each family is one file holding its dataflow and its oracle
//! test; [`registry::FAMILIES`] lists them. The shared stages (expiry, erasure, dedupe,
//! enrichment, sessionization) live in [`pipeline`]; [`aggregate`] has the building blocks.

pub mod aggregate;
pub mod enrich;
pub mod event;
pub mod metric;
pub mod pipeline;
pub mod registry;
pub mod settings;
#[cfg(test)]
pub mod testing;
pub mod visits;

pub mod geo;
pub mod goals;
pub mod pages;
pub mod realtime;
pub mod revenue;
pub mod sessions;
pub mod sources;
pub mod tech;
pub mod traffic;
pub mod uniques;

pub use enrich::Hit;
pub use event::{Event, Record};
pub use metric::{MetricKey, MetricRow};
pub use settings::Settings;
