//! The archiver job: reads every partition of the log from where the catalog says it is
//! archived, writes each partition's records into a Parquet file per UTC day, and commits each
//! finished file with the partition's new progress in one Postgres transaction.
//!
//! Crash safety: a file is written to the staging directory, uploaded under a name made of its
//! offset range, then committed. A crash before the commit leaves an object no catalog row
//! names; the next start deletes such objects (their first offset is at or past the
//! partition's progress) and archives the same records again.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use postgres::Client;

use super::format::FileWriter;
use super::{file_name, first_offset_of, partition_dir, Archive};
use crate::config::ArchiveConfig;
use crate::log::{Log, Record};
use crate::telemetry;

const DAY_MS: i64 = 86_400_000;
/// Held on the archiver's connection: two archivers would race for the same offsets.
const LOCK_KEY: &str = "clickflow-archiver";

/// What a run archived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Archived {
    pub files: u64,
    pub records: u64,
    pub bytes: u64,
}

struct OpenFile {
    writer: FileWriter,
    staging: PathBuf,
    first_offset: u64,
    day: i64,
    min_ts: i64,
    max_ts: i64,
    records: u64,
    opened: Instant,
}

pub struct Archiver {
    log: Arc<dyn Log>,
    archive: Archive,
    client: Client,
    config: ArchiveConfig,
    open: BTreeMap<u32, OpenFile>,
    /// The next offset to archive per partition: the end of the last record read.
    position: BTreeMap<u32, u64>,
    pub archived: Archived,
}

