//! FindCoordinator: this broker coordinates every group (key type 0);
//! transaction coordinators (key type 1) do not exist yet.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: FindCoordinatorRequest = decode_body(request)?;
    let node = BrokerId(broker.config.node_id);
    let host = str_bytes(&broker.config.advertised_host);
    let port = i32::from(broker.config.advertised_port);
    let error = if body.key_type == KEY_TYPE_GROUP {
        0
    } else {
        ResponseError::CoordinatorNotAvailable.code()
    };
    let mut response = FindCoordinatorResponse::default();
    if request.version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key.clone();
                c.error_code = error;
                if error == 0 {
                    c.node_id = node;
                    c.host = host.clone();
                    c.port = port;
                } else {
                    c.node_id = BrokerId(-1);
                }
                c
            })
            .collect();
    } else {
        response.error_code = error;
        if error == 0 {
            response.node_id = node;
            response.host = host;
            response.port = port;
        } else {
            response.node_id = BrokerId(-1);
        }
    }
    respond(request, &response)
}
