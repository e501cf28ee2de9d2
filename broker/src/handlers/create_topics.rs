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
        // Manual assignments: partition i's replicas, first the preferred
        // leader; then the counts must be left to them (-1), as in Kafka.
        let mut assignment: Vec<(i32, Vec<i32>)> = topic
            .assignments
            .iter()
            .map(|a| {
                (
                    a.partition_index,
                    a.broker_ids.iter().map(|b| b.0).collect(),
                )
            })
            .collect();
        assignment.sort_by_key(|(index, _)| *index);
        let assigned = (!assignment.is_empty()).then(|| {
            if topic.num_partitions != -1 || topic.replication_factor != -1 {
                return Err((
                    ResponseError::InvalidRequest,
                    "with replica assignments, numPartitions and replicationFactor must be -1"
                        .to_string(),
                ));
            }
            if assignment
                .iter()
                .zip(0..)
                .any(|((index, _), i)| *index != i)
            {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "replica assignments must name partitions 0, 1, 2… once each".to_string(),
                ));
            }
            Ok(assignment
                .iter()
                .map(|(_, r)| r.clone())
                .collect::<Vec<_>>())
        });
        let outcome = if let Some(assigned) = assigned {
            let created = match assigned {
                Err((error, why)) => Err((error, why)),
                Ok(assigned) if body.validate_only => broker
                    .topics
                    .check_assignment(&assigned)
                    .map(|records| (records.len() as i32, None))
                    .map_err(|e| (error_for(&e), e.to_string())),
                Ok(assigned) => broker
                    .topics
                    .create_assigned(&name, assigned, overrides)
                    .await
                    .map(|state| (state.partitions, Some(state.id())))
                    .map_err(|e| (error_for(&e), e.to_string())),
            };
            match created {
                Ok((count, id)) => {
                    result.num_partitions = count;
                    result.replication_factor = assignment[0].1.len() as i16;
                    if let Some(id) = id {
                        result.topic_id = Uuid::from_bytes(id);
                    }
                    result
                }
                Err((error, why)) => fail(result, error, why),
            }
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
        TopicError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        TopicError::Controller(e) => {
            warn!(error = %e, "a topic change did not reach the metadata log");
            ResponseError::NotController
        }
    }
}
