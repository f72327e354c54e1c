//! The log as far back as the archive goes: a [`Log`] whose readers take each partition's
//! records from the archive while it covers them and from the log from the exact offset where
//! the archive ends. Offsets are the log's own, so the seam neither skips nor repeats one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::format::FileCursor;
use super::{Archive, ArchiveError, ArchivedFile, Catalog};
use crate::log::{Ack, Append, Log, LogError, LogReader, LogResult, Record};

/// A log extended backwards by its archive (a snapshot of the catalog taken when opened).
pub struct ArchivedLog {
    log: Arc<dyn Log>,
    archive: Archive,
    catalog: Arc<Catalog>,
}

fn archive_error(e: ArchiveError) -> LogError {
    match e {
        ArchiveError::Log(e) => e,
        other => LogError::Unavailable(other.to_string()),
    }
}

impl ArchivedLog {
    /// `log` extended by the archive the configuration names, or `log` itself when there is no
    /// archive or nothing archived yet.
    pub fn wrap(
        log: Arc<dyn Log>,
        config: &crate::config::ArchiveConfig,
        client: &mut postgres::Client,
    ) -> anyhow::Result<Arc<dyn Log>> {
        if config.url.trim().is_empty() {
            return Ok(log);
        }
        // The catalog first: a job that has nothing archived never touches the store.
        let catalog = Catalog::load(client)?;
        if catalog.is_empty() {
            return Ok(log);
        }
        let Some(archive) = Archive::open(config)? else {
            return Ok(log);
        };
        Ok(Arc::new(ArchivedLog {
            log,
            archive,
            catalog: Arc::new(catalog),
        }))
    }

    /// [`ArchivedLog::wrap`] where a failure to read the archive should not stop the caller:
    /// it is logged and the log alone is used.
    pub fn wrap_or_log(log: Arc<dyn Log>, config: &crate::config::Config) -> Arc<dyn Log> {
        let wrapped = crate::store::connect(&config.database.url)
            .and_then(|mut client| Self::wrap(log.clone(), &config.archive, &mut client));
        match wrapped {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "archive unavailable; reading the log alone");
                log
            }
        }
    }

    pub fn new(log: Arc<dyn Log>, archive: Archive, catalog: Catalog) -> ArchivedLog {
        ArchivedLog {
            log,
            archive,
            catalog: Arc::new(catalog),
        }
    }

    /// The archived offsets of `partition` that join the log without a gap.
    fn joined(&self, partition: u32) -> LogResult<Option<(u64, u64)>> {
        let low = self.log.low_watermark(partition)?;
        Ok(self
            .catalog
            .covered(partition)
            .filter(|(_, end)| *end >= low))
    }
}

#[async_trait]
impl Log for ArchivedLog {
    async fn append(&self, records: Vec<Append>) -> Vec<LogResult<Ack>> {
        self.log.append(records).await
    }

    fn partitions(&self) -> LogResult<u32> {
        self.log.partitions()
    }

    fn high_watermark(&self, partition: u32) -> LogResult<u64> {
        self.log.high_watermark(partition)
    }

    fn low_watermark(&self, partition: u32) -> LogResult<u64> {
        let low = self.log.low_watermark(partition)?;
        Ok(match self.joined(partition)? {
            Some((first, _)) => first.min(low),
            None => low,
        })
    }

    fn offset_for_time(&self, partition: u32, timestamp: i64) -> LogResult<u64> {
        if self.joined(partition)?.is_some() {
            // The first archived file that reaches `timestamp` holds the answer, if any does.
            if let Some(file) = self
                .catalog
                .contiguous(partition)
                .iter()
                .find(|f| f.max_ts >= timestamp)
            {
                let mut cursor = FileCursor::open(
                    self.archive.open_file(&file.path).map_err(archive_error)?,
                    partition,
                )
                .map_err(|e| archive_error(e.into()))?;
                while let Some(group) = cursor
                    .next_group(file.first_offset)
                    .map_err(|e| archive_error(e.into()))?
                {
                    if let Some(r) = group.iter().find(|r| r.timestamp >= timestamp) {
                        return Ok(r.offset);
                    }
                }
            }
        }
        self.log.offset_for_time(partition, timestamp)
    }

    fn reader(
        &self,
        start: &BTreeMap<u32, u64>,
        end: Option<BTreeMap<u32, u64>>,
    ) -> LogResult<Box<dyn LogReader>> {
        let mut archived = BTreeMap::new();
        let mut from_log = BTreeMap::new();
        for (&p, &offset) in start {
            let stop = end.as_ref().and_then(|e| e.get(&p).copied());
            let joined = self.joined(p)?;
            match joined {
                Some((first, seam))
                    if first <= offset && offset < seam && stop.is_none_or(|s| offset < s) =>
                {
                    let files: VecDeque<ArchivedFile> = self
                        .catalog
                        .contiguous(p)
                        .iter()
                        .filter(|f| f.end_offset > offset)
                        .cloned()
                        .collect();
                    archived.insert(
                        p,
                        ArchivePart {
                            files,
                            cursor: None,
                            waiting: VecDeque::new(),
                            next: offset,
                            until: stop.map_or(seam, |s| s.min(seam)),
                            seam,
                        },
                    );
                }
                _ => {
                    let low = self.log.low_watermark(p)?;
                    if offset < low && stop.is_none_or(|s| offset < s) {
                        let archived = match self.catalog.covered(p) {
                            Some((a, b)) => format!("the archive holds [{a}, {b})"),
                            None => "the archive holds none of it".into(),
                        };
                        return Err(LogError::Unavailable(format!(
                            "partition {p}: offset {offset} is gone from the log, which starts at {low}, and {archived}"
                        )));
                    }
                    from_log.insert(p, offset);
                }
            }
        }
        let log_reader = if from_log.is_empty() {
            None
        } else {
            Some(self.log.reader(&from_log, end.clone())?)
        };
        Ok(Box::new(SeamReader {
            log: self.log.clone(),
            archive: self.archive.clone(),
            archived,
            from_log,
            log_reader,
            end,
        }))
    }
}

