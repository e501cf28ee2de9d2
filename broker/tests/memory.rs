//! Bounded memory for clients that ask for everything and read nothing.
//!
//! The broker runs in this process (`server::start`), so the tests can read
//! its broker-wide byte budget (`Broker.memory`, `queued.max.request.bytes`)
//! while raw connections pipeline Fetch requests with `max_bytes` and
//! `partition_max_bytes` at `i32::MAX` and never read their sockets. The
//! assertions are on the budget's own accounting, never on RSS: what the
//! broker holds for clients never exceeds its budgets, and closing the
//! connections gives every byte back (their queued work is cancelled).
//!
//! The per-connection budget (`fetch.max.bytes`) is not reachable from
//! here; its bound shows as a broker-wide total of at most one response per
//! connection, and `partition::budget`'s unit tests check the semaphore
//! itself.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, ResponseHeader};
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_broker::config::BrokerConfig;
use sluice_broker::Broker;

use common::raw::{produce_req, read_reply, send, topic_name, typed_request, Reply};
use common::{free_port, poll_until};

/// The per-connection budget, and so the most one Fetch response holds.
const FETCH_MAX_BYTES: usize = 1 << 20;
/// Records per produced batch, and their value size: 256 KiB batches, so
/// that a 1 MiB response holds several whole ones.
const RECORDS_PER_BATCH: usize = 16;
const VALUE_BYTES: usize = 16 << 10;
/// What the partition holds before the slow readers come.
const PARTITION_BYTES: usize = 32 << 20;
const CONNECTIONS: usize = 8;
/// As many as a connection reads ahead (`server::MAX_IN_FLIGHT`).
const PIPELINED: usize = 16;
/// Bound on every wait for the broker's accounting to reach a state.
const SETTLE: Duration = Duration::from_secs(60);

/// A broker in this process, on its own port and data directory.
struct InProcess {
    broker: Arc<Broker>,
    addr: SocketAddr,
    // Removed at the end of the test; the broker's threads outlive it, idle.
    _dir: tempfile::TempDir,
}

fn start(settings: &[(&str, &str)]) -> InProcess {
    let dir = tempfile::Builder::new()
        .prefix("sluice-mem-")
        .tempdir()
        .expect("create temp dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut pairs = vec![
        ("listeners".to_string(), format!("PLAINTEXT://{addr}")),
        ("log.dirs".to_string(), dir.path().display().to_string()),
        ("node.id".to_string(), "1".to_string()),
        ("fetch.max.bytes".to_string(), FETCH_MAX_BYTES.to_string()),
        // A response's whole first batch may exceed its budget by up to
        // message.max.bytes; equal to the budget, it never does.
        ("message.max.bytes".to_string(), FETCH_MAX_BYTES.to_string()),
    ];
    pairs.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = BrokerConfig::from_pairs(&pairs).expect("valid configuration");
    let broker = sluice_broker::server::start(config).expect("broker starts in process");
    InProcess {
        broker,
        addr,
        _dir: dir,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(common::raw::IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(common::raw::IO_TIMEOUT)).unwrap();
    s
}

/// A connection whose receive window stays small, so that a client that
/// never reads stalls the broker's writes after a few KiB instead of after
/// the several MiB the kernel would otherwise buffer.
fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_write_timeout(Some(common::raw::IO_TIMEOUT)).unwrap();
    s
}

/// Sends `req` and decodes its response.
fn roundtrip<R: Request>(
    s: &mut TcpStream,
    version: i16,
    correlation: i32,
    req: &R,
) -> R::Response {
    send(s, &typed_request(version, correlation, req).0).expect("request sent");
    let Reply::Frame(body) = read_reply(s) else {
        panic!("api key {} v{version}: no response", R::KEY)
    };
    let mut buf = Bytes::from(body);
    let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation);
    R::Response::decode(&mut buf, version).unwrap()
}

