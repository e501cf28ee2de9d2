//! DeleteTopics: by name (v1–6; lookup by topic id answers
//! UNKNOWN_TOPIC_ID, as this broker has no topic ids yet).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::warn;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::DeleteError;
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DeleteTopicsRequest = decode_body(request)?;
    let mut names: Vec<Option<TopicName>> = body.topic_names.into_iter().map(Some).collect();
    names.extend(body.topics.into_iter().map(|t| t.name));
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut result = DeletableTopicResult::default();
        result.name = name.clone();
        let Some(name) = name else {
            result.error_code = ResponseError::UnknownTopicId.code();
            response.responses.push(result);
            continue;
        };
        match broker.topics.delete(&broker.engine, name.0.as_str()).await {
            Ok(()) => {}
            Err(DeleteError::Unknown(_)) => {
                result.error_code = ResponseError::UnknownTopicOrPartition.code();
            }
            Err(e) => {
                warn!(topic = %name.0.as_str(), error = %e, "deleting a topic failed");
                result.error_code = ResponseError::KafkaStorageError.code();
                if request.version >= 5 {
                    result.error_message = Some(str_bytes(&e.to_string()));
                }
            }
        }
        response.responses.push(result);
    }
    respond(request, &response)
}
