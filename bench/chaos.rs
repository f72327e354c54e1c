//! Issue 9's chaos run: a million events posted through the collector while twenty SIGKILLs
//! hit an engine process of a 2-process job, the collector/API, the broker and Postgres, at
//! random moments; the rollups must end equal to what the collector acknowledged.
//!
//!     bash scripts/test-env.sh start && source .testenv/env   # for the tansu binary
//!     cargo bench --bench chaos -- [events] [kills] [seed]
//!
//! Postgres and the broker are the run's own (they are killed too); see
//! `tests/chaos_harness/mod.rs` for what is measured.

#[path = "../tests/chaos_harness/mod.rs"]
mod chaos_harness;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let plan = chaos_harness::Plan {
        events: args.first().copied().unwrap_or(1_000_000) as usize,
        kills: args.get(1).copied().unwrap_or(20) as usize,
        seed: args.get(2).copied().unwrap_or(9),
        batch: 50,
        recover_within: Duration::from_secs(900),
        rate: 25_000,
        settle_within: Duration::from_secs(900),
    };
    println!(
        "chaos: {} events, {} kills, seed {}",
        plan.events, plan.kills, plan.seed
    );
    let report = chaos_harness::run(&plan);
    report.print();
    if report.lost != 0 || report.doubled != 0 || report.settled_after.is_none() {
        std::process::exit(1);
    }
}
