//! Prometheus metrics, served at `/metrics`.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for duplicate names, which the statics below rule out.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

pub static EVENTS_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "clickflow_events_accepted_total",
            "Events acknowledged durable by the log",
        )
        .unwrap_or_else(|_| unreachable_counter()),
    )
});

pub static EVENTS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "clickflow_events_rejected_total",
                "Events refused by the collector",
            ),
            &["reason"],
        )
        .unwrap_or_else(|_| {
            IntCounterVec::new(Opts::new("invalid", "invalid"), &["reason"]).expect("static opts")
        }),
    )
});

pub static SINK_ROWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "clickflow_sink_rows_total",
            "Rollup rows written or deleted by the sink",
        )
        .unwrap_or_else(|_| unreachable_counter()),
    )
});

pub static SINK_FRONTIER: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "clickflow_sink_frontier_ms",
            "Ingest time up to which results are committed",
        )
        .unwrap_or_else(|_| IntGauge::new("invalid_gauge", "invalid").expect("static opts")),
    )
});

pub static DECODE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "clickflow_engine_decode_errors_total",
            "Log records the engine could not decode",
        )
        .unwrap_or_else(|_| unreachable_counter()),
    )
});

fn unreachable_counter() -> IntCounter {
    IntCounter::new("invalid_counter", "invalid").expect("static opts")
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    // Touch the statics so they appear even before their first increment.
    LazyLock::force(&EVENTS_ACCEPTED);
    LazyLock::force(&EVENTS_REJECTED);
    LazyLock::force(&SINK_ROWS);
    LazyLock::force(&SINK_FRONTIER);
    LazyLock::force(&DECODE_ERRORS);
    TextEncoder::new()
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_default()
}
