//! DescribeTopicPartitions (KIP-966): each partition's leader, leader
//! epoch, replicas, ISR and offline replicas, as Metadata shows them, paged:
//! topics in name order, at most `response_partition_limit` partitions per
//! response (capped at [`PARTITION_LIMIT_MAX`], Kafka's
//! `max.request.partition.size.limit`), and a cursor saying where the next
//! request starts. The Java admin client's `describeTopics` uses it. The
//! eligible leader replicas are listed; the last known ones are always
//! empty (the last ISR member stays in the ISR instead: see
//! docs/REPLICATION.md).

use std::collections::BTreeSet;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

/// The most partitions one response describes, whatever the client asks.
pub const PARTITION_LIMIT_MAX: usize = 2000;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DescribeTopicPartitionsRequest = decode_body(request)?;
    let mut response = DescribeTopicPartitionsResponse::default();
    let image = broker.topics.image();
    // Every topic when none is named, else the named ones; in name order.
    let names: BTreeSet<String> = if body.topics.is_empty() {
        image.topics.keys().cloned().collect()
    } else {
        body.topics
            .iter()
            .map(|t| t.name.0.as_str().to_string())
            .collect()
    };
    let mut limit = usize::try_from(body.response_partition_limit)
        .unwrap_or(0)
        .clamp(1, PARTITION_LIMIT_MAX);
    let (first_topic, first_partition) = match &body.cursor {
        Some(cursor) => {
            let name = cursor.topic_name.0.as_str().to_string();
            if !names.contains(&name) || cursor.partition_index < 0 {
                // Kafka's InvalidRequestException: every topic says so.
                warn!(topic = %name, partition = cursor.partition_index, "DescribeTopicPartitions: the cursor names no requested topic partition");
                for name in names {
                    let mut topic = DescribeTopicPartitionsResponseTopic::default();
                    topic.name = Some(TopicName(str_bytes(&name)));
                    topic.error_code = ResponseError::InvalidRequest.code();
                    response.topics.push(topic);
                }
                return respond(request, &response);
            }
            (Some(name), cursor.partition_index as usize)
        }
        None => (None, 0),
    };
    let mut names = names
        .into_iter()
        .skip_while(|n| first_topic.as_ref().is_some_and(|first| n != first))
        .peekable();
    while let Some(name) = names.next() {
        let mut topic = DescribeTopicPartitionsResponseTopic::default();
        topic.name = Some(TopicName(str_bytes(&name)));
        topic.topic_authorized_operations = i32::MIN;
        topic.is_internal = name == crate::groups::offsets_topic::TOPIC;
        let Some(state) = image.topics.get(&name) else {
            topic.error_code = ResponseError::UnknownTopicOrPartition.code();
            response.topics.push(topic);
            continue;
        };
        topic.topic_id = Uuid::from_bytes(state.id);
        let from = if first_topic.as_ref() == Some(&name) {
            first_partition
        } else {
            0
        };
        let mut next = None;
        for (index, record) in state.partitions.iter().enumerate().skip(from) {
            if limit == 0 {
                next = Some(index);
                break;
            }
            limit -= 1;
            let mut p = DescribeTopicPartitionsResponsePartition::default();
            p.partition_index = index as i32;
            p.leader_id = BrokerId(record.leader);
            p.leader_epoch = record.leader_epoch;
            p.replica_nodes = record.replicas.iter().copied().map(BrokerId).collect();
            p.isr_nodes = record.isr.iter().copied().map(BrokerId).collect();
            p.offline_replicas = super::metadata::offline(&record.replicas, &image.fenced);
            p.eligible_leader_replicas = Some(record.elr.iter().copied().map(BrokerId).collect());
            p.last_known_elr = Some(Vec::new());
            if record.leader < 0 {
                p.error_code = ResponseError::LeaderNotAvailable.code();
            }
            topic.partitions.push(p);
        }
        response.topics.push(topic);
        let resume = match next {
            Some(partition) => Some((name, partition)),
            // This topic fitted exactly: the next one starts the next page.
            None if limit == 0 => names.peek().map(|n| (n.clone(), 0)),
            None => None,
        };
        if let Some((topic_name, partition)) = resume {
            let mut cursor = Cursor::default();
            cursor.topic_name = TopicName(str_bytes(&topic_name));
            cursor.partition_index = partition as i32;
            response.next_cursor = Some(cursor);
            break;
        }
    }
    respond(request, &response)
}
