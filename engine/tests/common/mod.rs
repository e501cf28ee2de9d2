//! Shared helpers for the engine's integration tests: real record batches
//! from kafka-protocol's encoder (an implementation we did not write), and a
//! way to run one test body on every I/O backend.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::RuntimeBuilder;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_engine::io::Fs;
use sluice_engine::sim::SimFs;

/// A v2 batch of `count` records with `value_len`-byte values, all stamped
/// `timestamp`. Producer fields unset, as a non-idempotent producer sends.
pub fn batch(count: usize, value_len: usize, timestamp: i64) -> Vec<u8> {
    batch_with(count, value_len, timestamp, Compression::None, b'v')
}

pub fn batch_with(
    count: usize,
    value_len: usize,
    timestamp: i64,
    compression: Compression,
    fill: u8,
) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol keeps records in one batch only while offset minus
            // sequence stays constant; this keeps the base sequence at -1 (none).
            sequence: i as i32 - 1,
            timestamp,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![fill; value_len])),
            headers: Default::default(),
        })
        .collect();
    encode(&records, compression)
}

/// Encodes `records` as v2 batches with kafka-protocol's encoder.
fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("kafka-protocol encodes a batch");
    buf.to_vec()
}

/// A batch from an idempotent producer: `count` records with sequences
/// `base_sequence..`.
pub fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, count: usize) -> Vec<u8> {
    idempotent_batch_at(producer_id, epoch, base_sequence, count, 0)
}

/// Like `idempotent_batch`, with every record at `timestamp`.
pub fn idempotent_batch_at(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    count: usize,
    timestamp: i64,
) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp,
            key: None,
            value: Some(Bytes::from(vec![b'i'; 20])),
            headers: Default::default(),
        })
        .collect();
    encode(&records, Compression::None)
}

/// The backends every storage test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, page-cache writes inline on the shard thread (the default).
    IoUring,
    /// io_uring for writes too.
    IoUringRingWrites,
    /// epoll and compio's thread pool.
    Poll,
    Sim,
}

pub const BACKENDS: [Backend; 4] = [
    Backend::IoUring,
    Backend::IoUringRingWrites,
    Backend::Poll,
    Backend::Sim,
];

/// Builds a compio runtime with the given driver. io_uring must be
/// available unless `SLUICE_TEST_ALLOW_NO_IO_URING=1` says this machine
/// cannot have it; a test never passes silently without its backend.
pub fn runtime(driver: DriverType) -> Option<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.driver_type(driver);
    let mut builder = RuntimeBuilder::new();
    builder
        .with_proactor(proactor)
        .sync_queue_size(sluice_engine::shard::REMOTE_WAKES_MAX);
    match builder.build() {
        Ok(rt) => Some(rt),
        Err(e) if std::env::var_os("SLUICE_TEST_ALLOW_NO_IO_URING").is_some() => {
            eprintln!("skipping the {driver:?} backend: {e}");
            None
        }
        Err(e) => panic!(
            "cannot start the {driver:?} driver: {e} (set SLUICE_TEST_ALLOW_NO_IO_URING=1 where io_uring is blocked)"
        ),
    }
}

/// Runs `body(fs, dir)` once per backend, each with a fresh directory.
pub fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Backend, Fs, PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in BACKENDS {
        let driver = match backend {
            Backend::IoUring | Backend::IoUringRingWrites => DriverType::IoUring,
            Backend::Poll | Backend::Sim => DriverType::Poll,
        };
        let Some(rt) = runtime(driver) else { continue };
        match backend {
            Backend::Sim => {
                let sim = SimFs::new();
                rt.block_on(body(
                    backend,
                    Fs::Sim(sim),
                    PathBuf::from("/sim/data/topic-0"),
                ));
            }
            _ => {
                let tmp = tempfile::tempdir().expect("temp dir");
                let dir = tmp.path().join("topic-0");
                let fs = match backend {
                    Backend::IoUringRingWrites => Fs::OsRingWrites,
                    _ => Fs::Os,
                };
                rt.block_on(body(backend, fs, dir));
            }
        }
    }
}

/// Splits concatenated batches into (base offset, bytes) pairs, validating
/// each one's CRC.
pub fn split_batches(bytes: &[u8]) -> Vec<(i64, Vec<u8>)> {
    sluice_engine::batch::batches(bytes, usize::MAX)
        .map(|item| {
            let (header, at) = item.expect("stored batches are valid");
            (
                header.base_offset,
                bytes[at..at + header.total_len()].to_vec(),
            )
        })
        .collect()
}

/// The bytes of a batch with its base offset and leader epoch zeroed, to
/// compare what was sent with what is stored.
pub fn without_offsets(batch: &[u8]) -> Vec<u8> {
    let mut copy = batch.to_vec();
    sluice_engine::batch::patch(&mut copy, 0, 0).expect("a whole batch");
    copy
}
