//! The metadata records the controller's Raft log holds, and the image they
//! build: registered brokers, topics with their ids, partitions (replicas,
//! ISR, leader, leader epoch) and topic-level configuration overrides.
//!
//! Pure code: [`MetadataImage::apply`] is deterministic (no clock, no I/O,
//! no broker configuration), so every voter that applies the same log
//! reaches the same image. A record that does not fit the image (a topic
//! created twice by two racing requests, say) changes nothing and answers
//! an error to whoever proposed it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A broker as it registered with the controller: where clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
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
        }
    }
}

/// A topic id: 16 bytes, as Kafka's UUIDs.
pub type TopicId = [u8; 16];

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker's (re-)registration; replaces an earlier one with its id.
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
    /// or a stale proposal changes nothing.
    AlterPartition {
        topic: String,
        topic_id: TopicId,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
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
    /// it rejoins ISRs by catching up.
    UnfenceBroker {
        id: i32,
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
}

impl MetadataImage {
    /// Applies one record; on an error the image is unchanged.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<Applied, MetadataError> {
        match record {
            MetadataRecord::RegisterBroker(registration) => {
                self.brokers.insert(registration.id, registration.clone());
                self.unfence(registration.id);
            }
            MetadataRecord::FenceBroker { id } => {
                if !self.fenced.insert(*id) {
                    return Ok(Applied::Done);
                }
                let fenced = self.fenced.clone();
                for topic in self.topics.values_mut() {
                    if !topic.partitions.iter().any(|p| p.replicas.contains(id)) {
                        continue;
                    }
                    let topic = Arc::make_mut(topic);
                    for p in &mut topic.partitions {
                        if !p.replicas.contains(id) {
                            continue;
                        }
                        let mut changed = false;
                        if p.isr.contains(id) && p.isr.len() > 1 {
                            p.isr.retain(|r| r != id);
                            changed = true;
                        }
                        if p.leader == *id {
                            p.leader = p
                                .replicas
                                .iter()
                                .copied()
                                .find(|r| p.isr.contains(r) && !fenced.contains(r))
                                .unwrap_or(-1);
                            p.leader_epoch += 1;
                            changed = true;
                        }
                        if changed {
                            p.partition_epoch += 1;
                        }
                    }
                }
            }
            MetadataRecord::UnfenceBroker { id } => self.unfence(*id),
            MetadataRecord::AlterPartition {
                topic,
                topic_id,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let stale = |why: String| MetadataError::StalePartitionChange {
                    topic: topic.clone(),
                    partition: *partition,
                    why,
                };
                let image = self.topic_mut(topic)?;
                if image.id != *topic_id {
                    return Err(stale("the topic was deleted and created again".into()));
                }
                let record = usize::try_from(*partition)
                    .ok()
                    .and_then(|i| image.partitions.get_mut(i))
                    .ok_or_else(|| stale("no such partition".into()))?;
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
                record.isr = isr.clone();
                record.partition_epoch += 1;
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

    #[test]
    fn fencing_moves_leadership_to_a_live_isr_member_and_a_return_restores_an_orphan() {
        let mut image = MetadataImage::default();
        let replicated = |leader: i32, isr: Vec<i32>| PartitionRecord {
            replicas: vec![1, 2, 3],
            isr,
            leader,
            leader_epoch: 4,
            partition_epoch: 7,
        };
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

    #[test]
    fn re_registration_replaces_the_endpoint() {
        let mut image = MetadataImage::default();
        for port in [9092, 9093] {
            image
                .apply(&MetadataRecord::RegisterBroker(BrokerRegistration {
                    id: 1,
                    host: "h".into(),
                    port,
                    rack: None,
                }))
                .unwrap();
        }
        assert_eq!(image.brokers.len(), 1);
        assert_eq!(image.brokers[&1].port, 9093);
    }
}
