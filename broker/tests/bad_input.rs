//! Malformed and hostile input on raw TCP connections. The broker must never
//! die, must answer or close (never hang a connection it cannot parse), and
//! must keep serving everyone else: after each case an ApiVersions round
//! trip on a fresh connection still works, and at the end `kcat -L` works
//! and SIGTERM still gives a clean exit.

mod common;

use std::net::{Shutdown, TcpStream};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use common::raw::*;
use common::{consume, kcat_on, produce, values, Broker};

// ---------------------------------------------------------------------------
// Cases

#[test]
fn a_negative_length_prefix_closes_the_connection() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    for len in [-1i32, i32::MIN, -4] {
        let mut s = connect(&addr);
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 16]);
        let _ = send(&mut s, &bytes);
        assert_closed(&mut s, &broker, &format!("length prefix {len}"));
        assert_still_serving(&mut broker, &format!("length prefix {len}"));
    }
    finish(broker);
}

#[test]
fn a_frame_larger_than_socket_request_max_bytes_closes_the_connection() {
    let mut broker = Broker::start_with(&[("socket.request.max.bytes", "1048576")]);
    let addr = broker.addr();
    for len in [1i32 << 30, i32::MAX, 1_048_577] {
        let mut s = connect(&addr);
        // Only the length and a little payload: the broker must give up on
        // the size alone, not wait for (or buffer) a gigabyte.
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&api_versions_request(1, 3)[4..]);
        let _ = send(&mut s, &bytes);
        assert_closed(&mut s, &broker, &format!("length prefix {len} > 1048576"));
        assert_still_serving(&mut broker, &format!("length prefix {len}"));
    }
    finish(broker);
}

#[test]
fn garbage_after_a_valid_length_is_answered_or_closed() {
    let mut broker = Broker::start();
    let addr = broker.addr();

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("an empty frame".into(), frame(&[])),
        ("three bytes".into(), frame(&[0, 18, 0])),
        (
            "0xDEADBEEF bytes".into(),
            frame(&[0xDE, 0xAD, 0xBE, 0xEF].repeat(8)),
        ),
    ];
    // A valid Metadata v1 header, then a topic array claiming 2^31-1 entries.
    let mut md = Vec::new();
    md.extend_from_slice(&API_METADATA.to_be_bytes());
    md.extend_from_slice(&1i16.to_be_bytes());
    md.extend_from_slice(&7i32.to_be_bytes());
    md.extend_from_slice(&1i16.to_be_bytes());
    md.push(b'x');
    md.extend_from_slice(&i32::MAX.to_be_bytes());
    md.extend_from_slice(b"abc");
    cases.push(("Metadata v1 with a huge topic count".into(), frame(&md)));
    // ApiVersions v0 header whose client id runs past the end of the frame.
    let mut av = Vec::new();
    av.extend_from_slice(&API_VERSIONS.to_be_bytes());
    av.extend_from_slice(&0i16.to_be_bytes());
    av.extend_from_slice(&8i32.to_be_bytes());
    av.extend_from_slice(&1000i16.to_be_bytes());
    av.extend_from_slice(b"short");
    cases.push(("a client id longer than the frame".into(), frame(&av)));
    // Deterministic pseudo-random frames.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20 {
        let len = (next() % 200) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        cases.push((format!("random frame #{i} ({len} bytes)"), frame(&body)));
    }

    for (what, bytes) in cases {
        let mut s = connect(&addr);
        if send(&mut s, &bytes).is_ok() {
            let reply = assert_answered_or_closed(&mut s, &broker, &what);
            eprintln!(
                "{what}: {}",
                match reply {
                    Reply::Closed => "closed".to_string(),
                    Reply::Frame(f) => format!("answered with {} bytes", f.len()),
                    Reply::Silent => unreachable!(),
                }
            );
        }
        drop(s);
        assert_still_serving(&mut broker, &what);
    }
    finish(broker);
}

