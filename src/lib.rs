//! Clickflow: exact, self-correcting web analytics on Timely/Differential Dataflow.
//!
//! The folders follow the data path: [`ingest`] (HTTP collector) → [`log`] (Kafka or
//! embedded) → [`engine`] (timely job running `clickflow_dataflows`, its Postgres sink,
//! cluster supervisor, replay and erasure) → [`store`] (schema, retention, archive) →
//! [`serve`] (the server process: query API, dashboard). [`local`] is `clickflow up`.

pub mod config;
pub mod engine;
pub mod http;
pub mod ingest;
pub mod local;
pub mod log;
pub mod serve;
pub mod store;
pub mod telemetry;
