//! Postgres schema and the small synchronous helpers the CLI and the engine use.
//!
//! Rollups are one narrow table keyed by (site, generation, granularity, bucket, family,
//! dimension, value, metric). With TimescaleDB it is a hypertable on `bucket`; without, it is
//! natively range-partitioned by month on `bucket`, partitions created on demand by the sink.
//! `generation` lets a replay build corrected results beside the live ones and switch
//! readers over in one transaction (`active_generation`).

pub mod archive;
pub mod retention;

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use postgres::{Client, GenericClient, NoTls};
use rand::Rng;

use crate::config::{DatabaseConfig, StoreChoice};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sites (
    id          text PRIMARY KEY,
    domain      text NOT NULL,
    time_zone   text NOT NULL DEFAULT 'UTC',
    api_key     text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Plausible's API names sites by domain; the collector looks them up by this expression.
CREATE INDEX IF NOT EXISTS sites_by_domain
    ON sites (regexp_replace(lower(rtrim(domain, '.')), '^www\.', ''));
-- Read-only dashboard links: the token is the credential; revoking keeps the row.
CREATE TABLE IF NOT EXISTS shares (
    token       text PRIMARY KEY,
    site_id     text NOT NULL REFERENCES sites(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE TABLE IF NOT EXISTS salts (
    day   date PRIMARY KEY,
    salt  bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (
    id           integer PRIMARY KEY,
    status       text NOT NULL,
    replay_from  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    switched_at  timestamptz
);
CREATE TABLE IF NOT EXISTS active_generation (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  integer NOT NULL REFERENCES generations(id)
);
-- Visitors a merchant asked to forget (the hash the collector computes). Engines load the
-- whole table at start, so a replay or restart never counts them again.
CREATE TABLE IF NOT EXISTS erasures (
    site_id        text NOT NULL,
    visitor        bigint NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    -- ingest time of the erase record in the log: buckets sealed before it are recomputed
    log_time_ms    bigint NOT NULL,
    status         text NOT NULL DEFAULT 'pending',
    recomputed_days integer,
    PRIMARY KEY (site_id, visitor)
);
CREATE TABLE IF NOT EXISTS progress (
    generation   integer NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    frontier_ms  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation, partition)
);
-- The archive's catalog: files tile each partition's offsets from its first archived one;
-- readers trust only this table, so a file uploaded by an archiver that died before its
-- commit is never read.
CREATE TABLE IF NOT EXISTS archive_files (
    partition     integer NOT NULL,
    first_offset  bigint NOT NULL,
    end_offset    bigint NOT NULL,
    day           date NOT NULL,
    min_ts        bigint NOT NULL,
    max_ts        bigint NOT NULL,
    records       bigint NOT NULL,
    bytes         bigint NOT NULL,
    path          text NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, first_offset),
    CHECK (end_offset > first_offset)
);
CREATE TABLE IF NOT EXISTS archive_progress (
    partition    integer PRIMARY KEY,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
"#;

const ROLLUPS_COLUMNS: &str = r#"
    generation       integer NOT NULL,
    site_id          text NOT NULL,
    granularity      text NOT NULL,
    bucket           timestamptz NOT NULL,
    bucket_end       timestamptz NOT NULL,
    family           text NOT NULL,
    dimension        text NOT NULL DEFAULT '',
    dimension_value  text NOT NULL DEFAULT '',
    metrics          jsonb NOT NULL DEFAULT '{}',
    sketch           bytea,
    open_until       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, generation, granularity, family, dimension, dimension_value, bucket)
"#;

/// Creates the (empty) rollups table in `layout`.
fn create_rollups(client: &mut impl GenericClient, layout: Layout) -> anyhow::Result<()> {
    match layout {
        Layout::Hypertable => {
            client.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")?;
            client.batch_execute(&format!("CREATE TABLE rollups ({ROLLUPS_COLUMNS})"))?;
            client.batch_execute(
                "SELECT create_hypertable('rollups', 'bucket', chunk_time_interval => interval '7 days')",
            )?;
        }
        Layout::NativePartitions => {
            client.batch_execute(&format!(
                "CREATE TABLE rollups ({ROLLUPS_COLUMNS}) PARTITION BY RANGE (bucket)"
            ))?;
        }
    }
    Ok(())
}

/// Records the migration `name` as done; `true` if it already was.
fn done(client: &mut impl GenericClient, name: &str) -> anyhow::Result<bool> {
    let fresh = client.execute(
        "INSERT INTO migrations (name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&name],
    )?;
    Ok(fresh == 0)
}

/// Conversions of rows written by versions that stored one row per metric, in order; they
/// run before that layout becomes one row per key.
const NARROW_MIGRATIONS: [(&str, &str); 2] = [
    // Visitor sketches of totals were once the `uniques` family's `hll` rows.
    (
        "uniques_into_traffic",
        "UPDATE rollups SET family = 'traffic', metric = 'visitors_hll', dimension = ''
          WHERE family = 'uniques' AND metric = 'hll'",
    ),
    // A sketch was once one row per register: the register index after the row's value (the
    // whole value of a total), the rank as the value. Now one row holds all of them, in the
    // sparse form of `uniques::encode` (format 1, precision 12, then index and rank per
    // register), its value the estimate of `uniques::estimate`.
    (
        "one_row_per_sketch",
        r"CREATE TEMPORARY TABLE register_rows ON COMMIT DROP AS
            SELECT generation, site_id, granularity, bucket, bucket_end, family, dimension, metric,
                   regexp_replace(dimension_value, '(^|\x1f)[0-9]+$', '') AS parent,
                   substring(dimension_value from '[0-9]+$')::int AS index,
                   least(value, 255)::int AS rank, open_until
              FROM rollups WHERE metric LIKE '%\_hll' AND sketch IS NULL AND value > 0
                AND dimension_value ~ '(^|\x1f)[0-9]{1,4}$';
          DELETE FROM rollups WHERE metric LIKE '%\_hll' AND sketch IS NULL;
          INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family, dimension,
                               dimension_value, metric, value, open_until, sketch)
            SELECT generation, site_id, granularity, bucket, bucket_end, family, dimension, parent, metric,
                   round(CASE WHEN raw <= 2.5 * 4096 AND zeros > 0 THEN 4096 * ln(4096.0 / zeros) ELSE raw END)::bigint,
                   open_until, sketch
              FROM (SELECT generation, site_id, granularity, bucket, bucket_end, family, dimension, parent, metric,
                           max(open_until) AS open_until,
                           4096 - count(*) AS zeros,
                           0.7213 / (1 + 1.079 / 4096) * 4096.0 * 4096.0
                             / (sum(power(2.0, -rank)) + 4096 - count(*)) AS raw,
                           '\x010c'::bytea || string_agg(
                               decode(lpad(to_hex(index), 4, '0') || lpad(to_hex(rank), 2, '0'), 'hex'),
                               ''::bytea ORDER BY index) AS sketch
                      FROM register_rows WHERE index < 4096
                     GROUP BY generation, site_id, granularity, bucket, bucket_end, family, dimension, metric, parent) s;",
    ),
];

/// How the rollups table is laid out on this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Hypertable,
    NativePartitions,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Hypertable => "TimescaleDB hypertable, compressed once sealed",
            Layout::NativePartitions => "plain Postgres, partitioned by month",
        }
    }
}

