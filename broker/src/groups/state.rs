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
//!
//! Member ids are `{client_id}-{uuid}` (`{group.instance.id}-{uuid}` for
//! static members), drawn by the shell: ids never repeat, so a zombie
//! from before a broker restart cannot pass for a live member. An id
//! handed out with MEMBER_ID_REQUIRED is *pending* until the member rejoins
//! with it, and is forgotten if it has not within the session timeout.
//!
//! Static membership (KIP-345): a member with a `group.instance.id` that
//! rejoins without its member id (it restarted) takes over its previous
//! member's place and assignment; in a Stable group whose protocol it does
//! not change, without a rebalance. The replaced member id is fenced:
//! anything it sends afterwards gets FENCED_INSTANCE_ID.
//!
//! Commits and rebalances: an OffsetCommit is checked against the
//! generation here ([`Group::begin_commit`]) and appended to
//! `__consumer_offsets` by the shell afterwards. While any checked commit
//! is still being appended, the group does not move to the next generation
//! ([`Group::end_commit`] lets it), so a commit accepted for generation N
//! is always in the log before any member of generation N+1 gets its
//! assignment and fetches its offsets.

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
    pub const FENCED_INSTANCE_ID: i16 = 82;
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
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
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
    /// `group.instance.id` (JoinGroup v5+): the member is static.
    pub group_instance_id: Option<String>,
    /// The id this request's member gets if the group makes it a new
    /// member (drawn by the shell; see the module documentation). When a
    /// request without a member id is told to wait, it waits as this id.
    pub new_member_id: String,
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
    /// Every member's id, `group.instance.id` and metadata for the chosen
    /// protocol; only the leader gets them.
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
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

