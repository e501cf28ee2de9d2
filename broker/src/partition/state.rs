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
//! The ISR moves as in Kafka: a follower that has not caught up with the
//! leader's log end for `replica.lag.time.max.ms` leaves it, and one whose
//! log end reaches the high watermark joins it
//! ([`PartitionState::isr_to_propose`]). A change is only proposed here;
//! it takes effect when the controller commits it
//! ([`PartitionState::on_isr_committed`]). Meanwhile the high watermark is
//! computed over the ISR and the proposed one together, the larger set, so
//! it never counts on a replica that may still be leaving or not yet
//! admitted (Kafka's "maximal ISR").
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
    /// The metadata's partition epoch this state knows.
    partition_epoch: i32,
    /// Per follower: when it was last caught up with the leader's log end
    /// (ms), when it last fetched, and the leader's log end then.
    caught_up_ms: BTreeMap<BrokerId, u64>,
    last_fetch: BTreeMap<BrokerId, (u64, Offset)>,
    /// An ISR change proposed to the controller and not yet committed.
    pending_isr: Option<Vec<BrokerId>>,
    /// Per follower: the broker epoch its latest fetch came with.
    broker_epochs: BTreeMap<BrokerId, i64>,
    /// How many members the ISR needs for the high watermark to move
    /// (`min.insync.replicas`, at most the replicas; KIP-966).
    min_isr: usize,
}