/// One 256 KiB batch, sent again and again: the broker assigns each copy
/// its own offsets.
fn big_batch() -> Vec<u8> {
    let records: Vec<Record> = (0..RECORDS_PER_BATCH)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'x'; VALUE_BYTES])),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// Creates `topic` with one partition.
fn create(s: &mut TcpStream, topic: &str) {
    let created = roundtrip(
        s,
        5,
        1,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
}

/// Creates `topic` with one partition and fills it with
/// [`PARTITION_BYTES`]; returns the number of records.
fn fill(addr: SocketAddr, topic: &str) -> i64 {
    let mut s = connect(addr);
    create(&mut s, topic);
    let batch = big_batch();
    let batches = PARTITION_BYTES / batch.len();
    for i in 0..batches {
        let resp = roundtrip(
            &mut s,
            7,
            2 + i as i32,
            &produce_req(topic, 0, batch.clone()),
        );
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, (i * RECORDS_PER_BATCH) as i64),
            "produce {i}"
        );
    }
    (batches * RECORDS_PER_BATCH) as i64
}

/// A Fetch of everything from `offset`, as large as a client may ask.
fn huge_fetch(topic: &str, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(i32::MAX)])])
}

/// Opens [`CONNECTIONS`] connections, each sending [`PIPELINED`] huge
/// fetches at once (from spread offsets, so the reads are of different
/// data) and never reading a byte of the answers.
fn slow_readers(addr: SocketAddr, topic: &str, records: i64) -> Vec<TcpStream> {
    (0..CONNECTIONS)
        .map(|c| {
            let mut s = connect_small_window(addr);
            let mut frames = Vec::new();
            for j in 0..PIPELINED {
                let n = (c * PIPELINED + j) as i64;
                // Never in the last four batches: every read is a full one.
                let batches = records / RECORDS_PER_BATCH as i64;
                let offset = (n * 3) % (batches - 4) * RECORDS_PER_BATCH as i64;
                frames.extend(typed_request(11, n as i32, &huge_fetch(topic, offset)).0);
            }
            send(&mut s, &frames).expect("fetches sent");
            s
        })
        .collect()
}

/// Closes the slow readers and waits for every byte they held to come back,
/// then checks the broker still answers a fetch read normally.
fn close_and_check_released(broker: &InProcess, readers: Vec<TcpStream>, topic: &str) {
    drop(readers);
    poll_until(
        SETTLE,
        "the budget to be given back once the slow readers closed",
        || (broker.broker.memory.used() == 0).then_some(()),
    );
    let mut s = connect(broker.addr);
    let resp = roundtrip(&mut s, 11, 99, &huge_fetch(topic, 0));
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "{p:?}");
    let got = p.records.as_ref().map_or(0, |r| r.len());
    assert!(
        got > 0 && got <= FETCH_MAX_BYTES,
        "a fetch after the slow readers left read {got} bytes"
    );
    drop(s);
    poll_until(SETTLE, "the last response's bytes to come back", || {
        (broker.broker.memory.used() == 0).then_some(())
    });
}

#[test]
fn slow_readers_of_huge_fetches_hold_no_more_than_the_broker_wide_budget() {
    const LIMIT: usize = 4 << 20;
    let broker = start(&[("queued.max.request.bytes", &LIMIT.to_string())]);
    let memory = broker.broker.memory.clone();
    assert_eq!(memory.limit(), LIMIT);
    let records = fill(broker.addr, "hoard");
    assert_eq!(memory.used(), 0, "producing holds no fetch budget");

    let readers = slow_readers(broker.addr, "hoard", records);
    // 8 connections want 128 responses of up to 1 MiB held at once; the
    // broker holds at most 4 MiB, and fetches queue for the rest.
    poll_until(SETTLE, "fetches to queue for the broker's budget", || {
        (memory.waiting() > 0).then_some(())
    });
    let (used, peak) = (memory.used(), memory.peak());
    assert!(
        peak <= LIMIT,
        "the broker held {peak} bytes for fetches, over its budget of {LIMIT}"
    );
    // A fetch queues only when its reservation does not fit, so the budget
    // was nearly full: the bound was reached, not merely respected.
    assert!(
        peak > LIMIT - FETCH_MAX_BYTES,
        "fetches queued though only {peak} of {LIMIT} bytes were ever held (used now {used})"
    );
    close_and_check_released(&broker, readers, "hoard");
    assert!(memory.peak() <= LIMIT);
}