#[test]
fn a_truncated_frame_then_disconnect_leaves_the_broker_serving() {
    let mut broker = Broker::start();
    let addr = broker.addr();

    // Length 100, 10 bytes, then the client goes away.
    let mut s = connect(&addr);
    let mut bytes = 100i32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1u8; 10]);
    send(&mut s, &bytes).unwrap();
    // While that frame is incomplete, other clients are served.
    assert_still_serving(&mut broker, "a half-sent frame on another connection");
    drop(s);
    assert_still_serving(&mut broker, "a truncated frame and a disconnect");

    // A valid ApiVersions request missing its last bytes, then disconnect.
    let req = api_versions_request(3, 3);
    let mut s = connect(&addr);
    send(&mut s, &req[..req.len() - 3]).unwrap();
    drop(s);
    assert_still_serving(&mut broker, "a valid request cut short");

    // Half the length prefix only.
    let mut s = connect(&addr);
    send(&mut s, &[0, 0]).unwrap();
    drop(s);
    assert_still_serving(&mut broker, "half a length prefix");

    // Truncated frame, then a half-close: the broker sees EOF mid-frame and
    // must close its side rather than keep the connection.
    let mut s = connect(&addr);
    send(&mut s, &req[..req.len() - 3]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut s, &broker, "EOF in the middle of a frame");
    assert_still_serving(&mut broker, "EOF in the middle of a frame");
    finish(broker);
}

#[test]
fn an_unknown_api_key_is_rejected_without_harm() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    // Request header v1: api key 999, version 0, correlation id, client id.
    let mut body = Vec::new();
    body.extend_from_slice(&999i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&4242i32.to_be_bytes());
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"test");
    let mut s = connect(&addr);
    if send(&mut s, &frame(&body)).is_ok() {
        // Kafka closes the connection; an error response is acceptable too.
        match assert_answered_or_closed(&mut s, &broker, "api key 999") {
            Reply::Closed => {}
            Reply::Frame(f) => assert_eq!(
                correlation_id(&f),
                4242,
                "a response to api key 999 must carry its correlation id"
            ),
            Reply::Silent => unreachable!(),
        }
    }
    drop(s);
    assert_still_serving(&mut broker, "an unknown api key");

    // Same for a known key with a negative api key value.
    let mut body2 = body.clone();
    body2[..2].copy_from_slice(&(-1i16).to_be_bytes());
    let mut s = connect(&addr);
    if send(&mut s, &frame(&body2)).is_ok() {
        assert_answered_or_closed(&mut s, &broker, "api key -1");
    }
    drop(s);
    assert_still_serving(&mut broker, "api key -1");
    finish(broker);
}

#[test]
fn api_versions_with_an_unsupported_version_gets_unsupported_version_as_v0() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let mut s = connect(&addr);
    send(&mut s, &api_versions_request(77, 99)).unwrap();
    let body = match read_reply(&mut s) {
        Reply::Frame(b) => b,
        other => broker.fail(&format!(
            "ApiVersions v99: expected an UNSUPPORTED_VERSION response, got {other:?}"
        )),
    };
    assert_eq!(correlation_id(&body), 77, "correlation id");
    // KIP-511: the error response is encoded as ApiVersions v0, with
    // response header v0, and lists the supported ApiVersions range so the
    // client can retry with a version the broker knows.
    let mut rest = Bytes::from(body.clone()).slice(4..);
    let resp = ApiVersionsResponse::decode(&mut rest, 0).unwrap_or_else(|e| {
        broker.fail(&format!(
            "ApiVersions v99 response does not decode as v0 ({e}): {body:02x?}"
        ))
    });
    assert_eq!(
        resp.error_code, UNSUPPORTED_VERSION,
        "error_code for ApiVersions v99: {resp:?}"
    );
    assert!(
        rest.is_empty(),
        "{} trailing bytes after the v0 body: not a v0 encoding ({body:02x?})",
        rest.len()
    );
    let av = resp
        .api_keys
        .iter()
        .find(|k| k.api_key == API_VERSIONS)
        .unwrap_or_else(|| panic!("the v0 error response must list ApiVersions: {resp:?}"));
    assert!(av.min_version == 0 && av.max_version >= 3, "{av:?}");

    // Kafka keeps the connection open: the client retries on it.
    send(&mut s, &api_versions_request(78, 3)).unwrap();
    let body = match read_reply(&mut s) {
        Reply::Frame(b) => b,
        other => broker.fail(&format!(
            "ApiVersions v3 after the v99 error on the same connection: got {other:?}"
        )),
    };
    assert_eq!(correlation_id(&body), 78);
    let mut rest = Bytes::from(body).slice(4..);
    let resp = ApiVersionsResponse::decode(&mut rest, 3).expect("decode v3");
    assert_eq!(resp.error_code, 0, "{resp:?}");
    drop(s);
    assert_still_serving(&mut broker, "ApiVersions v99");
    finish(broker);
}

