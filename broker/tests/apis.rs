//! APIs that no client library in the tests exercises directly, spoken raw:
//! ApiVersions lists exactly what is implemented, OffsetForLeaderEpoch
//! answers and fences by epoch, DescribeCluster describes this node, and a
//! retried idempotent batch gets its original offset. Partition directories
//! the metadata log does not know are set aside at start.

mod common;

use bytes::BytesMut;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiVersionsRequest, DescribeClusterRequest, InitProducerIdRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, ProducerId,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use common::raw::*;
use common::{produce, Broker};
use kafka_protocol::protocol::StrBytes;

const UNKNOWN_LEADER_EPOCH: i16 = 75;

#[test]
fn api_versions_lists_exactly_the_implemented_apis() {
    let broker = Broker::start();
    let mut s = connect(&broker.addr());
    let resp = call(&mut s, &broker, 3, 1, &ApiVersionsRequest::default());
    let mut listed: Vec<(i16, i16, i16)> = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    listed.sort();
    let mut expected: Vec<(i16, i16, i16)> = sluice_broker::codec::SUPPORTED
        .iter()
        .map(|&(key, min, max)| (key as i16, min, max))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[test]
fn offset_for_leader_epoch_answers_the_log_end_and_fences_unknown_epochs() {
    let broker = Broker::start();
    produce(&broker, "epochs", &[], b"a\nb\nc\n");
    let mut s = connect(&broker.addr());
    let ask = |current: i32| {
        let partition = OffsetForLeaderPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(current)
            .with_leader_epoch(0);
        let topic = OffsetForLeaderTopic::default()
            .with_topic(topic_name("epochs"))
            .with_partitions(vec![partition]);
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![topic])
    };
    let resp = call(&mut s, &broker, 4, 2, &ask(0));
    let p = &resp.topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (0, 0, 3));
    let resp = call(&mut s, &broker, 4, 3, &ask(5));
    assert_eq!(
        resp.topics[0].partitions[0].error_code,
        UNKNOWN_LEADER_EPOCH
    );
}

#[test]
fn describe_cluster_describes_this_broker_as_its_controller() {
    let broker = Broker::start();
    let mut s = connect(&broker.addr());
    let resp = call(
        &mut s,
        &broker,
        1,
        4,
        &DescribeClusterRequest::default().with_endpoint_type(1),
    );
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.controller_id.0, 1);
    assert_eq!(resp.brokers.len(), 1);
    assert_eq!(i32::from(broker.port()), resp.brokers[0].port);
}

fn idempotent_batch(producer_id: i64, sequence: i32) -> Vec<u8> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: 0,
        key: None,
        value: Some(bytes::Bytes::from_static(b"once")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

#[test]
fn a_retried_idempotent_batch_gets_its_original_offset_and_is_stored_once() {
    let broker = Broker::start();
    produce(&broker, "idem", &[], b"first\n");
    let mut s = connect(&broker.addr());
    let init = call(
        &mut s,
        &broker,
        4,
        1,
        &InitProducerIdRequest::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let send = |s: &mut std::net::TcpStream, correlation: i32, seq: i32| {
        let req = produce_req("idem", 0, idempotent_batch(pid, seq)).with_acks(-1);
        call(s, &broker, 9, correlation, &req).responses[0].partition_responses[0].clone()
    };
    let first = send(&mut s, 2, 0);
    assert_eq!((first.error_code, first.base_offset), (0, 1));
    let retry = send(&mut s, 3, 0);
    assert_eq!((retry.error_code, retry.base_offset), (0, 1));
    let gap = send(&mut s, 4, 7);
    assert_eq!(gap.error_code, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let next = send(&mut s, 5, 1);
    assert_eq!((next.error_code, next.base_offset), (0, 2));
}

#[test]
fn transactional_requests_are_refused_at_once_with_a_fatal_code() {
    use kafka_protocol::messages::{FindCoordinatorRequest, TransactionalId};
    const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    let broker = Broker::start();
    let mut s = connect(&broker.addr());
    let init = call(
        &mut s,
        &broker,
        4,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    assert_eq!(init.producer_id, ProducerId(-1));
    // FindCoordinator for a transaction coordinator, before and after the
    // batched form (v4); a group coordinator is still found.
    let find = |version: i16, key_type: i8| {
        let mut req = FindCoordinatorRequest::default().with_key_type(key_type);
        if version >= 4 {
            req = req.with_coordinator_keys(vec![StrBytes::from_static_str("tx")]);
        } else {
            req = req.with_key(StrBytes::from_static_str("tx"));
        }
        call(&mut connect(&broker.addr()), &broker, version, 2, &req)
    };
    let old = find(3, 1);
    assert_eq!(old.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    let message = old.error_message.map(|m| m.to_string()).unwrap_or_default();
    assert!(
        message.contains("transactions are not supported"),
        "{message}"
    );
    let batched = find(4, 1);
    assert_eq!(
        batched.coordinators[0].error_code,
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    );
    assert_eq!(find(4, 0).coordinators[0].error_code, 0);
    assert!(broker.stderr().contains("InitProducerId refused"));
}

#[test]
fn acks_all_needs_min_insync_replicas_and_acks_one_does_not() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::CreateTopicsRequest;
    use kafka_protocol::protocol::StrBytes;
    let broker = Broker::start();
    let mut s = connect(&broker.addr());
    let topic = CreatableTopic::default()
        .with_name(topic_name("strict"))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("min.insync.replicas"))
            .with_value(Some(StrBytes::from_static_str("2")))]);
    let created = call(
        &mut s,
        &broker,
        5,
        1,
        &CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let batch = idempotent_batch(-1, -1);
    let all = call(
        &mut s,
        &broker,
        9,
        2,
        &produce_req("strict", 0, batch.clone()).with_acks(-1),
    );
    assert_eq!(
        all.responses[0].partition_responses[0].error_code, 19,
        "NOT_ENOUGH_REPLICAS"
    );
    let one = call(
        &mut s,
        &broker,
        9,
        3,
        &produce_req("strict", 0, batch).with_acks(1),
    );
    assert_eq!(one.responses[0].partition_responses[0].error_code, 0);
}

#[test]
fn a_second_broker_on_the_same_port_or_data_dir_refuses_to_start() {
    let broker = Broker::start();
    let other_dir = tempfile::tempdir().unwrap();
    let run = |listener: String, dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--set",
                &format!("listeners=PLAINTEXT://{listener}"),
            ])
            .args(["--set", &format!("log.dirs={}", dir.display())])
            .output()
            .unwrap()
    };
    let same_port = run(broker.addr(), other_dir.path());
    assert!(!same_port.status.success());
    assert!(String::from_utf8_lossy(&same_port.stderr).contains("in use"));
    let free = common::free_port();
    let same_dir = run(format!("127.0.0.1:{free}"), &broker.data_dir());
    assert!(!same_dir.status.success());
    assert!(String::from_utf8_lossy(&same_dir.stderr).contains("in use by another broker"));
}

