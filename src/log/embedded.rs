//! The embedded log: one data file and one index file per partition in a directory.
//!
//! Data frames are `[len u32][crc32 u32][offset u64][timestamp i64][key_len u16][key][value]`
//! (little endian; `len` counts from `offset` on, the CRC covers the same bytes). The index
//! holds one 24-byte entry `[offset u64][timestamp i64][position u64]` per record and is
//! written after the data is synced, so a record exists once its index entry does. Readers
//! (in this or another process) trust only the index; a writer that opens a log truncates a
//! torn tail. Timestamps are log-append time, clamped to never decrease per partition, so
//! seek-by-time is a binary search over the index.
//!
//! Retention drops the oldest records the way Kafka's `DeleteRecords` does: offsets stay, a
//! `.start` file per partition says where the log now begins (written first, atomically), and
//! the bytes before it are punched out of both files, so the disk space comes back without
//! rewriting the files under their readers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{partition_for, Ack, Append, Log, LogError, LogReader, LogResult, Record};

const INDEX_ENTRY: u64 = 24;
const HEADER: usize = 8;
const META: &str = "partitions";
const LOCK: &str = "writer.lock";

struct PartitionWriter {
    data: File,
    index: File,
    next_offset: u64,
    data_len: u64,
    last_timestamp: i64,
}

#[derive(Clone)]
pub struct EmbeddedLog {
    dir: PathBuf,
    partitions: u32,
    fsync: bool,
    /// Empty for a read-only handle.
    writers: Vec<Arc<Mutex<PartitionWriter>>>,
    /// Held for the life of a writable handle: writers cache the next offset, so a second
    /// writer (in any process) would overwrite records.
    _lock: Option<Arc<File>>,
}

