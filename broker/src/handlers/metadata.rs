//! Metadata: the registered brokers, and the requested (or all) topics with
//! their partitions' leaders, epochs, replicas and ISR, all from the
//! controller's published image. Requested topics that do not exist are
//! created when the request and `auto.create.topics.enable` both allow it.
//! Topics can also be looked up by id (v10 and later).

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::{TopicError, TopicState};
use crate::Broker;

/// The replicas on `fenced` brokers: offline, as Kafka lists replicas whose
/// broker is down.
pub(super) fn offline(replicas: &[i32], fenced: &std::collections::BTreeSet<i32>) -> Vec<BrokerId> {
    replicas
        .iter()
        .copied()
        .filter(|r| fenced.contains(r))
        .map(BrokerId)
        .collect()
}

/// One topic as Metadata shows it; replicas on `fenced` brokers are listed
/// as offline, as Kafka lists replicas whose broker is down.
fn describe(
    name: &str,
    state: Option<&TopicState>,
    error: i16,
    fenced: &std::collections::BTreeSet<i32>,
) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default();
    topic.name = Some(TopicName(str_bytes(name)));
    topic.error_code = error;
    topic.topic_authorized_operations = i32::MIN;
    topic.is_internal = name == crate::groups::offsets_topic::TOPIC;
    if let Some(state) = state {
        topic.topic_id = Uuid::from_bytes(state.id());
        topic.partitions = state
            .image
            .partitions
            .iter()
            .zip(0..)
            .map(|(record, index)| {
                let mut partition = MetadataResponsePartition::default();
                partition.partition_index = index;
                partition.leader_id = BrokerId(record.leader);
                partition.leader_epoch = record.leader_epoch;
                partition.replica_nodes = record.replicas.iter().copied().map(BrokerId).collect();
                partition.isr_nodes = record.isr.iter().copied().map(BrokerId).collect();
                partition.offline_replicas = offline(&record.replicas, fenced);
                if record.leader < 0 {
                    partition.error_code = ResponseError::LeaderNotAvailable.code();
                }
                partition
            })
            .collect();
    }
    topic
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: MetadataRequest = decode_body(request)?;
    let mut response = MetadataResponse::default();
    let image = broker.topics.image();
    let fenced = image.fenced.clone();
    // Fenced brokers are down as far as clients are concerned (Kafka lists
    // only live ones); their replicas show as offline below.
    response.brokers = image
        .brokers
        .values()
        .filter(|r| !fenced.contains(&r.id))
        .map(|r| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(r.id);
            b.host = str_bytes(&r.host);
            b.port = i32::from(r.port);
            b.rack = r.rack.as_deref().map(str_bytes);
            b
        })
        .collect();
    response.cluster_id = Some(str_bytes(&broker.cluster_id));
    // The active controller: the Raft leader (-1 while there is none).
    response.controller_id = BrokerId(broker.controller.leader().unwrap_or(-1));
    response.cluster_authorized_operations = i32::MIN;
    // Before v4 the field did not exist and brokers always auto-created.
    let allow =
        broker.config.auto_create_topics && (request.version < 4 || body.allow_auto_topic_creation);
    match body.topics {
        None => {
            for (name, state) in broker.topics.all() {
                response
                    .topics
                    .push(describe(&name, Some(&state), 0, &fenced));
            }
        }
        Some(requested) => {
            for topic in requested {
                let Some(name) = topic.name else {
                    let found = broker
                        .topics
                        .name_of(topic.topic_id.into_bytes())
                        .and_then(|name| Some((broker.topics.get(&name)?, name)));
                    response.topics.push(match found {
                        Some((state, name)) => describe(&name, Some(&state), 0, &fenced),
                        None => {
                            let mut unknown = MetadataResponseTopic::default();
                            unknown.topic_id = topic.topic_id;
                            unknown.error_code = ResponseError::UnknownTopicId.code();
                            unknown
                        }
                    });
                    continue;
                };
                let name = name.0.as_str().to_string();
                let found = broker
                    .topics
                    .get_or_create(
                        &name,
                        allow,
                        broker.config.num_partitions,
                        broker.config.default_replication_factor,
                    )
                    .await;
                let described = match found {
                    Ok(Some(state)) => describe(&name, Some(&state), 0, &fenced),
                    Ok(None) => describe(
                        &name,
                        None,
                        ResponseError::UnknownTopicOrPartition.code(),
                        &fenced,
                    ),
                    Err(TopicError::InvalidName(..)) => describe(
                        &name,
                        None,
                        ResponseError::InvalidTopicException.code(),
                        &fenced,
                    ),
                    Err(e) => {
                        warn!(topic = %name, error = %e, "auto-creating a topic failed");
                        describe(
                            &name,
                            None,
                            ResponseError::LeaderNotAvailable.code(),
                            &fenced,
                        )
                    }
                };
                response.topics.push(described);
            }
        }
    }
    respond(request, &response)
}