impl Archiver {
    /// Takes the archiver lock, loads progress and removes files an earlier run uploaded but
    /// never committed.
    pub fn start(
        log: Arc<dyn Log>,
        archive: Archive,
        mut client: Client,
        config: &ArchiveConfig,
    ) -> anyhow::Result<Archiver> {
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&LOCK_KEY],
            )?
            .get(0);
        if !locked {
            anyhow::bail!(
                "another archiver is running against this database; one archiver per log"
            );
        }
        let committed: BTreeMap<u32, u64> = client
            .query("SELECT partition, next_offset FROM archive_progress", &[])
            .context("reading archive progress (has `clickflow migrate` run?)")?
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
            .collect();
        let mut position = BTreeMap::new();
        for p in 0..log.partitions()? {
            let low = log.low_watermark(p)?;
            let from = match committed.get(&p) {
                Some(&next) if next >= low => next,
                Some(&next) => {
                    tracing::error!(partition = p, archived_to = next, log_starts_at = low,
                        "the log dropped records before they were archived; the archive has a gap here");
                    low
                }
                None => {
                    if low > 0 {
                        tracing::warn!(partition = p, log_starts_at = low,
                            "archiving starts where the log starts; earlier records are already gone");
                    }
                    low
                }
            };
            position.insert(p, from);
            for name in archive.list(&partition_dir(p))? {
                if first_offset_of(&name)
                    .is_some_and(|first| first >= committed.get(&p).copied().unwrap_or(0))
                {
                    tracing::info!(file = %name, "removing a file uploaded but never committed");
                    archive.delete(&name)?;
                }
            }
        }
        for entry in std::fs::read_dir(archive.staging_dir())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Archiver {
            log,
            archive,
            client,
            config: config.clone(),
            open: BTreeMap::new(),
            position,
            archived: Archived::default(),
        })
    }

    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.position
    }

    /// Archives until `stop` is set; with `once`, up to the log's end at the start, closing
    /// every file, then returns. `progress` hears the records archived so far.
    pub fn run(
        &mut self,
        once: bool,
        stop: &AtomicBool,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<()> {
        let end = if once {
            let mut end = BTreeMap::new();
            for &p in self.position.keys() {
                end.insert(p, self.log.high_watermark(p)?);
            }
            Some(end)
        } else {
            None
        };
        let start_positions = self.position.clone();
        let mut reader = self.log.reader(&start_positions, end)?;
        let mut last_check = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let records = reader.poll(10_000, Duration::from_millis(500))?;
            for record in &records {
                self.add(record)?;
            }
            for (p, next) in reader.positions() {
                self.position.insert(p, next);
            }
            let read: u64 = self
                .position
                .iter()
                .map(|(p, n)| n.saturating_sub(start_positions[p]))
                .sum();
            progress(read);
            if once && reader.finished() {
                let partitions: Vec<u32> = self.open.keys().copied().collect();
                for p in partitions {
                    self.close(p)?;
                }
                return Ok(());
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                let due: Vec<u32> = self
                    .open
                    .iter()
                    .filter(|(_, f)| {
                        f.opened.elapsed() >= Duration::from_secs(self.config.close_after_secs)
                    })
                    .map(|(p, _)| *p)
                    .collect();
                for p in due {
                    self.close(p)?;
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, record: &Record) -> anyhow::Result<()> {
        let p = record.partition;
        let day = record.timestamp.div_euclid(DAY_MS) * DAY_MS;
        if self.open.get(&p).is_some_and(|f| day > f.day) {
            self.close(p)?;
        }
        if !self.open.contains_key(&p) {
            let first_offset = self.position.get(&p).copied().unwrap_or(record.offset);
            let staging = self
                .archive
                .staging_dir()
                .join(format!("p{p:05}-{first_offset:020}.parquet.tmp"));
            let writer = FileWriter::create(
                File::create(&staging)
                    .with_context(|| format!("creating {}", staging.display()))?,
                p,
                self.config.row_group_records,
            )?;
            self.open.insert(
                p,
                OpenFile {
                    writer,
                    staging,
                    first_offset,
                    day,
                    min_ts: record.timestamp,
                    max_ts: record.timestamp,
                    records: 0,
                    opened: Instant::now(),
                },
            );
        }
        let file = self
            .open
            .get_mut(&p)
            .context("archive file vanished while open")?;
        file.writer.push(record)?;
        file.records += 1;
        file.min_ts = file.min_ts.min(record.timestamp);
        file.max_ts = file.max_ts.max(record.timestamp);
        self.position.insert(p, record.offset + 1);
        if file.records >= self.config.file_records {
            self.close(p)?;
        }
        Ok(())
    }

    /// Finishes partition `p`'s open file, uploads it and commits it with the progress.
    fn close(&mut self, p: u32) -> anyhow::Result<()> {
        let Some(file) = self.open.remove(&p) else {
            return Ok(());
        };
        let end = self.position[&p];
        file.writer.finish()?;
        let day = chrono::DateTime::from_timestamp_millis(file.day)
            .map(|d| d.date_naive())
            .context("file day out of range")?;
        let name = file_name(p, day, file.first_offset, end);
        let bytes = self.archive.upload(&file.staging, &name)?;
        let mut tx = self.client.transaction()?;
        let (first, end_i, partition) = (file.first_offset as i64, end as i64, p as i32);
        let moved = tx.execute(
            "UPDATE archive_progress SET next_offset = $3, updated_at = now()
              WHERE partition = $1 AND next_offset = $2",
            &[&partition, &first, &end_i],
        )? + tx.execute(
            "INSERT INTO archive_progress (partition, next_offset) SELECT $1, $2
              WHERE NOT EXISTS (SELECT 1 FROM archive_progress WHERE partition = $1)",
            &[&partition, &end_i],
        )?;
        if moved != 1 {
            anyhow::bail!("archive progress of partition {p} moved under this archiver (is another one running?)");
        }
        tx.execute(
            "INSERT INTO archive_files (partition, first_offset, end_offset, day, min_ts, max_ts, records, bytes, path)
             VALUES ($1, $2, $3, ($4::text)::date, $5, $6, $7, $8, $9)",
            &[
                &partition,
                &first,
                &end_i,
                &day.to_string(),
                &file.min_ts,
                &file.max_ts,
                &(file.records as i64),
                &(bytes as i64),
                &name,
            ],
        )?;
        tx.commit()?;
        let _ = std::fs::remove_file(&file.staging);
        self.archived.files += 1;
        self.archived.records += file.records;
        self.archived.bytes += bytes;
        telemetry::ARCHIVE_RECORDS.inc_by(file.records);
        telemetry::ARCHIVE_BYTES.inc_by(bytes);
        telemetry::ARCHIVE_OFFSET
            .with_label_values(&[&p.to_string()])
            .set(end as i64);
        tracing::info!(partition = p, first = file.first_offset, end, records = file.records, bytes, file = %name, "archived");
        Ok(())
    }
}
