//! OffsetForLeaderEpoch: where a leader epoch ended in this broker's log
//! (KIP-101), for followers and for consumers validating their position
//! after a leader change (KIP-320). The current epoch of each partition
//! is the one the metadata image gives it.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;
use sluice_engine::{Epoch, TopicPartition};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::{errors, Broker};

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: OffsetForLeaderEpochRequest = decode_body(request)?;
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in body.topics {
        let name = topic.topic.0.as_str().to_string();
        let state = broker.topics.get(&name);
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = topic.topic.clone();
        for partition in topic.partitions {
            let mut p = EpochEndOffset::default();
            p.partition = partition.partition;
            p.leader_epoch = -1;
            p.end_offset = -1;
            let Some(state) = state.as_ref().filter(|s| s.has(partition.partition)) else {
                p.error_code = ResponseError::UnknownTopicOrPartition.code();
                out.partitions.push(p);
                continue;
            };
            if broker.not_leader(Some(state), partition.partition) {
                p.error_code = ResponseError::NotLeaderOrFollower.code();
                out.partitions.push(p);
                continue;
            }
            // A client that names an older leader epoch than the current
            // one is fenced (it must refresh its metadata); a newer one is
            // unknown here yet (KIP-320).
            if let Some(error) = broker.leader_epoch_error(
                state,
                partition.partition,
                partition.current_leader_epoch,
            ) {
                p.error_code = error.code();
            } else {
                let tp = TopicPartition::new(name.clone(), partition.partition);
                let requested = Epoch(partition.leader_epoch);
                let found = broker
                    .engine
                    .shard_for(&tp)
                    .with_log(tp.clone(), move |log, _| {
                        Box::pin(async move { Ok(log.end_offset_for_epoch(requested)) })
                    })
                    .await;
                match found {
                    Ok((epoch, offset)) => {
                        p.leader_epoch = epoch.0;
                        p.end_offset = offset.0;
                    }
                    Err(e) => p.error_code = errors::code(&e),
                }
            }
            out.partitions.push(p);
        }
        response.topics.push(out);
    }
    respond(request, &response)
}
