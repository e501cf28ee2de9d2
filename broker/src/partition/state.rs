//! One partition's replication state on its leader: the replicas, the
//! in-sync replicas, each replica's log end offset, and the high watermark
//! they imply. Pure: no I/O, no clock; events in, decisions out.
//!
//! The high watermark is the smallest log end offset among the in-sync
//! replicas (Kafka's `maybeIncrementHighWatermark`): everything below it is
//! on every ISR member, so it is committed. It never moves back on a
//! leader, and it never passes the leader's own log end offset.
//!
//! On a single node the ISR is the leader alone, so the high watermark
//! follows the log end offset append by append. Followers report their log
//! end offsets through [`PartitionState::on_follower_fetch`].
//!
//! On a follower the same state holds the leader's word instead: its high
//! watermark is the leader's (from each fetch response), capped by what
//! the follower itself has, and it never computes one from the ISR.

use std::collections::BTreeMap;

use sluice_engine::Offset;

/// A broker id, as the metadata image names brokers.
pub type BrokerId = i32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    local: BrokerId,
    leader_epoch: i32,
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
    /// Each replica's log end offset as last known (the leader's own is
    /// exact; a follower's comes from its latest fetch).
    log_end: BTreeMap<BrokerId, Offset>,
    high_watermark: Offset,
    /// Whether `local` leads; a follower's high watermark is the leader's.
    leading: bool,
}

impl PartitionState {
    /// The state of a partition this broker (`local`) leads, whose log ends
    /// at `log_end`. The high watermark starts at the log end when this
    /// broker is the only in-sync replica (everything it has is on every
    /// ISR member), and at `high_watermark` otherwise, capped by the log end.
    pub fn leader(
        local: BrokerId,
        leader_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        log_end: Offset,
        high_watermark: Offset,
    ) -> PartitionState {
        let alone = isr.iter().all(|r| *r == local);
        let mut state = PartitionState {
            local,
            leader_epoch,
            replicas,
            isr,
            log_end: BTreeMap::from([(local, log_end)]),
            high_watermark: if alone {
                log_end
            } else {
                high_watermark.min(log_end)
            },
            leading: true,
        };
        state.advance();
        state
    }

