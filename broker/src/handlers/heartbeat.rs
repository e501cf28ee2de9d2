//! Heartbeat: keeps a member's session alive and tells it to rejoin when a
//! rebalance is under way.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: HeartbeatRequest = decode_body(request)?;
    let now = sluice_engine::shard::now_ms();
    let mut response = HeartbeatResponse::default();
    response.error_code =
        super::not_coordinator(broker, body.group_id.0.as_str()).unwrap_or_else(|| {
            broker.groups.heartbeat(
                body.group_id.0.as_str(),
                now,
                body.group_instance_id.as_ref().map(|i| i.as_str()),
                body.member_id.as_str(),
                body.generation_id,
            )
        });
    respond(request, &response)
}
