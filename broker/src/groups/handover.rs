//! Group coordination follows `__consumer_offsets` leadership: a broker
//! coordinates the groups of the offsets partitions it leads. When it
//! starts leading one (its leader was fenced or stopped), it forgets what
//! it held of those groups and replays the partition, which it has been
//! replicating as a follower, before it answers for them: meanwhile their
//! requests get COORDINATOR_LOAD_IN_PROGRESS, as in Kafka. When it stops
//! leading one, it forgets its groups.
//!
//! What a broker holds of a partition's groups is tied to the leader epoch
//! it replayed them in ([`Coordinating`]): the metadata image names the
//! new leader before this task has noticed and replayed, and a request
//! answered from the groups in between (an empty group, to which every
//! member is unknown) would make the whole group rebalance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::offsets_topic::{PARTITIONS, TOPIC};
use crate::Broker;

/// How often leadership of the offsets partitions is checked.
const RECHECK: Duration = Duration::from_millis(50);

/// Where a broker stands with a group's coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// Another broker, or none, leads the group's offsets partition.
    Elsewhere,
    /// This broker leads it and has not replayed its groups in this
    /// leadership yet.
    Loading,
    /// This broker leads it and holds its groups.
    Ready,
}

/// The offsets partitions whose groups this broker has replayed, each with
/// the leader epoch in which it did: it answers for their groups only
/// while it leads them in that epoch.
#[derive(Debug, Default)]
pub struct Coordinating(Mutex<BTreeMap<i32, i32>>);

impl Coordinating {
    /// Coordination as a broker finds it at start, having replayed every
    /// offsets partition on its disk: the partitions it led just before.
    pub fn replayed(led: BTreeMap<i32, i32>) -> Self {
        Self(Mutex::new(led))
    }

    /// Where this broker stands with the groups of `partition`, which it
    /// leads (`leading`) or not, in `leader_epoch`.
    pub fn stand(&self, partition: i32, leading: bool, leader_epoch: i32) -> Coordination {
        if !leading {
            Coordination::Elsewhere
        } else if self.lock().get(&partition) == Some(&leader_epoch) {
            Coordination::Ready
        } else {
            // Not replayed yet, or replayed in an earlier leadership
            // (this broker lost the partition and led it again before the
            // replay task looked): another coordinator may have changed
            // the groups meanwhile.
            Coordination::Loading
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The offsets partitions this broker leads now, each with its leader
/// epoch.
pub fn led(topics: &crate::topics::Topics, me: i32) -> BTreeMap<i32, i32> {
    topics.get(TOPIC).map_or_else(BTreeMap::new, |t| {
        (0..PARTITIONS)
            .filter(|p| t.leader(*p) == me)
            .map(|p| (p, t.leader_epoch(p)))
            .collect()
    })
}

/// Runs for the life of the broker (on a shard): replays the groups of
/// each offsets partition this broker comes to lead, and forgets those of
/// each it stops leading. A replay that fails is tried again at the next
/// check.
pub async fn follow(broker: Arc<Broker>) {
    let me = broker.config.node_id;
    loop {
        compio::time::sleep(RECHECK).await;
        let now = led(&broker.topics, me);
        let held = broker.coordinating.lock().clone();
        if held == now {
            continue;
        }
        for (&p, &epoch) in &held {
            if now.get(&p) != Some(&epoch) {
                // Out of the map first: a request that looks from here on
                // is refused before it can touch the groups being cleared.
                broker.coordinating.lock().remove(&p);
                broker.groups.clear_partition(p);
                if !now.contains_key(&p) {
                    info!(
                        partition = p,
                        "no longer coordinating the groups of {TOPIC}-{p}"
                    );
                }
            }
        }
        for (&p, &epoch) in &now {
            if held.get(&p) == Some(&epoch) {
                continue;
            }
            broker.groups.clear_partition(p);
            match broker
                .offsets
                .load_partition(&broker.engine, &broker.groups, p)
                .await
            {
                Ok(records) => {
                    broker.coordinating.lock().insert(p, epoch);
                    info!(
                        partition = p,
                        leader_epoch = epoch,
                        records,
                        "now coordinating the groups of {TOPIC}-{p}"
                    )
                }
                Err(e) => {
                    warn!(partition = p, error = %e, "loading the groups of {TOPIC}-{p} failed; trying again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_answers_for_groups_only_once_it_replayed_them_in_the_current_leadership() {
        let held = Coordinating::replayed([(4, 2)].into_iter().collect());
        // Led and replayed in this leader epoch.
        assert_eq!(held.stand(4, true, 2), Coordination::Ready);
        // Led again in a later epoch: what it holds may be stale.
        assert_eq!(held.stand(4, true, 3), Coordination::Loading);
        // Newly led, not replayed yet: its groups are empty here, not gone.
        assert_eq!(held.stand(7, true, 0), Coordination::Loading);
        // Led elsewhere, whatever it holds.
        assert_eq!(held.stand(4, false, 2), Coordination::Elsewhere);
        assert_eq!(held.stand(7, false, 0), Coordination::Elsewhere);
    }
}
