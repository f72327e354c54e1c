//! Configuration: a TOML file (`config/clickflow.toml` by default), then environment
//! variables `CLICKFLOW__SECTION__KEY=value`, then `--set section.key=value` flags, each
//! overriding the one before. `DATABASE_URL` sets `database.url`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub database: DatabaseConfig,
    pub collector: CollectorConfig,
    pub engine: EngineConfig,
    pub api: ApiConfig,
    pub archive: ArchiveConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"embedded"` (a directory on disk) or `"kafka"`.
    pub kind: String,
    pub dir: PathBuf,
    /// Partitions of a new embedded log (Kafka topics bring their own).
    pub partitions: u32,
    /// Sync every embedded append to disk before acknowledging it.
    pub fsync: bool,
    pub brokers: String,
    pub topic: String,
    /// Embedded log: records appended longer ago than this are dropped (0 keeps them). Kafka
    /// topics keep their own `retention.ms`.
    pub retention_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            kind: "embedded".into(),
            dir: PathBuf::from(".clickflow/log"),
            partitions: 4,
            fsync: true,
            brokers: "127.0.0.1:9092".into(),
            topic: "events".into(),
            retention_secs: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty: `clickflow up` starts a local Postgres in `local_dir`.
    pub url: String,
    pub local_dir: PathBuf,
    pub local_port: u16,
    pub pool_size: usize,
    /// Where rollups live: a TimescaleDB hypertable or plain monthly partitions.
    pub store: StoreChoice,
    /// TimescaleDB: a chunk is compressed once its time range ended this long ago. Longer than
    /// the lateness the engine seals with, so compressed rows are final.
    pub compress_after_secs: u64,
    /// Minute rows older than this are dropped (0 keeps them); hour and day rows stay.
    pub minute_retention_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreChoice {
    /// TimescaleDB when the server has it ready (installed and preloaded), else partitions.
    Auto,
    /// TimescaleDB or an error that says what the server lacks.
    Timescale,
    /// Plain Postgres range partitions, even where TimescaleDB is available.
    Postgres,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            local_dir: PathBuf::from(".clickflow/pg"),
            local_port: 5439,
            pool_size: 8,
            store: StoreChoice::Auto,
            compress_after_secs: 3 * 86_400,
            minute_retention_secs: 30 * 86_400,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    pub listen: String,
    pub max_batch_events: usize,
    pub max_body_bytes: u64,
    /// Peers whose `X-Forwarded-For` is believed (CIDR blocks).
    pub trusted_proxies: Vec<String>,
    /// Events older than this (receive time minus event time) are rejected.
    pub lateness_secs: u64,
    /// Events further in the future than this are rejected; closer ones are clamped to now.
    pub future_skew_secs: u64,
    /// A country database in MaxMind format (GeoLite2-Country, or the CC0 ip-location-db
    /// one `scripts/install-deps.sh` puts in `.deps/geo/`); empty: countries are `unknown`.
    pub geoip_db: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: "127.0.0.1:8080".into(),
            max_batch_events: 500,
            max_body_bytes: 1 << 20,
            trusted_proxies: vec![],
            lateness_secs: 24 * 3600,
            future_skew_secs: 300,
            geoip_db: PathBuf::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Width of an ingest epoch (the timely time unit) in ms.
    pub epoch_ms: u64,
    /// Added to the collector's lateness before a bucket seals, so an event accepted at the
    /// edge of the bound is never dropped by the engine.
    pub seal_grace_secs: u64,
    /// Minimum time between two sink transactions.
    pub commit_interval_ms: u64,
    /// Records read per source activation.
    pub source_batch: usize,
    /// A visit ends after this long without events (and at midnight in the site's zone).
    pub visit_timeout_secs: u64,
    /// Realtime "current visitors" are those with an event this recent.
    pub realtime_window_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            epoch_ms: 1000,
            seal_grace_secs: 60,
            commit_interval_ms: 250,
            source_batch: 20_000,
            visit_timeout_secs: 30 * 60,
            realtime_window_secs: 5 * 60,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The query API; empty serves it on the collector's listener.
    pub listen: String,
    /// Bearer token for `/api/v1/admin/*`; empty disables the admin endpoints.
    pub admin_token: String,
}

/// The archive of the log: compressed Parquet files that outlive the log's retention.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// A directory, a `file://` URL or an `s3://bucket/prefix` URL; empty disables it.
    pub url: String,
    /// Object-store settings for an `s3://` URL (`endpoint`, `allow_http`, `region`,
    /// `access_key_id`, ...), over the `AWS_*` environment variables.
    pub options: std::collections::BTreeMap<String, String>,
    /// Where files are written before they are uploaded.
    pub staging_dir: PathBuf,
    /// A file is closed when its day ends, at this many records, or after `close_after_secs`.
    pub file_records: u64,
    pub close_after_secs: u64,
    /// Records per Parquet row group: the unit the archiver holds in memory per partition.
    pub row_group_records: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: ".clickflow/archive".into(),
            options: Default::default(),
            staging_dir: PathBuf::from(".clickflow/archive-staging"),
            file_records: 10_000_000,
            close_after_secs: 3600,
            row_group_records: 65_536,
        }
    }
}

impl Config {
    /// The database URL, or why there is none (`up` starts its own; everything else needs
    /// one).
    pub fn database_url(&self) -> anyhow::Result<String> {
        if self.database.url.is_empty() {
            bail!(
                "no database configured: set DATABASE_URL or database.url (or use `clickflow up`)"
            );
        }
        Ok(self.database.url.clone())
    }

    /// Loads `path` (or the default file when it exists), then env, then `--set` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> anyhow::Result<Config> {
        let mut value = match path {
            Some(p) => read_toml(p)?,
            None if Path::new("config/clickflow.toml").exists() => {
                read_toml(Path::new("config/clickflow.toml"))?
            }
            None => toml::Value::Table(Default::default()),
        };
        for (key, val) in std::env::vars() {
            if let Some(rest) = key.strip_prefix("CLICKFLOW__") {
                let path = rest.to_lowercase().replace("__", ".");
                set_path(&mut value, &path, &val)
                    .with_context(|| format!("environment variable {key}"))?;
            }
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            set_path(&mut value, "database.url", &format!("{url:?}"))?;
        }
        for o in overrides {
            let Some((k, v)) = o.split_once('=') else {
                bail!("--set takes section.key=value, got {o:?}")
            };
            set_path(&mut value, k.trim(), v.trim()).with_context(|| format!("--set {o}"))?;
        }
        value.try_into().context("invalid configuration")
    }

    /// The dataflow's knobs.
    pub fn settings(&self) -> clickflow_dataflows::Settings {
        clickflow_dataflows::Settings {
            seal_lateness_ms: self.seal_lateness_ms(),
            visit_timeout_ms: self.engine.visit_timeout_secs as i64 * 1000,
            realtime_window_ms: self.engine.realtime_window_secs as i64 * 1000,
        }
    }

    /// Lateness the engine seals with: the collector's bound plus grace.
    pub fn seal_lateness_ms(&self) -> u64 {
        (self.collector.lateness_secs + self.engine.seal_grace_secs) * 1000
    }
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Sets `section.key` to `raw`, read as a TOML value when it parses as one (numbers, booleans,
/// quoted strings, arrays) and as a bare string otherwise.
fn set_path(root: &mut toml::Value, path: &str, raw: &str) -> anyhow::Result<()> {
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| anyhow::anyhow!("{path}: not a table"))?;
        if i + 1 == parts.len() {
            table.insert((*part).to_owned(), parsed);
            return Ok(());
        }
        node = table
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    bail!("empty configuration key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_in_order_and_types_are_kept() {
        let c = Config::load(
            None,
            &["engine.epoch_ms=250".into(), "log.kind=kafka".into()],
        )
        .unwrap();
        assert_eq!(c.engine.epoch_ms, 250);
        assert_eq!(c.log.kind, "kafka");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::load(None, &["engine.epochs=1".into()]).is_err());
    }
}
