//! The archive: every logged record, kept after the log's retention has dropped it, as
//! compressed Parquet files per partition and UTC day in a directory or object store.
//!
//! The catalog of files lives in Postgres (`archive_files`, `archive_progress`): a file counts
//! once its row is committed, and the row and the partition's progress move in one
//! transaction, so every offset is archived exactly once however often the archiver dies.
//! [`ArchivedLog`] reads the archive where it covers the requested offsets and the log from the
//! exact offset where the archive ends.

pub mod archiver;
pub mod cli;
pub mod format;
mod read;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};

pub use read::ArchivedLog;

use crate::config::ArchiveConfig;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error("archive catalog: {0}")]
    Catalog(#[from] postgres::Error),
    #[error("archive i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("{0}")]
    Invalid(String),
}

pub type ArchiveResult<T> = Result<T, ArchiveError>;

/// object_store is async; the archive is used from timely workers, blocking tasks and plain
/// threads alike, so its calls run on one runtime of their own that lives as long as the
/// process (a runtime must not be dropped or entered from inside another).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clickflow-archive-io")
            .enable_all()
            .build()
            .expect("building the archive's i/o runtime")
    })
}

fn block_on<T: Send + 'static>(
    future: impl std::future::Future<Output = ArchiveResult<T>> + Send + 'static,
) -> ArchiveResult<T> {
    futures::executor::block_on(runtime().spawn(future))
        .map_err(|e| ArchiveError::Invalid(format!("archive i/o task: {e}")))?
}

/// Where archive files are stored.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    location: String,
    staging: PathBuf,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", self.location)
    }
}

impl Archive {
    /// The archive the configuration names; `None` when `archive.url` is empty.
    pub fn open(config: &ArchiveConfig) -> ArchiveResult<Option<Archive>> {
        let url = config.url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if url.contains("://") {
            let parsed = url::Url::parse(url)
                .map_err(|e| ArchiveError::Invalid(format!("archive.url {url:?}: {e}")))?;
            if parsed.scheme() == "file" {
                let dir = parsed.to_file_path().map_err(|_| {
                    ArchiveError::Invalid(format!("archive.url {url:?} is not a local path"))
                })?;
                (local_store(&dir)?, ObjectPath::default())
            } else if matches!(parsed.scheme(), "s3" | "s3a") {
                (
                    s3_store(url, &config.options)?,
                    ObjectPath::from_url_path(parsed.path())
                        .map_err(|e| ArchiveError::Invalid(format!("archive.url {url:?}: {e}")))?,
                )
            } else {
                return Err(ArchiveError::Invalid(format!(
                    "archive.url {url:?}: the archive goes into a directory, a file:// URL or an s3:// bucket"
                )));
            }
        } else {
            (local_store(Path::new(url))?, ObjectPath::default())
        };
        std::fs::create_dir_all(&config.staging_dir).map_err(|e| {
            ArchiveError::Invalid(format!(
                "archive.staging_dir {}: {e}",
                config.staging_dir.display()
            ))
        })?;
        Ok(Some(Archive {
            store,
            prefix,
            location: url.to_owned(),
            staging: config.staging_dir.clone(),
        }))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn object(&self, name: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in name.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Uploads a finished local file as `name`, streaming it in parts.
    pub fn upload(&self, local: &Path, name: &str) -> ArchiveResult<u64> {
        let (store, object, local) = (self.store.clone(), self.object(name), local.to_owned());
        block_on(async move {
            let upload = store.put_multipart(&object).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            let mut file = File::open(&local)?;
            let mut chunk = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = file.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(&chunk[..n]);
                total += n as u64;
            }
            writer.finish().await?;
            Ok(total)
        })
    }

    /// Opens the file `name` for reading: the file itself in a directory archive, a local
    /// copy (deleted when closed) from an object store.
    pub fn open_file(&self, name: &str) -> ArchiveResult<File> {
        let (store, object, staging) =
            (self.store.clone(), self.object(name), self.staging.clone());
        block_on(async move {
            let got = store.get(&object).await?;
            match got.payload {
                GetResultPayload::File(file, _) => Ok(file),
                GetResultPayload::Stream(mut stream) => {
                    let mut copy = tempfile::tempfile_in(&staging)?;
                    while let Some(bytes) = stream.next().await {
                        copy.write_all(&bytes?)?;
                    }
                    Ok(copy)
                }
            }
        })
    }

    pub fn delete(&self, name: &str) -> ArchiveResult<()> {
        let (store, object) = (self.store.clone(), self.object(name));
        block_on(async move {
            match store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Names (relative to the archive) of every file under `dir`.
    pub fn list(&self, dir: &str) -> ArchiveResult<Vec<String>> {
        let (store, object, prefix) = (self.store.clone(), self.object(dir), self.prefix.clone());
        block_on(async move {
            let mut names = Vec::new();
            let mut listing = store.list(Some(&object));
            while let Some(meta) = listing.next().await {
                let location = match meta {
                    Ok(meta) => meta.location,
                    // Nothing was ever written under `dir`.
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(e) => return Err(e.into()),
                };
                let name = match location.prefix_match(&prefix) {
                    Some(parts) => parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>(),
                    None => continue,
                };
                names.push(name.join("/"));
            }
            Ok(names)
        })
    }
}

/// An S3-compatible bucket: credentials, region and endpoint from the usual `AWS_*`
/// variables, overridden by `archive.options` (object_store's keys: `endpoint`,
/// `allow_http`, `access_key_id`, `region`, ...).
fn s3_store(url: &str, options: &BTreeMap<String, String>) -> ArchiveResult<Arc<dyn ObjectStore>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::from_env().with_url(url);
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
            ArchiveError::Invalid(format!("archive.options: {key:?} is not an S3 option"))
        })?;
        builder = builder.with_config(key, value);
    }
    Ok(Arc::new(builder.build()?))
}

