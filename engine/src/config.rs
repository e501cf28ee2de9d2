//! Per-log configuration, with Kafka's names and defaults.

use crate::error::{Error, Result};

/// Kafka's `message.max.bytes` default: 1 MiB plus the batch overhead.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1_048_588;
/// Kafka's `index.interval.bytes` default.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
/// Kafka's `segment.index.bytes` default: 10 MiB of 8-byte entries.
pub const DEFAULT_SEGMENT_INDEX_BYTES: u64 = 10 * 1024 * 1024;
/// Kafka's `log.flush.offset.checkpoint.interval.ms` default.
pub const DEFAULT_RECOVERY_CHECKPOINT_INTERVAL_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Kafka's `producer.id.expiration.ms` default: one day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: u64 = DAY_MS;

/// How one partition's log behaves. Topic-level Kafka names in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment at this size [`segment.bytes`].
    pub segment_bytes: u64,
    /// Roll a segment this old, measured from its first batch's timestamp
    /// [`segment.ms`].
    pub segment_ms: Option<u64>,
    /// Bytes between sparse offset-index entries [`index.interval.bytes`].
    pub index_interval_bytes: u64,
    /// Size cap of one segment's offset index; the segment rolls when its
    /// index is full [`segment.index.bytes`].
    pub segment_index_bytes: u64,
    /// fsync after this many unflushed records; `None` never [`flush.messages`].
    pub flush_messages: Option<u64>,
    /// fsync when the oldest unflushed record is this old; `None` never
    /// [`flush.ms`].
    pub flush_ms: Option<u64>,
    /// Delete segments whose newest record is older than this; `None` keeps
    /// them forever [`retention.ms`].
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while the log is larger than this; `None`
    /// for no limit [`retention.bytes`].
    pub retention_bytes: Option<u64>,
    /// Largest accepted record batch [`max.message.bytes`].
    pub max_batch_bytes: usize,
    /// How often the recovery point is checkpointed after a flush.
    pub recovery_checkpoint_interval_ms: u64,
    /// An idempotent producer's state is forgotten this long after its last
    /// batch's timestamp, checked with retention (Kafka's broker-only
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// Bytes behind the log end kept in the page cache; older bytes are
    /// written back early and dropped once clean. `None` leaves both to the
    /// kernel (see [`crate::page_cache`]). Broker-wide, no topic name.
    pub page_cache_window: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            segment_index_bytes: DEFAULT_SEGMENT_INDEX_BYTES,
            flush_messages: None,
            flush_ms: None,
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            recovery_checkpoint_interval_ms: DEFAULT_RECOVERY_CHECKPOINT_INTERVAL_MS,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            page_cache_window: None,
        }
    }
}

/// Kafka's smallest `segment.bytes` (its legacy record overhead; a smaller
/// segment still takes one whole batch, since a segment never splits one)
/// and largest (file positions in the index are 32-bit).
pub const MIN_SEGMENT_BYTES: u64 = 14;
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(Error::InvalidConfig(format!(
                "segment.bytes must be in [{MIN_SEGMENT_BYTES}, {MAX_SEGMENT_BYTES}], got {}",
                self.segment_bytes
            )));
        }
        if self.segment_index_bytes < 8 {
            return Err(Error::InvalidConfig(format!(
                "segment.index.bytes must be at least 8, got {}",
                self.segment_index_bytes
            )));
        }
        if self.flush_messages == Some(0) {
            return Err(Error::InvalidConfig(
                "flush.messages must be at least 1".into(),
            ));
        }
        if self.producer_id_expiration_ms == 0 {
            return Err(Error::InvalidConfig(
                "producer.id.expiration.ms must be at least 1".into(),
            ));
        }
        if self.max_batch_bytes < crate::batch::HEADER_LEN {
            return Err(Error::InvalidConfig(format!(
                "max.message.bytes must be at least {}, got {}",
                crate::batch::HEADER_LEN,
                self.max_batch_bytes
            )));
        }
        Ok(())
    }

    /// Largest number of entries one segment's offset index may hold.
    pub fn max_index_entries(&self) -> usize {
        usize::try_from(self.segment_index_bytes / 8).unwrap_or(usize::MAX)
    }
}
