//! The group coordinator's shell around the pure [`Group`] state machine:
//! it parks JoinGroup and SyncGroup requests that must wait for a
//! rebalance step, delivers the answers when [`Group`] produces them, ticks
//! time forward, and keeps the groups' committed offsets.
//!
//! Shared by every shard's connections; a group's lock (one per stripe of
//! groups, by `__consumer_offsets` partition) is held only for the
//! state machine's synchronous steps, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures_channel::oneshot;

use super::state::{
    code, Completion, Group, JoinRequest, JoinResponse, Limits, Outcome, Stored, StoredKey,
};

/// A committed offset, as OffsetCommit stores and OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Default)]
struct Entry {
    group: Option<Group>,
    join_waiters: HashMap<String, oneshot::Sender<JoinResponse>>,
    sync_waiters: HashMap<String, oneshot::Sender<(i16, Vec<u8>)>>,
    offsets: BTreeMap<(String, i32), Committed>,
    /// The view of the group last written to (or read from)
    /// `__consumer_offsets`.
    stored_key: StoredKey,
}

impl Entry {
    fn deliver(&mut self, completions: Vec<Completion>) {
        for completion in completions {
            match completion {
                Completion::Join(response) => {
                    if let Some(tx) = self.join_waiters.remove(&response.member_id) {
                        // The member may have given up waiting; nothing to do.
                        drop(tx.send(response));
                    }
                }
                Completion::Sync(member, error, assignment) => {
                    if let Some(tx) = self.sync_waiters.remove(&member) {
                        drop(tx.send((error, assignment)));
                    }
                }
            }
        }
    }
}

/// An OffsetCommit that passed its generation check and is being appended;
/// see [`Coordinator::begin_commit`].
pub struct CommitGuard<'a> {
    coordinator: &'a Coordinator,
    group_id: String,
}

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        self.coordinator.end_commit(&self.group_id);
    }
}

