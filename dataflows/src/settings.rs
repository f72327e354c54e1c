//! Settings every family sees.

/// Engine-wide knobs that shape the dataflow.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How late (ingest time minus event time) an event may arrive and still count, in ms,
    /// plus the grace the engine adds on top of the collector's bound.
    pub seal_lateness_ms: u64,
    /// A visit ends after this long without events (and at midnight in the site's zone).
    pub visit_timeout_ms: i64,
    /// A visitor is "current" for this long after their latest event.
    pub realtime_window_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seal_lateness_ms: 24 * 3_600_000 + 60_000,
            visit_timeout_ms: 30 * 60_000,
            realtime_window_ms: 5 * 60_000,
        }
    }
}
