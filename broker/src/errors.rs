//! Engine errors as Kafka error codes: retriable ones where a retry can
//! succeed, non-retriable ones where it cannot.

use kafka_protocol::ResponseError;
use sluice_engine::Error;

pub fn code(err: &Error) -> i16 {
    let kafka = match err {
        Error::InvalidBatch(_) => ResponseError::CorruptMessage,
        Error::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        Error::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        Error::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition,
        Error::NoSpace { .. } | Error::Io { .. } | Error::Offline { .. } => {
            ResponseError::KafkaStorageError
        }
        Error::ShardBusy(_) | Error::ShardStopped(_) => ResponseError::RequestTimedOut,
        Error::InvalidConfig(_) => ResponseError::InvalidConfig,
        Error::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        Error::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        Error::InvalidRecord(_) => ResponseError::InvalidRecord,
        Error::NonContiguousAppend { .. } | Error::PartitionExists(_) => {
            ResponseError::UnknownServerError
        }
    };
    kafka.code()
}
