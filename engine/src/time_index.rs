//! A segment's time index (`.timeindex`), in Kafka's format: 12-byte entries
//! of (timestamp: i64 BE, offset relative to the segment's base: u32 BE).
//! An entry (t, o) says that `o` is the first offset of the segment whose
//! batch reached the maximum timestamp `t`; entries are added only when the
//! maximum grows, at most one per offset-index entry. Held in memory and
//! persisted like the offset index.

use crate::types::Offset;

pub const ENTRY_BYTES: usize = 12;

/// Owned by the segment it indexes (one shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    base: Offset,
    entries: Vec<(i64, u32)>,
    max_entries: usize,
}

impl TimeIndex {
    pub fn new(base: Offset, max_entries: usize) -> Self {
        TimeIndex {
            base,
            entries: Vec::new(),
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Adds (timestamp, offset) if it raises the maximum timestamp.
    pub fn maybe_append(&mut self, timestamp: i64, offset: Offset) {
        let Some(relative) = offset
            .0
            .checked_sub(self.base.0)
            .and_then(|r| u32::try_from(r).ok())
        else {
            debug_assert!(false, "offset {offset} outside the segment's index range");
            return;
        };
        if let Some(&(last_ts, last_rel)) = self.entries.last() {
            if timestamp <= last_ts || relative <= last_rel {
                return;
            }
        }
        if !self.is_full() {
            self.entries.push((timestamp, relative));
        }
    }

    /// The offset to start scanning from for the first batch whose maximum
    /// timestamp is at least `target`: the offset of the last entry whose
    /// timestamp is strictly below `target` (every batch before it is older
    /// than `target`), or the segment's base.
    pub fn lookup(&self, target: i64) -> Offset {
        let idx = self.entries.partition_point(|&(ts, _)| ts < target);
        match idx.checked_sub(1) {
            Some(i) => self.base.plus(i64::from(self.entries[i].1)),
            None => self.base,
        }
    }

    /// Drops entries for offsets at or after `offset`.
    pub fn truncate_to(&mut self, offset: Offset) {
        let base = self.base.0;
        let keep = self
            .entries
            .partition_point(|&(_, rel)| base + i64::from(rel) < offset.0);
        self.entries.truncate(keep);
    }

    pub fn last(&self) -> Option<(i64, Offset)> {
        self.entries
            .last()
            .map(|&(ts, rel)| (ts, self.base.plus(i64::from(rel))))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for &(ts, rel) in &self.entries {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&rel.to_be_bytes());
        }
        out
    }

    /// Reads a time index file; `None` if it is not a plausible index for a
    /// segment whose offsets end before `next_offset` (rebuild it instead).
    pub fn decode(
        base: Offset,
        max_entries: usize,
        bytes: &[u8],
        next_offset: Offset,
    ) -> Option<Self> {
        if bytes.len() % ENTRY_BYTES != 0 {
            return None;
        }
        let mut index = TimeIndex::new(base, max_entries);
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let ts = i64::from_be_bytes(ts);
            let rel = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if let Some(&(last_ts, last_rel)) = index.entries.last() {
                if ts <= last_ts || rel <= last_rel {
                    return None;
                }
            }
            if base.0 + i64::from(rel) >= next_offset.0 {
                return None;
            }
            index.entries.push((ts, rel));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_starts_at_the_last_entry_strictly_older_than_the_target() {
        let mut index = TimeIndex::new(Offset(10), 100);
        index.maybe_append(1000, Offset(10));
        index.maybe_append(2000, Offset(20));
        index.maybe_append(1500, Offset(30));
        index.maybe_append(3000, Offset(40));
        assert_eq!(index.len(), 3);
        let cases = [
            (0, 10),
            (1000, 10),
            (1001, 10),
            (2000, 10),
            (2001, 20),
            (9999, 40),
        ];
        for (target, want) in cases {
            assert_eq!(index.lookup(target), Offset(want), "{target}");
        }
    }

    #[test]
    fn round_trip_and_truncate() {
        let mut index = TimeIndex::new(Offset(0), 100);
        index.maybe_append(5, Offset(0));
        index.maybe_append(6, Offset(3));
        let decoded = TimeIndex::decode(Offset(0), 100, &index.encode(), Offset(4));
        assert_eq!(decoded.as_ref(), Some(&index));
        assert_eq!(
            TimeIndex::decode(Offset(0), 100, &index.encode(), Offset(3)),
            None
        );
        index.truncate_to(Offset(3));
        assert_eq!(index.last(), Some((5, Offset(0))));
    }
}
