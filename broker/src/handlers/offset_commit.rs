//! OffsetCommit: generation-checked commits, persisted to
//! `__consumer_offsets` before they are acknowledged.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::coordinator::Committed;
use crate::groups::state::code;
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: OffsetCommitRequest = decode_body(request)?;
    let group = body.group_id.0.as_str().to_string();
    let now = sluice_engine::shard::now_ms() as i64;
    let mut known = Vec::new();
    let mut response = OffsetCommitResponse::default();
    let mut errors: Vec<Vec<i16>> = Vec::new();
    let not_coordinator = super::not_coordinator(broker, &group);
    for topic in &body.topics {
        let state = broker.topics.get(topic.name.0.as_str());
        let mut codes = Vec::new();
        for p in &topic.partitions {
            if let Some(code) = not_coordinator {
                codes.push(code);
            } else if state.as_ref().is_some_and(|s| s.has(p.partition_index)) {
                known.push((
                    (topic.name.0.as_str().to_string(), p.partition_index),
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: if request.version >= 6 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.as_str().to_string())
                            .unwrap_or_default(),
                        commit_timestamp_ms: now,
                    },
                ));
                codes.push(code::NONE);
            } else {
                codes.push(ResponseError::UnknownTopicOrPartition.code());
            }
        }
        errors.push(codes);
    }
    // The guard keeps the group in the generation the commit was checked
    // against until the offsets are in `__consumer_offsets` (see
    // Coordinator::begin_commit): a rebalance that starts meanwhile cannot
    // hand the partitions to a new generation before this commit lands.
    let verdict = match broker.groups.begin_commit(
        &group,
        body.group_instance_id.as_ref().map(|i| i.as_str()),
        body.member_id.as_str(),
        body.generation_id_or_member_epoch,
    ) {
        Err(refused) => refused,
        Ok(_held) if known.is_empty() => code::NONE,
        Ok(_held) => {
            // Durable first, then visible: an acknowledged commit survives a crash.
            match broker
                .offsets
                .commit(broker, &broker.groups, &group, known)
                .await
            {
                Ok(()) => code::NONE,
                Err(e) => {
                    tracing::warn!(group = %group, error = %e, "persisting committed offsets failed");
                    ResponseError::CoordinatorNotAvailable.code()
                }
            }
        }
    };
    for (topic, codes) in body.topics.iter().zip(errors) {
        let mut out = OffsetCommitResponseTopic::default();
        out.name = topic.name.clone();
        for (p, c) in topic.partitions.iter().zip(codes) {
            let mut r = OffsetCommitResponsePartition::default();
            r.partition_index = p.partition_index;
            r.error_code = if c == code::NONE { verdict } else { c };
            out.partitions.push(r);
        }
        response.topics.push(out);
    }
    respond(request, &response)
}