#[test]
fn a_produce_with_a_corrupt_batch_gets_corrupt_message() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    // Create the topic (auto-create through kcat's Metadata) with one
    // message at offset 0.
    produce(&broker, "corrupt", &[], b"seed\n");

    let good = batch(&["r0", "r1", "r2"]);
    // The CRC covers everything from the attributes (byte 21) to the end.
    let mut flipped_payload = good.clone();
    *flipped_payload.last_mut().unwrap() ^= 0xFF;
    let mut flipped_crc = good.clone();
    flipped_crc[18] ^= 0x01;
    // Byte 40 lies in maxTimestamp (bytes 35..43 of the batch header).
    let mut flipped_header = good.clone();
    flipped_header[40] ^= 0x10;

    let mut s = connect(&addr);
    let mut corr = 100;
    for (what, bytes) in [
        ("last byte flipped", flipped_payload),
        ("CRC byte flipped", flipped_crc),
        ("maxTimestamp byte flipped", flipped_header),
    ] {
        corr += 1;
        let (err, _) = produce_raw(&mut s, &broker, corr, "corrupt", 0, bytes);
        if err != CORRUPT_MESSAGE {
            broker.fail(&format!(
                "Produce v7 with a corrupt batch ({what}): expected error_code \
                 {CORRUPT_MESSAGE} (CORRUPT_MESSAGE), got {err}"
            ));
        }
    }

    // The same connection still works, and the intact batch is accepted
    // right after the seed message.
    let (err, base) = produce_raw(&mut s, &broker, 200, "corrupt", 0, good);
    assert_eq!(err, 0, "intact batch after corrupt ones");
    assert_eq!(base, 1, "base offset of the intact batch");
    drop(s);
    assert_still_serving(&mut broker, "corrupt batches");

    // Nothing of the corrupt batches was stored.
    let msgs = consume(&broker, "corrupt", &[]);
    assert_eq!(values(&msgs), vec!["seed", "r0", "r1", "r2"]);
    finish(broker);
}

#[test]
fn a_produce_to_a_partition_that_does_not_exist_gets_unknown_topic_or_partition() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    produce(&broker, "one-partition", &[], b"seed\n");
    let mut s = connect(&addr);
    let (err, _) = produce_raw(&mut s, &broker, 1, "one-partition", 7, batch(&["x"]));
    assert_eq!(
        err, UNKNOWN_TOPIC_OR_PARTITION,
        "partition 7 of a 1-partition topic"
    );
    let (err, _) = produce_raw(&mut s, &broker, 2, "one-partition", -1, batch(&["x"]));
    assert_eq!(err, UNKNOWN_TOPIC_OR_PARTITION, "partition -1");
    drop(s);
    assert_still_serving(&mut broker, "produce to a missing partition");
    assert_eq!(
        values(&consume(&broker, "one-partition", &[])),
        vec!["seed"]
    );
    finish(broker);
}

#[test]
fn a_produce_to_an_unknown_topic_with_auto_create_off_gets_unknown_topic_or_partition() {
    let mut broker = Broker::start_with(&[("auto.create.topics.enable", "false")]);
    let addr = broker.addr();
    let mut s = connect(&addr);

    let (err, _) = produce_raw(&mut s, &broker, 1, "no-such-topic", 0, batch(&["x"]));
    if err != UNKNOWN_TOPIC_OR_PARTITION {
        broker.fail(&format!(
            "Produce v7 to an unknown topic with auto.create.topics.enable=false: \
             expected error_code {UNKNOWN_TOPIC_OR_PARTITION}, got {err}"
        ));
    }

    // Metadata v4 asking for auto-creation must not create it either.
    let md_req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_static_str("no-such-topic")),
        ))]))
        .with_allow_auto_topic_creation(true);
    let md = call(&mut s, &broker, 4, 2, &md_req);
    assert_eq!(md.topics.len(), 1, "{md:?}");
    assert_eq!(
        md.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "Metadata for an unknown topic with auto-create off: {md:?}"
    );

    let (err, _) = produce_raw(&mut s, &broker, 3, "no-such-topic", 0, batch(&["x"]));
    assert_eq!(
        err, UNKNOWN_TOPIC_OR_PARTITION,
        "still unknown after Metadata"
    );
    drop(s);
    assert_still_serving(&mut broker, "produce to an unknown topic");
    finish(broker);
}

