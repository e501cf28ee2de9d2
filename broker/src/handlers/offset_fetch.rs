//! OffsetFetch: a group's committed offsets (v1–7: one group per request).

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

fn partition(
    index: i32,
    committed: Option<&crate::groups::coordinator::Committed>,
    version: i16,
) -> OffsetFetchResponsePartition {
    let mut p = OffsetFetchResponsePartition::default();
    p.partition_index = index;
    p.committed_offset = committed.map_or(-1, |c| c.offset);
    if version >= 5 {
        p.committed_leader_epoch = committed.map_or(-1, |c| c.leader_epoch);
    }
    p.metadata = Some(str_bytes(committed.map_or("", |c| c.metadata.as_str())));
    p
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: OffsetFetchRequest = decode_body(request)?;
    let mut response = OffsetFetchResponse::default();
    if let Some(code) = super::not_coordinator(broker, body.group_id.0.as_str()) {
        // v2+ carry it at the top; every version per partition.
        response.error_code = code;
        for topic in body.topics.iter().flatten() {
            let mut out = OffsetFetchResponseTopic::default();
            out.name = topic.name.clone();
            for &index in &topic.partition_indexes {
                let mut p = partition(index, None, request.version);
                p.error_code = code;
                out.partitions.push(p);
            }
            response.topics.push(out);
        }
        return respond(request, &response);
    }
    let committed = broker.groups.committed(body.group_id.0.as_str());
    match &body.topics {
        Some(topics) => {
            for topic in topics {
                let mut out = OffsetFetchResponseTopic::default();
                out.name = topic.name.clone();
                for &index in &topic.partition_indexes {
                    let key = (topic.name.0.as_str().to_string(), index);
                    out.partitions
                        .push(partition(index, committed.get(&key), request.version));
                }
                response.topics.push(out);
            }
        }
        None => {
            let mut by_topic: std::collections::BTreeMap<&str, OffsetFetchResponseTopic> =
                Default::default();
            for ((topic, index), c) in &committed {
                let out = by_topic.entry(topic).or_insert_with(|| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(str_bytes(topic));
                    t
                });
                out.partitions
                    .push(partition(*index, Some(c), request.version));
            }
            response.topics = by_topic.into_values().collect();
        }
    }
    respond(request, &response)
}
