//! DescribeGroups: state, protocol and members of each group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: DescribeGroupsRequest = decode_body(request)?;
    let mut response = DescribeGroupsResponse::default();
    for group_id in body.groups {
        let mut g = DescribedGroup::default();
        g.group_id = group_id.clone();
        g.authorized_operations = i32::MIN;
        match broker.groups.describe(group_id.0.as_str()) {
            Some(d) => {
                g.group_state = str_bytes(d.state);
                g.protocol_type = str_bytes(&d.protocol_type);
                g.protocol_data = str_bytes(&d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|d| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = str_bytes(&d.member_id);
                        m.group_instance_id = d.group_instance_id.as_deref().map(str_bytes);
                        m.client_id = str_bytes(&d.client_id);
                        m.client_host = str_bytes(&d.client_host);
                        m.member_metadata = bytes::Bytes::from(d.metadata);
                        m.member_assignment = bytes::Bytes::from(d.assignment);
                        m
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead with no members.
            None => g.group_state = str_bytes("Dead"),
        }
        response.groups.push(g);
    }
    respond(request, &response)
}
