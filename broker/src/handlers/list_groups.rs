//! ListGroups: the groups with members or committed offsets.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: ListGroupsRequest = decode_body(request)?;
    let mut response = ListGroupsResponse::default();
    for (id, protocol_type, state) in broker.groups.list() {
        if request.version >= 4
            && !body.states_filter.is_empty()
            && !body.states_filter.iter().any(|s| s.as_str() == state)
        {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(str_bytes(&id));
        g.protocol_type = str_bytes(&protocol_type);
        if request.version >= 4 {
            g.group_state = str_bytes(state);
        }
        if request.version >= 5 {
            g.group_type = str_bytes("classic");
        }
        response.groups.push(g);
    }
    respond(request, &response)
}