pub fn connect(url: &str) -> anyhow::Result<Client> {
    Client::connect(url, NoTls)
        .with_context(|| format!("connecting to Postgres at {}", redact(url)))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// What a server offers of TimescaleDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timescale {
    Missing,
    /// Installed, but the server was started without `shared_preload_libraries=timescaledb`:
    /// `CREATE EXTENSION` would fail.
    NotPreloaded,
    Ready,
}

pub const NOT_PRELOADED: &str = "TimescaleDB is installed on this PostgreSQL server but not preloaded: \
    add timescaledb to shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries = 'timescaledb', \
    or postgresql.conf) and restart the server";

pub fn timescale(client: &mut impl GenericClient) -> anyhow::Result<Timescale> {
    // Only the preload counts: an extension created earlier does not work on a server since
    // restarted without it.
    let row = client.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb($|[ ,])'",
        &[],
    )?;
    let (available, preloaded): (bool, bool) = (row.get(0), row.get(1));
    Ok(match (available, preloaded) {
        (false, _) => Timescale::Missing,
        (true, false) => Timescale::NotPreloaded,
        (true, true) => Timescale::Ready,
    })
}

/// The layout a new rollups table gets on this server under `choice`.
fn wanted_layout(client: &mut Client, choice: StoreChoice) -> anyhow::Result<Layout> {
    let offered = timescale(client)?;
    Ok(match (choice, offered) {
        (StoreChoice::Postgres, _) | (StoreChoice::Auto, Timescale::Missing) => {
            Layout::NativePartitions
        }
        (StoreChoice::Auto, Timescale::NotPreloaded) => {
            tracing::warn!("{NOT_PRELOADED}; using plain partitions (database.store = \"auto\")");
            Layout::NativePartitions
        }
        (_, Timescale::Ready) => Layout::Hypertable,
        (StoreChoice::Timescale, Timescale::NotPreloaded) => {
            bail!("database.store = \"timescale\": {NOT_PRELOADED}")
        }
        (StoreChoice::Timescale, Timescale::Missing) => bail!(
            "database.store = \"timescale\", but this PostgreSQL server has no TimescaleDB \
             extension: install it (Timescale's packages for your distribution) or set \
             database.store = \"auto\""
        ),
    })
}

