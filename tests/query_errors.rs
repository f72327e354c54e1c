//! The query API's refusals: 401 without or with an unknown key, 403 with another site's key,
//! 400 with a reason for a bad query; and a valid query's shape.

mod common;

use common::*;
use serde_json::json;

#[test]
fn wrong_keys_and_bad_queries_are_refused_with_reasons() {
    let scratch = tempfile::tempdir().unwrap();
    let db = fresh_database();
    let setup = Setup::new(
        &db,
        &LogChoice::Embedded {
            dir: scratch.path().join("log"),
        },
    );
    setup.run(&["migrate"]);
    let (site_a, key_a) = setup.add_site("a.test", "Europe/Paris");
    let (_site_b, key_b) = setup.add_site("b.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let url = setup.url("/api/v1/query");
    let query = |over: serde_json::Value| {
        let mut q = json!({"site_id": site_a, "metrics": ["pageviews", "visitors"],
                           "date_range": ["2026-11-01", "2026-11-03"], "dimensions": ["time:day"]});
        for (k, v) in over.as_object().unwrap() {
            q[k] = v.clone();
        }
        q
    };

    let (status, body) = post(&url, &query(json!({})), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&url, &query(json!({})), Some("cfk_not_a_key"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&url, &query(json!({})), Some(&key_b));
    assert_eq!(status, 403, "{body}");

    let bad = [
        (
            json!({"metrics": ["bounce_rate_of_cats"]}),
            "unknown metric",
        ),
        (json!({"metrics": []}), "at least one metric"),
        (
            json!({"date_range": ["yesterday", "2026-11-03"]}),
            "neither",
        ),
        (
            json!({"date_range": ["2026-11-05", "2026-11-03"]}),
            "before",
        ),
        (json!({"date_range": ["2026-11-05"]}), "[from, to]"),
        (json!({"dimensions": ["planet"]}), "unknown dimension"),
        (
            json!({"dimensions": ["country"]}),
            "pageviews is not available by \"country\"",
        ),
        (
            json!({"dimensions": ["source"], "filters": [["country", "is", ["FR"]]]}),
            "filters",
        ),
        (
            json!({"dimensions": [], "metrics": ["visitors"], "date_range": ["2026-11-01", "2026-11-01"],
                   "filters": [["country", "is", ["FR", "US"]]]}),
            "not a sum",
        ),
        (
            json!({"date_range": ["0001-01-01", "2026-11-03"]}),
            "outside 1970-9999",
        ),
        (
            json!({"dimensions": [], "metrics": ["visitors"],
                   "date_range": ["2026-11-01T00:00:30Z", "2026-11-01T00:10:00Z"]}),
            "visitors over a range",
        ),
        (
            json!({"dimensions": ["time:minute"], "date_range": ["2026-01-01", "2026-12-31"]}),
            "buckets",
        ),
    ];
    for (over, reason) in bad {
        let (status, body) = post(&url, &query(over.clone()), Some(&key_a));
        assert_eq!(status, 400, "{over}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{over}: {body}"
        );
    }
    // A day whose midnight does not exist (Chile moves clocks at 00:00) is still a day.
    let (site_c, key_c) = setup.add_site("c.test", "America/Santiago");
    let (status, body) = post(
        &url,
        &json!({"site_id": site_c, "metrics": ["pageviews"], "date_range": ["2026-09-06", "2026-09-06"]}),
        Some(&key_c),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_raw(&url, b"{\"site_id\": 3".to_vec(), "application/json");
    assert_eq!(status, 401, "no key is checked before the body: {body}");

    // A valid query: every day of the range, zero-filled, in the site's zone.
    let (status, body) = post(&url, &query(json!({})), Some(&key_a));
    assert_eq!(status, 200, "{body}");
    let days: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dimensions"][0].as_str().unwrap())
        .collect();
    assert_eq!(days, vec!["2026-11-01", "2026-11-02", "2026-11-03"]);
    assert_eq!(body["results"][0]["metrics"], json!([0, 0]));
    assert_eq!(body["meta"]["time_zone"], json!("Europe/Paris"));
    assert_eq!(body["meta"]["generation"], json!(1));
    // Totals over one day may include visitors: one bucket, an exact distinct count.
    let (status, body) = post(
        &url,
        &query(json!({"dimensions": [], "date_range": ["2026-11-02", "2026-11-02"]})),
        Some(&key_a),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["metrics"], json!([0, 0]));
}

/// A database written by older versions: visitor sketches of totals under the `uniques`
/// family, and every sketch stored one row per register. `migrate` converts them in place,
/// once, into one `visitors_hll` row per sketch, so multi-day visitor totals over sealed
/// history keep their sketches.
#[test]
fn sketches_stored_by_older_versions_become_one_row_each() {
    let scratch = tempfile::tempdir().unwrap();
    let db = fresh_database();
    let setup = Setup::new(
        &db,
        &LogChoice::Embedded {
            dir: scratch.path().join("log"),
        },
    );
    setup.run(&["migrate"]);
    let mut client = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    let partitioned: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'rollups'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    if partitioned {
        client
            .batch_execute(
                "CREATE TABLE rollups_old PARTITION OF rollups
                   FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')",
            )
            .unwrap();
    }
    // As an old database has it: no record of the migrations, register rows under
    // `uniques`, and sketches stored one row per register (index after the value).
    client
        .batch_execute(
            "DELETE FROM migrations;
             INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family,
                                  dimension, dimension_value, metric, value)
             VALUES (1, 's1', 'day', '2025-01-02', '2025-01-03', 'uniques', 'register', '17', 'hll', 3),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'uniques', 'register', '4000', 'hll', 1),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'traffic', '', '', 'visitors', 5),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404' || chr(31) || '5', 'visitors_hll', 2),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404' || chr(31) || '300', 'visitors_hll', 7),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '/a' || chr(31) || '5', 'visitors_hll', 1)",
        )
        .unwrap();
    setup.run(&["migrate"]);
    type Stored = (String, String, String, i64, Option<Vec<(u16, u8)>>);
    let read = |client: &mut postgres::Client| -> Vec<Stored> {
        client
            .query(
                "SELECT family, metric, dimension_value, value, sketch FROM rollups
                  ORDER BY family, metric, dimension_value",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                let sketch: Option<Vec<u8>> = r.get(4);
                let registers = sketch.map(|s| clickflow_dataflows::uniques::decode(&s).unwrap());
                (r.get(0), r.get(1), r.get(2), r.get(3), registers)
            })
            .collect()
    };
    let rows = read(&mut client);
    let row = |f: &str, m: &str, v: &str, n: i64, registers: Option<Vec<(u16, u8)>>| {
        (f.to_owned(), m.to_owned(), v.to_owned(), n, registers)
    };
    assert_eq!(
        rows,
        vec![
            row("pages", "visitors_hll", "/a", 1, Some(vec![(5, 1)])),
            row(
                "pages",
                "visitors_hll",
                "404",
                2,
                Some(vec![(5, 2), (300, 7)])
            ),
            row("traffic", "visitors", "", 5, None),
            row(
                "traffic",
                "visitors_hll",
                "",
                2,
                Some(vec![(17, 3), (4000, 1)])
            ),
        ]
    );
    // Each conversion runs once: a later start finds nothing to convert and changes nothing.
    setup.run(&["migrate"]);
    assert_eq!(read(&mut client), rows);
}
