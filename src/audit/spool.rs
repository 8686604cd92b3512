//! The durable local spool: append-only segment files.
//!
//! Sessions submit [`Entry`]s through a cheap [`AuditHandle`]. With
//! `fsync = "every_batch"` the writer thread drains everything queued,
//! appends it with a single `write` and an `fdatasync` (group commit), and
//! publishes the highest durable sequence number on a `watch` channel,
//! which every [`Ticket`] waits on. With `fsync = "interval"` a submitter
//! appends its own entry under the writer's lock (one `write` to the page
//! cache, no thread hand-over), and the thread only syncs within the
//! interval, closes segments and retries after failures.
//!
//! A segment is `MAGIC` followed by frames: a little-endian `u32` length, a
//! little-endian `u32` CRC32 of the payload, and the payload (one entry as
//! JSON). A frame cut short at the end of a file is a torn tail left by a
//! crash and is dropped on reading; a bad frame followed by more data is
//! corruption, reported so that the file is moved aside.
//!
//! Segments close on rows, bytes or age. Sessions still open when a
//! segment closes are written again (as `SessionOpened`) at the start of
//! the next segment before the closed one is handed to compaction, so each
//! session's row comes from exactly one segment.
//!
//! Limits: when a write or sync fails the writer keeps the batch in memory
//! (at most [`MAX_PENDING_ENTRIES`], the oldest dropped beyond that) and
//! retries with backoff (a dropped entry's ticket may still report success
//! once later entries are written); a segment whose fsync failed is
//! abandoned, and
//! entries of the failed batch may then appear in it as well as in the next
//! segment (compaction removes such duplicates only within one segment).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use super::parquet::note_statement;
use super::record::{now_micros, Entry, SessionRecord};
use super::AuditError;
use crate::config::FsyncPolicy;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"PGVSPL1\n";
/// Extension of segment files in the spool directory.
pub const SEGMENT_EXT: &str = "seg";
/// Bytes of a frame header (length and CRC32).
const FRAME_HEADER: usize = 8;
/// Largest payload a frame may declare; larger is corruption.
pub const MAX_RECORD_BYTES: usize = 256 << 20;
/// Entries kept in memory while the spool cannot be written.
pub const MAX_PENDING_ENTRIES: usize = 200_000;
/// First delay before retrying a failed spool write.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between retries of a failed spool write.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest the writer sleeps when there is nothing to do.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// Appends one framed entry to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    if let Err(e) = serde_json::to_writer(&mut *out, entry) {
        out.truncate(start);
        return Err(e);
    }
    let payload = &out[start + FRAME_HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// How reading a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Every byte belonged to a valid frame.
    Clean,
    /// The file ended inside a frame (a crash during a write); the partial
    /// frame was dropped.
    TornTail {
        /// Offset of the dropped frame.
        offset: u64,
    },
    /// A bad frame with data after it; entries before it were kept.
    Corrupt {
        /// Offset of the bad frame.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The entries of one segment, in order, and how reading ended.
#[derive(Debug)]
pub struct SegmentContents {
    /// Entries of the valid prefix.
    pub entries: Vec<Entry>,
    /// Whether the rest was clean, torn or corrupt.
    pub end: SegmentEnd,
}

/// Decodes a whole segment. Never fails: what cannot be read ends the
/// valid prefix and is described in [`SegmentContents::end`].
pub fn decode_segment(bytes: &[u8]) -> SegmentContents {
    let mut entries = Vec::new();
    if bytes.len() < MAGIC.len() {
        let end = if MAGIC.starts_with(bytes) {
            SegmentEnd::TornTail { offset: 0 }
        } else {
            SegmentEnd::Corrupt {
                offset: 0,
                reason: "not a spool segment",
            }
        };
        return SegmentContents { entries, end };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        let end = SegmentEnd::Corrupt {
            offset: 0,
            reason: "not a spool segment",
        };
        return SegmentContents { entries, end };
    }
    let mut pos = MAGIC.len();
    let end = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break SegmentEnd::Clean;
        }
        let offset = pos as u64;
        if rest.len() < FRAME_HEADER {
            break SegmentEnd::TornTail { offset };
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let bad = |reason| {
            // A crash can leave a zero-filled or partly written tail; only
            // a bad frame with something after it is corruption.
            let frame_end = FRAME_HEADER.saturating_add(len);
            if frame_end >= rest.len() || rest.iter().all(|&b| b == 0) {
                SegmentEnd::TornTail { offset }
            } else {
                SegmentEnd::Corrupt { offset, reason }
            }
        };
        if len == 0 || len > MAX_RECORD_BYTES {
            break bad("impossible frame length");
        }
        if rest.len() - FRAME_HEADER < len {
            break SegmentEnd::TornTail { offset };
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if crc32fast::hash(payload) != crc {
            break bad("checksum mismatch");
        }
        match serde_json::from_slice(payload) {
            Ok(entry) => entries.push(entry),
            Err(_) => {
                break SegmentEnd::Corrupt {
                    offset,
                    reason: "undecodable entry",
                }
            }
        }
        pos += FRAME_HEADER + len;
    };
    SegmentContents { entries, end }
}

/// Reads and decodes the segment at `path`.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    Ok(decode_segment(&std::fs::read(path)?))
}

/// The segment files in `dir`, oldest first (names are UUIDv7).
pub fn list_segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut segments = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.extension().is_some_and(|e| e == SEGMENT_EXT) && path.is_file() {
            segments.push(path);
        }
    }
    segments.sort();
    Ok(segments)
}

