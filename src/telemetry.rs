//! Prometheus metrics, served at `/metrics`.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Registers a collector built from static, valid options; names are unique by construction,
/// so a failure here is a programming error caught by the first test that renders metrics.
fn register<C: prometheus::core::Collector + Clone + 'static>(made: prometheus::Result<C>) -> C {
    let c = made.expect("static metric options are valid");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

pub static EVENTS_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_events_accepted_total",
        "Events acknowledged durable by the log",
    ))
});

pub static BOT_EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_bot_events_total",
        "Hits recognised as bots: logged for per-site counts, never analysed",
    ))
});

pub static EVENTS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "clickflow_events_rejected_total",
            "Events refused by the collector, by reason",
        ),
        &["reason"],
    ))
});

pub static SINK_ROWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_sink_rows_total",
        "Rollup rows written or deleted by the sink",
    ))
});

pub static SINK_FRONTIER: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new(
        "clickflow_sink_frontier_ms",
        "Ingest time up to which results are committed",
    ))
});

pub static ARCHIVE_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_archive_records_total",
        "Log records committed to the archive",
    ))
});

pub static ARCHIVE_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_archive_bytes_total",
        "Bytes of archive files committed",
    ))
});

pub static ARCHIVE_OFFSET: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(
        Opts::new(
            "clickflow_archive_offset",
            "The next offset to archive, by partition (everything before it is committed)",
        ),
        &["partition"],
    ))
});

pub static DECODE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "clickflow_engine_decode_errors_total",
        "Log records the engine could not decode",
    ))
});

pub static SOURCE_OFFSET: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(
        Opts::new(
            "clickflow_engine_source_offset",
            "Next log offset this process's source reads, by partition it owns",
        ),
        &["partition"],
    ))
});

/// Where a (re)started engine began reading each partition, and the committed offset up to
/// which it only rebuilds state (rehydrates) before writing again.
pub static REHYDRATE_FROM: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(
        Opts::new(
            "clickflow_engine_rehydrate_from_offset",
            "Offset the engine started reading each partition at",
        ),
        &["partition"],
    ))
});

pub static REHYDRATE_UNTIL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(
        Opts::new(
            "clickflow_engine_rehydrate_until_offset",
            "Committed offset of each partition at start: rehydration ends there",
        ),
        &["partition"],
    ))
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    // Touch the statics so they appear even before their first increment.
    LazyLock::force(&EVENTS_ACCEPTED);
    LazyLock::force(&EVENTS_REJECTED);
    LazyLock::force(&BOT_EVENTS);
    LazyLock::force(&SINK_ROWS);
    LazyLock::force(&SINK_FRONTIER);
    LazyLock::force(&DECODE_ERRORS);
    LazyLock::force(&SOURCE_OFFSET);
    LazyLock::force(&REHYDRATE_FROM);
    LazyLock::force(&REHYDRATE_UNTIL);
    TextEncoder::new()
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_default()
}

/// `/metrics` and `/healthz` of an engine process, on a small runtime of their own so the
/// timely workers keep both cores' worth of threads to themselves.
pub fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use warp::Filter;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let metrics = warp::path!("metrics").map(|| {
                warp::reply::with_header(render(), "content-type", "text/plain; version=0.0.4")
            });
            let health = warp::path!("healthz").map(|| {
                warp::reply::json(&serde_json::json!({
                    "status": "ok",
                    "committed_frontier_ms": SINK_FRONTIER.get(),
                }))
            });
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    warp::serve(warp::get().and(metrics.or(health)))
                        .incoming(l)
                        .run()
                        .await
                }
                Err(e) => tracing::error!(error = %e, "metrics listener"),
            }
        })
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_renders() {
        let text = super::render();
        for name in [
            "clickflow_events_accepted_total",
            "clickflow_sink_rows_total",
            "clickflow_sink_frontier_ms",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
