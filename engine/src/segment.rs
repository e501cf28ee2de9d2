//! One segment: a `.log` file of whole record batches starting at `base`,
//! with its in-memory sparse offset and time indexes.
//!
//! A segment is owned by its log, which is owned by one shard; it is not
//! shared across threads. Its in-memory state only ever describes bytes whose
//! write has completed: the log updates it after each write returns.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::io::{File, Fs};
use crate::offset_index::OffsetIndex;
use crate::time_index::TimeIndex;
use crate::types::{Epoch, FilePosition, Offset};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Kafka's file name for a segment file: the base offset in 20 digits.
pub fn file_name(base: Offset, suffix: &str) -> String {
    format!("{:020}.{suffix}", base.0)
}

/// The base offset encoded in a `.log` file name, if it is one.
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// Reads of a segment go through a window of file bytes, so that walking
/// batch headers costs one read per window rather than one per batch.
pub(crate) struct Window<'a> {
    file: &'a File,
    limit: u64,
    buf: Vec<u8>,
    buf_pos: u64,
    window: usize,
}

impl<'a> Window<'a> {
    pub(crate) fn new(file: &'a File, limit: u64, window: usize) -> Self {
        Window {
            file,
            limit,
            buf: Vec::new(),
            buf_pos: 0,
            window,
        }
    }

    /// Makes `[pos, pos + len)` available; `false` if it runs past the
    /// limit (or the file ends early).
    pub(crate) async fn ensure(&mut self, pos: u64, len: usize) -> io::Result<bool> {
        let end = pos.saturating_add(len as u64);
        if pos >= self.buf_pos && end <= self.buf_pos + self.buf.len() as u64 {
            return Ok(true);
        }
        if end > self.limit {
            return Ok(false);
        }
        let want = (len.max(self.window) as u64).min(self.limit - pos) as usize;
        self.buf = self.file.read_up_to(want, pos).await?;
        self.buf_pos = pos;
        Ok(self.buf.len() >= len)
    }

    /// Bytes made available by a successful [`Window::ensure`].
    pub(crate) fn slice(&self, pos: u64, len: usize) -> &[u8] {
        let start = (pos - self.buf_pos) as usize;
        &self.buf[start..start + len]
    }

    /// Takes `[pos, pos + len)`, made available by a successful
    /// [`Window::ensure`], out of the window without copying it when it is
    /// most of the buffer; a small slice of a large buffer is copied, so
    /// that a reply does not pin a mostly unused read buffer.
    pub(crate) fn take(self, pos: u64, len: usize) -> bytes::Bytes {
        let start = (pos - self.buf_pos) as usize;
        if len.saturating_mul(2) < self.buf.len() && self.buf.len() > 64 * 1024 {
            return bytes::Bytes::copy_from_slice(&self.buf[start..start + len]);
        }
        bytes::Bytes::from(self.buf).slice(start..start + len)
    }

    /// The header of the batch at `pos`, or `None` at the limit. Structure
    /// only; the CRC was checked when the batch was appended or recovered.
    pub(crate) async fn header_at(
        &mut self,
        pos: u64,
        max_batch_bytes: usize,
    ) -> Result<Option<BatchHeader>> {
        if !self
            .ensure(pos, HEADER_LEN)
            .await
            .map_err(|e| Error::io("reading a batch header", e))?
        {
            return Ok(None);
        }
        Ok(Some(BatchHeader::parse(
            self.slice(pos, HEADER_LEN),
            max_batch_bytes,
        )?))
    }
}

/// Why a recovery scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Clean end: every byte up to the end of the file is a valid batch.
    End,
    /// A batch (or header) runs past the end of the file: a torn write.
    Torn,
    /// The bytes at the stop position are not a valid batch.
    Invalid(String),
}

/// What a recovery scan of one segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanResult {
    /// Where the valid batches end.
    pub end: FilePosition,
    pub stop: ScanStop,
    pub batches: u64,
    /// The first batch of each leader epoch seen, in order.
    pub epoch_starts: Vec<(Epoch, Offset)>,
}

/// One segment of a log. Owned by one shard; not `Sync`.
#[derive(Debug)]
pub struct Segment {
    pub(crate) base: Offset,
    /// Shared with a background flush after the segment rolls.
    pub(crate) file: Rc<File>,
    /// Bytes of whole, written batches.
    pub(crate) size: u64,
    /// One past the last offset stored here; `base` while empty.
    pub(crate) next_offset: Offset,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    bytes_since_index_entry: u64,
    /// Largest batch max-timestamp seen and the first offset that reached
    /// it; `-1` while empty.
    pub(crate) max_timestamp: i64,
    pub(crate) max_timestamp_offset: Offset,
    /// The first batch's max timestamp, which `segment.ms` counts from.
    pub(crate) first_batch_timestamp: Option<i64>,
    /// When this process created or opened the segment; `segment.ms`
    /// counts from here when batches carry no timestamps.
    pub(crate) created_ms: u64,
    /// When this process last appended here (or opened the segment):
    /// `retention.ms` measures from here when batches carry no timestamps,
    /// where Kafka would use the file's modification time.
    pub(crate) last_append_ms: u64,
    /// Where the file's blocks are reserved up to, past its size (see
    /// [`Segment::reserve_ahead`]); `u64::MAX` once reserving failed.
    reserved: u64,
}