/// The UUIDv7 that names a segment file.
pub fn segment_id(path: &Path) -> Option<Uuid> {
    path.file_stem()?
        .to_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// How to finish sessions still open at the end of a segment that no later
/// segment carries (shutdown, recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// `end_reason` of the rows made for them.
    pub end_reason: &'static str,
    /// `ended_at` of those rows (µs since the epoch).
    pub ended_at: i64,
}

/// A segment the writer has closed, for compaction.
#[derive(Debug)]
pub struct ClosedSegment {
    /// The segment file.
    pub path: PathBuf,
    /// `Some` for the last segment of a shutdown: its open sessions end.
    pub finish: Option<Finish>,
}

/// Writer settings, taken from `[audit]`.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory.
    pub dir: PathBuf,
    /// When writes are synced.
    pub fsync: FsyncPolicy,
    /// Longest time between syncs with [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Entries after which a segment closes.
    pub max_rows: u64,
    /// Bytes after which a segment closes.
    pub max_bytes: u64,
    /// Age after which a segment holding rows closes.
    pub max_age: Duration,
}

/// What the writer has made durable, as every ticket sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Highest sequence number written per the fsync policy.
    durable: u64,
    /// The last attempt to write failed.
    failing: bool,
    /// The writer has stopped.
    closed: bool,
}

enum Msg {
    Entry(u64, Box<Entry>),
    /// An inline write left work for the thread (a sync or a segment's age
    /// to watch): compute the next wake-up again.
    Wake,
    Shutdown(tokio::sync::oneshot::Sender<()>),
}

struct Submitter {
    last_seq: u64,
    tx: Option<mpsc::Sender<Msg>>,
}

struct Shared {
    submitter: Mutex<Submitter>,
    progress: watch::Sender<Progress>,
    /// The writer's state. With `fsync = "interval"` submitters append
    /// their entry themselves, under this lock, so that a statement does
    /// not wait for the thread to wake; the thread then only syncs, closes
    /// segments by age and retries after failures.
    writer: Mutex<Writer>,
    /// Whether submitters write inline (`fsync = "interval"`).
    inline: bool,
}

/// Locks `m`, recovering from a poisoned lock (every critical section
/// leaves the state consistent between IO calls).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Submits entries to the spool; cheap to clone and share between
/// sessions.
#[derive(Clone)]
pub struct AuditHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("healthy", &self.healthy())
            .finish()
    }
}

/// Proof of submission; [`Ticket::durable`] waits until the entry is in the
/// spool.
#[derive(Clone)]
#[must_use = "a ticket says nothing until its durability is awaited"]
pub struct Ticket {
    shared: Arc<Shared>,
    seq: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("seq", &self.seq).finish()
    }
}

