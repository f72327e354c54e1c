//! The read side and the one server process: `serve` runs the collector's routes and the
//! query API ([`api`], [`query`], the [`dashboard`]) on their listeners, and the hourly
//! retention tasks.

pub mod api;
pub mod dashboard;
pub mod query;

use std::sync::Arc;

use anyhow::Context;
use warp::Filter;

use crate::config::Config;
use crate::http::recover;
use crate::ingest::{self, Collector};
use crate::log;
use crate::store::retention;
use api::Api;

/// Runs the collector and the query API until the process ends. `log` is the log to append
/// to (opened from the configuration when `None`); `collector_hook` receives the collector
/// once the listeners are bound (`up --demo` feeds it traffic).
pub async fn serve(
    config: Config,
    log: Option<Arc<dyn log::Log>>,
    collector_hook: Option<tokio::sync::oneshot::Sender<Arc<Collector>>>,
) -> anyhow::Result<()> {
    let log = match log {
        Some(l) => l,
        None => log::open(&config.log, log::Access::Append)?,
    };
    let pool = api::pool(&config.database.url, config.database.pool_size)?;
    let collector = Arc::new(Collector::new(
        config.collector.clone(),
        log.clone(),
        pool.clone(),
    )?);
    let admin = (!config.api.admin_token.is_empty()).then(|| api::Admin {
        token: config.api.admin_token.clone(),
        config: config.clone(),
        log: log.clone(),
    });
    if config.database.minute_retention_secs > 0 {
        tokio::spawn(retention::minute_retention(
            pool.clone(),
            config.database.minute_retention_secs,
        ));
    }
    if config.log.retention_secs > 0 {
        if config.log.kind == "embedded" {
            let archived = !config.archive.url.trim().is_empty();
            tokio::spawn(retention::log_retention(
                log.clone(),
                pool.clone(),
                config.log.retention_secs,
                archived,
            ));
        } else {
            tracing::warn!("log.retention_secs applies to the embedded log; a Kafka topic keeps its own retention.ms");
        }
    }
    let api = Arc::new(Api {
        pool,
        log: Some(log),
        admin,
        minute_retention_secs: config.database.minute_retention_secs,
    });
    // Bound before anyone is told the server is up, and a taken port is an error, not a panic.
    let listener = bind(&config.collector.listen, "collector.listen").await?;
    let separate_api =
        !config.api.listen.is_empty() && config.api.listen != config.collector.listen;
    let api_listener = if separate_api {
        Some(bind(&config.api.listen, "api.listen").await?)
    } else {
        None
    };
    if let Some(hook) = collector_hook {
        let _ = hook.send(collector.clone());
    }
    let ingest = ingest::routes(collector);
    match api_listener {
        None => {
            tracing::info!(listen = %config.collector.listen, "collector and query API listening");
            let routes = ingest.or(api::routes(api)).unify().recover(recover);
            warp::serve(routes).incoming(listener).run().await;
        }
        Some(api_listener) => {
            tracing::info!(listen = %config.collector.listen, api_listen = %config.api.listen, "collector and query API listening apart");
            // The public listener serves ingest and its health probe only: queries, shares,
            // the dashboard, admin actions and metrics are on the API's listener alone.
            let public = ingest
                .or(api::health_route(api.clone()))
                .unify()
                .recover(recover);
            let private = api::routes(api).recover(recover);
            tokio::join!(
                warp::serve(public).incoming(listener).run(),
                warp::serve(private).incoming(api_listener).run()
            );
        }
    }
    Ok(())
}

/// Binds `address` (the setting `setting` names it), with an error that says which.
pub async fn bind(address: &str, setting: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let address: std::net::SocketAddr = address.parse().with_context(|| {
        format!("{setting} = {address:?} is not an address like 127.0.0.1:8080")
    })?;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({setting})"))
}