/// Creates the schema (idempotent) and the first generation, and on TimescaleDB keeps the
/// compression settings and policy in line with `db`.
pub fn migrate(client: &mut Client, db: &DatabaseConfig) -> anyhow::Result<Layout> {
    // Re-running is normal; "already exists, skipping" notices are not news.
    client.batch_execute("SET client_min_messages = warning")?;
    client.batch_execute(SCHEMA).context("creating tables")?;
    let exists: bool = client
        .query_one("SELECT to_regclass('rollups') IS NOT NULL", &[])?
        .get(0);
    // Only a new table has a layout to choose; an existing one keeps its own.
    let new_layout = if exists {
        None
    } else {
        Some(wanted_layout(client, db.store)?)
    };
    let narrow: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                             WHERE table_name = 'rollups' AND column_name = 'metric')",
            &[],
        )?
        .get(0);
    let mut tx = client.transaction()?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS migrations (name text PRIMARY KEY)")?;
    if let Some(layout) = new_layout {
        create_rollups(&mut tx, layout)?;
    } else if narrow {
        // Sealed history is never rewritten by the engine, so rows of the older one-row-per-
        // metric layout are converted in place, once, in this transaction.
        tx.batch_execute(
            "ALTER TABLE rollups ADD COLUMN IF NOT EXISTS open_until timestamptz;
             ALTER TABLE rollups ADD COLUMN IF NOT EXISTS sketch bytea",
        )?;
        for (name, sql) in NARROW_MIGRATIONS {
            if !done(&mut tx, name)? {
                tx.batch_execute(sql)
                    .with_context(|| format!("migration {name}"))?;
            }
        }
        let layout = layout(&mut tx)?;
        tracing::info!("converting rollups to one row per key (metrics as jsonb)");
        // Partitions keep their names through a rename: free them for the new table's.
        tx.batch_execute(
            "ALTER TABLE rollups RENAME TO rollups_narrow;
             DO $$ DECLARE child regclass; BEGIN
               FOR child IN SELECT inhrelid::regclass FROM pg_inherits
                             WHERE inhparent = 'rollups_narrow'::regclass LOOP
                 EXECUTE format('ALTER TABLE %s RENAME TO %I', child, child::text || '_narrow');
               END LOOP;
             END $$;",
        )?;
        create_rollups(&mut tx, layout)?;
        if layout == Layout::NativePartitions {
            let months: Vec<(i32, i32)> = tx
                .query(
                    "SELECT DISTINCT extract(year FROM bucket AT TIME ZONE 'UTC')::int,
                                     extract(month FROM bucket AT TIME ZONE 'UTC')::int
                       FROM rollups_narrow",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for (year, month) in months {
                ensure_partition(&mut tx, (year, month as u32))?;
            }
        }
        tx.batch_execute(
            "INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family, dimension,
                                  dimension_value, metrics, sketch, open_until)
             SELECT generation, site_id, granularity, bucket, max(bucket_end), family, dimension, dimension_value,
                    coalesce(jsonb_object_agg(metric, value) FILTER (WHERE sketch IS NULL AND value <> 0), '{}'),
                    (array_agg(sketch) FILTER (WHERE sketch IS NOT NULL))[1],
                    max(open_until)
               FROM rollups_narrow
              GROUP BY generation, site_id, granularity, bucket, family, dimension, dimension_value;
             DROP TABLE rollups_narrow CASCADE;",
        )
        .context("converting rollups to one row per key")?;
    }
    // A new or converted table has every older conversion behind it.
    for (name, _) in NARROW_MIGRATIONS {
        done(&mut tx, name)?;
    }
    tx.commit()?;
    client.batch_execute(
        "INSERT INTO generations (id, status) VALUES (1, 'live') ON CONFLICT DO NOTHING;
         INSERT INTO active_generation (generation) VALUES (1) ON CONFLICT DO NOTHING;",
    )?;
    let layout = layout(client)?;
    if layout == Layout::Hypertable {
        compression(client, db.compress_after_secs)?;
    }
    Ok(layout)
}

