//! Requests pipelined on one connection: responses come back in request
//! order, Produce requests append in the order they were sent, and a
//! read-only request does not wait behind a parked long-poll Fetch, and
//! racing auto-creations of one topic all answer with the topic.

mod common;

use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{FetchRequest, MetadataRequest, ProduceRequest};

use common::raw::*;
use common::{consume, poll_until, produce, values, Broker};

#[test]
fn pipelined_produce_requests_append_and_answer_in_order() {
    let broker = Broker::start();
    produce(&broker, "order", &[], b"first\n");
    let mut s = connect(&broker.addr());
    let mut all = Vec::new();
    let expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for (i, value) in expected.iter().enumerate() {
        let req = produce_req("order", 0, batch(&[value]));
        all.extend(typed_request(7, i as i32, &req).0);
    }
    // All forty requests leave before any response is read.
    send(&mut s, &all).unwrap();
    for i in 0..expected.len() {
        let resp = receive::<ProduceRequest>(&mut s, &broker, 7, i as i32);
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, i as i64 + 1),
            "request {i}"
        );
    }
    let stored = consume(&broker, "order", &["-o", "1", "-c", "40"]);
    assert_eq!(values(&stored), expected);
}

/// Produces run concurrently once queued, so this covers both ways an
/// append reaches its partition: on the connection's own shard and through
/// another shard's queue (four partitions over the shards).
#[test]
fn pipelined_produces_to_partitions_on_every_shard_keep_each_partitions_order() {
    let broker = Broker::start_with(&[("num.partitions", "4")]);
    for p in 0..4 {
        produce(&broker, "spread", &["-p", &p.to_string()], b"first\n");
    }
    let mut s = connect(&broker.addr());
    let mut all = Vec::new();
    let sent: Vec<(i32, String)> = (0..80).map(|i| (i % 4, format!("m{i}"))).collect();
    for (i, (partition, value)) in sent.iter().enumerate() {
        let req = produce_req("spread", *partition, batch(&[value]));
        all.extend(typed_request(7, i as i32, &req).0);
    }
    send(&mut s, &all).unwrap();
    for (i, (partition, _)) in sent.iter().enumerate() {
        let resp = receive::<ProduceRequest>(&mut s, &broker, 7, i as i32);
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            (p.index, p.error_code, p.base_offset),
            (*partition, 0, i as i64 / 4 + 1),
            "request {i}"
        );
    }
    for partition in 0..4 {
        let stored = consume(
            &broker,
            "spread",
            &["-p", &partition.to_string(), "-o", "1", "-c", "20"],
        );
        let expected: Vec<String> = sent
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(values(&stored), expected, "partition {partition}");
    }
}

#[test]
fn a_parked_fetch_does_not_hold_back_the_requests_behind_it() {
    let broker = Broker::start();
    produce(&broker, "quiet", &[], b"x\n");
    let mut s = connect(&broker.addr());
    // A fetch past the end of the log, willing to wait 60 s for data.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(60_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("quiet"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    // Behind it, a Metadata request that auto-creates a topic.
    let metadata = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("made-while-parked")))
        ]));
    let mut both = typed_request(11, 1, &fetch).0;
    both.extend(typed_request(9, 2, &metadata).0);
    send(&mut s, &both).unwrap();

    // The topic appears while the fetch is still parked (the broker caps
    // the wait at 30 s; this looks for 20 s): the Metadata request ran
    // without waiting for it.
    let mut other = connect(&broker.addr());
    let all = MetadataRequest::default().with_topics(None);
    poll_until(
        Duration::from_secs(20),
        "the pipelined Metadata to run",
        || {
            let resp = common::raw::call(&mut other, &broker, 9, 7, &all);
            resp.topics
                .iter()
                .any(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some("made-while-parked"))
                .then_some(())
        },
    );
    // Data wakes the fetch; then both answers arrive, in request order.
    produce(&broker, "quiet", &[], b"y\n");
    let fetched = receive::<FetchRequest>(&mut s, &broker, 11, 1);
    let records = fetched.responses[0].partitions[0].records.as_ref();
    assert!(records.is_some_and(|r| !r.is_empty()), "{fetched:?}");
    let described = receive::<MetadataRequest>(&mut s, &broker, 9, 2);
    assert_eq!(described.topics[0].error_code, 0);
}

#[test]
fn racing_auto_creations_of_one_topic_all_see_it_with_its_partitions() {
    let broker = Broker::start();
    for round in 0..10 {
        let topic = format!("race-{round}");
        let ask = MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(&topic)))
            ]));
        // Four connections, each with four requests pipelined.
        let mut connections: Vec<_> = (0..4).map(|_| connect(&broker.addr())).collect();
        for s in &mut connections {
            let mut all = Vec::new();
            for i in 0..4 {
                all.extend(typed_request(9, i, &ask).0);
            }
            send(s, &all).unwrap();
        }
        for s in &mut connections {
            for i in 0..4 {
                let resp = receive::<MetadataRequest>(s, &broker, 9, i);
                let t = &resp.topics[0];
                assert_eq!(
                    (t.error_code, t.partitions.len()),
                    (0, 1),
                    "{topic}, request {i}: {t:?}"
                );
            }
        }
    }
}

/// A long-poll fetch gives its budget back while it waits; a fetch
/// pipelined behind it may then read and hold the connection's budget
/// until its response is written, which is after the long-poll's. The
/// long-poll, once its wait ends, must still be answered rather than wait
/// for that budget for ever.
#[test]
fn a_long_poll_ending_behind_a_fetch_that_read_data_is_still_answered() {
    let broker = Broker::start();
    produce(&broker, "tail", &[], b"only\n");
    let mut s = connect(&broker.addr());
    let fetch = |offset: i64, max_wait_ms: i32| {
        FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            // As much as a client may ask: the whole of fetch.max.bytes.
            .with_max_bytes(i32::MAX)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("tail"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(i32::MAX)])])
    };
    // First a long-poll at the end of the log (nothing to read: it waits
    // 300 ms), then a fetch of the record already there.
    let mut both = typed_request(11, 1, &fetch(1, 300)).0;
    both.extend(typed_request(11, 2, &fetch(0, 0)).0);
    send(&mut s, &both).unwrap();
    let parked = receive::<FetchRequest>(&mut s, &broker, 11, 1);
    let p = &parked.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "{parked:?}");
    assert!(
        p.records.as_ref().is_none_or(|r| r.is_empty()),
        "{parked:?}"
    );
    let read = receive::<FetchRequest>(&mut s, &broker, 11, 2);
    let records = read.responses[0].partitions[0].records.as_ref();
    assert!(records.is_some_and(|r| !r.is_empty()), "{read:?}");
}
