//! Starting the live engine: the one sequence `clickflow engine` (and through it `cluster`)
//! and `up` run, so a restart rehydrates the same way wherever it happens.

use std::sync::Arc;

use clickflow_operators::sink::SinkStatus;

use super::{plan_live, run, Outcome};
use crate::config::Config;
use crate::log;
use crate::store;
use crate::store::archive::ArchivedLog;
use crate::telemetry::{REHYDRATE_FROM, REHYDRATE_UNTIL};

/// Connects, reads the log through the archive, plans from the committed progress (where to
/// seek, until when to hold output) and runs the job until it ends.
pub fn start_live(config: &Config, timely: timely::Config) -> anyhow::Result<Outcome> {
    let mut client = store::connect(&config.database_url()?)?;
    let log = ArchivedLog::wrap(
        log::open(&config.log, log::Access::Read)?,
        &config.archive,
        &mut client,
    )?;
    let plan = plan_live(&mut client, log.as_ref(), config)?;
    tracing::info!(?plan.start, ?plan.hold_until, generation = plan.generation, "engine starting");
    for (p, from) in &plan.start {
        let label = [p.to_string()];
        REHYDRATE_FROM.with_label_values(&label).set(*from as i64);
        let until = plan.hold_until.get(p).copied().unwrap_or(*from);
        REHYDRATE_UNTIL.with_label_values(&label).set(until as i64);
    }
    run(config, timely, plan, log, Arc::new(SinkStatus::default()))
}
