//! The metadata records the controller's Raft log holds, and the image they
//! build: registered brokers, topics with their ids, partitions (replicas,
//! ISR, leader, leader epoch) and topic-level configuration overrides.
//!
//! Pure code: [`MetadataImage::apply`] is deterministic (no clock, no I/O,
//! no broker configuration), so every voter that applies the same log
//! reaches the same image. A record that does not fit the image (a topic
//! created twice by two racing requests, say) changes nothing and answers
//! an error to whoever proposed it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A broker as it registered with the controller: where clients reach it,
/// and which run of its process registered (KIP-841).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Chosen at random by each start of the process.
    #[serde(default)]
    pub incarnation: String,
    /// This broker's `min.insync.replicas`: the latest registration's is
    /// the cluster's default for topics that do not set it.
    #[serde(default = "one")]
    pub min_insync_replicas: i32,
    /// Whether everything this broker's previous run wrote is still on its
    /// disks: it shut down cleanly, or the machine has not restarted since
    /// (the page cache kept what was not flushed). A broker that cannot say
    /// so leaves the eligible leader replicas.
    #[serde(default)]
    pub data_intact: bool,
    /// Given by the controller when the registration applies: larger for
    /// every registration, so a message from an earlier run of a broker
    /// (a heartbeat, an ISR change it proposed, a fetch that caught it up)
    /// is told apart from one of the current run. Set by `apply`; what a
    /// proposer puts here is ignored.
    #[serde(default = "no_epoch")]
    pub epoch: i64,
}

fn no_epoch() -> i64 {
    -1
}

fn one() -> i32 {
    1
}

/// One partition's replica assignment and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The leader's broker id, or -1 when there is none.
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by every change to the partition (an ISR change, a new
    /// leader): an AlterPartition names the epoch it was made against.
    #[serde(default)]
    pub partition_epoch: i32,
    /// The high watermark its leader last reported (with an ISR change):
    /// what an unclean election may lose is measured against it.
    #[serde(default)]
    pub high_watermark: i64,
    /// Its leader was elected from outside the ISR (an unclean election)
    /// and no ISR change has been made since.
    #[serde(default)]
    pub unclean: bool,
    /// Eligible leader replicas (KIP-966): replicas that left the ISR while
    /// it was smaller than `min.insync.replicas`. The high watermark does
    /// not move while the ISR is that small, so each of them has
    /// everything committed, and may lead cleanly when no ISR member is
    /// live. Emptied once the ISR is large enough again.
    #[serde(default)]
    pub elr: Vec<i32>,
}

impl PartitionRecord {
    /// Replaces the ISR. Members that leave it while it is below `min_isr`
    /// become eligible leader replicas; an ISR of at least `min_isr`
    /// empties them; an ISR member is never one.
    fn set_isr(&mut self, isr: Vec<i32>, min_isr: usize) {
        let left: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| !isr.contains(r))
            .collect();
        self.isr = isr;
        if self.isr.len() >= min_isr {
            self.elr.clear();
            return;
        }
        for r in left {
            if !self.elr.contains(&r) {
                self.elr.push(r);
            }
        }
        let isr = &self.isr;
        self.elr.retain(|r| !isr.contains(r));
    }
}

impl PartitionRecord {
    /// A partition whose only replica is `broker`, which leads it from
    /// epoch 0.
    pub fn single(broker: i32) -> PartitionRecord {
        PartitionRecord {
            replicas: vec![broker],
            isr: vec![broker],
            leader: broker,
            leader_epoch: 0,
            partition_epoch: 0,
            high_watermark: 0,
            unclean: false,
            elr: Vec::new(),
        }
    }
}