/// Least and most a segment reserves ahead of its appends.
const RESERVE_AHEAD_MIN: u64 = 256 * 1024;
const RESERVE_AHEAD_MAX: u64 = 8 << 20;

impl Segment {
    /// Before an append that ends at `end`: reserves the file's blocks
    /// ahead of it, as far again as the segment holds, between 256 KiB and
    /// 8 MiB and not past `limit` (where it rolls). A buffered write into
    /// blocks not yet allocated makes ext4 record each new page as a
    /// delayed allocation under the file's block-map lock, which the
    /// kernel's writeback holds while it allocates the blocks of the pages
    /// before: every append to a segment being written back then waits on
    /// that writeback, and the shard with it (measured: acks=all p99 of
    /// 37-73 ms at half the maximum with three brokers on one disk, from
    /// 7-12 ms without writeback). Into reserved blocks a write takes no
    /// such lock. The reservation keeps the file's size (`FALLOC_FL_KEEP_SIZE`),
    /// so reads and recovery see only what was written; a rolled segment
    /// gives back what it did not use. Best effort: where the filesystem
    /// cannot reserve, appends go on as before.
    pub(crate) fn reserve_ahead(&mut self, end: u64, limit: u64) {
        if end <= self.reserved {
            return;
        }
        let from = self.reserved.max(self.size);
        let ahead = end.clamp(RESERVE_AHEAD_MIN, RESERVE_AHEAD_MAX);
        let to = end.saturating_add(ahead).min(limit.max(end));
        self.reserved = match self.file.reserve(from, to - from) {
            Ok(()) => to,
            Err(_) => u64::MAX,
        };
    }

    pub(crate) fn path(dir: &Path, base: Offset, suffix: &str) -> PathBuf {
        dir.join(file_name(base, suffix))
    }

    pub(crate) fn new(base: Offset, file: File, config: &LogConfig, now_ms: u64) -> Segment {
        let max_entries = config.max_index_entries();
        Segment {
            base,
            file: Rc::new(file),
            size: 0,
            next_offset: base,
            index: OffsetIndex::new(base, max_entries),
            time_index: TimeIndex::new(base, max_entries * 8 / 12),
            bytes_since_index_entry: 0,
            max_timestamp: -1,
            max_timestamp_offset: base,
            first_batch_timestamp: None,
            created_ms: now_ms,
            last_append_ms: now_ms,
            reserved: 0,
        }
    }

    /// Creates an empty segment file. The caller syncs the directory.
    pub(crate) async fn create(
        fs: &Fs,
        dir: &Path,
        base: Offset,
        config: &LogConfig,
        now_ms: u64,
    ) -> Result<Segment> {
        let path = Segment::path(dir, base, LOG_SUFFIX);
        let file = fs
            .open(&path, true)
            .await
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.set_len(0)
            .await
            .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
        Ok(Segment::new(base, file, config, now_ms))
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether appending `bytes` more, whose newest timestamp is
    /// `incoming_timestamp`, must go to a new segment instead. As in Kafka,
    /// `segment.ms` compares the incoming timestamp with the first batch's,
    /// and falls back to wall-clock age when batches carry no timestamps.
    pub(crate) fn should_roll(
        &self,
        bytes: u64,
        incoming_timestamp: i64,
        now_ms: u64,
        config: &LogConfig,
    ) -> bool {
        if self.is_empty() {
            return false;
        }
        let too_big = self.size.saturating_add(bytes) > config.segment_bytes;
        let too_old = config.segment_ms.is_some_and(|max_age| {
            let waited = match self.first_batch_timestamp {
                Some(first) if first >= 0 => incoming_timestamp.saturating_sub(first),
                _ => now_ms.saturating_sub(self.created_ms) as i64,
            };
            waited >= max_age as i64
        });
        // Relative offsets in the indexes are 32-bit; leave room for any one
        // batch (at most i32::MAX records).
        let offsets_exhausted = self.next_offset.0 - self.base.0 > i64::from(u32::MAX / 2);
        too_big || too_old || self.index.is_full() || self.time_index.is_full() || offsets_exhausted
    }

    /// Accounts for a batch whose bytes now sit at `position` in the file.
    pub(crate) fn on_batch_written(
        &mut self,
        header: &BatchHeader,
        position: FilePosition,
        index_interval_bytes: u64,
    ) {
        debug_assert_eq!(position.0, self.size, "batches are contiguous");
        debug_assert!(header.base_offset >= self.next_offset.0);
        let len = header.total_len() as u64;
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_offset = Offset(header.base_offset);
        }
        // As in Kafka, the time index gets an entry (the maximum so far)
        // only when the offset index does, so both stay sparse.
        if self.bytes_since_index_entry >= index_interval_bytes || self.index.is_empty() {
            self.index.append(Offset(header.base_offset), position);
            self.time_index
                .maybe_append(self.max_timestamp, self.max_timestamp_offset);
            self.bytes_since_index_entry = 0;
        }
        self.first_batch_timestamp
            .get_or_insert(header.max_timestamp);
        self.bytes_since_index_entry += len;
        self.size = position.0 + len;
        self.next_offset = Offset(header.last_offset() + 1);
    }

