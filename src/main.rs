//! The `clickflow` command: its arguments, and which module each verb runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use clickflow::config::Config;
use clickflow::engine::replay::replay;
use clickflow::engine::start::start_live;
use clickflow::engine::{self, cluster, Outcome};
use clickflow::serve::serve;
use clickflow::store::archive::cli::archive;
use clickflow::{local, store, telemetry};

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

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref(), &cli.set)?;
    match cli.command {
        Command::Migrate => {
            let layout = store::migrate(
                &mut store::connect(&config.database_url()?)?,
                &config.database,
            )?;
            println!("schema ready (rollups: {})", layout.describe());
        }
        Command::Site {
            action: SiteAction::Add { domain, time_zone },
        } => {
            let mut client = store::connect(&config.database_url()?)?;
            store::migrate(&mut client, &config.database)?;
            let site = store::add_site(&mut client, &domain, &time_zone)?;
            println!("site added\n  domain:      {}\n  time zone:   {}\n  tracking id: {}\n  api key:     {}", site.domain, site.time_zone, site.id, site.api_key);
            println!(
                "  tracker:     {}\n               (in each page's <head>; the src is your collector's public address)",
                local::script_tag(&site.id, &config.collector.listen, false)
            );
        }
        Command::Retention => {
            let secs = config.database.minute_retention_secs;
            let mut client = store::connect(&config.database_url()?)?;
            let dropped = store::drop_old_minute_rows(&mut client, secs)?;
            println!("dropped {dropped} minute rows older than {secs} s (hour and day rows stay)");
        }
        Command::Serve => {
            config.database_url()?;
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
            config.database_url()?;
            cluster::run(
                &config,
                cluster::ClusterArgs {
                    workers,
                    processes,
                    hostfile,
                    here: process,
                    listen,
                    config_flags: cluster::config_flags(cli.config.as_deref(), &cli.set),
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
                telemetry::serve_metrics(addr)?;
            }
            let timely = engine::timely_config(workers, processes, process, hostfile.as_deref())?;
            if let Outcome::Retired = start_live(&config, timely)? {
                eprintln!("engine: a replay switched readers to a newer generation; restart the engine to follow it");
                std::process::exit(3);
            }
        }
        Command::Replay { from, workers } => replay(&config, &from, workers)?,
        Command::Archive {
            once,
            status,
            metrics_listen,
        } => {
            if let Some(addr) = metrics_listen {
                telemetry::serve_metrics(addr)?;
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
            let result = local::up(config.clone(), demo, workers);
            if local_pg {
                local::stop_postgres(&config.database.local_dir);
            }
            result?;
        }
    }
    Ok(())
}
