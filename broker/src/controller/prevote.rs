//! Pre-vote (the Raft thesis, §9.6; Kafka's KIP-996): a voter that has not
//! heard from a leader for an election timeout first asks the other voters
//! whether they would vote for it, and starts an election (a new term) only
//! if a majority would.
//!
//! Without it, a voter cut off from the others (the `leader-isolated`
//! scenario) raises its term with every election it tries alone; once the
//! network heals, the leader's next AppendEntries to it meets that higher
//! term and steps down, although the voter's log is behind and it cannot
//! win. On a loaded machine, where the new leader's first AppendEntries
//! can arrive after the voter's next election timeout, that repeated for
//! over a minute with no leader for most of it. A voter refuses a pre-vote
//! while it has heard from a leader (or granted a vote, or started an
//! election of its own) within the leader lease, while it leads, or when
//! the candidate's log is behind its own, so the cut-off voter never
//! raises its term and the leader is left alone.
//!
//! openraft 0.9 has no pre-vote, so its own election timer is off
//! (`enable_elect = false`) and [`watch`] runs the timer instead, calling
//! `trigger().elect()` after a pre-vote a majority granted.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{LogId, Raft, ServerState};
use tokio::time::Instant;
use tracing::{debug, info};

use super::network::{Answer, Call, Peer};
use super::store::LogStore;
use super::TypeConfig;

/// When this voter last heard from a leader, and what it needs to answer
/// a pre-vote.
pub struct PreVote {
    last_contact: Mutex<Instant>,
    /// `controller.quorum.election.timeout.ms`.
    election: Duration,
    log: LogStore,
}

impl PreVote {
    pub fn new(election: Duration, log: LogStore) -> PreVote {
        PreVote {
            last_contact: Mutex::new(Instant::now()),
            election,
            log,
        }
    }

    /// A leader was heard from (an AppendEntries or snapshot accepted), or
    /// this voter granted a vote or started an election: the election
    /// timer starts again.
    pub fn heard_from_leader(&self) {
        *self.last_contact.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn since_contact(&self) -> Duration {
        self.last_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// How long a voter that heard from a leader refuses to vote for
    /// another: openraft's leader lease, the longest election timeout.
    fn lease(&self) -> Duration {
        self.election * 2
    }

    /// This voter's answer to a candidate whose log ends at `candidate`.
    pub fn answer(&self, raft: &Raft<TypeConfig>, candidate: Option<LogId<u64>>) -> bool {
        let leading = raft.metrics().borrow().state == ServerState::Leader;
        grant(
            self.since_contact() < self.lease(),
            leading,
            self.log.last_log_id(),
            candidate,
        )
    }
}

/// Whether to grant a pre-vote: not while a leader is heard from (or this
/// voter is one), and only to a candidate whose log is at least as new as
/// this voter's (Raft's own rule for votes).
pub fn grant(
    heard_recently: bool,
    leading: bool,
    mine: Option<LogId<u64>>,
    candidate: Option<LogId<u64>>,
) -> bool {
    !heard_recently && !leading && candidate >= mine
}

/// How long a voter waits without a leader before it asks for a pre-vote:
/// the leader lease (2 × election timeout, which the other voters wait out
/// too before they grant one) and a random part of up to one election
/// timeout, so that voters rarely ask together. openraft's own timer waited
/// the lease and 1–2 election timeouts.
fn random_timeout(election: Duration) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    election * 2 + Duration::from_nanos(random % election.as_nanos().max(1) as u64)
}

/// The election timer of a voter: after a random election timeout without
/// a leader, a pre-vote round; an election if a majority granted it.
pub async fn watch(raft: Raft<TypeConfig>, pre: Arc<PreVote>) {
    let tick = (pre.election / 10).max(Duration::from_millis(5));
    let mut timeout = random_timeout(pre.election);
    // The last pre-vote this voter asked for: it waits a whole timeout
    // before the next (kept apart from `last_contact`, which decides what
    // it answers others).
    let mut last_try = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let metrics = raft.metrics().borrow().clone();
        let id = metrics.id;
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        if metrics.state == ServerState::Leader || !voters.contains(&id) {
            pre.heard_from_leader();
            continue;
        }
        if pre.since_contact() < timeout || last_try.elapsed() < timeout {
            continue;
        }
        timeout = random_timeout(pre.election);
        last_try = Instant::now();
        let last = pre.log.last_log_id();
        let mut asks = Vec::new();
        for voter in voters.iter().copied().filter(|v| *v != id) {
            let Some(node) = membership.get_node(&voter) else {
                continue;
            };
            let mut peer = Peer::new(voter, node.addr.clone());
            let election = pre.election;
            asks.push(async move {
                matches!(
                    peer.call(&Call::PreVote { last_log: last }, election).await,
                    Ok(Answer::PreVote(true))
                )
            });
        }
        let granted = 1 + futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|g| *g)
            .count();
        let needed = voters.len() / 2 + 1;
        if granted >= needed {
            info!(
                node = id,
                granted,
                "no controller leader heard from: a majority granted the pre-vote, electing"
            );
            // A candidate refuses the others' pre-votes for a lease, as a
            // voter that granted a vote does: two voters whose timers ran
            // out together used to both win their pre-votes (the first
            // candidate granted the second's), and the second's election
            // deposed the first's new leadership a moment after it began.
            pre.heard_from_leader();
            if let Err(e) = raft.trigger().elect().await {
                debug!(error = %e, "starting an election");
            }
        } else {
            debug!(
                node = id,
                granted, needed, "pre-vote not granted: no election (a leader is still heard from)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_pre_vote_is_granted_only_without_a_leader_and_to_a_log_as_new() {
        // (heard from a leader recently, leading, mine, candidate's, granted)
        let cases = [
            (false, false, log(2, 10), log(2, 10), true),
            (false, false, log(2, 10), log(2, 11), true),
            (false, false, log(2, 10), log(3, 1), true),
            (false, false, None, None, true),
            (false, false, log(2, 10), log(2, 9), false),
            (false, false, log(3, 1), log(2, 10), false),
            (false, false, log(1, 1), None, false),
            // A leader is heard from: the candidate was cut off, not the leader.
            (true, false, log(2, 10), log(2, 10), false),
            (false, true, log(2, 10), log(5, 50), false),
        ];
        for (heard, leading, mine, candidate, granted) in cases {
            assert_eq!(
                grant(heard, leading, mine, candidate),
                granted,
                "heard {heard}, leading {leading}, mine {mine:?}, candidate {candidate:?}"
            );
        }
    }

    #[test]
    fn the_wait_before_a_pre_vote_falls_between_two_and_three_election_timeouts() {
        let election = Duration::from_millis(500);
        let drawn: Vec<Duration> = (0..200).map(|_| random_timeout(election)).collect();
        assert!(drawn
            .iter()
            .all(|t| *t >= election * 2 && *t < election * 3));
        assert!(
            drawn.iter().any(|t| *t != drawn[0]),
            "not random: {drawn:?}"
        );
    }
}
