//! One consumer group's state machine (the classic protocol), pure: no
//! I/O, no clock reads (time is an argument), no waiting. Requests go in;
//! answers come out now or later, as [`Completion`]s when a rebalance step
//! finishes. The shell parks the waiting requests and delivers completions.
//!
//! ```text
//!            join                  all joined / deadline          leader's sync
//!   Empty ───────▶ PreparingRebalance ───────────▶ CompletingRebalance ─────────▶ Stable
//!     ▲                  ▲   (generation + 1, leader chosen)                        │
//!     └── last leaves ───┴──────────── join, leave, session expiry ◀────────────────┘
//! ```
//!
//! Kafka's rules, from its GroupCoordinator: a new member without an id is
//! given one and asked to rejoin (MEMBER_ID_REQUIRED, KIP-394); the
//! rebalance completes when every known member has rejoined or its
//! deadline (the largest rebalance timeout) passes, dropping the absent; the
//! protocol is the one every member supports with the most first-choice
//! votes; members whose session lapses leave.

use std::collections::BTreeMap;

/// Kafka error codes this state machine answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// Broker limits on members' timeouts (Kafka's group.* settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of
    /// an empty group waits for more members.
    pub initial_rebalance_delay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
    last_heartbeat_ms: u64,
    /// Has sent a JoinGroup for the rebalance in progress.
    joined: bool,
    /// Waits for the leader's SyncGroup.
    awaiting_sync: bool,
}

/// A JoinGroup request, as the state machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol; only the leader
    /// gets it.
    pub members: Vec<(String, Vec<u8>)>,
}

impl JoinResponse {
    fn error(member_id: &str, error_code: i16) -> JoinResponse {
        JoinResponse {
            error_code,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// An answer that was not ready when its request came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Join(JoinResponse),
    /// (member id, error code, assignment)
    Sync(String, i16, Vec<u8>),
}

/// What to do with a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Answer at once.
    Now(T),
    /// Park it until a [`Completion`] for this member arrives.
    Wait,
}

/// One group. Owned by its coordinator; not shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending: std::collections::BTreeSet<String>,
    /// When the rebalance in progress completes without stragglers.
    rebalance_deadline_ms: u64,
    /// The rebalance started from Empty: it waits out the initial delay so
    /// that a group's members arriving together share one generation.
    initial_rebalance: bool,
    next_member: u64,
    limits: Limits,
}

