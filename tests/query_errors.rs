//! The query API's refusals: 401 without or with an unknown key, 403 with another site's key,
//! 400 with a reason for a bad query; and a valid query's shape.

mod common;

use common::*;
use serde_json::json;

#[test]
fn wrong_keys_and_bad_queries_are_refused_with_reasons() {
    let scratch = tempfile::tempdir().unwrap();
    let db = fresh_database();
    let setup = Setup::embedded(&db, scratch.path().join("log"));
    setup.run(&["migrate"]);
    let (site_a, key_a) = setup.add_site("a.test", "Europe/Paris");
    let (_site_b, key_b) = setup.add_site("b.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let url = setup.url("/api/v1/query");
    // Days relative to today, inside the minute retention, so no answer depends on the date
    // the suite runs.
    let (d1, d2, d3, d5) = (day(-6), day(-5), day(-4), day(-2));
    let query = |over: serde_json::Value| {
        let mut q = json!({"site_id": site_a, "metrics": ["pageviews", "visitors"],
                           "date_range": [d1, d3], "dimensions": ["time:day"]});
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
        (json!({"date_range": ["yesterday", d3]}), "neither"),
        (json!({"date_range": [d5, d3]}), "before"),
        (json!({"date_range": [d5]}), "[from, to]"),
        (json!({"date_range": "fortnight"}), "unknown preset"),
        (json!({"compare": "last_year"}), "unknown comparison"),
        (json!({"dimensions": ["time:year"]}), "time:week"),
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
            json!({"dimensions": [], "metrics": ["visitors"], "date_range": [d1, d1],
                   "filters": [["country", "is", ["FR", "US"]]]}),
            "not a sum",
        ),
        (
            json!({"date_range": ["0001-01-01", d3]}),
            "outside 1970-9999",
        ),
        (
            json!({"dimensions": [], "metrics": ["visitors"],
                   "date_range": [format!("{d1}T00:00:30Z"), format!("{d1}T00:10:00Z")]}),
            "visitors over a range",
        ),
        (
            json!({"dimensions": ["time:minute"], "date_range": [day(-360), day(0)]}),
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
    assert_eq!(days, vec![d1.as_str(), d2.as_str(), d3.as_str()]);
    assert_eq!(body["results"][0]["metrics"], json!([0, 0]));
    assert_eq!(body["meta"]["time_zone"], json!("Europe/Paris"));
    assert_eq!(body["meta"]["generation"], json!(1));
    // Totals over one day may include visitors: one bucket, an exact distinct count.
    let (status, body) = post(
        &url,
        &query(json!({"dimensions": [], "date_range": [d2, d2]})),
        Some(&key_a),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["metrics"], json!([0, 0]));
}

/// A database written by older versions: one row per metric, visitor sketches of totals
/// under the `uniques` family, and every sketch stored one row per register. `migrate`
/// converts it in place, once, into one row per key (metrics as JSON, the sketch as one
/// `bytea`), so sealed history keeps its numbers and multi-day visitor totals their sketches.
#[test]
fn rows_stored_by_older_versions_become_one_row_per_key() {
    let scratch = tempfile::tempdir().unwrap();
    let db = fresh_database();
    let setup = Setup::embedded(&db, scratch.path().join("log"));
    setup.run(&["migrate"]);
    let mut client = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    let partitioned = |client: &mut postgres::Client| -> bool {
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'rollups'::regclass)",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let native = partitioned(&mut client);
    // The old layout, in the layout this server gets, with a partition named as the old sink
    // named them (the new table's partition of that month takes the same name).
    client
        .batch_execute(&format!(
            "DROP TABLE rollups CASCADE;
             DELETE FROM migrations;
             CREATE TABLE rollups (
                generation integer NOT NULL, site_id text NOT NULL, granularity text NOT NULL,
                bucket timestamptz NOT NULL, bucket_end timestamptz NOT NULL, family text NOT NULL,
                dimension text NOT NULL DEFAULT '', dimension_value text NOT NULL DEFAULT '',
                metric text NOT NULL, value bigint NOT NULL, open_until timestamptz,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (site_id, generation, granularity, family, metric, dimension, dimension_value, bucket)
             ) {};
             {}",
            if native { "PARTITION BY RANGE (bucket)" } else { "" },
            if native {
                "CREATE TABLE rollups_y2025m01 PARTITION OF rollups FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')"
            } else {
                "SELECT create_hypertable('rollups', 'bucket')"
            },
        ))
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family,
                                  dimension, dimension_value, metric, value, open_until)
             VALUES (1, 's1', 'day', '2025-01-02', '2025-01-03', 'uniques', 'register', '17', 'hll', 3, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'uniques', 'register', '4000', 'hll', 1, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'traffic', '', '', 'visitors', 5, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'traffic', '', '', 'pageviews', 8, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404', 'pageviews', 9, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404', 'entries', 2, '2025-01-03'),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404' || chr(31) || '5', 'visitors_hll', 2, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '404' || chr(31) || '300', 'visitors_hll', 7, NULL),
                    (1, 's1', 'day', '2025-01-02', '2025-01-03', 'pages', 'page', '/a' || chr(31) || '5', 'visitors_hll', 1, NULL)",
        )
        .unwrap();
    setup.run(&["migrate"]);
    type Stored = (String, String, serde_json::Value, Option<Vec<(u16, u8)>>);
    let read = |client: &mut postgres::Client| -> Vec<Stored> {
        client
            .query(
                "SELECT family, dimension_value, metrics::text, sketch FROM rollups
                  ORDER BY family, dimension_value",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                let metrics: String = r.get(2);
                let sketch: Option<Vec<u8>> = r.get(3);
                // Old sketches were all of the dense precision, and stay so.
                let registers = sketch.map(|s| {
                    clickflow_dataflows::uniques::decode(&s)
                        .unwrap()
                        .into_iter()
                        .map(|(precision, i, r)| {
                            assert_eq!(precision, 12);
                            (i as u16, r)
                        })
                        .collect::<Vec<_>>()
                });
                (
                    r.get(0),
                    r.get(1),
                    serde_json::from_str(&metrics).unwrap(),
                    registers,
                )
            })
            .collect()
    };
    let rows = read(&mut client);
    let row = |f: &str, v: &str, metrics: serde_json::Value, registers: Option<Vec<(u16, u8)>>| {
        (f.to_owned(), v.to_owned(), metrics, registers)
    };
    assert_eq!(
        rows,
        vec![
            row("pages", "/a", json!({}), Some(vec![(5, 1)])),
            row(
                "pages",
                "404",
                json!({"pageviews": 9, "entries": 2}),
                Some(vec![(5, 2), (300, 7)])
            ),
            row(
                "traffic",
                "",
                json!({"visitors": 5, "pageviews": 8}),
                Some(vec![(17, 3), (4000, 1)])
            ),
        ]
    );
    assert_eq!(partitioned(&mut client), native, "the layout is kept");
    // Each conversion runs once: a later start finds nothing to convert and changes nothing.
    setup.run(&["migrate"]);
    assert_eq!(read(&mut client), rows);
}
