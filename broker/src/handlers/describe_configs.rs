//! DescribeConfigs: a topic's settings with their sources (an override
//! set on the topic, a broker setting in the configuration, or the
//! default), and the broker's static settings.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topic_configs::{self, SOURCE_DEFAULT, SOURCE_STATIC_BROKER, SOURCE_TOPIC};
use crate::Broker;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

fn entry(name: &str, value: String, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(name);
    e.value = Some(str_bytes(&value));
    e.config_source = source;
    e.read_only = read_only;
    e
}

fn broker_settings(broker: &Broker) -> Vec<(&'static str, String)> {
    let c = &broker.config;
    let limit = |v: Option<u64>, unlimited: &str| {
        v.map_or_else(|| unlimited.to_string(), |v| v.to_string())
    };
    vec![
        ("node.id", c.node_id.to_string()),
        ("num.partitions", c.num_partitions.to_string()),
        (
            "default.replication.factor",
            c.default_replication_factor.to_string(),
        ),
        ("min.insync.replicas", c.min_insync_replicas.to_string()),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
        ),
        ("message.max.bytes", c.message_max_bytes.to_string()),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
        ),
        ("log.segment.bytes", c.log.segment_bytes.to_string()),
        ("log.retention.ms", limit(c.log.retention_ms, "-1")),
        ("log.retention.bytes", limit(c.log.retention_bytes, "-1")),
        (
            "producer.id.expiration.ms",
            c.log.producer_id_expiration_ms.to_string(),
        ),
        (
            "log.flush.interval.messages",
            limit(c.log.flush_messages, "9223372036854775807"),
        ),
        (
            "log.flush.interval.ms",
            limit(c.log.flush_ms, "9223372036854775807"),
        ),
        (
            "sluice.page.cache.window.bytes",
            limit(c.log.page_cache_window, "-1"),
        ),
    ]
}

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DescribeConfigsRequest = decode_body(request)?;
    let mut response = DescribeConfigsResponse::default();
    for resource in body.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let wanted = |key: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
        };
        match resource.resource_type {
            RESOURCE_TOPIC => match broker.topics.get(resource.resource_name.as_str()) {
                Some(state) => {
                    for key in topic_configs::KEYS.iter().filter(|k| wanted(k)) {
                        let Some(value) = topic_configs::value_of(
                            key,
                            &state.config,
                            state.overrides(),
                            topic_configs::Defaults {
                                min_insync_replicas: broker.config.min_insync_replicas,
                                unclean_leader_election: broker.config.elections.unclean_default,
                            },
                        ) else {
                            continue;
                        };
                        let from_broker = topic_configs::broker_keys(key)
                            .iter()
                            .any(|k| broker.config.set_keys.contains(*k));
                        let source = if state.overrides().contains_key(*key) {
                            SOURCE_TOPIC
                        } else if from_broker {
                            SOURCE_STATIC_BROKER
                        } else {
                            SOURCE_DEFAULT
                        };
                        result.configs.push(entry(key, value, source, false));
                    }
                }
                None => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(str_bytes("unknown topic"));
                }
            },
            RESOURCE_BROKER => {
                for (key, value) in broker_settings(broker)
                    .into_iter()
                    .filter(|(k, _)| wanted(k))
                {
                    let source = if broker.config.set_keys.contains(key) {
                        SOURCE_STATIC_BROKER
                    } else {
                        SOURCE_DEFAULT
                    };
                    result.configs.push(entry(key, value, source, true));
                }
            }
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(str_bytes(&format!(
                    "resource type {other} is not supported"
                )));
            }
        }
        response.results.push(result);
    }
    respond(request, &response)
}
