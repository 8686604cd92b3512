//! The audit trail: events for every session and statement, and the
//! archive they are kept in.
//!
//! [`Audit`] ([`trail`]) takes the events of the frontend and the relay
//! and turns them into log lines (without statement text, parameters or row
//! values) and archive records; [`note`] decides what of a statement's text
//! may be kept. [`Archive`] is the durable archive: sessions
//! submit [`Entry`]s through an [`AuditHandle`], and they are appended to a
//! local spool ([`spool`]) by the session itself or by a writer thread, as
//! the fsync policy says; closed spool segments are compacted into
//! Parquet files with Hive-style date partitions ([`parquet`]); published
//! files are uploaded to an S3-compatible store when one is configured
//! ([`upload`]).
//!
//! Layout under `[audit] dir`: `spool/` (segments, `LOCK`, `corrupt/`),
//! `archive/sessions/date=…/`, `archive/statements/date=…/` and
//! `upload-pending/` (markers of files not yet uploaded).
//!
//! Limits: one process per directory (a lock file enforces it); the
//! archive is written by this process only, and rows are never updated
//! after they are published.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::AuditConfig;

pub mod note;
pub mod parquet;
pub mod record;
pub mod spool;
pub mod trail;
pub mod upload;

pub use record::{Decision, Entry, Protocol, SessionOutcome, SessionRecord, StatementRecord};
pub use spool::{AuditHandle, Ticket};
pub use trail::{Audit, Outcome, SessionTotals, StatementEvent};

use self::parquet::{Fold, Publisher, TMP_PREFIX};
use self::spool::{ClosedSegment, SegmentEnd, SpoolOptions, SpoolWriter};

/// First delay before compacting a segment again after a failure.
const COMPACT_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest delay between compaction attempts.
const COMPACT_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for uploads to finish.
pub const UPLOAD_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// `end_reason` of sessions found open in the spool at startup.
pub const END_GATEWAY_RESTART: &str = "gateway_restart";

/// Why the archive cannot record or start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool cannot be written now (disk full, permissions); the
    /// writer keeps retrying.
    #[error("the audit spool cannot be written")]
    SpoolUnavailable,
    /// The archive has shut down.
    #[error("the audit archive is shut down")]
    Closed,
    /// Another process holds the spool directory.
    #[error("audit spool {0} is in use by another process")]
    Locked(PathBuf),
    /// A file operation failed.
    #[error("audit: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Arrow or Parquet refused to write a file.
    #[error("audit: writing Parquet {path}: {message}")]
    Parquet {
        /// The file or partition.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// The object store could not be set up or refused a request.
    #[error("audit upload: {0}")]
    ObjectStore(String),
    /// The configuration is not usable (key, what is wrong).
    #[error("audit configuration: key `{0}`: {1}")]
    Config(&'static str, &'static str),
}

impl AuditError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The running archive: spool writer thread, compactor and uploader tasks.
pub struct Archive {
    writer: SpoolWriter,
    compactor: JoinHandle<()>,
    uploader: Option<JoinHandle<()>>,
    stopping: watch::Sender<bool>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").finish_non_exhaustive()
    }
}

impl Archive {
    /// Recovers what a previous run left in the spool (every segment is
    /// compacted; sessions never closed become `gateway_restart` rows),
    /// then starts the writer thread and, on `runtime`, the compactor and
    /// the uploader. Does blocking file IO: call it at startup.
    pub fn start(
        config: &AuditConfig,
        runtime: Handle,
    ) -> Result<(Archive, AuditHandle), AuditError> {
        config
            .check()
            .map_err(|(key, message)| AuditError::Config(key, message))?;
        let spool_dir = config.dir.join("spool");
        let root = config.dir.join("archive");
        for dir in [&spool_dir, &root] {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io("creating", dir, e))?;
        }
        let lock = lock_spool(&spool_dir)?;
        remove_stale_tmp(&root);
        let markers = config.dir.join("upload-pending");
        let publisher = Publisher {
            root: root.clone(),
            instance: config.instance.clone(),
            row_group_rows: config.row_group_rows,
            upload_markers: config.s3.as_ref().map(|_| markers.clone()),
        };
        recover(&spool_dir, &publisher)?;

