//! Harness for tests against the real servers started by `scripts/test-env.sh`.
#![allow(dead_code)]

pub mod pipeline_kit;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use serde_json::{json, Value};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the suite with scripts/test.sh (it starts Postgres and the broker)"))
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

/// A fresh database on the test server; returns its URL.
pub fn fresh_database() -> String {
    fresh_database_on(&env("CLICKFLOW_TEST_PG"))
}

/// A new, empty database on the server at `server` (a URL ending in a database name).
pub fn fresh_database_on(server: &str) -> String {
    let name = unique("cf");
    let mut client =
        postgres::Client::connect(server, postgres::NoTls).expect("connect to test postgres");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(server);
    format!("{base}/{name}")
}

/// A fresh topic on the test broker; returns (brokers, topic).
pub fn fresh_topic(partitions: u32) -> (String, String) {
    let brokers = env("CLICKFLOW_TEST_KAFKA");
    let topic = unique("events");
    let out = Command::new(env("CLICKFLOW_TEST_TANSU"))
        .args([
            "topic",
            "create",
            &topic,
            "--partitions",
            &partitions.to_string(),
            "--broker",
            &format!("tcp://{brokers}"),
        ])
        .output()
        .expect("run tansu topic create");
    assert!(
        out.status.success(),
        "topic create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (brokers, topic)
}

/// The UTC date `offset` days from today, as `YYYY-MM-DD`: tests name days relative to the
/// clock, never fixed dates that retention and lateness windows move past.
pub fn day(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(offset))
        .format("%Y-%m-%d")
        .to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Environment for a clickflow process: database, log and listener.
#[derive(Clone, Debug)]
pub struct Setup {
    pub vars: Vec<(String, String)>,
    pub listen: String,
}

impl Setup {
    /// With an embedded log in `dir`.
    pub fn embedded(database_url: &str, dir: PathBuf) -> Setup {
        Setup::new(database_url, &LogChoice::Embedded { dir })
    }

    pub fn new(database_url: &str, log: &LogChoice) -> Setup {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut vars = vec![
            ("DATABASE_URL".to_string(), database_url.to_string()),
            ("CLICKFLOW__COLLECTOR__LISTEN".into(), format!("{listen:?}")),
            ("CLICKFLOW__ENGINE__EPOCH_MS".into(), "200".into()),
            ("CLICKFLOW__ENGINE__COMMIT_INTERVAL_MS".into(), "100".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        // Each setup archives into a directory of its own (created only if something archives).
        let archive = match log {
            LogChoice::Kafka { brokers, topic } => {
                vars.push(("CLICKFLOW__LOG__KIND".into(), "kafka".into()));
                vars.push(("CLICKFLOW__LOG__BROKERS".into(), format!("{brokers:?}")));
                vars.push(("CLICKFLOW__LOG__TOPIC".into(), format!("{topic:?}")));
                std::env::temp_dir().join(format!("clickflow-archive-{topic}"))
            }
            LogChoice::Embedded { dir } => {
                vars.push(("CLICKFLOW__LOG__KIND".into(), "embedded".into()));
                vars.push((
                    "CLICKFLOW__LOG__DIR".into(),
                    format!("{:?}", dir.display().to_string()),
                ));
                let name = dir.file_name().map(|n| n.to_string_lossy());
                dir.with_file_name(format!("{}-archive", name.unwrap_or_default()))
            }
        };
        for (key, path) in [
            ("URL", archive.clone()),
            ("STAGING_DIR", archive.join(".staging")),
        ] {
            vars.push((
                format!("CLICKFLOW__ARCHIVE__{key}"),
                format!("{:?}", path.display().to_string()),
            ));
        }
        Setup { vars, listen }
    }

    pub fn with(mut self, key: &str, value: &str) -> Setup {
        self.vars.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clickflow"));
        c.args(args).env_remove("DATABASE_URL");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run clickflow");
        assert!(
            out.status.success(),
            "clickflow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn spawn(&self, args: &[&str]) -> Proc {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn clickflow");
        Proc(child)
    }

    /// The database this setup's processes use.
    pub fn database_url(&self) -> &str {
        &self
            .vars
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .expect("DATABASE_URL in every setup")
            .1
    }

    /// The configuration this setup's processes see (the last setting of a key wins).
    pub fn config(&self) -> clickflow::config::Config {
        let sets: Vec<String> = self
            .vars
            .iter()
            .filter_map(|(k, v)| {
                let path = k
                    .strip_prefix("CLICKFLOW__")?
                    .to_lowercase()
                    .replace("__", ".");
                Some(format!("{path}={v}"))
            })
            .collect();
        clickflow::config::Config::load(None, &sets).expect("the setup's configuration")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Adds a site; returns (tracking id, api key).
    pub fn add_site(&self, domain: &str, tz: &str) -> (String, String) {
        let out = self.run(&["site", "add", "--domain", domain, "--time-zone", tz]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("tracking id:"), field("api key:"))
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(self.url("/healthz")) {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server at {} never became healthy", self.listen);
    }
}

#[derive(Clone, Debug)]
pub enum LogChoice {
    Kafka { brokers: String, topic: String },
    Embedded { dir: PathBuf },
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts an engine job of `processes` × `workers` on localhost.
pub fn spawn_engine(setup: &Setup, processes: usize, workers: usize, scratch: &Path) -> Vec<Proc> {
    let hostfile = scratch.join(format!("hosts-{}", rand::random::<u32>()));
    let mut f = std::fs::File::create(&hostfile).expect("hostfile");
    for _ in 0..processes {
        writeln!(f, "127.0.0.1:{}", free_port()).expect("write hostfile");
    }
    let (w, n, h) = (
        workers.to_string(),
        processes.to_string(),
        hostfile.display().to_string(),
    );
    (0..processes)
        .map(|p| {
            let p = p.to_string();
            let mut args = vec!["engine", "-w", &w, "-n", &n, "-p", &p];
            if processes > 1 {
                args.extend(["-h", &h]);
            }
            setup.spawn(&args)
        })
        .collect()
}

/// What the tests' "browser" sends: a desktop Chrome. Requests without a user agent are bots.
pub const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36";

pub fn post(url: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    post_as(url, body, bearer, BROWSER_UA)
}

pub fn post_as(url: &str, body: &Value, bearer: Option<&str>, user_agent: &str) -> (u16, Value) {
    post_with(url, body, bearer, &[("user-agent", user_agent)])
}

/// A POST with extra headers (user agent, X-Forwarded-For…).
pub fn post_with(
    url: &str,
    body: &Value,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::blocking::Client::new().post(url).json(body);
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        req = req.header("user-agent", BROWSER_UA);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    answer(req)
}

pub fn post_raw(url: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    answer(
        reqwest::blocking::Client::new()
            .post(url)
            .header("user-agent", BROWSER_UA)
            .header("content-type", content_type)
            .body(body),
    )
}

/// Any method on any route, as the test browser: (status, JSON body or the text as a string).
pub fn request(
    method: &str,
    url: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::blocking::Client::new()
        .request(method.parse().expect("method"), url)
        .header("user-agent", BROWSER_UA);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    answer(req)
}

/// Sends `req`: the status, and the body as JSON (or as a string when it is not JSON).
fn answer(req: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let resp = req.send().expect("send request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts pageviews `range` of a seeded stream to `setup`'s batch route, `per_request` at a
/// time: event `i` is page `/p{i % pages}` of `https://{host}`, visitor `v{i % visitors}`,
/// event id `e{i}`. Each request must be accepted.
pub fn post_pageviews(
    setup: &Setup,
    site: &str,
    host: &str,
    range: std::ops::Range<usize>,
    (pages, visitors): (usize, usize),
    per_request: usize,
) {
    let events: Vec<Value> = range
        .map(|i| {
            json!({"site": site, "name": "pageview", "url": format!("https://{host}/p{}", i % pages),
                   "visitor_id": format!("v{}", i % visitors), "event_id": format!("e{i}")})
        })
        .collect();
    for chunk in events.chunks(per_request) {
        let (status, body) = post(&setup.url("/api/batch"), &json!({ "events": chunk }), None);
        assert_eq!(status, 202, "{body}");
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The dimension values of one row of a query's `results`.
pub fn dimension_values(row: &Value) -> Option<Vec<&str>> {
    Some(
        row["dimensions"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_str())
            .collect(),
    )
}

/// Sum over days of `metric` by `breakdown` (none: the total under "").
pub fn totals(
    setup: &Setup,
    site: &str,
    key: &str,
    metric: &str,
    breakdown: &[&str],
) -> Option<BTreeMap<String, String>> {
    let now = chrono::Utc::now();
    let day = |d: i64| {
        (now + chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string()
    };
    let mut dims = vec!["time:day".to_string()];
    dims.extend(breakdown.iter().map(|d| d.to_string()));
    let (status, body) = post(
        &setup.url("/api/v1/query"),
        &json!({"site_id": site, "metrics": [metric], "date_range": [day(-1), day(1)], "dimensions": dims}),
        Some(key),
    );
    if status != 200 {
        eprintln!("{metric} by {breakdown:?}: {status} {body}");
        return None;
    }
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for row in body["results"].as_array()? {
        let d = dimension_values(row)?;
        *out.entry(d[1..].join(" ")).or_default() += row["metrics"][0].as_f64()?;
    }
    Some(
        out.into_iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(k, v)| (k, format!("{v}")))
            .collect(),
    )
}

pub fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One expected breakdown: metric, dimensions, and the totals by dimension values.
pub type Want<'a> = (&'a str, &'a [&'a str], BTreeMap<String, String>);

/// Waits (up to a minute) until every breakdown in `want` equals its totals exactly; fails
/// with the differences otherwise.
pub fn await_rollups(setup: &Setup, site: &str, key: &str, want: &[Want]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let differences: Vec<String> = want
            .iter()
            .filter_map(|(metric, breakdown, expected)| {
                let got = totals(setup, site, key, metric, breakdown);
                (got.as_ref() != Some(expected))
                    .then(|| format!("{metric} by {breakdown:?}: want {expected:?}, got {got:?}"))
            })
            .collect();
        if differences.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rollups never matched:\n{}",
            differences.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A whole local Clickflow for one test: a fresh database, an embedded log, `serve` and a
/// one-worker engine, and one site (UTC). Everything stops when it is dropped.
pub struct Running {
    pub setup: Setup,
    pub site: String,
    pub key: String,
    _server: Proc,
    _engine: Vec<Proc>,
    pub scratch: tempfile::TempDir,
}

pub fn running_site(domain: &str) -> Running {
    running_site_with(domain, &[])
}

/// As [`running_site`], with extra configuration (`CLICKFLOW__…` variables).
pub fn running_site_with(domain: &str, vars: &[(&str, &str)]) -> Running {
    let db = fresh_database();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut setup = Setup::embedded(&db, scratch.path().join("log"));
    for (k, v) in vars {
        setup = setup.with(k, v);
    }
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site(domain, "UTC");
    let (server, engine) = serve_and_engine(&setup, scratch.path());
    Running {
        setup,
        site,
        key,
        _server: server,
        _engine: engine,
        scratch,
    }
}

/// `serve` (healthy before this returns) and a one-process, one-worker engine for `setup`.
pub fn serve_and_engine(setup: &Setup, scratch: &Path) -> (Proc, Vec<Proc>) {
    let server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    (server, spawn_engine(setup, 1, 1, scratch))
}

/// The README's first command, `clickflow up --demo`, as a new user runs it: its own Postgres
/// in a scratch directory, the embedded log, demo traffic. What it printed is kept, and the
/// process and its Postgres stop when this is dropped.
pub struct LocalUp {
    child: Child,
    pg_dir: PathBuf,
    pub listen: String,
    pub site: String,
    pub key: String,
    /// The printed dashboard URL, key included.
    pub dashboard: String,
    /// The printed script tag.
    pub tag: String,
    _scratch: tempfile::TempDir,
}

impl LocalUp {
    pub fn start() -> LocalUp {
        use std::io::{BufRead, BufReader};
        let scratch = tempfile::tempdir().expect("scratch dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let pg_dir = scratch.path().join("pg");
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_clickflow"))
            .args(["up", "--demo", "-w", "1"])
            .env_remove("DATABASE_URL")
            .env("CLICKFLOW__DATABASE__LOCAL_DIR", quoted(&pg_dir))
            .env("CLICKFLOW__DATABASE__LOCAL_PORT", free_port().to_string())
            .env("CLICKFLOW__LOG__DIR", quoted(&scratch.path().join("log")))
            .env(
                "CLICKFLOW__ARCHIVE__URL",
                quoted(&scratch.path().join("archive")),
            )
            .env(
                "CLICKFLOW__ARCHIVE__STAGING_DIR",
                quoted(&scratch.path().join("archive-staging")),
            )
            .env("CLICKFLOW__COLLECTOR__LISTEN", format!("{listen:?}"))
            .env("CLICKFLOW__ENGINE__EPOCH_MS", "200")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn clickflow up");
        let stdout = child.stdout.take().expect("stdout");
        let mut up = LocalUp {
            child,
            pg_dir,
            listen,
            site: String::new(),
            key: String::new(),
            dashboard: String::new(),
            tag: String::new(),
            _scratch: scratch,
        };
        let mut lines = BufReader::new(stdout).lines();
        let after = |line: &str, label: &str| {
            line.trim_start()
                .strip_prefix(label)
                .map(|r| r.trim().to_string())
        };
        for line in lines.by_ref() {
            let line = line.expect("read stdout of clickflow up");
            if let Some(rest) = line.split("(site ").nth(1) {
                up.site = rest.trim_end_matches(')').to_string();
            }
            if let (true, Some(rest)) = (
                up.key.is_empty(),
                line.split("(Authorization: Bearer ").nth(1),
            ) {
                up.key = rest.trim_end_matches(')').to_string();
            }
            if let Some(url) = after(&line, "dashboard:") {
                up.dashboard = url;
            }
            if let Some(tag) = after(&line, "tracker:") {
                up.tag = tag;
            }
            if line.starts_with("Demo traffic is flowing") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        for (what, value) in [
            ("site", &up.site),
            ("API key", &up.key),
            ("dashboard URL", &up.dashboard),
            ("script tag", &up.tag),
        ] {
            assert!(!value.is_empty(), "clickflow up printed no {what}");
        }
        up
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for LocalUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        clickflow::local::stop_postgres(&self.pg_dir);
    }
}