/// Names Kafka refuses (`Topic.validate`): empty, `.`, `..`, longer than
/// 249, characters outside `[a-zA-Z0-9._-]`. Several would escape or break
/// the data directory if used as a path.
const INVALID_TOPIC_NAMES: &[&str] = &[
    "",
    ".",
    "..",
    "../escape",
    "a/b",
    "/abs",
    "with space",
    "nul\0byte",
    "ünïcode",
];

fn too_long_topic_name() -> String {
    "x".repeat(250)
}

/// Every path under `root`, relative, sorted.
fn tree(root: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn auto_create_rejects_invalid_topic_names() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let parent = broker.data_dir().parent().unwrap().to_path_buf();
    let before = tree(&parent);

    let mut names: Vec<String> = INVALID_TOPIC_NAMES.iter().map(|n| n.to_string()).collect();
    names.push(too_long_topic_name());
    let mut s = connect(&addr);
    for (i, name) in names.iter().enumerate() {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(name)))
            ]))
            .with_allow_auto_topic_creation(true);
        let md = call(&mut s, &broker, 4, 10 + i as i32, &req);
        assert_eq!(md.topics.len(), 1, "{md:?}");
        let t = &md.topics[0];
        if t.error_code != INVALID_TOPIC_EXCEPTION {
            broker.fail(&format!(
                "Metadata v4 auto-create of invalid topic name {name:?}: expected error_code \
                 {INVALID_TOPIC_EXCEPTION} (INVALID_TOPIC_EXCEPTION), got {} ({t:?})",
                t.error_code
            ));
        }
        assert!(t.partitions.is_empty(), "{name:?}: {t:?}");
    }
    drop(s);
    assert_still_serving(&mut broker, "invalid topic names");

    // Nothing was created anywhere near the data directory (the stderr log
    // grows, nothing else appears outside data/).
    let after = tree(&parent);
    let new: Vec<&String> = after
        .iter()
        .filter(|p| !before.contains(p) && !p.starts_with("data"))
        .collect();
    assert!(new.is_empty(), "paths created outside log.dirs: {new:?}");
    let data = tree(&broker.data_dir());
    for name in &names {
        if !name.is_empty() && name != "." && name != ".." {
            assert!(
                !data.iter().any(|p| p.contains(name.as_str())),
                "a directory for invalid topic {name:?} exists: {data:?}"
            );
        }
    }
    finish(broker);
}

