//! CreateTopics: validate names, partition counts, replication factor and
//! configs; create (unless `validate_only`).

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::{validate_name, TopicError};
use crate::{topic_configs, Broker};

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: CreateTopicsRequest = decode_body(request)?;
    let mut response = CreateTopicsResponse::default();
    for topic in body.topics {
        let name = topic.name.0.as_str().to_string();
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        result.num_partitions = -1;
        result.replication_factor = -1;
        let fail = |mut result: CreatableTopicResult, error: ResponseError, message: String| {
            result.error_code = error.code();
            result.error_message = Some(str_bytes(&message));
            result
        };
        let partitions = if topic.num_partitions == -1 {
            broker.config.num_partitions
        } else {
            topic.num_partitions
        };
        let overrides: std::collections::BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.as_str().to_string(),
                    c.value.as_ref()?.as_str().to_string(),
                ))
            })
            .collect();
        let replication = if topic.replication_factor == -1 {
            broker.config.default_replication_factor
        } else {
            topic.replication_factor
        };
        let outcome = if !topic.assignments.is_empty() {
            fail(
                result,
                ResponseError::InvalidReplicaAssignment,
                "manual replica assignments are not supported; give a replication factor".into(),
            )
        } else if body.validate_only {
            let checked = validate_name(&name)
                .map_err(|why| TopicError::InvalidName(name.clone(), why))
                .and_then(|()| {
                    topic_configs::apply(&broker.config.log, &overrides)
                        .map_err(TopicError::InvalidConfig)
                })
                .and_then(|_| broker.topics.check_replication(replication))
                .and_then(|_| match broker.topics.get(&name) {
                    Some(_) => Err(TopicError::Exists(name.clone())),
                    None if partitions < 1 => Err(TopicError::InvalidPartitions(
                        "number of partitions must be at least 1".into(),
                    )),
                    None => Ok(()),
                });
            match checked {
                Ok(()) => {
                    result.num_partitions = partitions;
                    result.replication_factor = replication;
                    result
                }
                Err(e) => fail(result, error_for(&e), e.to_string()),
            }
        } else {
            match broker
                .topics
                .create(&name, partitions, replication, overrides)
                .await
            {
                Ok(state) => {
                    result.num_partitions = state.partitions;
                    result.replication_factor = replication;
                    result.topic_id = Uuid::from_bytes(state.id());
                    result
                }
                Err(e) => fail(result, error_for(&e), e.to_string()),
            }
        };
        response.topics.push(outcome);
    }
    respond(request, &response)
}

/// The Kafka error for a topic change that did not happen.
pub(crate) fn error_for(e: &TopicError) -> ResponseError {
    match e {
        TopicError::Exists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        TopicError::InvalidName(..) => ResponseError::InvalidTopicException,
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        TopicError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        TopicError::Controller(e) => {
            warn!(error = %e, "a topic change did not reach the metadata log");
            ResponseError::NotController
        }
    }
}
