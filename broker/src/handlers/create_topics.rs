//! CreateTopics: validate names, partition counts, replication factor and
//! configs; create (unless `validate_only`).

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use sluice_engine::LogConfig;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::{validate_name, CreateError, TopicState};
use crate::Broker;

/// Applies Kafka topic-level configs to `config`; the error names the key.
pub fn apply_topic_configs(
    config: &mut LogConfig,
    configs: &[(String, Option<String>)],
) -> Result<(), String> {
    for (key, value) in configs {
        let Some(value) = value else { continue };
        let long = || {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key}={value:?} is not a number"))
        };
        let limit = |v: i64| match v {
            -1 => Ok(None),
            v if v >= 0 => Ok(Some(v as u64)),
            _ => Err(format!("{key}={value} must be -1 or non-negative")),
        };
        match key.as_str() {
            "segment.bytes" => {
                config.segment_bytes =
                    u64::try_from(long()?).map_err(|_| format!("{key} must be positive"))?
            }
            "segment.ms" => config.segment_ms = limit(long()?)?,
            "retention.ms" => config.retention_ms = limit(long()?)?,
            "retention.bytes" => config.retention_bytes = limit(long()?)?,
            "flush.messages" => {
                config.flush_messages = limit(long()?)?.filter(|&n| n < i64::MAX as u64)
            }
            "flush.ms" => config.flush_ms = limit(long()?)?.filter(|&n| n < i64::MAX as u64),
            "max.message.bytes" => {
                config.max_batch_bytes =
                    usize::try_from(long()?).map_err(|_| format!("{key} must be positive"))?
            }
            "index.interval.bytes" => {
                config.index_interval_bytes =
                    u64::try_from(long()?).map_err(|_| format!("{key} must be positive"))?
            }
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "cleanup.policy={value} is not supported (only delete)"
                ))
            }
            _ => return Err(format!("unknown topic config {key}")),
        }
    }
    config.validate().map_err(|e| e.to_string())
}

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
        let configs: Vec<(String, Option<String>)> = topic
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect();
        let mut log_config = broker.config.log.clone();
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
        } else if let Err(why) = apply_topic_configs(&mut log_config, &configs) {
            fail(result, ResponseError::InvalidConfig, why)
        } else if body.validate_only {
            result.num_partitions = partitions;
            result.replication_factor = 1;
            result
        } else {
            let state = TopicState {
                partitions,
                config: log_config,
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

#[cfg(test)]
mod tests {
    use super::apply_topic_configs;
    use sluice_engine::LogConfig;

    #[test]
    fn topic_configs_apply_and_bad_ones_are_rejected() {
        let mut config = LogConfig::default();
        let ok = [
            ("retention.ms".to_string(), Some("-1".to_string())),
            ("flush.messages".into(), Some("1".into())),
        ];
        apply_topic_configs(&mut config, &ok).unwrap();
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.flush_messages, Some(1));
        for (k, v) in [
            ("segment.bytes", "1"),
            ("retention.ms", "x"),
            ("cleanup.policy", "compact"),
            ("nope", "1"),
        ] {
            let mut config = LogConfig::default();
            assert!(
                apply_topic_configs(&mut config, &[(k.to_string(), Some(v.to_string()))]).is_err(),
                "{k}={v}"
            );
        }
    }
}