    /// Validates batches from `position` to the end of the file (recovery),
    /// accounting for each valid one. Stops at the first torn or invalid
    /// batch and says why; the caller truncates there.
    pub(crate) async fn scan(
        &mut self,
        position: FilePosition,
        file_len: u64,
        config: &LogConfig,
    ) -> Result<ScanResult> {
        let chunk = (config.max_batch_bytes + HEADER_LEN).max(1 << 20);
        let mut window = Window::new(&self.file, file_len, chunk);
        let mut pos = position.0;
        let mut batches = Vec::new();
        let stop = loop {
            if pos == file_len {
                break ScanStop::End;
            }
            let ctx = |e| Error::io("recovery read", e);
            if !window.ensure(pos, HEADER_LEN).await.map_err(ctx)? {
                break ScanStop::Torn;
            }
            let header =
                match BatchHeader::parse(window.slice(pos, HEADER_LEN), config.max_batch_bytes) {
                    Ok(h) => h,
                    Err(e) => break ScanStop::Invalid(e.to_string()),
                };
            let total = header.total_len();
            if !window.ensure(pos, total).await.map_err(ctx)? {
                break ScanStop::Torn;
            }
            if let Err(e) = batch::validate(window.slice(pos, total), config.max_batch_bytes) {
                break ScanStop::Invalid(e.to_string());
            }
            let expected = batches
                .last()
                .map(|(h, _): &(BatchHeader, u64)| h.last_offset() + 1)
                .unwrap_or(self.next_offset.0);
            if header.base_offset != expected {
                break ScanStop::Invalid(format!(
                    "batch at position {pos} has base offset {} but offsets continue from {expected}",
                    header.base_offset
                ));
            }
            if header.last_offset() - self.base.0 > i64::from(u32::MAX) {
                break ScanStop::Invalid(format!(
                    "offset {} is too far from the segment base {}",
                    header.last_offset(),
                    self.base
                ));
            }
            batches.push((header, pos));
            pos += total as u64;
        };
        let mut epoch_starts: Vec<(Epoch, Offset)> = Vec::new();
        for (header, at) in &batches {
            self.on_batch_written(header, FilePosition(*at), config.index_interval_bytes);
            let epoch = Epoch(header.partition_leader_epoch);
            if epoch.0 >= 0 && epoch_starts.last().is_none_or(|&(e, _)| e < epoch) {
                epoch_starts.push((epoch, Offset(header.base_offset)));
            }
        }
        Ok(ScanResult {
            end: FilePosition(pos),
            stop,
            batches: batches.len() as u64,
            epoch_starts,
        })
    }

    /// Restores the accounting of a segment whose bytes up to `size` were
    /// known flushed at the last checkpoint, from its persisted indexes.
    pub(crate) fn restore(
        &mut self,
        size: u64,
        next_offset: Offset,
        index: OffsetIndex,
        time_index: TimeIndex,
        max_timestamp: (i64, Offset),
    ) {
        self.size = size;
        self.next_offset = next_offset;
        self.index = index;
        self.time_index = time_index;
        self.max_timestamp = max_timestamp.0;
        self.max_timestamp_offset = max_timestamp.1;
        if size > 0 {
            self.first_batch_timestamp = Some(max_timestamp.0);
        }
        self.bytes_since_index_entry = match self.index.last() {
            Some((_, pos)) => size - pos.0,
            None => size,
        };
    }