/// Chunks whose buckets have all sealed never change again (the engine drops changes at a
/// row's seal): they are compressed, segmented by site and granularity (a site's query, and
/// the minute retention, touch whole segments) and ordered by bucket within a segment.
fn compression(client: &mut Client, after_secs: u64) -> anyhow::Result<()> {
    let enabled: bool = client
        .query_one(
            "SELECT compression_enabled FROM timescaledb_information.hypertables
              WHERE hypertable_name = 'rollups' AND hypertable_schema = current_schema()",
            &[],
        )?
        .get(0);
    if !enabled {
        client
            .batch_execute(
                "ALTER TABLE rollups SET (timescaledb.compress,
                     timescaledb.compress_segmentby = 'site_id, granularity',
                     timescaledb.compress_orderby = 'bucket, family, dimension, dimension_value, generation')",
            )
            .context("enabling compression on rollups")?;
    }
    // Every `migrate` (and so every `up` and `site add`) passes here: a policy that already
    // says the same stays as it is rather than being replaced by a new job.
    let current: Vec<bool> = client
        .query(
            "SELECT (config->>'compress_after')::interval = justify_interval(make_interval(secs => $1))
               FROM timescaledb_information.jobs
              WHERE proc_name = 'policy_compression' AND hypertable_name = 'rollups'",
            &[&(after_secs as f64)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if (after_secs > 0 && current == [true]) || (after_secs == 0 && current.is_empty()) {
        return Ok(());
    }
    client.execute(
        "SELECT remove_compression_policy('rollups', if_exists => true)",
        &[],
    )?;
    if after_secs > 0 {
        client
            .execute(
                "SELECT add_compression_policy('rollups',
                     compress_after => justify_interval(make_interval(secs => $1)))",
                &[&(after_secs as f64)],
            )
            .context("adding the compression policy")?;
    }
    Ok(())
}

/// Deletes minute rows whose bucket began more than `$1` seconds ago (hour and day rows stay).
/// Realtime rows are not touched: they carry their own window. Runs under a transaction-level
/// advisory lock, so that of several API processes one does the work and the others skip.
pub const DROP_OLD_MINUTE_ROWS: &str = "
    WITH lock AS (SELECT pg_try_advisory_xact_lock(7263951) AS mine)
    DELETE FROM rollups USING lock
     WHERE lock.mine AND granularity = 'minute' AND family <> 'realtime'
       AND bucket < now() - make_interval(secs => $1)";

/// Runs [`DROP_OLD_MINUTE_ROWS`] now; returns the rows dropped (0 keeps everything).
pub fn drop_old_minute_rows(client: &mut Client, older_than_secs: u64) -> anyhow::Result<u64> {
    if older_than_secs == 0 {
        return Ok(0);
    }
    let mut tx = client.transaction()?;
    let dropped = tx.execute(DROP_OLD_MINUTE_ROWS, &[&(older_than_secs as f64)])?;
    tx.commit()?;
    Ok(dropped)
}

