//! A read-only view over Kafka v2 record batches (magic 2), plus the one
//! in-place edit the broker needs.
//!
//! A record batch is the unit that producers send, the log stores and
//! consumers fetch. Its 61-byte header carries everything the engine has to
//! know to place the batch in a log: the offsets it covers, its size, the
//! producer identity used for idempotence and transactions, and a CRC-32C over
//! everything from the attributes field to the end. The records that follow
//! the header are opaque to the engine. They are often compressed (gzip,
//! snappy, lz4 or zstd, chosen by the producer), and the engine never decodes
//! or recompresses them: the bytes a producer sends are the bytes written to
//! the segment file and the bytes a consumer later receives. Decoding records
//! would cost CPU on the hot path, would tie the engine to every codec, and
//! would risk changing bytes that the client's CRC protects, all for
//! information the header already provides.
//!
//! This module is therefore pure: it does no I/O and allocates nothing. It
//! parses headers, checks that a batch is structurally sound and that its CRC
//! matches, walks a buffer of concatenated batches, and patches the two
//! fields the broker assigns (base offset and partition leader epoch). Those
//! two fields lie before the CRC-covered region, which is exactly why Kafka
//! can stamp them on append without recomputing the checksum.
//!
//! All input is treated as hostile. Bytes arrive from the network or from a
//! file that may have been torn by a crash, so nothing here indexes, unwraps
//! or does arithmetic that could panic or overflow on any input.
//!
//! Header layout (big endian):
//!
//! | offset | field                  | type |
//! |-------:|------------------------|------|
//! |      0 | base offset            | i64  |
//! |      8 | batch length           | i32  |
//! |     12 | partition leader epoch | i32  |
//! |     16 | magic                  | i8   |
//! |     17 | crc                    | u32  |
//! |     21 | attributes             | i16  |
//! |     23 | last offset delta      | i32  |
//! |     27 | base timestamp         | i64  |
//! |     35 | max timestamp          | i64  |
//! |     43 | producer id            | i64  |
//! |     51 | producer epoch         | i16  |
//! |     53 | base sequence          | i32  |
//! |     57 | record count           | i32  |
//! |     61 | records...             |      |

use std::iter::FusedIterator;

/// Size of the fixed v2 record batch header, in bytes.
pub const HEADER_LEN: usize = 61;

/// Bytes that precede the point from which the batch length is counted: the
/// base offset (8) and the batch length field itself (4).
const LENGTH_PREFIX: usize = 12;

/// Smallest `batch_length` value that is consistent with the header
/// (`HEADER_LEN - 12`).
pub const MIN_BATCH_LENGTH: i32 = 49;

/// The only batch format this engine accepts.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers every byte from the attributes field to the end of the batch.
const CRC_COVERED_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0b0000_0111;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const DELETE_HORIZON_BIT: i16 = 1 << 6;

/// Why a buffer is not an acceptable record batch.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The buffer ends before the header or the batch does. At the tail of a
    /// segment file this usually means a torn write rather than corruption.
    #[error("truncated record batch: need {needed} bytes but only {available} are available")]
    Truncated { needed: usize, available: usize },
    /// The magic byte is not 2. Older message formats (magic 0 and 1) are not
    /// supported.
    #[error("unsupported record batch magic {0}: only magic 2 is supported")]
    BadMagic(i8),
    /// The batch length is smaller than the header, larger than the maximum
    /// batch size, or does not match the number of bytes supplied.
    #[error("invalid record batch length {0}: it must cover at least the header, stay within the maximum batch size and match the bytes supplied")]
    BadLength(i32),
    /// The last offset delta is negative.
    #[error("invalid last offset delta {0}: it must not be negative")]
    BadOffsetDelta(i32),
    /// The record count is not last offset delta + 1.
    #[error("record count {record_count} does not match last offset delta {last_offset_delta}: a batch must hold exactly last offset delta + 1 records")]
    RecordCountMismatch {
        record_count: i32,
        last_offset_delta: i32,
    },
    /// The stored CRC-32C does not match the bytes.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

/// The compression codec named in a batch's attributes.
///
/// The engine never compresses or decompresses anything; it reports the codec
/// so that callers can expose it (for example in metrics) or enforce a topic
/// policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// A codec id (5, 6 or 7) that Kafka has not assigned.
    Unknown(u8),
}