/// A topic id: 16 bytes, as Kafka's UUIDs.
pub type TopicId = [u8; 16];

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker's registration, made by each start of its process; it
    /// replaces an earlier one with its id and gets the next broker epoch.
    /// A new run of a broker (another incarnation) may have lost what it
    /// had not flushed: it leaves every ISR it was in, as a fenced broker
    /// does, and rejoins them by catching up (KIP-841). It is not fenced.
    RegisterBroker(BrokerRegistration),
    CreateTopic {
        name: String,
        id: TopicId,
        partitions: Vec<PartitionRecord>,
        overrides: BTreeMap<String, String>,
    },
    /// Appends partitions to a topic, the first with index `first`: a
    /// proposer that saw an older partition count is refused rather than
    /// adding more partitions than it asked for.
    CreatePartitions {
        name: String,
        first: usize,
        partitions: Vec<PartitionRecord>,
    },
    /// Replaces a topic's overrides as a whole.
    AlterTopicConfigs {
        name: String,
        overrides: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Reserves the next `count` producer ids for `broker`'s idempotent
    /// producers (InitProducerId).
    AllocateProducerIds {
        broker: i32,
        count: i64,
    },
    /// A leader's change of a partition's ISR (Kafka's AlterPartition,
    /// KIP-497): applied only if `leader`, `leader_epoch` and
    /// `partition_epoch` are still the partition's, so a deposed leader
    /// or a stale proposal changes nothing; and if `broker_epoch` (the
    /// leader's) and each joining member's epoch in `joining` (the one
    /// its catching-up fetches came with) are still their registrations',
    /// so that an earlier run of either counts for nothing (KIP-903).
    AlterPartition {
        topic: String,
        topic_id: TopicId,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
        #[serde(default = "no_epoch")]
        broker_epoch: i64,
        #[serde(default)]
        joining: BTreeMap<i32, i64>,
        /// The leader's high watermark when it proposed the change.
        #[serde(default)]
        high_watermark: i64,
    },
    /// A new leader for a partition, chosen by the active controller or
    /// asked for with ElectLeaders: applied only if `partition_epoch` is
    /// still the partition's, `leader` is one of its replicas and not
    /// fenced, and (unless `unclean`) in its ISR. An unclean election makes
    /// the new leader the whole ISR: what the old ISR had and it lacks is
    /// lost. Both bump the leader and partition epochs.
    ElectLeader {
        topic: String,
        topic_id: TopicId,
        partition: i32,
        partition_epoch: i32,
        leader: i32,
        unclean: bool,
    },
    /// A broker silent for `broker.session.timeout.ms` (KIP-631): it
    /// leaves every ISR it was in (unless it was the last member), and
    /// each partition it led is led by the first other live ISR member in
    /// replica order, or by nobody (leader -1) if none is left.
    FenceBroker {
        id: i32,
    },
    /// A fenced broker heartbeats again: it may hold leadership again (a
    /// partition left without a leader whose ISR names it is led by it);
    /// it rejoins ISRs by catching up. A broker shutting down stays fenced.
    UnfenceBroker {
        id: i32,
    },
    /// A broker's controlled shutdown (SIGTERM): it is fenced and leaves
    /// every ISR and leadership as a silent broker does, before it stops,
    /// so that clients move on at once; it stays fenced until its next
    /// run registers. `epoch` is its registration's: a shutdown of an
    /// earlier run changes nothing.
    ShutdownBroker {
        id: i32,
        epoch: i64,
    },
    /// A broker's heartbeat reports its log directory failed (KIP-858;
    /// its only one: `log.dirs` takes one). It is fenced as a silent broker
    /// is: it leaves every ISR and its leaderships move, and its heartbeats
    /// do not unfence it while the failure lasts. `lost_writes` (a failed
    /// write or fsync, not a full disk): what it had not flushed may be
    /// gone, so it is no longer an eligible leader either. `epoch` is its
    /// registration's: a report of an earlier run changes nothing.
    LogDirFailed {
        id: i32,
        epoch: i64,
        lost_writes: bool,
    },
    /// A broker whose disk was full reports room again: unfenced (it
    /// rejoins ISRs by catching up).
    LogDirRecovered {
        id: i32,
        epoch: i64,
    },
    /// Names the cluster. The first such record wins; a different one
    /// later is refused.
    SetClusterId {
        id: String,
    },
}

/// What applying a record produced, for its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    /// The first of the reserved producer ids.
    ProducerIds {
        first: i64,
    },
    /// The epoch a broker registration was given.
    BrokerEpoch {
        epoch: i64,
    },
}

/// Why a record did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetadataError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("a topic needs at least one partition")]
    NoPartitions,
    #[error("a stale ISR change of {topic}-{partition}: {why}")]
    StalePartitionChange {
        topic: String,
        partition: i32,
        why: String,
    },
    #[error("the cluster is already named {0:?}")]
    ClusterIdSet(String),
    #[error("cannot reserve {0} more producer ids")]
    ProducerIdsExhausted(i64),
    #[error("topic {topic:?} has {actual} partitions, not {expected}")]
    PartitionCountChanged {
        topic: String,
        expected: usize,
        actual: usize,
    },
}

/// The members of `isr` that are not in `current` and may not join it:
/// brokers in `barred` (fenced, or in controlled shutdown), as Kafka's
/// controller answers INELIGIBLE_REPLICA (KIP-841). A fenced broker that
/// has caught up (one whose log directory is full, say) stays out of the
/// ISR until the controller unfences it.
pub fn ineligible_joiners(barred: &BTreeSet<i32>, current: &[i32], isr: &[i32]) -> Vec<i32> {
    isr.iter()
        .copied()
        .filter(|r| !current.contains(r) && barred.contains(r))
        .collect()
}

/// A topic in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub id: TopicId,
    pub partitions: Vec<PartitionRecord>,
    pub overrides: BTreeMap<String, String>,
}

