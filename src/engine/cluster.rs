//! `clickflow cluster`: the local processes of a timely engine job, kept running.
//!
//! Timely has no fault tolerance: when one process of a job dies, its peers fail too, and the
//! job can only start again whole. The supervisor starts this host's processes, and when any
//! of them exits it stops the others and starts them all again, after a backoff that grows
//! with consecutive failures (1 s, 2 s, … 30 s) and resets once a run has lasted a minute. An
//! engine retired by a replay (exit code 3) is restarted at once, to follow the new
//! generation. Restarted engines rehydrate from Postgres, so nothing is lost or counted twice.
//!
//! Without a hostfile it makes one on loopback for `-n` processes; with one (`-h`), the same
//! binary runs on every host and each supervisor runs the lines whose address is one of its
//! own (or those named with `-p`). `/healthz` reports the processes, restarts, the committed
//! frontier and lag, and rehydration progress read from each process's own metrics.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::Config;

/// What the supervisor is asked to run.
pub struct ClusterArgs {
    pub workers: usize,
    /// Processes of the whole job when no hostfile is given (all on this host).
    pub processes: usize,
    pub hostfile: Option<PathBuf>,
    /// Which of the hostfile's processes run here; empty: those on this host's addresses.
    pub here: Vec<usize>,
    /// Where `/healthz` is served.
    pub listen: SocketAddr,
    /// `--config` / `--set` flags, passed on to every engine process.
    pub config_flags: Vec<OsString>,
}