#[test]
fn a_partition_directory_the_metadata_log_does_not_know_is_set_aside() {
    let mut broker = Broker::start();
    produce(&broker, "real", &[], b"kept\n");
    broker.stop();
    let ghost = broker.data_dir().join("ghost-0");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::write(ghost.join("00000000000000000000.log"), b"").unwrap();
    broker.start_again();

    assert!(!ghost.exists(), "the unknown directory is still in place");
    let set_aside: Vec<String> = std::fs::read_dir(broker.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ghost-0.") && n.ends_with(".stray"))
        .collect();
    assert_eq!(set_aside.len(), 1, "the directory was not kept aside");
    let mut s = connect(&broker.addr());
    let all = call(
        &mut s,
        &broker,
        9,
        1,
        &MetadataRequest::default().with_topics(None),
    );
    let names: Vec<&str> = all
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
        .collect();
    assert!(
        names.contains(&"real") && !names.contains(&"ghost"),
        "{names:?}"
    );
    assert!(broker.stderr().contains("set its directory aside"));
}

#[test]
fn topics_are_found_and_deleted_by_their_ids() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{DeleteTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    const UNKNOWN_TOPIC_ID: i16 = 100;
    let broker = Broker::start();
    produce(&broker, "by-id", &[], b"x\n");
    let mut s = connect(&broker.addr());
    let by_name = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("by-id"))))]));
    let id = call(&mut s, &broker, 12, 1, &by_name).topics[0].topic_id;
    assert!(!id.is_nil(), "the topic has no id");
    let by_id = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
        .with_name(None)
        .with_topic_id(id)]));
    let found = call(&mut s, &broker, 12, 2, &by_id);
    assert_eq!(
        found.topics[0].name.as_ref().map(|n| n.0.as_str()),
        Some("by-id")
    );

    let unknown = uuid::Uuid::from_u128(42);
    let delete = DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default()
            .with_name(None)
            .with_topic_id(id),
        DeleteTopicState::default()
            .with_name(None)
            .with_topic_id(unknown),
    ]);
    let deleted = call(&mut s, &broker, 6, 3, &delete);
    assert_eq!(deleted.responses[0].error_code, 0);
    assert_eq!(deleted.responses[1].error_code, UNKNOWN_TOPIC_ID);
    let again = call(&mut s, &broker, 12, 4, &by_id);
    assert_eq!(again.topics[0].error_code, UNKNOWN_TOPIC_ID);
}

