//! The newest batches of a log, kept in memory as they were written.
//!
//! A follower in step with its leader fetches, a moment after each append,
//! the batches that append wrote. Reading them back costs a read through
//! the ring into a new buffer, a copy out of the page cache, for every
//! follower. The bytes were in memory a moment before: the request's own
//! buffer and the leader's patched headers, written with a vectored write
//! without being copied. [`Tail`] keeps those same buffers for the newest
//! batches, so that a read at the log end is answered from them: nothing is
//! read or copied, and the response's write takes the bytes from where the
//! request's read put them.
//!
//! Bounds: each tail holds at most [`TAIL_BYTES`] and [`TAIL_BATCHES`], and
//! all tails of the process together at most [`ALL_TAILS_BYTES`]; a tail
//! that would pass the last gives its batches up. An append keeps its
//! batches only when its caller says they are most of the buffer they are
//! slices of (`AppendMode::Leader { keep: true, .. }`), so what a tail keeps
//! alive is at most twice what it counts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::types::Offset;

/// Most bytes one log's tail holds.
pub const TAIL_BYTES: usize = 1 << 20;
/// Most batches one log's tail holds.
pub const TAIL_BATCHES: usize = 64;
/// Most bytes all tails of the process hold together.
pub const ALL_TAILS_BYTES: usize = 64 << 20;

/// Bytes held by every tail of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by all tails now (for tests and metrics).
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// One batch as written: its offsets and the buffers that hold its bytes,
/// in order.
#[derive(Debug)]
struct Kept {
    /// The base offset of the segment it was written to.
    segment: i64,
    base: i64,
    last: i64,
    len: usize,
    chunks: Vec<Bytes>,
}

/// What a read answered from the tail found: the buffers of whole batches
/// (empty when none fitted), their total length, and the offset after them.
#[derive(Debug)]
pub struct TailRead {
    pub chunks: Vec<Bytes>,
    pub len: usize,
    pub next: Offset,
}

/// The newest batches of one log, contiguous and ending at its log end.
#[derive(Debug, Default)]
pub struct Tail {
    batches: VecDeque<Kept>,
    bytes: usize,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Tail {
    /// Forgets every batch: the log changed other than by a kept append.
    pub fn clear(&mut self) {
        HELD.fetch_sub(self.bytes, Ordering::Relaxed);
        self.batches.clear();
        self.bytes = 0;
    }

    /// Adds batches just written at the log end, to the segment whose base
    /// offset is `segment`: `batches` gives each one's base offset, last
    /// offset and length, in order, and `bufs` the buffers written, whose
    /// bytes are the batches' bytes end to end. `log_end_before`: the log
    /// end before the write. Keeps them only when they continue the tail;
    /// otherwise the tail starts again with them.
    pub fn push(
        &mut self,
        segment: Offset,
        log_end_before: Offset,
        batches: impl IntoIterator<Item = (i64, i64, usize)>,
        bufs: &[Bytes],
    ) {
        let continues = self
            .batches
            .back()
            .is_none_or(|b| b.last + 1 == log_end_before.0);
        if !continues {
            self.clear();
        }
        let mut bufs = bufs.iter().cloned();
        let mut current: Option<Bytes> = None;
        for (base, last, len) in batches {
            // The batch's bytes, as slices of the buffers written.
            let mut chunks = Vec::with_capacity(2);
            let mut need = len;
            while need > 0 {
                let buf = match current.take() {
                    Some(b) if !b.is_empty() => b,
                    _ => match bufs.next() {
                        Some(b) => b,
                        None => {
                            // The buffers do not hold the batches: keep
                            // nothing rather than something wrong.
                            self.clear();
                            return;
                        }
                    },
                };
                if buf.len() <= need {
                    need -= buf.len();
                    chunks.push(buf);
                } else {
                    chunks.push(buf.slice(..need));
                    current = Some(buf.slice(need..));
                    need = 0;
                }
            }
            if len > TAIL_BYTES {
                self.clear();
                continue;
            }
            while self.bytes + len > TAIL_BYTES || self.batches.len() >= TAIL_BATCHES {
                self.pop_front();
            }
            if HELD.fetch_add(len, Ordering::Relaxed) + len > ALL_TAILS_BYTES {
                HELD.fetch_sub(len, Ordering::Relaxed);
                self.clear();
                continue;
            }
            self.bytes += len;
            self.batches.push_back(Kept {
                segment: segment.0,
                base,
                last,
                len,
                chunks,
            });
        }
    }

    fn pop_front(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.bytes -= b.len;
            HELD.fetch_sub(b.len, Ordering::Relaxed);
        }
    }

