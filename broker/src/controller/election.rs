//! Leader elections: which replica should lead a partition, decided from
//! the metadata image (pure), and the active controller's loop that makes
//! the elections nobody asks for.
//!
//! - **Offline partitions** (no leader): the first live ISR member in
//!   replica order leads, else the first live eligible leader replica
//!   (KIP-966; a clean election either way: it has everything committed).
//!   If no ISR member is live and the topic allows it
//!   (`unclean.leader.election.enable`, topic or broker setting), the first
//!   live replica leads and becomes the whole ISR (an unclean election:
//!   what only the old ISR had is lost). Checked every
//!   [`OFFLINE_CHECK`], so turning the setting on elects within a second.
//! - **Preferred leaders** (`auto.leader.rebalance.enable`): every
//!   `leader.imbalance.check.interval.seconds`, for each broker whose share
//!   of the partitions it is the preferred leader (first replica) of but
//!   does not lead exceeds `leader.imbalance.per.broker.percentage`, those
//!   partitions go back to it where it is live and in the ISR.
//! - **ElectLeaders** asks for either kind on named partitions ([`elect`]).
//!
//! Every election is an `ElectLeader` record naming the partition epoch it
//! was decided against, so one decided on a stale image changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tracing::{info, warn};

use super::image::{MetadataImage, PartitionRecord, TopicImage};
use super::{MetadataRecord, Published, TypeConfig};

/// How often the active controller looks for offline partitions.
pub const OFFLINE_CHECK: Duration = Duration::from_millis(500);