#[test]
fn create_topics_rejects_invalid_names_partition_counts_and_replication_factors() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let (min, max) = supported_versions(&addr, 19)
        .unwrap_or_else(|| broker.fail("CreateTopics (19) is not listed in ApiVersions"));
    // The newest version both sides know (kafka-protocol: 2..=7).
    let version = max.min(7);
    assert!(version >= min.max(2), "CreateTopics versions {min}..={max}");

    let creatable = |name: &str, partitions: i32, rf: i16| {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
    };
    let mut s = connect(&addr);
    let mut corr = 0;
    let mut create = |s: &mut TcpStream, topics: Vec<CreatableTopic>| {
        corr += 1;
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(10_000);
        call(s, &broker, version, corr, &req)
    };

    let resp = create(&mut s, vec![creatable("valid", 2, 1)]);
    assert_eq!(resp.topics[0].error_code, 0, "a valid topic: {resp:?}");

    let mut cases: Vec<(String, i32, i16, i16, &str)> = INVALID_TOPIC_NAMES
        .iter()
        .map(|n| {
            (
                n.to_string(),
                1,
                1,
                INVALID_TOPIC_EXCEPTION,
                "INVALID_TOPIC_EXCEPTION",
            )
        })
        .collect();
    cases.push((
        too_long_topic_name(),
        1,
        1,
        INVALID_TOPIC_EXCEPTION,
        "INVALID_TOPIC_EXCEPTION",
    ));
    cases.push((
        "zero-partitions".into(),
        0,
        1,
        INVALID_PARTITIONS,
        "INVALID_PARTITIONS",
    ));
    cases.push((
        "negative-partitions".into(),
        -5,
        1,
        INVALID_PARTITIONS,
        "INVALID_PARTITIONS",
    ));
    cases.push((
        "rf-three".into(),
        1,
        3,
        INVALID_REPLICATION_FACTOR,
        "INVALID_REPLICATION_FACTOR",
    ));
    cases.push((
        "rf-zero".into(),
        1,
        0,
        INVALID_REPLICATION_FACTOR,
        "INVALID_REPLICATION_FACTOR",
    ));
    cases.push((
        "valid".into(),
        1,
        1,
        TOPIC_ALREADY_EXISTS,
        "TOPIC_ALREADY_EXISTS",
    ));

    for (name, partitions, rf, expected, label) in &cases {
        let resp = create(&mut s, vec![creatable(name, *partitions, *rf)]);
        assert_eq!(resp.topics.len(), 1, "{resp:?}");
        let got = resp.topics[0].error_code;
        if got != *expected {
            broker.fail(&format!(
                "CreateTopics v{version} {name:?} partitions={partitions} rf={rf}: expected \
                 error_code {expected} ({label}), got {got} ({:?})",
                resp.topics[0]
            ));
        }
    }
    drop(s);
    assert_still_serving(&mut broker, "invalid CreateTopics requests");

    // Only the valid topic exists, with its 2 partitions.
    let out = kcat_on(&broker, &["-L", "-b", &addr, "-J"], None);
    let md: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let topics: Vec<(String, usize)> = md["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap().to_string(),
                t["partitions"].as_array().unwrap().len(),
            )
        })
        .filter(|(n, _)| !n.starts_with("__"))
        .collect();
    assert_eq!(topics, vec![("valid".to_string(), 2)], "{md:#}");
    finish(broker);
}

