//! DeleteTopics: by name, or by topic id (v6 and later). The broker's
//! internal topic (`__consumer_offsets`) is refused with INVALID_REQUEST.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use super::create_topics::error_for;
use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::offsets_topic;
use crate::Broker;

/// Why deleting the offsets topic is refused (the error message clients see).
const DELETE_INTERNAL: &str = "__consumer_offsets is the broker's internal topic: deleting it \
     would lose every consumer group's committed offsets";

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DeleteTopicsRequest = decode_body(request)?;
    let mut names: Vec<(Option<TopicName>, Uuid)> = body
        .topic_names
        .into_iter()
        .map(|name| (Some(name), Uuid::nil()))
        .collect();
    names.extend(body.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let mut response = DeleteTopicsResponse::default();
    for (name, id) in names {
        let mut result = DeletableTopicResult::default();
        result.topic_id = id;
        let name = name.or_else(|| {
            let name = broker.topics.name_of(id.into_bytes())?;
            Some(TopicName(str_bytes(&name)))
        });
        result.name = name.clone();
        let Some(name) = name else {
            result.error_code = ResponseError::UnknownTopicId.code();
            response.responses.push(result);
            continue;
        };
        if offsets_topic::is_internal(name.0.as_str()) {
            warn!(topic = %name.0.as_str(), "DeleteTopics refused: {DELETE_INTERNAL}");
            result.error_code = ResponseError::InvalidRequest.code();
            if request.version >= 5 {
                result.error_message = Some(str_bytes(DELETE_INTERNAL));
            }
            response.responses.push(result);
            continue;
        }
        if let Err(e) = broker.topics.delete(name.0.as_str()).await {
            result.error_code = error_for(&e).code();
            if request.version >= 5 {
                result.error_message = Some(str_bytes(&e.to_string()));
            }
        }
        response.responses.push(result);
    }
    respond(request, &response)
}