/// The decoded fixed header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the 61 header bytes at the start of `buf` and checks the cheap
    /// structural rules: magic == 2, `MIN_BATCH_LENGTH <= batch_length <=
    /// max_batch_bytes - 12`, `last_offset_delta >= 0` and
    /// `record_count == last_offset_delta + 1` (which implies at least one
    /// record).
    ///
    /// It does not check the CRC and does not require the whole batch to be
    /// in `buf`, so that a reader can learn a batch's size from its header
    /// before reading the rest.
    ///
    /// The magic byte and the batch length are checked as soon as the bytes
    /// holding them are present, even if the rest of the header is missing.
    /// A short buffer whose visible bytes are already wrong is therefore
    /// reported as corruption rather than as [`BatchError::Truncated`].
    ///
    /// # Errors
    ///
    /// [`BatchError::BadMagic`], [`BatchError::BadLength`],
    /// [`BatchError::BadOffsetDelta`] or [`BatchError::RecordCountMismatch`]
    /// for a header that breaks a rule, and [`BatchError::Truncated`] if
    /// `buf` is shorter than [`HEADER_LEN`] but otherwise plausible.
    pub fn parse(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
        let header = parse_frame(buf, max_batch_bytes)?;
        check_counts(&header)?;
        Ok(header)
    }

    /// The size of the whole batch in bytes: `batch_length + 12`.
    ///
    /// A header produced by [`BatchHeader::parse`] always has a batch length
    /// of at least [`MIN_BATCH_LENGTH`]. For a hand-built header with a
    /// negative length this returns 12 rather than wrapping around.
    #[must_use]
    pub fn total_len(&self) -> usize {
        usize::try_from(self.batch_length)
            .map_or(LENGTH_PREFIX, |len| len.saturating_add(LENGTH_PREFIX))
    }

    /// The offset of the last record in the batch: `base_offset +
    /// last_offset_delta`.
    ///
    /// A client may send any base offset, so the sum saturates at `i64::MAX`
    /// instead of overflowing. The broker overwrites client base offsets with
    /// [`patch`] before the value is used for anything.
    #[must_use]
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The number of records in the batch.
    #[must_use]
    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    /// The codec that compressed the records.
    #[must_use]
    pub fn compression(&self) -> Compression {
        // The mask keeps the value within 0..=7, so the conversion cannot
        // fail; falling back to 0 only keeps the code free of panics.
        let id = u8::try_from(self.attributes & COMPRESSION_MASK).unwrap_or(0);
        match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Unknown(other),
        }
    }

    /// Whether the batch belongs to a transaction.
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch holds control records (transaction markers) rather
    /// than user data.
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Whether the timestamps are log-append times set by the broker rather
    /// than create times set by the producer.
    #[must_use]
    pub fn log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    /// Whether log compaction has stored a delete horizon in the base
    /// timestamp field.
    #[must_use]
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & DELETE_HORIZON_BIT != 0
    }
}

/// Validates exactly one whole batch.
///
/// `batch.len()` must equal the header's total length; a shorter buffer is
/// [`BatchError::Truncated`] and a longer one is [`BatchError::BadLength`],
/// because the length field then disagrees with the bytes supplied. The
/// header rules of [`BatchHeader::parse`] apply, and the CRC-32C stored in the
/// header must match the bytes from the attributes field to the end.
///
/// The CRC is checked before the rules about fields inside the CRC-covered
/// region (last offset delta and record count). A flipped bit there is then
/// reported as the corruption it is, not as a malformed batch.
///
/// # Errors
///
/// Any error of [`BatchHeader::parse`], [`BatchError::Truncated`] if the
/// batch is incomplete, [`BatchError::BadLength`] if bytes follow it, and
/// [`BatchError::CrcMismatch`] if its content does not match its CRC.
pub fn validate(batch: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let header = parse_frame(batch, max_batch_bytes)?;
    let total = header.total_len();
    if batch.len() < total {
        return Err(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        });
    }
    if batch.len() > total {
        return Err(BatchError::BadLength(header.batch_length));
    }
    let covered = batch.get(CRC_COVERED_FROM..).unwrap_or_default();
    let computed = crc32c::crc32c(covered);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    check_counts(&header)?;
    Ok(header)
}

/// Overwrites the base offset and partition leader epoch of the batch at the
/// start of `batch`.
///
/// Both fields lie before the CRC-covered region, so the batch stays valid
/// without recomputing the checksum. This does not validate the batch; the
/// caller is expected to have done so. A buffer shorter than [`HEADER_LEN`]
/// is rejected and left unchanged.
///
/// # Errors
///
/// [`BatchError::Truncated`] if `batch` is shorter than [`HEADER_LEN`].
pub fn patch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) -> Result<(), BatchError> {
    let available = batch.len();
    let truncated = BatchError::Truncated {
        needed: HEADER_LEN,
        available,
    };
    if available < HEADER_LEN {
        return Err(truncated);
    }
    write_field(batch, BASE_OFFSET_AT, base_offset.to_be_bytes()).ok_or(truncated.clone())?;
    write_field(batch, LEADER_EPOCH_AT, leader_epoch.to_be_bytes()).ok_or(truncated)?;
    Ok(())
}

