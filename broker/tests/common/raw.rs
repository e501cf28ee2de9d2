//! Raw Kafka protocol over TCP for tests that speak to the broker without
//! a client library: framing, typed requests through kafka-protocol, and
//! observing answers, closes and silences.

#![allow(dead_code, unused_imports)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::{kcat_on, Broker};

/// Read and write timeout on every raw connection: the bound on how long a
/// case waits for the broker to answer or close.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub const API_METADATA: i16 = 3;
pub const API_VERSIONS: i16 = 18;

pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;

// ---------------------------------------------------------------------------
// Raw protocol helpers

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `body` with its big-endian i32 length prefix.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(&(body.len() as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A framed request: header (in `header_version`) and body (encoded as
/// `body_version`, which may differ from the advertised `version`).
pub fn request<T: Encodable>(
    api_key: i16,
    version: i16,
    header_version: i16,
    correlation_id: i32,
    body: &T,
    body_version: i16,
) -> Vec<u8> {
    request_parts(
        api_key,
        version,
        header_version,
        correlation_id,
        body,
        body_version,
    )
    .0
}

/// Like `request`, also returning the length of the request header.
pub fn request_parts<T: Encodable>(
    api_key: i16,
    version: i16,
    header_version: i16,
    correlation_id: i32,
    body: &T,
    body_version: i16,
) -> (Vec<u8>, usize) {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-bad-input")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, header_version).unwrap();
    let header_len = buf.len();
    body.encode(&mut buf, body_version).unwrap();
    (frame(&buf), header_len)
}

/// A framed request `req` at `version`, with the header version that
/// version uses; and the header's length.
pub fn typed_request<R: Request>(version: i16, correlation_id: i32, req: &R) -> (Vec<u8>, usize) {
    request_parts(
        R::KEY,
        version,
        R::header_version(version),
        correlation_id,
        req,
        version,
    )
}

/// Sends `req` at `version` and decodes the response (header and body).
pub fn call<R: Request>(
    s: &mut TcpStream,
    broker: &Broker,
    version: i16,
    correlation: i32,
    req: &R,
) -> R::Response {
    let what = format!("api key {} v{version}", R::KEY);
    send(s, &typed_request(version, correlation, req).0)
        .unwrap_or_else(|_| broker.fail(&format!("{what}: connection reset while sending")));
    receive::<R>(s, broker, version, correlation)
}

/// Reads and decodes the response to an `R` request at `version` that was
/// sent with `correlation`.
pub fn receive<R: Request>(
    s: &mut TcpStream,
    broker: &Broker,
    version: i16,
    correlation: i32,
) -> R::Response {
    let what = format!("api key {} v{version}", R::KEY);
    let body = match read_reply(s) {
        Reply::Frame(b) => b,
        other => broker.fail(&format!("{what}: expected a response, got {other:?}")),
    };
    let mut buf = Bytes::from(body);
    let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
        .unwrap_or_else(|e| broker.fail(&format!("{what}: response header: {e}")));
    assert_eq!(header.correlation_id, correlation, "{what}: correlation id");
    let resp = R::Response::decode(&mut buf, version)
        .unwrap_or_else(|e| broker.fail(&format!("{what}: response body: {e}")));
    assert!(
        buf.is_empty(),
        "{what}: {} bytes left after the response body",
        buf.len()
    );
    resp
}

/// The broker's supported version range for `api_key` (ApiVersions v3).
pub fn supported_versions(addr: &str, api_key: i16) -> Option<(i16, i16)> {
    let mut s = connect(addr);
    send(&mut s, &api_versions_request(9, 3)).ok()?;
    let body = match read_reply(&mut s) {
        Reply::Frame(b) => b,
        _ => return None,
    };
    let mut rest = Bytes::from(body).slice(4..);
    let resp = ApiVersionsResponse::decode(&mut rest, 3).ok()?;
    resp.api_keys
        .iter()
        .find(|k| k.api_key == api_key)
        .map(|k| (k.min_version, k.max_version))
}

pub fn api_versions_request(correlation_id: i32, version: i16) -> Vec<u8> {
    let body = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("sluice-tests"))
        .with_client_software_version(StrBytes::from_static_str("0.1.0"));
    // Flexible header (v2) for v3+, as clients send it; the body is the v3
    // layout even when announcing a version the broker does not know.
    let header_version = if version >= 3 { 2 } else { 1 };
    request(
        API_VERSIONS,
        version,
        header_version,
        correlation_id,
        &body,
        version.min(3),
    )
}

/// What the broker did after we sent something.
#[derive(Debug)]
pub enum Reply {
    /// EOF or reset: the broker closed the connection.
    Closed,
    /// A whole response frame (without its length prefix).
    Frame(Vec<u8>),
    /// Nothing within `IO_TIMEOUT`.
    Silent,
}

pub fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads one response frame, or observes a close, or times out.
pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut len = [0u8; 4];
    if let Err(e) = s.read_exact(&mut len) {
        return if is_timeout(&e) {
            Reply::Silent
        } else if is_closed(&e) {
            Reply::Closed
        } else {
            panic!("reading a response length: {e}")
        };
    }
    let len = i32::from_be_bytes(len);
    assert!(
        (0..=64 << 20).contains(&len),
        "broker sent a response frame of length {len}"
    );
    let mut body = vec![0u8; len as usize];
    match s.read_exact(&mut body) {
        Ok(()) => Reply::Frame(body),
        Err(e) if is_timeout(&e) => panic!("broker sent a partial response frame"),
        Err(e) if is_closed(&e) => panic!("broker closed in the middle of a response frame"),
        Err(e) => panic!("reading a response body: {e}"),
    }
}

/// Waits for the broker to close the connection (bounded by `IO_TIMEOUT`);
/// anything it sends before closing is discarded.
pub fn wait_closed(s: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if is_closed(&e) => return Ok(()),
            Err(e) if is_timeout(&e) => {
                return Err(format!("connection still open after {IO_TIMEOUT:?}"))
            }
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

/// Writes `bytes`; a reset while writing counts as the broker closing.
pub fn send(s: &mut TcpStream, bytes: &[u8]) -> Result<(), ()> {
    match s.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if is_closed(&e) => Err(()),
        Err(e) => panic!("write: {e}"),
    }
}

pub fn correlation_id(frame: &[u8]) -> i32 {
    assert!(
        frame.len() >= 4,
        "response shorter than a header: {frame:?}"
    );
    i32::from_be_bytes(frame[..4].try_into().unwrap())
}

/// A valid ApiVersions v3 request on a fresh connection gets a valid
/// response (error 0, the right correlation id, ApiVersions listed).
pub fn api_versions_roundtrip(addr: &str) -> bool {
    match try_api_versions_roundtrip(addr) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("ApiVersions round trip to {addr} failed: {e}");
            false
        }
    }
}