fn local_store(dir: &Path) -> ArchiveResult<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ArchiveError::Invalid(format!("archive directory {}: {e}", dir.display())))?;
    Ok(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true),
    ))
}

/// One committed archive file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    pub partition: u32,
    pub first_offset: u64,
    pub end_offset: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub records: u64,
    pub bytes: u64,
    pub path: String,
}

/// The file name of partition `partition`'s records `[first, end)` of UTC day `day`.
pub fn file_name(partition: u32, day: chrono::NaiveDate, first: u64, end: u64) -> String {
    format!(
        "{}/date={day}/{first:020}-{end:020}.parquet",
        partition_dir(partition)
    )
}

pub fn partition_dir(partition: u32) -> String {
    format!("partition={partition:05}")
}

/// The first offset a file name says it holds.
pub fn first_offset_of(name: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?;
    file.strip_suffix(".parquet")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The committed files, by partition in offset order.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    files: BTreeMap<u32, Vec<ArchivedFile>>,
}

impl Catalog {
    pub fn load(client: &mut impl postgres::GenericClient) -> ArchiveResult<Catalog> {
        let mut files: BTreeMap<u32, Vec<ArchivedFile>> = BTreeMap::new();
        // A database not migrated since the archive arrived has archived nothing.
        let exists: bool = client
            .query_one("SELECT to_regclass('archive_files') IS NOT NULL", &[])?
            .get(0);
        if !exists {
            return Ok(Catalog { files });
        }
        for row in client.query(
            "SELECT partition, first_offset, end_offset, min_ts, max_ts, records, bytes, path
               FROM archive_files ORDER BY partition, first_offset",
            &[],
        )? {
            let file = ArchivedFile {
                partition: row.get::<_, i32>(0) as u32,
                first_offset: row.get::<_, i64>(1) as u64,
                end_offset: row.get::<_, i64>(2) as u64,
                min_ts: row.get(3),
                max_ts: row.get(4),
                records: row.get::<_, i64>(5) as u64,
                bytes: row.get::<_, i64>(6) as u64,
                path: row.get(7),
            };
            files.entry(file.partition).or_default().push(file);
        }
        Ok(Catalog { files })
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files of `partition` that hold offsets without a gap up to the newest one: an older
    /// run cut off by a gap (records the log dropped before they were archived) cannot be
    /// joined to the log, so it is not part of what the archive offers.
    pub fn contiguous(&self, partition: u32) -> &[ArchivedFile] {
        let Some(files) = self.files.get(&partition) else {
            return &[];
        };
        let mut first = files.len();
        while first > 0
            && (first == files.len() || files[first - 1].end_offset == files[first].first_offset)
        {
            first -= 1;
        }
        &files[first..]
    }

    /// The offsets `[first, end)` of `partition` the archive holds without a gap.
    pub fn covered(&self, partition: u32) -> Option<(u64, u64)> {
        let files = self.contiguous(partition);
        Some((files.first()?.first_offset, files.last()?.end_offset))
    }

    pub fn all(&self) -> impl Iterator<Item = &ArchivedFile> {
        self.files.values().flatten()
    }
}

/// How far the archive has committed each partition (the next offset it will write): what
/// the log may drop.
pub async fn archived_until(client: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<u32, u64>> {
    let rows = client
        .query("SELECT partition, next_offset FROM archive_progress", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
        .collect())
}
