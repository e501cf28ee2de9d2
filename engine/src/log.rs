//! One partition's log: a directory of segments, its leader-epoch cache and
//! its recovery point.
//!
//! ```text
//! <dir>/00000000000000000000.log        batches, byte for byte as produced
//!       00000000000000000000.index      sparse offset index
//!       00000000000000000000.timeindex  time index
//!       00000000000000052812.log        the active segment (appends go here)
//!       ...
//!       leader-epoch-checkpoint         epoch → start offset
//!       recovery-point-checkpoint       what is known flushed
//! ```
//!
//! Owned by one shard and touched only from its thread (not `Sync`); the
//! async methods take `&mut self`, so one log never has two operations in
//! flight and its in-memory state always describes completed writes. The
//! one exception is an fsync begun with [`Log::begin_flush`]: it runs apart
//! so that the next appends are written meanwhile, and counts only once
//! [`Log::end_flush`] takes its outcome.
//!
//! Durability: appends land in the page cache. The flush policy decides when
//! the active segment is `fdatasync`ed; a roll and a clean close always
//! flush. Everything below the flushed offset survives power loss. The
//! recovery point (offset, segment, position, maximum timestamp) is
//! checkpointed on roll, on close and, after a flush, at most every
//! `recovery_checkpoint_interval_ms`; recovery scans only from there.
//!
//! A failed write or fsync takes the log offline (Kafka takes the whole log
//! directory offline): after a failed fsync the kernel may have dropped the
//! dirty pages, and retrying it would report success for data that is gone.
//! A full disk (ENOSPC) is the exception: the partial write is cut off again
//! and the log stays online, so appends resume once space is freed.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use compio::runtime::JoinHandle;
use futures_util::FutureExt;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::config::LogConfig;
use crate::epoch_cache::{self, EpochCache};
use crate::error::{Error, Result};
use crate::flush::FlushPolicy;
use crate::io::{FileRange, Fs};
use crate::io_warnings::{IoFailure, IoWarnLimiter, WARN_INTERVAL_MS};
use crate::offset_index::OffsetIndex;
use crate::producer_state::{BatchMeta, Check, ProducerState};
use crate::segment::{self, ScanStop, Segment, Window};
use crate::time_index::TimeIndex;
use crate::types::{Epoch, FilePosition, Offset};

pub const RECOVERY_POINT_FILE: &str = "recovery-point-checkpoint";

/// Producer-state snapshots: `<20-digit offset>.snapshot`, the state after
/// every batch below that offset.
const SNAPSHOT_SUFFIX: &str = ".snapshot";

/// A clean close writes a producer snapshot when the active segment holds
/// at least this much; below it, open walks the segment instead.
const SNAPSHOT_AT_CLOSE_BYTES: u64 = 1 << 20;

fn snapshot_name(offset: Offset) -> String {
    format!("{:020}{SNAPSHOT_SUFFIX}", offset.0)
}

/// Writes a producer snapshot. Snapshots only spare a walk at the next
/// open, so a failed write is logged, not fatal.
async fn write_snapshot(fs: &Fs, path: &Path, contents: Vec<u8>) {
    if let Err(e) = fs.replace_atomically(path, contents).await {
        warn!(path = %path.display(), error = %e, "writing a producer snapshot failed");
    }
}

fn parse_snapshot_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Offset))
        .flatten()
}
/// The log start offset when DeleteRecords moved it inside a segment.
pub const LOG_START_FILE: &str = "log-start-offset-checkpoint";

/// Who assigns the offsets of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendMode {
    /// The leader assigns offsets from the log end and stamps its epoch.
    Leader {
        epoch: Epoch,
        /// The log may keep the batches in memory for reads at its end
        /// ([`crate::tail`]): say so only when the records are most of
        /// the buffer they are a slice of, since keeping them keeps that
        /// buffer.
        keep: bool,
    },
    /// A follower keeps the leader's offsets and epochs; they must continue
    /// the log.
    Follower,
}

/// Whether an append may be acknowledged as surviving power loss. This is
/// the "persist before acknowledge" marker: a caller promising durability
/// must see `Flushed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the page cache: survives a process crash, not a power loss.
    PageCache,
    /// fsynced: survives a power loss.
    Flushed,
}

/// Whether a log's storage works, as the broker reports it to the
/// controller (Kafka's offline log directories, KIP-858).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StorageHealth {
    Ok,
    /// The last append hit ENOSPC; the next to succeed clears it.
    Full,
    /// A write or fsync failed: offline until the log is reopened.
    Offline,
}

/// The result of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub records: u64,
    /// The largest batch timestamp in the append.
    pub max_timestamp: i64,
    /// The broker's clock when the append happened (Kafka's
    /// `log_append_time`).
    pub log_append_time_ms: i64,
    /// The log start offset when the append was made (produce responses
    /// carry it).
    pub log_start_offset: Offset,
    pub durability: Durability,
}

/// Whole batches read from the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadResult {
    /// Concatenated batches, byte for byte as stored: the read buffer
    /// itself, not a copy of it.
    pub records: bytes::Bytes,
    /// The offset after the last batch returned (`from` if none).
    pub next_offset: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
}

/// Record bytes a [`Log::read_range`] found and did not copy.
#[derive(Debug, Clone)]
pub enum Unread {
    /// A range of a segment file, to be sent from the file.
    File(FileRange),
    /// The newest batches, as the buffers their append wrote
    /// ([`crate::tail`]), to be sent from there.
    Memory(Vec<Bytes>),
}

