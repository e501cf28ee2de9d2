//! LeaveGroup: one member (v0–2) or a list of them (v3+) leave at once.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: LeaveGroupRequest = decode_body(request)?;
    let group = body.group_id.0.as_str();
    let now = sluice_engine::shard::now_ms();
    let mut response = LeaveGroupResponse::default();
    if let Some(code) = super::not_coordinator(broker, group) {
        response.error_code = code;
        return respond(request, &response);
    }
    if request.version < 3 {
        response.error_code = broker
            .groups
            .leave(group, now, None, body.member_id.as_str());
    } else {
        for member in &body.members {
            let mut r = MemberResponse::default();
            r.member_id = member.member_id.clone();
            r.group_instance_id = member.group_instance_id.clone();
            r.error_code = broker.groups.leave(
                group,
                now,
                member.group_instance_id.as_ref().map(|i| i.as_str()),
                member.member_id.as_str(),
            );
            response.members.push(r);
        }
    }
    respond(request, &response)
}
