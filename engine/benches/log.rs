//! Index lookup and the append path, each next to a baseline measured in
//! the same run.
//!
//! - `offset_index/lookup` over a full 1 GiB segment's worth of entries,
//!   against a plain `partition_point` over a sorted `Vec<u32>`: the index
//!   should cost no more than the binary search it is.
//! - `append/log` appends one 64 KiB batch through `Log::append` on a real
//!   file (validation, offset patching, index upkeep, the write), against
//!   `pwrite` of the same bytes to another file in the same directory.

use std::hint::black_box;
use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_engine::io::Fs;
use sluice_engine::log::{AppendMode, Log};
use sluice_engine::offset_index::OffsetIndex;
use sluice_engine::{Epoch, FilePosition, LogConfig, Offset};

const ENTRIES: u32 = 262_144;

fn index_lookup(c: &mut Criterion) {
    let mut index = OffsetIndex::new(Offset(0), ENTRIES as usize);
    let plain: Vec<u32> = (0..ENTRIES).map(|i| i * 16).collect();
    for i in 0..ENTRIES {
        index.append(Offset(i64::from(i) * 16), FilePosition(u64::from(i) * 4096));
    }
    let targets: Vec<i64> = (0..1024u64)
        .map(|i| ((i * 2_654_435_761) % (u64::from(ENTRIES) * 16)) as i64)
        .collect();
    let mut group = c.benchmark_group("offset_index");
    group.throughput(Throughput::Elements(targets.len() as u64));
    group.bench_function("lookup", |b| {
        b.iter(|| {
            for &t in &targets {
                black_box(index.lookup(Offset(black_box(t))));
            }
        })
    });
    group.bench_function("baseline_partition_point", |b| {
        b.iter(|| {
            for &t in &targets {
                black_box(plain.partition_point(|&o| i64::from(o) <= black_box(t)));
            }
        })
    });
    group.finish();
}

fn batch_64k() -> Vec<u8> {
    // One record with a 64 KiB value; the header is written by hand as in
    // benches/batch.rs so the bench needs no encoder.
    let total_len = 65_536usize;
    let mut buf = Vec::with_capacity(total_len);
    buf.extend_from_slice(&0_i64.to_be_bytes());
    buf.extend_from_slice(&((total_len - 12) as i32).to_be_bytes());
    buf.extend_from_slice(&0_i32.to_be_bytes());
    buf.push(2);
    buf.extend_from_slice(&0_u32.to_be_bytes());
    buf.extend_from_slice(&0_i16.to_be_bytes());
    buf.extend_from_slice(&0_i32.to_be_bytes());
    buf.extend_from_slice(&1_700_000_000_000_i64.to_be_bytes());
    buf.extend_from_slice(&1_700_000_000_000_i64.to_be_bytes());
    buf.extend_from_slice(&(-1_i64).to_be_bytes());
    buf.extend_from_slice(&(-1_i16).to_be_bytes());
    buf.extend_from_slice(&(-1_i32).to_be_bytes());
    buf.extend_from_slice(&1_i32.to_be_bytes());
    buf.resize(total_len, 7);
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf
}

fn append_path(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = sluice_engine::shard::client_runtime().expect("runtime");
    let config = LogConfig {
        segment_bytes: 256 << 20,
        retention_ms: None,
        ..LogConfig::default()
    };
    let mut log = rt
        .block_on(Log::open(Fs::Os, tmp.path().join("bench-0"), config, 0))
        .expect("open")
        .0;
    let template = batch_64k();
    let raw = std::fs::File::create(tmp.path().join("raw.dat")).expect("raw file");
    let mut raw_pos = 0u64;
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(template.len() as u64));
    group.bench_function("baseline_pwrite", |b| {
        b.iter_batched(
            || template.clone(),
            |records| {
                raw.write_all_at(&records, raw_pos).expect("pwrite");
                raw_pos += records.len() as u64;
                records
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("log", |b| {
        b.iter_batched(
            || template.clone(),
            |records| {
                rt.block_on(log.append(
                    records,
                    AppendMode::Leader {
                        epoch: Epoch(0),
                        keep: true,
                    },
                    0,
                ))
                .expect("append")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, index_lookup, append_path);
criterion_main!(benches);