#[test]
fn pipelined_huge_fetches_hold_at_most_one_response_per_connection() {
    // A broker-wide budget far above what the connections' budgets allow,
    // so that only the per-connection budget bounds them.
    const LIMIT: usize = 256 << 20;
    let broker = start(&[("queued.max.request.bytes", &LIMIT.to_string())]);
    let memory = broker.broker.memory.clone();
    let records = fill(broker.addr, "pipelined");

    let readers = slow_readers(broker.addr, "pipelined", records);
    // Each connection holds one response whose writing is stalled; its 15
    // other fetches wait for the connection's budget, not the broker's.
    // A full read is at least the budget less one batch.
    let batch = big_batch().len();
    let floor = CONNECTIONS * (FETCH_MAX_BYTES - batch);
    let used = poll_until(
        SETTLE,
        "every connection to hold a stalled response",
        || Some(memory.used()).filter(|used| *used >= floor),
    );
    let ceiling = CONNECTIONS * FETCH_MAX_BYTES;
    assert!(
        memory.peak() <= ceiling,
        "{CONNECTIONS} connections held {} bytes at once (now {used}): more than \
         one response of {FETCH_MAX_BYTES} each",
        memory.peak()
    );
    assert_eq!(memory.waiting(), 0, "the broker's budget was never short");
    close_and_check_released(&broker, readers, "pipelined");
    assert!(memory.peak() <= ceiling, "peak {}", memory.peak());
}

#[test]
fn pipelined_produces_from_many_connections_fit_a_small_request_budget() {
    // Smaller than what the connections send at once (8 × 16 × 256 KiB):
    // readers wait for request bytes, and every produce still goes through.
    const LIMIT: usize = 1 << 20;
    let broker = start(&[("queued.max.request.bytes", &LIMIT.to_string())]);
    let requests = broker.broker.requests.clone();
    create(&mut connect(broker.addr), "requests");
    let batch = big_batch();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (addr, batch) = (broker.addr, batch.clone());
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut all = Vec::new();
                for i in 0..PIPELINED {
                    let req = produce_req("requests", 0, batch.clone());
                    all.extend(typed_request(7, i as i32, &req).0);
                }
                send(&mut s, &all).expect("requests sent");
                (0..PIPELINED)
                    .map(|i| {
                        let Reply::Frame(body) = read_reply(&mut s) else {
                            panic!("connection {c}: no response to request {i}")
                        };
                        let mut buf = Bytes::from(body);
                        let header = ResponseHeader::decode(&mut buf, 0).unwrap();
                        assert_eq!(header.correlation_id, i as i32);
                        let resp =
                            kafka_protocol::messages::ProduceResponse::decode(&mut buf, 7).unwrap();
                        let p = &resp.responses[0].partition_responses[0];
                        assert_eq!(p.error_code, 0, "connection {c}, request {i}");
                        p.base_offset
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut offsets: Vec<i64> = senders
        .into_iter()
        .flat_map(|t| t.join().expect("a sender failed"))
        .collect();
    offsets.sort_unstable();
    let expected: Vec<i64> = (0..(CONNECTIONS * PIPELINED) as i64)
        .map(|i| i * RECORDS_PER_BATCH as i64)
        .collect();
    assert_eq!(offsets, expected, "every batch appended once");
    assert!(
        requests.peak() <= LIMIT && requests.peak() >= batch.len(),
        "request bytes held at once: {} (budget {LIMIT})",
        requests.peak()
    );
    poll_until(SETTLE, "every request's bytes to come back", || {
        (requests.used() == 0).then_some(())
    });
}