/// The exit code of an engine a replay retired.
const RETIRED: i32 = 3;
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize)]
struct ProcessState {
    index: usize,
    pid: Option<u32>,
    running: bool,
    last_exit: Option<String>,
    metrics: String,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Snapshot {
    status: &'static str,
    processes: Vec<ProcessState>,
    restarts: u64,
    next_start_in_ms: Option<u64>,
    committed_frontier_ms: Option<i64>,
    lag_ms: Option<i64>,
    lag_records: Option<u64>,
    rehydration: Value,
}

/// Removes the directory of a hostfile this supervisor generated, however `run` ends.
struct GeneratedHostfile(Option<PathBuf>);

impl Drop for GeneratedHostfile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.as_ref().and_then(|f| f.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn run(config: &Config, args: ClusterArgs) -> anyhow::Result<()> {
    let (hostfile, total, here) = hosts(&args)?;
    let _generated = GeneratedHostfile(args.hostfile.is_none().then(|| hostfile.clone()));
    let metrics: Vec<SocketAddr> = here
        .iter()
        .map(|_| free_loopback_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
        .collect::<anyhow::Result<_>>()?;
    let snapshot = Arc::new(Mutex::new(Snapshot {
        status: "starting",
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    serve_health(args.listen, snapshot.clone(), stop.clone())?;
    eprintln!(
        "cluster: {} of {total} processes here ({here:?}), {} workers each; hostfile {}; health on http://{}/healthz",
        here.len(),
        args.workers,
        hostfile.display(),
        args.listen
    );

    let engine = std::env::current_exe().context("finding the clickflow binary")?;
    let spawn = |index: usize, metrics: SocketAddr| -> anyhow::Result<Child> {
        let mut command = Command::new(&engine);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. A supervisor
        // killed without a chance to clean up (SIGKILL, OOM) takes its engines with it, so a
        // new supervisor never finds an old job still holding the ports.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .args(&args.config_flags)
            .arg("engine")
            .args(["-w", &args.workers.to_string()])
            .args(["-n", &total.to_string()])
            .args(["-p", &index.to_string()])
            .arg("-h")
            .arg(&hostfile)
            .args(["--metrics-listen", &metrics.to_string()])
            .spawn()
            .with_context(|| format!("starting engine process {index}"))
    };

    let mut restarts = 0u64;
    let mut failures = 0u32;
    let mut last_exit: BTreeMap<usize, String> = BTreeMap::new();
    let mut last_health = Instant::now() - Duration::from_secs(60);
    let mut sources = None;
    'runs: loop {
        let mut children: Vec<(usize, Child)> = Vec::new();
        for (&index, &addr) in here.iter().zip(&metrics) {
            children.push((index, spawn(index, addr)?));
        }
        let began = Instant::now();
        // Watch until one exits (or we are told to stop).
        let (index, status) = loop {
            if stop.load(Ordering::SeqCst) {
                for (_, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                eprintln!("cluster: stopped");
                return Ok(());
            }
            if let Some(exited) = children
                .iter_mut()
                .find_map(|(i, c)| c.try_wait().ok().flatten().map(|s| (*i, s)))
            {
                break exited;
            }
            if last_health.elapsed() >= Duration::from_secs(1) {
                last_health = Instant::now();
                let processes = children
                    .iter()
                    .zip(&metrics)
                    .map(|((i, c), m)| ProcessState {
                        index: *i,
                        pid: Some(c.id()),
                        running: true,
                        last_exit: last_exit.get(i).cloned(),
                        metrics: m.to_string(),
                    })
                    .collect();
                let mut s = observe(config, &metrics, &mut sources);
                s.processes = processes;
                s.restarts = restarts;
                *snapshot.lock().expect("snapshot") = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let code = status.code();
        last_exit.insert(index, format!("{status}"));
        for (_, c) in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        restarts += 1;
        if began.elapsed() >= STABLE {
            failures = 0;
        }
        let delay = if code == Some(RETIRED) {
            tracing::info!(
                index,
                "engine retired by a replay; restarting the job on the new generation"
            );
            Duration::ZERO
        } else {
            failures += 1;
            let delay = Duration::from_secs(1 << (failures - 1).min(5)).min(BACKOFF_MAX);
            tracing::warn!(index, %status, restart_in_ms = delay.as_millis() as u64, "engine process exited; restarting every process of the job");
            delay
        };
        {
            let mut s = snapshot.lock().expect("snapshot");
            s.status = "restarting";
            s.restarts = restarts;
            s.next_start_in_ms = Some(delay.as_millis() as u64);
            for p in &mut s.processes {
                p.running = false;
                p.pid = None;
                p.last_exit = last_exit.get(&p.index).cloned();
            }
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                eprintln!("cluster: stopped");
                break 'runs;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The hostfile to run with, the job's process count, and the processes that run here.
fn hosts(args: &ClusterArgs) -> anyhow::Result<(PathBuf, usize, Vec<usize>)> {
    let Some(path) = &args.hostfile else {
        if args.processes == 0 {
            bail!("-n must be at least 1");
        }
        let dir = std::env::temp_dir().join(format!("clickflow-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("hosts.txt");
        let lines: Vec<String> = (0..args.processes)
            .map(|_| free_loopback_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<anyhow::Result<_>>()?;
        std::fs::write(&path, lines.join("\n") + "\n")?;
        return Ok((path, args.processes, (0..args.processes).collect()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading hostfile {}", path.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        bail!("hostfile {} lists no host:port", path.display());
    }
    let here: Vec<usize> = if args.here.is_empty() {
        lines
            .iter()
            .enumerate()
            .filter(|(_, line)| is_local(line))
            .map(|(i, _)| i)
            .collect()
    } else {
        args.here.clone()
    };
    if let Some(bad) = here.iter().find(|i| **i >= lines.len()) {
        bail!(
            "-p {bad}: the hostfile has {} processes (0..{})",
            lines.len(),
            lines.len()
        );
    }
    if here.is_empty() {
        bail!(
            "none of the hostfile's addresses belongs to this host; name this host's processes with -p"
        );
    }
    Ok((path.canonicalize()?, lines.len(), here))
}

/// A `host:port` line whose host is an address of this machine (one it can listen on).
fn is_local(line: &str) -> bool {
    use std::net::ToSocketAddrs;
    line.to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| TcpListener::bind(SocketAddr::new(a.ip(), 0)).is_ok())
}

fn free_loopback_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What the supervisor reads progress from, opened once and again after an error.
type Sources = (postgres::Client, Arc<dyn crate::log::Log>);

/// The job's state from outside: committed progress and lag from Postgres and the log, and
/// rehydration from the processes' own metrics.
fn observe(config: &Config, metrics: &[SocketAddr], sources: &mut Option<Sources>) -> Snapshot {
    let mut s = Snapshot {
        status: "running",
        ..Default::default()
    };
    let progress = (|| -> anyhow::Result<(crate::store::Progress, u64)> {
        if sources.is_none() {
            *sources = Some((
                crate::store::connect(&config.database.url)?,
                crate::log::open(&config.log, crate::log::Access::Read)?,
            ));
        }
        let Some((client, log)) = sources.as_mut() else {
            bail!("no connection")
        };
        let generation = crate::store::active_generation(client)?;
        let progress = crate::store::progress(client, generation)?;
        let mut behind = 0;
        for p in 0..log.partitions()? {
            let committed = progress.offsets.get(&p).copied().unwrap_or(0);
            behind += log.high_watermark(p)?.saturating_sub(committed);
        }
        Ok((progress, behind))
    })();
    match progress {
        Ok((progress, behind)) => {
            s.committed_frontier_ms = progress.frontier_ms;
            s.lag_ms = progress
                .frontier_ms
                .map(|f| clickflow_operators::source::wall_clock_ms() - f);
            s.lag_records = Some(behind);
        }
        Err(e) => {
            // Reconnect next time: the database or the broker may have restarted.
            *sources = None;
            tracing::debug!(error = %format!("{e:#}"), "cluster: progress unavailable");
        }
    }
    // Rehydration: records read of those between each partition's start and its committed
    // offset, over the partitions the processes report.
    let (mut from, mut until, mut at) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for addr in metrics {
        let Some(text) = scrape(*addr) else { continue };
        for (name, partition, value) in gauges(&text) {
            match name {
                "clickflow_engine_rehydrate_from_offset" => from.insert(partition, value),
                "clickflow_engine_rehydrate_until_offset" => until.insert(partition, value),
                "clickflow_engine_source_offset" => at.insert(partition, value),
                _ => None,
            };
        }
    }
    let (mut done, mut total) = (0i64, 0i64);
    for (p, start) in &from {
        let end = until.get(p).copied().unwrap_or(*start);
        let span = (end - start).max(0);
        total += span;
        done += at.get(p).map_or(0, |a| (a - start).clamp(0, span));
    }
    if done < total {
        s.status = "rehydrating";
    }
    s.rehydration = json!({
        "records_done": done,
        "records_total": total,
        "fraction": if total == 0 { 1.0 } else { done as f64 / total as f64 },
    });
    s
}

/// `(metric, partition, value)` of the partition-labelled gauges in a text exposition.
fn gauges(text: &str) -> Vec<(&str, u32, i64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, rest) = l.split_once("{partition=\"")?;
            let (partition, rest) = rest.split_once("\"}")?;
            Some((name, partition.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

/// `GET /metrics` of an engine process (plain HTTP/1.0 on loopback, half a second at most).
fn scrape(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// `/healthz` (200 while every process runs, 503 while the job restarts) on its own thread,
/// and Ctrl-C / SIGTERM turned into a stop.
fn serve_health(
    listen: SocketAddr,
    snapshot: Arc<Mutex<Snapshot>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("--listen {listen}"))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            use warp::Filter;
            let health = warp::path!("healthz").map(move || {
                let s = snapshot.lock().expect("snapshot").clone();
                let code = if s.status == "restarting" {
                    warp::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    warp::http::StatusCode::OK
                };
                warp::reply::with_status(warp::reply::json(&s), code)
            });
            let signals = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                stop.store(true, Ordering::SeqCst);
            };
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    tokio::join!(
                        warp::serve(warp::get().and(health)).incoming(l).run(),
                        signals
                    );
                }
                Err(e) => tracing::error!(error = %e, "cluster health listener"),
            }
        })
    });
    Ok(())
}

/// The `--config`/`--set` flags of this invocation, to pass on.
pub fn config_flags(config: Option<&Path>, sets: &[String]) -> Vec<OsString> {
    let mut flags = Vec::new();
    if let Some(c) = config {
        flags.push("--config".into());
        flags.push(c.as_os_str().to_owned());
    }
    for s in sets {
        flags.push("--set".into());
        flags.push(s.into());
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_gauges_are_read_from_the_exposition() {
        let text = "# HELP x\nclickflow_engine_source_offset{partition=\"3\"} 120\nclickflow_sink_frontier_ms 5\nclickflow_engine_rehydrate_until_offset{partition=\"0\"} 7\n";
        assert_eq!(
            gauges(text),
            vec![
                ("clickflow_engine_source_offset", 3, 120),
                ("clickflow_engine_rehydrate_until_offset", 0, 7)
            ]
        );
    }

    #[test]
    fn a_hostfile_line_is_local_when_this_host_can_listen_there() {
        assert!(is_local("127.0.0.1:2101"));
        assert!(!is_local("192.0.2.1:2101"));
    }
}
