//! DeleteRecords: move partitions' log start offsets forward (offset -1
//! means the high watermark), answering each partition's new low watermark.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;
use sluice_engine::Offset;

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

/// `offset` -1: delete everything below the high watermark.
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DeleteRecordsRequest = decode_body(request)?;
    let mut response = DeleteRecordsResponse::default();
    for topic in body.topics {
        let name = topic.name.0.as_str().to_string();
        let state = broker.topics.get(&name);
        let mut out = DeleteRecordsTopicResult::default();
        out.name = topic.name.clone();
        for partition in topic.partitions {
            let mut p = DeleteRecordsPartitionResult::default();
            p.partition_index = partition.partition_index;
            p.low_watermark = -1;
            if broker.not_leader(state.as_deref(), partition.partition_index) {
                p.error_code = ResponseError::NotLeaderOrFollower.code();
                out.partitions.push(p);
                continue;
            }
            // Records may be deleted below the high watermark only (-1 is
            // the high watermark), as in Kafka.
            let hw = match broker
                .high_watermark(state.as_ref(), &name, partition.partition_index)
                .await
            {
                Ok(hw) => hw,
                Err(e) => {
                    p.error_code = errors::code(&e);
                    out.partitions.push(p);
                    continue;
                }
            };
            let requested = match (partition.offset, hw) {
                (HIGH_WATERMARK, Some(hw)) => hw.0,
                (requested, Some(hw)) if requested > hw.0 => {
                    p.error_code = ResponseError::OffsetOutOfRange.code();
                    out.partitions.push(p);
                    continue;
                }
                (requested, _) => requested,
            };
            let result = broker
                .with_partition_log(
                    state.as_deref(),
                    &name,
                    partition.partition_index,
                    move |log, _| {
                        Box::pin(async move {
                            let target = if requested == HIGH_WATERMARK {
                                log.log_end_offset()
                            } else {
                                Offset(requested)
                            };
                            log.delete_records_before(target).await
                        })
                    },
                )
                .await;
            match result {
                Ok(start) => p.low_watermark = start.0,
                Err(e) => p.error_code = errors::code(&e),
            }
            out.partitions.push(p);
        }
        response.topics.push(out);
    }
    respond(request, &response)
}
