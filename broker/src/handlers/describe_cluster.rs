//! DescribeCluster: the registered brokers; this broker is the controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

/// `endpoint_type` 1: brokers (KIP-919); 2 asks for controllers.
const ENDPOINT_BROKERS: i8 = 1;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DescribeClusterRequest = decode_body(request)?;
    let mut response = DescribeClusterResponse::default();
    if request.version >= 1 && body.endpoint_type != ENDPOINT_BROKERS {
        response.error_code = ResponseError::UnsupportedEndpointType.code();
        return respond(request, &response);
    }
    if request.version >= 1 {
        response.endpoint_type = ENDPOINT_BROKERS;
    }
    response.cluster_id = str_bytes(&broker.cluster_id);
    // The active controller: the Raft leader (-1 while there is none).
    response.controller_id = BrokerId(broker.controller.leader().unwrap_or(-1));
    response.cluster_authorized_operations = i32::MIN;
    let image = broker.topics.image();
    // Live brokers only, as Kafka answers: a fenced one is down.
    response.brokers = image
        .brokers
        .values()
        .filter(|r| !image.fenced.contains(&r.id))
        .map(|r| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(r.id);
            b.host = str_bytes(&r.host);
            b.port = i32::from(r.port);
            b.rack = r.rack.as_deref().map(str_bytes);
            b
        })
        .collect();
    respond(request, &response)
}
