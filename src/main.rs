use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clickflow::api::{self, Api};
use clickflow::archive::archiver::Archiver;
use clickflow::archive::{Archive, ArchivedLog, Catalog};
use clickflow::collector::{self, Collector};
use clickflow::config::Config;
use clickflow::engine::{self, Outcome};
use clickflow::{local, log, store};
use clickflow_operators::sink::SinkStatus;
use warp::Filter;

// The dataflow allocates and frees many small strings and tuples per event; glibc's malloc
// spent a quarter of engine time in its own bookkeeping (perf) and fragmented the heap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "clickflow",
    version,
    about = "Exact, self-correcting web analytics"
)]
struct Cli {
    /// TOML configuration file (default: config/clickflow.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override a configuration key, e.g. --set engine.epoch_ms=500 (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update the Postgres schema.
    Migrate,
    /// Manage sites.
    Site {
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Run the collector and the query API (which also drops minute rows past
    /// database.minute_retention_secs, hourly).
    Serve,
    /// Drop minute rows older than database.minute_retention_secs now, and say how many.
    Retention,
    /// Run the dataflow job (timely flags: -w threads, -n processes, -p index, -h hostfile).
    #[command(disable_help_flag = true)]
    Engine {
        #[arg(short = 'w', long = "workers", default_value_t = 1)]
        workers: usize,
        #[arg(short = 'n', long = "processes", default_value_t = 1)]
        processes: usize,
        #[arg(short = 'p', long = "process", default_value_t = 0)]
        process: usize,
        #[arg(short = 'h', long = "hostfile")]
        hostfile: Option<String>,
        /// Serve /metrics and /healthz for this engine process on this address.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Run this host's processes of an engine job and keep them running: when one exits,
    /// restart them all (with backoff). Serves /healthz with lag and rehydration progress.
    #[command(disable_help_flag = true)]
    Cluster {
        #[arg(short = 'w', long = "workers", default_value_t = 1)]
        workers: usize,
        /// Processes of the job, all on this host (without -h).
        #[arg(short = 'n', long = "processes", default_value_t = 1)]
        processes: usize,
        /// Hostfile of the whole job (one host:port per process) for a job across hosts.
        #[arg(short = 'h', long = "hostfile")]
        hostfile: Option<PathBuf>,
        /// With -h: the processes to run here (default: the lines with this host's addresses).
        #[arg(short = 'p', long = "process", value_delimiter = ',')]
        process: Vec<usize>,
        /// Where /healthz is served.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Copy the log into the archive (Parquet files per partition and day) and keep it
    /// copying; replays read the archive for what the log no longer holds.
    Archive {
        /// Archive up to the log's current end, close every file, and exit.
        #[arg(long)]
        once: bool,
        /// Print what the archive holds per partition against the log, and exit.
        #[arg(long, conflicts_with = "once")]
        status: bool,
        /// Serve /metrics and /healthz of the archiver on this address.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Recompute every bucket from a timestamp into a new generation, then switch readers.
    Replay {
        /// RFC 3339 timestamp or Unix milliseconds.
        #[arg(long)]
        from: String,
        #[arg(short = 'w', long = "workers", default_value_t = 1)]
        workers: usize,
    },
    /// Run collector, engine and API together with the embedded log (and a local Postgres
    /// when no database URL is configured).
    Up {
        /// Generate realistic demo traffic.
        #[arg(long)]
        demo: bool,
        #[arg(short = 'w', long = "workers", default_value_t = 2)]
        workers: usize,
    },
}

#[derive(Subcommand)]
enum SiteAction {
    /// Create a site; prints its tracking id and API key.
    Add {
        #[arg(long)]
        domain: String,
        #[arg(long, default_value = "UTC")]
        time_zone: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn database_url(config: &Config) -> anyhow::Result<String> {
    if config.database.url.is_empty() {
        anyhow::bail!(
            "no database configured: set DATABASE_URL or database.url (or use `clickflow up`)"
        );
    }
    Ok(config.database.url.clone())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref(), &cli.set)?;
    match cli.command {
        Command::Migrate => {
            let layout = store::migrate(
                &mut store::connect(&database_url(&config)?)?,
                &config.database,
            )?;
            println!("schema ready (rollups: {})", layout.describe());
        }
        Command::Site {
            action: SiteAction::Add { domain, time_zone },
        } => {
            let mut client = store::connect(&database_url(&config)?)?;
            store::migrate(&mut client, &config.database)?;
            let site = store::add_site(&mut client, &domain, &time_zone)?;
            println!("site added\n  domain:      {}\n  time zone:   {}\n  tracking id: {}\n  api key:     {}", site.domain, site.time_zone, site.id, site.api_key);
            println!(
                "  tracker:     {}\n               (in each page's <head>; the src is your collector's public address)",
                script_tag(&site.id, &config.collector.listen, false)
            );
        }
        Command::Retention => {
            let secs = config.database.minute_retention_secs;
            let mut client = store::connect(&database_url(&config)?)?;
            let dropped = store::drop_old_minute_rows(&mut client, secs)?;
            println!("dropped {dropped} minute rows older than {secs} s (hour and day rows stay)");
        }
        Command::Serve => {
            database_url(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(config, None, None))?;
        }
        Command::Cluster {
            workers,
            processes,
            hostfile,
            process,
            listen,
            ..
        } => {
            database_url(&config)?;
            clickflow::cluster::run(
                &config,
                clickflow::cluster::ClusterArgs {
                    workers,
                    processes,
                    hostfile,
                    here: process,
                    listen,
                    config_flags: clickflow::cluster::config_flags(cli.config.as_deref(), &cli.set),
                },
            )?;
        }
        Command::Engine {
            workers,
            processes,
            process,
            hostfile,
            metrics_listen,
            ..
        } => {
            if let Some(addr) = metrics_listen {
                serve_engine_metrics(addr)?;
            }
            let timely = engine::timely_config(workers, processes, process, hostfile.as_deref())?;
            let mut client = store::connect(&database_url(&config)?)?;
            let log = ArchivedLog::wrap(
                log::open(&config.log, log::Access::Read)?,
                &config.archive,
                &mut client,
            )?;
            let plan = engine::plan_live(&mut client, log.as_ref(), &config)?;
            tracing::info!(?plan.start, ?plan.hold_until, generation = plan.generation, "engine starting");
            for (p, from) in &plan.start {
                let label = [p.to_string()];
                clickflow::metrics::REHYDRATE_FROM
                    .with_label_values(&label)
                    .set(*from as i64);
                let until = plan.hold_until.get(p).copied().unwrap_or(*from);
                clickflow::metrics::REHYDRATE_UNTIL
                    .with_label_values(&label)
                    .set(until as i64);
            }
            match engine::run(&config, timely, plan, log, Arc::new(SinkStatus::default()))? {
                Outcome::Retired => {
                    eprintln!("engine: a replay switched readers to a newer generation; restart the engine to follow it");
                    std::process::exit(3);
                }
                Outcome::Finished => {}
            }
        }
        Command::Replay { from, workers } => replay(&config, &from, workers)?,
        Command::Archive {
            once,
            status,
            metrics_listen,
        } => {
            if let Some(addr) = metrics_listen {
                serve_engine_metrics(addr)?;
            }
            archive(&config, once, status)?;
        }
        Command::Up { demo, workers } => {
            let local_pg = config.database.url.is_empty();
            if local_pg {
                config.database.url =
                    local::start_postgres(&config.database.local_dir, config.database.local_port)?;
            }
            if config.log.kind != "embedded" {
                tracing::warn!("`up` runs with log.kind = {:?}", config.log.kind);
            }
            let result = up(config.clone(), demo, workers);
            if local_pg {
                local::stop_postgres(&config.database.local_dir);
            }
            result?;
        }
    }
    Ok(())
}

/// `/metrics` and `/healthz` of an engine process, on a small runtime of their own so the
/// timely workers keep both cores' worth of threads to themselves.
fn serve_engine_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-listen {addr}"))?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let metrics = warp::path!("metrics").map(|| {
                warp::reply::with_header(
                    clickflow::metrics::render(),
                    "content-type",
                    "text/plain; version=0.0.4",
                )
            });
            let health = warp::path!("healthz").map(|| {
                warp::reply::json(&serde_json::json!({
                    "status": "ok",
                    "committed_frontier_ms": clickflow::metrics::SINK_FRONTIER.get(),
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

fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("--from {s:?} is neither RFC 3339 nor Unix milliseconds"))
}

fn replay(config: &Config, from: &str, workers: usize) -> anyhow::Result<()> {
    let from_ms = parse_time(from)?;
    let url = database_url(config)?;
    let mut client = store::connect(&url)?;
    let log = ArchivedLog::wrap(
        log::open(&config.log, log::Access::Read)?,
        &config.archive,
        &mut client,
    )?;
    let plan = engine::plan_replay(&mut client, log.as_ref(), from_ms)?;
    let total: u64 = plan
        .end
        .iter()
        .flatten()
        .map(|(p, e)| e.saturating_sub(plan.start[p]))
        .sum();
    eprintln!(
        "replay: generation {} from {} ({} records to read)",
        plan.generation,
        chrono::DateTime::from_timestamp_millis(plan.write_from)
            .map(|d| d.to_rfc3339())
            .unwrap_or_default(),
        total
    );
    let status = Arc::new(SinkStatus::default());
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {wide_bar} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (bar2, status2) = (bar.clone(), status.clone());
    let replay_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker_done = replay_done.clone();
    let end_ms = clickflow_operators::source::wall_clock_ms();
    let start_ms = plan.write_from;
    let ticker = std::thread::spawn(move || loop {
        if ticker_done.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let f = status2
            .committed_frontier
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        let pct = if f > start_ms {
            ((f - start_ms) * 100 / (end_ms - start_ms).max(1)).clamp(0, 100)
        } else {
            0
        };
        bar2.set_position(pct as u64);
        bar2.set_message(format!(
            "{} rows written",
            status2
                .rows_written
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
        std::thread::sleep(Duration::from_millis(200));
    });
    let generation = plan.generation;
    let outcome = engine::run(
        config,
        timely::Config::process(workers.max(1)),
        plan,
        log,
        status.clone(),
    );
    replay_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    outcome?;
    let old = engine::switch_to(&mut client, generation)?;
    println!(
        "replay done: readers switched from generation {old} to {generation} ({} rows written); restart the live engine to follow it",
        status.rows_written.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// `clickflow archive`: the archiver until killed, once up to the log's end, or its status.
fn archive(config: &Config, once: bool, status: bool) -> anyhow::Result<()> {
    let url = database_url(config)?;
    let Some(target) = Archive::open(&config.archive)? else {
        anyhow::bail!("archive.url is empty: set it to a directory to archive into");
    };
    let log = log::open(&config.log, log::Access::Read)?;
    let mut client = store::connect(&url)?;
    if status {
        return archive_status(&mut client, log.as_ref(), &target);
    }
    let mut archiver = Archiver::start(log.clone(), target.clone(), client, &config.archive)?;
    let mut total = 0u64;
    for (p, from) in archiver.positions() {
        total += log.high_watermark(*p)?.saturating_sub(*from);
    }
    let bar = if once {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} archive [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        eprintln!(
            "archiving {} into {} (Ctrl-C stops; unfinished files are redone on the next start)",
            config.log.kind,
            target.location()
        );
        indicatif::ProgressBar::hidden()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    archiver.run(once, &stop, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    let a = &archiver.archived;
    println!(
        "archived {} records in {} files, {} bytes ({:.1} bytes per record) into {}",
        a.records,
        a.files,
        a.bytes,
        a.bytes as f64 / a.records.max(1) as f64,
        target.location()
    );
    Ok(())
}

fn archive_status(
    client: &mut postgres::Client,
    log: &dyn log::Log,
    target: &Archive,
) -> anyhow::Result<()> {
    let catalog = Catalog::load(client)?;
    println!("archive {}", target.location());
    println!("partition  archived offsets          files  records      bytes  log holds");
    for p in 0..log.partitions()? {
        let files = catalog.contiguous(p);
        let (records, bytes) = files
            .iter()
            .fold((0, 0), |(r, b), f| (r + f.records, b + f.bytes));
        let covered = catalog
            .covered(p)
            .map(|(a, b)| format!("[{a}, {b})"))
            .unwrap_or_else(|| "none".into());
        println!(
            "{p:>9}  {covered:<24} {:>6} {records:>8} {bytes:>10}  [{}, {})",
            files.len(),
            log.low_watermark(p)?,
            log.high_watermark(p)?
        );
    }
    Ok(())
}

/// The tag a merchant pastes. `up` serves only this machine, whose own test pages are on
/// localhost, so its tag counts localhost pages too.
fn script_tag(site: &str, collector: &str, local: bool) -> String {
    let allow = if local { " data-allow-localhost" } else { "" };
    format!(
        r#"<script defer data-site="{site}"{allow} src="http://{collector}/js/clickflow.js"></script>"#
    )
}

async fn serve(
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
        tokio::spawn(minute_retention(
            pool.clone(),
            config.database.minute_retention_secs,
        ));
    }
    if config.log.retention_secs > 0 {
        if config.log.kind == "embedded" {
            let archived = !config.archive.url.trim().is_empty();
            tokio::spawn(log_retention(
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
    let routes = collector::routes(collector)
        .or(api::routes(api.clone()))
        .unify()
        .recover(collector::recover);
    match api_listener {
        None => {
            tracing::info!(listen = %config.collector.listen, "collector and query API listening");
            warp::serve(routes).incoming(listener).run().await;
        }
        Some(api_listener) => {
            tracing::info!(listen = %config.collector.listen, api_listen = %config.api.listen, "collector and query API listening");
            let api_routes = api::routes(api).recover(collector::recover);
            tokio::join!(
                warp::serve(routes).incoming(listener).run(),
                warp::serve(api_routes).incoming(api_listener).run()
            );
        }
    }
    Ok(())
}

/// Hourly, drops the minute rows the retention setting no longer keeps; the first time ten
/// minutes after start, so that a crash loop does not turn into a delete loop.
async fn minute_retention(pool: deadpool_postgres::Pool, secs: u64) {
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
                .execute(store::DROP_OLD_MINUTE_ROWS, &[&(secs as f64)])
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
async fn log_retention(
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
                let rows = client
                    .query("SELECT partition, next_offset FROM archive_progress", &[])
                    .await?;
                anyhow::Ok(
                    rows.iter()
                        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
                        .collect::<std::collections::BTreeMap<u32, u64>>(),
                )
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

async fn bind(address: &str, setting: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let address: std::net::SocketAddr = address.parse().with_context(|| {
        format!("{setting} = {address:?} is not an address like 127.0.0.1:8080")
    })?;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({setting})"))
}

fn up(mut config: Config, demo: bool, workers: usize) -> anyhow::Result<()> {
    // Local mode uses the country database install-deps fetched, unless told otherwise.
    let bundled_geo = std::path::Path::new(".deps/geo/geo-whois-asn-country.mmdb");
    if config.collector.geoip_db.as_os_str().is_empty() && bundled_geo.exists() {
        config.collector.geoip_db = bundled_geo.to_path_buf();
    }
    let url = config.database.url.clone();
    let mut client = store::connect(&url)?;
    store::migrate(&mut client, &config.database)?;
    let site = match client.query_opt(
        "SELECT id, api_key FROM sites WHERE domain = 'demo.local'",
        &[],
    )? {
        Some(r) => (r.get::<_, String>(0), r.get::<_, String>(1)),
        None => {
            let s = store::add_site(&mut client, "demo.local", "UTC")?;
            (s.id, s.api_key)
        }
    };
    // Opened before the engine starts, so the engine always finds the log it reads.
    let ingest_log = log::open(&config.log, log::Access::Append)?;
    let engine_config = config.clone();
    std::thread::spawn(move || loop {
        let attempt = (|| -> anyhow::Result<Outcome> {
            let mut client = store::connect(&engine_config.database.url)?;
            let log = ArchivedLog::wrap(
                log::open(&engine_config.log, log::Access::Read)?,
                &engine_config.archive,
                &mut client,
            )?;
            let plan = engine::plan_live(&mut client, log.as_ref(), &engine_config)?;
            engine::run(
                &engine_config,
                timely::Config::process(workers.max(1)),
                plan,
                log,
                Arc::new(SinkStatus::default()),
            )
        })();
        match attempt {
            Ok(Outcome::Retired) => tracing::info!("engine following the new generation"),
            Ok(Outcome::Finished) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "engine stopped; restarting in 2 s");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    });
    if !config.archive.url.trim().is_empty() {
        let archive_config = config.clone();
        std::thread::spawn(move || loop {
            let attempt = (|| -> anyhow::Result<()> {
                let Some(store) = Archive::open(&archive_config.archive)? else {
                    return Ok(());
                };
                let log = log::open(&archive_config.log, log::Access::Read)?;
                let client = store::connect(&archive_config.database.url)?;
                let mut archiver = Archiver::start(log, store, client, &archive_config.archive)?;
                archiver.run(false, &std::sync::atomic::AtomicBool::new(false), |_| {})
            })();
            match attempt {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "archiver stopped; restarting in 10 s");
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
        });
    }
    let listen = config.collector.listen.clone();
    println!("Clickflow is up.");
    println!(
        "  collector:  POST http://{listen}/api/event   (site {})",
        site.0
    );
    println!(
        "  query API:  POST http://{listen}/api/v1/query  (Authorization: Bearer {})",
        site.1
    );
    println!(
        "  dashboard:  http://{listen}/sites/{}#key={}",
        site.0, site.1
    );
    println!(
        "  tracker:    {}\n              (paste it into a page served over http, e.g. by `python3 -m http.server`;\n              file: pages are not counted)",
        script_tag(&site.0, &listen, true)
    );
    println!("  health:     http://{listen}/healthz    metrics: http://{listen}/metrics");
    println!("  database:   {}", store::redact(&url));
    if !config.archive.url.trim().is_empty() {
        println!(
            "  archive:    {} (Parquet, a file per partition and day or hour)",
            config.archive.url
        );
    }
    println!("Try:\n  curl -s -X POST http://{listen}/api/v1/query -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\\n    -d '{{\"site_id\":\"{}\",\"metrics\":[\"pageviews\",\"visitors\",\"events\"],\"date_range\":[\"{}\",\"{}\"],\"dimensions\":[\"time:minute\"]}}'",
        site.1, site.0, chrono::Utc::now().format("%Y-%m-%d"), chrono::Utc::now().format("%Y-%m-%d"));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(serve(config, Some(ingest_log), Some(tx)));
        if demo {
            if let Ok(collector) = rx.await {
                tokio::spawn(local::demo_traffic(collector, site.0.clone()));
                println!("Demo traffic is flowing into site {}.", site.0);
            }
        }
        tokio::select! {
            r = server => r.map_err(|e| anyhow::anyhow!("server task: {e}"))?,
            _ = tokio::signal::ctrl_c() => { println!("stopping"); Ok(()) }
        }
    })
}