#[test]
fn describe_topic_partitions_pages_through_topics_in_name_order() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::DescribeTopicPartitionsRequest;
    let broker = Broker::start();
    for (name, partitions) in [("dtp-b", 2), ("dtp-a", 3), ("dtp-c", 1)] {
        create_topics(&broker, name, partitions);
    }
    let mut s = connect(&broker.addr());
    let names = ["dtp-c", "dtp-a", "dtp-b", "dtp-missing"];
    let ask = |limit: i32, cursor: Option<(&str, i32)>| {
        DescribeTopicPartitionsRequest::default()
            .with_topics(
                names
                    .iter()
                    .map(|n| TopicRequest::default().with_name(topic_name(n)))
                    .collect(),
            )
            .with_response_partition_limit(limit)
            .with_cursor(cursor.map(|(t, p)| {
                Cursor::default()
                    .with_topic_name(topic_name(t))
                    .with_partition_index(p)
            }))
    };
    // Pages of two partitions: (topic, partition) seen, then the cursor.
    let mut pages = Vec::new();
    let mut cursor: Option<(String, i32)> = None;
    for correlation in 0..10 {
        let req = ask(2, cursor.as_ref().map(|(t, p)| (t.as_str(), *p)));
        let resp = call(&mut s, &broker, 0, correlation, &req);
        let mut page = Vec::new();
        for t in &resp.topics {
            let name = t.name.as_ref().unwrap().0.to_string();
            if t.error_code != 0 {
                page.push((name.clone(), -1, t.error_code));
            }
            for p in &t.partitions {
                assert_eq!(p.leader_id.0, 1);
                assert_eq!(p.replica_nodes.len(), 1);
                page.push((name.clone(), p.partition_index, p.error_code));
            }
        }
        pages.push(page);
        cursor = resp
            .next_cursor
            .map(|c| (c.topic_name.0.to_string(), c.partition_index));
        if cursor.is_none() {
            break;
        }
    }
    let p = |t: &str, i: i32| (t.to_string(), i, 0i16);
    assert_eq!(
        pages,
        vec![
            vec![p("dtp-a", 0), p("dtp-a", 1)],
            vec![p("dtp-a", 2), p("dtp-b", 0)],
            vec![p("dtp-b", 1), p("dtp-c", 0)],
            vec![("dtp-missing".to_string(), -1, 3)],
        ]
    );
    // A cursor naming no requested topic: INVALID_REQUEST (42) for all.
    let resp = call(&mut s, &broker, 0, 20, &ask(2, Some(("elsewhere", 0))));
    assert_eq!(resp.topics.len(), 4);
    assert!(resp.topics.iter().all(|t| t.error_code == 42));
}

/// Creates `name` with `partitions` partitions (replication factor 1).
fn create_topics(broker: &Broker, name: &str, partitions: i32) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::CreateTopicsRequest;
    let mut s = connect(&broker.addr());
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(10_000);
    let resp = call(&mut s, broker, 5, 1, &req);
    assert_eq!(resp.topics[0].error_code, 0, "creating {name}");
}

/// A fetch at the end of the log is answered from what the partition's last
/// work left, without a read: it must say what a read would have said. The
/// log start a DeleteRecords moved, a fetcher's last epoch this log never
/// had (a divergence), and an offset past the end each come back as such.
#[test]
fn a_fetch_at_the_log_end_answers_as_a_read_would() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{DeleteRecordsRequest, FetchRequest};
    let broker = Broker::start();
    produce(&broker, "ends", &[], b"a\nb\nc\nd\n");
    let mut s = connect(&broker.addr());
    let deleted = call(
        &mut s,
        &broker,
        2,
        1,
        &DeleteRecordsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name("ends"))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(2)])]),
    );
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    let fetch = |offset: i64, last_fetched_epoch: i32| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("ends"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(last_fetched_epoch)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let at = |resp: &kafka_protocol::messages::FetchResponse| {
        let p = &resp.responses[0].partitions[0];
        (
            p.error_code,
            p.high_watermark,
            p.log_start_offset,
            p.records.as_ref().map_or(0, |r| r.len()),
            (p.diverging_epoch.epoch, p.diverging_epoch.end_offset),
        )
    };
    // At the end, with the log's own epoch or none: nothing, and the log
    // start DeleteRecords set.
    for (n, epoch) in [(2, 0), (3, -1)] {
        let resp = call(&mut s, &broker, 12, n, &fetch(4, epoch));
        assert_eq!(at(&resp), (0, 4, 2, 0, (-1, -1)), "last epoch {epoch}");
    }
    // At the end with an epoch this log never had: where its epochs up to
    // that one end here (KIP-595), not an empty answer.
    let resp = call(&mut s, &broker, 12, 4, &fetch(4, 7));
    assert_eq!(at(&resp), (0, 4, 2, 0, (0, 4)));
    // Past the end, or below the start: out of range.
    for (n, offset) in [(5, 5), (6, 1)] {
        let resp = call(&mut s, &broker, 12, n, &fetch(offset, -1));
        assert_eq!(at(&resp).0, 1, "OFFSET_OUT_OF_RANGE at {offset}");
    }
    // Below the end: the records.
    let resp = call(&mut s, &broker, 12, 7, &fetch(2, 0));
    let (error, hw, start, bytes, _) = at(&resp);
    assert_eq!((error, hw, start), (0, 4, 2));
    assert!(bytes > 0, "records from offset 2");
}

