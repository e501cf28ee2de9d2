//! Fetch: stored batch bytes as they are, whole batches, up to the high
//! watermark (the log end offset on a single node), within `max_bytes` and
//! each partition's `partition_max_bytes`. When less than `min_bytes` is
//! available the request waits up to `max_wait_ms`, woken by the shards as
//! soon as any of its partitions is appended to.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use sluice_engine::{Offset, TopicPartition};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

/// Longest wait honoured, whatever the client asks.
const MAX_WAIT_MS_MAX: i32 = 30_000;

async fn read_all(
    broker: &Broker,
    version: i16,
    body: &FetchRequest,
) -> (Vec<FetchableTopicResponse>, usize) {
    let mut budget = usize::try_from(body.max_bytes).unwrap_or(0).max(1);
    let mut total = 0usize;
    let mut topics = Vec::with_capacity(body.topics.len());
    for topic in &body.topics {
        let name = topic.topic.0.as_str();
        let state = broker.topics.get(name);
        let mut out = FetchableTopicResponse::default();
        out.topic = topic.topic.clone();
        for partition in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = partition.partition;
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            data.log_start_offset = -1;
            data.aborted_transactions = Some(Vec::new());
            if state.as_ref().is_none_or(|s| !s.has(partition.partition)) {
                data.error_code = ResponseError::UnknownTopicOrPartition.code();
                out.partitions.push(data);
                continue;
            }
            let tp = TopicPartition::new(name, partition.partition);
            let max = usize::try_from(partition.partition_max_bytes)
                .unwrap_or(0)
                .min(budget);
            let read = broker
                .engine
                .read(tp, Offset(partition.fetch_offset), max, None, total == 0)
                .await;
            match read {
                Ok(result) => {
                    data.high_watermark = result.log_end_offset.0;
                    data.last_stable_offset = result.log_end_offset.0;
                    if version >= 5 {
                        data.log_start_offset = result.log_start_offset.0;
                    }
                    total += result.records.len();
                    budget = budget.saturating_sub(result.records.len());
                    data.records = Some(Bytes::from(result.records));
                }
                Err(e) => {
                    data.error_code = errors::code(&e);
                    if let sluice_engine::Error::OffsetOutOfRange {
                        log_start, log_end, ..
                    } = e
                    {
                        data.high_watermark = log_end.0;
                        data.last_stable_offset = log_end.0;
                        if version >= 5 {
                            data.log_start_offset = log_start.0;
                        }
                    }
                }
            }
            out.partitions.push(data);
        }
        topics.push(out);
    }
    (topics, total)
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: FetchRequest = decode_body(request)?;
    let wait = Duration::from_millis(body.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(body.min_bytes).unwrap_or(0);
    let (topics, _) = loop {
        let (topics, total) = read_all(broker, request.version, &body).await;
        let errors = topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        let now = Instant::now();
        if total >= min_bytes.max(1) || errors || now >= deadline {
            break (topics, total);
        }
        // Wait for an append past what this read saw on any partition.
        let waits: Vec<_> = topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    let tp = TopicPartition::new(t.topic.0.as_str(), p.partition_index);
                    let seen = Offset(p.high_watermark);
                    Box::pin(async move {
                        broker
                            .engine
                            .shard_for(&tp)
                            .wait_for_append(tp.clone(), seen)
                            .await
                    })
                })
            })
            .collect();
        if waits.is_empty() {
            break (topics, total);
        }
        let timeout = compio::time::sleep(deadline - now);
        futures_util::pin_mut!(timeout);
        let woken =
            futures_util::future::select(futures_util::future::select_all(waits), timeout).await;
        if let futures_util::future::Either::Left(((Err(e), _, _), _)) = woken {
            // The partition went away or its shard stopped: answer with
            // what there is rather than spin until the deadline.
            tracing::debug!(error = %e, "fetch wait ended early");
            break (topics, total);
        }
    };
    let mut response = FetchResponse::default();
    response.responses = topics;
    respond(request, &response)
}
