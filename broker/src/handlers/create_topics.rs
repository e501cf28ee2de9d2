//! CreateTopics: validate names, partition counts, replication factor and
//! configs; create (unless `validate_only`).

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::{validate_name, CreateError, TopicState};
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
        let log_config = topic_configs::apply(&broker.config.log, &overrides);
        let outcome = if let Err(why) = validate_name(&name) {
            fail(
                result,
                ResponseError::InvalidTopicException,
                format!("invalid topic name: {why}"),
            )
        } else if broker.topics.get(&name).is_some() {
            fail(
                result,
                ResponseError::TopicAlreadyExists,
                format!("topic {name} already exists"),
            )
        } else if partitions < 1 {
            fail(
                result,
                ResponseError::InvalidPartitions,
                "number of partitions must be at least 1".into(),
            )
        } else if !(topic.replication_factor == -1 || topic.replication_factor == 1)
            || !topic.assignments.is_empty()
        {
            fail(
                result,
                ResponseError::InvalidReplicationFactor,
                "a single broker supports replication factor 1 only".into(),
            )
        } else if let Err(why) = &log_config {
            fail(result, ResponseError::InvalidConfig, why.clone())
        } else if body.validate_only {
            result.num_partitions = partitions;
            result.replication_factor = 1;
            result
        } else {
            let state = TopicState {
                partitions,
                config: log_config.unwrap_or_else(|_| broker.config.log.clone()),
                overrides,
            };
            match broker.topics.create(&broker.engine, &name, state).await {
                Ok(state) => {
                    result.num_partitions = state.partitions;
                    result.replication_factor = 1;
                    result
                }
                Err(CreateError::Exists(_)) => fail(
                    result,
                    ResponseError::TopicAlreadyExists,
                    format!("topic {name} already exists"),
                ),
                Err(e) => fail(result, ResponseError::KafkaStorageError, e.to_string()),
            }
        };
        response.topics.push(outcome);
    }
    respond(request, &response)
}
