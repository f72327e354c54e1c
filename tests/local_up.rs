//! The README's first command: `clickflow up --demo` starts its own Postgres, the embedded log,
//! collector, engine and API, and demo traffic shows up in the query API.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn up_with_demo_traffic_serves_moving_numbers() {
    let scratch = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let pg_dir = scratch.path().join("pg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_clickflow"))
        .args(["up", "--demo", "-w", "1"])
        .env_remove("DATABASE_URL")
        .env(
            "CLICKFLOW__DATABASE__LOCAL_DIR",
            format!("{:?}", pg_dir.display().to_string()),
        )
        .env("CLICKFLOW__DATABASE__LOCAL_PORT", free_port().to_string())
        .env(
            "CLICKFLOW__LOG__DIR",
            format!("{:?}", scratch.path().join("log").display().to_string()),
        )
        .env("CLICKFLOW__COLLECTOR__LISTEN", format!("{listen:?}"))
        .env("CLICKFLOW__ENGINE__EPOCH_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn clickflow up");
    // Whatever happens, the process and the Postgres it started go away before the directory.
    struct Cleanup(std::process::Child, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            clickflow::local::stop_postgres(&self.1);
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Cleanup(child, pg_dir.clone());
    let mut lines = BufReader::new(stdout).lines();
    let mut site = None;
    let mut key = None;
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(rest) = line.split("(site ").nth(1) {
            site = rest.strip_suffix(')').map(str::to_string);
        }
        if let (None, Some(rest)) = (&key, line.split("(Authorization: Bearer ").nth(1)) {
            key = rest.strip_suffix(')').map(str::to_string);
        }
        if line.starts_with("Demo traffic is flowing") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let (site, key) = (
        site.expect("site id printed"),
        key.expect("api key printed"),
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let url = format!("http://{listen}/api/v1/query");
    let pageviews = || {
        let (status, body) = post(
            &url,
            &json!({"site_id": site, "metrics": ["pageviews"], "date_range": [today, today]}),
            Some(&key),
        );
        (status == 200)
            .then(|| body["results"][0]["metrics"][0].as_i64())
            .flatten()
    };
    let first = eventually(Duration::from_secs(60), || pageviews().filter(|n| *n > 0))
        .expect("demo pageviews appear");
    eventually(Duration::from_secs(60), || {
        pageviews().filter(|n| *n > first)
    })
    .expect("and keep moving");
    // Ctrl-C stops everything, including the Postgres it started.
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = eventually(Duration::from_secs(30), || {
        child.0.try_wait().ok().flatten()
    })
    .expect("up exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
}
