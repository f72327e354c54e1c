//! A smoke run of the fuzz targets in the suite (`bench/fuzz.rs` runs them by the million):
//! generated inputs through the collector's HTTP routes, enrichment and the query parser; no
//! panic, and every ingest reply a 2xx or a 4xx that says why.

#[path = "../bench/fuzzing.rs"]
mod fuzzing;

#[test]
fn generated_inputs_never_panic_and_always_get_a_clear_answer() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FUZZ_SEED={seed}");
    let enriched = fuzzing::enrich(200_000, seed);
    assert!(enriched["enriched"] > 100_000, "{enriched:?}");
    let queries = fuzzing::query_target(200_000, seed);
    assert!(queries["planned"] > 1_000, "{queries:?}");
    assert!(queries["refused by parse"] > 1_000, "{queries:?}");
    let replies = fuzzing::ingest(20_000, seed).expect("ingest fuzzing");
    assert!(
        replies.get("202").copied().unwrap_or(0) > 1_000,
        "{replies:?}"
    );
    assert!(
        replies.get("400").copied().unwrap_or(0) > 1_000,
        "{replies:?}"
    );
}