/// Stores a fresh CRC-32C over the CRC-covered bytes of the batch at the
/// start of `batch`. For tests and tools that edit those bytes on purpose to
/// build hostile input the engine must carry (garbage records behind a valid
/// CRC); the engine itself never rewrites a CRC.
///
/// # Errors
///
/// [`BatchError::Truncated`] if `batch` is shorter than its header says.
pub fn reseal(batch: &mut [u8]) -> Result<(), BatchError> {
    let header = parse_frame(batch, usize::MAX)?;
    let end = header.total_len();
    let covered = batch
        .get(CRC_COVERED_FROM..end)
        .ok_or(BatchError::Truncated {
            needed: end,
            available: batch.len(),
        })?;
    let crc = crc32c::crc32c(covered);
    write_field(batch, CRC_AT, crc.to_be_bytes()).ok_or(BatchError::Truncated {
        needed: HEADER_LEN,
        available: batch.len(),
    })
}

/// Sets the compression codec id (attributes bits 0–2) of the batch at the
/// start of `batch` and reseals it: a batch with a codec Kafka never
/// assigned (5–7) is valid to the engine, which does not decompress, and
/// must be refused by whoever decodes it. For tests and tools.
///
/// # Errors
///
/// As [`reseal`].
pub fn set_compression_id(batch: &mut [u8], id: u8) -> Result<(), BatchError> {
    let at = ATTRIBUTES_AT + 1;
    let truncated = BatchError::Truncated {
        needed: HEADER_LEN,
        available: batch.len(),
    };
    let low = batch.get_mut(at).ok_or(truncated)?;
    *low = (*low & !0b111) | (id & 0b111);
    reseal(batch)
}

/// Iterates over concatenated batches in `buf`, validating each fully (CRC
/// included).
///
/// This is the shape of the records field of a Produce request and of a
/// segment file. Each item is the batch's header and the position of its
/// first byte in `buf`. On the first error the iterator yields that error
/// once and then stops, because after a bad length nothing later in the
/// buffer can be located reliably.
///
/// A trailing partial batch (fewer bytes left than its header says, or fewer
/// than a header) is reported as [`BatchError::Truncated`] with the number of
/// bytes the batch needs, so that recovery code reading a file tail can tell
/// a torn write from corruption and truncate the file at the batch's start.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    buf: &'a [u8],
    pos: usize,
    max_batch_bytes: usize,
    done: bool,
}

/// Returns an iterator over the batches concatenated in `buf`. See
/// [`Batches`].
#[must_use]
pub fn batches(buf: &[u8], max_batch_bytes: usize) -> Batches<'_> {
    Batches {
        buf,
        pos: 0,
        max_batch_bytes,
        done: false,
    }
}

impl Batches<'_> {
    /// The position just past the last batch yielded successfully. After an
    /// error this is where the bad or partial batch starts, which is where a
    /// recovering reader truncates a segment file.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Stops the iteration and turns `err` into its last item.
    fn fail(&mut self, err: BatchError) -> Option<Result<(BatchHeader, usize), BatchError>> {
        self.done = true;
        Some(Err(err))
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(BatchHeader, usize), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = match self.buf.get(self.pos..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => {
                self.done = true;
                return None;
            }
        };
        // Only the framing is checked here; `validate` below checks the CRC
        // before the rules about CRC-covered fields, so a flipped bit is
        // reported as a CRC mismatch whichever entry point found it.
        let header = match parse_frame(rest, self.max_batch_bytes) {
            Ok(header) => header,
            Err(BatchError::Truncated { available, .. }) => {
                // Only part of the header is present. Its length field has
                // already passed the range check if it is visible, so report
                // the size of the whole batch the caller would need.
                let needed = peek_total_len(rest).unwrap_or(HEADER_LEN);
                return self.fail(BatchError::Truncated { needed, available });
            }
            Err(err) => return self.fail(err),
        };
        let total = header.total_len();
        let Some(batch) = rest.get(..total) else {
            return self.fail(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            });
        };
        match validate(batch, self.max_batch_bytes) {
            Ok(header) => {
                let start = self.pos;
                self.pos = start.saturating_add(total);
                Some(Ok((header, start)))
            }
            Err(err) => self.fail(err),
        }
    }
}

impl FusedIterator for Batches<'_> {}

/// Checks the framing (see [`check_framing`]) and decodes the header, without
/// the rules about fields inside the CRC-covered region.
fn parse_frame(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    check_framing(buf, max_batch_bytes)?;
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    decode_header(buf)
}

/// Checks the fields that frame a batch and lie outside the CRC: the magic
/// byte and the batch length. Each is checked only if `buf` is long enough to
/// hold it.
///
/// Magic comes first because the length field means something else in the
/// legacy message formats, and "unsupported magic" is the more useful error
/// for a client that sends one of those.
fn check_framing(buf: &[u8], max_batch_bytes: usize) -> Result<(), BatchError> {
    if let Some(&[magic]) = buf.get(MAGIC_AT..MAGIC_AT + 1) {
        let magic = i8::from_be_bytes([magic]);
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
    }
    if let Some(batch_length) = read_i32(buf, BATCH_LENGTH_AT) {
        let max_length = max_batch_bytes.saturating_sub(LENGTH_PREFIX);
        let in_range = batch_length >= MIN_BATCH_LENGTH
            && usize::try_from(batch_length).is_ok_and(|len| len <= max_length);
        if !in_range {
            return Err(BatchError::BadLength(batch_length));
        }
    }
    Ok(())
}

