//! Produce: validate every partition on the connection's shard, then send
//! each owning shard one message carrying all of its partitions (none for
//! the connection's own shard), append there through the partition table,
//! and answer per partition in request order.
//!
//! `acks=0` gets no response; `acks=1` is answered after the append;
//! `acks=-1` (all) first needs `min.insync.replicas` in-sync replicas
//! (NOT_ENOUGH_REPLICAS otherwise), then waits, up to the request's
//! `timeout_ms` (REQUEST_TIMED_OUT), for the high watermark to pass the
//! batch. On a single node the high watermark follows the log end, so the
//! wait ends with the append; with followers it is where acks=all blocks.
//!
//! Clients may not produce to internal topics (`__consumer_offsets`):
//! INVALID_TOPIC_EXCEPTION, as Kafka answers, and nothing is appended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;

use futures_channel::oneshot;
use futures_util::future::{join_all, LocalBoxFuture};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use sluice_engine::shard::LocalShard;
use sluice_engine::{AppendInfo, Error, TopicPartition};
use tracing::{debug, warn};

use super::{respond, Connection, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::offsets_topic;
use crate::topics::TopicState;
use crate::{errors, partition, Broker};

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

/// One partition's append, sent to the shard that owns it.
struct Append {
    slot: usize,
    tp: TopicPartition,
    topic: Arc<TopicState>,
    /// `min.insync.replicas` for the partition (acks=all).
    min_insync: usize,
    records: Bytes,
    /// The partition has followers, and the records are most of the
    /// request's buffer: the log may keep them for reads at its end
    /// without keeping much else alive.
    keep: bool,
}

/// What every append of one request shares.
#[derive(Clone, Copy)]
struct Terms {
    me: i32,
    acks: i16,
    ack_timeout: Duration,
    version: i16,
}

/// Serves a Produce request. `queued`, if given, is told once every
/// append is queued on its partition (or the request failed before any
/// was): the connection may then start its next request.
pub async fn handle(
    broker: &Broker,
    request: &Request,
    connection: &Connection,
    queued: Option<oneshot::Sender<()>>,
) -> Reply {
    let body: ProduceRequest = decode_body(request)?;
    let terms = Terms {
        me: broker.config.node_id,
        acks: body.acks,
        ack_timeout: Duration::from_millis(body.timeout_ms.clamp(0, TIMEOUT_MS_MAX) as u64),
        version: request.version,
    };
    let valid_acks = matches!(terms.acks, -1..=1);
    let topics = broker.topics.snapshot();
    let mut response = ProduceResponse::default();
    // Every partition's answer, in request order: filled now for those that
    // fail validation, by their shard for the rest.
    let mut answers: Vec<Option<PartitionProduceResponse>> = Vec::new();
    let mut indexes: Vec<i32> = Vec::new();
    let mut shape: Vec<(kafka_protocol::messages::TopicName, usize)> = Vec::new();
    let mut by_shard: BTreeMap<usize, Vec<Append>> = BTreeMap::new();
    for topic in body.topic_data {
        let name = topic.name.0.as_str();
        let state = topics.get(name);
        shape.push((topic.name.clone(), topic.partition_data.len()));
        for data in topic.partition_data {
            let index = data.index;
            let slot = answers.len();
            indexes.push(index);
            let refused = if !valid_acks {
                Some(ResponseError::InvalidRequiredAcks)
            } else if offsets_topic::is_internal(name) {
                warn!(
                    topic = name,
                    partition = index,
                    "refused a client's produce to an internal topic"
                );
                Some(ResponseError::InvalidTopicException)
            } else {
                None
            };
            if let Some(error) = refused {
                answers.push(Some(failed(index, error.code())));
                continue;
            }
            let Some(state) = state.filter(|s| s.has(index)) else {
                answers.push(Some(failed(
                    index,
                    ResponseError::UnknownTopicOrPartition.code(),
                )));
                continue;
            };
            if broker.not_leader(Some(state), index) {
                answers.push(Some(failed(
                    index,
                    ResponseError::NotLeaderOrFollower.code(),
                )));
                continue;
            }
            let Some(records) = data.records else {
                answers.push(Some(failed(index, ResponseError::CorruptMessage.code())));
                continue;
            };
            if records.len() > state.config.max_batch_bytes.saturating_mul(64) {
                answers.push(Some(failed(index, ResponseError::MessageTooLarge.code())));
                continue;
            }
            let min_insync = state
                .overrides()
                .get("min.insync.replicas")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(broker.config.min_insync_replicas.max(1) as usize);
            if terms.acks == -1 && state.in_sync_replicas(index) < min_insync {
                answers.push(Some(failed(index, ResponseError::NotEnoughReplicas.code())));
                continue;
            }
            answers.push(None);
            let tp = TopicPartition::new(name, index);
            let shard = broker.engine.shard_for(&tp).id();
            // Only a partition with followers has anyone to keep records for.
            let keep = state.replica_count(index) > 1
                && records.len().saturating_mul(2) >= request.body.len();
            by_shard.entry(shard).or_default().push(Append {
                slot,
                tp,
                topic: state.clone(),
                records,
                min_insync,
                keep,
            });
        }
    }
    // Hand each shard its appends, one shard after another: each is queued
    // on its partitions before the next request of this connection may
    // start (`queued`), which keeps a connection's pipelined produces in
    // the order it sent them. Then wait for them all together.
    connection.affinity.note(by_shard.keys().copied());
    let mut running = Vec::new();
    for (shard, appends) in by_shard {
        let handle = broker.engine.shards()[shard].clone();
        let slots: Vec<(usize, i32)> = appends.iter().map(|a| (a.slot, a.tp.partition)).collect();
        let bytes = appends.iter().map(|a| a.records.len()).sum();
        let submitted = handle
            .submit_weighted(bytes, move |local| append_all(local, terms, appends))
            .await;
        running.push(async move {
            let done = match submitted {
                Ok(work) => work.await,
                Err(e) => Err(e),
            };
            match done {
                Ok(done) => done,
                Err(e) => slots
                    .into_iter()
                    .map(|(slot, index)| (slot, failed(index, errors::code(&e))))
                    .collect(),
            }
        });
    }
    if let Some(queued) = queued {
        let _ = queued.send(());
    }
    for (slot, answer) in join_all(running).await.into_iter().flatten() {
        answers[slot] = Some(answer);
    }
    if terms.acks == 0 {
        return Ok(None);
    }
    let mut answers = answers.into_iter().zip(indexes);
    for (name, count) in shape {
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = name;
        topic_response.partition_responses = answers
            .by_ref()
            .take(count)
            .map(|(answer, index)| {
                // Every slot is answered above; this is a safe default only.
                answer.unwrap_or_else(|| failed(index, ResponseError::UnknownServerError.code()))
            })
            .collect();
        response.responses.push(topic_response);
    }
    respond(request, &response)
}

/// On the owning shard: queues every append of the request to this
/// shard's partitions now (so that they share the partitions' group
/// commits, and land in the order the requests came), and returns the
/// future of their answers.
fn append_all(
    local: LocalShard,
    terms: Terms,
    appends: Vec<Append>,
) -> LocalBoxFuture<'static, Vec<(usize, PartitionProduceResponse)>> {
    let started: Vec<_> = appends
        .into_iter()
        .map(|a| {
            let appended = partition::start_append(
                &local,
                terms.me,
                &a.tp,
                &a.topic,
                a.records.clone(),
                a.keep,
            );
            (a, appended)
        })
        .collect();
    Box::pin(async move {
        let local = &local;
        join_all(started.into_iter().map(|(a, appended)| async move {
            (a.slot, finish_one(local, terms, a, appended).await)
        }))
        .await
    })
}

