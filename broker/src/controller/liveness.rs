//! Broker liveness on the active controller (KIP-631): heartbeats in,
//! `FenceBroker` / `UnfenceBroker` records out.
//!
//! Every broker heartbeats the active controller every
//! `broker.heartbeat.interval.ms`, naming the epoch its registration was
//! given (KIP-841): each start of a broker registers anew, and only the
//! current registration's heartbeats count; the heartbeat reaches the controller
//! thread of its own node and is forwarded to the Raft leader from there.
//! The leader keeps the time of each broker's last heartbeat in memory
//! (not in the log: a new leader starts everyone's clock afresh, giving
//! them a whole session timeout). A registered broker silent for
//! `broker.session.timeout.ms` is fenced, which moves its leaderships to
//! other in-sync replicas (see `MetadataImage::apply`); a fenced broker that
//! heartbeats again is unfenced.
//!
//! Heartbeats also say whether the broker's log directory works (KIP-858):
//! one that reports it failed (a failed write or fsync, or a full disk) gets
//! a `LogDirFailed` record, which fences it as silence would and keeps it
//! fenced while it says so; a full disk that has room again gets
//! `LogDirRecovered`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tokio::time::Instant;
use tracing::{info, warn};

use super::network::{leader_peer, Answer, Call};
use super::{MetadataRecord, Published, Storage, TypeConfig};

/// A broker's id and the epoch of the registration a heartbeat speaks for.
type Session = (i32, i64);

/// The last heartbeat of each broker registration, as the active
/// controller saw it. Only a heartbeat with the current registration's
/// epoch keeps a broker alive: an earlier run of the broker (a zombie that
/// shares its node id) counts for nothing.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<Session, (Instant, Storage)>>,
}

impl Liveness {
    pub fn record(&self, session: Session, storage: Storage) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, (Instant::now(), storage));
    }

    fn reset(&self, sessions: impl Iterator<Item = Session>) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.clear();
        seen.extend(sessions.map(|s| (s, (now, Storage::Ok))));
    }

    /// The time of the session's last heartbeat and what it said of the
    /// broker's storage.
    fn last(&self, session: Session) -> Option<(Instant, Storage)> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&session)
            .copied()
    }

    /// Forgets sessions other than the registrations' current ones.
    fn retain(&self, current: &HashMap<i32, i64>) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, epoch), _| current.get(id) == Some(epoch));
    }
}

/// A heartbeat from `broker`'s registration of `epoch` reached this node's
/// controller: recorded here if this node leads, else passed on to the
/// leader.
pub async fn heartbeat(
    raft: &Raft<TypeConfig>,
    liveness: &Liveness,
    session: Session,
    storage: Storage,
    fetch_timeout: Duration,
) {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader == Some(metrics.id) {
        liveness.record(session, storage);
    } else if let Some(mut leader) = leader_peer(&metrics) {
        let (broker, epoch) = session;
        // A lost heartbeat is made up for by the next one.
        let call = Call::Heartbeat {
            broker,
            epoch,
            storage,
        };
        let _ = leader.call(&call, fetch_timeout).await;
    }
}

/// Answers a forwarded heartbeat: recorded if this node leads.
pub fn on_forwarded(
    raft: &Raft<TypeConfig>,
    liveness: &Liveness,
    session: Session,
    storage: Storage,
) -> Answer {
    let metrics = raft.metrics().borrow().clone();
    let leads = metrics.current_leader == Some(metrics.id);
    if leads {
        liveness.record(session, storage);
    }
    Answer::Heartbeat(leads)
}

/// While this node leads: fences the registered brokers silent for
/// `session_timeout`, unfences the fenced ones heard from since.
pub async fn watch(
    raft: Raft<TypeConfig>,
    published: Arc<Published>,
    liveness: Arc<Liveness>,
    session_timeout: Duration,
    fetch_timeout: Duration,
) {
    let every = (session_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut leading = false;
    // Fence or unfence proposals in flight, so each is made once.
    let in_flight: Arc<Mutex<BTreeSet<i32>>> = Arc::default();
    loop {
        tokio::time::sleep(every).await;
        // A leader cut off from the quorum hears no heartbeats (they go to
        // whoever the others follow) and must not take the silence for
        // dead brokers: it stops judging, and starts every clock afresh
        // once back in touch, as a newly elected one does.
        let leads = super::leads_in_touch(&raft.metrics().borrow(), super::lease(&raft));
        let image = published.get().1;
        if !leads {
            leading = false;
            continue;
        }
        let current: HashMap<i32, i64> = image.brokers.values().map(|b| (b.id, b.epoch)).collect();
        if !leading {
            // Newly leading: every live broker gets a whole session from
            // now. A fenced one stays fenced until it is heard from: a
            // change of controller must not bring a dead broker back (it
            // would lead again the partitions whose last ISR member it is).
            leading = true;
            liveness.reset(
                current
                    .iter()
                    .filter(|(id, _)| !image.fenced.contains(id))
                    .map(|(id, epoch)| (*id, *epoch)),
            );
            continue;
        }
        liveness.retain(&current);
        let now = Instant::now();
        for (&broker, &epoch) in &current {
            // A registration made since this node took over starts its
            // session now: a broker registers before it first heartbeats.
            let fenced = image.fenced.contains(&broker);
            let (last, storage) = match liveness.last((broker, epoch)) {
                Some(last) => last,
                // Not heard from since this node took over: stays fenced.
                None if fenced => continue,
                None => {
                    liveness.record((broker, epoch), Storage::Ok);
                    (now, Storage::Ok)
                }
            };
            let silent = now.duration_since(last) > session_timeout;
            let failed = image.storage_failed.contains(&broker);
            let record = if !silent && storage != Storage::Ok && !failed {
                MetadataRecord::LogDirFailed {
                    id: broker,
                    epoch,
                    lost_writes: storage == Storage::Offline,
                }
            } else if !silent && storage == Storage::Ok && failed {
                MetadataRecord::LogDirRecovered { id: broker, epoch }
            } else if fenced && (failed || image.shutting_down.contains(&broker)) {
                // Stopping, or its storage out of service: its heartbeats
                // must not unfence it.
                continue;
            } else {
                match (fenced, silent) {
                    (false, true) => MetadataRecord::FenceBroker { id: broker },
                    (true, false) => MetadataRecord::UnfenceBroker { id: broker },
                    _ => continue,
                }
            };
            if !in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(broker)
            {
                continue;
            }
            let (raft, in_flight) = (raft.clone(), in_flight.clone());
            tokio::spawn(async move {
                let (what, done) = match &record {
                    MetadataRecord::LogDirFailed { .. } => (
                        "taking a failed log directory out of service",
                        "broker reports its log directory failed: fenced, its leaderships moved",
                    ),
                    MetadataRecord::LogDirRecovered { .. } => (
                        "bringing a log directory back",
                        "broker reports its log directory has room again: unfenced",
                    ),
                    MetadataRecord::UnfenceBroker { .. } => {
                        ("unfencing", "broker heard from again: unfenced")
                    }
                    _ => (
                        "fencing",
                        "broker silent for broker.session.timeout.ms: fenced, its leaderships moved",
                    ),
                };
                match super::propose(&raft, record, fetch_timeout).await {
                    Ok(_) if fenced => info!(broker, "{done}"),
                    Ok(_) => warn!(broker, "{done}"),
                    Err(e) => warn!(broker, error = %e, "{what} a broker failed"),
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&broker);
            });
        }
    }
}