impl AuditHandle {
    /// Queues `entry` for the writer. With `fsync = "every_batch"` it never
    /// blocks on IO; with `interval` it appends the entry itself (one
    /// `write` to the page cache) unless the spool is failing.
    pub fn submit(&self, entry: Entry) -> Ticket {
        let mut submitter = lock(&self.shared.submitter);
        submitter.last_seq += 1;
        let seq = submitter.last_seq;
        let ticket = Ticket {
            shared: self.shared.clone(),
            seq,
        };
        let Some(tx) = submitter.tx.as_ref() else {
            // The writer is gone: the ticket will say so.
            self.shared.progress.send_modify(|p| p.closed = true);
            return ticket;
        };
        if !self.shared.inline {
            if tx.send(Msg::Entry(seq, Box::new(entry))).is_err() {
                self.shared.progress.send_modify(|p| p.closed = true);
            }
            return ticket;
        }
        let mut writer = lock(&self.shared.writer);
        writer.enqueue(seq, entry);
        if writer.step_inline() {
            // Ignored if the thread is gone: shutdown is under way.
            let _ = tx.send(Msg::Wake);
        }
        ticket
    }

    /// False while the spool cannot be written or after shutdown: a caller
    /// with `on_failure = "refuse"` refuses new statements then.
    pub fn healthy(&self) -> bool {
        let p = *self.shared.progress.borrow();
        !p.failing && !p.closed
    }
}

impl Ticket {
    /// Waits until the entry has been written per the fsync policy.
    ///
    /// Fails at once with [`AuditError::SpoolUnavailable`] while the writer
    /// cannot write, and with [`AuditError::Closed`] after shutdown.
    /// Cancel safe: dropping the future loses nothing.
    pub async fn durable(&self) -> Result<(), AuditError> {
        let mut rx = self.shared.progress.subscribe();
        loop {
            {
                let p = rx.borrow_and_update();
                if p.durable >= self.seq {
                    return Ok(());
                }
                if p.closed {
                    return Err(AuditError::Closed);
                }
                if p.failing {
                    return Err(AuditError::SpoolUnavailable);
                }
            }
            if rx.changed().await.is_err() {
                return Err(AuditError::Closed);
            }
        }
    }
}

/// The writer thread's side, kept by the archive to stop it.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolWriter")
    }
}