impl EmbeddedLog {
    /// Opens (creating if needed) a log with `partitions` partitions under `dir` for writing.
    /// An existing log keeps the partition count it was created with. Only one writable handle
    /// may exist at a time, across processes.
    pub fn open(dir: &Path, partitions: u32, fsync: bool) -> LogResult<EmbeddedLog> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join(LOCK))?;
        if let Err(e) = lock.try_lock() {
            return Err(LogError::Unavailable(format!(
                "the embedded log at {} is already open for writing ({e}); one collector per log directory",
                dir.display()
            )));
        }
        let meta = dir.join(META);
        let partitions = match std::fs::read_to_string(&meta) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| LogError::Corrupt(format!("bad {}", meta.display())))?,
            Err(_) => {
                std::fs::write(&meta, partitions.max(1).to_string())?;
                partitions.max(1)
            }
        };
        let mut writers = Vec::new();
        for p in 0..partitions {
            writers.push(Arc::new(Mutex::new(open_partition(dir, p)?)));
        }
        Ok(EmbeddedLog {
            dir: dir.to_owned(),
            partitions,
            fsync,
            writers,
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens an existing log for reading only (the engine, replays), beside its writer.
    pub fn open_read_only(dir: &Path) -> LogResult<EmbeddedLog> {
        let meta = dir.join(META);
        let text = std::fs::read_to_string(&meta).map_err(|_| {
            LogError::Unavailable(format!(
                "no embedded log at {} yet: start the collector first",
                dir.display()
            ))
        })?;
        let partitions = text
            .trim()
            .parse()
            .map_err(|_| LogError::Corrupt(format!("bad {}", meta.display())))?;
        Ok(EmbeddedLog {
            dir: dir.to_owned(),
            partitions,
            fsync: false,
            writers: Vec::new(),
            _lock: None,
        })
    }

    fn delete_records_blocking(&self, partition: u32, before: u64) -> LogResult<u64> {
        self.check(partition)?;
        let writer = self.writers.get(partition as usize).ok_or_else(|| {
            LogError::Unavailable(format!("{} is open read-only", self.dir.display()))
        })?;
        let w = writer.lock();
        let low = read_low_watermark(&self.dir, partition)?;
        let before = before.min(w.next_offset);
        if before <= low {
            return Ok(low);
        }
        // Readers check the start before trusting bytes, so it moves before the bytes go.
        let tmp = self.dir.join(format!("{partition:05}.start.tmp"));
        std::fs::write(&tmp, before.to_string())?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, start_path(&self.dir, partition))?;
        File::open(&self.dir)?.sync_all()?;
        let index = IndexFile::open(&self.dir, partition)?;
        let data_end = if before < w.next_offset {
            index.entry(before)?.2
        } else {
            w.data_len
        };
        let writable = |path: PathBuf| OpenOptions::new().write(true).open(path);
        punch_hole(&writable(data_path(&self.dir, partition))?, data_end)?;
        punch_hole(
            &writable(index_path(&self.dir, partition))?,
            before * INDEX_ENTRY,
        )?;
        Ok(before)
    }

    fn append_blocking(&self, records: Vec<Append>) -> Vec<LogResult<Ack>> {
        if self.writers.is_empty() {
            let read_only = || {
                Err(LogError::Unavailable(format!(
                    "{} is open read-only",
                    self.dir.display()
                )))
            };
            return records.iter().map(|_| read_only()).collect();
        }
        let mut by_partition: BTreeMap<u32, Vec<(usize, Append)>> = BTreeMap::new();
        let n = records.len();
        for (i, r) in records.into_iter().enumerate() {
            by_partition
                .entry(partition_for(&r.key, self.partitions))
                .or_default()
                .push((i, r));
        }
        let mut results: Vec<Option<LogResult<Ack>>> = (0..n).map(|_| None).collect();
        for (p, batch) in by_partition {
            let mut w = self.writers[p as usize].lock();
            match write_batch(&mut w, &batch, self.fsync) {
                Ok(first) => {
                    for (k, (i, _)) in batch.iter().enumerate() {
                        results[*i] = Some(Ok((p, first + k as u64)));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (i, _) in &batch {
                        results[*i] = Some(Err(LogError::Unavailable(msg.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LogError::Unavailable("lost".into()))))
            .collect()
    }
}

fn data_path(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("{p:05}.log"))
}

fn index_path(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("{p:05}.idx"))
}

fn start_path(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("{p:05}.start"))
}

/// The first offset partition `p` still holds.
fn read_low_watermark(dir: &Path, p: u32) -> LogResult<u64> {
    match std::fs::read_to_string(start_path(dir, p)) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| LogError::Corrupt(format!("bad {}", start_path(dir, p).display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Frees the disk blocks of `file` below `len` while its size and later bytes stay.
fn punch_hole(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate reads only its integer arguments and the descriptor, which `file`
    // keeps open for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn open_partition(dir: &Path, p: u32) -> LogResult<PartitionWriter> {
    let open = |path: PathBuf| {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
    };
    let data = open(data_path(dir, p))?;
    let index = open(index_path(dir, p))?;
    let entries = index.metadata()?.len() / INDEX_ENTRY;
    // Drop a torn index entry, then any data past the last indexed record.
    index.set_len(entries * INDEX_ENTRY)?;
    let (next_offset, data_len, last_timestamp) = if entries == 0 {
        (0, 0, i64::MIN)
    } else {
        let mut buf = [0u8; INDEX_ENTRY as usize];
        index.read_exact_at(&mut buf, (entries - 1) * INDEX_ENTRY)?;
        let (offset, ts, pos) = decode_index(&buf);
        let mut len = [0u8; 4];
        data.read_exact_at(&mut len, pos)?;
        (offset + 1, pos + 8 + u32::from_le_bytes(len) as u64, ts)
    };
    data.set_len(data_len)?;
    Ok(PartitionWriter {
        data,
        index,
        next_offset,
        data_len,
        last_timestamp,
    })
}

fn write_batch(
    w: &mut PartitionWriter,
    batch: &[(usize, Append)],
    fsync: bool,
) -> std::io::Result<u64> {
    let first = w.next_offset;
    let mut data = Vec::new();
    let mut index = Vec::with_capacity(batch.len() * INDEX_ENTRY as usize);
    let mut offset = first;
    let mut ts = w.last_timestamp;
    for (_, r) in batch {
        ts = ts.max(r.timestamp);
        let key = r.key.as_bytes();
        let key_len = u16::try_from(key.len())
            .map_err(|_| std::io::Error::other("key longer than 64 KiB"))?;
        let pos = w.data_len + data.len() as u64;
        let mut body = Vec::with_capacity(18 + key.len() + r.value.len());
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&ts.to_le_bytes());
        body.extend_from_slice(&key_len.to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(&r.value);
        data.extend_from_slice(&(body.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        data.extend_from_slice(&body);
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&ts.to_le_bytes());
        index.extend_from_slice(&pos.to_le_bytes());
        offset += 1;
    }
    let rollback = |w: &mut PartitionWriter| {
        let _ = w.data.set_len(w.data_len);
        let _ = w.index.set_len(w.next_offset * INDEX_ENTRY);
    };
    let result = (|| {
        w.data.write_all(&data)?;
        if fsync {
            w.data.sync_data()?;
        }
        w.index.write_all(&index)?;
        if fsync {
            w.index.sync_data()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        rollback(w);
        return Err(e);
    }
    w.data_len += data.len() as u64;
    w.next_offset = offset;
    w.last_timestamp = ts;
    Ok(first)
}

fn decode_index(buf: &[u8]) -> (u64, i64, u64) {
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(buf[r].try_into().unwrap_or([0; 8]));
    (u(0..8), u(8..16) as i64, u(16..24))
}

/// Reads index entries of one partition straight from disk, so any process can read.
struct IndexFile {
    file: File,
}

impl IndexFile {
    fn open(dir: &Path, p: u32) -> LogResult<IndexFile> {
        Ok(IndexFile {
            file: File::open(index_path(dir, p))?,
        })
    }
    fn len(&self) -> LogResult<u64> {
        Ok(self.file.metadata()?.len() / INDEX_ENTRY)
    }
    fn entry(&self, offset: u64) -> LogResult<(u64, i64, u64)> {
        let mut buf = [0u8; INDEX_ENTRY as usize];
        self.file.read_exact_at(&mut buf, offset * INDEX_ENTRY)?;
        Ok(decode_index(&buf))
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn append(&self, records: Vec<Append>) -> Vec<LogResult<Ack>> {
        let log = self.clone();
        let n = records.len();
        match tokio::task::spawn_blocking(move || log.append_blocking(records)).await {
            Ok(results) => results,
            Err(e) => (0..n)
                .map(|_| Err(LogError::Unavailable(e.to_string())))
                .collect(),
        }
    }

    fn partitions(&self) -> LogResult<u32> {
        Ok(self.partitions)
    }

    fn high_watermark(&self, partition: u32) -> LogResult<u64> {
        self.check(partition)?;
        IndexFile::open(&self.dir, partition)?.len()
    }

    fn low_watermark(&self, partition: u32) -> LogResult<u64> {
        self.check(partition)?;
        read_low_watermark(&self.dir, partition)
    }

    fn delete_records(&self, partition: u32, before: u64) -> LogResult<u64> {
        self.delete_records_blocking(partition, before)
    }

    fn offset_for_time(&self, partition: u32, timestamp: i64) -> LogResult<u64> {
        self.check(partition)?;
        let index = IndexFile::open(&self.dir, partition)?;
        let (mut lo, mut hi) = (read_low_watermark(&self.dir, partition)?, index.len()?);
        lo = lo.min(hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if index.entry(mid)?.1 < timestamp {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    fn reader(
        &self,
        start: &BTreeMap<u32, u64>,
        end: Option<BTreeMap<u32, u64>>,
    ) -> LogResult<Box<dyn LogReader>> {
        let mut parts = BTreeMap::new();
        for (&p, &offset) in start {
            self.check(p)?;
            let low = read_low_watermark(&self.dir, p)?;
            let stops_before = end
                .as_ref()
                .and_then(|e| e.get(&p))
                .is_some_and(|e| *e <= offset);
            if offset < low && !stops_before {
                return Err(LogError::Trimmed {
                    partition: p,
                    offset,
                    low,
                });
            }
            let data = File::open(data_path(&self.dir, p))?;
            parts.insert(
                p,
                PartitionCursor {
                    index: IndexFile::open(&self.dir, p)?,
                    data,
                    next: offset,
                    caught_up: false,
                },
            );
        }
        Ok(Box::new(EmbeddedReader {
            dir: self.dir.clone(),
            parts,
            end,
        }))
    }
}

impl EmbeddedLog {
    fn check(&self, partition: u32) -> LogResult<()> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(LogError::NoPartition(partition))
        }
    }
}

struct PartitionCursor {
    index: IndexFile,
    data: File,
    next: u64,
    caught_up: bool,
}

struct EmbeddedReader {
    dir: PathBuf,
    parts: BTreeMap<u32, PartitionCursor>,
    end: Option<BTreeMap<u32, u64>>,
}

impl EmbeddedReader {
    fn limit(&self, p: u32) -> u64 {
        self.end
            .as_ref()
            .and_then(|e| e.get(&p).copied())
            .unwrap_or(u64::MAX)
    }

    fn read_some(&mut self, max: usize, out: &mut Vec<Record>) -> LogResult<()> {
        let per_partition = (max / self.parts.len().max(1)).max(1);
        let limits: BTreeMap<u32, u64> = self.parts.keys().map(|p| (*p, self.limit(*p))).collect();
        for (&p, cursor) in self.parts.iter_mut() {
            let available = cursor.index.len()?.min(limits[&p]);
            let until = available.min(cursor.next + per_partition as u64);
            if cursor.next < until {
                let (_, _, first_pos) = cursor.index.entry(cursor.next)?;
                let (_, _, last_pos) = cursor.index.entry(until - 1)?;
                let mut len = [0u8; 4];
                cursor.data.read_exact_at(&mut len, last_pos)?;
                let end_pos = last_pos + 8 + u32::from_le_bytes(len) as u64;
                let Some(span) = end_pos.checked_sub(first_pos) else {
                    return Err(trimmed_or(&self.dir, p, cursor.next, "index out of order"));
                };
                let mut buf = vec![0u8; span as usize];
                cursor.data.seek(SeekFrom::Start(first_pos))?;
                cursor.data.read_exact(&mut buf)?;
                let mut at = 0usize;
                while at < buf.len() {
                    // Bytes retention punched out read as zeros: say so rather than "corrupt".
                    let (record, used) = decode_frame(&buf[at..], p)
                        .map_err(|e| trimmed_or(&self.dir, p, cursor.next, &e.to_string()))?;
                    if record.offset != cursor.next {
                        return Err(LogError::Corrupt(format!(
                            "partition {p}: expected offset {} got {}",
                            cursor.next, record.offset
                        )));
                    }
                    cursor.next += 1;
                    out.push(record);
                    at += used;
                }
            }
            cursor.caught_up = cursor.next >= available;
        }
        Ok(())
    }
}

/// The error for an unreadable record at `offset`: [`LogError::Trimmed`] when retention
/// dropped it, else corruption.
fn trimmed_or(dir: &Path, partition: u32, offset: u64, what: &str) -> LogError {
    match read_low_watermark(dir, partition) {
        Ok(low) if offset < low => LogError::Trimmed {
            partition,
            offset,
            low,
        },
        _ => LogError::Corrupt(format!("partition {partition} offset {offset}: {what}")),
    }
}

fn decode_frame(buf: &[u8], partition: u32) -> LogResult<(Record, usize)> {
    let corrupt = |what: &str| LogError::Corrupt(format!("partition {partition}: {what}"));
    if buf.len() < HEADER {
        return Err(corrupt("truncated frame"));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().map_err(|_| corrupt("length"))?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().map_err(|_| corrupt("crc"))?);
    let body = buf
        .get(HEADER..HEADER + len)
        .ok_or_else(|| corrupt("truncated body"))?;
    if crc32fast::hash(body) != crc || body.len() < 18 {
        return Err(corrupt("checksum mismatch"));
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().map_err(|_| corrupt("offset"))?);
    let timestamp = i64::from_le_bytes(body[8..16].try_into().map_err(|_| corrupt("timestamp"))?);
    let key_len =
        u16::from_le_bytes(body[16..18].try_into().map_err(|_| corrupt("key length"))?) as usize;
    let key = body
        .get(18..18 + key_len)
        .ok_or_else(|| corrupt("key"))?
        .to_vec();
    let value = body[18 + key_len..].to_vec();
    Ok((
        Record {
            partition,
            offset,
            timestamp,
            key,
            value,
        },
        HEADER + len,
    ))
}

impl LogReader for EmbeddedReader {
    fn poll(&mut self, max: usize, timeout: Duration) -> LogResult<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            // Records read before an error have moved their cursors: return them; the error
            // comes back on the next poll.
            if let Err(e) = self.read_some(max, &mut out) {
                if out.is_empty() {
                    return Err(e);
                }
                return Ok(out);
            }
            if !out.is_empty() || self.finished() || Instant::now() >= deadline {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(5).min(timeout));
        }
    }

    fn positions(&self) -> BTreeMap<u32, u64> {
        self.parts.iter().map(|(p, c)| (*p, c.next)).collect()
    }

    fn caught_up(&self, partition: u32) -> bool {
        self.parts
            .get(&partition)
            .is_none_or(|c| c.caught_up || c.next >= self.limit(partition))
    }

    fn finished(&self) -> bool {
        self.end.is_some() && self.parts.iter().all(|(p, c)| c.next >= self.limit(*p))
    }
}