/// A group's membership as `__consumer_offsets` keeps it (Kafka's group
/// metadata record): written when a rebalance ends (the group is stable)
/// or the group empties, so that a broker that takes over coordinating it
/// knows its generation, members and their assignments, and the members
/// go on without a rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// Whether a group's persisted view may have changed: its generation, its
/// member count, and whether it is stable or empty (`None` mid-rebalance,
/// when nothing is written). Cheap, for every request to compare.
pub type StoredKey = Option<(i32, usize)>;

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
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined,
    /// with the time after which they are forgotten.
    pending: BTreeMap<String, u64>,
    /// Static members: `group.instance.id` → the member id that holds it.
    static_members: BTreeMap<String, String>,
    /// OffsetCommits checked but not yet appended; the generation does not
    /// move while there are any.
    commits_in_flight: u32,
    /// When the rebalance in progress completes without stragglers.
    rebalance_deadline_ms: u64,
    /// The rebalance started from Empty: it waits out the initial delay so
    /// that a group's members arriving together share one generation.
    initial_rebalance: bool,
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
            pending: BTreeMap::new(),
            static_members: BTreeMap::new(),
            commits_in_flight: 0,
            rebalance_deadline_ms: 0,
            initial_rebalance: false,
            limits,
        }
    }

    /// See [`StoredKey`].
    pub fn stored_key(&self) -> StoredKey {
        // A group that never had members (offsets committed by a client
        // outside any group membership) has no membership to keep.
        let never_formed = self.state == GroupState::Empty && self.generation == 0;
        (matches!(self.state, GroupState::Stable | GroupState::Empty) && !never_formed)
            .then_some((self.generation, self.members.len()))
    }

    /// What to persist of the group now: a stable group's generation and
    /// members, or an empty group's generation; `None` mid-rebalance (the
    /// last stable view stays the persisted one).
    pub fn stored(&self) -> Option<Stored> {
        self.stored_key()?;
        Some(Stored {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m
                        .protocols
                        .iter()
                        .find(|(name, _)| Some(name) == self.protocol.as_ref())
                        .map(|(_, meta)| meta.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// The group as a coordinator taking it over finds it in `stored`:
    /// stable with its members, each given a fresh session from `now_ms`
    /// (as Kafka's new coordinator does), or empty.
    pub fn restored(id: impl Into<String>, limits: Limits, stored: Stored, now_ms: u64) -> Group {
        let mut group = Group::new(id, limits);
        group.generation = stored.generation;
        group.protocol_type = Some(stored.protocol_type).filter(|t| !t.is_empty());
        group.protocol = stored.protocol;
        group.leader = stored.leader;
        for m in stored.members {
            if let Some(instance) = &m.group_instance_id {
                group.static_members.insert(instance.clone(), m.id.clone());
            }
            let protocols = group
                .protocol
                .iter()
                .map(|p| (p.clone(), m.subscription.clone()))
                .collect();
            group.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols,
                    assignment: m.assignment,
                    last_heartbeat_ms: now_ms,
                    joined: false,
                    awaiting_sync: false,
                },
            );
        }
        group.state = if group.members.is_empty() {
            group.leader = None;
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    /// Whether `member_id` claims a `group.instance.id` that another member
    /// id now holds (it was replaced by a restarted instance).
    fn is_fenced(&self, group_instance_id: Option<&str>, member_id: &str) -> bool {
        group_instance_id
            .and_then(|instance| self.static_members.get(instance))
            .is_some_and(|holder| holder != member_id)
    }

    /// Removes a member and its static mapping.
    fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.remove(member_id)?;
        if let Some(instance) = &member.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        Some(member)
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
            (Outcome::Now(response), done) => (Outcome::Now(response), done),
            (Outcome::Wait, mut done) => {
                done.extend(self.maybe_complete(now_ms));
                (Outcome::Wait, done)
            }
        }
    }

    fn join_inner(
        &mut self,
        now_ms: u64,
        req: JoinRequest,
    ) -> (Outcome<JoinResponse>, Vec<Completion>) {
        let now = |error| {
            (
                Outcome::Now(JoinResponse::error(&req.member_id, error)),
                Vec::new(),
            )
        };
        if req.session_timeout_ms < self.limits.min_session_timeout_ms
            || req.session_timeout_ms > self.limits.max_session_timeout_ms
        {
            return now(code::INVALID_SESSION_TIMEOUT);
        }
        if req.protocols.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|t| !self.members.is_empty() && *t != req.protocol_type)
        {
            return now(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if !self.members.is_empty()
            && !self.members.values().any(|m| {
                m.id == req.member_id
                    || m.protocols
                        .iter()
                        .any(|(p, _)| req.protocols.iter().any(|(q, _)| p == q))
            })
        {
            return now(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if req.member_id.is_empty() {
            let id = req.new_member_id.clone();
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old) = self.static_members.get(&instance).cloned() {
                    return self.replace_static_member(now_ms, &req, &old, id);
                }
                // Kafka asks only dynamic members for the KIP-394 round
                // trip: a static member's identity is its instance id.
                self.static_members.insert(instance, id.clone());
                self.add_member(now_ms, &req, id, true);
                self.prepare_rebalance(now_ms);
                return (Outcome::Wait, Vec::new());
            }
            // KIP-394: hand out an id and have the member rejoin with it, so
            // a retried first join cannot create a ghost member.
            let deadline = now_ms.saturating_add(req.session_timeout_ms.max(0) as u64);
            self.pending.insert(id.clone(), deadline);
            return (
                Outcome::Now(JoinResponse::error(&id, code::MEMBER_ID_REQUIRED)),
                Vec::new(),
            );
        }
        if self.is_fenced(req.group_instance_id.as_deref(), &req.member_id) {
            return now(code::FENCED_INSTANCE_ID);
        }
        if !self.members.contains_key(&req.member_id)
            && self.pending.remove(&req.member_id).is_none()
        {
            return now(code::UNKNOWN_MEMBER_ID);
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .entry(instance.clone())
                .or_insert_with(|| req.member_id.clone());
        }
        let unchanged_in_stable = self.state == GroupState::Stable
            && self
                .members
                .get(&req.member_id)
                .is_some_and(|m| m.protocols == req.protocols)
            && self.leader.as_deref() != Some(req.member_id.as_str());
        if unchanged_in_stable {
            // A follower rejoining with the same metadata: nothing changes.
            return (Outcome::Now(self.join_response(&req.member_id)), Vec::new());
        }
        self.add_member(now_ms, &req, req.member_id.clone(), true);
        self.prepare_rebalance(now_ms);
        (Outcome::Wait, Vec::new())
    }

    /// A static member rejoined without its member id (it restarted): `new`
    /// takes `old`'s place, assignment and leadership, and `old` is fenced.
    /// In a Stable group whose protocol does not change, the member gets
    /// the current generation back at once and no rebalance starts; the
    /// answer names the old leader id, so a restarted leader does not
    /// compute an assignment a Stable group would never hand out.
    fn replace_static_member(
        &mut self,
        now_ms: u64,
        req: &JoinRequest,
        old: &str,
        new: String,
    ) -> (Outcome<JoinResponse>, Vec<Completion>) {
        let Some(mut member) = self.members.remove(old) else {
            // The mapping outlived its member: treat the join as a new one.
            if let Some(instance) = &req.group_instance_id {
                self.static_members.remove(instance);
            }
            return self.join_inner(now_ms, req.clone());
        };
        let mut fenced = Vec::new();
        if member.joined {
            fenced.push(Completion::Join(JoinResponse::error(
                old,
                code::FENCED_INSTANCE_ID,
            )));
        }
        if member.awaiting_sync {
            fenced.push(Completion::Sync(
                old.to_string(),
                code::FENCED_INSTANCE_ID,
                Vec::new(),
            ));
        }
        let old_leader = self.leader.clone().unwrap_or_default();
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.clone());
        }
        member.id = new.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.joined = false;
        member.awaiting_sync = false;
        self.members.insert(new.clone(), member);
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), new.clone());
        }
        self.add_member(now_ms, req, new.clone(), false);
        if self.state == GroupState::Stable && self.choose_protocol() == self.protocol {
            let mut answer = self.join_response(&new);
            answer.leader = old_leader;
            answer.members.clear();
            return (Outcome::Now(answer), fenced);
        }
        // Stable with a protocol change, as in Kafka: rebalance. Completing:
        // the leader may already be assigning to the old id, so the group
        // rebalances again. Preparing: the member joins this rebalance.
        if let Some(m) = self.members.get_mut(&new) {
            m.joined = true;
        }
        fenced.extend(self.abort_pending_syncs());
        self.prepare_rebalance(now_ms);
        (Outcome::Wait, fenced)
    }

    fn add_member(&mut self, now_ms: u64, req: &JoinRequest, id: String, joined: bool) {
        let member = self.members.entry(id.clone()).or_insert_with(|| Member {
            id,
            group_instance_id: req.group_instance_id.clone(),
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
        let absent: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.joined)
            .map(|m| m.id.clone())
            .collect();
        for id in &absent {
            self.remove_member(id);
        }
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
                    (m.id.clone(), m.group_instance_id.clone(), metadata)
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
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> (Outcome<(i16, Vec<u8>)>, Vec<Completion>) {
        if self.is_fenced(group_instance_id, member_id) {
            return (
                Outcome::Now((code::FENCED_INSTANCE_ID, Vec::new())),
                Vec::new(),
            );
        }
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
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
    ) -> i16 {
        if self.is_fenced(group_instance_id, member_id) {
            return code::FENCED_INSTANCE_ID;
        }
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
    pub fn leave(
        &mut self,
        now_ms: u64,
        group_instance_id: Option<&str>,
        member_id: &str,
    ) -> (i16, Vec<Completion>) {
        // LeaveGroup v3+ may name a static member by its instance id alone
        // (the admin client's "remove members from consumer group").
        let resolved;
        let member_id = match group_instance_id {
            Some(instance) if member_id.is_empty() => {
                let Some(holder) = self.static_members.get(instance) else {
                    return (code::UNKNOWN_MEMBER_ID, Vec::new());
                };
                resolved = holder.clone();
                resolved.as_str()
            }
            _ => member_id,
        };
        if self.is_fenced(group_instance_id, member_id) {
            return (code::FENCED_INSTANCE_ID, Vec::new());
        }
        if self.remove_member(member_id).is_none() {
            return (code::UNKNOWN_MEMBER_ID, Vec::new());
        }
        (code::NONE, self.membership_changed(now_ms))
    }

    fn membership_changed(&mut self, now_ms: u64) -> Vec<Completion> {
        if self.members.is_empty() && self.state != GroupState::PreparingRebalance {
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            return Vec::new();
        }
        let mut done = self.abort_pending_syncs();
        self.prepare_rebalance(now_ms);
        if self.members.is_empty() {
            // Nobody is left to wait for: the rebalance ends (into Empty,
            // with a new generation) as soon as no commit is in flight.
            self.rebalance_deadline_ms = now_ms;
        }
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
        if self.state != GroupState::PreparingRebalance || self.commits_in_flight > 0 {
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
        self.pending.retain(|_, deadline| now_ms <= *deadline);
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
                self.remove_member(id);
            }
            done.extend(self.membership_changed(now_ms));
        }
        done.extend(self.maybe_complete(now_ms));
        done
    }

    /// Whether an OffsetCommit from `member_id` at `generation` is allowed
    /// (a standalone consumer commits with no member and generation -1).
    pub fn check_commit(
        &self,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
    ) -> i16 {
        if self.is_fenced(group_instance_id, member_id) {
            return code::FENCED_INSTANCE_ID;
        }
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

    /// Checks an OffsetCommit as [`Group::check_commit`] does; if it is
    /// allowed, the group stays in its generation until the matching
    /// [`Group::end_commit`] (the shell appends the offsets in between).
    pub fn begin_commit(
        &mut self,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
    ) -> i16 {
        let verdict = self.check_commit(group_instance_id, member_id, generation);
        if verdict == code::NONE {
            self.commits_in_flight += 1;
        }
        verdict
    }

    /// A commit allowed by [`Group::begin_commit`] was appended (or failed):
    /// a rebalance it held back may complete now.
    pub fn end_commit(&mut self, now_ms: u64) -> Vec<Completion> {
        debug_assert!(
            self.commits_in_flight > 0,
            "end_commit without begin_commit"
        );
        self.commits_in_flight = self.commits_in_flight.saturating_sub(1);
        self.maybe_complete(now_ms)
    }

    /// How many member ids wait for their KIP-394 rejoin.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
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
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        JoinRequest {
            member_id: member.to_string(),
            group_instance_id: None,
            new_member_id: format!("c-{n}"),
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
        assert_eq!(g.sync(101, None, follower, 1, vec![]).0, Outcome::Wait);
        let (mine, done) = g.sync(
            102,
            None,
            &leader.member_id,
            1,
            vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
        );
        assert!(matches!(mine, Outcome::Now((0, _))));
        assert_eq!(done.len(), 1);
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.heartbeat(103, None, &a, 1), code::NONE);
        assert_eq!(g.heartbeat(103, None, &a, 0), code::ILLEGAL_GENERATION);
        assert_eq!(g.check_commit(None, &a, 1), code::NONE);
        assert_eq!(g.check_commit(None, "ghost", 1), code::UNKNOWN_MEMBER_ID);
    }

    /// A group whose two members joined and synced generation 1.
    fn stable_pair() -> (Group, String, String) {
        let mut g = Group::new("g", limits());
        let a = new_member(&mut g, 0, &["range"]);
        let b = new_member(&mut g, 0, &["range"]);
        g.tick(100);
        let leader = g.leader.clone().unwrap();
        g.sync(100, None, &leader, 1, vec![]);
        (g, a, b)
    }

    #[test]
    fn a_stable_group_restored_elsewhere_keeps_its_members_generation_and_assignments() {
        let (mut g, a, b) = stable_pair();
        let stored = g.stored().expect("a stable group is stored");
        assert_eq!((stored.generation, stored.members.len()), (1, 2));
        // Another coordinator takes over later: each member has a fresh
        // session, and its heartbeats and syncs go on at generation 1.
        let mut moved = Group::restored("g", limits(), stored, 50_000);
        assert_eq!(moved.state, GroupState::Stable);
        assert_eq!(moved.leader, g.leader);
        assert_eq!(moved.heartbeat(50_100, None, &a, 1), code::NONE);
        assert_eq!(moved.heartbeat(50_100, None, &b, 1), code::NONE);
        let (outcome, _) = moved.sync(50_200, None, &b, 1, vec![]);
        assert_eq!(
            outcome,
            Outcome::Now((code::NONE, g.members[&b].assignment.clone()))
        );
        // Nothing is stored mid-rebalance: the last stable view stands.
        g.leave(200, None, &b);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!((g.stored(), g.stored_key()), (None, None));
        // An empty group keeps its generation.
        g.leave(300, None, &a);
        let empty = Group::restored("g", limits(), g.stored().expect("stored"), 400);
        assert_eq!(empty.state, GroupState::Empty);
        assert_eq!(empty.generation, g.generation);
    }

    #[test]
    fn a_leaving_member_triggers_a_rebalance_that_the_rest_complete() {
        let (mut g, a, b) = stable_pair();
        assert_eq!(g.state, GroupState::Stable);
        let (code_left, _) = g.leave(200, None, &b);
        assert_eq!(code_left, code::NONE);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(g.heartbeat(201, None, &a, 1), code::REBALANCE_IN_PROGRESS);
        // Committing what it processed before rejoining is still allowed.
        assert_eq!(g.check_commit(None, &a, 1), code::NONE);
        // The only member left rejoins: the rebalance completes at once.
        let (outcome, done) = g.join(202, req(&a, &["range"]));
        assert_eq!(outcome, Outcome::Wait);
        assert_eq!(joins(&done)[0].generation_id, 2);
        assert_eq!(g.leader.as_deref(), Some(a.as_str()));
    }

    #[test]
    fn members_that_stop_heartbeating_are_expired() {
        let (mut g, a, b) = stable_pair();
        assert_eq!(g.heartbeat(9_000, None, &a, 1), code::NONE);
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
        assert_eq!(g.check_commit(None, "", -1), code::UNKNOWN_MEMBER_ID);
        assert_eq!(
            Group::new("h", limits()).check_commit(None, "", -1),
            code::NONE
        );
    }

    #[test]
    fn pending_member_ids_expire_after_the_session_timeout() {
        let mut g = Group::new("g", limits());
        let Outcome::Now(first) = g.join(0, req("", &["range"])).0 else {
            panic!("a new member is asked for its id first");
        };
        assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
        assert_eq!(g.pending_count(), 1);
        // The request's session timeout is 10 s: still pending at 10 s.
        g.tick(10_000);
        assert_eq!(g.pending_count(), 1);
        g.tick(10_001);
        assert_eq!(g.pending_count(), 0);
        assert!(matches!(
            g.join(10_002, req(&first.member_id, &["range"])).0,
            Outcome::Now(r) if r.error_code == code::UNKNOWN_MEMBER_ID
        ));
    }

    fn static_req(member: &str, instance: &str, new_id: &str) -> JoinRequest {
        let mut r = req(member, &["range"]);
        r.group_instance_id = Some(instance.to_string());
        r.new_member_id = new_id.to_string();
        r
    }

    /// Two static members ("ia" as "a1", "ib" as "b1") synced in
    /// generation 1 with assignments "A" and "B".
    fn stable_static_pair() -> Group {
        let mut g = Group::new("g", limits());
        // Static members skip the MEMBER_ID_REQUIRED round trip.
        assert_eq!(g.join(0, static_req("", "ia", "a1")).0, Outcome::Wait);
        assert_eq!(g.join(0, static_req("", "ib", "b1")).0, Outcome::Wait);
        assert_eq!(joins(&g.tick(100)).len(), 2);
        assert_eq!(g.leader.as_deref(), Some("a1"));
        let assignments = vec![("a1".into(), b"A".to_vec()), ("b1".into(), b"B".to_vec())];
        let (mine, _) = g.sync(100, Some("ia"), "a1", 1, assignments);
        assert_eq!(mine, Outcome::Now((code::NONE, b"A".to_vec())));
        assert_eq!(g.state, GroupState::Stable);
        g
    }

    #[test]
    fn a_restarted_static_member_gets_its_assignment_back_without_a_rebalance() {
        let mut g = stable_static_pair();
        let (outcome, done) = g.join(500, static_req("", "ib", "b2"));
        assert!(done.is_empty());
        let Outcome::Now(answer) = outcome else {
            panic!("a known static member is answered at once: {outcome:?}");
        };
        assert_eq!(answer.error_code, code::NONE);
        assert_eq!(answer.member_id, "b2");
        assert_eq!(answer.generation_id, 1);
        assert_eq!(answer.leader, "a1");
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.generation, 1);
        assert_eq!(
            g.sync(501, Some("ib"), "b2", 1, vec![]).0,
            Outcome::Now((code::NONE, b"B".to_vec()))
        );
        assert_eq!(g.heartbeat(502, Some("ib"), "b2", 1), code::NONE);
        // The replaced member id is fenced everywhere.
        assert_eq!(
            g.heartbeat(502, Some("ib"), "b1", 1),
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            g.check_commit(Some("ib"), "b1", 1),
            code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            g.sync(502, Some("ib"), "b1", 1, vec![]).0,
            Outcome::Now((code::FENCED_INSTANCE_ID, Vec::new()))
        );
        assert!(matches!(
            g.join(502, static_req("b1", "ib", "x")).0,
            Outcome::Now(r) if r.error_code == code::FENCED_INSTANCE_ID
        ));
        assert_eq!(g.leave(502, Some("ib"), "b1").0, code::FENCED_INSTANCE_ID);
        assert_eq!(g.members.len(), 2);
    }

    #[test]
    fn a_static_member_can_be_removed_by_its_instance_id_alone() {
        let mut g = stable_static_pair();
        assert_eq!(g.leave(500, Some("nobody"), "").0, code::UNKNOWN_MEMBER_ID);
        assert_eq!(g.leave(500, Some("ib"), "").0, code::NONE);
        assert!(!g.members.contains_key("b1"));
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn the_leader_learns_every_members_instance_id() {
        let g = stable_static_pair();
        let answer = g.join_response("a1");
        let instances: Vec<Option<&str>> = answer
            .members
            .iter()
            .map(|(_, i, _)| i.as_deref())
            .collect();
        assert_eq!(instances, vec![Some("ia"), Some("ib")]);
    }

    #[test]
    fn a_restarted_static_leader_is_not_told_to_assign() {
        let mut g = stable_static_pair();
        let Outcome::Now(answer) = g.join(500, static_req("", "ia", "a2")).0 else {
            panic!("answered at once");
        };
        // The answer names the old leader id, so the new one does not think
        // it leads; the group knows the new id as its leader.
        assert_eq!(answer.leader, "a1");
        assert!(answer.members.is_empty());
        assert_eq!(g.leader.as_deref(), Some("a2"));
        assert_eq!(
            g.sync(501, Some("ia"), "a2", 1, vec![]).0,
            Outcome::Now((code::NONE, b"A".to_vec()))
        );
    }

    #[test]
    fn a_static_member_lapsing_its_session_frees_its_instance_id() {
        let mut g = stable_static_pair();
        g.heartbeat(9_000, Some("ia"), "a1", 1);
        g.tick(10_101);
        assert!(!g.members.contains_key("b1"));
        // "ib" is unknown now: a join with it makes a new member.
        assert_eq!(g.join(10_200, static_req("", "ib", "b3")).0, Outcome::Wait);
        assert!(g.members.contains_key("b3"));
    }

    #[test]
    fn a_commit_in_flight_holds_the_next_generation_back() {
        let (mut g, a, b) = stable_pair();
        assert_eq!(g.begin_commit(None, &a, 1), code::NONE);
        g.leave(200, None, &b);
        // a rejoins: every member has joined, yet generation 1 stays while
        // the commit checked against it is being appended.
        let (outcome, done) = g.join(201, req(&a, &["range"]));
        assert_eq!(outcome, Outcome::Wait);
        assert!(done.is_empty());
        assert!(g.tick(60_000).is_empty());
        assert_eq!(g.generation, 1);
        assert_eq!(g.check_commit(None, &a, 1), code::NONE);
        let done = g.end_commit(60_001);
        assert_eq!(joins(&done).len(), 1);
        assert_eq!(joins(&done)[0].generation_id, 2);
        // A refused commit holds nothing back.
        assert_eq!(g.begin_commit(None, &a, 1), code::ILLEGAL_GENERATION);
        assert_eq!(g.commits_in_flight, 0);
    }

    #[test]
    fn the_last_member_leaving_mid_rebalance_waits_for_commits_in_flight() {
        let (mut g, a, b) = stable_pair();
        g.leave(200, None, &b);
        assert_eq!(g.begin_commit(None, &a, 1), code::NONE);
        g.leave(201, None, &a);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(g.generation, 1);
        g.end_commit(202);
        assert_eq!(g.state, GroupState::Empty);
        assert_eq!(g.generation, 2);
    }
}