impl Group {
    pub fn new(id: impl Into<String>, limits: Limits) -> Group {
        Group {
            id: id.into(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: Default::default(),
            rebalance_deadline_ms: 0,
            initial_rebalance: false,
            next_member: 0,
            limits,
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        format!("{client_id}-{}-{}", self.generation, self.next_member)
    }

    /// Handles a JoinGroup. `Wait` means the answer comes as a
    /// [`Completion::Join`] when the rebalance completes, which may be at
    /// once: the completions this join caused are returned with it.
    pub fn join(
        &mut self,
        now_ms: u64,
        req: JoinRequest,
    ) -> (Outcome<JoinResponse>, Vec<Completion>) {
        match self.join_inner(now_ms, req) {
            Outcome::Now(response) => (Outcome::Now(response), Vec::new()),
            Outcome::Wait => (Outcome::Wait, self.maybe_complete(now_ms)),
        }
    }

    fn join_inner(&mut self, now_ms: u64, req: JoinRequest) -> Outcome<JoinResponse> {
        if req.session_timeout_ms < self.limits.min_session_timeout_ms
            || req.session_timeout_ms > self.limits.max_session_timeout_ms
        {
            return Outcome::Now(JoinResponse::error(
                &req.member_id,
                code::INVALID_SESSION_TIMEOUT,
            ));
        }
        if req.protocols.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|t| !self.members.is_empty() && *t != req.protocol_type)
        {
            return Outcome::Now(JoinResponse::error(
                &req.member_id,
                code::INCONSISTENT_GROUP_PROTOCOL,
            ));
        }
        if !self.members.is_empty()
            && !self.members.values().any(|m| {
                m.id == req.member_id
                    || m.protocols
                        .iter()
                        .any(|(p, _)| req.protocols.iter().any(|(q, _)| p == q))
            })
        {
            return Outcome::Now(JoinResponse::error(
                &req.member_id,
                code::INCONSISTENT_GROUP_PROTOCOL,
            ));
        }
        if req.member_id.is_empty() {
            // KIP-394: hand out an id and have the member rejoin with it, so
            // a retried first join cannot create a ghost member.
            let id = self.new_member_id(&req.client_id);
            self.pending.insert(id.clone());
            return Outcome::Now(JoinResponse::error(&id, code::MEMBER_ID_REQUIRED));
        }
        if !self.members.contains_key(&req.member_id) && !self.pending.remove(&req.member_id) {
            return Outcome::Now(JoinResponse::error(&req.member_id, code::UNKNOWN_MEMBER_ID));
        }
        let unchanged_in_stable = self.state == GroupState::Stable
            && self
                .members
                .get(&req.member_id)
                .is_some_and(|m| m.protocols == req.protocols)
            && self.leader.as_deref() != Some(req.member_id.as_str());
        if unchanged_in_stable {
            // A follower rejoining with the same metadata: nothing changes.
            return Outcome::Now(self.join_response(&req.member_id));
        }
        self.add_member(now_ms, &req, req.member_id.clone(), true);
        self.prepare_rebalance(now_ms);
        Outcome::Wait
    }

    fn add_member(&mut self, now_ms: u64, req: &JoinRequest, id: String, joined: bool) {
        let member = self.members.entry(id.clone()).or_insert_with(|| Member {
            id,
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: Vec::new(),
            assignment: Vec::new(),
            last_heartbeat_ms: now_ms,
            joined: false,
            awaiting_sync: false,
        });
        member.protocols = req.protocols.clone();
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        member.joined |= joined;
        if self.protocol_type.is_none() || self.members.len() == 1 {
            self.protocol_type = Some(req.protocol_type.clone());
        }
    }

    fn prepare_rebalance(&mut self, now_ms: u64) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0);
        self.initial_rebalance = self.state == GroupState::Empty;
        self.rebalance_deadline_ms = if self.initial_rebalance {
            now_ms + self.limits.initial_rebalance_delay_ms
        } else {
            now_ms + timeout
        };
        self.state = GroupState::PreparingRebalance;
        for member in self.members.values_mut() {
            member.awaiting_sync = false;
        }
    }

    /// Ends a rebalance whose members have all rejoined, or whose deadline
    /// passed (dropping the absent), returning the JoinGroup answers.
    fn complete_join(&mut self) -> Vec<Completion> {
        self.members.retain(|_, m| m.joined);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.generation += 1;
            self.protocol = None;
            self.leader = None;
            return Vec::new();
        }
        self.generation += 1;
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        ids.iter()
            .map(|id| {
                if let Some(m) = self.members.get_mut(id) {
                    m.joined = false;
                    m.awaiting_sync = false;
                }
                Completion::Join(self.join_response(id))
            })
            .collect()
    }

    fn choose_protocol(&self) -> Option<String> {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            let supported_by_all = |name: &str| {
                self.members
                    .values()
                    .all(|o| o.protocols.iter().any(|(p, _)| p == name))
            };
            if let Some((name, _)) = m.protocols.iter().find(|(p, _)| supported_by_all(p)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(name, _)| name.to_string())
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            self.members
                .values()
                .map(|m| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(p, _)| Some(p) == self.protocol.as_ref())
                        .map(|(_, meta)| meta.clone())
                        .unwrap_or_default();
                    (m.id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error_code: code::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Handles a SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        now_ms: u64,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> (Outcome<(i16, Vec<u8>)>, Vec<Completion>) {
        let Some(member) = self.members.get_mut(member_id) else {
            return (
                Outcome::Now((code::UNKNOWN_MEMBER_ID, Vec::new())),
                Vec::new(),
            );
        };
        member.last_heartbeat_ms = now_ms;
        if generation != self.generation {
            return (
                Outcome::Now((code::ILLEGAL_GENERATION, Vec::new())),
                Vec::new(),
            );
        }
        match self.state {
            GroupState::Empty => (
                Outcome::Now((code::UNKNOWN_MEMBER_ID, Vec::new())),
                Vec::new(),
            ),
            GroupState::PreparingRebalance => (
                Outcome::Now((code::REBALANCE_IN_PROGRESS, Vec::new())),
                Vec::new(),
            ),
            GroupState::Stable => (
                Outcome::Now((code::NONE, member.assignment.clone())),
                Vec::new(),
            ),
            GroupState::CompletingRebalance => {
                member.awaiting_sync = true;
                if self.leader.as_deref() != Some(member_id) {
                    return (Outcome::Wait, Vec::new());
                }
                let mut given: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.id).unwrap_or_default();
                }
                self.state = GroupState::Stable;
                let mut done = Vec::new();
                for m in self.members.values_mut() {
                    if m.awaiting_sync && m.id != member_id {
                        done.push(Completion::Sync(
                            m.id.clone(),
                            code::NONE,
                            m.assignment.clone(),
                        ));
                    }
                    m.awaiting_sync = false;
                }
                let mine = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                (Outcome::Now((code::NONE, mine)), done)
            }
        }
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(&mut self, now_ms: u64, member_id: &str, generation: i32) -> i16 {
        let Some(member) = self.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        member.last_heartbeat_ms = now_ms;
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        match self.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            GroupState::Empty => code::UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => code::NONE,
        }
    }

    /// Handles a LeaveGroup for one member.
    pub fn leave(&mut self, now_ms: u64, member_id: &str) -> (i16, Vec<Completion>) {
        if self.members.remove(member_id).is_none() {
            return (code::UNKNOWN_MEMBER_ID, Vec::new());
        }
        (code::NONE, self.membership_changed(now_ms))
    }

    fn membership_changed(&mut self, now_ms: u64) -> Vec<Completion> {
        if self.members.is_empty() {
            let pending = self.state == GroupState::PreparingRebalance;
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            if pending {
                self.generation += 1;
            }
            return Vec::new();
        }
        let mut done = self.abort_pending_syncs();
        self.prepare_rebalance(now_ms);
        done.extend(self.maybe_complete(now_ms));
        done
    }

    /// Members waiting for a sync that will not come get REBALANCE_IN_PROGRESS.
    fn abort_pending_syncs(&mut self) -> Vec<Completion> {
        self.members
            .values_mut()
            .filter(|m| m.awaiting_sync)
            .map(|m| {
                m.awaiting_sync = false;
                Completion::Sync(m.id.clone(), code::REBALANCE_IN_PROGRESS, Vec::new())
            })
            .collect()
    }

    fn maybe_complete(&mut self, now_ms: u64) -> Vec<Completion> {
        if self.state != GroupState::PreparingRebalance {
            return Vec::new();
        }
        let all_joined = self.members.values().all(|m| m.joined);
        if (all_joined && !self.initial_rebalance) || now_ms >= self.rebalance_deadline_ms {
            self.complete_join()
        } else {
            Vec::new()
        }
    }

    /// Advances time: expires members whose session lapsed and completes a
    /// rebalance that is ready or past its deadline.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Completion> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !(self.state == GroupState::PreparingRebalance && m.joined))
            .filter(|m| {
                now_ms.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms.max(0) as u64
            })
            .map(|m| m.id.clone())
            .collect();
        let mut done = Vec::new();
        if !expired.is_empty() {
            for id in &expired {
                self.members.remove(id);
            }
            done.extend(self.membership_changed(now_ms));
        }
        done.extend(self.maybe_complete(now_ms));
        done
    }

    /// Whether an OffsetCommit from `member_id` at `generation` is allowed
    /// (a standalone consumer commits with no member and generation -1).
    pub fn check_commit(&self, member_id: &str, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            return if self.members.is_empty() {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            };
        }
        if !self.members.contains_key(member_id) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        // As in Kafka: members may still commit while a rebalance is being
        // prepared (that is how they commit what they processed before
        // giving partitions up), not while assignments are handed out.
        match self.state {
            GroupState::CompletingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            min_session_timeout_ms: 1000,
            max_session_timeout_ms: 60_000,
            initial_rebalance_delay_ms: 100,
        }
    }

    fn req(member: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member.to_string(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), p.as_bytes().to_vec()))
                .collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
        }
    }

    /// Joins a new member the KIP-394 way and returns its id.
    fn new_member(group: &mut Group, now: u64, protocols: &[&str]) -> String {
        match group.join(now, req("", protocols)).0 {
            Outcome::Now(r) => {
                assert_eq!(r.error_code, code::MEMBER_ID_REQUIRED);
                assert_eq!(
                    group.join(now, req(&r.member_id, protocols)).0,
                    Outcome::Wait
                );
                r.member_id
            }
            other => panic!("{other:?}"),
        }
    }

    fn joins(done: &[Completion]) -> Vec<&JoinResponse> {
        done.iter()
            .filter_map(|c| match c {
                Completion::Join(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn two_members_join_sync_and_become_stable() {
        let mut g = Group::new("g", limits());
        let a = new_member(&mut g, 0, &["range", "roundrobin"]);
        let b = new_member(&mut g, 10, &["roundrobin", "range"]);
        // The first rebalance waits out group.initial.rebalance.delay.ms.
        assert!(g.tick(50).is_empty());
        let done = g.tick(100);
        let answers = joins(&done);
        assert_eq!(answers.len(), 2);
        assert!(answers
            .iter()
            .all(|r| r.generation_id == 1 && r.error_code == 0));
        let leader = answers.iter().find(|r| !r.members.is_empty()).unwrap();
        assert_eq!(leader.members.len(), 2);
        assert_eq!(g.state, GroupState::CompletingRebalance);
        // Follower waits; the leader's sync completes it.
        let follower = if leader.member_id == a { &b } else { &a };
        assert_eq!(g.sync(101, follower, 1, vec![]).0, Outcome::Wait);
        let (mine, done) = g.sync(
            102,
            &leader.member_id,
            1,
            vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
        );
        assert!(matches!(mine, Outcome::Now((0, _))));
        assert_eq!(done.len(), 1);
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.heartbeat(103, &a, 1), code::NONE);
        assert_eq!(g.heartbeat(103, &a, 0), code::ILLEGAL_GENERATION);
        assert_eq!(g.check_commit(&a, 1), code::NONE);
        assert_eq!(g.check_commit("ghost", 1), code::UNKNOWN_MEMBER_ID);
    }

    /// A group whose two members joined and synced generation 1.
    fn stable_pair() -> (Group, String, String) {
        let mut g = Group::new("g", limits());
        let a = new_member(&mut g, 0, &["range"]);
        let b = new_member(&mut g, 0, &["range"]);
        g.tick(100);
        let leader = g.leader.clone().unwrap();
        g.sync(100, &leader, 1, vec![]);
        (g, a, b)
    }

    #[test]
    fn a_leaving_member_triggers_a_rebalance_that_the_rest_complete() {
        let (mut g, a, b) = stable_pair();
        assert_eq!(g.state, GroupState::Stable);
        let (code_left, _) = g.leave(200, &b);
        assert_eq!(code_left, code::NONE);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(g.heartbeat(201, &a, 1), code::REBALANCE_IN_PROGRESS);
        // Committing what it processed before rejoining is still allowed.
        assert_eq!(g.check_commit(&a, 1), code::NONE);
        // The only member left rejoins: the rebalance completes at once.
        let (outcome, done) = g.join(202, req(&a, &["range"]));
        assert_eq!(outcome, Outcome::Wait);
        assert_eq!(joins(&done)[0].generation_id, 2);
        assert_eq!(g.leader.as_deref(), Some(a.as_str()));
    }

    #[test]
    fn members_that_stop_heartbeating_are_expired() {
        let (mut g, a, b) = stable_pair();
        assert_eq!(g.heartbeat(9_000, &a, 1), code::NONE);
        g.tick(10_200);
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        // a rejoins; the rebalance completes without b.
        let (_, done) = g.join(10_300, req(&a, &["range"]));
        assert_eq!(joins(&done).len(), 1);
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_deadline() {
        let (mut g, a, b) = stable_pair();
        // A third member joins; only a rejoins before the 5 s deadline.
        let c = new_member(&mut g, 1_000, &["range"]);
        g.join(1_100, req(&a, &["range"]));
        assert!(joins(&g.tick(2_000)).is_empty());
        let done = g.tick(6_001);
        let ids: Vec<&str> = joins(&done).iter().map(|r| r.member_id.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&a.as_str()) && ids.contains(&c.as_str()));
        assert!(!g.members.contains_key(&b));
    }

    #[test]
    fn bad_joins_get_kafkas_errors() {
        let mut g = Group::new("g", limits());
        let mut short = req("", &["range"]);
        short.session_timeout_ms = 10;
        assert!(
            matches!(g.join(0, short).0, Outcome::Now(r) if r.error_code == code::INVALID_SESSION_TIMEOUT)
        );
        assert!(
            matches!(g.join(0, req("nobody", &["range"])).0, Outcome::Now(r) if r.error_code == code::UNKNOWN_MEMBER_ID)
        );
        new_member(&mut g, 0, &["range"]);
        assert!(
            matches!(g.join(0, req("", &["sticky"])).0, Outcome::Now(r) if r.error_code == code::INCONSISTENT_GROUP_PROTOCOL)
        );
        assert_eq!(g.check_commit("", -1), code::UNKNOWN_MEMBER_ID);
        assert_eq!(Group::new("h", limits()).check_commit("", -1), code::NONE);
    }
}
