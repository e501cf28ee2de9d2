//! ListOffsets: the earliest (-2) or latest (-1) offset, the record with the
//! largest timestamp (-3, KIP-734, v7), or the first batch at or after a
//! timestamp.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::{RecordBatchDecoder, TimestampType};
use kafka_protocol::ResponseError;
use sluice_engine::{Log, Offset};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

const EARLIEST: i64 = -2;
const LATEST: i64 = -1;
/// KIP-734: the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;

/// The offset and timestamp of the first record holding the log's largest
/// timestamp, and its batch's leader epoch. The engine finds the batch from
/// its header; the record within it is found by decoding the batch here, as
/// Kafka does (`RecordBatch.offsetOfMaxTimestamp`). A batch that does not
/// decode (an unknown codec) answers with its first offset, the batch
/// granularity of timestamp lookups.
async fn max_timestamp(log: &Log) -> sluice_engine::Result<Option<(Offset, i64, i32)>> {
    let Some(header) = log.max_timestamp_batch().await? else {
        return Ok(None);
    };
    let ts = header.max_timestamp;
    let epoch = header.partition_leader_epoch;
    let base = Offset(header.base_offset);
    if header.log_append_time() {
        // Every record of a log-append-time batch carries its max timestamp.
        return Ok(Some((base, ts, epoch)));
    }
    let from = base.max(log.log_start_offset());
    let read = log.read(from, header.total_len(), None, true).await?;
    let mut bytes = read.records;
    let offset = match RecordBatchDecoder::decode(&mut bytes) {
        Ok(set) => set
            .records
            .iter()
            .find(|r| r.timestamp_type == TimestampType::Creation && r.timestamp == ts)
            .map_or(base, |r| Offset(r.offset)),
        Err(e) => {
            tracing::debug!(error = %e, base_offset = base.0, "max-timestamp batch does not decode; answering its first offset");
            base
        }
    };
    Ok(Some((offset, ts, epoch)))
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: ListOffsetsRequest = decode_body(request)?;
    let mut response = ListOffsetsResponse::default();
    for topic in body.topics {
        let name = topic.name.0.as_str().to_string();
        let state = broker.topics.get(&name);
        let mut out = ListOffsetsTopicResponse::default();
        out.name = topic.name.clone();
        for partition in topic.partitions {
            let mut p = ListOffsetsPartitionResponse::default();
            p.partition_index = partition.partition_index;
            p.timestamp = -1;
            p.offset = -1;
            if request.version >= 4 {
                p.leader_epoch = 0;
            }
            if broker.not_leader(state.as_deref(), partition.partition_index) {
                p.error_code = ResponseError::NotLeaderOrFollower.code();
                out.partitions.push(p);
                continue;
            }
            if let Some(error) = state.as_deref().and_then(|s| {
                broker.leader_epoch_error(
                    s,
                    partition.partition_index,
                    partition.current_leader_epoch,
                )
            }) {
                p.error_code = error.code();
                out.partitions.push(p);
                continue;
            }
            let timestamp = partition.timestamp;
            let version = request.version;
            // Consumers see offsets below the high watermark only: "latest"
            // is the high watermark, as in Kafka.
            let hw = if timestamp == LATEST {
                match broker
                    .high_watermark(state.as_ref(), &name, partition.partition_index)
                    .await
                {
                    Ok(hw) => hw,
                    Err(e) => {
                        p.error_code = errors::code(&e);
                        out.partitions.push(p);
                        continue;
                    }
                }
            } else {
                None
            };
            let found = broker
                .with_partition_log(
                    state.as_deref(),
                    &name,
                    partition.partition_index,
                    move |log, _| {
                        Box::pin(async move {
                            let plain =
                                |found: Option<(Offset, i64)>| found.map(|(o, t)| (o, t, None));
                            match timestamp {
                                EARLIEST => Ok(Some((log.log_start_offset(), -1, None))),
                                LATEST => {
                                    let end = log.log_end_offset();
                                    Ok(Some((hw.map_or(end, |hw| hw.min(end)), -1, None)))
                                }
                                MAX_TIMESTAMP if version >= 7 => {
                                    Ok(max_timestamp(log).await?.map(|(o, t, e)| (o, t, Some(e))))
                                }
                                t if t >= 0 => log.offset_for_timestamp(t).await.map(plain),
                                other => Err(sluice_engine::Error::InvalidConfig(format!(
                                    "timestamp {other} is not supported"
                                ))),
                            }
                        })
                    },
                )
                .await;
            match found {
                Ok(Some((offset, ts, epoch))) => {
                    p.offset = offset.0;
                    p.timestamp = ts;
                    if let Some(epoch) = epoch.filter(|e| *e >= 0 && request.version >= 4) {
                        p.leader_epoch = epoch;
                    }
                }
                Ok(None) => {}
                Err(sluice_engine::Error::InvalidConfig(_)) => {
                    p.error_code = ResponseError::UnsupportedVersion.code();
                }
                Err(e) => p.error_code = errors::code(&e),
            }
            out.partitions.push(p);
        }
        response.topics.push(out);
    }
    respond(request, &response)
}
