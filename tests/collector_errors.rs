//! Every collector error case returns its status and reason, and exactly the accepted
//! events reach the log.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::json;

#[test]
fn every_error_case_has_its_status_and_nothing_is_lost_or_doubled() {
    let scratch = tempfile::tempdir().unwrap();
    let log_dir = scratch.path().join("log");
    let db = fresh_database();
    let setup = Setup::new(
        &db,
        &LogChoice::Embedded {
            dir: log_dir.clone(),
        },
    );
    setup.run(&["migrate"]);
    let (site, _) = setup.add_site("errors.test", "UTC");
    let mut server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let event_url = setup.url("/api/event");
    let now = Utc::now().timestamp_millis();
    let ok = json!({"site": site, "name": "pageview", "url": "https://errors.test/"});
    let with = |k: &str, v: serde_json::Value| {
        let mut e = ok.clone();
        e[k] = v;
        e
    };
    let without = |k: &str| {
        let mut e = ok.clone();
        e.as_object_mut().unwrap().remove(k);
        e
    };
    let cases = vec![
        ("missing site", without("site"), 400, "site"),
        ("unknown site", with("site", json!("cf_nope")), 404, "site"),
        ("missing name", without("name"), 400, "name"),
        ("pageview without url", without("url"), 400, "url"),
        (
            "relative url",
            with("url", json!("/just/a/path")),
            400,
            "url",
        ),
        (
            "bad timestamp",
            with("ts", json!("yesterday-ish")),
            400,
            "ts",
        ),
        (
            "too old",
            with("ts", json!(now - 2 * 86_400_000)),
            400,
            "ts",
        ),
        (
            "too far ahead",
            with("ts", json!(now + 3_600_000)),
            400,
            "ts",
        ),
        (
            "nested props",
            with("props", json!({"a": {"b": 1}})),
            400,
            "props",
        ),
        (
            "bad currency",
            with("revenue", json!({"amount": "1.00", "currency": "EURO"})),
            400,
            "revenue",
        ),
        (
            "bad amount",
            with("revenue", json!({"amount": "1,00", "currency": "EUR"})),
            400,
            "revenue",
        ),
        ("numeric name", with("name", json!(5)), 400, "name"),
    ];
    for (what, body, status, field) in &cases {
        let (got, reply) = post(&event_url, body, None);
        assert_eq!(got, *status, "{what}: {reply}");
        assert_eq!(reply["field"], json!(field), "{what}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|r| !r.is_empty()),
            "{what} has a reason: {reply}"
        );
    }
    let (got, reply) = post_raw(&event_url, b"{not json".to_vec(), "application/json");
    assert_eq!(got, 400, "{reply}");
    let (got, reply) = post_raw(
        &event_url,
        serde_json::to_vec(&ok).unwrap(),
        "application/xml",
    );
    assert_eq!(got, 415, "{reply}");
    // The server refuses on the announced length, before reading the body.
    let reply = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&setup.listen).unwrap();
        write!(s, "POST /api/event HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", 2 << 20).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let too_many: Vec<_> = (0..501).map(|_| ok.clone()).collect();
    let (got, reply) = post(&setup.url("/api/batch"), &json!({"events": too_many}), None);
    assert_eq!(got, 413, "{reply}");
    let (got, reply) = post(&setup.url("/api/batch"), &json!({"nope": []}), None);
    assert_eq!(got, 400, "{reply}");

    // Accepted: one single event (id assigned), and a mixed batch with two refusals.
    let (got, reply) = post(&event_url, &ok, None);
    assert_eq!(got, 202, "{reply}");
    assert!(reply["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    let batch = json!({"events": [ok, without("name"), with("event_id", json!("b-1")), with("site", json!("cf_nope")), with("ts", json!(now - 60_000))]});
    let (got, reply) = post(&setup.url("/api/batch"), &batch, None);
    assert_eq!(got, 202, "{reply}");
    assert_eq!(reply["accepted"], json!(3), "{reply}");
    let rejected: Vec<i64> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 3], "{reply}");

    // Exactly the accepted events are in the log.
    server.kill();
    let log = clickflow::log::embedded::EmbeddedLog::open_read_only(&log_dir).unwrap();
    use clickflow::log::Log;
    let total: u64 = (0..log.partitions().unwrap())
        .map(|p| log.high_watermark(p).unwrap())
        .sum();
    assert_eq!(total, 4, "1 single + 3 batched events reached the log");
}

#[test]
fn an_unreachable_broker_is_a_503_never_a_202() {
    let db = fresh_database();
    let setup = Setup::new(
        &db,
        &LogChoice::Kafka {
            brokers: format!("127.0.0.1:{}", free_port()),
            topic: "events".into(),
        },
    );
    setup.run(&["migrate"]);
    let (site, _) = setup.add_site("down.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    let reply = eventually(Duration::from_secs(30), || {
        reqwest::blocking::Client::new()
            .post(setup.url("/api/event"))
            .json(&json!({"site": site, "name": "pageview", "url": "https://down.test/"}))
            .timeout(Duration::from_secs(30))
            .send()
            .ok()
    })
    .expect("server answers");
    assert_eq!(reply.status().as_u16(), 503);
}
