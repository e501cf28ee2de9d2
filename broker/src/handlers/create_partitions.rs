//! CreatePartitions: grow a topic's partition count (never shrink).

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::create_topics::error_for;
use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: CreatePartitionsRequest = decode_body(request)?;
    let mut response = CreatePartitionsResponse::default();
    for topic in body.topics {
        let mut result = CreatePartitionsTopicResult::default();
        result.name = topic.name.clone();
        let foreign = topic
            .assignments
            .iter()
            .flatten()
            .any(|a| a.broker_ids.iter().any(|id| id.0 != broker.config.node_id));
        let outcome = if foreign {
            Err((
                ResponseError::InvalidReplicaAssignment,
                "this single broker can only assign its own id".to_string(),
            ))
        } else {
            broker
                .topics
                .add_partitions(
                    topic.name.0.as_str(),
                    topic.count,
                    broker.config.node_id,
                    body.validate_only,
                )
                .await
                .map_err(|e| (error_for(&e), e.to_string()))
        };
        if let Err((code, message)) = outcome {
            result.error_code = code.code();
            result.error_message = Some(str_bytes(&message));
        }
        response.results.push(result);
    }
    respond(request, &response)
}
