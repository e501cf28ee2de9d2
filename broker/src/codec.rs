//! Framing and the request header: a 4-byte big-endian length, then the
//! header and body, all encoded by `kafka-protocol` (no hand-written
//! layouts). This module decides which API versions the broker accepts; the
//! handlers decode bodies at those versions.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The APIs and versions this broker implements, and so advertises in
/// ApiVersions. Ranges stop where a version would need a feature the broker
/// lacks (Fetch v13+ addresses topics by id only, for instance).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
];

pub fn supported_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|&(_, min, max)| (min, max))
}

/// Why a frame could not be turned into a request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{api_key:?} version {version} is not supported")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// A decoded request header and the undecoded body.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
    /// The connection's peer (DescribeGroups shows it as `client_host`).
    pub peer: SocketAddr,
}

/// Splits a frame (without its length prefix) from `peer` into header
/// and body.
pub fn decode_request(mut frame: Bytes, peer: SocketAddr) -> Result<Request, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApiKey(raw_key))?;
    match supported_range(api_key) {
        Some((min, max)) if (min..=max).contains(&version) => {}
        _ => {
            return Err(DecodeError::UnsupportedVersion {
                api_key,
                version,
                correlation_id,
            })
        }
    }
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| DecodeError::Malformed {
            what: "request header",
            reason: e.to_string(),
        })?;
    Ok(Request {
        api_key,
        version,
        header,
        body: frame,
        peer,
    })
}

/// Decodes a request body at the request's version.
pub fn decode_body<T: Decodable>(request: &Request) -> Result<T, DecodeError> {
    let mut body = request.body.clone();
    let value = T::decode(&mut body, request.version).map_err(|e| DecodeError::Malformed {
        what: "request body",
        reason: e.to_string(),
    })?;
    if body.has_remaining() {
        // Kafka ignores trailing bytes too; librdkafka's Metadata requests
        // carry some. Worth a trace, not a closed connection.
        tracing::debug!(
            api_key = ?request.api_key,
            version = request.version,
            left = body.remaining(),
            "request body has trailing bytes"
        );
    }
    Ok(value)
}

