//! SyncGroup: the leader hands out assignments; followers wait for theirs.

use std::time::Duration;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::groups::coordinator::Wait;
use crate::groups::state::code;
use crate::Broker;

/// Longest a follower waits for its leader's SyncGroup.
const SYNC_WAIT_MAX: Duration = Duration::from_secs(300);

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: SyncGroupRequest = decode_body(request)?;
    if let Some(code) = super::not_coordinator(broker, body.group_id.0.as_str()) {
        let mut response = SyncGroupResponse::default();
        response.error_code = code;
        return respond(request, &response);
    }
    let assignments = body
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_string(), a.assignment.to_vec()))
        .collect();
    let now = sluice_engine::shard::now_ms();
    let wait = broker.groups.sync(
        body.group_id.0.as_str(),
        now,
        body.group_instance_id.as_ref().map(|i| i.as_str()),
        body.member_id.as_str(),
        body.generation_id,
        assignments,
    );
    let (error, assignment) = match wait {
        Wait::Ready(answer) => answer,
        Wait::Later(rx) => match compio::time::timeout(SYNC_WAIT_MAX, rx).await {
            Ok(Ok(answer)) => answer,
            _ => (code::REBALANCE_IN_PROGRESS, Vec::new()),
        },
    };
    let mut response = SyncGroupResponse::default();
    response.error_code = error;
    response.assignment = bytes::Bytes::from(assignment);
    if request.version >= 5 {
        response.protocol_type = body.protocol_type.clone();
        response.protocol_name = body.protocol_name.clone();
        if response.protocol_type.is_none() {
            response.protocol_type = Some(str_bytes("consumer"));
        }
    }
    respond(request, &response)
}
