//! Sluice's log storage engine: Kafka record batches in segmented,
//! per-partition logs, served by thread-per-core shards on io_uring.
//!
//! # Layout
//!
//! - [`batch`]: the 61-byte v2 RecordBatch header: parse, CRC-check, patch
//!   base offset and leader epoch. Records are never decoded. (pure)
//! - [`budget`]: byte budgets, an async semaphore counted in bytes.
//! - [`offset_index`], [`time_index`]: a segment's sparse indexes. (pure)
//! - [`epoch_cache`]: leader epoch → start offset, and its checkpoint. (pure)
//! - [`flush`]: the `flush.messages` / `flush.ms` policy. (pure)
//! - [`producer_state`]: idempotent producers' sequences per partition. (pure)
//! - [`config`]: per-log configuration with Kafka's names and defaults.
//! - [`segment`]: one `.log` file and its indexes; recovery scan.
//! - [`log`]: one partition: append, read, truncate, retention, flush,
//!   recovery on open.
//! - [`shard`]: shard threads, each with its own compio runtime and ring,
//!   owning a disjoint set of partitions; group commit.
//! - [`io`]: the files the log uses: the real filesystem through compio, or
//!   the crash simulator.
//! - [`io_warnings`]: the rate limit of warnings for failed appends and
//!   flushes. (pure)
//! - [`sim`]: the crash-simulating filesystem with fault injection.
//! - [`types`], [`error`]: newtypes for offsets and epochs; the error type.

pub mod batch;
pub mod budget;
pub mod config;
pub mod epoch_cache;
pub mod error;
pub mod flush;
pub mod io;
pub mod io_warnings;
pub mod log;
pub mod offset_index;
pub mod page_cache;
pub mod producer_state;
pub mod segment;
pub mod shard;
pub mod sim;
pub mod tail;
pub mod time_index;
pub mod types;

pub use config::LogConfig;
pub use error::{Error, Result};
pub use io::FileRange;
pub use log::{
    AppendInfo, AppendMode, Durability, FlushOutcome, FlushTicket, Log, ReadResult, RecoveryReport,
    StorageHealth, Unread,
};
pub use shard::{Backend, Engine, EngineConfig, IoDriver, ShardHandle};
pub use types::{Epoch, FilePosition, Offset, TopicPartition};
