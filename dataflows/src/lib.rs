//! Clickflow's metric families. Each family is one file holding its dataflow and its oracle
//! test, written against [`family::Family`] and [`family::Inputs`]; [`registry::FAMILIES`]
//! lists them. The shared stages (expiry, erasure, dedupe, enrichment, sessionization) live
//! in [`pipeline`]; [`aggregate`] has the building blocks.
//! Inside the dataflow all text is interned ([`symbol::Sym`]); rows become text at the end.

pub mod aggregate;
/// The README's worked example, tested like a registered family but not registered.
#[cfg(test)]
mod devices;
pub mod enrich;
pub mod event;
pub mod family;
pub mod hit;
pub mod metric;
pub mod pipeline;
pub mod registry;
pub mod settings;
pub mod symbol;
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

pub use event::{Event, Record};
pub use hit::Hit;
pub use metric::{MetricKey, Row, RowKey};
pub use settings::Settings;
