//! Metadata: this broker, and the requested (or all) topics with their
//! partitions led by it. Requested topics that do not exist are created
//! when the request and `auto.create.topics.enable` both allow it.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::warn;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::{CreateError, TopicState};
use crate::Broker;

pub const CLUSTER_ID: &str = "sluice-single-node";

pub(crate) fn default_topic(broker: &Broker) -> TopicState {
    TopicState {
        partitions: broker.config.num_partitions,
        config: broker.config.log.clone(),
        overrides: Default::default(),
    }
}

fn describe(
    broker: &Broker,
    version: i16,
    name: &str,
    state: Option<&TopicState>,
    error: i16,
) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let mut topic = MetadataResponseTopic::default();
    topic.name = Some(TopicName(str_bytes(name)));
    topic.error_code = error;
    topic.topic_authorized_operations = i32::MIN;
    topic.is_internal = name == crate::groups::offsets_topic::TOPIC;
    if let Some(state) = state {
        topic.partitions = (0..state.partitions)
            .map(|p| {
                let mut partition = MetadataResponsePartition::default();
                partition.partition_index = p;
                partition.leader_id = node;
                if version >= 7 {
                    partition.leader_epoch = 0;
                }
                partition.replica_nodes = vec![node];
                partition.isr_nodes = vec![node];
                partition
            })
            .collect();
    }
    topic
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: MetadataRequest = decode_body(request)?;
    let mut response = MetadataResponse::default();
    let mut me = MetadataResponseBroker::default();
    me.node_id = BrokerId(broker.config.node_id);
    me.host = str_bytes(&broker.config.advertised_host);
    me.port = i32::from(broker.config.advertised_port);
    response.brokers = vec![me];
    response.cluster_id = Some(str_bytes(CLUSTER_ID));
    response.controller_id = BrokerId(broker.config.node_id);
    response.cluster_authorized_operations = i32::MIN;
    // Before v4 the field did not exist and brokers always auto-created.
    let allow =
        broker.config.auto_create_topics && (request.version < 4 || body.allow_auto_topic_creation);
    match body.topics {
        None => {
            for (name, state) in broker.topics.all() {
                response
                    .topics
                    .push(describe(broker, request.version, &name, Some(&state), 0));
            }
        }
        Some(requested) => {
            for topic in requested {
                let Some(name) = topic.name else {
                    // Lookup by topic id only: this broker has no topic ids yet.
                    let mut unknown = MetadataResponseTopic::default();
                    unknown.topic_id = topic.topic_id;
                    unknown.error_code = ResponseError::UnknownTopicId.code();
                    response.topics.push(unknown);
                    continue;
                };
                let name = name.0.as_str().to_string();
                let found = broker
                    .topics
                    .get_or_create(&broker.engine, &name, allow, || default_topic(broker))
                    .await;
                let described = match found {
                    Ok(Some(state)) => describe(broker, request.version, &name, Some(&state), 0),
                    Ok(None) => describe(
                        broker,
                        request.version,
                        &name,
                        None,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ),
                    Err(CreateError::InvalidName(..)) => describe(
                        broker,
                        request.version,
                        &name,
                        None,
                        ResponseError::InvalidTopicException.code(),
                    ),
                    Err(e) => {
                        warn!(topic = %name, error = %e, "auto-creating a topic failed");
                        describe(
                            broker,
                            request.version,
                            &name,
                            None,
                            ResponseError::KafkaStorageError.code(),
                        )
                    }
                };
                response.topics.push(described);
            }
        }
    }
    respond(request, &response)
}
