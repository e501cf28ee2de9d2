//! Produce: validate and append each partition's batches on the shard that
//! owns it, all partitions at once, then answer per partition.
//!
//! `acks=0` gets no response; `acks=1` and `acks=-1` are answered after the
//! append. On a single node the high watermark is the log end offset as
//! soon as the append returns, so `acks=-1` waits for nothing more; the
//! replication work makes that wait real.

use futures_util::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use sluice_engine::{AppendMode, Epoch, TopicPartition};
use tracing::debug;

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

fn failed(index: i32, code: i16) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code;
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    p
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: ProduceRequest = decode_body(request)?;
    let acks = body.acks;
    let valid_acks = matches!(acks, -1..=1);
    let mut response = ProduceResponse::default();
    for topic in body.topic_data {
        let name = topic.name.0.as_str().to_string();
        let state = broker.topics.get(&name);
        let appends = topic.partition_data.into_iter().map(|data| {
            let name = name.clone();
            let state = state.clone();
            async move {
                let index = data.index;
                if !valid_acks {
                    return failed(index, ResponseError::InvalidRequiredAcks.code());
                }
                let Some(state) = state.filter(|s| (0..s.partitions).contains(&index)) else {
                    return failed(index, ResponseError::UnknownTopicOrPartition.code());
                };
                let Some(records) = data.records else {
                    return failed(index, ResponseError::CorruptMessage.code());
                };
                if records.len() > state.config.max_batch_bytes.saturating_mul(64) {
                    return failed(index, ResponseError::MessageTooLarge.code());
                }
                let tp = TopicPartition::new(name, index);
                match broker
                    .engine
                    .append(
                        tp.clone(),
                        records.to_vec(),
                        AppendMode::Leader { epoch: Epoch(0) },
                    )
                    .await
                {
                    Ok(info) => {
                        let mut p = PartitionProduceResponse::default();
                        p.index = index;
                        p.base_offset = info.base_offset.0;
                        p.log_append_time_ms = -1;
                        if request.version >= 5 {
                            p.log_start_offset = 0;
                        }
                        p
                    }
                    Err(e) => {
                        debug!(partition = %tp, error = %e, "produce failed");
                        failed(index, errors::code(&e))
                    }
                }
            }
        });
        let partitions = join_all(appends).await;
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic.name;
        topic_response.partition_responses = partitions;
        response.responses.push(topic_response);
    }
    if acks == 0 {
        return Ok(None);
    }
    respond(request, &response)
}