/// The broker settings elections follow.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `unclean.leader.election.enable`, for topics that do not set it.
    pub unclean_default: bool,
    /// `auto.leader.rebalance.enable`.
    pub auto_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`.
    pub imbalance_check: Duration,
    /// `leader.imbalance.per.broker.percentage`.
    pub imbalance_percentage: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            unclean_default: false,
            auto_rebalance: true,
            imbalance_check: Duration::from_secs(300),
            imbalance_percentage: 10,
        }
    }
}

/// What an election is asked to do (ElectLeaders' election type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Give the partition to its preferred replica.
    Preferred,
    /// Give a partition without a live leader to a live ISR member, else
    /// to any live replica.
    Unclean,
}

/// Why no election was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// ELECTION_NOT_NEEDED: the partition already has what was asked.
    NotNeeded,
    /// PREFERRED_LEADER_NOT_AVAILABLE: the preferred replica is fenced or
    /// out of the ISR.
    PreferredNotAvailable,
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE: no live replica may lead.
    NoneEligible,
    /// UNKNOWN_TOPIC_OR_PARTITION.
    Unknown,
}

fn live(image: &MetadataImage, broker: i32) -> bool {
    image.brokers.contains_key(&broker) && !image.fenced.contains(&broker)
}

/// Whether `topic` allows unclean elections.
pub fn unclean_allowed(topic: &TopicImage, default: bool) -> bool {
    topic
        .overrides
        .get("unclean.leader.election.enable")
        .map_or(default, |v| v == "true")
}

fn record(
    name: &str,
    topic: &TopicImage,
    partition: i32,
    p: &PartitionRecord,
    leader: i32,
    unclean: bool,
) -> MetadataRecord {
    MetadataRecord::ElectLeader {
        topic: name.to_string(),
        topic_id: topic.id,
        partition,
        partition_epoch: p.partition_epoch,
        leader,
        unclean,
    }
}

/// The election `kind` asks for on `name`-`partition`.
pub fn elect(
    image: &MetadataImage,
    name: &str,
    partition: i32,
    kind: Kind,
) -> Result<MetadataRecord, Refusal> {
    let topic = image.topics.get(name).ok_or(Refusal::Unknown)?;
    let p = usize::try_from(partition)
        .ok()
        .and_then(|i| topic.partitions.get(i))
        .ok_or(Refusal::Unknown)?;
    match kind {
        Kind::Preferred => {
            let preferred = p.replicas.first().copied().ok_or(Refusal::NoneEligible)?;
            if p.leader == preferred {
                return Err(Refusal::NotNeeded);
            }
            if !live(image, preferred) || !p.isr.contains(&preferred) {
                return Err(Refusal::PreferredNotAvailable);
            }
            Ok(record(name, topic, partition, p, preferred, false))
        }
        Kind::Unclean => {
            if p.leader >= 0 && live(image, p.leader) {
                return Err(Refusal::NotNeeded);
            }
            let replicas = || p.replicas.iter().copied().filter(|r| live(image, *r));
            // An ISR member, else an eligible leader replica (KIP-966):
            // either has everything committed.
            if let Some(clean) = replicas()
                .find(|r| p.isr.contains(r))
                .or_else(|| replicas().find(|r| p.elr.contains(r)))
            {
                return Ok(record(name, topic, partition, p, clean, false));
            }
            replicas()
                .next()
                .map(|r| record(name, topic, partition, p, r, true))
                .ok_or(Refusal::NoneEligible)
        }
    }
}

/// The elections that bring offline partitions back: clean wherever a
/// live ISR member exists, unclean where none does and the topic allows it.
pub fn offline(image: &MetadataImage, unclean_default: bool) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for (name, topic) in &image.topics {
        let unclean = unclean_allowed(topic, unclean_default);
        for (index, p) in topic.partitions.iter().enumerate() {
            if p.leader >= 0 && live(image, p.leader) {
                continue;
            }
            match elect(image, name, index as i32, Kind::Unclean) {
                Ok(MetadataRecord::ElectLeader { unclean: true, .. }) if !unclean => {}
                Ok(election) => out.push(election),
                Err(_) => {}
            }
        }
    }
    out
}

/// Preferred-leader elections for every broker whose led share of the
/// partitions it prefers is short by more than `percentage` percent.
pub fn rebalance(image: &MetadataImage, percentage: u32) -> Vec<MetadataRecord> {
    // Per preferred broker: the partitions it prefers, and those of them
    // it does not lead.
    type Share<'a> = (u64, Vec<(&'a str, i32)>);
    let mut share: BTreeMap<i32, Share<'_>> = BTreeMap::new();
    for (name, topic) in &image.topics {
        for (index, p) in topic.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let entry = share.entry(preferred).or_default();
            entry.0 += 1;
            if p.leader != preferred {
                entry.1.push((name, index as i32));
            }
        }
    }
    share
        .into_values()
        .filter(|(count, off)| off.len() as u64 * 100 > u64::from(percentage) * count)
        .flat_map(|(_, off)| off)
        .filter_map(|(name, p)| elect(image, name, p, Kind::Preferred).ok())
        .collect()
}

/// While this node leads the quorum: makes the offline and preferred
/// elections, one proposal per partition at a time.
pub async fn watch(
    raft: Raft<TypeConfig>,
    published: Arc<Published>,
    settings: Settings,
    fetch_timeout: Duration,
) {
    let in_flight: Arc<Mutex<BTreeSet<(String, i32)>>> = Arc::default();
    let mut next_rebalance = tokio::time::Instant::now() + settings.imbalance_check;
    loop {
        tokio::time::sleep(OFFLINE_CHECK).await;
        if !super::leads_in_touch(&raft.metrics().borrow(), super::lease(&raft)) {
            continue;
        }
        let image = published.get().1;
        let mut elections = offline(&image, settings.unclean_default);
        let now = tokio::time::Instant::now();
        if settings.auto_rebalance && now >= next_rebalance {
            next_rebalance = now + settings.imbalance_check;
            elections.extend(rebalance(&image, settings.imbalance_percentage));
        }
        for election in elections {
            let MetadataRecord::ElectLeader {
                topic,
                partition,
                leader,
                unclean,
                ..
            } = &election
            else {
                continue;
            };
            let key = (topic.clone(), *partition);
            if !in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                continue;
            }
            let hw = image.topics[topic].partitions[*partition as usize].high_watermark;
            let total = image.unclean_elections + 1;
            let (leader, unclean) = (*leader, *unclean);
            let (raft, in_flight) = (raft.clone(), in_flight.clone());
            tokio::spawn(async move {
                match super::propose(&raft, election, fetch_timeout).await {
                    Ok(_) if unclean => warn!(
                        partition = %format!("{}-{}", key.0, key.1),
                        leader,
                        last_reported_high_watermark = hw,
                        unclean_elections_total = total,
                        "unclean leader election: no in-sync replica was live, so an out-of-sync \
                         one leads; what it lacks below the last reported high watermark is lost"
                    ),
                    Ok(_) => {
                        info!(partition = %format!("{}-{}", key.0, key.1), leader, "leader elected")
                    }
                    Err(e) => {
                        warn!(partition = %format!("{}-{}", key.0, key.1), error = %e, "leader election failed")
                    }
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::image::BrokerRegistration;

    fn image(
        partitions: Vec<PartitionRecord>,
        fenced: &[i32],
        unclean: Option<&str>,
    ) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            image.brokers.insert(
                id,
                BrokerRegistration {
                    id,
                    host: "h".into(),
                    port: 9092,
                    rack: None,
                    incarnation: String::new(),
                    min_insync_replicas: 1,
                    data_intact: true,
                    epoch: id as i64,
                },
            );
        }
        image.fenced = fenced.iter().copied().collect();
        let overrides = unclean
            .map(|v| {
                BTreeMap::from([("unclean.leader.election.enable".to_string(), v.to_string())])
            })
            .unwrap_or_default();
        image.topics.insert(
            "t".into(),
            Arc::new(TopicImage {
                id: [1; 16],
                partitions,
                overrides,
            }),
        );
        image
    }

    fn p(replicas: &[i32], isr: &[i32], leader: i32) -> PartitionRecord {
        PartitionRecord {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 3,
            partition_epoch: 5,
            high_watermark: 0,
            unclean: false,
            elr: Vec::new(),
        }
    }

    /// (leader, unclean) of each election made.
    fn chosen(records: &[MetadataRecord]) -> Vec<(i32, i32, bool)> {
        records
            .iter()
            .map(|r| match r {
                MetadataRecord::ElectLeader {
                    partition,
                    leader,
                    unclean,
                    ..
                } => (*partition, *leader, *unclean),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn offline_partitions_get_a_live_isr_member_or_if_allowed_any_live_replica() {
        let partitions = vec![
            // Led and live: nothing to do.
            p(&[1, 2, 3], &[1, 2, 3], 1),
            // Leader fenced, ISR member 3 live: clean.
            p(&[2, 3, 1], &[2, 3], 2),
            // Only ISR member fenced; 1 live but out of sync.
            p(&[2, 1, 3], &[2], -1),
        ];
        let fenced = [2];
        assert_eq!(
            chosen(&offline(&image(partitions.clone(), &fenced, None), false)),
            [(1, 3, false)]
        );
        // Allowed by the broker default, or by the topic over it.
        for (default, topic) in [(true, None), (false, Some("true"))] {
            assert_eq!(
                chosen(&offline(
                    &image(partitions.clone(), &fenced, topic),
                    default
                )),
                [(1, 3, false), (2, 1, true)]
            );
        }
        // The topic may forbid what the broker allows.
        assert_eq!(
            chosen(&offline(&image(partitions, &fenced, Some("false")), true)),
            [(1, 3, false)]
        );
    }

    #[test]
    fn elect_leaders_answers_as_kafka_does() {
        let img = image(
            vec![
                p(&[1, 2, 3], &[1, 2, 3], 1),
                p(&[1, 2, 3], &[1, 2, 3], 2),
                p(&[3, 1, 2], &[1, 2], 1),
                p(&[2, 1, 3], &[2], 2),
            ],
            &[2],
            None,
        );
        let e = |partition, kind| elect(&img, "t", partition, kind).map(|r| chosen(&[r])[0]);
        assert_eq!(e(0, Kind::Preferred), Err(Refusal::NotNeeded));
        assert_eq!(e(1, Kind::Preferred), Ok((1, 1, false)));
        // Broker 3 is live but out of the ISR.
        assert_eq!(e(2, Kind::Preferred), Err(Refusal::PreferredNotAvailable));
        assert_eq!(e(0, Kind::Unclean), Err(Refusal::NotNeeded));
        // Broker 2 is fenced: its partitions need a leader.
        assert_eq!(e(1, Kind::Unclean), Ok((1, 1, false)));
        assert_eq!(e(3, Kind::Unclean), Ok((3, 1, true)));
        assert_eq!(e(9, Kind::Unclean), Err(Refusal::Unknown));
        let none = image(vec![p(&[2], &[2], 2)], &[2], None);
        assert_eq!(
            elect(&none, "t", 0, Kind::Unclean).map(|_| ()),
            Err(Refusal::NoneEligible)
        );
    }

    #[test]
    fn rebalance_moves_leadership_back_past_the_imbalance_threshold() {
        // Broker 1 prefers four partitions and leads two (50% off); broker
        // 2 prefers one and leads it.
        let partitions = vec![
            p(&[1, 2, 3], &[1, 2, 3], 1),
            p(&[1, 2, 3], &[1, 2, 3], 1),
            p(&[1, 2, 3], &[1, 2, 3], 2),
            p(&[1, 3, 2], &[3, 1], 3),
            p(&[2, 1, 3], &[2, 1, 3], 2),
        ];
        let img = image(partitions, &[], None);
        assert_eq!(chosen(&rebalance(&img, 10)), [(2, 1, false), (3, 1, false)]);
        assert!(rebalance(&img, 50).is_empty(), "50% is not above 50%");
    }
}