/// Encodes a response with its header and length prefix.
pub fn encode_response<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> anyhow_free::Result<Vec<u8>> {
    // Sized up front, so a large Fetch response is not copied by growth.
    let size = body
        .compute_size(version)
        .map_err(anyhow_free::Error::from_display)?;
    let mut buf = BytesMut::with_capacity(size + 64);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(anyhow_free::Error::from_display)?;
    body.encode(&mut buf, version)
        .map_err(anyhow_free::Error::from_display)?;
    let len = i32::try_from(buf.len() - 4)
        .map_err(|_| anyhow_free::Error("response too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    // The buffer itself, not a copy (it was never split or shared).
    Ok(Vec::from(buf))
}

/// One piece of an encoded response, written in order: bytes in memory,
/// or bytes of a log segment sent from the file without being read into
/// the broker (`splice`).
#[derive(Debug, Clone)]
pub enum Part {
    Memory(Bytes),
    File(sluice_engine::FileRange),
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Memory(b) => b.len(),
            Part::File(r) => r.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stand-in record bytes for a [`sluice_engine::FileRange`] in a response
/// that `kafka-protocol` encodes: a slice, `len` long, of a large mapping
/// of zero pages that is never written (reading it maps no memory), at a
/// start of its own for each `key` (the partition's slot in the response),
/// so that [`encode_response_spliced`] can tell stand-ins apart by where
/// they start. `None` if `key + len` is beyond the mapping (or the mapping
/// could not be made): the caller reads the bytes instead.
pub fn placeholder(key: usize, len: usize) -> Option<Bytes> {
    let zeros = zeros()?;
    let end = key.checked_add(len)?;
    (end <= zeros.len()).then(|| Bytes::from_static(&zeros[key..end]))
}

/// Whether `src` lies in the mapping [`placeholder`]s are cut from.
pub fn is_stand_in(src: &[u8]) -> bool {
    zeros().is_some_and(|z| {
        let (base, at) = (z.as_ptr() as usize, src.as_ptr() as usize);
        base <= at && at < base + z.len()
    })
}

fn zeros() -> Option<&'static [u8]> {
    static ZEROS: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *ZEROS.get_or_init(|| {
        // SAFETY: a new private anonymous read-only mapping, never unmapped,
        // so the slice over it lives as long as the process.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                PLACEHOLDER_SPAN,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            (at != libc::MAP_FAILED)
                .then(|| std::slice::from_raw_parts(at as *const u8, PLACEHOLDER_SPAN))
        }
    })
}

/// Address space (not memory) behind [`placeholder`]: more than any one
/// partition's record set (a 32-bit size) plus any slot.
const PLACEHOLDER_SPAN: usize = 1 << 33;

/// Encodes a response as segments written in order, in which the bytes of
/// `records` (the log reads a Fetch response carries) are not copied: each
/// is a segment of its own, shared with the read that produced it, between
/// the small encoded pieces around it; and each [`placeholder`] in `files`
/// becomes what it stands for: a file range, or buffers a log's tail
/// still holds. Meant for responses whose encoding writes only
/// forward (Fetch's does; no length gaps).
pub fn encode_response_spliced<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
    records: &[Bytes],
    files: &[(Bytes, sluice_engine::Unread)],
) -> anyhow_free::Result<Vec<Part>> {
    let size = body
        .compute_size(version)
        .map_err(anyhow_free::Error::from_display)?;
    let header_version = api_key.response_header_version(version);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_size = header
        .compute_size(header_version)
        .map_err(anyhow_free::Error::from_display)?;
    let len = i32::try_from(header_size + size)
        .map_err(|_| anyhow_free::Error("response too large".into()))?;
    let spliced: usize = records.iter().map(Bytes::len).sum::<usize>()
        + files.iter().map(|(_, r)| r.len()).sum::<usize>();
    let mut buf = SpliceBuf {
        head: BytesMut::with_capacity((header_size + size).saturating_sub(spliced) + 64),
        done: Vec::new(),
        done_len: 0,
        records,
        files,
        files_sent: 0,
        memory_parts: 0,
        stray_stand_in: false,
    };
    buf.head.put_i32(len);
    header
        .encode(&mut buf, header_version)
        .map_err(anyhow_free::Error::from_display)?;
    body.encode(&mut buf, version)
        .map_err(anyhow_free::Error::from_display)?;
    if buf.files_sent != files.len() || buf.stray_stand_in {
        // A stand-in not matched whole to its range: its zeros would have
        // been sent as records.
        return Err(anyhow_free::Error(format!(
            "{} of {} file ranges placed in the response",
            buf.files_sent,
            files.len()
        )));
    }
    Ok(buf.finish())
}

/// Slices shorter than this are copied into the encoded pieces: a segment
/// of their own would cost more than the copy.
const SPLICE_MIN: usize = 4096;
/// Most memory segments one response is split into (the kernel takes at
/// most `IOV_MAX` = 1024 per write); past it record bytes are copied.
const SEGMENTS_MAX: usize = 512;

/// The buffer [`encode_response_spliced`] encodes into: a growing head of
/// encoded bytes, and the segments finished before it.
struct SpliceBuf<'a> {
    head: BytesMut,
    done: Vec<Part>,
    done_len: usize,
    records: &'a [Bytes],
    files: &'a [(Bytes, sluice_engine::Unread)],
    files_sent: usize,
    memory_parts: usize,
    stray_stand_in: bool,
}

impl<'a> SpliceBuf<'a> {
    /// The record buffer `src` lies in, sliced to it.
    fn shared(&self, src: &[u8]) -> Option<Bytes> {
        let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
        self.records
            .iter()
            .find(|r| {
                let base = r.as_ptr() as usize;
                base <= start && end <= base + r.len()
            })
            .map(|r| r.slice_ref(src))
    }

    /// What the stand-in that is exactly `src` stands for.
    fn file(&self, src: &[u8]) -> Option<&'a sluice_engine::Unread> {
        self.files
            .iter()
            .find(|(stand_in, _)| stand_in.as_ptr() == src.as_ptr() && stand_in.len() == src.len())
            .map(|(_, range)| range)
    }

    /// Ends the head as a finished segment, if it holds anything.
    fn cut(&mut self) {
        if !self.head.is_empty() {
            let piece = self.head.split().freeze();
            self.done_len += piece.len();
            self.done.push(Part::Memory(piece));
            self.memory_parts += 1;
        }
    }

    fn finish(mut self) -> Vec<Part> {
        self.cut();
        self.done
    }
}