async fn finish_one(
    local: &LocalShard,
    terms: Terms,
    a: Append,
    appended: Result<impl Future<Output = Result<AppendInfo, Error>>, Error>,
) -> PartitionProduceResponse {
    let index = a.tp.partition;
    let info = match appended {
        Ok(appended) => appended.await,
        Err(e) => Err(e),
    };
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            debug!(partition = %a.tp, error = %e, "produce failed");
            return failed(index, errors::code(&e));
        }
    };
    if terms.acks == -1 {
        let wait =
            partition::wait_for_high_watermark(local, terms.me, &a.tp, &a.topic, info.last_offset);
        match compio::time::timeout(terms.ack_timeout, wait).await {
            // The ISR shrank below min.insync.replicas while it waited:
            // fewer copies than asked for (Kafka's answer), whether or not
            // the high watermark had passed the batch by then.
            Ok(Ok(_))
                if partition::in_sync_count(local, terms.me, &a.tp, &a.topic)
                    .is_ok_and(|n| n < a.min_insync) =>
            {
                return failed(index, ResponseError::NotEnoughReplicasAfterAppend.code())
            }
            // Woken without the high watermark passing the batch: the
            // partition changed leader (or its waiters overflowed). Not
            // committed as far as this broker knows: the client retries
            // against the leader (an idempotent producer without a
            // duplicate), as Kafka answers its purgatory on a leader change.
            Ok(Ok(hw)) if hw <= info.last_offset => {
                return failed(index, ResponseError::NotLeaderOrFollower.code())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return failed(index, errors::code(&e)),
            Err(_) => return failed(index, ResponseError::RequestTimedOut.code()),
        }
    }
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.base_offset = info.base_offset.0;
    p.log_append_time_ms = -1;
    if terms.version >= 5 {
        p.log_start_offset = info.log_start_offset.0;
    }
    p
}
