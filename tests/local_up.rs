//! The README's first command: `clickflow up --demo` starts its own Postgres, the embedded log,
//! collector, engine and API, and demo traffic shows up in the query API.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn up_with_demo_traffic_serves_moving_numbers() {
    let mut up = LocalUp::start();
    let (listen, site, key) = (up.listen.clone(), up.site.clone(), up.key.clone());
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
        .args(["-INT", &up.pid().to_string()])
        .status()
        .expect("kill -INT");
    let status = eventually(Duration::from_secs(30), || up.try_wait()).expect("up exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
}
