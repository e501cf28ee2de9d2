//! Fetch: stored batch bytes as they are, whole batches, up to the high
//! watermark (the log end offset on a single node), within `max_bytes` and
//! each partition's `partition_max_bytes`. When less than `min_bytes` is
//! available the request waits up to `max_wait_ms`, re-reading as it goes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use sluice_engine::{Offset, TopicPartition};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

/// How often a waiting fetch looks again. A fetch should be woken by the
/// append instead; until then this bounds the added latency.
const FETCH_RECHECK: Duration = Duration::from_millis(5);
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
            if state
                .as_ref()
                .is_none_or(|s| !(0..s.partitions).contains(&partition.partition))
            {
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
        if total >= min_bytes.max(1) || errors || Instant::now() >= deadline {
            break (topics, total);
        }
        compio::time::sleep(FETCH_RECHECK.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    };
    let mut response = FetchResponse::default();
    response.responses = topics;
    respond(request, &response)
}