pub fn try_api_versions_roundtrip(addr: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&api_versions_request(0x5eed, 3))
        .map_err(|e| format!("write: {e}"))?;
    let body = match read_reply(&mut s) {
        Reply::Frame(b) => b,
        other => return Err(format!("no response: {other:?}")),
    };
    if correlation_id(&body) != 0x5eed {
        return Err(format!("wrong correlation id {}", correlation_id(&body)));
    }
    // ApiVersions responses always use response header v0.
    let mut rest = Bytes::from(body).slice(4..);
    let resp = ApiVersionsResponse::decode(&mut rest, 3).map_err(|e| format!("decode v3: {e}"))?;
    if resp.error_code != 0 {
        return Err(format!("error_code {}", resp.error_code));
    }
    if !resp
        .api_keys
        .iter()
        .any(|k| k.api_key == API_VERSIONS && k.max_version >= 3)
    {
        return Err(format!("ApiVersions v3 not listed: {:?}", resp.api_keys));
    }
    Ok(())
}

/// The broker process is alive and a fresh client can talk to it.
pub fn assert_still_serving(broker: &mut Broker, after: &str) {
    broker.assert_running();
    if !api_versions_roundtrip(&broker.addr()) {
        broker.fail(&format!(
            "after {after}: an ApiVersions round trip on a fresh connection failed"
        ));
    }
}

/// The end of every test: kcat can list metadata, and SIGTERM is clean.
pub fn finish(mut broker: Broker) {
    broker.assert_running();
    let addr = broker.addr();
    let out = kcat_on(&broker, &["-L", "-b", &addr, "-J"], None);
    let md: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kcat -L -J output");
    assert_eq!(md["brokers"][0]["id"], 1, "{md:#}");
    broker.stop();
}

/// After sending a frame the broker cannot make sense of, it either closes
/// the connection or sends a response; it must not leave the connection
/// hanging.
pub fn assert_answered_or_closed(s: &mut TcpStream, broker: &Broker, what: &str) -> Reply {
    let reply = read_reply(s);
    if let Reply::Silent = reply {
        broker.fail(&format!(
            "{what}: the broker neither answered nor closed within {IO_TIMEOUT:?}"
        ));
    }
    reply
}

pub fn assert_closed(s: &mut TcpStream, broker: &Broker, what: &str) {
    if let Err(e) = wait_closed(s) {
        broker.fail(&format!(
            "{what}: expected the broker to close the connection: {e}"
        ));
    }
}

pub fn records(values: &[&str]) -> Vec<Record> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: IndexMap::new(),
        })
        .collect()
}

/// A v2 record batch as a producer would send it.
pub fn batch(values: &[&str]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records(values),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// Produce acks=1 for one partition.
pub fn produce_req(topic: &str, partition: i32, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])])
}

/// Sends a Produce v7 (non-flexible, header v1) acks=1 request and returns
/// (error_code, base_offset) of the single partition in the response.
pub fn produce_raw(
    s: &mut TcpStream,
    broker: &Broker,
    correlation: i32,
    topic: &str,
    partition: i32,
    batch: Vec<u8>,
) -> (i16, i64) {
    let resp = call(
        s,
        broker,
        7,
        correlation,
        &produce_req(topic, partition, batch),
    );
    assert_eq!(resp.responses.len(), 1, "{resp:?}");
    let t = &resp.responses[0];
    assert_eq!(t.name.0.as_str(), topic, "{resp:?}");
    assert_eq!(t.partition_responses.len(), 1, "{resp:?}");
    let p = &t.partition_responses[0];
    assert_eq!(p.index, partition, "{resp:?}");
    (p.error_code, p.base_offset)
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}
