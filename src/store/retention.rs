//! What the store keeps and for how long: minute rows past `database.minute_retention_secs`,
//! and the embedded log's records past `log.retention_secs` (never before the archive holds
//! them).

use std::sync::Arc;
use std::time::Duration;

use super::archive;
use crate::log;

/// Hourly, drops the minute rows the retention setting no longer keeps; the first time ten
/// minutes after start, so that a crash loop does not turn into a delete loop.
pub async fn minute_retention(pool: deadpool_postgres::Pool, secs: u64) {
    let mut hourly = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(600),
        Duration::from_secs(3600),
    );
    loop {
        hourly.tick().await;
        let run = async {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let dropped = tx
                .execute(super::DROP_OLD_MINUTE_ROWS, &[&(secs as f64)])
                .await?;
            tx.commit().await?;
            anyhow::Ok(dropped)
        };
        match run.await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "minute rows past retention dropped"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "minute retention failed; next try in an hour")
            }
        }
    }
}

/// Applies the embedded log's retention a few times per retention period. With an archive
/// configured, records the archiver has not committed yet are kept whatever their age: the
/// archive, not the log, is the history, so it must never miss what the log drops.
pub async fn log_retention(
    log: Arc<dyn log::Log>,
    pool: deadpool_postgres::Pool,
    keep_secs: u64,
    archived: bool,
) {
    let mut every = tokio::time::interval(Duration::from_secs((keep_secs / 4).clamp(1, 600)));
    let mut warned = false;
    loop {
        every.tick().await;
        let progress = if archived {
            let read = async {
                let client = pool.get().await?;
                archive::archived_until(&client).await
            };
            match read.await {
                Ok(p) => {
                    if p.is_empty() && !warned {
                        warned = true;
                        tracing::warn!("log retention waits for the archiver: nothing is archived yet (run `clickflow archive`)");
                    }
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "log retention skipped: archive progress unreadable");
                    continue;
                }
            }
        } else {
            None
        };
        let log = log.clone();
        let now = chrono::Utc::now().timestamp_millis();
        let pass = tokio::task::spawn_blocking(move || {
            log::apply_retention(
                log.as_ref(),
                keep_secs as i64 * 1000,
                now,
                progress.as_ref(),
            )
        });
        match pass.await {
            Ok(Ok(moved)) if !moved.is_empty() => {
                tracing::info!(
                    ?moved,
                    "log retention dropped old records (partition, new start)"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "log retention failed"),
            Err(e) => tracing::warn!(error = %e, "log retention task"),
        }
    }
}
