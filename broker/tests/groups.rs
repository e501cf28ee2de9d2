//! The group coordinator's fencing, spoken raw where a real client cannot
//! express the case: membership kept across a restart, a zombie's commit
//! after a broker restart, a static
//! member restarting without a rebalance and its old id fenced, and
//! DescribeGroups naming the real peer address.

mod common;

use std::net::{SocketAddr, TcpStream};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

use common::raw::*;
use common::Broker;

const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

const GROUP: &str = "fenced";
const TOPIC: &str = "orders";

fn start() -> Broker {
    // No initial delay: a rebalance completes as soon as everyone joined.
    Broker::start_with(&[("group.initial.rebalance.delay.ms", "0")])
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn create_topic(broker: &Broker) {
    let mut conn = connect(&broker.addr());
    let created = call(
        &mut conn,
        broker,
        5,
        1,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(TOPIC))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0, "create {TOPIC}");
}

fn join_request(member_id: &str, instance: Option<&str>) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"meta"))])
}

/// A dynamic member's KIP-394 join: MEMBER_ID_REQUIRED, then the rejoin.
fn join_dynamic(conn: &mut TcpStream, broker: &Broker) -> JoinGroupResponse {
    let first = call(conn, broker, 7, 1, &join_request("", None));
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let id = first.member_id.to_string();
    let joined = call(conn, broker, 7, 2, &join_request(&id, None));
    assert_eq!(joined.error_code, 0, "rejoin with the given id");
    joined
}

fn sync(
    conn: &mut TcpStream,
    broker: &Broker,
    member: &str,
    instance: Option<&str>,
    generation: i32,
    assignments: &[(&str, &[u8])],
) -> (i16, Vec<u8>) {
    let resp = call(
        conn,
        broker,
        5,
        3,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::copy_from_slice(a))
                    })
                    .collect(),
            ),
    );
    (resp.error_code, resp.assignment.to_vec())
}

fn commit(
    conn: &mut TcpStream,
    broker: &Broker,
    member: &str,
    instance: Option<&str>,
    generation: i32,
    offset: i64,
) -> i16 {
    let resp = call(
        conn,
        broker,
        8,
        4,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])]),
    );
    resp.topics[0].partitions[0].error_code
}

fn committed(conn: &mut TcpStream, broker: &Broker) -> i64 {
    let resp = call(
        conn,
        broker,
        7,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partition_indexes(vec![0])])),
    );
    resp.topics[0].partitions[0].committed_offset
}

fn heartbeat(
    conn: &mut TcpStream,
    broker: &Broker,
    member: &str,
    instance: Option<&str>,
    generation: i32,
) -> i16 {
    call(
        conn,
        broker,
        4,
        6,
        &HeartbeatRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s)),
    )
    .error_code
}

fn leave(conn: &mut TcpStream, broker: &Broker, member: &str) -> i16 {
    call(
        conn,
        broker,
        1,
        7,
        &LeaveGroupRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_member_id(s(member)),
    )
    .error_code
}

/// Group membership is kept in `__consumer_offsets`: after a restart the
/// group's member heartbeats and syncs at its generation and gets its
/// assignment back, with no rebalance (as after a coordinator move).
#[test]
fn a_groups_members_keep_their_generation_and_assignment_across_a_restart() {
    let mut broker = start();
    create_topic(&broker);
    let mut member = connect(&broker.addr());
    let joined = join_dynamic(&mut member, &broker);
    let (id, generation) = (joined.member_id.to_string(), joined.generation_id);
    assert_eq!(
        sync(
            &mut member,
            &broker,
            &id,
            None,
            generation,
            &[(&id, b"mine")]
        )
        .0,
        0
    );
    broker.stop();
    broker.start_again();
    let mut member = connect(&broker.addr());
    assert_eq!(heartbeat(&mut member, &broker, &id, None, generation), 0);
    assert_eq!(
        sync(&mut member, &broker, &id, None, generation, &[]),
        (0, b"mine".to_vec())
    );
    assert_eq!(commit(&mut member, &broker, &id, None, generation, 7), 0);
    finish(broker);
}

#[test]
fn a_zombie_members_commit_after_a_restart_is_refused() {
    let mut broker = start();
    create_topic(&broker);
    let mut zombie = connect(&broker.addr());
    let joined = join_dynamic(&mut zombie, &broker);
    let (zombie_id, generation) = (joined.member_id.to_string(), joined.generation_id);
    assert_eq!(generation, 1);
    assert_eq!(
        sync(
            &mut zombie,
            &broker,
            &zombie_id,
            None,
            generation,
            &[(&zombie_id, b"all")]
        )
        .0,
        0
    );
    assert_eq!(
        commit(&mut zombie, &broker, &zombie_id, None, generation, 10),
        0
    );

    // It leaves (the group is now empty, and kept so) and the broker
    // restarts; a new member with the same client id joins the next
    // generation.
    assert_eq!(leave(&mut zombie, &broker, &zombie_id), 0);
    broker.stop();
    broker.start_again();
    let mut live = connect(&broker.addr());
    let joined = join_dynamic(&mut live, &broker);
    let live_id = joined.member_id.to_string();
    let generation = generation + 1;
    assert_eq!(joined.generation_id, generation);
    assert_ne!(
        live_id, zombie_id,
        "member ids never repeat across restarts"
    );
    assert_eq!(
        sync(
            &mut live,
            &broker,
            &live_id,
            None,
            generation,
            &[(&live_id, b"all")]
        )
        .0,
        0
    );
    assert_eq!(
        commit(&mut live, &broker, &live_id, None, generation, 20),
        0
    );

    // The zombie wakes up and commits with its old (member, generation).
    let mut zombie = connect(&broker.addr());
    let verdict = commit(&mut zombie, &broker, &zombie_id, None, generation - 1, 5);
    assert!(
        verdict == UNKNOWN_MEMBER_ID || verdict == ILLEGAL_GENERATION,
        "a zombie's commit must be refused, got error code {verdict}"
    );
    assert_eq!(
        committed(&mut live, &broker),
        20,
        "the live member's offset stands"
    );
    finish(broker);
}

