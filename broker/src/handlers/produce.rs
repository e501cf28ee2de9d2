//! Produce: validate and append each partition's batches on the shard that
//! owns it, all partitions at once, then answer per partition.
//!
//! `acks=0` gets no response; `acks=1` is answered after the append;
//! `acks=-1` (all) first needs `min.insync.replicas` in-sync replicas
//! (NOT_ENOUGH_REPLICAS otherwise), then waits, up to the request's
//! `timeout_ms` (REQUEST_TIMED_OUT), for the high watermark to pass the
//! batch. On a single node the high watermark is the log end offset, so the
//! wait ends at once; with followers it is where acks=all blocks.

use futures_util::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use sluice_engine::{AppendMode, Epoch, TopicPartition};
use tracing::debug;

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

/// In-sync replicas of every partition on a single node: itself.
const ISR_SIZE: i32 = 1;
/// Longest acks=all wait honoured, whatever the request's timeout says.
const TIMEOUT_MS_MAX: i32 = 300_000;

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
    let ack_timeout =
        std::time::Duration::from_millis(body.timeout_ms.clamp(0, TIMEOUT_MS_MAX) as u64);
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
                let Some(state) = state.filter(|s| s.has(index)) else {
                    return failed(index, ResponseError::UnknownTopicOrPartition.code());
                };
                let Some(records) = data.records else {
                    return failed(index, ResponseError::CorruptMessage.code());
                };
                if records.len() > state.config.max_batch_bytes.saturating_mul(64) {
                    return failed(index, ResponseError::MessageTooLarge.code());
                }
                // This node is the whole ISR: acks=all needs
                // min.insync.replicas <= 1 before anything is appended.
                let min_insync = state
                    .overrides()
                    .get("min.insync.replicas")
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(broker.config.min_insync_replicas);
                if acks == -1 && min_insync > ISR_SIZE {
                    return failed(index, ResponseError::NotEnoughReplicas.code());
                }
                let epoch = Epoch(state.leader_epoch(index));
                let tp = TopicPartition::new(name, index);
                match broker
                    .engine
                    .append(tp.clone(), records.to_vec(), AppendMode::Leader { epoch })
                    .await
                {
                    Ok(info) => {
                        if acks == -1 {
                            // acks=all: wait for the high watermark to pass the
                            // batch. On one node it is the log end, already past;
                            // with followers this wait is where acks=all blocks.
                            let wait = broker
                                .engine
                                .shard_for(&tp)
                                .wait_for_append(tp.clone(), info.last_offset);
                            match compio::time::timeout(ack_timeout, wait).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => return failed(index, errors::code(&e)),
                                Err(_) => {
                                    return failed(index, ResponseError::RequestTimedOut.code())
                                }
                            }
                        }
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