/// How the existing rollups table is laid out.
pub fn layout(client: &mut impl GenericClient) -> anyhow::Result<Layout> {
    let partitioned: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'rollups'::regclass)", &[])?
        .get(0);
    Ok(if partitioned {
        Layout::NativePartitions
    } else {
        Layout::Hypertable
    })
}

/// The calendar month (UTC) whose partition holds a row of bucket `bucket_ms`.
pub fn partition_month(bucket_ms: i64) -> anyhow::Result<(i32, u32)> {
    let t = DateTime::<Utc>::from_timestamp_millis(bucket_ms).context("bucket out of range")?;
    Ok((t.year(), t.month()))
}

/// Makes sure the partition of `(year, month)` exists (native layout only).
pub fn ensure_partition(
    client: &mut impl GenericClient,
    (year, month): (i32, u32),
) -> anyhow::Result<()> {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let first = |y: i32, m: u32| {
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
            .single()
            .context("month start")
    };
    let (start, end) = (first(year, month)?, first(next_year, next_month)?);
    client.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS rollups_y{year:04}m{month:02} PARTITION OF rollups FOR VALUES FROM ('{}') TO ('{}')",
        start.to_rfc3339(),
        end.to_rfc3339()
    ))?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub id: String,
    pub domain: String,
    pub time_zone: String,
    pub api_key: String,
}

pub fn random_token(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let body: String = (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{body}")
}

/// Creates a site with a fresh tracking id and API key.
pub fn add_site(client: &mut Client, domain: &str, time_zone: &str) -> anyhow::Result<Site> {
    if time_zone.parse::<chrono_tz::Tz>().is_err() {
        anyhow::bail!("unknown time zone {time_zone:?} (use an IANA name such as Europe/Paris)");
    }
    if domain.trim().is_empty() {
        anyhow::bail!("the domain must not be empty");
    }
    let site = Site {
        id: random_token("cf_", 12),
        domain: domain.trim().to_owned(),
        time_zone: time_zone.to_owned(),
        api_key: random_token("cfk_", 32),
    };
    client.execute(
        "INSERT INTO sites (id, domain, time_zone, api_key) VALUES ($1, $2, $3, $4)",
        &[&site.id, &site.domain, &site.time_zone, &site.api_key],
    )?;
    Ok(site)
}

/// The oldest site registered for exactly `domain`, if any.
pub fn site_of_domain(client: &mut Client, domain: &str) -> anyhow::Result<Option<Site>> {
    let row = client.query_opt(
        "SELECT id, domain, time_zone, api_key FROM sites WHERE domain = $1
          ORDER BY created_at, id LIMIT 1",
        &[&domain],
    )?;
    Ok(row.map(|r| Site {
        id: r.get(0),
        domain: r.get(1),
        time_zone: r.get(2),
        api_key: r.get(3),
    }))
}

pub fn active_generation(client: &mut impl GenericClient) -> anyhow::Result<i32> {
    let row = client
        .query_opt("SELECT generation FROM active_generation", &[])?
        .context("no active generation: run `clickflow migrate` first")?;
    Ok(row.get(0))
}

/// Committed offsets of a generation and the ingest frontier they were committed at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub offsets: BTreeMap<u32, u64>,
    pub frontier_ms: Option<i64>,
}

pub fn progress(client: &mut impl GenericClient, generation: i32) -> anyhow::Result<Progress> {
    let rows = client.query(
        "SELECT partition, next_offset, frontier_ms FROM progress WHERE generation = $1",
        &[&generation],
    )?;
    let mut p = Progress::default();
    for r in rows {
        let partition: i32 = r.get(0);
        let offset: i64 = r.get(1);
        let frontier: i64 = r.get(2);
        p.offsets.insert(partition as u32, offset as u64);
        p.frontier_ms = Some(p.frontier_ms.map_or(frontier, |f: i64| f.min(frontier)));
    }
    Ok(p)
}
