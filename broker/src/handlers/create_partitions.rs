//! CreatePartitions: grow a topic's partition count (never shrink). The
//! broker's internal topic (`__consumer_offsets`) is refused with
//! INVALID_REQUEST.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;
use tracing::warn;

use super::create_topics::error_for;
use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::offsets_topic;
use crate::Broker;

/// Why re-partitioning the offsets topic is refused (the error message
/// clients see).
const REPARTITION_INTERNAL: &str = "__consumer_offsets is the broker's internal topic: a group's \
     offsets live in the partition its id hashes to among 50, so changing the count would \
     scramble every consumer group's committed offsets";

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
        let outcome = if offsets_topic::is_internal(topic.name.0.as_str()) {
            warn!(topic = %topic.name.0.as_str(), "CreatePartitions refused: {REPARTITION_INTERNAL}");
            Err((
                ResponseError::InvalidRequest,
                REPARTITION_INTERNAL.to_string(),
            ))
        } else if foreign {
            Err((
                ResponseError::InvalidReplicaAssignment,
                "this single broker can only assign its own id".to_string(),
            ))
        } else {
            broker
                .topics
                .add_partitions(topic.name.0.as_str(), topic.count, body.validate_only)
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
