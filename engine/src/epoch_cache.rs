//! The leader-epoch cache (pure): which offset each leader epoch started at.
//!
//! A follower that becomes leader, or a replica that restarts, asks "where
//! did epoch N end?" (`OffsetForLeaderEpoch`) to find the point where its
//! log diverges from the leader's, and truncates there rather than blindly
//! to its high watermark (KIP-101). The cache is persisted in Kafka's
//! `leader-epoch-checkpoint` text format:
//!
//! ```text
//! 0            <- version
//! 2            <- number of entries
//! 0 0          <- epoch, start offset
//! 3 1200
//! ```

use crate::types::{Epoch, Offset};

pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// Owned by one log (one shard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(Epoch, Offset)>,
}

/// `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET` in Kafka's protocol.
pub const UNDEFINED: (Epoch, Offset) = (Epoch(-1), Offset(-1));

impl EpochCache {
    pub fn entries(&self) -> &[(Epoch, Offset)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<Epoch> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` begins at `start_offset`. Returns whether the
    /// cache changed (and so must be checkpointed). An epoch older than the
    /// latest is ignored: batches of an old leader never re-open its epoch.
    /// A newer epoch whose start is not after the current latest start
    /// replaces the entries it overlaps (the log was truncated under them).
    pub fn assign(&mut self, epoch: Epoch, start_offset: Offset) -> bool {
        if let Some(&(latest, _)) = self.entries.last() {
            if epoch <= latest {
                return false;
            }
        }
        self.entries.retain(|&(_, start)| start < start_offset);
        self.entries.push((epoch, start_offset));
        true
    }

    /// Kafka's `endOffsetFor`: the largest epoch `<= requested` this replica
    /// knows, and the offset where it ended (the start of the next epoch, or
    /// `log_end` if it is the latest). [`UNDEFINED`] if `requested` precedes
    /// every known epoch.
    pub fn end_offset_for(&self, requested: Epoch, log_end: Offset) -> (Epoch, Offset) {
        let idx = self.entries.partition_point(|&(e, _)| e <= requested);
        let Some(found) = idx.checked_sub(1) else {
            return UNDEFINED;
        };
        let epoch = self.entries[found].0;
        match self.entries.get(idx) {
            Some(&(_, next_start)) => (epoch, next_start),
            None => (epoch, log_end),
        }
    }

    /// The log was truncated to end at `log_end`: forget epochs that start
    /// at or after it.
    pub fn truncate_from_end(&mut self, log_end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < log_end);
        self.entries.len() != before
    }

    /// The log now starts at `log_start`: entries wholly before it go, and
    /// the epoch that covers it is moved to start there.
    pub fn truncate_from_start(&mut self, log_start: Offset) -> bool {
        let covering = self.entries.partition_point(|&(_, s)| s <= log_start);
        let Some(keep_from) = covering.checked_sub(1) else {
            return false;
        };
        if keep_from == 0 && self.entries[0].1 == log_start {
            return false;
        }
        self.entries.drain(..keep_from);
        self.entries[0].1 = log_start;
        true
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            out.push_str(&format!("{} {}\n", epoch.0, start.0));
        }
        out.into_bytes()
    }

    /// Parses a checkpoint; `None` if it is malformed (the caller rebuilds
    /// the cache from the batches' own epochs).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let epoch = Epoch(fields.next()?.parse().ok()?);
            let start = Offset(fields.next()?.parse().ok()?);
            if fields.next().is_some() || !cache.assign(epoch, start) {
                return None;
            }
            if cache.entries.len() > 1 && cache.entries[cache.entries.len() - 2].1 >= start {
                return None;
            }
        }
        Some(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, o) in entries {
            assert!(c.assign(Epoch(e), Offset(o)));
        }
        c
    }

    #[test]
    fn end_offset_for_follows_kafkas_rules() {
        let c = cache(&[(1, 0), (3, 100), (4, 250)]);
        let log_end = Offset(300);
        let cases = [
            (0, UNDEFINED),
            (1, (Epoch(1), Offset(100))),
            (2, (Epoch(1), Offset(100))),
            (3, (Epoch(3), Offset(250))),
            (4, (Epoch(4), Offset(300))),
            (9, (Epoch(4), Offset(300))),
        ];
        for (requested, want) in cases {
            assert_eq!(
                c.end_offset_for(Epoch(requested), log_end),
                want,
                "{requested}"
            );
        }
    }

    #[test]
    fn old_epochs_are_ignored_and_new_ones_replace_overlapped_entries() {
        let mut c = cache(&[(1, 0), (3, 100)]);
        assert!(!c.assign(Epoch(2), Offset(200)));
        assert!(!c.assign(Epoch(3), Offset(150)));
        assert!(c.assign(Epoch(5), Offset(100)));
        assert_eq!(
            c.entries(),
            &[(Epoch(1), Offset(0)), (Epoch(5), Offset(100))]
        );
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 100), (4, 250)]);
        assert!(c.truncate_from_end(Offset(250)));
        assert_eq!(c.latest_epoch(), Some(Epoch(3)));
        assert!(c.truncate_from_start(Offset(120)));
        assert_eq!(c.entries(), &[(Epoch(3), Offset(120))]);
        assert!(!c.truncate_from_start(Offset(120)));
    }

    #[test]
    fn checkpoint_round_trips_and_garbage_is_rejected() {
        let c = cache(&[(1, 0), (3, 100)]);
        let text = c.encode();
        assert_eq!(std::str::from_utf8(&text).unwrap(), "0\n2\n1 0\n3 100\n");
        assert_eq!(EpochCache::decode(&text), Some(c));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n1 0\n",
            "0\n1\nx y\n",
            "0\n2\n3 0\n1 5\n",
        ] {
            assert_eq!(EpochCache::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