/// The cluster's metadata as of some log index. Topics sit behind `Arc`s
/// so that publishing a copy of the image after each change costs a
/// pointer per topic, not a deep copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub topics: BTreeMap<String, Arc<TopicImage>>,
    /// The first producer id not yet reserved by any broker.
    #[serde(default)]
    pub next_producer_id: i64,
    /// The cluster's id, set once by the first broker to start.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Brokers fenced for silence; they lead nothing until unfenced.
    #[serde(default)]
    pub fenced: std::collections::BTreeSet<i32>,
    /// The epoch the next broker registration gets.
    #[serde(default)]
    pub next_broker_epoch: i64,
    /// Brokers in controlled shutdown: fenced, and not unfenced by their
    /// last heartbeats, until they register again.
    #[serde(default)]
    pub shutting_down: std::collections::BTreeSet<i32>,
    /// Brokers whose log directory failed (`LogDirFailed`): fenced until
    /// they report it recovered or register again.
    #[serde(default)]
    pub storage_failed: std::collections::BTreeSet<i32>,
    /// How many unclean leader elections the cluster has made.
    #[serde(default)]
    pub unclean_elections: u64,
    /// `min.insync.replicas` for topics that do not set it: the latest
    /// broker registration's.
    #[serde(default = "one")]
    pub min_insync_default: i32,
}

impl TopicImage {
    /// How many in-sync replicas `partition` needs before its high
    /// watermark moves and its ISR members stop being remembered as
    /// eligible leaders: `min.insync.replicas` (the topic's, else
    /// `default`), at most its replicas.
    pub fn min_isr(&self, partition: &PartitionRecord, default: i32) -> usize {
        min_isr(&self.overrides, partition, default)
    }
}

fn min_isr(overrides: &BTreeMap<String, String>, p: &PartitionRecord, default: i32) -> usize {
    let configured = overrides
        .get("min.insync.replicas")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default.max(1) as usize);
    configured.min(p.replicas.len()).max(1)
}