    /// Whole batches from the one that holds `from`, as a read of the log
    /// would return them: from one segment only, stopping before a batch
    /// that reaches `end`, and within `max_bytes` unless `min_one_batch`
    /// lets the first batch through whole. `None` when the tail does not
    /// hold `from`.
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        end: Offset,
        min_one_batch: bool,
    ) -> Option<TailRead> {
        let first = self.batches.front()?;
        if from.0 < first.base || from.0 > self.batches.back()?.last {
            return None;
        }
        // The batches are contiguous: the first that holds `from` is the
        // first whose last offset reaches it.
        let start = self.batches.partition_point(|b| b.last < from.0);
        let mut out = TailRead {
            chunks: Vec::new(),
            len: 0,
            next: from,
        };
        let segment = self.batches[start].segment;
        for b in self.batches.range(start..) {
            if b.last >= end.0 || b.segment != segment {
                break;
            }
            if out.len + b.len > max_bytes && !(out.len == 0 && min_one_batch) {
                break;
            }
            out.chunks.extend(b.chunks.iter().cloned());
            out.len += b.len;
            out.next = Offset(b.last + 1);
            if out.len >= max_bytes {
                break;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of `lens` bytes, `records` offsets each, from `base`, as
    /// (base, last, len), and one buffer holding them all with each byte
    /// its batch's index.
    fn batches(base: i64, records: i64, lens: &[usize]) -> (Vec<(i64, i64, usize)>, Vec<Bytes>) {
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let b = base + i as i64 * records;
            out.push((b, b + records - 1, len));
            bytes.extend(std::iter::repeat_n(i as u8, len));
        }
        (out, vec![Bytes::from(bytes)])
    }

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn reads_follow_the_rules_of_a_log_read() {
        let mut tail = Tail::default();
        let (b, bufs) = batches(100, 10, &[1000, 2000, 3000]);
        tail.push(Offset(0), Offset(100), b.iter().copied(), &bufs);
        let far = Offset(i64::MAX);
        // (from, max_bytes, end, min_one_batch) -> (len, next), None: not held
        type Case = ((i64, usize, i64, bool), Option<(usize, i64)>);
        let cases: &[Case] = &[
            ((100, 10_000, i64::MAX, false), Some((6000, 130))),
            ((105, 10_000, i64::MAX, false), Some((6000, 130))), // inside the first batch
            ((110, 10_000, i64::MAX, false), Some((5000, 130))),
            ((100, 3000, i64::MAX, false), Some((3000, 120))),
            ((100, 2999, i64::MAX, false), Some((1000, 110))),
            ((100, 500, i64::MAX, false), Some((0, 100))), // nothing fits
            ((100, 500, i64::MAX, true), Some((1000, 110))), // the first goes whole
            ((100, 10_000, 120, false), Some((3000, 120))), // end: a high watermark
            ((100, 10_000, 119, false), Some((1000, 110))),
            ((99, 10_000, i64::MAX, false), None), // before the tail
            ((130, 10_000, i64::MAX, false), None), // the log end
        ];
        for &((from, max, end, one), want) in cases {
            let got = tail
                .read(Offset(from), max, Offset(end), one)
                .map(|r| (r.len, r.next.0));
            assert_eq!(got, want, "from {from} max {max} end {end} one {one}");
        }
        let read = tail.read(Offset(110), 10_000, far, false).unwrap();
        assert_eq!(concat(&read.chunks), concat(&bufs)[1000..]);
    }

    #[test]
    fn batches_split_over_buffers_come_back_byte_for_byte() {
        // A leader's write: each batch as a patched header, then the rest
        // of the request's buffer.
        let request: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        let request = Bytes::from(request);
        let bufs = vec![
            Bytes::from(vec![0xAA; 61]),
            request.slice(61..300),
            Bytes::from(vec![0xBB; 61]),
            request.slice(361..700),
        ];
        let mut tail = Tail::default();
        tail.push(Offset(0), Offset(0), [(0, 4, 300), (5, 9, 400)], &bufs);
        let read = tail.read(Offset(5), 1 << 20, Offset(10), false).unwrap();
        assert_eq!(concat(&read.chunks), concat(&bufs[2..]));
        assert_eq!(read.chunks.len(), 2, "slices, not copies");
        let all = tail.read(Offset(0), 1 << 20, Offset(10), false).unwrap();
        assert_eq!(concat(&all.chunks), concat(&bufs));
    }

    #[test]
    fn a_gap_starts_the_tail_again_and_old_batches_make_room() {
        let mut tail = Tail::default();
        let (b, bufs) = batches(0, 1, &[100, 100]);
        tail.push(Offset(0), Offset(0), b.iter().copied(), &bufs);
        // Not at the tail's end (an append that was not kept came between).
        let (b, bufs) = batches(5, 1, &[100]);
        tail.push(Offset(0), Offset(5), b.iter().copied(), &bufs);
        assert!(tail.read(Offset(0), 1000, Offset(6), false).is_none());
        assert_eq!(
            tail.read(Offset(5), 1000, Offset(6), false).unwrap().len,
            100
        );
        // Past the per-log bounds the oldest go.
        let (b, bufs) = batches(6, 1, &vec![1000; TAIL_BATCHES + 10]);
        tail.push(Offset(0), Offset(6), b.iter().copied(), &bufs);
        assert_eq!(tail.batches.len(), TAIL_BATCHES);
        assert!(tail.bytes <= TAIL_BYTES);
        assert!(tail
            .read(Offset(6), 1000, Offset(i64::MAX), false)
            .is_none());
        let last = 6 + TAIL_BATCHES as i64 + 9;
        assert_eq!(
            tail.read(Offset(last), 1000, Offset(i64::MAX), false)
                .unwrap()
                .len,
            1000
        );
        // A batch larger than a tail's bound keeps nothing.
        let (b, bufs) = batches(last + 1, 1, &[TAIL_BYTES + 1]);
        tail.push(Offset(0), Offset(last + 1), b.iter().copied(), &bufs);
        assert!(tail.batches.is_empty() && tail.bytes == 0);
    }

    #[test]
    fn a_read_stays_in_one_segment_as_a_log_read_does() {
        let mut tail = Tail::default();
        let (b, bufs) = batches(0, 10, &[100, 100]);
        tail.push(Offset(0), Offset(0), b.iter().copied(), &bufs);
        // The log rolled: the next batches are a new segment's.
        let (b, bufs) = batches(20, 10, &[100, 100]);
        tail.push(Offset(20), Offset(20), b.iter().copied(), &bufs);
        let far = Offset(i64::MAX);
        let read = tail.read(Offset(0), 10_000, far, false).unwrap();
        assert_eq!((read.len, read.next), (200, Offset(20)));
        let read = tail.read(Offset(20), 10_000, far, false).unwrap();
        assert_eq!((read.len, read.next), (200, Offset(40)));
    }

    #[test]
    fn buffers_shorter_than_the_batches_keep_nothing() {
        let mut tail = Tail::default();
        tail.push(
            Offset(0),
            Offset(0),
            [(0, 0, 100)],
            &[Bytes::from(vec![1; 50])],
        );
        assert!(tail.read(Offset(0), 1000, Offset(1), false).is_none());
        assert_eq!(tail.bytes, 0);
    }
}
