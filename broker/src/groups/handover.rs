//! Group coordination follows `__consumer_offsets` leadership: a broker
//! coordinates the groups of the offsets partitions it leads. When it
//! starts leading one (its leader was fenced), it forgets what it held of
//! those groups and replays the partition, which it has been replicating
//! as a follower, before it answers for them: meanwhile their requests get
//! COORDINATOR_LOAD_IN_PROGRESS, as in Kafka. When it stops leading one,
//! it forgets its groups.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::offsets_topic::{PARTITIONS, TOPIC};
use crate::Broker;

/// How often leadership of the offsets partitions is checked.
const RECHECK: Duration = Duration::from_millis(50);

/// The offsets partitions whose groups are being loaded.
#[derive(Debug, Default)]
pub struct Loading(Mutex<BTreeSet<i32>>);

impl Loading {
    pub fn contains(&self, partition: i32) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&partition)
    }

    fn set(&self, partition: i32, loading: bool) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if loading {
            set.insert(partition);
        } else {
            set.remove(&partition);
        }
    }
}

/// The offsets partitions `broker` leads now.
fn led(broker: &Broker) -> BTreeSet<i32> {
    let me = broker.config.node_id;
    broker.topics.get(TOPIC).map_or_else(BTreeSet::new, |t| {
        (0..PARTITIONS).filter(|p| t.leader(*p) == me).collect()
    })
}

/// Runs for the life of the broker (on a shard), from the leadership it
/// had when its groups were loaded at start.
pub async fn follow(broker: Arc<Broker>) {
    let mut leading = led(&broker);
    let mut seen = broker.topics.index();
    loop {
        compio::time::sleep(RECHECK).await;
        let index = broker.topics.index();
        if index == seen {
            continue;
        }
        seen = index;
        let now = led(&broker);
        for &p in leading.difference(&now) {
            broker.groups.clear_partition(p);
            info!(
                partition = p,
                "no longer coordinating the groups of {TOPIC}-{p}"
            );
        }
        for &p in now.difference(&leading) {
            broker.offsets_loading.set(p, true);
            broker.groups.clear_partition(p);
            match broker
                .offsets
                .load_partition(&broker.engine, &broker.groups, p)
                .await
            {
                Ok(records) => {
                    info!(
                        partition = p,
                        records, "now coordinating the groups of {TOPIC}-{p}"
                    )
                }
                Err(e) => {
                    warn!(partition = p, error = %e, "loading the groups of {TOPIC}-{p} failed")
                }
            }
            broker.offsets_loading.set(p, false);
        }
        leading = now;
    }
}
