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
    let setup = Setup::embedded(&db, log_dir.clone());
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
    // A large batch of one site: split into messages of at most 100 events, none lost.
    let large: Vec<_> = (0..250)
        .map(|i| with("event_id", json!(format!("large-{i}"))))
        .collect();
    let (got, reply) = post(&setup.url("/api/batch"), &json!({"events": large}), None);
    assert_eq!(got, 202, "{reply}");
    assert_eq!(reply["accepted"], json!(250), "{reply}");

    // Exactly the accepted events are in the log.
    server.kill();
    let log = clickflow::log::embedded::EmbeddedLog::open_read_only(&log_dir).unwrap();
    use clickflow::log::Log;
    let messages: u64 = (0..log.partitions().unwrap())
        .map(|p| log.high_watermark(p).unwrap())
        .sum();
    assert_eq!(
        messages,
        2 + 3,
        "a request's events of one site share messages of 100"
    );
    drop(log);
    let logged = logged_records(&log_dir);
    assert_eq!(
        logged.len(),
        4 + 250,
        "1 single + 3 + 250 batched events reached the log"
    );
    let large_ids: std::collections::BTreeSet<String> = logged
        .iter()
        .filter_map(|r| match r {
            clickflow_dataflows::Record::Event(e) if e.event_id.starts_with("large-") => {
                Some(e.event_id.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(large_ids.len(), 250, "each large-batch event once");
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

/// Every record in an embedded log directory, decoded.
fn logged_records(dir: &std::path::Path) -> Vec<clickflow_dataflows::Record> {
    use clickflow::log::Log;
    let log = clickflow::log::embedded::EmbeddedLog::open_read_only(dir).unwrap();
    let parts = log.partitions().unwrap();
    let start = (0..parts).map(|p| (p, 0)).collect();
    let end = (0..parts)
        .map(|p| (p, log.high_watermark(p).unwrap()))
        .collect();
    let mut reader = log.reader(&start, Some(end)).unwrap();
    let mut out = Vec::new();
    while !reader.finished() {
        for r in reader.poll(1000, Duration::from_millis(100)).unwrap() {
            out.extend(clickflow_dataflows::Record::decode_all(&r.value).unwrap());
        }
    }
    out
}

#[test]
fn what_real_clients_send_is_never_silently_lost() {
    use clickflow_dataflows::Record;
    let scratch = tempfile::tempdir().unwrap();
    let log_dir = scratch.path().join("log");
    let db = fresh_database();
    let geo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".deps/geo/geo-whois-asn-country.mmdb");
    assert!(
        geo.exists(),
        "run scripts/install-deps.sh: {geo:?} is missing"
    );
    let setup = Setup::embedded(&db, log_dir.clone()).with(
        "CLICKFLOW__COLLECTOR__GEOIP_DB",
        &format!("{:?}", geo.display().to_string()),
    );
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site("clients.test", "UTC");
    let (_, other_key) = setup.add_site("other.test", "UTC");
    let mut server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let (event_url, batch_url) = (setup.url("/api/event"), setup.url("/api/batch"));
    let page = |id: &str| json!({"site": site, "name": "pageview", "url": "https://clients.test/", "event_id": id});
    let with = |mut e: serde_json::Value, k: &str, v: serde_json::Value| {
        e[k] = v;
        e
    };

    // A browser on a direct visit: document.referrer is "".
    let (status, reply) = post(
        &event_url,
        &with(page("direct"), "referrer", json!("")),
        None,
    );
    assert_eq!((status, reply["bots"].clone()), (202, json!(0)), "{reply}");
    let (status, reply) = post(
        &event_url,
        &with(page("blank"), "referrer", json!("  ")),
        None,
    );
    assert_eq!(status, 202, "{reply}");

    // A server posting with its HTTP library's user agent and no visitor fields: accepted,
    // logged as bots, and the reply says so.
    let server_batch = json!({"events": [page("srv-1"), page("srv-2")]});
    let (status, reply) = post_as(&batch_url, &server_batch, None, "python-requests/2.31.0");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(
        (reply["accepted"].clone(), reply["bots"].clone()),
        (json!(2), json!(2)),
        "{reply}"
    );
    let (status, reply) = post_as(&event_url, &page("srv-3"), None, "curl/8.5.0");
    assert_eq!((status, reply["bots"].clone()), (202, json!(1)), "{reply}");

    // The same server naming each visitor's user agent and IP, with the site's API key.
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    let visitor = |id: &str, ua: &str, ip: &str| {
        with(with(page(id), "user_agent", json!(ua)), "ip", json!(ip))
    };
    let on_behalf = json!({"events": [
        visitor("mp-1", IPHONE, "81.2.69.160"),
        visitor("mp-2", BROWSER_UA, "2a02:8070::1"),
        visitor("mp-3", "Googlebot/2.1 (+http://www.google.com/bot.html)", "66.249.66.1"),
        visitor("mp-bad-ip", IPHONE, "not-an-ip"),
    ]});
    let (status, reply) = post_as(
        &batch_url,
        &on_behalf,
        Some(&key),
        "Java-http-client/17.0.15",
    );
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["accepted"], json!(3), "{reply}");
    assert_eq!(
        reply["bots"],
        json!(1),
        "only the crawler is a bot: {reply}"
    );
    assert_eq!(
        reply["rejected"],
        json!([{"index": 3, "field": "ip", "reason": "ip \"not-an-ip\" is not an IPv4 or IPv6 address"}]),
        "{reply}"
    );

    // Visitor fields without the site's key would let anyone forge visitors.
    let one = visitor("forged", IPHONE, "81.2.69.160");
    let (status, reply) = post_as(&event_url, &one, None, "curl/8.5.0");
    assert_eq!(
        (status, reply["field"].clone()),
        (401, json!("authorization")),
        "{reply}"
    );
    let (status, reply) = post_as(&event_url, &one, Some(&other_key), "curl/8.5.0");
    assert_eq!(
        (status, reply["field"].clone()),
        (403, json!("authorization")),
        "{reply}"
    );
    let (status, reply) = post_as(&event_url, &one, Some("cfk_wrong"), "curl/8.5.0");
    assert_eq!(status, 403, "{reply}");

    server.kill();
    let records = logged_records(&log_dir);
    let mut events = std::collections::BTreeMap::new();
    let mut bots = std::collections::BTreeSet::new();
    for r in records {
        match r {
            Record::Event(e) => {
                events.insert(e.event_id.clone(), e);
            }
            Record::Bot(b) => {
                bots.insert(b.event_id);
            }
            Record::Erase(_) => panic!("no erasure was sent"),
        }
    }
    let ids = |it: &[&str]| {
        it.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        events
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ids(&["blank", "direct", "key:mp-1", "key:mp-2"]),
        "events sent with the site's key are logged in its id namespace"
    );
    assert_eq!(bots, ids(&["key:mp-3", "srv-1", "srv-2", "srv-3"]));
    assert_eq!(
        events["direct"].referrer, None,
        "an empty referrer is direct traffic"
    );
    assert_eq!(events["blank"].referrer, None);
    let mp1 = &events["key:mp-1"];
    assert_eq!(
        (
            mp1.client.device.as_str(),
            mp1.client.browser.as_str(),
            mp1.client.os.as_str()
        ),
        ("mobile", "Safari", "iPhone"),
        "{mp1:?}"
    );
    assert_eq!(
        mp1.country, "GB",
        "the visitor's IP, not the server's, gives the country"
    );
    assert_eq!(events["key:mp-2"].client.browser, "Chrome");
    assert_eq!(events["key:mp-2"].country, "DE");
    assert_ne!(
        mp1.visitor, events["key:mp-2"].visitor,
        "visitors hash their own IP and user agent"
    );
    // Nothing the server said about itself or its visitors is kept verbatim.
    let raw = std::fs::read_dir(&log_dir)
        .unwrap()
        .flat_map(|f| std::fs::read(f.unwrap().path()).unwrap_or_default())
        .collect::<Vec<u8>>();
    assert!(
        raw.windows(4).any(|w| w == b"mp-1"),
        "the search reads the log's records"
    );
    for secret in [
        "81.2.69.160",
        "2a02:8070::1",
        "Java-http-client",
        "python-requests",
    ] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} reached the log"
        );
    }
}
