//! DeleteGroups: removes empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DeleteGroupsRequest = decode_body(request)?;
    let mut response = DeleteGroupsResponse::default();
    for group_id in body.groups_names {
        let group = group_id.0.as_str().to_string();
        let committed: Vec<(String, i32)> = broker.groups.committed(&group).into_keys().collect();
        let mut error = broker.groups.delete(&group);
        if error == 0 {
            // Tombstones, so the offsets and the membership stay deleted
            // after a restart.
            if let Err(e) = broker.offsets.tombstone(broker, &group, &committed).await {
                tracing::warn!(group = %group, error = %e, "persisting a group deletion failed");
                error = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
            }
        }
        let mut r = DeletableGroupResult::default();
        r.group_id = group_id;
        r.error_code = error;
        response.results.push(r);
    }
    respond(request, &response)
}
