//! Idempotent-producer state (pure): per producer id, its epoch and the
//! sequence and offset ranges of its last five batches, so that a retried
//! batch is recognised and answered with its original offsets instead of
//! being appended twice, and a gap in sequences is refused.
//!
//! Kafka's rules (ProducerStateManager / ProducerAppendInfo): a batch from
//! an older epoch is fenced (INVALID_PRODUCER_EPOCH); a newer epoch must
//! start at sequence 0; within an epoch, a batch whose sequence range equals
//! one of the last five is a duplicate, and any other batch must start one
//! past the last sequence (wrapping at `i32::MAX`), else it is out of order.
//! A producer this log has no state for may start at any sequence: since
//! KIP-360 (Kafka 2.5) that is how Kafka treats a producer whose state
//! expired or whose batches retention or DeleteRecords removed, so that a
//! long-idle producer carries on instead of failing.
//!
//! State does not live forever. A producer's entry expires
//! `producer.id.expiration.ms` after its last batch's max timestamp (Kafka's
//! `lastTimestamp`; [`ProducerState::remove_expired`]), and goes when the
//! log start passes its last batch ([`ProducerState::evict_below`]), as
//! Kafka's ProducerStateManager does. Time is an argument: nothing here
//! reads a clock.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::types::Offset;

/// How many recent batches per producer are remembered for duplicates,
/// matching the producer's `max.in.flight.requests.per.connection` limit.
pub const BATCHES_PER_PRODUCER: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: Offset,
    pub last_offset: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Entry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// The max timestamp of the producer's last batch; negative when not
    /// known (a batch without timestamps, or a version 1 snapshot): the
    /// expiry clock then starts at the next expiry check.
    last_timestamp_ms: i64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not an idempotent batch, or the next in sequence: append it.
    Append,
    /// Already in the log: answer with these offsets, append nothing.
    Duplicate(BatchMeta),
    /// A batch from an epoch older than the producer's current one.
    Fenced { epoch: i16, current: i16 },
    /// A gap (or a restart not at 0).
    OutOfOrder { expected: i32, got: i32 },
}

/// Owned by one log (one shard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, Entry>,
    /// The entries as they were before updates not yet known written, so
    /// a failed write can take them back.
    undo: Vec<(i64, Option<Entry>)>,
}

/// The format version of producer-state snapshots. Version 2 adds each
/// producer's last timestamp; version 1 snapshots are still read.
const SNAPSHOT_VERSION: u16 = 2;

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0 && header.base_sequence >= 0
}