    /// The position of the first batch whose last offset is at least
    /// `target`, with its header; `None` if every batch ends before it.
    pub(crate) async fn find(
        &self,
        target: Offset,
        max_batch_bytes: usize,
    ) -> Result<Option<(FilePosition, BatchHeader)>> {
        let mut pos = self.index.lookup(target).0;
        let mut window = Window::new(&self.file, self.size, 64 * 1024);
        while let Some(header) = window.header_at(pos, max_batch_bytes).await? {
            if header.last_offset() >= target.0 {
                return Ok(Some((FilePosition(pos), header)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Cuts the segment so that it ends before `offset` (a batch containing
    /// `offset` goes whole). Returns the new next offset.
    pub(crate) async fn truncate_to(
        &mut self,
        offset: Offset,
        config: &LogConfig,
    ) -> Result<Offset> {
        let Some((pos, header)) = self.find(offset, config.max_batch_bytes).await? else {
            return Ok(self.next_offset);
        };
        self.file
            .set_len(pos.0)
            .await
            .map_err(|e| Error::io("truncating a segment", e))?;
        self.size = pos.0;
        // Truncating also freed the blocks reserved past the end.
        self.reserved = self.reserved.min(self.size);
        self.next_offset = Offset(header.base_offset.min(self.next_offset.0)).max(self.base);
        self.index.truncate_to_position(pos);
        self.time_index.truncate_to(self.next_offset);
        (self.max_timestamp, self.max_timestamp_offset) =
            self.time_index.last().unwrap_or((-1, self.base));
        if self.is_empty() {
            self.first_batch_timestamp = None;
        }
        self.bytes_since_index_entry = match self.index.last() {
            Some((_, p)) => self.size - p.0,
            None => self.size,
        };
        // The truncated tail must not come back after a crash.
        self.file
            .sync_data()
            .await
            .map_err(|e| Error::io("syncing a truncated segment", e))?;
        Ok(self.next_offset)
    }

    /// Writes both index files in full and syncs them.
    pub(crate) async fn persist_indexes(&self, fs: &Fs, dir: &Path) -> Result<()> {
        write_files_synced(fs, self.index_files(dir)).await
    }

    /// Records the segment's final maximum timestamp in its time index, as
    /// Kafka does when a segment stops being active, so a reopened segment
    /// knows its maximum timestamp from the index alone.
    pub(crate) fn seal(&mut self) {
        if !self.is_empty() {
            self.time_index
                .maybe_append(self.max_timestamp, self.max_timestamp_offset);
        }
    }

    /// The index files' paths and contents, for writing elsewhere (a
    /// background flush after a roll).
    pub(crate) fn index_files(&self, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        vec![
            (
                Segment::path(dir, self.base, INDEX_SUFFIX),
                self.index.encode(),
            ),
            (
                Segment::path(dir, self.base, TIME_INDEX_SUFFIX),
                self.time_index.encode(),
            ),
        ]
    }

    /// Loads both index files, validating them against the segment; `None`
    /// if either is missing or implausible (the caller rebuilds by scan).
    pub(crate) async fn load_indexes(
        fs: &Fs,
        dir: &Path,
        base: Offset,
        size: u64,
        next_offset: Offset,
        config: &LogConfig,
    ) -> Result<Option<(OffsetIndex, TimeIndex)>> {
        let read = |suffix| {
            let path = Segment::path(dir, base, suffix);
            async move {
                fs.read_small(&path)
                    .await
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))
            }
        };
        let (Some(index_bytes), Some(time_bytes)) =
            (read(INDEX_SUFFIX).await?, read(TIME_INDEX_SUFFIX).await?)
        else {
            return Ok(None);
        };
        let max_entries = config.max_index_entries();
        let Ok(index) = OffsetIndex::decode(base, max_entries, &index_bytes, size) else {
            return Ok(None);
        };
        let Some(time_index) =
            TimeIndex::decode(base, max_entries * 8 / 12, &time_bytes, next_offset)
        else {
            return Ok(None);
        };
        Ok(Some((index, time_index)))
    }

    pub(crate) async fn remove_files(self, fs: &Fs, dir: &Path) -> Result<()> {
        let base = self.base;
        drop(self.file);
        remove_segment_files(fs, dir, base).await
    }
}

/// Writes each file in full and syncs it.
pub(crate) async fn write_files_synced(fs: &Fs, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    for (path, bytes) in files {
        let ctx = |e| Error::io(format!("writing {}", path.display()), e);
        let file = fs.open(&path, true).await.map_err(ctx)?;
        let len = bytes.len() as u64;
        if !bytes.is_empty() {
            file.write_all_at(bytes, 0).await.map_err(ctx)?;
        }
        file.set_len(len).await.map_err(ctx)?;
        file.sync_data().await.map_err(ctx)?;
    }
    Ok(())
}

/// Removes a segment's log and index files (absent ones are fine).
pub(crate) async fn remove_segment_files(fs: &Fs, dir: &Path, base: Offset) -> Result<()> {
    // The .log goes last: a crash in between leaves a segment whose index
    // files are missing (rebuilt on open), never orphaned index files.
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
        let path = Segment::path(dir, base, suffix);
        match fs.remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
    Ok(())
}
