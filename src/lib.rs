//! Clickflow: exact, self-correcting web analytics on Timely/Differential Dataflow.
//!
//! Data path: [`collector`] (HTTP ingest) → [`log`] (Kafka or embedded) → [`engine`]
//! (timely job running `clickflow_dataflows`) → [`sink`] (Postgres, with offsets in the same
//! transaction) → [`api`] (merchant queries). [`archive`] keeps the log past its retention.

pub mod api;
pub mod archive;
pub mod cluster;
pub mod collector;
pub mod compat;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod enrich;
pub mod erase;
pub mod local;
pub mod log;
pub mod metrics;
pub mod query;
pub mod sink;
pub mod store;
pub mod tracker;
