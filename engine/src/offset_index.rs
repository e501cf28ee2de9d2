//! A segment's sparse offset index (`.index`), in Kafka's format: 8-byte
//! entries of (offset relative to the segment's base: u32 BE, file position:
//! u32 BE), one roughly every `index.interval.bytes` of log.
//!
//! The entries live in memory (8 bytes per ~4 KiB of log, so 2 MiB for a
//! full 1 GiB segment) and are written to the file only when the segment is
//! rolled, a recovery point is checkpointed, or the log is closed. Nothing
//! is mapped or preallocated, so an idle partition costs only its entries.
//! Recovery rebuilds whatever part of the index the crash could have lost.

use crate::types::{FilePosition, Offset};

pub const ENTRY_BYTES: usize = 8;

/// Owned by the segment it indexes (one shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    base: Offset,
    /// (relative offset, position), both strictly increasing.
    entries: Vec<(u32, u32)>,
    max_entries: usize,
}

/// Why an index file was not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    Size(usize),
    NotIncreasing { entry: usize },
    PastSegmentEnd { entry: usize },
}

impl OffsetIndex {
    pub fn new(base: Offset, max_entries: usize) -> Self {
        OffsetIndex {
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

    /// Adds an entry for the batch that starts at `position` and contains
    /// `offset`. Entries that would not increase both fields are ignored, so
    /// callers need not track what was indexed last.
    pub fn append(&mut self, offset: Offset, position: FilePosition) {
        let (Some(relative), Ok(position)) = (self.relative(offset), u32::try_from(position.0))
        else {
            debug_assert!(false, "offset {offset} or position out of index range");
            return;
        };
        if let Some(&(last_rel, last_pos)) = self.entries.last() {
            if relative <= last_rel || position <= last_pos {
                return;
            }
        }
        if !self.is_full() {
            self.entries.push((relative, position));
        }
    }

    fn relative(&self, offset: Offset) -> Option<u32> {
        u32::try_from(offset.0.checked_sub(self.base.0)?).ok()
    }

    /// The position of the last indexed batch at or before `target`: a read
    /// for `target` scans forward from here. Position 0 if none.
    pub fn lookup(&self, target: Offset) -> FilePosition {
        let relative = match target.0.checked_sub(self.base.0) {
            Some(r) if r >= 0 => u32::try_from(r).unwrap_or(u32::MAX),
            _ => return FilePosition(0),
        };
        let idx = self.entries.partition_point(|&(rel, _)| rel <= relative);
        match idx.checked_sub(1) {
            Some(i) => FilePosition(u64::from(self.entries[i].1)),
            None => FilePosition(0),
        }
    }

    /// The last entry whose position lies in `(after, up_to]` and whose
    /// offset is at most `max_offset`: a batch boundary a read may jump to
    /// without reading the headers before it (every batch before it ends
    /// below its offset).
    pub fn last_within(
        &self,
        after: FilePosition,
        up_to: FilePosition,
        max_offset: Offset,
    ) -> Option<(Offset, FilePosition)> {
        let by_pos = self
            .entries
            .partition_point(|&(_, pos)| u64::from(pos) <= up_to.0);
        let by_offset = match max_offset.0.checked_sub(self.base.0) {
            Some(r) if r >= 0 => {
                let r = u32::try_from(r).unwrap_or(u32::MAX);
                self.entries.partition_point(|&(rel, _)| rel <= r)
            }
            _ => 0,
        };
        let &(rel, pos) = self.entries.get(by_pos.min(by_offset).checked_sub(1)?)?;
        (u64::from(pos) > after.0)
            .then(|| (self.base.plus(i64::from(rel)), FilePosition(u64::from(pos))))
    }

    /// Drops every entry at or after `position` (the log was cut there).
    pub fn truncate_to_position(&mut self, position: FilePosition) {
        let keep = self
            .entries
            .partition_point(|&(_, pos)| u64::from(pos) < position.0);
        self.entries.truncate(keep);
    }

    /// The last entry, as an absolute offset and position.
    pub fn last(&self) -> Option<(Offset, FilePosition)> {
        self.entries
            .last()
            .map(|&(rel, pos)| (self.base.plus(i64::from(rel)), FilePosition(u64::from(pos))))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for &(rel, pos) in &self.entries {
            out.extend_from_slice(&rel.to_be_bytes());
            out.extend_from_slice(&pos.to_be_bytes());
        }
        out
    }

    /// Reads an index file, checking that it could describe a segment of
    /// `segment_len` bytes. Any doubt rejects it: the caller rebuilds the
    /// index from the log instead.
    pub fn decode(
        base: Offset,
        max_entries: usize,
        bytes: &[u8],
        segment_len: u64,
    ) -> Result<Self, IndexError> {
        if bytes.len() % ENTRY_BYTES != 0 {
            return Err(IndexError::Size(bytes.len()));
        }
        let mut index = OffsetIndex::new(base, max_entries);
        for (i, chunk) in bytes.chunks_exact(ENTRY_BYTES).enumerate() {
            let rel = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let pos = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if let Some(&(last_rel, last_pos)) = index.entries.last() {
                if rel <= last_rel || pos <= last_pos {
                    return Err(IndexError::NotIncreasing { entry: i });
                }
            }
            if u64::from(pos) >= segment_len {
                return Err(IndexError::PastSegmentEnd { entry: i });
            }
            index.entries.push((rel, pos));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_last_entry_at_or_before_the_target() {
        let mut index = OffsetIndex::new(Offset(100), 10);
        index.append(Offset(100), FilePosition(0));
        index.append(Offset(150), FilePosition(4096));
        index.append(Offset(200), FilePosition(8192));
        let cases = [
            (50, 0),
            (100, 0),
            (149, 0),
            (150, 4096),
            (199, 4096),
            (200, 8192),
            (i64::MAX, 8192),
        ];
        for (target, want) in cases {
            assert_eq!(index.lookup(Offset(target)), FilePosition(want), "{target}");
        }
    }

    #[test]
    fn last_within_finds_the_farthest_boundary_in_range_and_below_the_offset() {
        let mut index = OffsetIndex::new(Offset(100), 10);
        index.append(Offset(100), FilePosition(0));
        index.append(Offset(150), FilePosition(4096));
        index.append(Offset(200), FilePosition(8192));
        let (p, o) = (FilePosition, Offset);
        assert_eq!(
            index.last_within(p(0), p(9000), o(1000)),
            Some((o(200), p(8192)))
        );
        assert_eq!(
            index.last_within(p(0), p(8191), o(1000)),
            Some((o(150), p(4096)))
        );
        assert_eq!(
            index.last_within(p(0), p(9000), o(199)),
            Some((o(150), p(4096)))
        );
        // Nothing strictly after `after`.
        assert_eq!(index.last_within(p(8192), p(9000), o(1000)), None);
        assert_eq!(index.last_within(p(0), p(4095), o(1000)), None);
        assert_eq!(index.last_within(p(0), p(9000), o(99)), None);
    }

    #[test]
    fn entries_that_do_not_increase_are_ignored_and_a_full_index_stops_growing() {
        let mut index = OffsetIndex::new(Offset(0), 2);
        index.append(Offset(10), FilePosition(100));
        index.append(Offset(10), FilePosition(200));
        index.append(Offset(5), FilePosition(300));
        assert_eq!(index.len(), 1);
        index.append(Offset(20), FilePosition(400));
        assert!(index.is_full());
        index.append(Offset(30), FilePosition(500));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn encode_then_decode_round_trips_and_bad_files_are_rejected() {
        let mut index = OffsetIndex::new(Offset(7), 100);
        index.append(Offset(7), FilePosition(0));
        index.append(Offset(9), FilePosition(70));
        let bytes = index.encode();
        assert_eq!(
            OffsetIndex::decode(Offset(7), 100, &bytes, 1000).as_ref(),
            Ok(&index)
        );
        assert_eq!(
            OffsetIndex::decode(Offset(7), 100, &bytes[..5], 1000),
            Err(IndexError::Size(5))
        );
        assert_eq!(
            OffsetIndex::decode(Offset(7), 100, &bytes, 70),
            Err(IndexError::PastSegmentEnd { entry: 1 })
        );
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert_eq!(
            OffsetIndex::decode(Offset(7), 100, &swapped, 1000),
            Err(IndexError::NotIncreasing { entry: 1 })
        );
    }

    #[test]
    fn truncation_drops_entries_at_and_after_the_cut() {
        let mut index = OffsetIndex::new(Offset(0), 10);
        index.append(Offset(0), FilePosition(0));
        index.append(Offset(10), FilePosition(100));
        index.append(Offset(20), FilePosition(200));
        index.truncate_to_position(FilePosition(100));
        assert_eq!(index.last(), Some((Offset(0), FilePosition(0))));
    }
}
