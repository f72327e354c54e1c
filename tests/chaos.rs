//! Faults on purpose, in the suite: a smaller copy of `bench/chaos.rs` (issue 9). Every part
//! is killed at a random moment while clients post through the collector; at the end the
//! rollups equal what the collector acknowledged. `CHAOS_SEED` repeats a run.

mod chaos_harness;
mod common;

use std::time::Duration;

#[test]
fn killing_each_part_at_random_loses_nothing_and_counts_nothing_twice() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u16>) as u64;
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} repeats this run)");
    let plan = chaos_harness::Plan {
        events: 20_000,
        kills: 6,
        seed,
        batch: 50,
        recover_within: Duration::from_secs(180),
        rate: 500,
        settle_within: Duration::from_secs(180),
    };
    let report = chaos_harness::run(&plan);
    report.print();
    assert_eq!(
        report.acknowledged, plan.events,
        "every batch acknowledged in the end"
    );
    for kill in &report.kills {
        assert!(
            kill.ingest_back.is_some() && kill.recovered.is_some(),
            "recovered from every kill: {kill:?}"
        );
    }
    assert_eq!(report.kills.len(), plan.kills);
    assert!(
        report.settled_after.is_some(),
        "rollups settle on the oracle"
    );
    assert_eq!(
        (report.lost, report.doubled),
        (0, 0),
        "0 lost, 0 counted twice"
    );
}
