//! Clickflow's metric families. Each family is one file holding its dataflow and its oracle
//! test; [`registry::FAMILIES`] lists them.

pub mod event;
pub mod metric;
pub mod pipeline;
pub mod registry;
pub mod settings;
#[cfg(test)]
pub mod testing;
pub mod traffic;

pub use event::Event;
pub use metric::{MetricKey, MetricRow};
pub use settings::Settings;