impl MetadataImage {
    /// Applies one record; on an error the image is unchanged.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<Applied, MetadataError> {
        match record {
            MetadataRecord::RegisterBroker(registration) => {
                let id = registration.id;
                let restarted = self
                    .brokers
                    .get(&id)
                    .is_some_and(|old| old.incarnation != registration.incarnation);
                let epoch = self.next_broker_epoch;
                self.next_broker_epoch += 1;
                let mut registration = registration.clone();
                registration.epoch = epoch;
                self.min_insync_default = registration.min_insync_replicas.max(1);
                let intact = registration.data_intact;
                self.brokers.insert(id, registration);
                if restarted {
                    self.leave_isrs(id);
                    if !intact {
                        self.leave_elrs(id);
                    }
                }
                self.shutting_down.remove(&id);
                self.storage_failed.remove(&id);
                self.unfence(id);
                return Ok(Applied::BrokerEpoch { epoch });
            }
            MetadataRecord::FenceBroker { id } => {
                if !self.fenced.insert(*id) {
                    return Ok(Applied::Done);
                }
                self.leave_isrs(*id);
            }
            MetadataRecord::UnfenceBroker { id } => {
                if !self.shutting_down.contains(id) && !self.storage_failed.contains(id) {
                    self.unfence(*id);
                }
            }
            MetadataRecord::LogDirFailed {
                id,
                epoch,
                lost_writes,
            } => {
                if self.brokers.get(id).map(|b| b.epoch) != Some(*epoch) {
                    return Ok(Applied::Done);
                }
                self.storage_failed.insert(*id);
                self.fenced.insert(*id);
                self.leave_isrs(*id);
                if *lost_writes {
                    self.leave_elrs(*id);
                }
            }
            MetadataRecord::LogDirRecovered { id, epoch } => {
                if self.brokers.get(id).map(|b| b.epoch) != Some(*epoch)
                    || !self.storage_failed.remove(id)
                {
                    return Ok(Applied::Done);
                }
                if !self.shutting_down.contains(id) {
                    self.unfence(*id);
                }
            }
            MetadataRecord::ShutdownBroker { id, epoch } => {
                if self.brokers.get(id).map(|b| b.epoch) != Some(*epoch) {
                    return Ok(Applied::Done);
                }
                self.shutting_down.insert(*id);
                self.fenced.insert(*id);
                self.leave_isrs(*id);
            }
            MetadataRecord::AlterPartition {
                topic,
                topic_id,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
                broker_epoch,
                joining,
                high_watermark,
            } => {
                let stale = |why: String| MetadataError::StalePartitionChange {
                    topic: topic.clone(),
                    partition: *partition,
                    why,
                };
                let registered = |id: i32| self.brokers.get(&id).map_or(-1, |b| b.epoch);
                if *broker_epoch >= 0 && *broker_epoch != registered(*leader) {
                    return Err(stale(format!(
                        "proposed by broker epoch {broker_epoch} of leader {leader}, which has \
                         registered again since (epoch {})",
                        registered(*leader)
                    )));
                }
                if let Some((r, e)) = joining.iter().find(|(r, e)| registered(**r) != **e) {
                    return Err(stale(format!(
                        "replica {r} caught up in broker epoch {e}, and has registered again \
                         since (epoch {}): it must catch up again",
                        registered(*r)
                    )));
                }
                let barred = self.barred_from_isr();
                let (record, min_isr) = self.partition_to_change(topic, topic_id, *partition)?;
                if let Some(r) = ineligible_joiners(&barred, &record.isr, isr).first() {
                    return Err(stale(format!(
                        "replica {r} is fenced or shutting down and may not join the ISR"
                    )));
                }
                if (record.leader, record.leader_epoch, record.partition_epoch)
                    != (*leader, *leader_epoch, *partition_epoch)
                {
                    return Err(stale(format!(
                        "proposed by leader {leader} at epochs {leader_epoch}/{partition_epoch}, \
                         the partition is at leader {} epochs {}/{}",
                        record.leader, record.leader_epoch, record.partition_epoch
                    )));
                }
                if !isr.contains(leader) || isr.iter().any(|r| !record.replicas.contains(r)) {
                    return Err(stale(format!(
                        "ISR {isr:?} must hold the leader and only replicas {:?}",
                        record.replicas
                    )));
                }
                record.set_isr(isr.clone(), min_isr);
                record.partition_epoch += 1;
                record.high_watermark = record.high_watermark.max(*high_watermark);
                record.unclean = false;
            }
            MetadataRecord::ElectLeader {
                topic,
                topic_id,
                partition,
                partition_epoch,
                leader,
                unclean,
            } => {
                let stale = |why: String| MetadataError::StalePartitionChange {
                    topic: topic.clone(),
                    partition: *partition,
                    why,
                };
                let fenced = self.fenced.contains(leader);
                let (record, min_isr) = self.partition_to_change(topic, topic_id, *partition)?;
                if record.partition_epoch != *partition_epoch {
                    return Err(stale(format!(
                        "elected at partition epoch {partition_epoch}, the partition is at {}",
                        record.partition_epoch
                    )));
                }
                if !record.replicas.contains(leader) || fenced {
                    return Err(stale(format!("broker {leader} is not a live replica")));
                }
                if *unclean {
                    record.set_isr(vec![*leader], min_isr);
                    record.elr.clear();
                    record.unclean = true;
                } else if record.elr.contains(leader) && !record.isr.contains(leader) {
                    // An eligible leader replica has everything committed:
                    // it leads alone, and the ISR it replaces (members
                    // that are down) becomes eligible in its turn.
                    record.elr.retain(|r| r != leader);
                    record.set_isr(vec![*leader], min_isr);
                } else if !record.isr.contains(leader) {
                    return Err(stale(format!(
                        "broker {leader} is neither in the ISR {:?} nor eligible {:?}",
                        record.isr, record.elr
                    )));
                }
                record.leader = *leader;
                record.leader_epoch += 1;
                record.partition_epoch += 1;
                if *unclean {
                    self.unclean_elections += 1;
                }
            }
            MetadataRecord::SetClusterId { id } => match &self.cluster_id {
                Some(current) if current != id => {
                    return Err(MetadataError::ClusterIdSet(current.clone()))
                }
                _ => self.cluster_id = Some(id.clone()),
            },
            MetadataRecord::CreateTopic {
                name,
                id,
                partitions,
                overrides,
            } => {
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                if partitions.is_empty() {
                    return Err(MetadataError::NoPartitions);
                }
                self.topics.insert(
                    name.clone(),
                    Arc::new(TopicImage {
                        id: *id,
                        partitions: partitions.clone(),
                        overrides: overrides.clone(),
                    }),
                );
            }
            MetadataRecord::CreatePartitions {
                name,
                first,
                partitions,
            } => {
                let topic = self.topic_mut(name)?;
                if topic.partitions.len() != *first {
                    return Err(MetadataError::PartitionCountChanged {
                        topic: name.clone(),
                        expected: *first,
                        actual: topic.partitions.len(),
                    });
                }
                topic.partitions.extend(partitions.iter().cloned());
            }
            MetadataRecord::AlterTopicConfigs { name, overrides } => {
                self.topic_mut(name)?.overrides = overrides.clone();
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            }
            MetadataRecord::AllocateProducerIds { broker: _, count } => {
                let first = self.next_producer_id;
                self.next_producer_id = Some(*count)
                    .filter(|c| *c > 0)
                    .and_then(|c| first.checked_add(c))
                    .ok_or(MetadataError::ProducerIdsExhausted(*count))?;
                return Ok(Applied::ProducerIds { first });
            }
        }
        Ok(Applied::Done)
    }

    /// `id` may have lost data or is gone: it leaves every ISR it is in
    /// (unless it is the last member), and each partition it led is led
    /// by the first other live ISR member in replica order, or by nobody
    /// (leader -1) if none is left.
    fn leave_isrs(&mut self, id: i32) {
        let id = &id;
        let fenced = self.fenced.clone();
        let default = self.min_insync_default;
        for topic in self.topics.values_mut() {
            if !topic.partitions.iter().any(|p| p.replicas.contains(id)) {
                continue;
            }
            let topic = Arc::make_mut(topic);
            let overrides = &topic.overrides;
            for p in &mut topic.partitions {
                if !p.replicas.contains(id) {
                    continue;
                }
                let mut changed = false;
                if p.isr.contains(id) && p.isr.len() > 1 {
                    let isr = p.isr.iter().copied().filter(|r| r != id).collect();
                    let min = min_isr(overrides, p, default);
                    p.set_isr(isr, min);
                    changed = true;
                }
                if p.leader == *id && p.isr != [*id] {
                    p.leader = p
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| p.isr.contains(r) && !fenced.contains(r))
                        .unwrap_or(-1);
                    p.leader_epoch += 1;
                    changed = true;
                } else if p.leader == *id && fenced.contains(id) {
                    // The last ISR member is fenced: nobody leads.
                    p.leader = -1;
                    p.leader_epoch += 1;
                    changed = true;
                }
                if changed {
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// The partition a change names, if its topic is still the one the
    /// change was made for, with the ISR size its high watermark needs.
    fn partition_to_change(
        &mut self,
        topic: &str,
        topic_id: &TopicId,
        partition: i32,
    ) -> Result<(&mut PartitionRecord, usize), MetadataError> {
        let stale = |why: &str| MetadataError::StalePartitionChange {
            topic: topic.to_string(),
            partition,
            why: why.to_string(),
        };
        let default = self.min_insync_default;
        let image = self.topic_mut(topic)?;
        if image.id != *topic_id {
            return Err(stale("the topic was deleted and created again"));
        }
        let index = usize::try_from(partition)
            .ok()
            .filter(|i| *i < image.partitions.len())
            .ok_or_else(|| stale("no such partition"))?;
        let min_isr = image.min_isr(&image.partitions[index], default);
        Ok((&mut image.partitions[index], min_isr))
    }

    /// The brokers that may not join an ISR: fenced ones and ones in
    /// controlled shutdown (see [`ineligible_joiners`]).
    pub fn barred_from_isr(&self) -> BTreeSet<i32> {
        self.fenced.union(&self.shutting_down).copied().collect()
    }

    /// `id` may have lost what it had not flushed: it is no longer an
    /// eligible leader of any partition.
    fn leave_elrs(&mut self, id: i32) {
        for topic in self.topics.values_mut() {
            if !topic.partitions.iter().any(|p| p.elr.contains(&id)) {
                continue;
            }
            for p in &mut Arc::make_mut(topic).partitions {
                if p.elr.contains(&id) {
                    p.elr.retain(|r| *r != id);
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// `id` is alive again: partitions without a leader whose ISR names
    /// it are led by it (a clean election: it has everything committed).
    fn unfence(&mut self, id: i32) {
        if !self.fenced.remove(&id) {
            return;
        }
        for topic in self.topics.values_mut() {
            if !topic
                .partitions
                .iter()
                .any(|p| p.leader < 0 && p.isr.contains(&id))
            {
                continue;
            }
            for p in &mut Arc::make_mut(topic).partitions {
                if p.leader < 0 && p.isr.contains(&id) {
                    p.leader = id;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
            }
        }
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut TopicImage, MetadataError> {
        self.topics
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: usize) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.into(),
            id: [7; 16],
            partitions: vec![PartitionRecord::single(1); partitions],
            overrides: BTreeMap::new(),
        }
    }

    /// A partition of replicas 1, 2, 3 at leader epoch 4, partition
    /// epoch 7.
    fn replicated(leader: i32, isr: Vec<i32>) -> PartitionRecord {
        PartitionRecord {
            replicas: vec![1, 2, 3],
            isr,
            leader,
            leader_epoch: 4,
            partition_epoch: 7,
            ..PartitionRecord::single(leader)
        }
    }

    #[test]
    fn fencing_moves_leadership_to_a_live_isr_member_and_a_return_restores_an_orphan() {
        let mut image = MetadataImage::default();
        image
            .apply(&MetadataRecord::CreateTopic {
                name: "t".into(),
                id: [1; 16],
                partitions: vec![replicated(1, vec![1, 2, 3]), replicated(2, vec![2, 3])],
                overrides: BTreeMap::new(),
            })
            .unwrap();
        image.apply(&MetadataRecord::FenceBroker { id: 1 }).unwrap();
        let p = &image.topics["t"].partitions;
        // Broker 1 led p0: the next live ISR member in replica order leads.
        assert_eq!(
            (p[0].leader, p[0].leader_epoch, p[0].partition_epoch),
            (2, 5, 8)
        );
        assert_eq!(p[0].isr, [2, 3]);
        // p1 did not involve broker 1 in its ISR or leadership.
        assert_eq!(
            (p[1].leader, p[1].leader_epoch, p[1].partition_epoch),
            (2, 4, 7)
        );

        image.apply(&MetadataRecord::FenceBroker { id: 2 }).unwrap();
        image.apply(&MetadataRecord::FenceBroker { id: 3 }).unwrap();
        let p = &image.topics["t"].partitions;
        // The last ISR member stays in it; the partition has no leader.
        assert_eq!((p[0].leader, &p[0].isr), (-1, &vec![3]));
        // Broker 2 coming back leads nothing it is not in the ISR of.
        image
            .apply(&MetadataRecord::UnfenceBroker { id: 2 })
            .unwrap();
        assert_eq!(image.topics["t"].partitions[0].leader, -1);
        // Broker 3, the last in-sync replica, leads again when it returns.
        image
            .apply(&MetadataRecord::UnfenceBroker { id: 3 })
            .unwrap();
        let p = &image.topics["t"].partitions;
        assert_eq!((p[0].leader, p[1].leader), (3, 3));
        assert!(image.fenced.contains(&1) && !image.fenced.contains(&3));
    }

    #[test]
    fn topics_are_created_grown_altered_and_deleted() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 2)).unwrap();
        image
            .apply(&MetadataRecord::CreatePartitions {
                name: "t".into(),
                first: 2,
                partitions: vec![PartitionRecord::single(1)],
            })
            .unwrap();
        assert_eq!(image.topics["t"].partitions.len(), 3);
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        image
            .apply(&MetadataRecord::AlterTopicConfigs {
                name: "t".into(),
                overrides: overrides.clone(),
            })
            .unwrap();
        assert_eq!(image.topics["t"].overrides, overrides);
        image
            .apply(&MetadataRecord::DeleteTopic { name: "t".into() })
            .unwrap();
        assert!(image.topics.is_empty());
    }

    #[test]
    fn a_record_that_does_not_fit_changes_nothing() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 1)).unwrap();
        let before = image.clone();
        assert_eq!(
            image.apply(&create("t", 4)),
            Err(MetadataError::TopicExists("t".into()))
        );
        assert_eq!(
            image.apply(&create("u", 0)),
            Err(MetadataError::NoPartitions)
        );
        // A proposer that saw 2 partitions where there is 1.
        assert!(matches!(
            image.apply(&MetadataRecord::CreatePartitions {
                name: "t".into(),
                first: 2,
                partitions: vec![PartitionRecord::single(1)],
            }),
            Err(MetadataError::PartitionCountChanged { actual: 1, .. })
        ));
        for record in [
            MetadataRecord::DeleteTopic { name: "u".into() },
            MetadataRecord::CreatePartitions {
                name: "u".into(),
                first: 0,
                partitions: vec![PartitionRecord::single(1)],
            },
            MetadataRecord::AlterTopicConfigs {
                name: "u".into(),
                overrides: BTreeMap::new(),
            },
        ] {
            assert_eq!(
                image.apply(&record),
                Err(MetadataError::UnknownTopic("u".into()))
            );
        }
        assert_eq!(image, before);
    }

    #[test]
    fn a_published_copy_does_not_see_later_changes() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 1)).unwrap();
        let published = image.clone();
        image
            .apply(&MetadataRecord::CreatePartitions {
                name: "t".into(),
                first: 1,
                partitions: vec![PartitionRecord::single(1)],
            })
            .unwrap();
        assert_eq!(published.topics["t"].partitions.len(), 1);
        assert_eq!(image.topics["t"].partitions.len(), 2);
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut image = MetadataImage::default();
        let mut reserve =
            |count| image.apply(&MetadataRecord::AllocateProducerIds { broker: 1, count });
        assert_eq!(reserve(1000), Ok(Applied::ProducerIds { first: 0 }));
        assert_eq!(reserve(10), Ok(Applied::ProducerIds { first: 1000 }));
        assert_eq!(reserve(0), Err(MetadataError::ProducerIdsExhausted(0)));
        assert_eq!(
            reserve(i64::MAX),
            Err(MetadataError::ProducerIdsExhausted(i64::MAX))
        );
        assert_eq!(reserve(1), Ok(Applied::ProducerIds { first: 1010 }));
    }

    fn registration(port: u16, incarnation: &str) -> MetadataRecord {
        MetadataRecord::RegisterBroker(BrokerRegistration {
            id: 1,
            host: "h".into(),
            port,
            rack: None,
            incarnation: incarnation.into(),
            min_insync_replicas: 1,
            data_intact: true,
            epoch: -1,
        })
    }

    #[test]
    fn re_registration_replaces_the_endpoint_with_a_larger_epoch() {
        let mut image = MetadataImage::default();
        let mut epochs = Vec::new();
        for port in [9092, 9093] {
            match image.apply(&registration(port, "a")).unwrap() {
                Applied::BrokerEpoch { epoch } => epochs.push(epoch),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(image.brokers.len(), 1);
        assert_eq!(image.brokers[&1].port, 9093);
        assert!(epochs[0] < epochs[1], "{epochs:?}");
        assert_eq!(image.brokers[&1].epoch, epochs[1]);
    }

    /// Partitions over brokers 1, 2, 3 (epochs 4/7): p0 led by 1 with all
    /// in sync, p1 led by 1 alone in its ISR, p2 led by 2 with all.
    fn three_partitions(image: &mut MetadataImage) {
        let p = replicated;
        image
            .apply(&MetadataRecord::CreateTopic {
                name: "t".into(),
                id: [1; 16],
                partitions: vec![p(1, vec![1, 2, 3]), p(1, vec![1]), p(2, vec![1, 2, 3])],
                overrides: BTreeMap::new(),
            })
            .unwrap();
    }

    #[test]
    fn a_new_run_of_a_broker_leaves_the_isrs_it_may_have_lost_data_of() {
        let mut image = MetadataImage::default();
        image.apply(&registration(9092, "a")).unwrap();
        three_partitions(&mut image);
        // The same run registering again (a retried proposal) is no restart.
        image.apply(&registration(9092, "a")).unwrap();
        assert_eq!(image.topics["t"].partitions[0].isr, [1, 2, 3]);
        image.apply(&registration(9092, "b")).unwrap();
        let p = &image.topics["t"].partitions;
        // It leaves the ISRs and its leaderships move, as when fenced...
        assert_eq!(
            (p[0].leader, &p[0].isr, p[0].leader_epoch),
            (2, &vec![2, 3], 5)
        );
        assert_eq!(
            (p[2].leader, &p[2].isr, p[2].leader_epoch),
            (2, &vec![2, 3], 4)
        );
        assert_eq!((p[0].partition_epoch, p[2].partition_epoch), (8, 8));
        // ...except where it is the last in-sync replica: it still leads.
        assert_eq!(
            (p[1].leader, &p[1].isr, p[1].partition_epoch),
            (1, &vec![1], 7)
        );
        assert!(image.fenced.is_empty());
    }

    #[test]
    fn a_failed_log_directory_fences_its_broker_until_it_recovers_or_restarts() {
        let mut image = MetadataImage::default();
        image.apply(&registration(9092, "a")).unwrap();
        let epoch = image.brokers[&1].epoch;
        three_partitions(&mut image);
        // A report from an earlier run changes nothing.
        let stale = MetadataRecord::LogDirFailed {
            id: 1,
            epoch: epoch - 1,
            lost_writes: false,
        };
        image.apply(&stale).unwrap();
        assert!(image.storage_failed.is_empty() && image.fenced.is_empty());
        let full = MetadataRecord::LogDirFailed {
            id: 1,
            epoch,
            lost_writes: false,
        };
        image.apply(&full).unwrap();
        let p = &image.topics["t"].partitions;
        // Fenced: its leaderships move, it leaves the ISRs; where it is the
        // last in-sync replica, nobody leads.
        assert_eq!((p[0].leader, &p[0].isr), (2, &vec![2, 3]));
        assert_eq!((p[1].leader, &p[1].isr), (-1, &vec![1]));
        assert_eq!(p[2].isr, [2, 3]);
        assert!(image.fenced.contains(&1) && image.storage_failed.contains(&1));
        // Its heartbeats do not unfence it while the failure lasts.
        image
            .apply(&MetadataRecord::UnfenceBroker { id: 1 })
            .unwrap();
        assert!(image.fenced.contains(&1));
        // Room again: unfenced, and it leads what only it had in sync.
        image
            .apply(&MetadataRecord::LogDirRecovered { id: 1, epoch })
            .unwrap();
        assert!(image.fenced.is_empty() && image.storage_failed.is_empty());
        assert_eq!(image.topics["t"].partitions[1].leader, 1);

        // Writes lost (a failed fsync): no longer an eligible leader either;
        // only a new run (registering) lifts it.
        if let Some(t) = image.topics.get_mut("t") {
            Arc::make_mut(t).partitions[0].elr = vec![1];
        }
        image
            .apply(&MetadataRecord::LogDirFailed {
                id: 1,
                epoch,
                lost_writes: true,
            })
            .unwrap();
        assert!(image.topics["t"].partitions[0].elr.is_empty());
        image.apply(&registration(9092, "b")).unwrap();
        assert!(image.storage_failed.is_empty() && image.fenced.is_empty());
    }

    #[test]
    fn isr_changes_from_an_earlier_run_of_the_leader_or_a_joining_replica_are_refused() {
        let mut image = MetadataImage::default();
        let epoch_of = |image: &mut MetadataImage, id: i32, run: &str| {
            let record = MetadataRecord::RegisterBroker(BrokerRegistration {
                id,
                host: "h".into(),
                port: 9092,
                rack: None,
                incarnation: run.into(),
                min_insync_replicas: 1,
                data_intact: true,
                epoch: -1,
            });
            match image.apply(&record).unwrap() {
                Applied::BrokerEpoch { epoch } => epoch,
                other => panic!("{other:?}"),
            }
        };
        let one = epoch_of(&mut image, 1, "1a");
        let two = epoch_of(&mut image, 2, "2a");
        epoch_of(&mut image, 3, "3a");
        three_partitions(&mut image);
        // p1: leader 1 adds 2, which caught up in its registration `two`.
        let alter = |broker_epoch: i64, joining: i64, partition_epoch: i32| {
            MetadataRecord::AlterPartition {
                topic: "t".into(),
                topic_id: [1; 16],
                partition: 1,
                leader: 1,
                leader_epoch: 4,
                partition_epoch,
                isr: vec![1, 2],
                broker_epoch,
                joining: BTreeMap::from([(2, joining)]),
                high_watermark: 0,
            }
        };
        let stale = |r: Result<Applied, MetadataError>| {
            matches!(r, Err(MetadataError::StalePartitionChange { .. }))
        };
        // Broker 2 restarted since its fetches caught it up: refused.
        let two_again = epoch_of(&mut image, 2, "2b");
        assert!(stale(image.apply(&alter(one, two, 7))));
        // A leader's proposal from before it registered again: refused.
        let one_again = epoch_of(&mut image, 1, "1b");
        assert!(stale(image.apply(&alter(one, two_again, 7))));
        assert_eq!(image.topics["t"].partitions[1].isr, [1]);
        // Broker 2 fenced (silent, or its log directory failed), or
        // stopping: it may not join however caught up it is.
        image.apply(&MetadataRecord::FenceBroker { id: 2 }).unwrap();
        assert!(stale(image.apply(&alter(one_again, two_again, 7))));
        image
            .apply(&MetadataRecord::UnfenceBroker { id: 2 })
            .unwrap();
        image
            .apply(&MetadataRecord::ShutdownBroker {
                id: 2,
                epoch: two_again,
            })
            .unwrap();
        assert!(stale(image.apply(&alter(one_again, two_again, 7))));
        assert_eq!(image.topics["t"].partitions[1].isr, [1]);
        // Registered again (the stop is over): the current runs of both
        // are applied.
        let two_now = epoch_of(&mut image, 2, "2c");
        image.apply(&alter(one_again, two_now, 7)).unwrap();
        assert_eq!(image.topics["t"].partitions[1].isr, [1, 2]);
    }

    #[test]
    fn only_fenced_or_stopping_brokers_that_are_not_members_yet_are_barred() {
        let barred = BTreeSet::from([3, 4]);
        assert_eq!(ineligible_joiners(&barred, &[1, 2], &[1, 2, 3]), [3]);
        assert_eq!(
            ineligible_joiners(&barred, &[1, 2], &[1, 2, 5]),
            Vec::<i32>::new()
        );
        // A member already in the ISR is the controller's to remove, not a
        // joiner.
        assert_eq!(
            ineligible_joiners(&barred, &[1, 3], &[1, 3]),
            Vec::<i32>::new()
        );
        assert_eq!(ineligible_joiners(&barred, &[1], &[1, 4, 3]), [4, 3]);
    }

    #[test]
    fn the_last_replicas_standing_stay_eligible_and_lead_cleanly_when_they_return() {
        use crate::controller::election;
        let register = |image: &mut MetadataImage, id: i32, run: &str, intact: bool| {
            image
                .apply(&MetadataRecord::RegisterBroker(BrokerRegistration {
                    id,
                    host: "h".into(),
                    port: 9092,
                    rack: None,
                    incarnation: run.into(),
                    min_insync_replicas: 2,
                    data_intact: intact,
                    epoch: -1,
                }))
                .unwrap();
        };
        let start = || {
            let mut image = MetadataImage::default();
            for id in 1..=3 {
                register(&mut image, id, "a", true);
            }
            three_partitions(&mut image);
            image
        };
        let p0 = |image: &MetadataImage| {
            let p = &image.topics["t"].partitions[0];
            (p.leader, p.isr.clone(), p.elr.clone())
        };
        let fence = |image: &mut MetadataImage, id: i32| {
            image.apply(&MetadataRecord::FenceBroker { id }).unwrap();
        };
        // Brokers die one after another: 1 (the ISR keeps two), then 2
        // (the ISR falls below two: 2 is remembered as eligible), then 3.
        let mut image = start();
        fence(&mut image, 1);
        assert_eq!(p0(&image), (2, vec![2, 3], vec![]));
        fence(&mut image, 2);
        assert_eq!(p0(&image), (3, vec![3], vec![2]));
        fence(&mut image, 3);
        assert_eq!(p0(&image), (-1, vec![3], vec![2]));
        let elect = |image: &mut MetadataImage| {
            for record in election::offline(image, false) {
                image.apply(&record).unwrap();
            }
        };
        // 1 returns first: it left while the ISR was large enough, so it
        // may not lead.
        register(&mut image, 1, "b", true);
        elect(&mut image);
        assert_eq!(p0(&image).0, -1);
        // 2 returns with its data: it leads, and 3 (the ISR it replaces,
        // still down) is eligible in its turn.
        register(&mut image, 2, "b", true);
        elect(&mut image);
        assert_eq!(p0(&image), (2, vec![2], vec![3]));
        // Once the ISR is large enough again, nobody else is eligible.
        let epoch = image.topics["t"].partitions[0].partition_epoch;
        let leader_epoch = image.topics["t"].partitions[0].leader_epoch;
        image
            .apply(&MetadataRecord::AlterPartition {
                topic: "t".into(),
                topic_id: [1; 16],
                partition: 0,
                leader: 2,
                leader_epoch,
                partition_epoch: epoch,
                isr: vec![2, 1],
                broker_epoch: -1,
                joining: BTreeMap::new(),
                high_watermark: 0,
            })
            .unwrap();
        assert_eq!(p0(&image), (2, vec![2, 1], vec![]));

        // The same, but 2 restarts after a machine restart with unflushed
        // data: it is no longer eligible, and the partition waits for 3.
        let mut image = start();
        for id in 1..=3 {
            fence(&mut image, id);
        }
        register(&mut image, 2, "b", false);
        elect(&mut image);
        assert_eq!(p0(&image), (-1, vec![3], vec![]));
        register(&mut image, 3, "b", true);
        elect(&mut image);
        assert_eq!(p0(&image).0, 3);
    }
}