/// Deterministic xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One random corruption of `req` (a framed request) that leaves its first
/// `keep` body bytes (header and any fields that decide whether or how long
/// the broker may stay silent) intact; the frame length is fixed up.
fn mutate(req: &[u8], keep: usize, rng: &mut Rng) -> Vec<u8> {
    let mut body = req[4..].to_vec();
    let span = body.len() - keep;
    assert!(span > 0);
    let at = keep + rng.below(span);
    match rng.below(6) {
        0 => body[at] ^= 1 << rng.below(8),
        1 => body[at] = rng.next() as u8,
        // A count or length that claims far more than the frame holds.
        2 => {
            for (i, b) in [0x7f, 0xff, 0xff, 0xff].iter().enumerate() {
                if let Some(x) = body.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        3 => {
            for (i, b) in [0x7f, 0xff].iter().enumerate() {
                if let Some(x) = body.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        // A varint that never ends (compact lengths, tagged fields, records).
        4 => {
            for x in body.iter_mut().skip(at).take(6) {
                *x = 0xff;
            }
        }
        _ => body.truncate(at),
    }
    frame(&body)
}

#[test]
fn mutated_valid_requests_are_answered_or_closed() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    produce(&broker, "fuzz", &[], b"a\nb\nc\n");

    let md = |v: i16| {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name("fuzz")))
            ]))
            .with_allow_auto_topic_creation(false);
        typed_request(v, 1000 + v as i32, &req)
    };
    let fetch = |v: i16| {
        let req = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("fuzz"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        typed_request(v, 2000 + v as i32, &req)
    };
    let list_offsets = |v: i16| {
        let req = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("fuzz"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        typed_request(v, 3000 + v as i32, &req)
    };
    let produce_v = |v: i16| {
        typed_request(
            v,
            4000 + v as i32,
            &produce_req("fuzz", 0, batch(&["f0", "f1"])),
        )
    };
    let api_versions = |v: i16| {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fuzz"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        typed_request(v, 5000 + v as i32, &req)
    };

    // (name, framed request, header length, extra protected body bytes).
    // Fetch keeps replica_id, max_wait_ms (0) and min_bytes: a mutated wait
    // would be a legitimate long poll. Produce keeps transactional_id and
    // acks (1): acks=0 legitimately gets no response.
    let mut bases: Vec<(String, (Vec<u8>, usize), usize)> = vec![
        ("ApiVersions v3".into(), api_versions(3), 0),
        ("Metadata v4".into(), md(4), 0),
        ("Metadata v12".into(), md(12), 0),
        ("ListOffsets v1".into(), list_offsets(1), 0),
        ("ListOffsets v7".into(), list_offsets(7), 0),
        ("Fetch v4".into(), fetch(4), 12),
        ("Fetch v12".into(), fetch(12), 12),
        ("Produce v7".into(), produce_v(7), 4),
        ("Produce v9".into(), produce_v(9), 3),
    ];
    // Only versions the broker claims to support.
    let ranges: Vec<(i16, Option<(i16, i16)>)> = [0i16, 1, 2, 3, 18]
        .iter()
        .map(|&k| (k, supported_versions(&addr, k)))
        .collect();
    bases.retain(|(name, (req, _), _)| {
        let key = i16::from_be_bytes([req[4], req[5]]);
        let version = i16::from_be_bytes([req[6], req[7]]);
        let ok = ranges
            .iter()
            .any(|(k, r)| *k == key && r.is_some_and(|(lo, hi)| (lo..=hi).contains(&version)));
        if !ok {
            eprintln!("skipping {name}: not supported by the broker");
        }
        ok
    });
    assert!(bases.len() >= 5, "too few request kinds supported");

    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for (name, (req, header_len), protect) in &bases {
        let keep = header_len + protect;
        let correlation = i32::from_be_bytes(req[8..12].try_into().unwrap());
        for i in 0..40 {
            let mutated = mutate(req, keep, &mut rng);
            let what = format!("{name} mutation #{i}");
            let mut s = connect(&addr);
            if send(&mut s, &mutated).is_ok() {
                match read_reply(&mut s) {
                    Reply::Closed => {}
                    Reply::Frame(f) => assert_eq!(
                        correlation_id(&f),
                        correlation,
                        "{what}: response with a wrong correlation id"
                    ),
                    Reply::Silent => broker.fail(&format!(
                        "{what}: neither answered nor closed within {IO_TIMEOUT:?}; \
                         request bytes: {mutated:02x?}"
                    )),
                }
            }
            drop(s);
            // A fresh client is served after every single mutation, so a
            // crash is pinned on the request that caused it.
            let after = format!("{what}; request bytes: {mutated:02x?}");
            if !api_versions_roundtrip(&addr) {
                broker.fail(&format!(
                    "after {after}: an ApiVersions round trip on a fresh connection failed"
                ));
            }
            broker.assert_running_after(&after);
        }
        assert_still_serving(&mut broker, name);
    }
    finish(broker);
}

// ---------------------------------------------------------------------------
// An undecodable batch in __consumer_offsets

/// A standalone OffsetCommit (no member, generation -1) of one offset.
fn commit_offset(broker: &Broker, group: &str, topic: &str, offset: i64) {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest};
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    let resp = call(&mut connect(&broker.addr()), broker, 8, 1, &req);
    assert_eq!(resp.topics[0].partitions[0].error_code, 0, "{resp:?}");
}

/// The committed offset of `group` for partition 0 of `topic` (-1: none).
fn committed_offset(broker: &Broker, group: &str, topic: &str) -> i64 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest};
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(vec![0])]));
    let resp = call(&mut connect(&broker.addr()), broker, 5, 1, &req);
    assert_eq!(resp.error_code, 0, "{resp:?}");
    resp.topics[0].partitions[0].committed_offset
}