        let (upload_tx, uploader) = match &config.s3 {
            Some(s3) => {
                let store = upload::s3_store(s3)?;
                let up = upload::Uploader {
                    store,
                    prefix: s3.prefix.trim_matches('/').to_owned(),
                    root,
                    markers: markers.clone(),
                    keep_local: s3.keep_local,
                };
                let initial = upload::pending_uploads(&markers, &up.root);
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(runtime.spawn(up.run(initial, rx))))
            }
            None => (None, None),
        };
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let (stopping, stop_rx) = watch::channel(false);
        let compactor = Compactor {
            publisher: Arc::new(publisher),
            spool_dir: spool_dir.clone(),
            upload: upload_tx,
            stopping: stop_rx,
        };
        let compactor = runtime.spawn(compactor.run(closed_rx));
        let options = SpoolOptions {
            dir: spool_dir,
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            max_rows: config.file_max_rows,
            max_bytes: config.file_max_bytes,
            max_age: config.file_max_age,
        };
        let (writer, handle) = SpoolWriter::start(options, closed_tx)?;
        let archive = Archive {
            writer,
            compactor,
            uploader,
            stopping,
            _lock: lock,
        };
        Ok((archive, handle))
    }

    /// Writes what is queued, closes and compacts the current segment
    /// (sessions still open end as `gateway_shutdown`), then waits up to
    /// [`UPLOAD_SHUTDOWN_WAIT`] for uploads. What cannot be finished stays on
    /// disk and is taken up at the next start.
    pub async fn shutdown(self) {
        let _ = self.stopping.send(true);
        self.writer.shutdown().await;
        if let Err(e) = self.compactor.await {
            tracing::error!(error = %e, "audit compactor failed");
        }
        if let Some(mut uploader) = self.uploader {
            if tokio::time::timeout(UPLOAD_SHUTDOWN_WAIT, &mut uploader)
                .await
                .is_err()
            {
                tracing::warn!("audit uploads unfinished at shutdown; resumed at next start");
                uploader.abort();
            }
        }
    }
}

fn lock_spool(spool_dir: &Path) -> Result<std::fs::File, AuditError> {
    let path = spool_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io("opening", &path, e))?;
    // std's File::try_lock needs Rust 1.89; flock(2) does the same here.
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Err(AuditError::Locked(spool_dir.to_owned()))
    } else {
        Err(AuditError::io("locking", &path, e))
    }
}

