//! IncrementalAlterConfigs: SET and DELETE of topic settings, validated as
//! a whole before anything changes, then recorded in the metadata log and
//! applied to the running logs. An invalid value gets INVALID_CONFIG and changes nothing.
//! The broker's internal topic (`__consumer_offsets`) is refused with
//! INVALID_REQUEST: its settings are the broker's.

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::ResponseError;
use tracing::warn;

use super::create_topics::error_for;
use super::describe_configs::RESOURCE_TOPIC;
use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::offsets_topic;
use crate::Broker;

/// Why reconfiguring the offsets topic is refused (the error message
/// clients see).
const ALTER_INTERNAL: &str = "__consumer_offsets is the broker's internal topic: its settings \
     are the broker's (a retention or segment change could delete every consumer group's \
     committed offsets)";

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: IncrementalAlterConfigsRequest = decode_body(request)?;
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in body.resources {
        let mut result = AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let name = resource.resource_name.as_str().to_string();
        let outcome: Result<(), (ResponseError, String)> = if resource.resource_type
            != RESOURCE_TOPIC
        {
            Err((
                ResponseError::InvalidRequest,
                "only topic settings can be altered on this broker".into(),
            ))
        } else if offsets_topic::is_internal(&name) {
            warn!(topic = %name, "IncrementalAlterConfigs refused: {ALTER_INTERNAL}");
            Err((ResponseError::InvalidRequest, ALTER_INTERNAL.to_string()))
        } else {
            match broker.topics.get(&name) {
                None => Err((
                    ResponseError::UnknownTopicOrPartition,
                    format!("unknown topic {name}"),
                )),
                Some(state) => {
                    let mut overrides = state.overrides().clone();
                    let mut bad = None;
                    for op in &resource.configs {
                        let key = op.name.as_str().to_string();
                        match (op.config_operation, &op.value) {
                            (OP_SET, Some(value)) => {
                                overrides.insert(key, value.as_str().to_string());
                            }
                            (OP_DELETE, _) => {
                                overrides.remove(&key);
                            }
                            (OP_SET, None) => bad = Some(format!("{key}: SET needs a value")),
                            (other, _) => {
                                bad = Some(format!("{key}: operation {other} applies to list settings; none are supported"))
                            }
                        }
                    }
                    match bad {
                        Some(why) => Err((ResponseError::InvalidConfig, why)),
                        None => broker
                            .topics
                            .alter(&name, overrides, body.validate_only)
                            .await
                            .map_err(|e| (error_for(&e), e.to_string())),
                    }
                }
            }
        };
        if let Err((code, message)) = outcome {
            result.error_code = code.code();
            result.error_message = Some(str_bytes(&message));
        }
        response.responses.push(result);
    }
    respond(request, &response)
}