/// A fetch naming a partition the broker refuses (here an unknown topic)
/// beside one it can read is answered at once with that error, not parked
/// for its `max_wait_ms` on the readable one: a follower's first fetch of
/// a new partition can reach the leader before the leader knows the topic,
/// and parking it held acks=all produces back for the whole wait. The
/// wait asked for (30 s) is longer than the test connection's read timeout,
/// so a parked fetch fails the call.
#[test]
fn a_fetch_with_a_refused_partition_is_answered_at_once() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;
    let broker = Broker::start();
    produce(&broker, "known", &[], b"a\nb\n");
    let mut s = connect(&broker.addr());
    let partition = |offset: i64| {
        FetchPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(offset)
            .with_last_fetched_epoch(-1)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(1 << 20)
    };
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(30_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name("known"))
                .with_partitions(vec![partition(2)]),
            FetchTopic::default()
                .with_topic(topic_name("not-created"))
                .with_partitions(vec![partition(0)]),
        ]);
    let resp = call(&mut s, &broker, 12, 1, &request);
    let codes: Vec<(i16, i64)> = resp
        .responses
        .iter()
        .map(|t| (t.partitions[0].error_code, t.partitions[0].high_watermark))
        .collect();
    // The readable partition at its end (nothing new), the other unknown.
    assert_eq!(codes, vec![(0, 2), (3, -1)]);
}

/// The kernel hands a new connection to either shard; the broker moves a
/// connection whose produces and fetches keep touching another shard's
/// partitions to that shard. Requests read ahead before the move are
/// answered first and in order, and the ones after it by the new shard: 40
/// pipelined produces of one record each get offsets in the order sent, and
/// a consumer's fetches and the request behind them are answered. A
/// connection lands on the other shard with even odds, so the test opens
/// connections until one moved (at most 64: all staying put has odds of
/// 2^-64). Fetches count alike, whether a consumer's or a follower's.
#[test]
fn a_connection_moves_to_its_partitions_shard_and_keeps_its_order() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, ProduceRequest};
    const MOVED: &str = "connection moved to the shard of its partitions";
    let broker = Broker::start_with(&[("sluice.shards", "2")]);
    produce(&broker, "moving", &[], b"first\n");
    let mut next = 1i64;
    let mut moved = false;
    for _ in 0..64 {
        let mut s = connect(&broker.addr());
        let mut all = Vec::new();
        for i in 0..40 {
            let value = format!("m{next}-{i}");
            all.extend(typed_request(7, i, &produce_req("moving", 0, batch(&[&value]))).0);
        }
        send(&mut s, &all).unwrap_or_else(|_| broker.fail("sending the produces"));
        for i in 0..40 {
            let resp = receive::<ProduceRequest>(&mut s, &broker, 7, i);
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(
                (p.error_code, p.base_offset),
                (0, next + i as i64),
                "{resp:?}"
            );
        }
        next += 40;
        if broker.stderr().contains(MOVED) {
            moved = true;
            break;
        }
    }
    assert!(moved, "no connection of 64 moved: {}", broker.stderr());
    let values = common::values(&common::consume(&broker, "moving", &[]));
    assert_eq!(values.len() as i64, next, "every produce is there once");

    // A consumer's fetches, the last with a request right behind it.
    let fetch = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("moving"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(0)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let moves = broker.stderr().matches(MOVED).count();
    for _ in 0..64 {
        let mut s = connect(&broker.addr());
        for i in 0..20 {
            let _ = call(&mut s, &broker, 12, i, &fetch);
        }
        let mut both = typed_request(12, 20, &fetch).0;
        both.extend(typed_request(3, 21, &ApiVersionsRequest::default()).0);
        send(&mut s, &both).unwrap_or_else(|_| broker.fail("sending the fetch"));
        let fetched = receive::<FetchRequest>(&mut s, &broker, 12, 20);
        assert_eq!(fetched.responses[0].partitions[0].partition_index, 0);
        assert_eq!(
            receive::<ApiVersionsRequest>(&mut s, &broker, 3, 21).error_code,
            0
        );
        if broker.stderr().matches(MOVED).count() > moves {
            return;
        }
    }
    panic!("no fetching connection of 64 moved: {}", broker.stderr());
}