/// One partition's remaining archived records.
struct ArchivePart {
    files: VecDeque<ArchivedFile>,
    /// The open file and the end of its offset range.
    cursor: Option<(FileCursor, u64)>,
    waiting: VecDeque<Record>,
    next: u64,
    /// Where this reader stops taking this partition from the archive.
    until: u64,
    /// Where the archive ends and the log takes over.
    seam: u64,
}

impl ArchivePart {
    fn fill(&mut self, archive: &Archive, partition: u32) -> LogResult<()> {
        while self.waiting.is_empty() && self.next < self.until {
            if self.cursor.is_none() {
                let Some(file) = self.files.pop_front() else {
                    return Err(LogError::Unavailable(format!(
                        "partition {partition}: the archive ends at {} before offset {}",
                        self.next, self.until
                    )));
                };
                let opened = archive.open_file(&file.path).map_err(archive_error)?;
                let cursor =
                    FileCursor::open(opened, partition).map_err(|e| archive_error(e.into()))?;
                self.cursor = Some((cursor, file.end_offset));
            }
            let Some((cursor, file_end)) = self.cursor.as_mut() else {
                continue;
            };
            match cursor
                .next_group(self.next)
                .map_err(|e| archive_error(e.into()))?
            {
                Some(records) => self
                    .waiting
                    .extend(records.into_iter().filter(|r| r.offset < self.until)),
                None => {
                    // The file's range may end past its last record (offsets Kafka skipped).
                    self.next = self.next.max(*file_end);
                    self.cursor = None;
                }
            }
        }
        Ok(())
    }
}

struct SeamReader {
    log: Arc<dyn Log>,
    archive: Archive,
    archived: BTreeMap<u32, ArchivePart>,
    /// Start offsets of the partitions read from the log (to rebuild its reader at a seam).
    from_log: BTreeMap<u32, u64>,
    log_reader: Option<Box<dyn LogReader>>,
    end: Option<BTreeMap<u32, u64>>,
}

impl SeamReader {
    fn read_archive(&mut self, max: usize, out: &mut Vec<Record>) -> LogResult<()> {
        let share = (max / self.archived.len().max(1)).max(1);
        let mut crossed = Vec::new();
        for (&p, part) in self.archived.iter_mut() {
            let mut taken = 0;
            while taken < share {
                part.fill(&self.archive, p)?;
                let Some(r) = part.waiting.pop_front() else {
                    break;
                };
                part.next = r.offset + 1;
                out.push(r);
                taken += 1;
            }
            if part.waiting.is_empty() && part.next >= part.until {
                // Offsets between the last archived record and the seam (if any) hold nothing.
                part.next = part.until;
                crossed.push(p);
            }
        }
        for p in crossed {
            if let Some(part) = self.archived.remove(&p) {
                let stop = self.end.as_ref().and_then(|e| e.get(&p).copied());
                if part.until == part.seam && stop.is_none_or(|s| s > part.seam) {
                    self.switch_to_log(p, part.seam)?;
                } else {
                    self.from_log.insert(p, part.until);
                }
            }
        }
        Ok(())
    }

    /// Moves partition `p` to the log at `offset`, keeping the other partitions' positions.
    fn switch_to_log(&mut self, p: u32, offset: u64) -> LogResult<()> {
        if let Some(reader) = &self.log_reader {
            self.from_log.extend(reader.positions());
        }
        self.from_log.insert(p, offset);
        self.log_reader = Some(self.log.reader(&self.from_log, self.end.clone())?);
        Ok(())
    }
}

impl LogReader for SeamReader {
    fn poll(&mut self, max: usize, timeout: Duration) -> LogResult<Vec<Record>> {
        let mut out = Vec::new();
        if !self.archived.is_empty() {
            // Records taken before an error have moved their positions: return them first.
            if let Err(e) = self.read_archive(max, &mut out) {
                if out.is_empty() {
                    return Err(e);
                }
                return Ok(out);
            }
        }
        let room = max.saturating_sub(out.len());
        if let Some(reader) = self.log_reader.as_mut() {
            if room > 0 {
                let wait = if out.is_empty() && self.archived.is_empty() {
                    timeout
                } else {
                    Duration::ZERO
                };
                match reader.poll(room, wait) {
                    Ok(records) => out.extend(records),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    fn positions(&self) -> BTreeMap<u32, u64> {
        let mut positions = self.from_log.clone();
        if let Some(reader) = &self.log_reader {
            positions.extend(reader.positions());
        }
        positions.extend(self.archived.iter().map(|(p, part)| (*p, part.next)));
        positions
    }

    fn caught_up(&self, partition: u32) -> bool {
        if self.archived.contains_key(&partition) {
            return false;
        }
        self.log_reader
            .as_ref()
            .is_none_or(|r| r.caught_up(partition))
    }

    fn finished(&self) -> bool {
        self.end.is_some()
            && self.archived.is_empty()
            && self.log_reader.as_ref().is_none_or(|r| r.finished())
    }
}