impl PartitionState {
    /// The state of a partition this broker (`local`) leads, whose log ends
    /// at `log_end`. The high watermark starts at the log end when this
    /// broker is the only in-sync replica (everything it has is on every
    /// ISR member) and `min_isr` allows that, and at `high_watermark`
    /// otherwise, capped by the log end.
    pub fn leader(
        local: BrokerId,
        leader_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        log_end: Offset,
        high_watermark: Offset,
        min_isr: usize,
    ) -> PartitionState {
        let alone = isr.iter().all(|r| *r == local) && min_isr <= 1;
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
            partition_epoch: 0,
            caught_up_ms: BTreeMap::new(),
            last_fetch: BTreeMap::new(),
            pending_isr: None,
            broker_epochs: BTreeMap::new(),
            min_isr: min_isr.max(1),
        };
        state.advance();
        state
    }

    /// Sets the partition epoch and starts the lag clock at `now_ms`: every
    /// ISR member counts as caught up now, so a new leader gives its
    /// followers `replica.lag.time.max.ms` to fetch before it drops them.
    pub fn started(mut self, partition_epoch: i32, now_ms: u64) -> PartitionState {
        self.partition_epoch = partition_epoch;
        for r in &self.isr {
            self.caught_up_ms.insert(*r, now_ms);
        }
        self
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    /// Sets how many ISR members the high watermark needs to move (at
    /// least one). Returns the new high watermark if that moved it.
    pub fn set_min_isr(&mut self, min_isr: usize) -> Option<Offset> {
        let min_isr = min_isr.max(1);
        if min_isr == self.min_isr {
            return None;
        }
        self.min_isr = min_isr;
        self.advance()
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
            partition_epoch: 0,
            caught_up_ms: BTreeMap::new(),
            last_fetch: BTreeMap::new(),
            pending_isr: None,
            broker_epochs: BTreeMap::new(),
            min_isr: 1,
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

    /// A follower, in the run of its process registered with
    /// `broker_epoch`, fetched from `fetch_offset`: it has everything
    /// before it. Returns the new high watermark if it moved. A replica
    /// that is not one of this partition's is ignored. A new run of a
    /// follower proves it has caught up afresh: what an earlier run
    /// fetched does not count for it (KIP-903).
    pub fn on_follower_fetch(
        &mut self,
        replica: BrokerId,
        broker_epoch: i64,
        fetch_offset: Offset,
        now_ms: u64,
    ) -> Option<Offset> {
        if !self.leading || replica == self.local || !self.replicas.contains(&replica) {
            return None;
        }
        let before = self.broker_epochs.insert(replica, broker_epoch);
        if before.is_some_and(|e| e != broker_epoch) {
            self.caught_up_ms.remove(&replica);
            self.last_fetch.remove(&replica);
        }
        let leader_end = self.log_end_offset();
        // Caught up now if it has everything; or as of its previous fetch
        // if it has everything the leader had then (Kafka's rule).
        if fetch_offset >= leader_end {
            self.caught_up_ms.insert(replica, now_ms);
        } else if let Some(&(at, end_then)) = self.last_fetch.get(&replica) {
            if fetch_offset >= end_then {
                let known = self.caught_up_ms.entry(replica).or_default();
                *known = (*known).max(at);
            }
        }
        self.last_fetch.insert(replica, (now_ms, leader_end));
        // Not capped by the leader's end as known here: that stops short
        // of its appends still waiting for their fsync, which a follower
        // may already have copied. The high watermark is capped instead.
        self.log_end.insert(replica, fetch_offset);
        self.advance()
    }

    /// The ISR the leader should ask the controller for at `now_ms`, if it
    /// differs from the current one and no change is in flight: members
    /// not caught up for more than `lag_max_ms` leave; replicas whose log
    /// end reached the high watermark, caught up within `lag_max_ms`, join.
    /// The answer is remembered as in flight.
    pub fn isr_to_propose(&mut self, now_ms: u64, lag_max_ms: u64) -> Option<Vec<BrokerId>> {
        if !self.leading || self.pending_isr.is_some() {
            return None;
        }
        let recent = |r: &BrokerId| {
            self.caught_up_ms
                .get(r)
                .is_some_and(|at| now_ms.saturating_sub(*at) <= lag_max_ms)
        };
        let proposed: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|r| {
                *r == self.local
                    || (self.isr.contains(r) && recent(r))
                    || (!self.isr.contains(r)
                        && recent(r)
                        && self
                            .log_end
                            .get(r)
                            .is_some_and(|end| *end >= self.high_watermark))
            })
            .collect();
        let mut current = self.isr.clone();
        current.sort_unstable();
        let mut sorted = proposed.clone();
        sorted.sort_unstable();
        if sorted == current {
            return None;
        }
        self.pending_isr = Some(proposed.clone());
        Some(proposed)
    }

    /// The controller committed `isr` at `partition_epoch` (or a newer
    /// image says so). Returns the new high watermark if it moved.
    pub fn on_isr_committed(&mut self, isr: Vec<BrokerId>, partition_epoch: i32) -> Option<Offset> {
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending_isr = None;
        self.advance()
    }

    /// The controller refused the change in flight (a stale epoch): the
    /// next check proposes again from the current image.
    pub fn on_isr_refused(&mut self) {
        self.pending_isr = None;
    }

    /// For the members of `isr` not in the current ISR: the broker epoch
    /// their catching-up fetches came with, which the controller checks
    /// is still their registration's.
    pub fn joining_epochs(&self, isr: &[BrokerId]) -> BTreeMap<BrokerId, i64> {
        isr.iter()
            .filter(|r| !self.isr.contains(r) && **r != self.local)
            .filter_map(|r| Some((*r, *self.broker_epochs.get(r)?)))
            .collect()
    }

    /// The ISR change in flight, if any.
    pub fn pending_isr(&self) -> Option<&[BrokerId]> {
        self.pending_isr.as_deref()
    }

    /// Recomputes the high watermark: the smallest log end offset in the
    /// ISR, never below its current value; it stays put while the ISR is
    /// smaller than `min_isr`, so that everything committed is on at least
    /// that many replicas, and a replica that leaves the ISR then has all
    /// of it (an eligible leader replica, KIP-966).
    fn advance(&mut self) -> Option<Offset> {
        if !self.leading || self.isr.len() < self.min_isr {
            return None;
        }
        let leader_end = self.log_end_offset();
        // While a change is in flight, over the ISR and the proposed one
        // together: a replica leaving still counts until it has left, and
        // one joining counts as soon as it is proposed.
        let pending = self.pending_isr.as_deref().unwrap_or(&[]);
        let candidate = self
            .isr
            .iter()
            .chain(pending.iter())
            .map(|r| self.log_end.get(r).copied().unwrap_or_default())
            .min()
            .unwrap_or(leader_end)
            .min(leader_end);
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
        let mut s = PartitionState::leader(ME, 0, vec![ME], vec![ME], o(5), o(0), 1);
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
        let mut s = PartitionState::leader(ME, 3, vec![1, 2, 3], vec![1, 2, 3], o(0), o(0), 1);
        for &(what, replica, offset, hw) in table {
            if replica == ME {
                s.on_leader_append(o(offset));
            } else {
                s.on_follower_fetch(replica, 0, o(offset), 0);
            }
            assert_eq!(s.high_watermark(), o(hw), "{what}");
        }
    }

    #[test]
    fn followers_ahead_of_the_leaders_flushed_end_count_once_the_leader_reaches_it() {
        // With an fsync per batch the leader counts its own end only once
        // its fsync is done, while followers may already have copied the
        // batch: their fetch offsets are kept whole, and the high watermark
        // moves as soon as the leader's end catches up, with no new fetch.
        let mut s = PartitionState::leader(ME, 0, vec![1, 2, 3], vec![1, 2, 3], o(5), o(5), 2);
        assert_eq!(s.on_follower_fetch(2, 0, o(8), 0), None);
        assert_eq!(s.on_follower_fetch(3, 0, o(8), 0), None);
        assert_eq!(s.high_watermark(), o(5));
        assert_eq!(s.on_leader_append(o(8)), Some(o(8)));
    }

    #[test]
    fn the_high_watermark_never_moves_back() {
        let mut s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(8), o(8), 1);
        assert_eq!(s.high_watermark(), o(8));
        // A follower restarting behind does not pull it back.
        assert_eq!(s.on_follower_fetch(2, 0, o(3), 0), None);
        assert_eq!(s.high_watermark(), o(8));
        // Nor does a stale report of the leader's own end.
        assert_eq!(s.on_leader_append(o(2)), None);
        assert_eq!(s.log_end_offset(), o(8));
    }

    #[test]
    fn fetches_from_strangers_and_the_leader_itself_are_ignored() {
        let mut s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(4), o(0), 1);
        assert_eq!(s.on_follower_fetch(7, 0, o(4), 0), None);
        assert_eq!(s.on_follower_fetch(ME, 0, o(4), 0), None);
        assert_eq!(s.high_watermark(), o(0));
        assert_eq!(s.on_follower_fetch(2, 0, o(4), 0), Some(o(4)));
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
        assert_eq!(s.on_follower_fetch(2, 0, o(12), 0), None);
    }

    #[test]
    fn a_new_run_of_a_follower_catches_up_afresh_and_joins_under_its_own_epoch() {
        const LAG: u64 = 100;
        let mut s =
            PartitionState::leader(ME, 0, vec![1, 2, 3], vec![1, 2], o(0), o(0), 1).started(0, 0);
        s.on_leader_append(o(10));
        s.on_follower_fetch(2, 5, o(10), 10);
        // Replica 3, run of epoch 7, caught up at 20.
        s.on_follower_fetch(3, 7, o(10), 20);
        assert_eq!(s.isr_to_propose(21, LAG), Some(vec![1, 2, 3]));
        assert_eq!(s.joining_epochs(&[1, 2, 3]), BTreeMap::from([(3, 7)]));
        s.on_isr_refused();
        // It restarted (epoch 9) and lost its tail: its catching up under
        // epoch 7 no longer counts.
        s.on_follower_fetch(3, 9, o(6), 30);
        assert_eq!(s.isr_to_propose(31, LAG), None);
        s.on_follower_fetch(3, 9, o(10), 40);
        assert_eq!(s.isr_to_propose(41, LAG), Some(vec![1, 2, 3]));
        assert_eq!(s.joining_epochs(&[1, 2, 3]), BTreeMap::from([(3, 9)]));
    }

    #[test]
    fn the_high_watermark_waits_while_the_isr_is_below_min_insync_replicas() {
        // min.insync.replicas=2 of three replicas.
        let mut s = PartitionState::leader(ME, 0, vec![1, 2, 3], vec![1, 2, 3], o(0), o(0), 2)
            .started(0, 0);
        s.on_leader_append(o(10));
        s.on_follower_fetch(2, 0, o(10), 1);
        s.on_follower_fetch(3, 0, o(6), 1);
        assert_eq!(s.high_watermark(), o(6));
        // Down to the leader alone: appends are not committed, even with
        // every ISR member (itself) having them.
        s.on_isr_committed(vec![1], 1);
        assert_eq!(s.high_watermark(), o(6));
        assert_eq!(s.on_leader_append(o(12)), None);
        // A restarted leader alone does not take its log end either.
        let alone = PartitionState::leader(ME, 1, vec![1, 2, 3], vec![1], o(12), o(6), 2);
        assert_eq!(alone.high_watermark(), o(6));
        // Two in sync again: it moves.
        s.on_follower_fetch(2, 0, o(12), 2);
        assert_eq!(s.on_isr_committed(vec![1, 2], 2), Some(o(12)));
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
        const LAG: u64 = 100;
        let mut s = PartitionState::leader(ME, 0, vec![1, 2, 3], vec![1, 2, 3], o(0), o(0), 1)
            .started(0, 0);
        s.on_leader_append(o(10));
        s.on_follower_fetch(2, 0, o(10), 50);
        s.on_follower_fetch(3, 0, o(4), 50);
        assert_eq!(s.high_watermark(), o(4));
        // Nobody has lagged for longer than LAG yet.
        assert_eq!(s.isr_to_propose(90, LAG), None);
        // Follower 3 has not caught up since it became a follower at 0.
        assert_eq!(s.isr_to_propose(120, LAG), Some(vec![1, 2]));
        assert_eq!(s.isr_to_propose(121, LAG), None, "one change at a time");
        // Until the change commits, 3 still counts for the high watermark.
        s.on_leader_append(o(12));
        s.on_follower_fetch(2, 0, o(12), 125);
        assert_eq!(s.high_watermark(), o(4));
        assert_eq!(s.on_isr_committed(vec![1, 2], 1), Some(o(12)));
        assert_eq!((s.isr(), s.partition_epoch()), (&[1, 2][..], 1));

        // 3 catches up: it rejoins, and counts as soon as it is proposed.
        s.on_follower_fetch(3, 0, o(12), 130);
        assert_eq!(s.isr_to_propose(131, LAG), Some(vec![1, 2, 3]));
        // Refused (a stale epoch): proposed again at the next check.
        s.on_isr_refused();
        assert_eq!(s.isr_to_propose(132, LAG), Some(vec![1, 2, 3]));
        s.on_isr_committed(vec![1, 2, 3], 2);
        assert_eq!(s.isr_to_propose(133, LAG), None);

        // A follower that fetches but never reaches the log end: caught up
        // as of a fetch only if it has what the leader had at its previous
        // fetch.
        s.on_leader_append(o(20));
        s.on_follower_fetch(2, 0, o(20), 140);
        s.on_follower_fetch(3, 0, o(15), 140);
        s.on_leader_append(o(30));
        s.on_follower_fetch(3, 0, o(20), 200); // had the 20 of its fetch at 140
        s.on_follower_fetch(2, 0, o(30), 200);
        assert_eq!(s.isr_to_propose(235, LAG), None, "3 caught up as of 140");
        assert_eq!(s.isr_to_propose(241, LAG), Some(vec![1, 2]));
    }

    #[test]
    fn a_leader_alone_keeps_itself_in_the_isr() {
        let mut s =
            PartitionState::leader(ME, 0, vec![2, 1], vec![2, 1], o(5), o(0), 1).started(3, 0);
        assert_eq!(s.isr_to_propose(1_000, 100), Some(vec![1]));
        assert_eq!(s.on_isr_committed(vec![1], 4), Some(o(5)));
        assert_eq!(s.isr_to_propose(2_000, 100), None);
    }

    #[test]
    fn a_restarted_leader_never_starts_above_its_log_end() {
        let s = PartitionState::leader(ME, 0, vec![1, 2], vec![1, 2], o(3), o(9), 1);
        assert_eq!(s.high_watermark(), o(3));
    }

    /// Events of the seeded model test.
    #[derive(Debug, Clone)]
    enum Event {
        Append(u8),
        /// Follower `replica` fetches and is sent up to `take` offsets.
        Fetch {
            replica: u8,
            take: u8,
        },
        Tick(u16),
        /// The leader proposes the ISR change lag calls for, if any.
        Propose,
        /// The controller commits the change in flight, or refuses it (a
        /// stale epoch).
        Settle {
            commit: bool,
        },
        Crash(u8),
        Restart(u8),
        /// The leader is fenced: the first live other ISR member leads.
        MoveLeader,
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u8..20).prop_map(Event::Append),
            6 => (0u8..5, 1u8..30).prop_map(|(replica, take)| Event::Fetch { replica, take }),
            3 => (1u16..400).prop_map(Event::Tick),
            2 => Just(Event::Propose),
            2 => any::<bool>().prop_map(|commit| Event::Settle { commit }),
            1 => (0u8..5).prop_map(Event::Crash),
            1 => (0u8..5).prop_map(Event::Restart),
            1 => Just(Event::MoveLeader),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random schedules of appends, fetches, clock ticks, ISR changes,
        /// crashes, restarts and leader moves over 3–5 replicas, with
        /// min.insync.replicas 1 or 2, each restart a new broker epoch. After
        /// every step: the high watermark
        /// is on every member of the ISR (and of a proposed one), it never
        /// moves back, it moves only while the ISR has at least
        /// min.insync.replicas members, and every offset
        /// ever committed (an acks=all acknowledgement) is on every ISR
        /// member. After healing, every replica holds everything up to the
        /// high watermark, which has reached the leader's log end.
        #[test]
        fn committed_offsets_stay_on_every_in_sync_replica(
            n in 3usize..=5,
            min_isr in 1usize..=2,
            events in proptest::collection::vec(event(), 20..200),
        ) {
            let warm_up = warm_up(n, |replica| Event::Fetch { replica, take: 5 });
            committed_model(n, min_isr, warm_up.into_iter().map(|e| e.unwrap_or(Event::Append(5))).chain(events))?;
        }
    }

    /// The start of every model schedule: five records appended (`None`),
    /// then two fetches by each follower (`fetch`), which commit them; so no
    /// random schedule is idle by construction, and the models' last check
    /// still fails one that is (see
    /// `the_models_fail_a_schedule_that_did_nothing`).
    fn warm_up<E>(n: usize, fetch: impl Fn(u8) -> E) -> Vec<Option<E>> {
        let followers = 1..n as u8;
        std::iter::once(None)
            .chain(followers.clone().chain(followers).map(|r| Some(fetch(r))))
            .collect()
    }

    /// The body of `committed_offsets_stay_on_every_in_sync_replica`.
    fn committed_model(
        n: usize,
        min_isr: usize,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        const LAG: u64 = 1000;
        let replicas: Vec<BrokerId> = (1..=n as i32).collect();
        let mut leo: BTreeMap<BrokerId, i64> = replicas.iter().map(|r| (*r, 0)).collect();
        let mut alive: BTreeMap<BrokerId, bool> = replicas.iter().map(|r| (*r, true)).collect();
        // Each replica's broker epoch: a restart after a crash is a new run
        // of its process, registered anew (KIP-903).
        let mut runs: BTreeMap<BrokerId, i64> = replicas.iter().map(|r| (*r, 0)).collect();
        let (mut leader, mut epoch, mut now) = (1, 0, 0u64);
        let mut s = PartitionState::leader(
            leader,
            epoch,
            replicas.clone(),
            replicas.clone(),
            o(0),
            o(0),
            min_isr,
        )
        .started(0, now);
        let mut committed = 0i64;
        let mut appended = 0i64;
        let check = |s: &PartitionState, leo: &BTreeMap<BrokerId, i64>, committed: i64| {
            let hw = s.high_watermark().0;
            for m in s.isr().iter().chain(s.pending_isr().unwrap_or(&[])) {
                assert!(
                    hw <= leo[m],
                    "hw {hw} above replica {m}'s log end {}",
                    leo[m]
                );
                assert!(
                    committed <= leo[m],
                    "committed {committed} lost on ISR member {m}"
                );
            }
        };
        for e in events {
            let before = s.high_watermark();
            match e {
                Event::Append(k) => {
                    *leo.get_mut(&leader).unwrap() += i64::from(k);
                    appended += i64::from(k);
                    s.on_leader_append(o(leo[&leader]));
                }
                Event::Fetch { replica, take } => {
                    let f = replicas[usize::from(replica) % n];
                    if f != leader && alive[&f] {
                        s.on_follower_fetch(f, runs[&f], o(leo[&f]), now);
                        let end = leo[&leader];
                        let got = (leo[&f] + i64::from(take)).min(end);
                        leo.insert(f, got);
                    }
                }
                Event::Tick(ms) => now += u64::from(ms),
                Event::Propose => {
                    s.isr_to_propose(now, LAG);
                }
                Event::Settle { commit } => {
                    if let Some(isr) = s.pending_isr().map(<[BrokerId]>::to_vec) {
                        if commit {
                            let next = s.partition_epoch() + 1;
                            s.on_isr_committed(isr, next);
                        } else {
                            s.on_isr_refused();
                        }
                    }
                }
                Event::Crash(r) => {
                    let r = replicas[usize::from(r) % n];
                    if r != leader {
                        alive.insert(r, false);
                    }
                }
                Event::Restart(r) => {
                    let r = replicas[usize::from(r) % n];
                    if !alive[&r] {
                        *runs.get_mut(&r).unwrap() += 1;
                    }
                    alive.insert(r, true);
                }
                Event::MoveLeader => {
                    let next = s.isr().iter().copied().find(|r| *r != leader && alive[r]);
                    if let Some(next) = next {
                        let isr: Vec<BrokerId> =
                            s.isr().iter().copied().filter(|r| *r != leader).collect();
                        epoch += 1;
                        let hw = s.high_watermark();
                        leader = next;
                        s = PartitionState::leader(
                            leader,
                            epoch,
                            replicas.clone(),
                            isr,
                            o(leo[&leader]),
                            hw,
                            min_isr,
                        )
                        .started(s.partition_epoch() + 1, now);
                        // A replica with more than the new leader (the
                        // old leader, a follower that fetched further)
                        // cuts back to the high watermark when it next
                        // fetches (the interim rule of replica.rs).
                        let end = leo[&leader];
                        for r in &replicas {
                            if leo[r] > end {
                                leo.insert(*r, leo[r].min(hw.0));
                            }
                        }
                        proptest::prop_assert!(
                            s.high_watermark() >= before,
                            "a new leader moved the high watermark back"
                        );
                    }
                }
            }
            proptest::prop_assert!(
                s.high_watermark() >= before,
                "the high watermark moved back"
            );
            // KIP-966: the high watermark moves only while the ISR has at
            // least min.insync.replicas members.
            proptest::prop_assert!(
                s.high_watermark() == before || s.isr().len() >= min_isr,
                "the high watermark moved with the ISR {:?} below {}",
                s.isr(),
                min_isr
            );
            committed = committed.max(s.high_watermark().0);
            check(&s, &leo, committed);
        }
        let committed_before_healing = committed;
        // Heal: everyone alive and fetching until caught up; the ISR
        // admits them all, and a last append commits.
        for r in &replicas {
            alive.insert(*r, true);
        }
        *leo.get_mut(&leader).unwrap() += 1;
        appended += 1;
        s.on_leader_append(o(leo[&leader]));
        for _ in 0..4 {
            // The controller decides a change left in flight.
            if let Some(pending) = s.pending_isr().map(<[BrokerId]>::to_vec) {
                let next = s.partition_epoch() + 1;
                s.on_isr_committed(pending, next);
            }
            for f in replicas.iter().copied().filter(|f| *f != leader) {
                s.on_follower_fetch(f, runs[&f], o(leo[&f]), now);
                leo.insert(f, leo[&leader]);
                s.on_follower_fetch(f, runs[&f], o(leo[&f]), now);
            }
            if let Some(isr) = s.isr_to_propose(now, LAG) {
                let next = s.partition_epoch() + 1;
                s.on_isr_committed(isr, next);
            }
            now += 1;
        }
        check(&s, &leo, committed);
        let mut isr = s.isr().to_vec();
        isr.sort_unstable();
        proptest::prop_assert_eq!(isr, replicas.clone(), "healed replicas rejoin the ISR");
        proptest::prop_assert_eq!(s.high_watermark().0, leo[&leader], "healed: all committed");
        // The schedule did something: a run that appended nothing, or
        // committed nothing before healing, proves nothing.
        proptest::prop_assert!(
            appended > 0 && committed_before_healing > 0,
            "an idle schedule"
        );
        Ok(())
    }

    /// Events of the election model test.
    #[derive(Debug, Clone)]
    enum Step {
        Append(u8),
        Fetch {
            replica: u8,
            take: u8,
        },
        Tick(u16),
        Propose,
        Settle {
            commit: bool,
        },
        /// A follower's process dies (its log stays, as the page cache does).
        Crash(u8),
        Restart(u8),
        /// The leader's process dies: the controller elects.
        LeaderDies,
        /// SIGTERM: leadership to the next live ISR member, out of the ISR.
        ControlledShutdown,
        /// The preferred replica leads again if it is in sync.
        Preferred,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u8..20).prop_map(Step::Append),
            6 => (0u8..5, 1u8..30).prop_map(|(replica, take)| Step::Fetch { replica, take }),
            3 => (1u16..400).prop_map(Step::Tick),
            2 => Just(Step::Propose),
            2 => any::<bool>().prop_map(|commit| Step::Settle { commit }),
            1 => (0u8..5).prop_map(Step::Crash),
            2 => (0u8..5).prop_map(Step::Restart),
            1 => Just(Step::LeaderDies),
            1 => Just(Step::ControlledShutdown),
            1 => Just(Step::Preferred),
        ]
    }

    /// One replica's log: per offset, the epoch it was written in and a
    /// unique id (what "the same bytes" means here).
    type ModelLog = Vec<(i32, u64)>;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Part 2's model: random schedules with crashes at any step, the
        /// leader dying (clean election, or unclean when the schedule
        /// allows it and no in-sync replica is left), controlled shutdowns
        /// and preferred-leader moves, over 3–5 replicas whose logs are
        /// modelled record by record (followers truncate where their log
        /// parts from the leader's). Checks: while an in-sync replica
        /// lives, every committed offset stays on every ISR member, the
        /// same record (a mutation electing an out-of-sync replica cleanly
        /// fails it); an unclean election's reported loss (the old high
        /// watermark minus the new leader's log end, all the controller
        /// knows) is exactly the committed records it drops when the new
        /// leader's log is a prefix of them, and a lower bound when it
        /// holds a longer log of an older epoch; after healing every
        /// replica holds the leader's log, record for record; an idle
        /// schedule fails.
        #[test]
        fn elections_keep_what_was_committed_or_report_exactly_what_they_lose(
            n in 3usize..=5,
            unclean_allowed in proptest::prelude::any::<bool>(),
            steps in proptest::collection::vec(step(), 20..200),
        ) {
            let warm_up = warm_up(n, |replica| Step::Fetch { replica, take: 5 });
            election_model(n, unclean_allowed, warm_up.into_iter().map(|e| e.unwrap_or(Step::Append(5))).chain(steps))?;
        }
    }

    /// The body of
    /// `elections_keep_what_was_committed_or_report_exactly_what_they_lose`.
    fn election_model(
        n: usize,
        unclean_allowed: bool,
        steps: impl IntoIterator<Item = Step>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        const LAG: u64 = 1000;
        let replicas: Vec<BrokerId> = (1..=n as i32).collect();
        let mut logs: BTreeMap<BrokerId, ModelLog> =
            replicas.iter().map(|r| (*r, Vec::new())).collect();
        let mut alive: BTreeMap<BrokerId, bool> = replicas.iter().map(|r| (*r, true)).collect();
        // Each replica's broker epoch: a restart after a crash is a new run
        // of its process, registered anew (KIP-903).
        let mut runs: BTreeMap<BrokerId, i64> = replicas.iter().map(|r| (*r, 0)).collect();
        let (mut leader, mut epoch, mut now, mut next_id) = (1, 0, 0u64, 0u64);
        let mut leader_alive = true;
        let mut s = PartitionState::leader(
            leader,
            epoch,
            replicas.clone(),
            replicas.clone(),
            o(0),
            o(0),
            1,
        )
        .started(0, now);
        // What is committed: the records below the highest high
        // watermark, as acks=all acknowledged them.
        let mut committed: ModelLog = Vec::new();
        let (mut appended, mut lost_reported, mut lost_real) = (0u64, 0i64, 0i64);
        let end = |logs: &BTreeMap<BrokerId, ModelLog>, r: BrokerId| o(logs[&r].len() as i64);
        for step in steps {
            match step {
                Step::Append(k) if leader_alive => {
                    for _ in 0..k {
                        logs.get_mut(&leader).unwrap().push((epoch, next_id));
                        next_id += 1;
                    }
                    appended += u64::from(k);
                    s.on_leader_append(end(&logs, leader));
                }
                Step::Fetch { replica, take } if leader_alive => {
                    let f = replicas[usize::from(replica) % n];
                    if f != leader && alive[&f] {
                        // Truncate where the logs part (KIP-279), then
                        // fetch from there.
                        let lead = logs[&leader].clone();
                        let mine = logs.get_mut(&f).unwrap();
                        let same = mine.iter().zip(&lead).take_while(|(a, b)| a == b).count();
                        mine.truncate(same);
                        s.on_follower_fetch(f, runs[&f], o(mine.len() as i64), now);
                        let upto = (mine.len() + usize::from(take)).min(lead.len());
                        mine.extend_from_slice(&lead[mine.len()..upto]);
                    }
                }
                Step::Tick(ms) => now += u64::from(ms),
                Step::Propose if leader_alive => {
                    s.isr_to_propose(now, LAG);
                }
                Step::Settle { commit } if leader_alive => {
                    if let Some(isr) = s.pending_isr().map(<[BrokerId]>::to_vec) {
                        if commit {
                            let next = s.partition_epoch() + 1;
                            s.on_isr_committed(isr, next);
                        } else {
                            s.on_isr_refused();
                        }
                    }
                }
                Step::Crash(r) => {
                    let r = replicas[usize::from(r) % n];
                    if r != leader {
                        alive.insert(r, false);
                    }
                }
                Step::Restart(r) => {
                    let r = replicas[usize::from(r) % n];
                    if !alive[&r] {
                        *runs.get_mut(&r).unwrap() += 1;
                    }
                    alive.insert(r, true);
                    if r == leader && !leader_alive {
                        // The last in-sync replica returns: it leads again,
                        // with everything committed.
                        leader_alive = true;
                        epoch += 1;
                        let isr = s.isr().to_vec();
                        let hw = s.high_watermark();
                        s = PartitionState::leader(
                            leader,
                            epoch,
                            replicas.clone(),
                            isr,
                            end(&logs, leader),
                            hw,
                            1,
                        )
                        .started(s.partition_epoch() + 1, now);
                    }
                }
                Step::LeaderDies | Step::ControlledShutdown if leader_alive => {
                    let dies = matches!(step, Step::LeaderDies);
                    if dies {
                        alive.insert(leader, false);
                    }
                    let hw = s.high_watermark();
                    let others: Vec<BrokerId> =
                        s.isr().iter().copied().filter(|r| *r != leader).collect();
                    let clean = replicas
                        .iter()
                        .copied()
                        .find(|r| others.contains(r) && alive[r]);
                    let unclean = replicas.iter().copied().find(|r| *r != leader && alive[r]);
                    match (clean, unclean) {
                        (Some(next), _) => {
                            leader = next;
                            epoch += 1;
                            s = PartitionState::leader(
                                leader,
                                epoch,
                                replicas.clone(),
                                others,
                                end(&logs, leader),
                                hw,
                                1,
                            )
                            .started(s.partition_epoch() + 1, now);
                        }
                        (None, Some(next)) if dies && unclean_allowed => {
                            // Unclean: the controller reports the old high
                            // watermark minus the new leader's log end.
                            let new_end = logs[&next].len() as i64;
                            let reported = (hw.0 - new_end).max(0);
                            let keep = committed
                                .iter()
                                .zip(&logs[&next])
                                .take_while(|(a, b)| a == b)
                                .count();
                            let real = (committed.len() - keep) as i64;
                            // Exact when the new leader's log is a prefix
                            // of what was committed; when it holds records
                            // of an epoch the committed ones replaced (a
                            // longer, divergent log), the controller, which
                            // knows log ends and not contents, undercounts.
                            let diverged = keep < committed.len().min(new_end as usize);
                            if diverged {
                                proptest::prop_assert!(
                                    reported <= real,
                                    "reported {} above the real loss {}",
                                    reported,
                                    real
                                );
                            } else {
                                proptest::prop_assert_eq!(
                                    reported,
                                    real,
                                    "reported loss differs from the real one"
                                );
                            }
                            lost_reported += reported;
                            lost_real += real;
                            committed.truncate(keep);
                            leader = next;
                            epoch += 1;
                            s = PartitionState::leader(
                                leader,
                                epoch,
                                replicas.clone(),
                                vec![leader],
                                end(&logs, leader),
                                hw.min(o(new_end)),
                                1,
                            )
                            .started(s.partition_epoch() + 1, now);
                        }
                        // No one to lead (or a shutdown with nobody to
                        // hand over to): offline until the leader returns.
                        _ => leader_alive = !dies,
                    }
                }
                Step::Preferred if leader_alive => {
                    let p = replicas[0];
                    if p != leader && alive[&p] && s.isr().contains(&p) && logs[&p] == logs[&leader]
                    {
                        let isr = s.isr().to_vec();
                        let hw = s.high_watermark();
                        leader = p;
                        epoch += 1;
                        s = PartitionState::leader(
                            leader,
                            epoch,
                            replicas.clone(),
                            isr,
                            end(&logs, leader),
                            hw,
                            1,
                        )
                        .started(s.partition_epoch() + 1, now);
                    }
                }
                _ => {}
            }
            // Every committed record is on every ISR member, the same.
            let hw = s.high_watermark().0 as usize;
            if hw > committed.len() {
                committed = logs[&leader][..hw].to_vec();
            }
            for m in s.isr() {
                proptest::prop_assert!(
                    logs[m].len() >= committed.len() && logs[m][..committed.len()] == committed[..],
                    "committed records missing on ISR member {}",
                    m
                );
            }
        }
        proptest::prop_assert!(lost_reported <= lost_real);
        if !unclean_allowed {
            proptest::prop_assert_eq!(lost_real, 0);
        }
        let committed_before_healing = committed.len();
        // Heal: everyone back; the leader (the last ISR member if the
        // partition was offline) leads; everyone catches up.
        for r in &replicas {
            alive.insert(*r, true);
        }
        if !leader_alive {
            leader_alive = true;
            epoch += 1;
            let isr = s.isr().to_vec();
            let hw = s.high_watermark();
            s = PartitionState::leader(
                leader,
                epoch,
                replicas.clone(),
                isr,
                end(&logs, leader),
                hw,
                1,
            )
            .started(s.partition_epoch() + 1, now);
        }
        proptest::prop_assert!(leader_alive);
        logs.get_mut(&leader).unwrap().push((epoch, next_id));
        s.on_leader_append(end(&logs, leader));
        for _ in 0..4 {
            if let Some(pending) = s.pending_isr().map(<[BrokerId]>::to_vec) {
                let next = s.partition_epoch() + 1;
                s.on_isr_committed(pending, next);
            }
            let lead = logs[&leader].clone();
            for f in replicas.iter().copied().filter(|f| *f != leader) {
                let mine = logs.get_mut(&f).unwrap();
                let same = mine.iter().zip(&lead).take_while(|(a, b)| a == b).count();
                mine.truncate(same);
                s.on_follower_fetch(f, runs[&f], o(mine.len() as i64), now);
                *mine = lead.clone();
                s.on_follower_fetch(f, runs[&f], o(mine.len() as i64), now);
            }
            if let Some(isr) = s.isr_to_propose(now, LAG) {
                let next = s.partition_epoch() + 1;
                s.on_isr_committed(isr, next);
            }
            now += 1;
        }
        for r in &replicas {
            proptest::prop_assert_eq!(
                &logs[r],
                &logs[&leader],
                "replica {} differs once healed",
                r
            );
        }
        proptest::prop_assert_eq!(
            s.high_watermark().0 as usize,
            logs[&leader].len(),
            "healed: all committed"
        );
        proptest::prop_assert!(
            appended > 0 && committed_before_healing > 0,
            "an idle schedule"
        );
        Ok(())
    }

    /// The models' checks are not vacuous: a schedule that commits nothing
    /// before healing (here: the clock alone moves; then appends that no
    /// follower fetches) fails both, where the same schedule after the
    /// warm-up passes.
    #[test]
    fn the_models_fail_a_schedule_that_did_nothing() {
        let idle = || std::iter::repeat_n(Event::Tick(10), 30);
        let err = committed_model(3, 1, idle()).unwrap_err();
        assert!(err.to_string().contains("an idle schedule"), "{err}");
        let unfetched = [Event::Append(3), Event::Append(4)];
        let err = committed_model(3, 1, unfetched).unwrap_err();
        assert!(err.to_string().contains("an idle schedule"), "{err}");
        let started = warm_up(3, |replica| Event::Fetch { replica, take: 5 });
        let started = started.into_iter().map(|e| e.unwrap_or(Event::Append(5)));
        committed_model(3, 1, started.chain(idle())).unwrap();

        let idle = || std::iter::repeat_n(Step::Tick(10), 30);
        for unclean in [false, true] {
            let err = election_model(3, unclean, idle()).unwrap_err();
            assert!(err.to_string().contains("an idle schedule"), "{err}");
            let unfetched = [Step::Append(3), Step::Append(4)];
            let err = election_model(3, unclean, unfetched).unwrap_err();
            assert!(err.to_string().contains("an idle schedule"), "{err}");
            let started = warm_up(3, |replica| Step::Fetch { replica, take: 5 });
            let started = started.into_iter().map(|e| e.unwrap_or(Step::Append(5)));
            election_model(3, unclean, started.chain(idle())).unwrap();
        }
    }
}