// SAFETY: every method hands on to the head `BytesMut`, whose own
// implementation upholds the contract; `put_slice` either does the same or
// appends a finished segment, which leaves the head's state as it was.
unsafe impl BufMut for SpliceBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `cnt` is about the head's
        // chunk, which is what `chunk_mut` handed out.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.file(src) {
            Some(sluice_engine::Unread::File(range)) => {
                self.cut();
                self.done_len += range.len;
                self.done.push(Part::File(range.clone()));
                self.files_sent += 1;
                return;
            }
            Some(sluice_engine::Unread::Memory(chunks)) => {
                for chunk in chunks {
                    if chunk.len() >= SPLICE_MIN && self.memory_parts + 2 <= SEGMENTS_MAX {
                        self.cut();
                        self.done_len += chunk.len();
                        self.done.push(Part::Memory(chunk.clone()));
                        self.memory_parts += 1;
                    } else {
                        self.head.put_slice(chunk);
                    }
                }
                self.files_sent += 1;
                return;
            }
            None => {}
        }
        self.stray_stand_in |= !src.is_empty() && is_stand_in(src);
        if src.len() >= SPLICE_MIN && self.memory_parts + 2 <= SEGMENTS_MAX {
            if let Some(shared) = self.shared(src) {
                self.cut();
                self.done_len += shared.len();
                self.done.push(Part::Memory(shared));
                self.memory_parts += 1;
                return;
            }
        }
        self.head.put_slice(src);
    }
}

impl kafka_protocol::protocol::buf::ByteBufMut for SpliceBuf<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        // Only forward encodings are spliced; a seek stays in the head.
        self.head.resize(offset.saturating_sub(self.done_len), 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.done_len);
        let end = r.end.saturating_sub(self.done_len).min(self.head.len());
        &mut self.head[start.min(end)..end]
    }
}

/// A tiny error type so this crate does not depend on anyhow.
pub mod anyhow_free {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Error(pub String);

    impl Error {
        pub fn from_display(e: impl std::fmt::Display) -> Error {
            Error(e.to_string())
        }
    }

    pub type Result<T> = std::result::Result<T, Error>;
}