/// Removes `.tmp-` files a crash left in the archive: their segment is
/// still in the spool and will be compacted again.
fn remove_stale_tmp(root: &Path) {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for table in dirs(root) {
        for partition in dirs(&table) {
            let Ok(files) = std::fs::read_dir(&partition) else {
                continue;
            };
            for file in files.flatten() {
                if file.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }
}

/// Compacts every segment left in the spool, oldest first, folding open
/// sessions across them; those still open at the end become rows.
fn recover(spool_dir: &Path, publisher: &Publisher) -> Result<(), AuditError> {
    let segments =
        spool::list_segments(spool_dir).map_err(|e| AuditError::io("listing", spool_dir, e))?;
    let mut fold = Fold::default();
    let count = segments.len();
    for (i, path) in segments.into_iter().enumerate() {
        let contents =
            spool::read_segment(&path).map_err(|e| AuditError::io("reading", &path, e))?;
        let mut rows = fold.apply(contents.entries);
        if i + 1 == count {
            rows.sessions.extend(fold.finish(END_GATEWAY_RESTART, None));
        }
        if let SegmentEnd::TornTail { offset } = contents.end {
            tracing::warn!(segment = %path.display(), offset, "audit segment torn tail dropped");
        }
        publish_segment(publisher, &path, &rows)?;
        dispose(spool_dir, &path, &contents.end)?;
    }
    if count > 0 {
        tracing::info!(segments = count, "audit spool recovered");
    }
    Ok(())
}

fn publish_segment(
    publisher: &Publisher,
    path: &Path,
    rows: &self::parquet::Rows,
) -> Result<Vec<PathBuf>, AuditError> {
    let Some(id) = spool::segment_id(path) else {
        return Err(AuditError::io(
            "naming",
            path,
            std::io::Error::other("segment name is not a UUID"),
        ));
    };
    publisher.publish(id, rows)
}

/// Deletes a compacted segment, or moves a corrupt one to `corrupt/`.
fn dispose(spool_dir: &Path, path: &Path, end: &SegmentEnd) -> Result<(), AuditError> {
    if let SegmentEnd::Corrupt { offset, reason } = end {
        let corrupt = spool_dir.join("corrupt");
        std::fs::create_dir_all(&corrupt).map_err(|e| AuditError::io("creating", &corrupt, e))?;
        let target = corrupt.join(path.file_name().unwrap_or_default());
        tracing::error!(
            segment = %path.display(),
            offset,
            reason,
            moved_to = %target.display(),
            "audit segment corrupt; entries before the damage were archived"
        );
        std::fs::rename(path, &target).map_err(|e| AuditError::io("moving", path, e))?;
    } else {
        std::fs::remove_file(path).map_err(|e| AuditError::io("removing", path, e))?;
    }
    spool::sync_dir(spool_dir).map_err(|e| AuditError::io("syncing", spool_dir, e))
}

/// Turns closed segments into Parquet files, off the async threads.
struct Compactor {
    publisher: Arc<Publisher>,
    spool_dir: PathBuf,
    upload: Option<mpsc::UnboundedSender<String>>,
    stopping: watch::Receiver<bool>,
}

impl Compactor {
    async fn run(self, mut closed: mpsc::UnboundedReceiver<ClosedSegment>) {
        while let Some(segment) = closed.recv().await {
            let mut delay = COMPACT_RETRY_MIN;
            loop {
                let publisher = self.publisher.clone();
                let spool_dir = self.spool_dir.clone();
                let path = segment.path.clone();
                let finish = segment.finish;
                let result = tokio::task::spawn_blocking(move || {
                    compact_segment(&publisher, &spool_dir, &path, finish)
                })
                .await;
                let error = match result {
                    Ok(Ok(published)) => {
                        self.queue_uploads(published);
                        break;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                if *self.stopping.borrow() {
                    tracing::error!(
                        error,
                        "audit compaction failed at shutdown; left for recovery"
                    );
                    break;
                }
                tracing::error!(
                    error,
                    retry_in_ms = delay.as_millis() as u64,
                    "audit compaction failed"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(COMPACT_RETRY_MAX);
            }
        }
    }

    fn queue_uploads(&self, published: Vec<PathBuf>) {
        let Some(upload) = &self.upload else {
            return;
        };
        for path in published {
            if let Ok(rel) = path.strip_prefix(&self.publisher.root) {
                let rel = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                let _ = upload.send(rel);
            }
        }
    }
}

/// Compacts one closed segment on its own: sessions it leaves open are
/// carried by the next segment, unless `finish` ends them.
fn compact_segment(
    publisher: &Publisher,
    spool_dir: &Path,
    path: &Path,
    finish: Option<spool::Finish>,
) -> Result<Vec<PathBuf>, AuditError> {
    let contents = match spool::read_segment(path) {
        Ok(contents) => contents,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(segment = %path.display(), "audit segment vanished before compaction");
            return Ok(Vec::new());
        }
        Err(e) => return Err(AuditError::io("reading", path, e)),
    };
    let mut fold = Fold::default();
    let mut rows = fold.apply(contents.entries);
    if let Some(finish) = finish {
        rows.sessions
            .extend(self::parquet::finish_rows(&mut fold, finish));
    }
    let published = publish_segment(publisher, path, &rows)?;
    dispose(spool_dir, path, &contents.end)?;
    Ok(published)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::fs::File;

    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMicrosecondType};
    use arrow_array::{Array, RecordBatch};
    use uuid::Uuid;

    use super::record::tests::{session, statement};
    use super::*;

    /// A directory removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("pgveil-audit-{name}-{}", Uuid::now_v7().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(dir: &Path) -> AuditConfig {
        let mut config = AuditConfig::with_dir(dir.to_owned());
        config.instance = "gw-test".into();
        config
    }

    /// Every published Parquet file of `table`, in name order.
    fn files(dir: &Path, table: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(partitions) = std::fs::read_dir(dir.join("archive").join(table)) else {
            return out;
        };
        for partition in partitions {
            for file in std::fs::read_dir(partition.unwrap().path()).unwrap() {
                out.push(file.unwrap().path());
            }
        }
        out.sort_by_key(|p| p.file_name().unwrap().to_owned());
        out
    }

    fn read(dir: &Path, table: &str) -> Vec<RecordBatch> {
        files(dir, table)
            .iter()
            .flat_map(|path| {
                let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
                reader.map(Result::unwrap).collect::<Vec<_>>()
            })
            .collect()
    }

    fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column_by_name(column).unwrap().as_string::<i32>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i).to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b
                    .column_by_name(column)
                    .unwrap()
                    .as_primitive::<Int64Type>();
                a.values().to_vec()
            })
            .collect()
    }

    fn times(batches: &[RecordBatch], column: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column_by_name(column).unwrap();
                a.as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn lists(batches: &[RecordBatch], column: &str) -> Vec<Option<Vec<String>>> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column_by_name(column).unwrap().as_list::<i32>();
                (0..a.len())
                    .map(|i| {
                        a.is_valid(i).then(|| {
                            let v = a.value(i);
                            let v = v.as_string::<i32>();
                            (0..v.len()).map(|j| v.value(j).to_owned()).collect()
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// 2026-03-01T12:00:00Z in microseconds.
    const T0: i64 = 1_772_366_400_000_000;

    fn closed(mut s: SessionRecord, statements: u64, end: i64) -> Entry {
        s.ended_at = end;
        s.statements = statements;
        s.bytes_from_client = 1000 + statements;
        s.bytes_to_client = 2000 + statements;
        s.end_reason = "terminate".into();
        Entry::SessionClosed(s)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_keeps_every_row_and_field() {
        let tmp = TempDir::new("roundtrip");
        let mut cfg = config(&tmp.0);
        cfg.file_max_rows = 7; // several segments, sessions carried over
        let (archive, handle) = Archive::start(&cfg, Handle::current()).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for (n, id) in ids.iter().enumerate() {
            let _ = handle.submit(Entry::SessionOpened(session(*id, T0 + n as i64)));
        }
        for seq in 1..=5u64 {
            for (n, id) in ids.iter().enumerate() {
                let start = T0 + 1_000_000 * seq as i64 + n as i64;
                let ticket = handle.submit(Entry::Statement(statement(*id, seq, start)));
                // One at a time, so that batches are small and segments
                // rotate every 7 rows.
                ticket.durable().await.unwrap();
            }
        }
        for (n, id) in ids.iter().enumerate().take(2) {
            let t = handle.submit(closed(session(*id, T0 + n as i64), 5, T0 + 9_000_000));
            t.durable().await.unwrap();
        }
        assert!(handle.healthy());
        archive.shutdown().await;
        assert!(matches!(
            handle
                .submit(Entry::SessionOpened(session(Uuid::now_v7(), T0)))
                .durable()
                .await,
            Err(AuditError::Closed)
        ));

        let st = read(&tmp.0, "statements");
        let mut keys: Vec<(String, i64)> = strings(&st, "session_id")
            .into_iter()
            .map(Option::unwrap)
            .zip(ints(&st, "seq"))
            .collect();
        keys.sort();
        let mut expected: Vec<(String, i64)> = ids
            .iter()
            .flat_map(|id| (1..=5).map(move |seq| (id.hyphenated().to_string(), seq)))
            .collect();
        expected.sort();
        assert_eq!(keys, expected);
        let seqs = ints(&st, "seq");
        let rows = ints(&st, "rows");
        assert!(seqs.iter().zip(&rows).all(|(s, r)| *r == s * 10));
        assert!(ints(&st, "duration_us")
            .iter()
            .zip(&seqs)
            .all(|(d, s)| *d == 1500 + s));
        assert!(strings(&st, "decision")
            .iter()
            .all(|d| d.as_deref() == Some("masked")));
        assert!(strings(&st, "protocol")
            .iter()
            .all(|d| d.as_deref() == Some("execute")));
        assert!(strings(&st, "sqlstate").iter().all(Option::is_none));
        assert!(strings(&st, "text")
            .iter()
            .all(|t| t.as_deref() == Some("select * from t where id = 42")));
        assert!(lists(&st, "masked_columns")
            .iter()
            .all(|m| m.as_deref() == Some(&["email(pii)".to_owned()][..])));
        assert!(lists(&st, "functions")
            .iter()
            .all(|f| f.as_deref() == Some(&[][..])));
        let starts = times(&st, "started_at");
        assert!(starts.iter().all(|t| (T0..T0 + 6_000_000).contains(t)));

        let se = read(&tmp.0, "sessions");
        let sid = strings(&se, "session_id");
        assert_eq!(sid.len(), 3, "one row per session");
        let reasons: Vec<_> = sid
            .iter()
            .zip(strings(&se, "end_reason"))
            .map(|(id, r)| (id.clone().unwrap(), r.unwrap()))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let want = if n < 2 {
                "terminate"
            } else {
                "gateway_shutdown"
            };
            let id = id.hyphenated().to_string();
            assert!(reasons.contains(&(id, want.to_owned())), "{reasons:?}");
        }
        assert!(ints(&se, "statements").iter().all(|&n| n == 5));
        assert!(strings(&se, "tls_version")
            .iter()
            .all(|v| v.as_deref() == Some("TLSv1.3")));
        assert!(strings(&se, "application_name").iter().all(Option::is_none));
        assert!(lists(&se, "groups")
            .iter()
            .all(|g| g.as_deref() == Some(&["analysts".to_owned(), "eu".to_owned()][..])));
        assert_eq!(times(&se, "started_at").iter().min(), Some(&T0));

        // Several segments became several files: names unique, no temp
        // files left, all in the date partition of started_at.
        let all: Vec<_> = [files(&tmp.0, "statements"), files(&tmp.0, "sessions")].concat();
        assert!(files(&tmp.0, "statements").len() > 1);
        for path in &all {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                !name.starts_with(TMP_PREFIX) && name.ends_with(".parquet"),
                "{name}"
            );
            assert!(name.contains("-gw-test-"), "{name}");
            let partition = path.parent().unwrap().file_name().unwrap();
            assert_eq!(partition, "date=2026-03-01");
        }
        let st_names: Vec<_> = files(&tmp.0, "statements")
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            st_names.iter().collect::<BTreeSet<_>>().len(),
            st_names.len()
        );
        assert!(spool::list_segments(&tmp.0.join("spool"))
            .unwrap()
            .is_empty());
    }

    /// Writes a segment into the spool as a crashed run would leave it.
    fn leave_segment(dir: &Path, entries: &[Entry], cut: usize) -> PathBuf {
        let spool_dir = dir.join("spool");
        std::fs::create_dir_all(&spool_dir).unwrap();
        let mut bytes = spool::MAGIC.to_vec();
        for e in entries {
            spool::encode(e, &mut bytes).unwrap();
        }
        bytes.truncate(bytes.len() - cut);
        let path = spool_dir.join(format!("{}.seg", Uuid::now_v7().simple()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[tokio::test]
    async fn recovery_drops_a_torn_tail_and_ends_open_sessions() {
        let tmp = TempDir::new("recover");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut entries = vec![
            Entry::SessionOpened(session(a, T0)),
            Entry::SessionOpened(session(b, T0 + 1)),
        ];
        entries.extend((1..=4).map(|s| Entry::Statement(statement(a, s, T0 + 10 * s as i64))));
        entries.push(closed(session(b, T0 + 1), 0, T0 + 20));
        // Written last and torn: must not appear.
        entries.push(Entry::Statement(statement(a, 5, T0 + 5_000)));
        let path = leave_segment(&tmp.0, &entries, 9);

        let (archive, _handle) = Archive::start(&config(&tmp.0), Handle::current()).unwrap();
        assert!(!path.exists());
        assert!(!tmp.0.join("spool/corrupt").exists());
        let st = read(&tmp.0, "statements");
        assert_eq!(ints(&st, "seq"), vec![1, 2, 3, 4]);
        let se = read(&tmp.0, "sessions");
        let rows: BTreeSet<_> = strings(&se, "session_id")
            .into_iter()
            .zip(strings(&se, "end_reason"))
            .zip(ints(&se, "statements"))
            .zip(times(&se, "ended_at"))
            .map(|(((id, reason), n), end)| (id.unwrap(), reason.unwrap(), n, end))
            .collect();
        let expected: BTreeSet<_> = [
            // Last time seen: the latest entry (statement 4 and its duration).
            (
                a.hyphenated().to_string(),
                "gateway_restart".to_owned(),
                4,
                T0 + 40 + 1504,
            ),
            (
                b.hyphenated().to_string(),
                "terminate".to_owned(),
                0,
                T0 + 20,
            ),
        ]
        .into();
        assert_eq!(rows, expected);
        archive.shutdown().await;
    }

    #[tokio::test]
    async fn sessions_carried_across_segments_get_one_row_at_recovery() {
        let tmp = TempDir::new("carry");
        let a = Uuid::now_v7();
        let first = [
            Entry::SessionOpened(session(a, T0)),
            Entry::Statement(statement(a, 1, T0 + 5)),
        ];
        leave_segment(&tmp.0, &first, 0);
        let mut carried = session(a, T0);
        carried.statements = 1;
        let second = [
            Entry::SessionOpened(carried),
            Entry::Statement(statement(a, 2, T0 + 50)),
        ];
        leave_segment(&tmp.0, &second, 0);

        let (archive, _handle) = Archive::start(&config(&tmp.0), Handle::current()).unwrap();
        let se = read(&tmp.0, "sessions");
        assert_eq!(
            strings(&se, "end_reason"),
            vec![Some("gateway_restart".to_owned())]
        );
        assert_eq!(ints(&se, "statements"), vec![2]);
        assert_eq!(ints(&read(&tmp.0, "statements"), "seq"), vec![1, 2]);
        archive.shutdown().await;
    }

    #[tokio::test]
    async fn corrupt_segment_is_moved_aside_after_archiving_its_prefix() {
        let tmp = TempDir::new("corrupt");
        let a = Uuid::now_v7();
        let entries: Vec<_> = (1..=3)
            .map(|s| Entry::Statement(statement(a, s, T0)))
            .collect();
        let path = leave_segment(&tmp.0, &entries, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut first = spool::MAGIC.to_vec();
        spool::encode(&entries[0], &mut first).unwrap();
        bytes[first.len() + 20] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();

        let (archive, _handle) = Archive::start(&config(&tmp.0), Handle::current()).unwrap();
        assert_eq!(ints(&read(&tmp.0, "statements"), "seq"), vec![1]);
        let moved = tmp.0.join("spool/corrupt").join(path.file_name().unwrap());
        assert!(moved.exists() && !path.exists());
        archive.shutdown().await;
    }

    #[tokio::test]
    async fn second_start_on_the_same_dir_is_refused() {
        let tmp = TempDir::new("lock");
        let (archive, _h) = Archive::start(&config(&tmp.0), Handle::current()).unwrap();
        let err = Archive::start(&config(&tmp.0), Handle::current()).unwrap_err();
        assert!(matches!(err, AuditError::Locked(_)), "{err}");
        archive.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unwritable_spool_fails_tickets_and_recovers() {
        let tmp = TempDir::new("unwritable");
        let mut cfg = config(&tmp.0);
        cfg.file_max_rows = 1;
        let (archive, handle) = Archive::start(&cfg, Handle::current()).unwrap();
        let id = Uuid::now_v7();
        handle
            .submit(Entry::Statement(statement(id, 1, T0)))
            .durable()
            .await
            .unwrap();
        // Wait for that segment to be compacted, then put a regular file
        // where the spool directory was: creating a segment fails, for
        // root too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while files(&tmp.0, "statements").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "first segment never compacted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spool_dir = tmp.0.join("spool");
        std::fs::remove_dir_all(&spool_dir).unwrap();
        std::fs::write(&spool_dir, b"not a directory").unwrap();

        let refused = handle.submit(Entry::Statement(statement(id, 2, T0 + 1)));
        assert!(matches!(
            refused.durable().await,
            Err(AuditError::SpoolUnavailable)
        ));
        assert!(!handle.healthy());

        std::fs::remove_file(&spool_dir).unwrap();
        std::fs::create_dir(&spool_dir).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !handle.healthy() {
            assert!(
                std::time::Instant::now() < deadline,
                "spool never recovered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle
            .submit(Entry::Statement(statement(id, 3, T0 + 2)))
            .durable()
            .await
            .unwrap();
        archive.shutdown().await;
        // The entry refused while failing was kept and written on recovery.
        let mut seqs = ints(&read(&tmp.0, "statements"), "seq");
        seqs.sort();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn interval_fsync_acknowledges_and_archives() {
        let tmp = TempDir::new("interval");
        let mut cfg = config(&tmp.0);
        cfg.fsync = crate::config::FsyncPolicy::Interval;
        cfg.fsync_interval = Duration::from_millis(20);
        let (archive, handle) = Archive::start(&cfg, Handle::current()).unwrap();
        let id = Uuid::now_v7();
        let tickets: Vec<_> = (1..=50)
            .map(|s| handle.submit(Entry::Statement(statement(id, s, T0))))
            .collect();
        // Submitters write inline: every entry is in the spool file (the
        // page cache) when submit returns, and its ticket is settled.
        let spooled: usize = spool::list_segments(&tmp.0.join("spool"))
            .unwrap()
            .iter()
            .map(|p| spool::read_segment(p).unwrap().entries.len())
            .sum();
        assert_eq!(spooled, 50);
        for t in &tickets {
            let settled = tokio::time::timeout(Duration::ZERO, t.durable()).await;
            assert!(matches!(settled, Ok(Ok(()))), "durable at once");
        }
        archive.shutdown().await;
        assert_eq!(ints(&read(&tmp.0, "statements"), "seq").len(), 50);
    }

    #[test]
    fn file_names_sort_by_time_and_are_unique() {
        let tmp = TempDir::new("names");
        let publisher = Publisher {
            root: tmp.0.clone(),
            instance: "gw-1".into(),
            row_group_rows: 10,
            upload_markers: None,
        };
        let id = Uuid::now_v7();
        let mut names = Vec::new();
        for seq in 1..=5 {
            let segment = Uuid::now_v7();
            let rows = self::parquet::Rows {
                sessions: vec![],
                statements: vec![statement(id, seq, T0)],
            };
            let published = publisher.publish(segment, &rows).unwrap();
            names.push(
                published[0]
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 5);
        let dir = tmp.0.join("statements/date=2026-03-01");
        let listed = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(listed, 5, "no temp files left");
    }
}
