//! The engine's error type. Cheap to clone, because one failed group-commit
//! write fails every append that shared it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;
use crate::types::{Offset, TopicPartition};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The bytes offered for append are not a valid sequence of v2 record
    /// batches (Kafka: CORRUPT_MESSAGE).
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A batch is larger than the configured maximum (Kafka:
    /// MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    /// A follower append whose offsets do not continue the log.
    #[error("append at offset {first} does not continue the log ending at {log_end}")]
    NonContiguousAppend { first: Offset, log_end: Offset },
    /// An idempotent producer's batch does not continue its sequence
    /// (Kafka: OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// A batch from a producer epoch older than the current one (Kafka:
    /// INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// Well-formed batches that break a rule (Kafka: INVALID_RECORD).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("offset {requested} is outside the log [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// The disk is full. On the append path the partial write is cut off
    /// again and the log stays online, so appends may succeed once space is
    /// freed; elsewhere (roll, checkpoints) the log goes offline as for any
    /// other write error.
    #[error("no space left on device ({context})")]
    NoSpace {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// An I/O error. A failed write or fsync also takes the log offline; a
    /// failed read or open leaves it as it was.
    #[error("I/O error ({context})")]
    Io {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The log is offline after an earlier write or fsync error; it must be
    /// reopened (recovered) before it serves anything again.
    #[error("log {dir} is offline after an I/O error: {reason}")]
    Offline { dir: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("unknown partition {0}")]
    UnknownPartition(TopicPartition),
    #[error("partition {0} already exists")]
    PartitionExists(TopicPartition),
    /// The shard owning the partition has stopped (shutdown or panic).
    #[error("shard {0} is not running")]
    ShardStopped(usize),
    /// A shard's command queue is full; the caller should back off.
    #[error("shard {0} is overloaded")]
    ShardBusy(usize),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace {
                context,
                source: Arc::new(source),
            }
        } else {
            Error::Io {
                context,
                source: Arc::new(source),
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