/// Checks the rules that relate the last offset delta and the record count.
///
/// Kafka's log compaction can leave a batch holding fewer records than its
/// offset range; this engine does not compact, so every batch it accepts or
/// stores covers its offsets densely.
fn check_counts(header: &BatchHeader) -> Result<(), BatchError> {
    if header.last_offset_delta < 0 {
        return Err(BatchError::BadOffsetDelta(header.last_offset_delta));
    }
    // Widening to i64 keeps `last_offset_delta + 1` from overflowing when a
    // hostile batch claims i32::MAX.
    if i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::RecordCountMismatch {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(())
}

/// Decodes the 61 header bytes without checking any rule.
fn decode_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    // `header` below is exactly HEADER_LEN bytes long, so none of the field
    // reads can fail; turning their `None` into an error only spares us an
    // unwrap.
    fn field<T>(value: Option<T>, truncated: impl Fn() -> BatchError) -> Result<T, BatchError> {
        value.ok_or_else(truncated)
    }
    let truncated = || BatchError::Truncated {
        needed: HEADER_LEN,
        available: buf.len(),
    };
    let header = buf.get(..HEADER_LEN).ok_or_else(truncated)?;
    Ok(BatchHeader {
        base_offset: field(read_i64(header, BASE_OFFSET_AT), truncated)?,
        batch_length: field(read_i32(header, BATCH_LENGTH_AT), truncated)?,
        partition_leader_epoch: field(read_i32(header, LEADER_EPOCH_AT), truncated)?,
        magic: field(
            read_array(header, MAGIC_AT).map(i8::from_be_bytes),
            truncated,
        )?,
        crc: field(
            read_array(header, CRC_AT).map(u32::from_be_bytes),
            truncated,
        )?,
        attributes: field(
            read_array(header, ATTRIBUTES_AT).map(i16::from_be_bytes),
            truncated,
        )?,
        last_offset_delta: field(read_i32(header, LAST_OFFSET_DELTA_AT), truncated)?,
        base_timestamp: field(read_i64(header, BASE_TIMESTAMP_AT), truncated)?,
        max_timestamp: field(read_i64(header, MAX_TIMESTAMP_AT), truncated)?,
        producer_id: field(read_i64(header, PRODUCER_ID_AT), truncated)?,
        producer_epoch: field(
            read_array(header, PRODUCER_EPOCH_AT).map(i16::from_be_bytes),
            truncated,
        )?,
        base_sequence: field(read_i32(header, BASE_SEQUENCE_AT), truncated)?,
        record_count: field(read_i32(header, RECORD_COUNT_AT), truncated)?,
    })
}

/// The total length announced by the batch length field, if the field is
/// present and non-negative.
fn peek_total_len(buf: &[u8]) -> Option<usize> {
    let batch_length = usize::try_from(read_i32(buf, BATCH_LENGTH_AT)?).ok()?;
    batch_length.checked_add(LENGTH_PREFIX)
}

/// Reads `N` bytes at `at`, or `None` if `buf` is too short.
fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    buf.get(at..end)?.try_into().ok()
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    read_array(buf, at).map(i32::from_be_bytes)
}

fn read_i64(buf: &[u8], at: usize) -> Option<i64> {
    read_array(buf, at).map(i64::from_be_bytes)
}