/// A fresh member id: `{client_id}-{uuid}`, or `{group.instance.id}-{uuid}`
/// for a static member, as Kafka makes them. Random, so that no id given
/// out before a broker restart is given out again after it.
pub fn new_member_id(client_id: &str, group_instance_id: Option<&str>) -> String {
    let prefix = group_instance_id.unwrap_or(client_id);
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// An answer now, or a receiver that yields it when the rebalance step ends.
pub enum Wait<T> {
    Ready(T),
    Later(oneshot::Receiver<T>),
}

/// Every group of this broker.
pub struct Coordinator {
    limits: Limits,
    /// Groups split by their `__consumer_offsets` partition, one lock
    /// each (as Kafka's coordinator shards by that partition), so that
    /// requests of different groups rarely wait on each other.
    groups: Vec<Mutex<HashMap<String, Entry>>>,
    /// Groups whose persisted view is behind (see [`Coordinator::take_dirty`]).
    dirty: Mutex<std::collections::BTreeSet<String>>,
}

/// What DescribeGroups and ListGroups show of a group.
#[derive(Debug, Clone)]
pub struct Description {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// One member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

impl Coordinator {
    pub fn new(limits: Limits) -> Coordinator {
        Coordinator {
            limits,
            groups: (0..super::offsets_topic::PARTITIONS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            dirty: Mutex::default(),
        }
    }

    /// The lock over `group_id`'s stripe of the groups.
    fn stripe(&self, group_id: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let index = super::offsets_topic::partition_for(group_id) as usize % self.groups.len();
        self.groups[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every group of `__consumer_offsets` partition `partition`
    /// (this broker stopped leading it, or is about to replay it).
    pub fn clear_partition(&self, partition: i32) {
        if let Some(stripe) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.groups.get(p))
        {
            stripe.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Every stripe's lock, one after another.
    fn stripes(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, HashMap<String, Entry>>> {
        self.groups
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with<T>(&self, group_id: &str, f: impl FnOnce(&mut Entry, Limits) -> T) -> T {
        let mut groups = self.stripe(group_id);
        let entry = groups.entry(group_id.to_string()).or_default();
        let out = f(entry, self.limits);
        let key = entry.group.as_ref().and_then(Group::stored_key);
        if key.is_some() && key != entry.stored_key {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group_id.to_string());
        }
        out
    }

    /// The groups whose membership changed since it was last persisted
    /// (a rebalance ended, or the group emptied), each with what to write
    /// now and the view that is. Taken once: a failed write is not retried
    /// until the group changes again.
    pub fn take_dirty(&self) -> Vec<(String, Stored, StoredKey)> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        dirty
            .into_iter()
            .filter_map(|id| {
                let groups = self.stripe(&id);
                let group = groups.get(&id)?.group.as_ref()?;
                let stored = group.stored()?;
                Some((id.clone(), stored, group.stored_key()))
            })
            .collect()
    }

    /// Every group whose membership changed since it was persisted, with
    /// what to write: what a broker writes before it stops (the background
    /// writer may not have got to it yet).
    pub fn unsaved(&self) -> Vec<(String, Stored, StoredKey)> {
        let mut out = Vec::new();
        for groups in self.stripes() {
            for (id, entry) in groups.iter() {
                let Some(group) = entry.group.as_ref() else {
                    continue;
                };
                let key = group.stored_key();
                if key.is_some() && key != entry.stored_key {
                    if let Some(stored) = group.stored() {
                        out.push((id.clone(), stored, key));
                    }
                }
            }
        }
        out
    }

    /// Notes that `key`'s view of the group is persisted.
    pub fn mark_stored(&self, group_id: &str, key: StoredKey) {
        if let Some(entry) = self.stripe(group_id).get_mut(group_id) {
            entry.stored_key = key;
        }
    }

    /// Restores a group's membership read back from `__consumer_offsets`
    /// (`None`: a tombstone) as of `now_ms`.
    pub fn restore_group(&self, group_id: &str, stored: Option<Stored>, now_ms: u64) {
        let mut groups = self.stripe(group_id);
        let entry = groups.entry(group_id.to_string()).or_default();
        entry.group = stored.map(|s| Group::restored(group_id, self.limits, s, now_ms));
        entry.stored_key = entry.group.as_ref().and_then(Group::stored_key);
    }

    /// What is persisted of each group `keep` selects that has a view to
    /// persist: for a compaction to write again.
    pub fn stored_where(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, Stored)> {
        let mut out = Vec::new();
        for groups in self.stripes() {
            out.extend(
                groups
                    .iter()
                    .filter(|(id, _)| keep(id))
                    .filter_map(|(id, e)| Some((id.clone(), e.group.as_ref()?.stored()?))),
            );
        }
        out
    }

    pub fn join(&self, group_id: &str, now_ms: u64, req: JoinRequest) -> Wait<JoinResponse> {
        self.with(group_id, |entry, limits| {
            // A request without a member id that is told to wait (a new
            // static member, or a restarted one replacing its old id)
            // waits as the id the group gave it.
            let member = if req.member_id.is_empty() {
                req.new_member_id.clone()
            } else {
                req.member_id.clone()
            };
            let group = entry
                .group
                .get_or_insert_with(|| Group::new(group_id, limits));
            let (outcome, completions) = group.join(now_ms, req);
            let wait = match outcome {
                Outcome::Now(response) => Wait::Ready(response),
                Outcome::Wait => {
                    let (tx, rx) = oneshot::channel();
                    // A second join from the same member replaces the first.
                    entry.join_waiters.insert(member, tx);
                    Wait::Later(rx)
                }
            };
            entry.deliver(completions);
            wait
        })
    }

    pub fn sync(
        &self,
        group_id: &str,
        now_ms: u64,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> Wait<(i16, Vec<u8>)> {
        self.with(group_id, |entry, _| {
            let Some(group) = entry.group.as_mut() else {
                return Wait::Ready((code::UNKNOWN_MEMBER_ID, Vec::new()));
            };
            let (outcome, completions) = group.sync(
                now_ms,
                group_instance_id,
                member_id,
                generation,
                assignments,
            );
            let wait = match outcome {
                Outcome::Now(answer) => Wait::Ready(answer),
                Outcome::Wait => {
                    let (tx, rx) = oneshot::channel();
                    entry.sync_waiters.insert(member_id.to_string(), tx);
                    Wait::Later(rx)
                }
            };
            entry.deliver(completions);
            wait
        })
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        now_ms: u64,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
    ) -> i16 {
        self.with(group_id, |entry, _| match entry.group.as_mut() {
            Some(group) => group.heartbeat(now_ms, group_instance_id, member_id, generation),
            None => code::UNKNOWN_MEMBER_ID,
        })
    }

    pub fn leave(
        &self,
        group_id: &str,
        now_ms: u64,
        group_instance_id: Option<&str>,
        member_id: &str,
    ) -> i16 {
        self.with(group_id, |entry, _| {
            let Some(group) = entry.group.as_mut() else {
                return code::UNKNOWN_MEMBER_ID;
            };
            let (error, completions) = group.leave(now_ms, group_instance_id, member_id);
            entry.deliver(completions);
            error
        })
    }

    /// Advances every group's clock, delivering what that completes.
    pub fn tick(&self, now_ms: u64) {
        for mut groups in self.stripes() {
            for entry in groups.values_mut() {
                if let Some(group) = entry.group.as_mut() {
                    let completions = group.tick(now_ms);
                    entry.deliver(completions);
                }
            }
        }
    }

    /// Checks an OffsetCommit from `member_id` at `generation`: the Kafka
    /// error code that applies to all its partitions, or a guard to hold
    /// while the offsets are appended to `__consumer_offsets`.
    ///
    /// The check and the append are atomic with respect to a rebalance:
    /// while a guard lives, the group does not move to its next generation
    /// (see [`Group::begin_commit`]), so a commit checked against
    /// generation N is in the log before any member of generation N+1 is
    /// answered. Dropping the guard (after the append, after a failure, or
    /// when the request's task is cancelled) lets a held-back rebalance
    /// complete.
    pub fn begin_commit(
        &self,
        group_id: &str,
        group_instance_id: Option<&str>,
        member_id: &str,
        generation: i32,
    ) -> Result<CommitGuard<'_>, i16> {
        self.with(group_id, |entry, limits| {
            let group = entry
                .group
                .get_or_insert_with(|| Group::new(group_id, limits));
            let verdict = group.begin_commit(group_instance_id, member_id, generation);
            if verdict == code::NONE {
                return Ok(CommitGuard {
                    coordinator: self,
                    group_id: group_id.to_string(),
                });
            }
            tracing::debug!(
                group = group_id,
                member = member_id,
                generation,
                current = group.generation,
                state = ?group.state,
                verdict,
                "offset commit refused"
            );
            Err(verdict)
        })
    }

    fn end_commit(&self, group_id: &str) {
        let now_ms = sluice_engine::shard::now_ms();
        self.with(group_id, |entry, _| {
            if let Some(group) = entry.group.as_mut() {
                let completions = group.end_commit(now_ms);
                entry.deliver(completions);
            }
        })
    }

    /// Makes committed offsets visible (after they were persisted).
    pub fn record(&self, group_id: &str, offsets: Vec<((String, i32), Committed)>) {
        self.with(group_id, |entry, _| entry.offsets.extend(offsets))
    }

    /// Restores a committed offset read back from `__consumer_offsets`
    /// (`None` is a tombstone).
    pub fn restore(&self, group_id: &str, key: (String, i32), value: Option<Committed>) {
        self.with(group_id, |entry, _| match value {
            Some(v) => {
                entry.offsets.insert(key, v);
            }
            None => {
                entry.offsets.remove(&key);
            }
        })
    }

    /// Every committed offset of the groups `keep` selects, as
    /// (group, (topic, partition), offset).
    pub fn committed_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(String, (String, i32), Committed)> {
        let mut out = Vec::new();
        for groups in self.stripes() {
            out.extend(groups.iter().filter(|(group, _)| keep(group)).flat_map(
                |(group, entry)| {
                    entry
                        .offsets
                        .iter()
                        .map(move |(key, c)| (group.clone(), key.clone(), c.clone()))
                },
            ));
        }
        out
    }

    /// The group's committed offsets (all, or for the listed partitions).
    pub fn committed(&self, group_id: &str) -> BTreeMap<(String, i32), Committed> {
        let groups = self.stripe(group_id);
        groups
            .get(group_id)
            .map(|e| e.offsets.clone())
            .unwrap_or_default()
    }

    /// Every group with members or committed offsets, with its protocol type.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut out = Vec::new();
        for groups in self.stripes() {
            out.extend(
                groups
                    .iter()
                    .filter(|(_, e)| {
                        e.group.as_ref().is_some_and(|g| !g.members.is_empty())
                            || !e.offsets.is_empty()
                    })
                    .map(|(id, e)| {
                        let g = e.group.as_ref();
                        (
                            id.clone(),
                            g.and_then(|g| g.protocol_type.clone())
                                .unwrap_or_else(|| "consumer".into()),
                            g.map_or("Empty", |g| state_name(g)),
                        )
                    }),
            );
        }
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<Description> {
        let groups = self.stripe(group_id);
        let entry = groups.get(group_id)?;
        let Some(group) = entry.group.as_ref() else {
            return Some(Description {
                state: "Empty",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            });
        };
        Some(Description {
            state: state_name(group),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: group.protocol.clone().unwrap_or_default(),
            members: group
                .members
                .values()
                .map(|m| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(p, _)| Some(p) == group.protocol.as_ref())
                        .map(|(_, meta)| meta.clone())
                        .unwrap_or_default();
                    MemberDescription {
                        member_id: m.id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata,
                        assignment: m.assignment.clone(),
                    }
                })
                .collect(),
        })
    }

    /// Deletes an empty group and its offsets; the Kafka error code.
    pub fn delete(&self, group_id: &str) -> i16 {
        let mut groups = self.stripe(group_id);
        match groups.get(group_id) {
            None => 69, // GROUP_ID_NOT_FOUND
            Some(e) if e.group.as_ref().is_some_and(|g| !g.members.is_empty()) => 68, // NON_EMPTY_GROUP
            Some(_) => {
                groups.remove(group_id);
                code::NONE
            }
        }
    }
}

fn state_name(group: &Group) -> &'static str {
    use super::state::GroupState::*;
    match group.state {
        Empty => "Empty",
        PreparingRebalance => "PreparingRebalance",
        CompletingRebalance => "CompletingRebalance",
        Stable => "Stable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(member_id: &str, new_member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            new_member_id: new_member_id.to_string(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Vec::new())],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
        }
    }

    #[test]
    fn dropping_a_commit_guard_completes_the_rebalance_it_held_back() {
        let c = Coordinator::new(Limits {
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 60_000,
            initial_rebalance_delay_ms: 0,
        });
        let now = sluice_engine::shard::now_ms();
        assert!(matches!(
            c.join("g", now, join_req("", "m1")),
            Wait::Ready(r) if r.error_code == code::MEMBER_ID_REQUIRED && r.member_id == "m1"
        ));
        let Wait::Later(mut first) = c.join("g", now, join_req("m1", "unused")) else {
            panic!("the join waits for its rebalance");
        };
        assert_eq!(
            first.try_recv().ok().flatten().map(|r| r.generation_id),
            Some(1)
        );
        assert!(matches!(
            c.sync("g", now, None, "m1", 1, vec![("m1".into(), b"x".to_vec())]),
            Wait::Ready((0, _))
        ));

        let guard = c.begin_commit("g", None, "m1", 1).expect("allowed");
        // The leader rejoins: a rebalance that could complete at once, but
        // the commit checked against generation 1 is still being appended.
        let Wait::Later(mut second) = c.join("g", now, join_req("m1", "unused")) else {
            panic!("the rejoin waits");
        };
        assert!(matches!(second.try_recv(), Ok(None)), "held back");
        drop(guard);
        let answer = second
            .try_recv()
            .ok()
            .flatten()
            .expect("completed by the drop");
        assert_eq!(answer.generation_id, 2);
        // A refused commit holds nothing back and has no guard.
        assert_eq!(
            c.begin_commit("g", None, "m1", 1).err(),
            Some(code::ILLEGAL_GENERATION)
        );
    }
}