fn last_seq(header: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX like Kafka's DefaultRecordBatch.
    let span = i64::from(header.last_offset_delta);
    ((i64::from(header.base_sequence) + span) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerState {
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Decides what to do with `header` (whose offsets are not yet final).
    pub fn check(&self, header: &BatchHeader) -> Check {
        if !is_idempotent(header) {
            return Check::Append;
        }
        let got = header.base_sequence;
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // Kafka accepts any sequence from a producer it has no state
            // for (see the module documentation).
            return Check::Append;
        };
        if header.producer_epoch < entry.epoch {
            return Check::Fenced {
                epoch: header.producer_epoch,
                current: entry.epoch,
            };
        }
        if header.producer_epoch > entry.epoch {
            return if got == 0 {
                Check::Append
            } else {
                Check::OutOfOrder { expected: 0, got }
            };
        }
        let last = last_seq(header);
        if let Some(meta) = entry
            .batches
            .iter()
            .find(|m| m.first_seq == got && m.last_seq == last)
        {
            return Check::Duplicate(*meta);
        }
        let expected = entry.batches.back().map_or(0, |m| next_seq(m.last_seq));
        if got == expected {
            Check::Append
        } else {
            Check::OutOfOrder { expected, got }
        }
    }

    /// The committed state as a snapshot file's contents: a CRC-32C of the
    /// rest, a version, then per producer (by id) its epoch and batches.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        body.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let entry = &self.producers[id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
            body.push(entry.batches.len() as u8);
            for m in &entry.batches {
                body.extend_from_slice(&m.first_seq.to_be_bytes());
                body.extend_from_slice(&m.last_seq.to_be_bytes());
                body.extend_from_slice(&m.first_offset.0.to_be_bytes());
                body.extend_from_slice(&m.last_offset.0.to_be_bytes());
            }
        }
        let mut out = crc32c::crc32c(&body).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// A snapshot written by [`ProducerState::encode`]; `None` if it is
    /// torn, corrupt or of another version.
    pub fn decode(bytes: &[u8]) -> Option<ProducerState> {
        let (crc, body) = bytes.split_first_chunk::<4>()?;
        if crc32c::crc32c(body) != u32::from_be_bytes(*crc) {
            return None;
        }
        let mut r = Reader(body);
        let version = r.take::<2>().map(u16::from_be_bytes)?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return None;
        }
        let count = u32::from_be_bytes(r.take()?);
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(r.take()?);
            let epoch = i16::from_be_bytes(r.take()?);
            let last_timestamp_ms = if version >= 2 {
                i64::from_be_bytes(r.take()?)
            } else {
                -1
            };
            let [n] = r.take::<1>()?;
            let mut batches = VecDeque::with_capacity(usize::from(n));
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: i32::from_be_bytes(r.take()?),
                    last_seq: i32::from_be_bytes(r.take()?),
                    first_offset: Offset(i64::from_be_bytes(r.take()?)),
                    last_offset: Offset(i64::from_be_bytes(r.take()?)),
                });
            }
            producers.insert(
                id,
                Entry {
                    epoch,
                    batches,
                    last_timestamp_ms,
                },
            );
        }
        r.0.is_empty().then_some(ProducerState {
            producers,
            undo: Vec::new(),
        })
    }

    /// Records a batch at its final offsets. Until [`ProducerState::commit`]
    /// the update can be taken back with [`ProducerState::rollback`] (the
    /// write that was to store the batch failed).
    pub fn update(&mut self, header: &BatchHeader) {
        if !is_idempotent(header) {
            return;
        }
        if !self.undo.iter().any(|(pid, _)| *pid == header.producer_id) {
            let before = self.producers.get(&header.producer_id).cloned();
            self.undo.push((header.producer_id, before));
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch > entry.epoch || entry.batches.is_empty() {
            if header.producer_epoch != entry.epoch {
                entry.batches.clear();
            }
            entry.epoch = header.producer_epoch.max(entry.epoch);
        }
        if header.producer_epoch < entry.epoch {
            return;
        }
        entry.last_timestamp_ms = header.max_timestamp;
        entry.batches.push_back(BatchMeta {
            first_seq: header.base_sequence,
            last_seq: last_seq(header),
            first_offset: Offset(header.base_offset),
            last_offset: Offset(header.last_offset()),
        });
        while entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
    }

    /// The updates so far are in the log.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// Takes back the updates since the last commit.
    pub fn rollback(&mut self) {
        for (pid, before) in self.undo.drain(..).rev() {
            match before {
                Some(entry) => {
                    self.producers.insert(pid, entry);
                }
                None => {
                    self.producers.remove(&pid);
                }
            }
        }
    }

    /// Forgets producers whose last batch's timestamp is `expiration_ms` or
    /// more before `now_ms` (Kafka's `producer.id.expiration.ms`); returns
    /// how many. An entry whose timestamp is not known is stamped `now_ms`,
    /// so it expires `expiration_ms` after this check if it stays idle.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let before = self.producers.len();
        let expiration = i64::try_from(expiration_ms).unwrap_or(i64::MAX);
        self.producers.retain(|_, e| {
            if e.last_timestamp_ms < 0 {
                e.last_timestamp_ms = now_ms;
            }
            now_ms.saturating_sub(e.last_timestamp_ms) < expiration
        });
        before - self.producers.len()
    }

    /// Forgets producers whose last batch lies wholly below `log_start`
    /// (retention or DeleteRecords removed it); returns how many.
    pub fn evict_below(&mut self, log_start: Offset) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| e.batches.back().is_some_and(|m| m.last_offset >= log_start));
        before - self.producers.len()
    }

    /// Forgets batches at or after `end` (the log was truncated there).
    pub fn truncate_to(&mut self, end: Offset) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|m| m.last_offset < end);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    #[test]
    fn snapshots_round_trip_and_damaged_ones_are_refused() {
        let mut state = ProducerState::default();
        for (i, pid) in [3i64, 9, 3, 3, 3, 3, 3, 9].iter().enumerate() {
            let seq = if *pid == 3 { i as i32 } else { 0 };
            let h = header(*pid, 1, seq, 2, i as i64 * 2);
            if state.check(&h) == Check::Append {
                state.update(&h);
            }
        }
        state.commit();
        let bytes = state.encode();
        assert_eq!(ProducerState::decode(&bytes), Some(state.clone()));
        assert_eq!(
            ProducerState::decode(&ProducerState::default().encode()),
            Some(ProducerState::default())
        );
        for cut in 0..bytes.len() {
            assert_eq!(ProducerState::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for flip in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[flip] ^= 0x40;
            assert_eq!(ProducerState::decode(&bad), None, "bit flipped at {flip}");
        }
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs_follow_kafka() {
        let mut state = ProducerState::default();
        let first = header(7, 0, 0, 3, 0);
        assert_eq!(state.check(&first), Check::Append);
        state.update(&first);
        // A retry of the same batch is a duplicate with its offsets.
        match state.check(&header(7, 0, 0, 3, 99)) {
            Check::Duplicate(meta) => {
                assert_eq!(
                    (meta.first_offset, meta.last_offset),
                    (Offset(0), Offset(2))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            state.check(&header(7, 0, 5, 1, 3)),
            Check::OutOfOrder {
                expected: 3,
                got: 5
            }
        );
        let second = header(7, 0, 3, 2, 3);
        assert_eq!(state.check(&second), Check::Append);
        state.update(&second);
        // A new epoch starts at 0; an old one is fenced.
        assert_eq!(
            state.check(&header(7, 1, 4, 1, 5)),
            Check::OutOfOrder {
                expected: 0,
                got: 4
            }
        );
        let bumped = header(7, 1, 0, 1, 5);
        assert_eq!(state.check(&bumped), Check::Append);
        state.update(&bumped);
        assert_eq!(
            state.check(&header(7, 0, 5, 1, 6)),
            Check::Fenced {
                epoch: 0,
                current: 1
            }
        );
        // An unknown producer may start anywhere (Kafka since KIP-360);
        // non-idempotent batches pass.
        assert_eq!(state.check(&header(8, 0, 1, 1, 6)), Check::Append);
        assert_eq!(state.check(&header(-1, -1, -1, 1, 6)), Check::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut state = ProducerState::default();
        for i in 0..7 {
            state.update(&header(1, 0, i, 1, i64::from(i)));
        }
        assert!(matches!(
            state.check(&header(1, 0, 6, 1, 0)),
            Check::Duplicate(_)
        ));
        assert!(matches!(
            state.check(&header(1, 0, 1, 1, 0)),
            Check::OutOfOrder { .. }
        ));
        let mut wrap = ProducerState::default();
        wrap.update(&header(2, 0, i32::MAX - 1, 2, 0));
        assert_eq!(wrap.check(&header(2, 0, 0, 1, 2)), Check::Append);
    }

    #[test]
    fn a_rollback_takes_back_uncommitted_updates() {
        let mut state = ProducerState::default();
        state.update(&header(1, 0, 0, 1, 0));
        state.commit();
        state.update(&header(1, 0, 1, 1, 1));
        state.update(&header(2, 0, 0, 1, 2));
        state.rollback();
        assert_eq!(state.check(&header(1, 0, 1, 1, 1)), Check::Append);
        assert_eq!(state.producer_count(), 1);
    }

    #[test]
    fn truncation_forgets_batches_past_the_new_end() {
        let mut state = ProducerState::default();
        state.update(&header(1, 0, 0, 2, 0));
        state.update(&header(1, 0, 2, 2, 2));
        state.truncate_to(Offset(2));
        assert_eq!(state.check(&header(1, 0, 2, 2, 2)), Check::Append);
    }

    fn header_at(pid: i64, seq: i32, base: i64, max_timestamp: i64) -> BatchHeader {
        BatchHeader {
            max_timestamp,
            ..header(pid, 0, seq, 1, base)
        }
    }

    #[test]
    fn producers_expire_after_the_expiration_from_their_last_timestamp() {
        const DAY: u64 = 86_400_000;
        let t = 1_700_000_000_000i64;
        let mut state = ProducerState::default();
        state.update(&header_at(1, 0, 0, t));
        state.update(&header_at(2, 0, 1, t));
        // Producer 1 appends again later: its clock restarts.
        state.update(&header_at(1, 1, 2, t + 1_000));
        state.commit();
        // Table: (now, producers left after the check).
        for (now, left) in [
            (t, 2),
            (t + DAY as i64 - 1, 2),
            (t + DAY as i64, 1),
            (t + DAY as i64 + 999, 1),
            (t + DAY as i64 + 1_000, 0),
        ] {
            state.remove_expired(now, DAY);
            assert_eq!(state.producer_count(), left, "at now = t + {}", now - t);
        }
        // An expired producer carries on at any sequence, as in Kafka.
        assert_eq!(state.check(&header_at(1, 7, 3, t)), Check::Append);
    }

    #[test]
    fn an_unknown_timestamp_starts_the_expiry_clock_at_the_next_check() {
        let mut state = ProducerState::default();
        state.update(&header_at(1, 0, 0, -1));
        state.commit();
        assert_eq!(state.remove_expired(5_000, 1_000), 0);
        assert_eq!(state.remove_expired(5_999, 1_000), 0);
        assert_eq!(state.remove_expired(6_000, 1_000), 1);
    }

    #[test]
    fn producers_whose_last_batch_is_below_the_log_start_are_evicted() {
        let mut state = ProducerState::default();
        state.update(&header(1, 0, 0, 2, 0)); // offsets 0..=1
        state.update(&header(2, 0, 0, 2, 2)); // offsets 2..=3
        state.update(&header(1, 0, 2, 2, 4)); // offsets 4..=5
        state.commit();
        assert_eq!(state.evict_below(Offset(4)), 1);
        assert_eq!(state.producer_count(), 1);
        // Producer 1's last batch ends at 5: it stays until the start passes it.
        assert_eq!(state.evict_below(Offset(5)), 0);
        assert_eq!(state.evict_below(Offset(6)), 1);
    }

    #[test]
    fn version_1_snapshots_are_read_with_unknown_timestamps() {
        let mut state = ProducerState::default();
        state.update(&header_at(3, 0, 0, 42));
        state.commit();
        // A version 1 snapshot is version 2 without the timestamp field.
        let v2 = state.encode();
        let mut body = v2[4..].to_vec();
        body[..2].copy_from_slice(&1u16.to_be_bytes());
        // version (2) + count (4) + id (8) + epoch (2), then the timestamp.
        body.drain(16..24);
        let mut v1 = crc32c::crc32c(&body).to_be_bytes().to_vec();
        v1.extend_from_slice(&body);
        let mut read = ProducerState::decode(&v1).expect("a version 1 snapshot is read");
        assert_eq!(
            read.check(&header_at(3, 0, 0, 0)),
            state.check(&header_at(3, 0, 0, 0))
        );
        assert_eq!(read.remove_expired(10, 5), 0, "the clock starts now");
    }
}
