//! Plausible's Events API and GA4's Measurement Protocol, end to end: the request shapes
//! their documentation and scripts send, through the collector, the log, the engine and
//! Postgres, to the query API; and every refusal with its reason.

mod common;

use common::*;
use serde_json::json;

/// A server's HTTP library: a bot on Clickflow's and Plausible's routes, as it should be,
/// but not on GA4's, whose sender is proven by its api_secret and speaks for its visitors.
const SERVER_UA: &str = "python-requests/2.31.0";

#[test]
fn plausible_and_ga4_requests_land_in_the_rollups() {
    let running = running_site("shop.test");
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    let event = setup.url("/api/event");

    // Plausible's documented Events API request.
    let (status, body) = post(
        &event,
        &json!({"name": "pageview", "url": "https://shop.test/a", "domain": "shop.test"}),
        None,
    );
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    // What Plausible's script sends: short keys, text/plain, www. on the domain, a null
    // referrer on a direct visit.
    let script = json!({"n": "pageview", "u": "https://www.shop.test/b", "d": "www.shop.test",
        "r": null, "w": 1280, "h": 0});
    let (status, body) = post_raw(&event, script.to_string().into_bytes(), "text/plain");
    assert_eq!(status, 202, "{body}");
    // A custom event with props and revenue, as the documentation shows them.
    let (status, body) = post(
        &event,
        &json!({"name": "Purchase", "url": "https://shop.test/checkout", "domain": "shop.test",
            "referrer": "https://news.example/story", "props": {"plan": "pro"},
            "revenue": {"amount": 20, "currency": "USD"}}),
        None,
    );
    assert_eq!(status, 202, "{body}");
    // Server-side, with the library's user agent and no visitor headers: a bot hit, said.
    let (status, body) = post_as(
        &event,
        &json!({"name": "pageview", "url": "https://shop.test/a", "domain": "shop.test"}),
        None,
        SERVER_UA,
    );
    assert_eq!((status, body["bots"].as_u64()), (202, Some(1)), "{body}");
    // Domains match whatever their case and www.: a site registered as "WWW.Blog.Test".
    let (blog, _) = setup.add_site("WWW.Blog.Test", "UTC");
    let (status, body) = post(
        &event,
        &json!({"name": "pageview", "url": "https://blog.test/", "domain": "blog.test"}),
        None,
    );
    assert_eq!(status, 202, "{body}");
    assert_ne!(blog, *site);
    // Refusals, each with its field and reason.
    let (status, body) = post(
        &event,
        &json!({"name": "pageview", "url": "https://x.test/", "domain": "nobody.test"}),
        None,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (404, Some("domain")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("nobody.test"));
    let (status, body) = post(
        &event,
        &json!({"url": "https://shop.test/", "domain": "shop.test"}),
        None,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    let (status, body) = post(
        &event,
        &json!({"name": "pageview", "domain": "shop.test"}),
        None,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("url")),
        "{body}"
    );
    let (status, body) = post(
        &event,
        &json!({"name": "x", "url": "https://shop.test/", "domain": "shop.test", "props": "[1]"}),
        None,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("props")),
        "{body}"
    );

    // GA4's Measurement Protocol, sent by a server.
    let mp = |secret: &str| {
        setup.url(&format!(
            "/mp/collect?measurement_id={site}&api_secret={secret}"
        ))
    };
    let first = json!({"client_id": "555.777", "events": [
        {"name": "page_view", "params": {"page_location": "https://shop.test/ga",
            "page_referrer": "https://www.google.com/", "engagement_time_msec": 1200}},
        {"name": "purchase", "params": {"transaction_id": "T-1", "value": 30, "currency": "EUR",
            "items": [{"item_id": "sku-1", "price": 30}]}},
        {"name": "purchase", "params": {"transaction_id": "T-2", "value": 10.5, "currency": "EUR"}},
        {"name": "purchase", "params": {"transaction_id": "T-3", "value": 5}},
        {"params": {"x": 1}}
    ]});
    let (status, body) = post_as(&mp(key), &first, None, SERVER_UA);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["bots"], 0, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{body}");
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[0]["field"].as_str()),
        (Some(3), Some("currency"))
    );
    assert_eq!(
        (rejected[1]["index"].as_u64(), rejected[1]["field"].as_str()),
        (Some(4), Some("name"))
    );
    // A resent purchase counts once; a refund takes T-2 back.
    let again = json!({"client_id": "555.777", "events": [
        {"name": "purchase", "params": {"transaction_id": "T-1", "value": 30, "currency": "EUR"}},
        {"name": "refund", "params": {"transaction_id": "T-2"}}
    ]});
    let (status, body) = post_as(&mp(key), &again, None, SERVER_UA);
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(2)),
        "{body}"
    );
    // Refusals of the whole request.
    let (status, body) = post_as(&mp("wrong"), &again, None, SERVER_UA);
    assert_eq!(
        (status, body["field"].as_str()),
        (403, Some("api_secret")),
        "{body}"
    );
    let (status, body) = post_as(
        &setup.url(&format!("/mp/collect?measurement_id={site}")),
        &again,
        None,
        SERVER_UA,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (401, Some("api_secret")),
        "{body}"
    );
    let (status, body) = post_as(
        &setup.url(&format!(
            "/mp/collect?measurement_id=cf_nobody&api_secret={key}"
        )),
        &again,
        None,
        SERVER_UA,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (404, Some("measurement_id")),
        "{body}"
    );
    let (status, body) = post_as(
        &mp(key),
        &json!({"events": [{"name": "x"}]}),
        None,
        SERVER_UA,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("client_id")),
        "{body}"
    );

    // Plausible: two visits of one browser (same address and user agent), a purchase in USD;
    // GA4: one client with a pageview and purchases T-1 (sent twice) and T-2 (refunded).
    let want: Vec<Want> = vec![
        ("pageviews", &[], expect(&[("", "3")])),
        ("visitors", &[], expect(&[("", "2")])),
        ("bot_events", &[], expect(&[("", "1")])),
        (
            "pageviews",
            &["page"],
            expect(&[("/a", "1"), ("/b", "1"), ("/ga", "1")]),
        ),
        (
            "total_revenue",
            &["goal", "currency"],
            expect(&[("Purchase USD", "20"), ("purchase EUR", "30")]),
        ),
        (
            "conversions",
            &["goal", "prop:plan"],
            expect(&[("Purchase pro", "1")]),
        ),
        (
            "visits",
            &["source"],
            expect(&[("Direct / None", "1"), ("Google", "1")]),
        ),
    ];
    await_rollups(setup, site, key, &want);
}