/// Decodes `request`'s body as the type its API key names, for every API
/// this broker serves, and drops it: what a handler's first step does, for
/// fuzzing (`broker/fuzz`) and the decoder tests. An API the broker does
/// not serve is `UnsupportedVersion`.
pub fn decode_served_body(request: &Request) -> Result<(), DecodeError> {
    use kafka_protocol::messages;
    use kafka_protocol::messages::{
        ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
        FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
    };
    match request.api_key {
        ApiKey::Produce => decode_body::<ProduceRequest>(request).map(drop),
        ApiKey::Fetch => decode_body::<FetchRequest>(request).map(drop),
        ApiKey::ListOffsets => decode_body::<ListOffsetsRequest>(request).map(drop),
        ApiKey::Metadata => decode_body::<MetadataRequest>(request).map(drop),
        ApiKey::ApiVersions => decode_body::<ApiVersionsRequest>(request).map(drop),
        ApiKey::CreateTopics => decode_body::<CreateTopicsRequest>(request).map(drop),
        ApiKey::DeleteTopics => decode_body::<DeleteTopicsRequest>(request).map(drop),
        ApiKey::CreatePartitions => decode_body::<CreatePartitionsRequest>(request).map(drop),
        ApiKey::InitProducerId => decode_body::<messages::InitProducerIdRequest>(request).map(drop),
        ApiKey::OffsetForLeaderEpoch => {
            decode_body::<messages::OffsetForLeaderEpochRequest>(request).map(drop)
        }
        ApiKey::DescribeCluster => {
            decode_body::<messages::DescribeClusterRequest>(request).map(drop)
        }
        ApiKey::DescribeTopicPartitions => {
            decode_body::<messages::DescribeTopicPartitionsRequest>(request).map(drop)
        }
        ApiKey::ElectLeaders => decode_body::<messages::ElectLeadersRequest>(request).map(drop),
        ApiKey::DescribeConfigs => {
            decode_body::<messages::DescribeConfigsRequest>(request).map(drop)
        }
        ApiKey::IncrementalAlterConfigs => {
            decode_body::<messages::IncrementalAlterConfigsRequest>(request).map(drop)
        }
        ApiKey::DeleteRecords => decode_body::<messages::DeleteRecordsRequest>(request).map(drop),
        ApiKey::FindCoordinator => {
            decode_body::<messages::FindCoordinatorRequest>(request).map(drop)
        }
        ApiKey::JoinGroup => decode_body::<messages::JoinGroupRequest>(request).map(drop),
        ApiKey::SyncGroup => decode_body::<messages::SyncGroupRequest>(request).map(drop),
        ApiKey::Heartbeat => decode_body::<messages::HeartbeatRequest>(request).map(drop),
        ApiKey::LeaveGroup => decode_body::<messages::LeaveGroupRequest>(request).map(drop),
        ApiKey::OffsetCommit => decode_body::<messages::OffsetCommitRequest>(request).map(drop),
        ApiKey::OffsetFetch => decode_body::<messages::OffsetFetchRequest>(request).map(drop),
        ApiKey::ListGroups => decode_body::<messages::ListGroupsRequest>(request).map(drop),
        ApiKey::DescribeGroups => decode_body::<messages::DescribeGroupsRequest>(request).map(drop),
        ApiKey::DeleteGroups => decode_body::<messages::DeleteGroupsRequest>(request).map(drop),
        other => Err(DecodeError::UnsupportedVersion {
            api_key: other,
            version: request.version,
            correlation_id: request.header.correlation_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;

    fn test_peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    /// A Fetch response with a small, a large and an absent record set, at
    /// the flexible and an old version.
    fn fetch_response(records: &[Option<Bytes>]) -> kafka_protocol::messages::FetchResponse {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        let mut topic = FetchableTopicResponse::default();
        topic.topic = kafka_protocol::messages::TopicName(
            kafka_protocol::protocol::StrBytes::from_static_str("t"),
        );
        for (i, r) in records.iter().enumerate() {
            let mut p = PartitionData::default();
            p.partition_index = i as i32;
            p.high_watermark = 10;
            p.records = r.clone();
            topic.partitions.push(p);
        }
        let mut response = kafka_protocol::messages::FetchResponse::default();
        response.responses.push(topic);
        response
    }

    /// The bytes `parts` stand for, file ranges read back.
    fn concat(parts: &[Part]) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        for part in parts {
            match part {
                Part::Memory(b) => out.extend_from_slice(b),
                Part::File(r) => {
                    let file = std::fs::File::from(r.fd.try_clone().unwrap());
                    let mut bytes = vec![0; r.len];
                    file.read_exact_at(&mut bytes, r.pos).unwrap();
                    out.extend_from_slice(&bytes);
                }
            }
        }
        out
    }

    #[test]
    fn a_spliced_response_is_the_same_bytes_as_the_copied_one_without_copying_the_records() {
        let big = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"tiny records");
        // A segment file whose middle a fifth partition's records name.
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &big).unwrap();
        let range = sluice_engine::FileRange {
            fd: std::sync::Arc::new(std::os::fd::OwnedFd::from(file)),
            pos: 500,
            len: 60_000,
        };
        let stand_in = placeholder(4, range.len).unwrap();
        // A sixth partition's records are batches a log's tail holds: a
        // patched header, then the rest of the request's buffer.
        let header = Bytes::from(vec![7u8; 61]);
        let tail = vec![header.clone(), big.slice(61..40_000)];
        let tail_stand_in = placeholder(5, 40_000).unwrap();
        let records = vec![
            Some(big.slice(10..90_000)),
            Some(small),
            None,
            Some(big.clone()),
            Some(stand_in.clone()),
            Some(tail_stand_in.clone()),
        ];
        let response = fetch_response(&records);
        let mut copied = records.clone();
        copied[4] = Some(big.slice(500..60_500));
        copied[5] = Some(Bytes::from([&header[..], &big[61..40_000]].concat()));
        let copied = fetch_response(&copied);
        let shared: Vec<Bytes> = records[..4].iter().flatten().cloned().collect();
        let files = [
            (stand_in, sluice_engine::Unread::File(range)),
            (tail_stand_in, sluice_engine::Unread::Memory(tail)),
        ];
        for version in [4, 11, 12, 16] {
            let whole = encode_response(ApiKey::Fetch, version, 9, &copied).unwrap();
            let pieces =
                encode_response_spliced(ApiKey::Fetch, version, 9, &response, &shared, &files)
                    .unwrap();
            assert_eq!(concat(&pieces), whole, "version {version}");
            // The two large record sets and the tail's large buffer are
            // segments of their own, pointing into the read buffer; the
            // small ones were copied; the file's is its range.
            let in_big = pieces
                .iter()
                .filter(|p| match p {
                    Part::Memory(p) => {
                        let (b, p) = (big.as_ptr() as usize, p.as_ptr() as usize);
                        b <= p && p < b + big.len()
                    }
                    Part::File(_) => false,
                })
                .count();
            assert_eq!(in_big, 3, "version {version}");
            let ranges = pieces.iter().filter(|p| matches!(p, Part::File(_))).count();
            assert_eq!(ranges, 1, "version {version}");
        }
        // A stand-in the encoder did not meet whole is an error, never zeros
        // on the wire.
        let other = placeholder(3, 60_000).unwrap();
        let misplaced = [(other, files[0].1.clone())];
        assert!(
            encode_response_spliced(ApiKey::Fetch, 12, 9, &response, &shared, &misplaced).is_err()
        );
    }

    fn frame(api_key: i16, version: i16, header_version: i16) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = api_key;
        header.request_api_version = version;
        header.correlation_id = 7;
        let mut buf = BytesMut::new();
        header.encode(&mut buf, header_version).unwrap();
        if let Ok(key) = ApiKey::try_from(api_key) {
            if key == ApiKey::ApiVersions && version <= 3 {
                ApiVersionsRequest::default()
                    .encode(&mut buf, version)
                    .unwrap();
            }
        }
        buf.freeze()
    }

    #[test]
    fn headers_decode_and_bad_ones_say_why() {
        let request = decode_request(frame(18, 3, 2), test_peer()).unwrap();
        assert_eq!(request.api_key, ApiKey::ApiVersions);
        assert_eq!(request.header.correlation_id, 7);
        let body: ApiVersionsRequest = decode_body(&request).unwrap();
        assert_eq!(body, ApiVersionsRequest::default());
        assert!(matches!(
            decode_request(frame(999, 0, 1), test_peer()),
            Err(DecodeError::UnknownApiKey(999))
        ));
        assert!(matches!(
            decode_request(frame(18, 99, 1), test_peer()),
            Err(DecodeError::UnsupportedVersion {
                correlation_id: 7,
                ..
            })
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(b"abc"), test_peer()),
            Err(DecodeError::TooShort(3))
        ));
        // A header that claims a client id longer than the frame.
        let mut bad = BytesMut::new();
        bad.put_i16(18);
        bad.put_i16(1);
        bad.put_i32(1);
        bad.put_i16(500);
        assert!(matches!(
            decode_request(bad.freeze(), test_peer()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    use proptest::prelude::*;

    /// Decodes `body` as every request type the broker handles, at `version`;
    /// any error is fine, a panic is not.
    fn decode_everything(body: &[u8], version: i16) {
        for &(api_key, min, max) in SUPPORTED {
            if !(min..=max).contains(&version) {
                continue;
            }
            let request = Request {
                api_key,
                version,
                header: RequestHeader::default(),
                body: Bytes::copy_from_slice(body),
                peer: test_peer(),
            };
            let served = decode_served_body(&request);
            assert!(
                !matches!(served, Err(DecodeError::UnsupportedVersion { .. })),
                "{api_key:?} is served but decode_served_body does not decode it"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
            ..ProptestConfig::default()
        })]

        /// Hostile frames: the header decoder never panics.
        #[test]
        fn arbitrary_frames_never_panic_the_header_decoder(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(frame), test_peer());
        }

        /// Hostile bodies: no request decoder panics, whatever the bytes.
        #[test]
        fn arbitrary_bodies_never_panic_a_request_decoder(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            version in 0i16..13,
        ) {
            decode_everything(&body, version);
        }
    }
}
