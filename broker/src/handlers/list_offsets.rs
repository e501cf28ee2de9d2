//! ListOffsets: the earliest (-2) or latest (-1) offset, or the first batch
//! at or after a timestamp.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

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
            let timestamp = partition.timestamp;
            let found = broker
                .with_partition_log(
                    state.as_deref(),
                    &name,
                    partition.partition_index,
                    move |log, _| {
                        Box::pin(async move {
                            match timestamp {
                                EARLIEST => Ok(Some((log.log_start_offset(), -1))),
                                LATEST => Ok(Some((log.log_end_offset(), -1))),
                                t if t >= 0 => log.offset_for_timestamp(t).await,
                                other => Err(sluice_engine::Error::InvalidConfig(format!(
                                    "timestamp {other} is not supported"
                                ))),
                            }
                        })
                    },
                )
                .await;
            match found {
                Ok(Some((offset, ts))) => {
                    p.offset = offset.0;
                    p.timestamp = ts;
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
