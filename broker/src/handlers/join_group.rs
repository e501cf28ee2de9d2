//! JoinGroup: parks the request until the group's rebalance completes.

use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::coordinator::{new_member_id, Wait};
use crate::groups::state::{code, JoinRequest};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: JoinGroupRequest = decode_body(request)?;
    if let Some(code) = super::not_coordinator(broker, body.group_id.0.as_str()) {
        let mut response = kafka_protocol::messages::JoinGroupResponse::default();
        response.error_code = code;
        response.member_id = body.member_id.clone();
        response.generation_id = -1;
        return super::respond(request, &response);
    }
    // Before v4 clients do not handle MEMBER_ID_REQUIRED: they get an id
    // in their first answer by joining twice internally.
    let mut member_id = body.member_id.as_str().to_string();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    // v0 has no rebalance timeout: it equals the session timeout.
    let rebalance_timeout_ms = if request.version >= 1 {
        body.rebalance_timeout_ms
    } else {
        body.session_timeout_ms
    };
    // group.instance.id is v5+; kafka-protocol leaves it None below.
    let group_instance_id = body
        .group_instance_id
        .as_ref()
        .map(|i| i.as_str().to_string())
        .filter(|i| !i.is_empty());
    // As Kafka shows it (Java's InetAddress.toString of the peer).
    let client_host = format!("/{}", request.peer.ip());
    let make = |member_id: String| JoinRequest {
        member_id,
        group_instance_id: group_instance_id.clone(),
        new_member_id: new_member_id(&client_id, group_instance_id.as_deref()),
        client_id: client_id.clone(),
        client_host: client_host.clone(),
        protocol_type: body.protocol_type.as_str().to_string(),
        protocols: body
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.to_vec()))
            .collect(),
        session_timeout_ms: body.session_timeout_ms,
        rebalance_timeout_ms,
    };
    let group_id = body.group_id.0.as_str().to_string();
    let now = sluice_engine::shard::now_ms();
    let mut wait = broker.groups.join(&group_id, now, make(member_id.clone()));
    if request.version < 4 {
        if let Wait::Ready(r) = &wait {
            if r.error_code == code::MEMBER_ID_REQUIRED {
                member_id = r.member_id.clone();
                wait = broker.groups.join(&group_id, now, make(member_id.clone()));
            }
        }
    }
    let answer = match wait {
        Wait::Ready(r) => r,
        Wait::Later(rx) => {
            let limit = Duration::from_millis(rebalance_timeout_ms.max(0) as u64 + 5_000);
            match compio::time::timeout(limit, rx).await {
                Ok(Ok(r)) => r,
                _ => {
                    let mut response = JoinGroupResponse::default();
                    response.error_code = code::REBALANCE_IN_PROGRESS;
                    response.generation_id = -1;
                    response.member_id = str_bytes(&member_id);
                    return respond(request, &response);
                }
            }
        }
    };
    let mut response = JoinGroupResponse::default();
    response.error_code = answer.error_code;
    response.generation_id = answer.generation_id;
    if request.version >= 7 {
        response.protocol_type = answer.protocol_type.as_deref().map(str_bytes);
    }
    response.protocol_name = answer.protocol_name.as_deref().map(str_bytes);
    if request.version < 7 && response.protocol_name.is_none() {
        response.protocol_name = Some(str_bytes(""));
    }
    response.leader = str_bytes(&answer.leader);
    response.member_id = str_bytes(&answer.member_id);
    response.members = answer
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(&id);
            // v5+; kafka-protocol does not encode it below.
            m.group_instance_id = instance.as_deref().map(str_bytes);
            m.metadata = bytes::Bytes::from(metadata);
            m
        })
        .collect();
    respond(request, &response)
}
