//! Measures `batch::validate` against a bare CRC-32C pass over the same bytes.
//!
//! Validation is a header parse plus one CRC over nearly the whole batch, so
//! the CRC is the floor it cannot beat. The gap between the two lines is the
//! cost of the view itself and should be negligible for large batches.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_engine::batch::{self, HEADER_LEN};

/// Larger than any batch built here, so the length limit never rejects one.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Builds a valid, uncompressed-looking v2 batch of `total_len` bytes by
/// writing the header fields directly and computing the CRC. The record area
/// is filler: validation never looks inside it beyond the checksum.
fn build_batch(total_len: usize, record_count: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(total_len);
    let batch_length = i32::try_from(total_len - 12).expect("bench batch fits in i32");
    buf.extend_from_slice(&0_i64.to_be_bytes()); // base offset
    buf.extend_from_slice(&batch_length.to_be_bytes());
    buf.extend_from_slice(&0_i32.to_be_bytes()); // partition leader epoch
    buf.push(2); // magic
    buf.extend_from_slice(&0_u32.to_be_bytes()); // crc, filled in below
    buf.extend_from_slice(&0_i16.to_be_bytes()); // attributes
    buf.extend_from_slice(&(record_count - 1).to_be_bytes()); // last offset delta
    buf.extend_from_slice(&1_700_000_000_000_i64.to_be_bytes()); // base timestamp
    buf.extend_from_slice(&1_700_000_000_999_i64.to_be_bytes()); // max timestamp
    buf.extend_from_slice(&(-1_i64).to_be_bytes()); // producer id
    buf.extend_from_slice(&(-1_i16).to_be_bytes()); // producer epoch
    buf.extend_from_slice(&(-1_i32).to_be_bytes()); // base sequence
    buf.extend_from_slice(&record_count.to_be_bytes());
    assert_eq!(buf.len(), HEADER_LEN);
    buf.extend((0..total_len - HEADER_LEN).map(|i| (i * 31 + 7) as u8));
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    batch::validate(&buf, MAX_BATCH_BYTES).expect("bench batch is valid");
    buf
}

fn bench_validate(c: &mut Criterion) {
    for (name, size, records) in [("1KiB", 1024, 10), ("64KiB", 64 * 1024, 500)] {
        let buf = build_batch(size, records);
        let mut group = c.benchmark_group(format!("batch/{name}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("validate", |b| {
            b.iter(|| batch::validate(black_box(&buf), MAX_BATCH_BYTES))
        });
        group.bench_function("crc32c_baseline", |b| {
            b.iter(|| crc32c::crc32c(black_box(&buf[21..])))
        });
        group.finish();
    }
}

criterion_group!(benches, bench_validate);
criterion_main!(benches);