impl SpoolWriter {
    /// Starts the writer thread; closed segments go to `closed`.
    pub fn start(
        options: SpoolOptions,
        closed: tokio::sync::mpsc::UnboundedSender<ClosedSegment>,
    ) -> Result<(Self, AuditHandle), AuditError> {
        let (tx, rx) = mpsc::channel();
        let progress = watch::Sender::new(Progress::default());
        let inline = options.fsync == FsyncPolicy::Interval;
        let writer = Writer {
            options,
            progress: progress.clone(),
            closed: Some(closed),
            segment: None,
            handover: Vec::new(),
            open: HashMap::new(),
            pending: Vec::new(),
            dropped: 0,
            retry: None,
            synced_upto: 0,
            written_upto: 0,
            last_sync: Instant::now(),
        };
        let shared = Arc::new(Shared {
            submitter: Mutex::new(Submitter {
                last_seq: 0,
                tx: Some(tx),
            }),
            progress,
            writer: Mutex::new(writer),
            inline,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pgveil-audit-spool".into())
            .spawn(move || run(&thread_shared, &rx))
            .map_err(|e| AuditError::io("starting the spool writer", Path::new("."), e))?;
        let handle = AuditHandle {
            shared: shared.clone(),
        };
        Ok((
            Self {
                shared,
                thread: Some(thread),
            },
            handle,
        ))
    }

    /// Writes what is queued, closes the current segment (its open sessions
    /// end as `gateway_shutdown`), hands it to compaction and stops the
    /// thread. Entries submitted afterwards fail with `Closed`.
    pub async fn shutdown(mut self) {
        let tx = {
            let mut submitter = match self.shared.submitter.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            submitter.tx.take()
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = tx {
            if tx.send(Msg::Shutdown(done_tx)).is_ok() {
                let _ = done_rx.await;
            }
        }
        if let Some(thread) = self.thread.take() {
            // The thread has answered or died; joining does not block long.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.shared.progress.send_modify(|p| p.closed = true);
    }
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
    rows: u64,
    /// Entries other than carried-over sessions: whether closing it
    /// publishes anything.
    payload_rows: u64,
    created: Instant,
}

struct Retry {
    at: Instant,
    delay: Duration,
}

struct Writer {
    options: SpoolOptions,
    progress: watch::Sender<Progress>,
    /// Where closed segments go; dropped at shutdown, which tells the
    /// compactor that no more will come.
    closed: Option<tokio::sync::mpsc::UnboundedSender<ClosedSegment>>,
    segment: Option<Segment>,
    /// Closed segments waiting until their open sessions are carried.
    handover: Vec<PathBuf>,
    /// Sessions opened and not yet closed, as last written.
    open: HashMap<Uuid, SessionRecord>,
    pending: Vec<(u64, Entry)>,
    dropped: u64,
    retry: Option<Retry>,
    synced_upto: u64,
    written_upto: u64,
    last_sync: Instant,
}

/// The writer thread: takes queued entries (and wake-ups), writes and
/// syncs them, closes segments, until shutdown.
fn run(shared: &Shared, rx: &mpsc::Receiver<Msg>) {
    let reply = loop {
        let mut shutdown = None;
        let wakeup = lock(&shared.writer).next_wakeup();
        let first = match rx.recv_timeout(wakeup) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break None,
        };
        let mut writer = lock(&shared.writer);
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match msg {
                Msg::Entry(seq, entry) => writer.enqueue(seq, *entry),
                Msg::Wake => {}
                Msg::Shutdown(reply) => shutdown = Some(reply),
            }
        }
        if shutdown.is_some() {
            break shutdown;
        }
        writer.step();
    };
    let mut writer = lock(&shared.writer);
    writer.finish();
    writer.closed = None;
    writer.progress.send_modify(|p| p.closed = true);
    if let Some(reply) = reply {
        let _ = reply.send(());
    }
}

impl Writer {
    /// Adds an entry to the next write; beyond [`MAX_PENDING_ENTRIES`]
    /// (while failing) the oldest is dropped.
    fn enqueue(&mut self, seq: u64, entry: Entry) {
        if self.pending.len() >= MAX_PENDING_ENTRIES {
            self.pending.remove(0);
            self.dropped += 1;
        }
        self.pending.push((seq, entry));
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut wake = now + IDLE_WAKEUP;
        if let Some(retry) = &self.retry {
            wake = wake.min(retry.at);
        }
        if self.synced_upto < self.written_upto {
            wake = wake.min(self.last_sync + self.options.fsync_interval);
        }
        if let Some(seg) = self.segment.as_ref().filter(|s| s.payload_rows > 0) {
            wake = wake.min(seg.created + self.options.max_age);
        }
        wake.saturating_duration_since(now)
    }

    /// The thread's turn: writes what is pending, syncs and rotates as due.
    fn step(&mut self) {
        let due = self.retry.as_ref().is_none_or(|r| Instant::now() >= r.at);
        if !due {
            return;
        }
        let result = self.write_pending().and_then(|()| self.sync_if_due(false));
        let result = result.and_then(|()| self.rotate_if_due());
        match result {
            Ok(()) => self.succeeded(),
            Err(e) => self.failed(e),
        }
    }

    /// A submitter's turn (`fsync = "interval"`): the write, and closing
    /// the segment when it is full; timed syncs, closing by age and retries
    /// stay with the thread. Returns whether the thread has work it did not
    /// know of when it went to sleep (data to sync, a new segment's age to
    /// watch, a failure).
    fn step_inline(&mut self) -> bool {
        if self.retry.is_some() {
            // Failing: the thread retries with backoff.
            return false;
        }
        let was_synced = self.synced_upto >= self.written_upto;
        let had_segment = self.segment.is_some();
        if let Err(e) = self.write_pending() {
            self.failed(e);
            return true;
        }
        let full = self
            .segment
            .as_ref()
            .is_some_and(|s| s.rows >= self.options.max_rows || s.len >= self.options.max_bytes);
        if full {
            // Rare (once per file_max_rows or file_max_bytes): close the
            // segment here, so that the limits hold exactly.
            if let Err(e) = self.rotate_if_due() {
                self.failed(e);
                return true;
            }
        }
        self.succeeded();
        (was_synced && self.synced_upto < self.written_upto)
            || (!had_segment && self.segment.is_some())
    }

    fn succeeded(&mut self) {
        if self.retry.take().is_some() {
            tracing::info!("audit spool writable again");
        }
        if self.dropped > 0 {
            tracing::error!(
                dropped = self.dropped,
                "audit entries dropped while failing"
            );
            self.dropped = 0;
        }
        let durable = match self.options.fsync {
            FsyncPolicy::EveryBatch => self.synced_upto,
            FsyncPolicy::Interval => self.written_upto,
        };
        self.progress.send_if_modified(|p| {
            let changed = p.durable != durable || p.failing;
            p.durable = durable;
            p.failing = false;
            changed
        });
    }

    fn failed(&mut self, error: io::Error) {
        let delay = self
            .retry
            .as_ref()
            .map_or(RETRY_MIN, |r| (r.delay * 2).min(RETRY_MAX));
        tracing::error!(
            dir = %self.options.dir.display(),
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "audit spool cannot be written"
        );
        self.retry = Some(Retry {
            at: Instant::now() + delay,
            delay,
        });
        self.progress
            .send_if_modified(|p| !std::mem::replace(&mut p.failing, true));
    }

    /// Appends every pending entry with one write.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.segment.is_none() {
            self.open_segment()?;
        }
        let mut buf = Vec::new();
        let mut payload = 0;
        for (_, entry) in &self.pending {
            match encode(entry, &mut buf) {
                Ok(()) => payload += 1,
                Err(e) => tracing::error!(error = %e, "audit entry cannot be encoded; dropped"),
            }
        }
        let every_batch = self.options.fsync == FsyncPolicy::EveryBatch;
        let Some(seg) = self.segment.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        if let Err(e) = seg.file.write_all(&buf) {
            // Cut the partial write off so that a retry appends cleanly.
            if seg.file.set_len(seg.len).is_err() {
                self.abandon_segment();
            }
            return Err(e);
        }
        if every_batch {
            if let Err(e) = seg.file.sync_data() {
                // After a failed fsync the page cache cannot be trusted: the
                // batch stays pending and goes to a new segment.
                self.abandon_segment();
                return Err(e);
            }
        }
        seg.len += buf.len() as u64;
        seg.rows += payload;
        seg.payload_rows += payload;
        let last = self.pending.last().map_or(0, |(seq, _)| *seq);
        for (_, entry) in self.pending.drain(..) {
            match entry {
                Entry::SessionOpened(s) => {
                    self.open.insert(s.session_id, s);
                }
                Entry::SessionClosed(s) => {
                    self.open.remove(&s.session_id);
                }
                Entry::Statement(s) => {
                    if let Some(open) = self.open.get_mut(&s.session_id) {
                        note_statement(open, &s);
                    }
                }
            }
        }
        self.written_upto = last;
        if every_batch {
            self.synced_upto = last;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn sync_if_due(&mut self, now: bool) -> io::Result<()> {
        if self.synced_upto >= self.written_upto {
            return Ok(());
        }
        if !now && self.last_sync.elapsed() < self.options.fsync_interval {
            return Ok(());
        }
        let Some(seg) = self.segment.as_ref() else {
            self.synced_upto = self.written_upto;
            return Ok(());
        };
        if let Err(e) = seg.file.sync_data() {
            // The entries were acknowledged at write time; what the page
            // cache still holds is unknown, so the segment is not reused.
            self.abandon_segment();
            self.synced_upto = self.written_upto;
            return Err(e);
        }
        self.synced_upto = self.written_upto;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn rotate_if_due(&mut self) -> io::Result<()> {
        let due = self.segment.as_ref().is_some_and(|s| {
            s.payload_rows > 0
                && (s.rows >= self.options.max_rows
                    || s.len >= self.options.max_bytes
                    || s.created.elapsed() >= self.options.max_age)
        });
        if due {
            self.sync_if_due(true)?;
            if let Some(seg) = self.segment.take() {
                self.handover.push(seg.path);
            }
        }
        if !self.handover.is_empty() && !self.open.is_empty() && self.segment.is_none() {
            // Carry the open sessions before the closed segment may go.
            self.open_segment()?;
        }
        self.hand_over(None);
        Ok(())
    }

    /// Sends closed segments to compaction once their open sessions are
    /// carried by the current segment (or there are none).
    fn hand_over(&mut self, finish: Option<Finish>) {
        if !self.open.is_empty() && self.segment.is_none() && finish.is_none() {
            return;
        }
        let count = self.handover.len();
        for (i, path) in self.handover.drain(..).enumerate() {
            let finish = if i + 1 == count { finish } else { None };
            let sent = self
                .closed
                .as_ref()
                .map(|tx| tx.send(ClosedSegment { path, finish }));
            if !matches!(sent, Some(Ok(()))) {
                tracing::warn!("audit compactor gone; segment left for recovery");
            }
        }
    }

    fn abandon_segment(&mut self) {
        if let Some(seg) = self.segment.take() {
            tracing::warn!(segment = %seg.path.display(), "audit segment abandoned after an error");
            self.handover.push(seg.path);
        }
    }

    /// Creates a segment that starts with the sessions still open.
    fn open_segment(&mut self) -> io::Result<()> {
        let path = self
            .options
            .dir
            .join(format!("{}.{SEGMENT_EXT}", Uuid::now_v7().simple()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut buf = MAGIC.to_vec();
        let mut rows = 0;
        for session in self.open.values() {
            if encode(&Entry::SessionOpened(session.clone()), &mut buf).is_ok() {
                rows += 1;
            }
        }
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        let written = written.and_then(|()| sync_dir(&self.options.dir));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.segment = Some(Segment {
            path,
            file,
            len: buf.len() as u64,
            rows,
            payload_rows: 0,
            created: Instant::now(),
        });
        Ok(())
    }

    /// Shutdown: one last write and sync, then the current segment goes to
    /// compaction with its open sessions ended. On failure everything stays
    /// on disk for recovery at the next start.
    fn finish(&mut self) {
        let result = self.write_pending().and_then(|()| self.sync_if_due(true));
        match result {
            Ok(()) => self.succeeded(),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    lost = self.pending.len(),
                    "audit spool cannot be written at shutdown"
                );
                return;
            }
        }
        if let Some(seg) = self.segment.take() {
            self.handover.push(seg.path);
        }
        let finish = Finish {
            end_reason: "gateway_shutdown",
            ended_at: now_micros(),
        };
        self.hand_over(Some(finish));
    }
}

/// fsyncs a directory so that a file created or renamed in it stays.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::tests::{session, statement};
    use proptest::prelude::*;

    fn sample(n: u64) -> Vec<Entry> {
        let id = Uuid::now_v7();
        let mut entries = vec![Entry::SessionOpened(session(id, 1_000))];
        entries.extend((1..=n).map(|seq| Entry::Statement(statement(id, seq, 2_000))));
        entries
    }

    fn segment_bytes(entries: &[Entry]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = MAGIC.to_vec();
        let mut ends = Vec::new();
        for e in entries {
            encode(e, &mut bytes).unwrap();
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn clean_segment_decodes_every_entry() {
        let entries = sample(5);
        let (bytes, _) = segment_bytes(&entries);
        let read = decode_segment(&bytes);
        assert_eq!(read.end, SegmentEnd::Clean);
        assert_eq!(read.entries, entries);
    }

    #[test]
    fn torn_tail_is_dropped_without_error() {
        let entries = sample(3);
        let (bytes, ends) = segment_bytes(&entries);
        let cut = bytes.len() - 5;
        let read = decode_segment(&bytes[..cut]);
        assert_eq!(read.entries, entries[..3]);
        assert_eq!(
            read.end,
            SegmentEnd::TornTail {
                offset: ends[2] as u64
            }
        );

        let mut zero_filled = bytes[..ends[1]].to_vec();
        zero_filled.extend_from_slice(&[0; 64]);
        let read = decode_segment(&zero_filled);
        assert_eq!(read.entries, entries[..2]);
        assert!(matches!(read.end, SegmentEnd::TornTail { .. }));
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption() {
        let entries = sample(3);
        let (mut bytes, ends) = segment_bytes(&entries);
        bytes[ends[0] + FRAME_HEADER + 3] ^= 0x20;
        let read = decode_segment(&bytes);
        assert_eq!(read.entries, entries[..1]);
        assert_eq!(
            read.end,
            SegmentEnd::Corrupt {
                offset: ends[0] as u64,
                reason: "checksum mismatch"
            }
        );
        let read = decode_segment(b"PK\x03\x04 something else entirely");
        assert!(matches!(read.end, SegmentEnd::Corrupt { offset: 0, .. }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any sequence of ever shorter truncations of a valid segment reads
        /// back as a prefix of its entries, holding every entry that was
        /// whole, and is never taken for corruption.
        #[test]
        fn truncations_recover_a_prefix(
            n in 1u64..12,
            cuts in proptest::collection::vec(0.0f64..1.0, 1..6),
        ) {
            let entries = sample(n);
            let (bytes, ends) = segment_bytes(&entries);
            let mut len = bytes.len();
            for cut in cuts {
                len = (len as f64 * cut) as usize;
                let read = decode_segment(&bytes[..len]);
                let whole = ends.iter().filter(|&&end| end <= len).count();
                let corrupt = matches!(read.end, SegmentEnd::Corrupt { .. });
                prop_assert!(!corrupt, "taken for corruption at {}", len);
                prop_assert_eq!(&read.entries[..], &entries[..whole]);
            }
        }
    }
}