/// Writes `bytes` at `at`, or returns `None` if `buf` is too short.
fn write_field<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) -> Option<()> {
    let end = at.checked_add(N)?;
    buf.get_mut(at..end)?.copy_from_slice(&bytes);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression as KCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    /// A generous limit, well above every batch these tests build.
    const MAX: usize = 1 << 20;

    const BASE_OFFSET: i64 = 1_000;
    const BASE_TIMESTAMP: i64 = 1_700_000_000_000;
    const PRODUCER_ID: i64 = 4_242;
    const PRODUCER_EPOCH: i16 = 7;
    const BASE_SEQUENCE: i32 = 100;
    const LEADER_EPOCH: i32 = 3;

    /// Builds `count` records with dense offsets from BASE_OFFSET and
    /// timestamps one millisecond apart.
    ///
    /// kafka-protocol's encoder splits records into separate batches whenever
    /// `offset - sequence` changes, so sequences have to advance with the
    /// offsets for the records to share one batch.
    fn records(count: usize, value_len: usize) -> Vec<Record> {
        (0..count)
            .map(|i| {
                let i64_i = i64::try_from(i).expect("test record index fits in i64");
                let i32_i = i32::try_from(i).expect("test record index fits in i32");
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: LEADER_EPOCH,
                    producer_id: PRODUCER_ID,
                    producer_epoch: PRODUCER_EPOCH,
                    timestamp_type: TimestampType::Creation,
                    offset: BASE_OFFSET + i64_i,
                    sequence: BASE_SEQUENCE + i32_i,
                    timestamp: BASE_TIMESTAMP + i64_i,
                    key: Some(Bytes::from(format!("key-{i}"))),
                    // Repetitive values so that every codec actually shrinks them.
                    value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; value_len])),
                    headers: Default::default(),
                }
            })
            .collect()
    }

    fn encode(records: &[Record], compression: KCompression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("kafka-protocol encodes the batch");
        buf.to_vec()
    }

    fn sample_batch() -> Vec<u8> {
        encode(&records(5, 32), KCompression::None)
    }

    fn set_i32(buf: &mut [u8], at: usize, value: i32) {
        buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    /// Stores a fresh CRC after a test has edited CRC-covered bytes on purpose.
    fn fix_crc(buf: &mut [u8]) {
        let crc = crc32c::crc32c(&buf[CRC_COVERED_FROM..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn parses_and_validates_every_codec() {
        let codecs = [
            (KCompression::None, Compression::None),
            (KCompression::Gzip, Compression::Gzip),
            (KCompression::Snappy, Compression::Snappy),
            (KCompression::Lz4, Compression::Lz4),
            (KCompression::Zstd, Compression::Zstd),
        ];
        let count = 10;
        let recs = records(count, 200);
        let mut sizes = Vec::new();
        for (kafka_codec, codec) in codecs {
            let batch = encode(&recs, kafka_codec);
            let parsed = BatchHeader::parse(&batch, MAX).expect("header parses");
            let validated = validate(&batch, MAX).expect("batch validates");
            assert_eq!(parsed, validated, "{codec:?}");

            let h = validated;
            assert_eq!(h.compression(), codec);
            assert_eq!(h.total_len(), batch.len(), "{codec:?}");
            assert_eq!(h.magic, 2);
            assert_eq!(h.base_offset, BASE_OFFSET);
            assert_eq!(h.last_offset(), BASE_OFFSET + count as i64 - 1);
            assert_eq!(h.last_offset_delta, count as i32 - 1);
            assert_eq!(h.record_count(), count as i32);
            assert_eq!(h.base_timestamp, BASE_TIMESTAMP);
            assert_eq!(h.max_timestamp, BASE_TIMESTAMP + count as i64 - 1);
            assert_eq!(h.partition_leader_epoch, LEADER_EPOCH);
            assert_eq!(h.producer_id, PRODUCER_ID);
            assert_eq!(h.producer_epoch, PRODUCER_EPOCH);
            assert_eq!(h.base_sequence, BASE_SEQUENCE);
            assert!(!h.is_transactional());
            assert!(!h.is_control());
            assert!(!h.log_append_time());
            assert!(!h.has_delete_horizon());
            sizes.push(batch.len());
        }
        // The compressed batches must really be compressed, or the codec
        // cases would prove nothing beyond the attribute bits.
        for (i, size) in sizes.iter().enumerate().skip(1) {
            assert!(*size < sizes[0], "codec #{i} did not shrink the batch");
        }
    }

    #[test]
    fn reports_attribute_flags() {
        let mut recs = records(2, 8);
        for record in &mut recs {
            record.transactional = true;
        }
        let batch = encode(&recs, KCompression::None);
        let h = validate(&batch, MAX).expect("transactional batch validates");
        assert!(h.is_transactional());
        assert!(!h.is_control());

        for record in &mut recs {
            record.transactional = false;
            record.control = true;
        }
        let batch = encode(&recs, KCompression::None);
        let h = validate(&batch, MAX).expect("control batch validates");
        assert!(h.is_control());
        assert!(!h.is_transactional());

        // kafka-protocol's encoder ignores `timestamp_type`, so the
        // LogAppendTime bit is set by hand.
        let mut batch = sample_batch();
        batch[ATTRIBUTES_AT + 1] |= 1 << 3;
        fix_crc(&mut batch);
        let h = validate(&batch, MAX).expect("log-append-time batch validates");
        assert!(h.log_append_time());
        assert_eq!(h.compression(), Compression::None);

        // Codec ids 5 to 7 are unassigned; the view reports them rather than
        // rejecting the batch, since it never decompresses anything.
        batch[ATTRIBUTES_AT + 1] = (batch[ATTRIBUTES_AT + 1] & !0b111) | 6;
        fix_crc(&mut batch);
        let h = validate(&batch, MAX).expect("unknown-codec batch validates");
        assert_eq!(h.compression(), Compression::Unknown(6));
    }

    #[test]
    fn patch_rewrites_offset_and_epoch_without_breaking_the_crc() {
        for codec in [KCompression::None, KCompression::Zstd] {
            let mut batch = encode(&records(4, 16), codec);
            let before = validate(&batch, MAX).expect("batch validates");

            patch(&mut batch, 77_000, 12).expect("patch succeeds");
            let after = validate(&batch, MAX).expect("patched batch still validates");
            assert_eq!(after.base_offset, 77_000);
            assert_eq!(after.partition_leader_epoch, 12);
            assert_eq!(after.last_offset(), 77_003);
            assert_eq!(after.crc, before.crc);

            let mut bytes = Bytes::from(batch);
            let set = RecordBatchDecoder::decode(&mut bytes).expect("kafka-protocol decodes");
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![77_000, 77_001, 77_002, 77_003]);
            assert!(set.records.iter().all(|r| r.partition_leader_epoch == 12));
        }
    }

    #[test]
    fn patch_rejects_short_buffers_without_touching_them() {
        let mut short = vec![0xAB_u8; HEADER_LEN - 1];
        assert_eq!(
            patch(&mut short, 1, 1),
            Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: HEADER_LEN - 1
            })
        );
        assert!(short.iter().all(|&b| b == 0xAB));
        assert!(patch(&mut [], 1, 1).is_err());
    }

    #[test]
    fn any_flipped_byte_under_the_crc_is_a_crc_mismatch() {
        let batch = sample_batch();
        let stored = validate(&batch, MAX).expect("batch validates").crc;
        // From the CRC field itself to the last byte: a damaged stored CRC
        // must be caught just like damaged content.
        for at in CRC_AT..batch.len() {
            let mut bad = batch.clone();
            bad[at] ^= 0x01;
            match validate(&bad, MAX) {
                Err(BatchError::CrcMismatch {
                    stored: s,
                    computed,
                }) => {
                    assert_ne!(s, computed, "byte {at}");
                    if at >= CRC_COVERED_FROM {
                        assert_eq!(s, stored, "byte {at}");
                    }
                }
                other => panic!("flipping byte {at} gave {other:?}"),
            }
            // The batches iterator reports the same error, once.
            let items: Vec<_> = batches(&bad, MAX).collect();
            assert_eq!(items.len(), 1, "byte {at}");
            assert!(matches!(items[0], Err(BatchError::CrcMismatch { .. })));
        }
        // Bytes before the CRC field are outside it: the base offset and the
        // leader epoch change freely, which is what makes `patch` cheap.
        for at in (BASE_OFFSET_AT..BATCH_LENGTH_AT).chain(LEADER_EPOCH_AT..MAGIC_AT) {
            let mut other = batch.clone();
            other[at] ^= 0xFF;
            assert!(validate(&other, MAX).is_ok(), "byte {at}");
        }
    }

    #[test]
    fn rejects_bad_magic() {
        for magic in [0_i8, 1, 3, -1] {
            let mut batch = sample_batch();
            batch[MAGIC_AT] = magic.to_be_bytes()[0];
            assert_eq!(
                BatchHeader::parse(&batch, MAX),
                Err(BatchError::BadMagic(magic))
            );
            assert_eq!(validate(&batch, MAX), Err(BatchError::BadMagic(magic)));
            // Visible even when the rest of the header has not arrived.
            assert_eq!(
                BatchHeader::parse(&batch[..MAGIC_AT + 1], MAX),
                Err(BatchError::BadMagic(magic))
            );
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let batch = sample_batch();
        let real = validate(&batch, MAX).expect("batch validates").batch_length;
        for length in [i32::MIN, -1, 0, MIN_BATCH_LENGTH - 1] {
            let mut bad = batch.clone();
            set_i32(&mut bad, BATCH_LENGTH_AT, length);
            assert_eq!(
                BatchHeader::parse(&bad, MAX),
                Err(BatchError::BadLength(length))
            );
            assert_eq!(validate(&bad, MAX), Err(BatchError::BadLength(length)));
        }
        // The exact limit passes and one byte less fails.
        assert!(validate(&batch, batch.len()).is_ok());
        assert_eq!(
            validate(&batch, batch.len() - 1),
            Err(BatchError::BadLength(real))
        );
        assert_eq!(
            BatchHeader::parse(&batch, batch.len() - 1),
            Err(BatchError::BadLength(real))
        );
        // Limits too small for any batch must not underflow.
        for max in [0, 1, LENGTH_PREFIX, HEADER_LEN - 1] {
            assert_eq!(validate(&batch, max), Err(BatchError::BadLength(real)));
        }
        // More bytes than the length field claims is a length error, not a
        // second batch: `validate` takes exactly one batch.
        let mut long = batch.clone();
        long.push(0);
        assert_eq!(validate(&long, MAX), Err(BatchError::BadLength(real)));
        // Parsing the header alone does not care what follows it.
        assert!(BatchHeader::parse(&long, MAX).is_ok());
    }

    #[test]
    fn minimal_batch_with_an_empty_record_area_is_structurally_valid() {
        // A header whose length covers only itself: the view accepts it,
        // because deciding whether the record area is well formed would mean
        // decoding records.
        let mut batch = vec![0_u8; HEADER_LEN];
        set_i32(&mut batch, BATCH_LENGTH_AT, MIN_BATCH_LENGTH);
        batch[MAGIC_AT] = 2;
        set_i32(&mut batch, RECORD_COUNT_AT, 1);
        fix_crc(&mut batch);
        let h = validate(&batch, MAX).expect("minimal batch validates");
        assert_eq!(h.total_len(), HEADER_LEN);
        assert_eq!(h.record_count(), 1);
    }

    #[test]
    fn reports_truncation() {
        let batch = sample_batch();
        for cut in [0, 1, 11, 12, 16, 17, 40, HEADER_LEN - 1] {
            assert_eq!(
                BatchHeader::parse(&batch[..cut], MAX),
                Err(BatchError::Truncated {
                    needed: HEADER_LEN,
                    available: cut
                }),
                "cut {cut}"
            );
            assert_eq!(
                validate(&batch[..cut], MAX),
                Err(BatchError::Truncated {
                    needed: HEADER_LEN,
                    available: cut
                }),
                "cut {cut}"
            );
        }
        for cut in [HEADER_LEN, HEADER_LEN + 1, batch.len() - 1] {
            assert!(BatchHeader::parse(&batch[..cut], MAX).is_ok(), "cut {cut}");
            assert_eq!(
                validate(&batch[..cut], MAX),
                Err(BatchError::Truncated {
                    needed: batch.len(),
                    available: cut
                }),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn rejects_inconsistent_counts() {
        let batch = sample_batch();

        let mut bad = batch.clone();
        set_i32(&mut bad, RECORD_COUNT_AT, 4);
        fix_crc(&mut bad);
        let expected = Err(BatchError::RecordCountMismatch {
            record_count: 4,
            last_offset_delta: 4,
        });
        assert_eq!(BatchHeader::parse(&bad, MAX), expected);
        assert_eq!(validate(&bad, MAX), expected);

        // An empty batch is not acceptable either.
        let mut empty = batch.clone();
        set_i32(&mut empty, RECORD_COUNT_AT, 0);
        set_i32(&mut empty, LAST_OFFSET_DELTA_AT, 0);
        fix_crc(&mut empty);
        assert_eq!(
            validate(&empty, MAX),
            Err(BatchError::RecordCountMismatch {
                record_count: 0,
                last_offset_delta: 0
            })
        );

        // last_offset_delta + 1 would overflow an i32 here.
        let mut huge = batch.clone();
        set_i32(&mut huge, LAST_OFFSET_DELTA_AT, i32::MAX);
        set_i32(&mut huge, RECORD_COUNT_AT, i32::MIN);
        fix_crc(&mut huge);
        assert_eq!(
            validate(&huge, MAX),
            Err(BatchError::RecordCountMismatch {
                record_count: i32::MIN,
                last_offset_delta: i32::MAX
            })
        );

        let mut negative = batch;
        set_i32(&mut negative, LAST_OFFSET_DELTA_AT, -1);
        set_i32(&mut negative, RECORD_COUNT_AT, 0);
        fix_crc(&mut negative);
        assert_eq!(
            BatchHeader::parse(&negative, MAX),
            Err(BatchError::BadOffsetDelta(-1))
        );
        assert_eq!(
            validate(&negative, MAX),
            Err(BatchError::BadOffsetDelta(-1))
        );
    }

    #[test]
    fn iterates_over_concatenated_batches() {
        let first = encode(&records(3, 10), KCompression::None);
        let second = encode(&records(1, 500), KCompression::Gzip);
        let third = encode(&records(7, 50), KCompression::Lz4);
        let buf = [first.as_slice(), &second, &third].concat();

        let items: Vec<_> = batches(&buf, MAX)
            .collect::<Result<_, _>>()
            .expect("every batch validates");
        let starts: Vec<usize> = items.iter().map(|(_, start)| *start).collect();
        assert_eq!(starts, vec![0, first.len(), first.len() + second.len()]);
        let counts: Vec<i32> = items.iter().map(|(h, _)| h.record_count()).collect();
        assert_eq!(counts, vec![3, 1, 7]);
        assert_eq!(items[2].0.compression(), Compression::Lz4);

        let mut iter = batches(&buf, MAX);
        assert_eq!(iter.by_ref().count(), 3);
        assert_eq!(iter.position(), buf.len());
        assert!(iter.next().is_none());

        assert!(batches(&[], MAX).next().is_none());
    }

    #[test]
    fn iterates_over_batches_the_encoder_split() {
        // kafka-protocol starts a new batch when the producer id changes, so
        // one encode call can yield several concatenated batches.
        let mut recs = records(6, 10);
        for record in &mut recs[3..] {
            record.producer_id = PRODUCER_ID + 1;
        }
        let buf = encode(&recs, KCompression::Snappy);
        let items: Vec<_> = batches(&buf, MAX)
            .collect::<Result<_, _>>()
            .expect("every batch validates");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.producer_id, PRODUCER_ID);
        assert_eq!(items[1].0.producer_id, PRODUCER_ID + 1);
        assert_eq!(items[1].0.base_offset, BASE_OFFSET + 3);
    }

    #[test]
    fn torn_tail_is_reported_as_truncated() {
        let first = sample_batch();
        let second = encode(&records(2, 40), KCompression::None);
        let full = [first.as_slice(), &second].concat();

        for cut in 1..second.len() {
            let buf = &full[..first.len() + cut];
            let mut iter = batches(buf, MAX);
            let (h, start) = iter
                .next()
                .expect("first item")
                .expect("first batch is whole");
            assert_eq!((h.record_count(), start), (5, 0));
            let err = iter.next().expect("second item").expect_err("tail is torn");
            // Once the length field is visible the error names the size of
            // the whole batch; before that, the header size.
            let needed = if cut >= LENGTH_PREFIX {
                second.len()
            } else {
                HEADER_LEN
            };
            assert_eq!(
                err,
                BatchError::Truncated {
                    needed,
                    available: cut
                },
                "cut {cut}"
            );
            assert_eq!(iter.position(), first.len());
            assert!(iter.next().is_none(), "iteration stops after an error");
        }
    }

    #[test]
    fn garbage_yields_one_error_then_stops() {
        let garbage: Vec<u8> = (0..500_u32).map(|i| (i * 37 + 11) as u8).collect();
        let items: Vec<_> = batches(&garbage, MAX).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());

        // Garbage after a good batch: the good one is yielded, then one error.
        let buf = [sample_batch().as_slice(), &garbage].concat();
        let items: Vec<_> = batches(&buf, MAX).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());

        // Zeroed pre-allocated space at a file tail: magic 0 is corruption,
        // not a torn write.
        let zeros = vec![0_u8; 100];
        let items: Vec<_> = batches(&zeros, MAX).collect();
        assert_eq!(items, vec![Err(BatchError::BadMagic(0))]);
    }

    #[test]
    fn errors_display_readably() {
        let msg = BatchError::Truncated {
            needed: 100,
            available: 7,
        }
        .to_string();
        assert!(msg.contains("100") && msg.contains('7'), "{msg}");
        let msg = BatchError::CrcMismatch {
            stored: 0xdead_beef,
            computed: 1,
        }
        .to_string();
        assert!(
            msg.contains("0xdeadbeef") && msg.contains("0x00000001"),
            "{msg}"
        );
    }

    /// A valid batch to mutate, so that proptest reaches the deeper checks
    /// rather than stopping at the magic byte every time.
    fn mutated_batch() -> impl Strategy<Value = Vec<u8>> {
        let base = sample_batch();
        let len = base.len();
        (
            proptest::collection::vec((0..len + 8, any::<u8>()), 0..6),
            0..len + 8,
        )
            .prop_map(move |(edits, keep)| {
                let mut buf = base.clone();
                buf.resize(len + 8, 0x5A);
                for (at, byte) in edits {
                    buf[at] = byte;
                }
                buf.truncate(keep);
                buf
            })
    }

    fn exercise(bytes: &[u8], max: usize, offset: i64, epoch: i32) {
        if let Ok(h) = BatchHeader::parse(bytes, max) {
            assert!(bytes.len() >= HEADER_LEN);
            assert!(h.total_len() >= HEADER_LEN && h.total_len() <= max);
            assert_eq!(
                i64::from(h.record_count()),
                i64::from(h.last_offset_delta) + 1
            );
            let _ = (h.last_offset(), h.compression(), h.is_control());
        }
        if let Ok(h) = validate(bytes, max) {
            assert_eq!(h.total_len(), bytes.len());
        }
        let mut end = 0;
        let mut errors = 0;
        for item in batches(bytes, max) {
            match item {
                Ok((h, start)) => {
                    assert_eq!(start, end);
                    end = start + h.total_len();
                    assert!(end <= bytes.len());
                }
                Err(_) => errors += 1,
            }
        }
        assert!(errors <= 1);
        assert!(errors == 1 || end == bytes.len());

        let mut copy = bytes.to_vec();
        let patched = patch(&mut copy, offset, epoch);
        assert_eq!(patched.is_ok(), bytes.len() >= HEADER_LEN);
        if patched.is_err() {
            assert_eq!(copy, bytes);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            max in any::<usize>(),
            offset in any::<i64>(),
            epoch in any::<i32>(),
        ) {
            exercise(&bytes, max, offset, epoch);
        }

        #[test]
        fn mutated_batches_never_panic(
            bytes in mutated_batch(),
            max in prop_oneof![Just(MAX), Just(usize::MAX), 0..400_usize],
            offset in any::<i64>(),
            epoch in any::<i32>(),
        ) {
            exercise(&bytes, max, offset, epoch);
        }

        #[test]
        fn patch_keeps_valid_batches_valid(offset in any::<i64>(), epoch in any::<i32>()) {
            let mut batch = sample_batch();
            patch(&mut batch, offset, epoch).expect("patch succeeds");
            let h = validate(&batch, MAX).expect("patched batch validates");
            prop_assert_eq!(h.base_offset, offset);
            prop_assert_eq!(h.partition_leader_epoch, epoch);
        }
    }
}