/// A commit record batch exactly as the broker writes one.
fn offsets_batch(group: &str, topic: &str, offset: i64) -> Vec<u8> {
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
    use sluice_broker::groups::coordinator::Committed;
    use sluice_broker::groups::offsets_topic::{encode_key, encode_value};
    let value = encode_value(&Committed {
        offset,
        leader_epoch: 0,
        metadata: String::new(),
        commit_timestamp_ms: 1,
    });
    let mut record = records(&["x"]).remove(0);
    record.key = Some(encode_key(group, topic, 0));
    record.value = Some(value);
    let mut buf = bytes::BytesMut::new();
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
fn an_undecodable_offsets_batch_is_skipped_at_start_and_the_other_offsets_load() {
    use sluice_broker::groups::offsets_topic::{partition_for, TOPIC};
    use sluice_engine::{io::Fs, AppendMode, Epoch, Log, LogConfig, TopicPartition};

    let mut broker = Broker::start();
    produce(&broker, "orders", &[], b"a\nb\nc\n");
    commit_offset(&broker, "before", "orders", 2);
    // A second group whose offsets live in the same partition, committed
    // after the bad batches.
    let partition = partition_for("before");
    let after = (0..)
        .map(|i| format!("after-{i}"))
        .find(|g| partition_for(g) == partition)
        .unwrap();
    broker.stop();

    // Plant the bad batches with the engine itself, as a broker of an older
    // version (which let clients produce to the topic) could have stored
    // them: valid CRCs, so the engine serves them; contents no decoder takes.
    let dir = broker
        .data_dir()
        .join(TopicPartition::new(TOPIC, partition).dir_name());
    let mut unknown_codec = offsets_batch("lost", "orders", 1);
    sluice_engine::batch::set_compression_id(&mut unknown_codec, 6).unwrap();
    let mut garbage = offsets_batch("lost", "orders", 1);
    let end = garbage.len();
    garbage[sluice_engine::batch::HEADER_LEN..end].fill(0xff);
    sluice_engine::batch::reseal(&mut garbage).unwrap();
    let planted = compio::runtime::Runtime::new().unwrap().block_on(async {
        let now = sluice_engine::shard::now_ms();
        let (mut log, _) = Log::open(Fs::Os, dir, LogConfig::default(), now)
            .await
            .expect("open the offsets partition");
        let mut bases = Vec::new();
        for batch in [unknown_codec, garbage, offsets_batch(&after, "orders", 3)] {
            let info = log
                .append(
                    batch,
                    AppendMode::Leader {
                        epoch: Epoch(0),
                        keep: true,
                    },
                    now,
                )
                .await
                .expect("append");
            bases.push(info.base_offset.0);
        }
        log.close(now).await.expect("close");
        bases
    });

    broker.start_again();
    assert_still_serving(&mut broker, "loading offsets with undecodable batches");
    assert_eq!(committed_offset(&broker, "before", "orders"), 2);
    assert_eq!(committed_offset(&broker, &after, "orders"), 3);
    // Without colour codes, which split `offset=1` in a terminal's log.
    let mut stderr = String::new();
    let mut in_escape = false;
    for c in broker.stderr().chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => stderr.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    for base in &planted[..2] {
        let named = stderr.lines().any(|l| {
            l.contains("does not decode")
                && l.contains(&format!("{TOPIC}-{partition}"))
                && l.contains(&format!("offset={base}"))
        });
        assert!(
            named,
            "no warning names {TOPIC}-{partition} at offset {base}:\n{stderr}"
        );
    }
    finish(broker);
}

#[test]
fn a_fetch_asking_for_two_gigabytes_gets_at_most_fetch_max_bytes() {
    // 64 KiB of responses at most, whatever the client asks; the first
    // batch is whole even when larger.
    let fetch_max = 64 * 1024;
    let broker = Broker::start_with(&[("fetch.max.bytes", &fetch_max.to_string())]);
    let mut s = connect(&broker.addr());
    produce(&broker, "capped", &["-p", "0"], b"warm-up\n");
    // 40 batches of about 8 KiB each: 320 KiB in the partition.
    let value = "x".repeat(8 * 1024);
    for i in 0..40 {
        let (code, _) = produce_raw(&mut s, &broker, 100 + i, "capped", 0, batch(&[&value]));
        assert_eq!(code, 0);
    }
    let ask = |offset: i64| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(i32::MAX)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("capped"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(i32::MAX)])])
    };
    let resp = call(&mut s, &broker, 12, 500, &ask(0));
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "{p:?}");
    let got = p.records.as_ref().map_or(0, |r| r.len());
    assert!(got > 0, "nothing returned");
    assert!(got <= fetch_max, "{got} bytes in one response");
    assert_eq!(p.high_watermark, 41);

    // A fetch.max.bytes smaller than one batch still returns that batch.
    let tiny = Broker::start_with(&[("fetch.max.bytes", "1024")]);
    let mut t = connect(&tiny.addr());
    produce(
        &tiny,
        "capped",
        &["-p", "0"],
        format!("{value}\n").as_bytes(),
    );
    let resp = call(&mut t, &tiny, 12, 2, &ask(0));
    let p = &resp.responses[0].partitions[0];
    let got = p.records.as_ref().map_or(0, |r| r.len());
    assert!(got > value.len(), "the first batch whole: got {got} bytes");
    finish(tiny);
    finish(broker);
}
