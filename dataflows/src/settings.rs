//! Settings every family sees.

/// Engine-wide knobs that shape the dataflow.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How late (ingest time minus event time) an event may arrive and still count, in ms,
    /// plus the grace the engine adds on top of the collector's bound.
    pub seal_lateness_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seal_lateness_ms: 24 * 3_600_000 + 60_000,
        }
    }
}