#[test]
fn a_restarted_static_member_gets_its_assignment_back_without_a_rebalance() {
    // Both first joins land within the initial delay (3 s, sent back to
    // back), so they share the group's first generation.
    let broker = Broker::start_with(&[("group.initial.rebalance.delay.ms", "3000")]);
    create_topic(&broker);
    // Two static members join; static members skip MEMBER_ID_REQUIRED, and
    // each waits for the other, so each speaks on its own connection.
    let addr = broker.addr();
    let mut conns: Vec<TcpStream> = ["a", "b"]
        .iter()
        .map(|instance| {
            let mut conn = connect(&addr);
            send(
                &mut conn,
                &typed_request(7, 1, &join_request("", Some(instance))).0,
            )
            .expect("send JoinGroup");
            conn
        })
        .collect();
    let joins: Vec<JoinGroupResponse> = conns
        .iter_mut()
        .map(|conn| receive::<JoinGroupRequest>(conn, &broker, 7, 1))
        .collect();
    for j in &joins {
        assert_eq!(j.error_code, 0);
        assert_eq!(j.generation_id, 1, "both joined the first generation");
    }
    let id_of = |instance: &str| {
        joins
            .iter()
            .map(|j| j.member_id.to_string())
            .find(|id| id.starts_with(&format!("{instance}-")))
            .unwrap_or_else(|| panic!("a member id for instance {instance}"))
    };
    let (a, b) = (id_of("a"), id_of("b"));
    let leader = joins[0].leader.to_string();
    let (leader_instance, follower, follower_instance) = if leader == a {
        ("a", b.clone(), "b")
    } else {
        ("b", a.clone(), "a")
    };
    // The follower's sync waits for the leader's: send it first, on its
    // own connection, and read it after the leader's.
    let mut follower_conn = connect(&addr);
    send(
        &mut follower_conn,
        &typed_request(
            5,
            3,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_generation_id(1)
                .with_member_id(s(&follower))
                .with_group_instance_id(Some(s(follower_instance)))
                .with_protocol_type(Some(s("consumer")))
                .with_protocol_name(Some(s("range"))),
        )
        .0,
    )
    .expect("send follower SyncGroup");
    let mut leader_conn = connect(&addr);
    let assignments: [(&str, &[u8]); 2] = [(&a, b"A"), (&b, b"B")];
    let (err, _) = sync(
        &mut leader_conn,
        &broker,
        &leader,
        Some(leader_instance),
        1,
        &assignments,
    );
    assert_eq!(err, 0);
    let followers = receive::<SyncGroupRequest>(&mut follower_conn, &broker, 5, 3);
    assert_eq!(followers.error_code, 0);

    // "b" restarts: it rejoins with its instance id and no member id, and
    // is answered at once with the current generation.
    let mut restarted = connect(&addr);
    let again = call(&mut restarted, &broker, 7, 1, &join_request("", Some("b")));
    assert_eq!(again.error_code, 0);
    assert_eq!(again.generation_id, 1, "no rebalance");
    let b2 = again.member_id.to_string();
    assert_ne!(b2, b);
    assert_ne!(
        again.leader.to_string(),
        b2,
        "the restarted member is not asked to assign"
    );
    assert_eq!(
        sync(&mut restarted, &broker, &b2, Some("b"), 1, &[]),
        (0, b"B".to_vec()),
        "its previous assignment"
    );
    // The other member sees no rebalance; the old id is fenced.
    assert_eq!(heartbeat(&mut leader_conn, &broker, &a, Some("a"), 1), 0);
    assert_eq!(
        heartbeat(&mut follower_conn, &broker, &b, Some("b"), 1),
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        commit(&mut follower_conn, &broker, &b, Some("b"), 1, 3),
        FENCED_INSTANCE_ID
    );
    assert_eq!(commit(&mut restarted, &broker, &b2, Some("b"), 1, 3), 0);
    finish(broker);
}

#[test]
fn describe_groups_shows_the_peer_address_as_client_host() {
    let broker = start();
    // Loopback accepts any 127/8 source: connect from 127.0.0.2 so the
    // answer cannot be a hard-coded 127.0.0.1.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = "127.0.0.2:0".parse().expect("address");
    socket.bind(&local.into()).expect("bind 127.0.0.2");
    let remote: SocketAddr = broker.addr().parse().expect("broker address");
    socket
        .connect_timeout(&remote.into(), IO_TIMEOUT)
        .expect("connect");
    let mut conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let joined = join_dynamic(&mut conn, &broker);
    let described = call(
        &mut conn,
        &broker,
        5,
        9,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(GROUP))]),
    );
    let members = &described.groups[0].members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].member_id, joined.member_id);
    assert_eq!(members[0].client_host.as_str(), "/127.0.0.2");
    finish(broker);
}