impl Unread {
    pub fn len(&self) -> usize {
        match self {
            Unread::File(range) => range.len,
            Unread::Memory(chunks) => chunks.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Header reads of [`Log::read_range`] go through a window this large: a
/// few batch headers at a time, not the batches.
const RANGE_WINDOW: usize = 4096;

/// Where the batches a read returns lie.
struct Located<'a> {
    seg: &'a Segment,
    window: Window<'a>,
    start: u64,
    taken: usize,
}

impl Located<'_> {
    /// The batches' bytes: from the window when it holds them, else read.
    async fn bytes(mut self) -> Result<Bytes> {
        let ctx = |e| Error::io("reading batches", e);
        Ok(
            if self
                .window
                .ensure(self.start, self.taken)
                .await
                .map_err(ctx)?
            {
                self.window.take(self.start, self.taken)
            } else {
                self.seg
                    .file
                    .read_exact_at(self.taken, self.start)
                    .await
                    .map_err(ctx)?
                    .into()
            },
        )
    }
}

/// What recovery did when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// The checkpointed recovery point recovery started from, if it was
    /// found and usable.
    pub recovery_point: Option<Offset>,
    pub segments_scanned: usize,
    pub bytes_scanned: u64,
    pub batches_recovered: u64,
    /// Bytes cut from the end of the log (torn or invalid).
    pub bytes_truncated: u64,
    /// Whole segments deleted because they followed the cut.
    pub segments_deleted: usize,
    /// Why the scan stopped early, if it did.
    pub truncation_reason: Option<String>,
    pub log_end_offset: Offset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecoveryPoint {
    offset: Offset,
    segment_base: Offset,
    position: FilePosition,
    max_timestamp: i64,
    max_timestamp_offset: Offset,
}

impl RecoveryPoint {
    fn encode(&self) -> Vec<u8> {
        format!(
            "1 {} {} {} {} {}\n",
            self.offset.0,
            self.segment_base.0,
            self.position.0,
            self.max_timestamp,
            self.max_timestamp_offset.0
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<RecoveryPoint> {
        let text = std::str::from_utf8(bytes).ok()?;
        let fields: Vec<i64> = text
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [1, offset, base, position, max_ts, max_ts_offset] = fields[..] else {
            return None;
        };
        if offset < base || position < 0 {
            return None;
        }
        Some(RecoveryPoint {
            offset: Offset(offset),
            segment_base: Offset(base),
            position: FilePosition(position as u64),
            max_timestamp: max_ts,
            max_timestamp_offset: Offset(max_ts_offset),
        })
    }
}

/// One partition's log. Owned by one shard.
#[derive(Debug)]
pub struct Log {
    fs: Fs,
    dir: PathBuf,
    config: LogConfig,
    /// Never empty; the last one is the active segment.
    segments: BTreeMap<Offset, Segment>,
    log_start: Offset,
    /// Everything below this offset has been fsynced.
    flushed: Offset,
    policy: FlushPolicy,
    epochs: EpochCache,
    /// The epoch cache has entries its checkpoint file lacks. Appends only
    /// set this; the checkpoint is written before the next recovery point,
    /// since recovery rebuilds the entries of the batches it scans.
    epochs_unpersisted: bool,
    last_checkpoint_ms: u64,
    offline: Option<String>,
    /// The last append failed with ENOSPC (cleared by the next that
    /// succeeds).
    full: bool,
    /// Bytes appended since the log was opened: only grows, whatever
    /// truncation or retention remove.
    appended_bytes: u64,
    /// Flushes of rolled segments in flight, oldest first, each with the
    /// offset below which everything is flushed once it completes.
    background_flushes: VecDeque<(Offset, JoinHandle<Result<()>>)>,
    /// Idempotent producers' recent batches, rebuilt from the log on open.
    producers: ProducerState,
    /// Rate limit of the warnings for failed appends and flushes.
    io_warnings: IoWarnLimiter,
    /// A [`FlushTicket`] is out and its [`Log::end_flush`] not yet called.
    flush_in_flight: bool,
    /// Bumped by every truncation: a flush begun before one must not move
    /// the flushed offset afterwards (its end may no longer exist).
    truncations: u64,
    /// What of the log's recent appends the page cache keeps.
    cache: crate::page_cache::CacheWindow,
    /// The page-cache calls in flight (one batch at a time).
    cache_calls: Option<crate::page_cache::Pending>,
    /// The newest batches as written, for reads at the log end.
    tail: crate::tail::Tail,
}

/// An fsync of a log's active segment begun by [`Log::begin_flush`], run
/// apart from the log so that appends go on while the disk flushes.
#[derive(Debug)]
pub struct FlushTicket {
    file: std::rc::Rc<crate::io::File>,
    truncations: u64,
    /// Where the flush ends (`point.offset`), as a recovery point in the
    /// segment it syncs.
    point: RecoveryPoint,
}

impl FlushTicket {
    /// Everything below this offset is durable once the ticket's flush
    /// succeeds.
    pub fn end(&self) -> Offset {
        self.point.offset
    }

    /// Runs the fsync; hand the outcome to [`Log::end_flush`].
    pub async fn run(self) -> FlushOutcome {
        let result = self.file.sync_data().await;
        FlushOutcome {
            truncations: self.truncations,
            point: self.point,
            result,
        }
    }
}

/// What a [`FlushTicket`]'s fsync came to.
#[derive(Debug)]
pub struct FlushOutcome {
    truncations: u64,
    point: RecoveryPoint,
    result: std::io::Result<()>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    pub async fn open(
        fs: Fs,
        dir: PathBuf,
        config: LogConfig,
        now_ms: u64,
    ) -> Result<(Log, RecoveryReport)> {
        config.validate()?;
        let ctx = |what: &str, e| Error::io(format!("{what} {}", dir.display()), e);
        fs.create_dir_all(&dir)
            .await
            .map_err(|e| ctx("creating", e))?;
        // The partition directory's own name must survive a power loss.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .await
                .map_err(|e| ctx("syncing the parent of", e))?;
        }
        let names = fs.list_dir(&dir).await.map_err(|e| ctx("listing", e))?;
        let mut bases = Vec::new();
        for name in &names {
            if name.ends_with(".tmp") {
                // A checkpoint replacement that did not finish.
                fs.remove_file(&dir.join(name))
                    .await
                    .map_err(|e| ctx("removing a temporary file in", e))?;
            } else if let Some(base) = segment::parse_log_file_name(name) {
                bases.push(base);
            }
        }
        bases.sort();
        let recovery_point = fs
            .read_small(&dir.join(RECOVERY_POINT_FILE))
            .await
            .map_err(|e| ctx("reading the recovery point of", e))?
            .and_then(|bytes| RecoveryPoint::decode(&bytes))
            .filter(|rp| bases.contains(&rp.segment_base));

        let config_window = config.page_cache_window;
        let mut log = Log {
            policy: FlushPolicy::new(config.flush_messages, config.flush_ms),
            fs,
            dir,
            config,
            segments: BTreeMap::new(),
            log_start: Offset::ZERO,
            flushed: Offset::ZERO,
            epochs: EpochCache::default(),
            epochs_unpersisted: false,
            last_checkpoint_ms: now_ms,
            offline: None,
            full: false,
            appended_bytes: 0,
            background_flushes: VecDeque::new(),
            producers: ProducerState::default(),
            io_warnings: IoWarnLimiter::default(),
            flush_in_flight: false,
            truncations: 0,
            cache: crate::page_cache::CacheWindow::new(config_window),
            cache_calls: None,
            tail: crate::tail::Tail::default(),
        };
        let report = log.recover(&bases, recovery_point, now_ms).await?;
        log.rebuild_producer_state().await?;
        if report.bytes_truncated > 0 || report.segments_deleted > 0 {
            warn!(
                dir = %log.dir.display(),
                bytes_truncated = report.bytes_truncated,
                segments_deleted = report.segments_deleted,
                reason = report.truncation_reason.as_deref().unwrap_or(""),
                log_end_offset = %report.log_end_offset,
                "recovery truncated the log"
            );
        } else if report.batches_recovered > 0 {
            info!(
                dir = %log.dir.display(),
                batches = report.batches_recovered,
                bytes = report.bytes_scanned,
                "recovery scanned the unflushed tail"
            );
        }
        Ok((log, report))
    }

    async fn recover(
        &mut self,
        bases: &[Offset],
        recovery_point: Option<RecoveryPoint>,
        now_ms: u64,
    ) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let scan_from_base = recovery_point.map_or(Offset(i64::MIN), |rp| rp.segment_base);
        // Segments recovery read and may have cut: made durable at the end.
        let mut scanned: Vec<Offset> = Vec::new();
        let mut epoch_starts = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = Segment::path(&self.dir, base, segment::LOG_SUFFIX);
            let ctx = |e| Error::io(format!("opening {}", path.display()), e);
            let file = self.fs.open(&path, false).await.map_err(ctx)?;
            let file_len = file.len().await.map_err(ctx)?;
            let mut seg = Segment::new(base, file, &self.config, now_ms);
            if let Some(prev) = self.segments.values().next_back() {
                seg.next_offset = seg.next_offset.max(prev.next_offset);
            }
            let mut start = FilePosition(0);
            if base < scan_from_base {
                if self.restore_flushed(&mut seg, file_len).await? {
                    self.segments.insert(base, seg);
                    continue;
                }
            } else if let Some(rp) = recovery_point.filter(|rp| rp.segment_base == base) {
                if self.restore_up_to(&mut seg, file_len, rp).await? {
                    start = rp.position;
                    report.recovery_point = Some(rp.offset);
                }
            }
            let scan = seg.scan(start, file_len, &self.config).await?;
            scanned.push(base);
            report.segments_scanned += 1;
            report.bytes_scanned += scan.end.0 - start.0;
            report.batches_recovered += scan.batches;
            epoch_starts.extend(scan.epoch_starts);
            let cut = file_len - scan.end.0;
            // A segment that lost its tail leaves a hole before the next
            // one, whose batches may have survived: the log ends at the hole.
            // (Valid only while nothing compacts: compaction leaves gaps.)
            let hole = bases
                .get(i + 1)
                .filter(|&&next_base| seg.next_offset != next_base);
            if scan.stop != ScanStop::End || cut > 0 || hole.is_some() {
                report.bytes_truncated += cut;
                report.truncation_reason = Some(match (&scan.stop, hole) {
                    (ScanStop::Torn, _) => {
                        format!("torn batch at position {} of segment {}", scan.end.0, base)
                    }
                    (ScanStop::Invalid(why), _) => format!(
                        "invalid batch at position {} of segment {}: {why}",
                        scan.end.0, base
                    ),
                    (ScanStop::End, Some(next_base)) => format!(
                        "segment {base} ends at offset {} but the next segment starts at {next_base}",
                        seg.next_offset
                    ),
                    (ScanStop::End, None) => "trailing bytes".to_string(),
                });
                seg.file
                    .set_len(scan.end.0)
                    .await
                    .map_err(|e| Error::io("truncating a torn segment", e))?;
                self.segments.insert(base, seg);
                for &later in &bases[i + 1..] {
                    let path = Segment::path(&self.dir, later, segment::LOG_SUFFIX);
                    if let Ok(file) = self.fs.open(&path, false).await {
                        report.bytes_truncated += file.len().await.unwrap_or(0);
                    }
                    report.segments_deleted += 1;
                    segment::remove_segment_files(&self.fs, &self.dir, later).await?;
                }
                break;
            }
            self.segments.insert(base, seg);
        }
        if self.segments.is_empty() {
            let seg =
                Segment::create(&self.fs, &self.dir, Offset::ZERO, &self.config, now_ms).await?;
            self.segments.insert(Offset::ZERO, seg);
            scanned.push(Offset::ZERO);
        }
        // Drop empty segments that a crash left behind before the active one.
        let empty_old: Vec<Offset> = self
            .segments
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, s)| s.is_empty())
            .map(|(b, _)| *b)
            .collect();
        for base in empty_old {
            if let Some(seg) = self.segments.remove(&base) {
                seg.remove_files(&self.fs, &self.dir).await?;
            }
        }
        self.log_start = self.first_segment().base;
        // DeleteRecords may have moved the start inside the first segment.
        let checkpointed = self
            .fs
            .read_small(&self.dir.join(LOG_START_FILE))
            .await
            .map_err(|e| Error::io("reading the log start offset", e))?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| {
                t.trim()
                    .strip_prefix("1 ")
                    .and_then(|o| o.parse::<i64>().ok())
            })
            .map(Offset);
        if let Some(start) = checkpointed {
            if start > self.log_start && start <= self.log_end_offset() {
                self.log_start = start;
            }
        }

        let checkpoint = self
            .fs
            .read_small(&self.dir.join(epoch_cache::CHECKPOINT_FILE))
            .await
            .map_err(|e| Error::io("reading the leader epoch checkpoint", e))?;
        self.epochs = checkpoint
            .and_then(|bytes| EpochCache::decode(&bytes))
            .unwrap_or_default();
        let log_end = self.log_end_offset();
        let mut epochs_changed = self.epochs.truncate_from_end(log_end);
        for (epoch, start) in epoch_starts {
            epochs_changed |= self.epochs.assign(epoch, start);
        }
        epochs_changed |= self.epochs.truncate_from_start(self.log_start);
        if epochs_changed {
            self.persist_epochs().await?;
        }

        // What recovery kept is made durable, and the next recovery starts
        // after it.
        if !scanned.is_empty() {
            let last_base = self.active().base;
            for seg in scanned.iter().filter_map(|b| self.segments.get(b)) {
                seg.file
                    .sync_data()
                    .await
                    .map_err(|e| Error::io("syncing a recovered segment", e))?;
                if seg.base != last_base {
                    seg.persist_indexes(&self.fs, &self.dir).await?;
                }
            }
            self.fs
                .sync_dir(&self.dir)
                .await
                .map_err(|e| Error::io("syncing the log directory", e))?;
        }
        self.flushed = log_end;
        self.checkpoint_recovery_point().await?;
        report.log_end_offset = log_end;
        Ok(report)
    }

    /// Rebuilds the idempotent-producer state: from the newest producer
    /// snapshot at or below the log end (written at each roll and at a
    /// clean close), then by walking the batch headers after it. Snapshots
    /// past the log end describe batches a truncation removed; they are
    /// deleted, durably, before anything can be appended over them.
    async fn rebuild_producer_state(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        let ctx = |what: &str, e| Error::io(format!("{what} {}", self.dir.display()), e);
        let names = self
            .fs
            .list_dir(&self.dir)
            .await
            .map_err(|e| ctx("listing", e))?;
        let mut offsets: Vec<Offset> = names
            .iter()
            .filter_map(|n| parse_snapshot_name(n))
            .collect();
        offsets.sort();
        let stale: Vec<Offset> = offsets.iter().copied().filter(|o| *o > end).collect();
        for o in &stale {
            self.fs
                .remove_file(&self.dir.join(snapshot_name(*o)))
                .await
                .map_err(|e| ctx("removing a stale producer snapshot in", e))?;
        }
        if !stale.is_empty() {
            self.fs
                .sync_dir(&self.dir)
                .await
                .map_err(|e| ctx("syncing", e))?;
        }
        let mut restored = None;
        for o in offsets.iter().rev().filter(|o| **o <= end) {
            let path = self.dir.join(snapshot_name(*o));
            let bytes = self
                .fs
                .read_small(&path)
                .await
                .map_err(|e| ctx("reading a producer snapshot in", e))?;
            match bytes.as_deref().and_then(ProducerState::decode) {
                Some(state) => {
                    restored = Some((*o, state));
                    break;
                }
                None => warn!(path = %path.display(), "ignoring a damaged producer snapshot"),
            }
        }
        let (from, mut state) = restored.unwrap_or_default();
        let max_batch = self.config.max_batch_bytes;
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(Offset::ZERO, |(base, _)| *base);
        for seg in self.segments.range(first..).map(|(_, seg)| seg) {
            let mut window = Window::new(&seg.file, seg.size, 1 << 20);
            let mut pos = 0;
            while let Some(header) = window.header_at(pos, max_batch).await? {
                if Offset(header.base_offset) >= from {
                    state.update(&header);
                }
                pos += header.total_len() as u64;
            }
        }
        state.commit();
        self.producers = state;
        // A snapshot, or a walk of a segment the log start lies inside, may
        // name producers whose batches are all below the log start.
        self.evict_producers_below_log_start();
        Ok(())
    }

    /// Deletes producer snapshots below the log start, keeping the newest.
    async fn prune_producer_snapshots(&mut self) {
        let Ok(names) = self.fs.list_dir(&self.dir).await else {
            return;
        };
        let mut offsets: Vec<Offset> = names
            .iter()
            .filter_map(|n| parse_snapshot_name(n))
            .collect();
        offsets.sort();
        offsets.pop();
        for o in offsets.into_iter().filter(|o| *o < self.log_start) {
            let path = self.dir.join(snapshot_name(o));
            if let Err(e) = self.fs.remove_file(&path).await {
                warn!(path = %path.display(), error = %e, "removing an old producer snapshot failed");
            }
        }
    }

    /// Restores a segment wholly below the recovery point from its index
    /// files, without reading its batches. Returns false if the indexes are
    /// missing or do not fit, in which case the caller scans it.
    async fn restore_flushed(&self, seg: &mut Segment, file_len: u64) -> Result<bool> {
        let Some((index, time_index)) = Segment::load_indexes(
            &self.fs,
            &self.dir,
            seg.base,
            file_len,
            Offset(i64::MAX),
            &self.config,
        )
        .await?
        else {
            return Ok(false);
        };
        // Walk the few batch headers after the last index entry to find
        // where the segment's offsets end, checking the walk lands exactly
        // on the end of the file.
        let mut pos = index.last().map_or(0, |(_, p)| p.0);
        let mut next = seg.next_offset;
        let mut window = Window::new(&seg.file, file_len, 64 * 1024);
        loop {
            match window.header_at(pos, self.config.max_batch_bytes).await {
                Ok(Some(header)) => {
                    next = Offset(header.last_offset() + 1);
                    pos += header.total_len() as u64;
                }
                Ok(None) => break,
                Err(Error::InvalidBatch(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if pos != file_len {
            return Ok(false);
        }
        let max_ts = time_index.last().unwrap_or((-1, seg.base));
        seg.restore(file_len, next, index, time_index, max_ts);
        Ok(true)
    }

    /// Restores the part of the recovery-point segment below the recovery
    /// point. Returns false (scan from the start) if that is not possible.
    async fn restore_up_to(
        &self,
        seg: &mut Segment,
        file_len: u64,
        rp: RecoveryPoint,
    ) -> Result<bool> {
        if rp.position.0 > file_len || rp.offset < seg.next_offset {
            return Ok(false);
        }
        if rp.position.0 == 0 {
            return Ok(true);
        }
        let Some((mut index, mut time_index)) = Segment::load_indexes(
            &self.fs,
            &self.dir,
            seg.base,
            file_len,
            Offset(i64::MAX),
            &self.config,
        )
        .await?
        else {
            return Ok(false);
        };
        index.truncate_to_position(rp.position);
        time_index.truncate_to(rp.offset);
        seg.restore(
            rp.position.0,
            rp.offset,
            index,
            time_index,
            (rp.max_timestamp, rp.max_timestamp_offset),
        );
        // segment.ms counts from the first batch's timestamp.
        let mut window = Window::new(&seg.file, rp.position.0, HEADER_LEN);
        if let Ok(Some(first)) = window.header_at(0, self.config.max_batch_bytes).await {
            seg.first_batch_timestamp = Some(first.max_timestamp);
        }
        Ok(true)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_start
    }

    /// The log end offset (LEO): the offset the next append gets.
    pub fn log_end_offset(&self) -> Offset {
        self.active().next_offset
    }

    /// Everything below this offset has been fsynced.
    pub fn flushed_offset(&self) -> Offset {
        self.flushed
    }

    /// Bytes appended since the log was opened, a count that only grows:
    /// two readings taken apart say how much was written between them.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.segments.keys().copied().collect()
    }

    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    /// Whether the log's storage works: offline (a failed write or fsync,
    /// until reopened), full (the last append hit ENOSPC), or fine.
    pub fn storage_health(&self) -> StorageHealth {
        if self.offline.is_some() {
            StorageHealth::Offline
        } else if self.full {
            StorageHealth::Full
        } else {
            StorageHealth::Ok
        }
    }

    pub fn epoch_cache(&self) -> &EpochCache {
        &self.epochs
    }

    /// Kafka's `OffsetForLeaderEpoch` answer for this log.
    pub fn end_offset_for_epoch(&self, epoch: Epoch) -> (Epoch, Offset) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// For a fetch from `fetch_offset` whose previous batch was written in
    /// `last_fetched_epoch` (KIP-595, Fetch v12+): where that epoch ends in
    /// this log, if the fetcher's log cannot be a prefix of this one (this
    /// log never had that epoch, or it ended before `fetch_offset`). The
    /// fetcher truncates there (`diverging_epoch` in the response). The
    /// offset is always below `fetch_offset`, so the fetcher moves.
    pub fn diverging(
        &self,
        last_fetched_epoch: Epoch,
        fetch_offset: Offset,
    ) -> Option<(Epoch, Offset)> {
        if last_fetched_epoch.0 < 0 {
            return None;
        }
        let (epoch, end) = self.end_offset_for_epoch(last_fetched_epoch);
        if epoch.0 < 0 {
            // Every epoch this log knows is newer. At or below the log start
            // nothing can be compared (retention may have taken the
            // fetcher's epoch away here): the offset check decides. Above
            // it the fetcher has batches of an epoch this log never had
            // there: it keeps no more than what precedes this log.
            return (fetch_offset > self.log_start).then_some((epoch, self.log_start));
        }
        (epoch < last_fetched_epoch || end < fetch_offset).then_some((epoch, end))
    }

    /// When a `flush.ms` flush falls due, if one is pending.
    pub fn next_flush_deadline_ms(&self) -> Option<u64> {
        if self.offline.is_some() {
            // Nothing will ever flush it; the shard must not wake for it.
            return None;
        }
        self.policy.next_deadline_ms()
    }

    /// Whether a rolled segment's background flush is still to be reaped.
    pub fn has_background_flushes(&self) -> bool {
        !self.background_flushes.is_empty()
    }

    /// Whether [`Log::maybe_flush`] may have anything to do, now or later: a
    /// `flush.ms` deadline pending (or a limit already reached), or a rolled
    /// segment's background flush to reap. A `flush.messages` count below
    /// its limit is not: only an append can reach it, and the append
    /// flushes. A shard visits only such logs between turns.
    /// While a [`FlushTicket`] is out, the policy waits for its end (which
    /// begins the next one if appends asked for it).
    pub fn has_flush_work(&self) -> bool {
        self.offline.is_none()
            && ((!self.flush_in_flight && self.policy.is_due(u64::MAX))
                || !self.background_flushes.is_empty())
    }

    /// Replaces the log's configuration (a topic config change). New limits
    /// apply from the next append, roll or retention check; segments already
    /// written are not rewritten.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.policy
            .set_limits(config.flush_messages, config.flush_ms);
        self.cache.set_window(config.page_cache_window);
        self.config = config;
        Ok(())
    }

    /// Changes the flush limits (a topic config change).
    pub fn set_flush_limits(&mut self, flush_messages: Option<u64>, flush_ms: Option<u64>) {
        self.config.flush_messages = flush_messages;
        self.config.flush_ms = flush_ms;
        self.policy.set_limits(flush_messages, flush_ms);
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn first_segment(&self) -> &Segment {
        self.segments
            .values()
            .next()
            .expect("a log always has an active segment")
    }

    /// Why the log is offline, as the error its operations now return.
    pub fn offline_error(&self) -> Option<Error> {
        self.check_online().err()
    }

    fn check_online(&self) -> Result<()> {
        match &self.offline {
            Some(reason) => Err(Error::Offline {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Logs a failed append or flush of the active segment as a warning
    /// naming the partition directory, the file and the error, at most once
    /// per error kind every `WARN_INTERVAL_MS` (see [`crate::io_warnings`]):
    /// a full disk fails every append, and the log line is how an operator
    /// learns why producers time out.
    fn warn_io(&mut self, what: &str, err: &Error, now_ms: u64) {
        let Some(kind) = IoFailure::of(err) else {
            return;
        };
        let Some(suppressed) = self.io_warnings.on_failure(kind, now_ms) else {
            return;
        };
        let file = Segment::path(&self.dir, self.active().base, segment::LOG_SUFFIX);
        let cause = std::error::Error::source(err).map(|c| c.to_string());
        warn!(
            dir = %self.dir.display(),
            file = %file.display(),
            error = %err,
            cause = cause.as_deref().unwrap_or(""),
            kind = ?kind,
            suppressed,
            "{what} failed (the next such warning for this partition in {} s at the earliest)",
            WARN_INTERVAL_MS / 1000
        );
    }

    /// Takes the log offline after `err`, logging why, and returns `err`.
    fn fail(&mut self, err: Error) -> Error {
        if self.offline.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "log is going offline");
            self.offline = Some(err.to_string());
        }
        err
    }

    /// Appends one request's batches (one or more concatenated v2 batches).
    pub async fn append(
        &mut self,
        records: impl Into<Bytes>,
        mode: AppendMode,
        now_ms: u64,
    ) -> Result<AppendInfo> {
        self.append_group(vec![(records.into(), mode)], now_ms)
            .await
            .pop()
            .unwrap_or(Err(Error::InvalidConfig("empty append group".into())))
    }

    /// Appends several requests in one go (group commit): one vectored
    /// write per segment touched and at most one fsync of the active segment
    /// (a roll in between flushes the old one in the background), with a
    /// result per request in order. A request that fails validation fails alone; an I/O error
    /// fails every request not yet written.
    /// The request bytes are never copied: a leader's offsets and epoch go
    /// into a patched copy of each batch's header, written before the rest
    /// of the batch in the same vectored write.
    pub async fn append_group(
        &mut self,
        requests: Vec<(Bytes, AppendMode)>,
        now_ms: u64,
    ) -> Vec<Result<AppendInfo>> {
        let (mut results, flush_due) = self.append_group_unflushed(requests, now_ms).await;
        if flush_due {
            if let Err(e) = self.flush(now_ms).await {
                // The data is in the page cache but not durable; the caller
                // must not be told it was appended as asked.
                for r in results.iter_mut() {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        let flushed = self.flushed;
        for info in results.iter_mut().flatten() {
            if info.last_offset < flushed {
                info.durability = Durability::Flushed;
            }
        }
        results
    }

    /// [`Log::append_group`] without its flush: writes the group and says
    /// whether the flush policy wants a flush now (`true`: every `Ok` result
    /// must wait for a flush past its last offset before it is acknowledged
    /// as the policy promises). The caller flushes, or begins a
    /// [`FlushTicket`] and appends the next group while the disk works.
    pub async fn append_group_unflushed(
        &mut self,
        requests: Vec<(Bytes, AppendMode)>,
        now_ms: u64,
    ) -> (Vec<Result<AppendInfo>>, bool) {
        let mut results: Vec<Result<AppendInfo>> = Vec::with_capacity(requests.len());
        if let Err(e) = self.check_online() {
            return (requests.iter().map(|_| Err(e.clone())).collect(), false);
        }
        if let Err(e) = self.reap_background_flushes(false).await {
            return (requests.iter().map(|_| Err(e.clone())).collect(), false);
        }
        // Batches staged for the active segment: bytes, their headers and
        // positions, and which results they belong to.
        let mut staged = Staged::default();
        let mut next = self.log_end_offset();
        let mut failure: Option<Error> = None;
        for (records, mode) in requests {
            if let Some(err) = &failure {
                results.push(Err(err.clone()));
                continue;
            }
            let headers = match self.parse_append(&records) {
                Ok(h) => h,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let bytes = records.len() as u64;
            let incoming_timestamp = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1);
            // Roll before this request touches the producer state, so the
            // write of what is staged commits only what it wrote.
            if self.active().should_roll(
                staged.len + bytes,
                incoming_timestamp,
                now_ms,
                &self.config,
            ) {
                if let Err(e) = self.write_staged(&mut staged, &mut results, now_ms).await {
                    failure = Some(e.clone());
                    results.push(Err(e));
                    continue;
                }
                if let Err(e) = self.roll(now_ms).await {
                    failure = Some(e.clone());
                    results.push(Err(e));
                    continue;
                }
            }
            let (headers, bufs) = match self.assign(&records, headers, mode, next) {
                Ok(Validated::Append(h, bufs)) => (h, bufs),
                Ok(Validated::Duplicate(meta)) => {
                    // A retry of a batch already in the log: its original
                    // offsets, nothing appended (Kafka's answer).
                    results.push(Ok(AppendInfo {
                        base_offset: meta.first_offset,
                        last_offset: meta.last_offset,
                        records: 0,
                        max_timestamp: -1,
                        log_append_time_ms: now_ms as i64,
                        log_start_offset: self.log_start,
                        durability: Durability::PageCache,
                    }));
                    continue;
                }
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let last = headers.last().map_or(next, |h| Offset(h.last_offset()));
            let info = AppendInfo {
                base_offset: Offset(headers.first().map_or(next.0, |h| h.base_offset)),
                last_offset: last,
                records: headers.iter().map(|h| h.record_count() as u64).sum(),
                max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
                log_append_time_ms: now_ms as i64,
                log_start_offset: self.log_start,
                durability: Durability::PageCache,
            };
            next = last.plus(1);
            let keep = matches!(mode, AppendMode::Leader { keep: true, .. });
            staged.push(bufs, headers, results.len(), keep);
            results.push(Ok(info));
        }
        if failure.is_none() {
            if let Err(e) = self.write_staged(&mut staged, &mut results, now_ms).await {
                failure = Some(e);
            }
        }
        let appended: u64 = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|i| i.records)
            .sum();
        let due = failure.is_none() && appended > 0 && self.policy.on_append(appended, now_ms);
        (results, due)
    }

    /// Checks that one request's bytes are whole, valid v2 batches within
    /// the size limit. Changes nothing.
    fn parse_append(&self, records: &[u8]) -> Result<Vec<BatchHeader>> {
        let max = self.config.max_batch_bytes;
        if records.is_empty() {
            return Err(batch::BatchError::Truncated {
                needed: batch::HEADER_LEN,
                available: 0,
            }
            .into());
        }
        let mut headers = Vec::new();
        for item in batch::batches(records, usize::MAX) {
            let (header, _) = item?;
            if header.total_len() > max {
                return Err(Error::BatchTooLarge {
                    size: header.total_len(),
                    max,
                });
            }
            headers.push(header);
        }
        Ok(headers)
    }

    /// Checks an idempotent producer's sequence, and for a leader assigns
    /// offsets and the epoch by patching a copy of each batch's header;
    /// records the batches in the producer state (taken back if their write
    /// fails). Returns the buffers to write: for a leader, each batch's
    /// patched header then the rest of it, sliced from `records`; for a
    /// follower, `records` as they are.
    fn assign(
        &mut self,
        records: &Bytes,
        mut headers: Vec<BatchHeader>,
        mode: AppendMode,
        next: Offset,
    ) -> Result<Validated> {
        // A follower takes the leader's batches as they are, several of one
        // producer's at a time; their sequences were checked by the leader,
        // and they enter this replica's producer state below all the same,
        // so a producer that retries against it as the next leader gets
        // its original offsets.
        let first = headers
            .iter()
            .find(|h| h.producer_id >= 0 && h.base_sequence >= 0)
            .filter(|_| mode != AppendMode::Follower);
        if let Some(first) = first {
            // Kafka's rule: a request from an idempotent producer carries
            // exactly one batch per partition.
            if headers.len() != 1 {
                return Err(Error::InvalidRecord(format!(
                    "producer {} sent {} batches in one request; idempotent producers send one",
                    first.producer_id,
                    headers.len()
                )));
            }
            {
                match self.producers.check(first) {
                    Check::Append => {}
                    Check::Duplicate(meta) => return Ok(Validated::Duplicate(meta)),
                    Check::Fenced { epoch, current } => {
                        return Err(Error::InvalidProducerEpoch {
                            producer_id: first.producer_id,
                            epoch,
                            current,
                        })
                    }
                    Check::OutOfOrder { expected, got } => {
                        return Err(Error::OutOfOrderSequence {
                            producer_id: first.producer_id,
                            expected,
                            got,
                        })
                    }
                }
            }
        }
        let mut bufs = Vec::new();
        match mode {
            AppendMode::Leader { epoch, .. } => {
                let mut pos = 0;
                let mut offset = next;
                bufs.reserve(headers.len() * 2);
                for header in headers.iter_mut() {
                    let end = pos + header.total_len();
                    let head_end = pos + batch::HEADER_LEN;
                    let mut head = records
                        .get(pos..head_end)
                        .ok_or(batch::BatchError::Truncated {
                            needed: head_end,
                            available: records.len(),
                        })?
                        .to_vec();
                    batch::patch(&mut head, offset.0, epoch.0)?;
                    bufs.push(Bytes::from(head));
                    bufs.push(records.slice(head_end..end));
                    header.base_offset = offset.0;
                    header.partition_leader_epoch = epoch.0;
                    offset = Offset(header.last_offset() + 1);
                    pos = end;
                }
            }
            AppendMode::Follower => {
                let mut expected = next;
                for header in &headers {
                    // Offsets must continue the log exactly: nothing here
                    // compacts, and recovery treats a gap as lost data.
                    if header.base_offset != expected.0 {
                        return Err(Error::NonContiguousAppend {
                            first: Offset(header.base_offset),
                            log_end: expected,
                        });
                    }
                    expected = Offset(header.last_offset() + 1);
                }
                bufs.push(records.clone());
            }
        }
        // Taken back if the write fails (see write_staged).
        for header in &headers {
            self.producers.update(header);
        }
        Ok(Validated::Append(headers, bufs))
    }

    /// Writes the staged batches to the active segment and accounts for
    /// them. On error the segment is cut back to where it was.
    async fn write_staged(
        &mut self,
        staged: &mut Staged,
        results: &mut [Result<AppendInfo>],
        now_ms: u64,
    ) -> Result<()> {
        if staged.len == 0 {
            return Ok(());
        }
        let Staged {
            bufs,
            headers,
            owners,
            len,
            unkept,
        } = std::mem::take(staged);
        let start = self.active().size;
        let limit = self.config.segment_bytes;
        self.active_mut()
            .reserve_ahead(start.saturating_add(len), limit);
        let written = self.active().file.write_vectored_all_at(bufs, start).await;
        // The buffers written, shared (not copied) with the tail.
        match &written {
            Ok(bufs) if !unkept => {
                let batches = headers
                    .iter()
                    .map(|h| (h.base_offset, h.last_offset(), h.total_len()));
                let before = Offset(headers.first().map_or(0, |h| h.base_offset));
                let segment = self.active().base;
                self.tail.push(segment, before, batches, bufs);
            }
            _ => self.tail.clear(),
        }
        self.full = matches!(
            &written,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC)
        );
        if written.is_ok() {
            self.appended_bytes += len;
            self.producers.commit();
        } else {
            self.producers.rollback();
        }
        if let Err(io_err) = written {
            let err = Error::io("appending to the active segment", io_err);
            self.warn_io("an append", &err, now_ms);
            for &owner in &owners {
                results[owner] = Err(err.clone());
            }
            if matches!(err, Error::NoSpace { .. }) {
                // Cut the partial write off so the file ends on a batch
                // boundary again; the log stays usable.
                if let Err(e) = self.active().file.set_len(start).await {
                    return Err(self.fail(Error::io("cutting off a partial write", e)));
                }
                return Err(err);
            }
            return Err(self.fail(err));
        }
        let base = self.active().base;
        self.cache.on_write(base, start, len, self.appended_bytes);
        self.start_cache_calls();
        let interval = self.config.index_interval_bytes;
        self.active_mut().last_append_ms = now_ms;
        let mut pos = start;
        let mut epoch_changed = false;
        for header in &headers {
            self.active_mut()
                .on_batch_written(header, FilePosition(pos), interval);
            pos += header.total_len() as u64;
            let epoch = Epoch(header.partition_leader_epoch);
            if epoch.0 >= 0 {
                epoch_changed |= self.epochs.assign(epoch, Offset(header.base_offset));
            }
        }
        // A new epoch is not checkpointed here: that is two fsyncs on the
        // append path of every partition a new leader takes over (Kafka
        // removed the same from its produce path, KAFKA-15046). Until the
        // next recovery point the batches themselves carry it.
        self.epochs_unpersisted |= epoch_changed;
        Ok(())
    }

    /// Hands the page-cache calls now due to the shard's cache thread,
    /// unless the last batch of them is still running (the next append
    /// asks again).
    fn start_cache_calls(&mut self) {
        if self.cache_calls.as_mut().is_some_and(|c| !c.is_finished()) {
            return;
        }
        self.cache_calls = None;
        let calls = self.cache.due();
        if calls.is_empty() || matches!(self.fs, Fs::Sim(_)) {
            return;
        }
        self.cache_calls = crate::page_cache::submit(self.dir.clone(), calls);
    }

    /// Waits for the page-cache calls in flight, then makes those due and
    /// waits for them too.
    pub async fn settle_page_cache(&mut self) {
        for _ in 0..2 {
            if let Some(calls) = self.cache_calls.take() {
                calls.wait().await;
            }
            self.start_cache_calls();
        }
    }

    /// Starts a new active segment at the log end. The old segment and its
    /// indexes are flushed by a background task on this shard, as Kafka
    /// flushes a rolled segment off the append path: fsyncing up to a
    /// gigabyte of dirty pages inline would stall the partition for seconds.
    /// The flushed offset and the recovery point move when it completes.
    /// Does nothing while the active segment is empty.
    pub async fn roll(&mut self, now_ms: u64) -> Result<()> {
        self.check_online()?;
        if self.active().is_empty() {
            return Ok(());
        }
        let base = self.log_end_offset();
        self.active_mut().seal();
        let old = self.active();
        let (file, size, indexes, fs) = (
            old.file.clone(),
            old.size,
            old.index_files(&self.dir),
            self.fs.clone(),
        );
        // The producer state as of the new segment's base, written once
        // the data below it is durable, off the append path.
        let snapshot = (self.dir.join(snapshot_name(base)), self.producers.encode());
        let dir = self.dir.clone();
        // The new file exists before the background task starts, so that
        // its directory sync covers the new segment's name.
        let created = Segment::create(&self.fs, &self.dir, base, &self.config, now_ms).await;
        let task = compio::runtime::spawn(async move {
            // Blocks reserved and not used go back; failing that only
            // leaves them taken until the segment is deleted.
            if let Err(e) = file.release_reserved(size).await {
                debug!(error = %e, "releasing a rolled segment's reserved blocks");
            }
            file.sync_data()
                .await
                .map_err(|e| Error::io("flushing a rolled segment", e))?;
            segment::write_files_synced(&fs, indexes).await?;
            write_snapshot(&fs, &snapshot.0, snapshot.1).await;
            // The new segment's name must survive a crash before any of its
            // data counts as flushed: every flush waits for this task first
            // (`reap_background_flushes`). Not on the append path: with
            // gigabytes dirty, ext4 commits the directory's journal
            // transaction only after writing back the data ordered before
            // it, and an inline sync here stalled the partition's appends
            // for 0.2-0.5 s at every roll (docs/BENCHMARKS.md).
            fs.sync_dir(&dir)
                .await
                .map_err(|e| Error::io("syncing the log directory after a roll", e))?;
            Ok(())
        });
        self.background_flushes.push_back((base, task));
        let seg = match created {
            Ok(seg) => seg,
            Err(e) => return Err(self.fail(e)),
        };
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Collects finished background flushes of rolled segments (all of
    /// them, waiting, when `wait` is set), moving the flushed offset and the
    /// recovery point. A failed one takes the log offline.
    pub async fn reap_background_flushes(&mut self, wait: bool) -> Result<()> {
        while let Some((_, task)) = self.background_flushes.front_mut() {
            let outcome = if wait {
                task.await
            } else {
                match task.now_or_never() {
                    Some(outcome) => outcome,
                    None => return Ok(()),
                }
            };
            let Some((base, _)) = self.background_flushes.pop_front() else {
                break;
            };
            match outcome {
                Ok(Ok(())) => {
                    self.flushed = self.flushed.max(base);
                    self.checkpoint_segment_start(base).await?;
                }
                Ok(Err(e)) => return Err(self.fail(e)),
                Err(_) => {
                    let err = Error::io(
                        "flushing a rolled segment",
                        std::io::Error::other("the background flush task panicked"),
                    );
                    return Err(self.fail(err));
                }
            }
        }
        Ok(())
    }

    /// fsyncs everything appended so far. A failure takes the log offline:
    /// the flush is never retried.
    pub async fn flush(&mut self, now_ms: u64) -> Result<()> {
        self.check_online()?;
        self.reap_background_flushes(true).await?;
        let end = self.log_end_offset();
        if self.flushed == end {
            return Ok(());
        }
        // Segments before the active one were flushed when they rolled.
        if let Err(e) = self.active().file.sync_data().await {
            return Err(self.fsync_failed(e, now_ms));
        }
        self.flushed = end;
        self.policy.on_flushed();
        if now_ms.saturating_sub(self.last_checkpoint_ms)
            >= self.config.recovery_checkpoint_interval_ms
        {
            self.last_checkpoint_ms = now_ms;
            self.checkpoint_recovery_point().await?;
        }
        Ok(())
    }

    /// Begins an fsync of everything appended so far without waiting for
    /// it: the returned ticket runs apart from the log (the shard spawns
    /// it), appends go on meanwhile, and [`Log::end_flush`] moves the
    /// flushed offset once it is done. `None` when there is nothing to
    /// flush, the log is offline, or a ticket is already out (one at a
    /// time: the next covers everything written while this one ran).
    pub fn begin_flush(&mut self) -> Option<FlushTicket> {
        let end = self.log_end_offset();
        if self.offline.is_some() || self.flush_in_flight || self.flushed >= end {
            return None;
        }
        self.flush_in_flight = true;
        // Appends from here on count toward the next flush.
        self.policy.on_flushed();
        Some(FlushTicket {
            file: self.active().file.clone(),
            truncations: self.truncations,
            point: self.log_end_point(),
        })
    }

    /// Takes in a [`FlushTicket`]'s outcome: on success everything below its
    /// end is flushed (once the rolled segments before it are too); on
    /// failure the log goes offline, as with [`Log::flush`].
    pub async fn end_flush(&mut self, outcome: FlushOutcome, now_ms: u64) -> Result<()> {
        self.flush_in_flight = false;
        if let Err(e) = outcome.result {
            return Err(self.fsync_failed(e, now_ms));
        }
        self.check_online()?;
        if outcome.truncations != self.truncations {
            // A truncation flushed what it kept itself.
            return Ok(());
        }
        // The ticket synced only its own segment; one rolled before it
        // began may still be flushing in the background.
        self.reap_background_flushes(true).await?;
        self.flushed = self
            .flushed
            .max(outcome.point.offset.min(self.log_end_offset()));
        if now_ms.saturating_sub(self.last_checkpoint_ms)
            < self.config.recovery_checkpoint_interval_ms
        {
            return Ok(());
        }
        if self.flushed == self.log_end_offset() {
            self.last_checkpoint_ms = now_ms;
            self.checkpoint_recovery_point().await?;
        } else if self.flushed == outcome.point.offset
            && self.active().base == outcome.point.segment_base
        {
            // Appends went on while the disk flushed, so the log end is
            // never flushed under a steady stream of them: the recovery
            // point is the ticket's end instead, inside the active segment.
            self.last_checkpoint_ms = now_ms;
            self.checkpoint_recovery_point_at(outcome.point).await?;
        }
        Ok(())
    }

    /// A failed fsync of the active segment: warned about, and the log
    /// goes offline (it is never retried).
    fn fsync_failed(&mut self, e: std::io::Error, now_ms: u64) -> Error {
        let err = Error::io("fsync of the active segment", e);
        self.warn_io("a flush", &err, now_ms);
        self.fail(err)
    }

    /// The log end as a recovery point in the active segment.
    fn log_end_point(&self) -> RecoveryPoint {
        let active = self.active();
        RecoveryPoint {
            offset: active.next_offset,
            segment_base: active.base,
            position: FilePosition(active.size),
            max_timestamp: active.max_timestamp,
            max_timestamp_offset: active.max_timestamp_offset,
        }
    }

    /// Runs a `flush.ms` flush if one is due.
    pub async fn maybe_flush(&mut self, now_ms: u64) -> Result<bool> {
        if self.offline.is_some() {
            return Ok(false);
        }
        self.reap_background_flushes(false).await?;
        if self.flush_in_flight || !self.policy.is_due(now_ms) {
            return Ok(false);
        }
        self.flush(now_ms).await.map(|()| true)
    }

    /// Records that everything before the segment starting at `base` is
    /// flushed: recovery then scans from that segment's start.
    async fn checkpoint_segment_start(&mut self, base: Offset) -> Result<()> {
        if self.flushed == self.log_end_offset() && self.background_flushes.is_empty() {
            return self.checkpoint_recovery_point().await;
        }
        if let Err(e) = self.persist_epochs_if_changed().await {
            return Err(self.fail(e));
        }
        let rp = RecoveryPoint {
            offset: base,
            segment_base: base,
            position: FilePosition(0),
            max_timestamp: -1,
            max_timestamp_offset: base,
        };
        self.fs
            .replace_atomically(&self.dir.join(RECOVERY_POINT_FILE), rp.encode())
            .await
            .map_err(|e| self.fail(Error::io("writing the recovery point", e)))
    }

    /// Persists the active segment's indexes and the recovery point. Only
    /// valid when everything is flushed.
    async fn checkpoint_recovery_point(&mut self) -> Result<()> {
        debug_assert_eq!(self.flushed, self.log_end_offset());
        self.checkpoint_recovery_point_at(self.log_end_point())
            .await
    }

    /// Persists the active segment's indexes and `rp`, a point in the
    /// active segment below which everything is flushed. Index entries past
    /// it are dropped again at recovery; the leader epochs past it are cut
    /// back to what recovery finds.
    async fn checkpoint_recovery_point_at(&mut self, rp: RecoveryPoint) -> Result<()> {
        debug_assert!(rp.offset <= self.flushed);
        debug_assert_eq!(rp.segment_base, self.active().base);
        debug_assert!(self.background_flushes.is_empty());
        if let Err(e) = self.persist_epochs_if_changed().await {
            return Err(self.fail(e));
        }
        let active = self.active();
        let result = async {
            active.persist_indexes(&self.fs, &self.dir).await?;
            self.fs
                .replace_atomically(&self.dir.join(RECOVERY_POINT_FILE), rp.encode())
                .await
                .map_err(|e| Error::io("writing the recovery point", e))
        }
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn persist_epochs(&mut self) -> Result<()> {
        self.fs
            .replace_atomically(
                &self.dir.join(epoch_cache::CHECKPOINT_FILE),
                self.epochs.encode(),
            )
            .await
            .map_err(|e| Error::io("writing the leader epoch checkpoint", e))?;
        self.epochs_unpersisted = false;
        Ok(())
    }

    /// Writes the epoch checkpoint if appends added entries since the last
    /// one. Called before every recovery point is written: entries below a
    /// recovery point are not rebuilt by the next recovery.
    async fn persist_epochs_if_changed(&mut self) -> Result<()> {
        if self.epochs_unpersisted {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that contains `from`, up to
    /// `max_bytes`, stopping before any batch that reaches `upper_bound`
    /// (the high watermark for consumers; `None` reads to the log end). With
    /// `min_one_batch`, a first batch larger than `max_bytes` is returned
    /// whole, as Kafka does so that a consumer can always make progress.
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        upper_bound: Option<Offset>,
        min_one_batch: bool,
    ) -> Result<ReadResult> {
        // The window reads ahead: the batches are read while their headers
        // are walked, and returned from the same buffer.
        let window_bytes = max_bytes.clamp(64 * 1024, 8 << 20) + 16 * 1024;
        let (mut result, found) = self
            .locate(
                from,
                max_bytes,
                upper_bound,
                min_one_batch,
                window_bytes,
                false,
            )
            .await?;
        if let Some(found) = found {
            result.records = found.bytes().await?;
        }
        Ok(result)
    }

    /// As [`Log::read`], for a caller that can send bytes without reading
    /// them (a Fetch response). Batches the log's tail still holds (a read
    /// at the log end) are returned as its buffers ([`Unread::Memory`]),
    /// neither read nor copied. Otherwise, when the batches found come to
    /// at least `range_min` bytes of a real file, they are returned as a
    /// [`FileRange`] and never read. Only their headers are: the walk jumps
    /// over whole batches by the offset index, so a megabyte of 64 KiB
    /// batches costs two or three small reads, not a megabyte copied.
    pub async fn read_range(
        &self,
        from: Offset,
        max_bytes: usize,
        upper_bound: Option<Offset>,
        min_one_batch: bool,
        range_min: usize,
    ) -> Result<(ReadResult, Option<Unread>)> {
        let log_end = self.log_end_offset();
        if self.offline.is_none() && from >= self.log_start && from < log_end {
            let end = upper_bound.map_or(log_end, |u| u.min(log_end));
            if let Some(read) = self.tail.read(from, max_bytes, end, min_one_batch) {
                let result = ReadResult {
                    records: Bytes::new(),
                    next_offset: read.next,
                    log_start_offset: self.log_start,
                    log_end_offset: log_end,
                };
                let unread = (read.len > 0).then_some(Unread::Memory(read.chunks));
                return Ok((result, unread));
            }
        }
        if range_min > max_bytes.max(self.config.max_batch_bytes) {
            // No range can come of it: read ahead as `read` does, headers
            // and batches in one go.
            let result = self
                .read(from, max_bytes, upper_bound, min_one_batch)
                .await?;
            return Ok((result, None));
        }
        let (mut result, found) = self
            .locate(
                from,
                max_bytes,
                upper_bound,
                min_one_batch,
                RANGE_WINDOW,
                true,
            )
            .await?;
        let Some(found) = found else {
            return Ok((result, None));
        };
        if found.taken >= range_min {
            if let Some(range) = found.seg.file.range(found.start, found.taken) {
                return Ok((result, Some(Unread::File(range))));
            }
        }
        result.records = found.bytes().await?;
        Ok((result, None))
    }

    /// Finds the batches a read returns: the result with everything but its
    /// records, and where they lie (`None`: no batch). Headers are read
    /// through a window of `window_bytes`; with `jump`, whole batches are
    /// skipped by the offset index (each jump checked against the header at
    /// its target).
    async fn locate(
        &self,
        from: Offset,
        max_bytes: usize,
        upper_bound: Option<Offset>,
        min_one_batch: bool,
        window_bytes: usize,
        jump: bool,
    ) -> Result<(ReadResult, Option<Located<'_>>)> {
        self.check_online()?;
        let log_end = self.log_end_offset();
        let mut result = ReadResult {
            records: bytes::Bytes::new(),
            next_offset: from,
            log_start_offset: self.log_start,
            log_end_offset: log_end,
        };
        if from < self.log_start || from > log_end {
            return Err(Error::OffsetOutOfRange {
                requested: from,
                log_start: self.log_start,
                log_end,
            });
        }
        let end = upper_bound.map_or(log_end, |u| u.min(log_end));
        if from >= end {
            return Ok((result, None));
        }
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(self.log_start, |(b, _)| *b);
        let max_batch = self.config.max_batch_bytes;
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            if seg.next_offset <= from {
                continue;
            }
            let mut window = Window::new(&seg.file, seg.size, window_bytes);
            let mut pos = seg.index.lookup(from).0;
            let start = loop {
                match window.header_at(pos, max_batch).await? {
                    None => break None,
                    Some(h) if h.last_offset() >= from.0 => break Some((pos, h)),
                    Some(h) => pos += h.total_len() as u64,
                }
            };
            let Some((start, first_header)) = start else {
                continue;
            };
            let mut taken = 0usize;
            let mut next = from;
            let mut header = Some(first_header);
            while let Some(h) = header {
                if h.last_offset() >= end.0 {
                    break;
                }
                let len = h.total_len();
                if taken + len > max_bytes && !(taken == 0 && min_one_batch) {
                    break;
                }
                taken += len;
                next = Offset(h.last_offset() + 1);
                if taken >= max_bytes {
                    break;
                }
                let walked = (taken, next);
                if jump {
                    let limit = start.saturating_add(max_bytes as u64);
                    let target = FilePosition(start + taken as u64);
                    if let Some((offset, to)) =
                        seg.index.last_within(target, FilePosition(limit), end)
                    {
                        taken = (to.0 - start) as usize;
                        next = offset;
                    }
                }
                let at = window.header_at(start + taken as u64, max_batch).await;
                header = if (taken, next) == walked {
                    at?
                } else {
                    match at {
                        Ok(Some(h)) if h.base_offset == next.0 => Some(h),
                        // The index named no batch boundary there (or one
                        // this read could not parse): walk instead.
                        _ => {
                            (taken, next) = walked;
                            window.header_at(start + taken as u64, max_batch).await?
                        }
                    }
                };
            }
            if taken == 0 {
                return Ok((result, None));
            }
            result.next_offset = next;
            let found = Located {
                seg,
                window,
                start,
                taken,
            };
            return Ok((result, Some(found)));
        }
        Ok((result, None))
    }

    /// Removes every batch from `offset` on (a follower truncating to the
    /// divergence point). A batch that contains `offset` goes whole, so the
    /// log may end before `offset`. Below the log start, the log is emptied
    /// and restarts at `offset`. The result is durable when this returns.
    pub async fn truncate_to(&mut self, offset: Offset, now_ms: u64) -> Result<()> {
        self.check_online()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        self.reap_background_flushes(true).await?;
        let result = self.truncate_inner(offset, now_ms).await;
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        self.rebuild_producer_state().await?;
        self.last_checkpoint_ms = now_ms;
        self.checkpoint_recovery_point().await
    }

    /// Empties the log and starts it again at `offset`, forgetting its
    /// leader epochs (Kafka's `truncateFullyAndStartAt`): for a follower
    /// whose log ends below its leader's log start, which retention or
    /// DeleteRecords moved past it. Durable when this returns.
    pub async fn restart_at(&mut self, offset: Offset, now_ms: u64) -> Result<()> {
        self.check_online()?;
        self.reap_background_flushes(true).await?;
        let epochs_had = !self.epochs.entries().is_empty();
        self.epochs = EpochCache::default();
        let mut result = self.truncate_inner_from(offset, true, now_ms).await;
        if result.is_ok() && epochs_had {
            result = self.persist_epochs().await;
        }
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        self.rebuild_producer_state().await?;
        self.last_checkpoint_ms = now_ms;
        self.checkpoint_recovery_point().await
    }

    async fn truncate_inner(&mut self, offset: Offset, now_ms: u64) -> Result<()> {
        self.truncate_inner_from(offset, false, now_ms).await
    }

    /// Removes the segments from `offset` on, or every segment if `all`.
    async fn truncate_inner_from(&mut self, offset: Offset, all: bool, now_ms: u64) -> Result<()> {
        self.tail.clear();
        let mut doomed: Vec<Offset> = self
            .segments
            .keys()
            .copied()
            .filter(|b| all || (*b >= offset && (*b > self.log_start || offset <= self.log_start)))
            .collect();
        // When every segment goes, the last one stays in memory (its files
        // removed) until its replacement exists: a log is never without an
        // active segment, so `log_end_offset()` and the rest cannot panic
        // if creating the replacement fails. The log then goes offline
        // (the caller's `fail`) and serves nothing from the old segment.
        let emptied = doomed.len() == self.segments.len();
        let kept = if emptied { doomed.pop() } else { None };
        for base in doomed {
            if let Some(seg) = self.segments.remove(&base) {
                seg.remove_files(&self.fs, &self.dir).await?;
            }
        }
        if let Some(old_base) = kept {
            segment::remove_segment_files(&self.fs, &self.dir, old_base).await?;
            let start = offset.max(Offset::ZERO);
            let seg = Segment::create(&self.fs, &self.dir, start, &self.config, now_ms).await?;
            self.segments.remove(&old_base);
            self.segments.insert(start, seg);
            self.log_start = start;
            self.persist_log_start().await?;
        } else {
            let config = self.config.clone();
            self.active_mut().truncate_to(offset, &config).await?;
        }
        self.fs
            .sync_dir(&self.dir)
            .await
            .map_err(|e| Error::io("syncing the log directory after truncation", e))?;
        let end = self.log_end_offset();
        self.flushed = end;
        self.truncations += 1;
        self.cache.forget();
        self.policy.on_flushed();
        let mut changed = self.epochs.truncate_from_end(end);
        changed |= self.epochs.truncate_from_start(self.log_start);
        if changed {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    /// Deletes whole segments that `retention.ms` or `retention.bytes` no
    /// longer keep, oldest first, and moves the log start. The active
    /// segment is rolled first if it has expired too. Returns how many
    /// segments went.
    pub async fn apply_retention(&mut self, now_ms: u64) -> Result<usize> {
        self.check_online()?;
        self.expire_producers(now_ms);
        self.reap_background_flushes(true).await?;
        let now = now_ms as i64;
        let expired = |seg: &Segment, retention_ms: Option<u64>| {
            let newest = if seg.max_timestamp >= 0 {
                seg.max_timestamp
            } else {
                seg.last_append_ms as i64
            };
            retention_ms.is_some_and(|r| !seg.is_empty() && newest < now.saturating_sub(r as i64))
        };
        let mut deleted = 0;
        if self.segments.len() == 1 && expired(self.active(), self.config.retention_ms) {
            self.roll_for_retention(now_ms).await?;
        }
        let mut total = self.size_bytes();
        loop {
            if self.segments.len() < 2 {
                break;
            }
            let oldest = self.first_segment();
            let by_time = expired(oldest, self.config.retention_ms);
            let by_size = self
                .config
                .retention_bytes
                .is_some_and(|limit| total.saturating_sub(oldest.size) >= limit);
            if !(by_time || by_size) {
                break;
            }
            let base = oldest.base;
            let size = oldest.size;
            if let Some(seg) = self.segments.remove(&base) {
                if let Err(e) = seg.remove_files(&self.fs, &self.dir).await {
                    return Err(self.fail(e));
                }
            }
            total -= size;
            deleted += 1;
            // The active segment may have expired too: roll so it can go.
            if self.segments.len() == 1 && expired(self.active(), self.config.retention_ms) {
                self.roll_for_retention(now_ms).await?;
            }
        }
        if deleted > 0 {
            self.log_start = self.log_start.max(self.first_segment().base);
            if let Err(e) = self.fs.sync_dir(&self.dir).await {
                return Err(self.fail(Error::io("syncing the log directory after retention", e)));
            }
            if self.epochs.truncate_from_start(self.log_start) {
                if let Err(e) = self.persist_epochs().await {
                    return Err(self.fail(e));
                }
            }
            info!(dir = %self.dir.display(), deleted, log_start_offset = %self.log_start, "retention deleted segments");
            self.evict_producers_below_log_start();
            self.prune_producer_snapshots().await;
        }
        Ok(deleted)
    }

    /// Forgets idempotent producers idle for `producer.id.expiration.ms`
    /// (measured from their last batch's timestamp), so that producers
    /// that come and go do not leave state behind forever. Runs with each
    /// retention check, as Kafka's expiry runs on its own timer.
    fn expire_producers(&mut self, now_ms: u64) {
        let expired = self.producers.remove_expired(
            i64::try_from(now_ms).unwrap_or(i64::MAX),
            self.config.producer_id_expiration_ms,
        );
        if expired > 0 {
            debug!(dir = %self.dir.display(), expired, "expired idle producer ids");
        }
    }

    /// Forgets producers whose every batch is below the log start now.
    fn evict_producers_below_log_start(&mut self) {
        let evicted = self.producers.evict_below(self.log_start);
        if evicted > 0 {
            debug!(dir = %self.dir.display(), evicted, log_start_offset = %self.log_start, "forgot producers whose batches are all below the log start");
        }
    }

    /// Rolls an expired active segment so that retention can delete it, and
    /// waits for its background flush: that task writes the segment's index
    /// files, and must not do so after retention has removed them.
    async fn roll_for_retention(&mut self, now_ms: u64) -> Result<()> {
        self.roll(now_ms).await?;
        self.reap_background_flushes(true).await
    }

    /// Kafka's DeleteRecords: moves the log start offset up to `offset` (at
    /// most the log end), so reads below it are out of range, and deletes
    /// the segments wholly below it. The new start is durable before it is
    /// visible. Returns the log start offset (the low watermark).
    pub async fn delete_records_before(&mut self, offset: Offset) -> Result<Offset> {
        self.check_online()?;
        let log_end = self.log_end_offset();
        if offset > log_end || offset.0 < 0 {
            return Err(Error::OffsetOutOfRange {
                requested: offset,
                log_start: self.log_start,
                log_end,
            });
        }
        if offset <= self.log_start {
            return Ok(self.log_start);
        }
        self.reap_background_flushes(true).await?;
        self.log_start = offset;
        if let Err(e) = self.persist_log_start().await {
            return Err(self.fail(e));
        }
        self.evict_producers_below_log_start();
        let doomed: Vec<Offset> = self
            .segments
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, seg)| seg.next_offset <= offset)
            .map(|(base, _)| *base)
            .collect();
        for base in &doomed {
            if let Some(seg) = self.segments.remove(base) {
                if let Err(e) = seg.remove_files(&self.fs, &self.dir).await {
                    return Err(self.fail(e));
                }
            }
        }
        if !doomed.is_empty() {
            if let Err(e) = self.fs.sync_dir(&self.dir).await {
                return Err(self.fail(Error::io(
                    "syncing the log directory after DeleteRecords",
                    e,
                )));
            }
            self.prune_producer_snapshots().await;
        }
        if self.epochs.truncate_from_start(self.log_start) {
            if let Err(e) = self.persist_epochs().await {
                return Err(self.fail(e));
            }
        }
        Ok(self.log_start)
    }

    async fn persist_log_start(&self) -> Result<()> {
        self.fs
            .replace_atomically(
                &self.dir.join(LOG_START_FILE),
                format!("1 {}\n", self.log_start.0).into_bytes(),
            )
            .await
            .map_err(|e| Error::io("writing the log start offset", e))
    }

    /// The first batch whose maximum timestamp is at least `timestamp`: its
    /// base offset and that timestamp (ListOffsets by time). Batch-granular:
    /// records are not decoded, so the offset is the batch's first.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(Offset, i64)>> {
        self.check_online()?;
        let max_batch = self.config.max_batch_bytes;
        for seg in self.segments.values() {
            if seg.is_empty() || seg.max_timestamp < timestamp {
                continue;
            }
            let from = seg.time_index.lookup(timestamp).max(self.log_start);
            let mut pos = seg.index.lookup(from).0;
            let mut window = Window::new(&seg.file, seg.size, 64 * 1024);
            while let Some(h) = window.header_at(pos, max_batch).await? {
                if h.max_timestamp >= timestamp && h.last_offset() >= self.log_start.0 {
                    let offset = Offset(h.base_offset).max(self.log_start);
                    return Ok(Some((offset, h.max_timestamp)));
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// The header of the batch holding the largest timestamp in the log
    /// (ListOffsets MAX_TIMESTAMP, KIP-734); the first such batch when
    /// several share it, as Kafka picks the first segment and batch. `None`
    /// for an empty log or one whose batches carry no timestamps. Records
    /// are not decoded: the caller finds the record within the batch.
    pub async fn max_timestamp_batch(&self) -> Result<Option<BatchHeader>> {
        self.check_online()?;
        let mut best: Option<&Segment> = None;
        for seg in self.segments.values() {
            if !seg.is_empty() && seg.max_timestamp > best.map_or(-1, |b| b.max_timestamp) {
                best = Some(seg);
            }
        }
        let Some(seg) = best else {
            return Ok(None);
        };
        // The batch is at or after the indexed position of the offset the
        // segment recorded; should that record be stale (a truncation keeps
        // the time index's last entry), the whole segment is scanned.
        let hinted = seg.index.lookup(seg.max_timestamp_offset).0;
        for start in [hinted, 0] {
            let mut pos = start;
            let mut window = Window::new(&seg.file, seg.size, 64 * 1024);
            while let Some(h) = window.header_at(pos, self.config.max_batch_bytes).await? {
                if h.max_timestamp == seg.max_timestamp {
                    return Ok(Some(h));
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// Flushes and checkpoints so the next open has nothing to recover.
    pub async fn close(mut self, now_ms: u64) -> Result<()> {
        if self.offline.is_some() {
            return self.check_online();
        }
        self.flush(now_ms).await?;
        self.checkpoint_recovery_point().await?;
        // Walking a small active segment at the next open is cheaper than
        // the two fsyncs of a snapshot (a broker closes every partition).
        if self.active().size >= SNAPSHOT_AT_CLOSE_BYTES {
            let path = self.dir.join(snapshot_name(self.log_end_offset()));
            write_snapshot(&self.fs, &path, self.producers.encode()).await;
        }
        Ok(())
    }

    /// Deletes the log and its directory.
    pub async fn delete(self) -> Result<()> {
        let Log {
            fs, dir, segments, ..
        } = self;
        drop(segments);
        fs.remove_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("deleting {}", dir.display()), e))
    }

    /// The idempotent-producer state, for tests and tools.
    pub fn producer_state(&self) -> &ProducerState {
        &self.producers
    }

    /// The in-memory index of a segment, for tests and tools.
    pub fn index_of(&self, base: Offset) -> Option<(&OffsetIndex, &TimeIndex)> {
        self.segments.get(&base).map(|s| (&s.index, &s.time_index))
    }
}

/// A request's batches after validation.
enum Validated {
    /// The batches' headers, and the buffers to write.
    Append(Vec<BatchHeader>, Vec<Bytes>),
    /// An idempotent producer's retry of a batch already in the log.
    Duplicate(BatchMeta),
}

/// Requests staged for one vectored write to the active segment: their
/// buffers are written as they came, without copying them together.
#[derive(Default)]
struct Staged {
    bufs: Vec<Bytes>,
    len: u64,
    headers: Vec<BatchHeader>,
    /// Index into the results of each request whose batches are staged.
    owners: Vec<usize>,
    /// A request staged may not be kept in the log's tail.
    unkept: bool,
}

impl Staged {
    fn push(&mut self, bufs: Vec<Bytes>, headers: Vec<BatchHeader>, owner: usize, keep: bool) {
        self.unkept |= !keep;
        self.len += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        self.bufs.extend(bufs);
        self.headers.extend(headers);
        self.owners.push(owner);
    }
}