    /// The state of a partition this broker (`local`) follows, whose log
    /// ends at `log_end`, with the high watermark it last knew.
    pub fn follower(
        local: BrokerId,
        leader_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        log_end: Offset,
        high_watermark: Offset,
    ) -> PartitionState {
        PartitionState {
            local,
            leader_epoch,
            replicas,
            isr,
            log_end: BTreeMap::from([(local, log_end)]),
            high_watermark: high_watermark.min(log_end),
            leading: false,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading
    }

    /// On a follower: the leader said its high watermark is `leader_hw`.
    /// The follower's is that, capped by its own log end; it never moves
    /// back. Returns the new high watermark if it moved.
    pub fn on_leader_high_watermark(&mut self, leader_hw: Offset) -> Option<Offset> {
        if self.leading {
            return None;
        }
        let candidate = leader_hw.min(self.log_end_offset());
        (candidate > self.high_watermark).then(|| {
            self.high_watermark = candidate;
            candidate
        })
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn isr(&self) -> &[BrokerId] {
        &self.isr
    }

    pub fn replicas(&self) -> &[BrokerId] {
        &self.replicas
    }

    /// The leader's log end offset as of the last event.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end.get(&self.local).copied().unwrap_or_default()
    }

    /// The leader appended: its log now ends at `log_end`. Returns the new
    /// high watermark if it moved.
    pub fn on_leader_append(&mut self, log_end: Offset) -> Option<Offset> {
        let known = self.log_end.entry(self.local).or_default();
        // Appends finish in order on their partition's worker; an older
        // report (a stale read of the log end) never moves it back.
        *known = (*known).max(log_end);
        self.advance()
    }

    /// A follower fetched from `fetch_offset`: it has everything before it.
    /// Returns the new high watermark if it moved. A replica that is not
    /// one of this partition's is ignored.
    pub fn on_follower_fetch(&mut self, replica: BrokerId, fetch_offset: Offset) -> Option<Offset> {
        if !self.leading || replica == self.local || !self.replicas.contains(&replica) {
            return None;
        }
        let capped = fetch_offset.min(self.log_end_offset());
        self.log_end.insert(replica, capped);
        self.advance()
    }

    /// Recomputes the high watermark: the smallest log end offset in the
    /// ISR, never below its current value.
    fn advance(&mut self) -> Option<Offset> {
        if !self.leading {
            return None;
        }
        let leader_end = self.log_end_offset();
        let candidate = self
            .isr
            .iter()
            .map(|r| self.log_end.get(r).copied().unwrap_or_default())
            .min()
            .unwrap_or(leader_end);
        let moved = (candidate > self.high_watermark).then(|| {
            self.high_watermark = candidate;
            candidate
        });
        assert!(
            self.high_watermark <= leader_end,
            "high watermark {} above the leader's log end {}",
            self.high_watermark,
            leader_end
        );
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: BrokerId = 1;

    fn o(n: i64) -> Offset {
        Offset(n)
    }

    #[test]
    fn a_sole_in_sync_replica_commits_each_append_at_once() {
        let mut s = PartitionState::leader(ME, 0, vec![ME], vec![ME], o(5), o(0));
        assert_eq!(s.high_watermark(), o(5));
        assert_eq!(s.on_leader_append(o(9)), Some(o(9)));
        assert_eq!(s.on_leader_append(o(9)), None);
        assert_eq!(s.high_watermark(), o(9));
    }

    #[test]
    fn the_high_watermark_is_the_smallest_log_end_in_the_isr() {
        // (events, expected high watermark after each), replicas 1, 2, 3.
        let table: &[(&str, BrokerId, i64, i64)] = &[
            ("leader appends", ME, 10, 0),
            ("follower 2 at 4", 2, 4, 0),
            ("follower 3 at 6", 3, 6, 4),
            ("follower 2 at 10", 2, 10, 6),
            ("follower 3 at 10", 3, 10, 10),
            ("follower 3 claims past the leader", 3, 50, 10),
        ];
        let mut s = PartitionState::leader(ME, 3, vec![1, 2, 3], vec![1, 2, 3], o(0), o(0));
        for &(what, replica, offset, hw) in table {
            if replica == ME {
                s.on_leader_append(o(offset));
            } else {
                s.on_follower_fetch(replica, o(offset));
            }
            assert_eq!(s.high_watermark(), o(hw), "{what}");
        }
    }

    #[test]
    fn the_high_watermark_never_moves_back() {
        let mut s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(8), o(8));
        assert_eq!(s.high_watermark(), o(8));
        // A follower restarting behind does not pull it back.
        assert_eq!(s.on_follower_fetch(2, o(3)), None);
        assert_eq!(s.high_watermark(), o(8));
        // Nor does a stale report of the leader's own end.
        assert_eq!(s.on_leader_append(o(2)), None);
        assert_eq!(s.log_end_offset(), o(8));
    }

    #[test]
    fn fetches_from_strangers_and_the_leader_itself_are_ignored() {
        let mut s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(4), o(0));
        assert_eq!(s.on_follower_fetch(7, o(4)), None);
        assert_eq!(s.on_follower_fetch(ME, o(4)), None);
        assert_eq!(s.high_watermark(), o(0));
        assert_eq!(s.on_follower_fetch(2, o(4)), Some(o(4)));
    }

    #[test]
    fn a_follower_takes_the_leaders_high_watermark_capped_by_its_own_log() {
        // (event, value, expected high watermark after it), replicas 1, 2.
        let table: &[(&str, i64, i64)] = &[
            ("appends up to 5", 5, 0),
            ("leader says 3", 3, 3),
            ("leader says 9, follower has 5", 9, 5),
            ("appends up to 12", 12, 5),
            ("leader says 9", 9, 9),
            ("a stale answer says 4", 4, 9),
        ];
        let mut s = PartitionState::follower(ME, 0, vec![2, 1], vec![2, 1], o(0), o(0));
        assert!(!s.is_leader());
        for &(what, value, hw) in table {
            if what.starts_with("appends") {
                assert_eq!(s.on_leader_append(o(value)), None, "{what}");
            } else {
                s.on_leader_high_watermark(o(value));
            }
            assert_eq!(s.high_watermark(), o(hw), "{what}");
        }
        // A follower counts no one's fetches.
        assert_eq!(s.on_follower_fetch(2, o(12)), None);
    }

    #[test]
    fn a_restarted_leader_never_starts_above_its_log_end() {
        let s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(3), o(9));
        assert_eq!(s.high_watermark(), o(3));
    }
}
