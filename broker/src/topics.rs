//! Topics as this broker serves them: the controller's metadata image,
//! reconciled with the partition logs on this node.
//!
//! Every change (create, delete, grow, alter configs) is a record proposed
//! to the controller ([`crate::controller`]). Once Raft has committed and
//! applied it, the follower task ([`Topics::follow`], on shard 0) brings
//! the local logs in line with the new image — it opens new partitions
//! *before* publishing the image, so a client never sees a partition
//! whose log does not exist yet, and deletes removed ones *after*, so no
//! request finds a topic half-deleted — and then publishes it. A proposer
//! waits until its record is published before it answers.
//!
//! The published view sits behind a read-write lock: it is read once per
//! request, never on the engine's append or read path, and written only
//! when the metadata changes.

mod partition_metadata;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use futures_channel::oneshot;
use sluice_engine::{Engine, LogConfig, TopicPartition};
use tracing::{error, info, warn};

use crate::controller::image::{
    Applied, BrokerRegistration, MetadataImage, PartitionRecord, TopicId, TopicImage,
};
use crate::controller::{placement, Controller, MetadataError, MetadataRecord, ProposeError};

/// A topic as served: its image and the log configuration it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub image: Arc<TopicImage>,
    pub partitions: i32,
    /// The broker defaults with the topic's overrides applied.
    pub config: LogConfig,
    /// The cluster's `min.insync.replicas` for topics that do not set it.
    pub min_insync_default: i32,
}

impl TopicState {
    /// Whether `partition` is one of this topic's.
    pub fn has(&self, partition: i32) -> bool {
        (0..self.partitions).contains(&partition)
    }

    /// The broker leading `partition`, or -1 when none does (or it is not
    /// one of this topic's).
    pub fn leader(&self, partition: i32) -> i32 {
        self.record(partition).map_or(-1, |p| p.leader)
    }

    /// Whether `broker` holds a replica of `partition`.
    pub fn hosted_by(&self, partition: i32, broker: i32) -> bool {
        self.record(partition)
            .is_some_and(|p| p.replicas.contains(&broker))
    }

    fn record(&self, partition: i32) -> Option<&PartitionRecord> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.image.partitions.get(i))
    }

    /// The leader epoch the metadata log gives `partition` (one of this
    /// topic's, see [`TopicState::has`]).
    pub fn leader_epoch(&self, partition: i32) -> i32 {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.image.partitions.get(i))
            .map_or(0, |p| p.leader_epoch)
    }

    /// How many replicas the metadata log gives `partition`.
    pub fn replica_count(&self, partition: i32) -> usize {
        self.record(partition).map_or(0, |p| p.replicas.len())
    }

    /// How many in-sync replicas the metadata log gives `partition`.
    pub fn in_sync_replicas(&self, partition: i32) -> usize {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.image.partitions.get(i))
            .map_or(0, |p| p.isr.len())
    }

    /// The topic-level settings this topic sets (Kafka names).
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.image.overrides
    }

    pub fn id(&self) -> TopicId {
        self.image.id
    }

    /// How many in-sync replicas `partition` needs (see
    /// [`TopicImage::min_isr`]); 1 for a partition it does not have.
    pub fn min_isr(&self, partition: i32) -> usize {
        self.record(partition)
            .map_or(1, |p| self.image.min_isr(p, self.min_insync_default))
    }

    fn from_image(
        base: &LogConfig,
        name: &str,
        image: &Arc<TopicImage>,
        min_insync_default: i32,
    ) -> TopicState {
        let config = crate::topic_configs::apply(base, &image.overrides).unwrap_or_else(|why| {
            // Overrides are validated before they are proposed; a broker
            // default changed since can still make one invalid.
            warn!(topic = name, error = %why, "a topic setting does not apply; using the broker defaults");
            base.clone()
        });
        TopicState {
            image: image.clone(),
            partitions: i32::try_from(image.partitions.len()).unwrap_or(i32::MAX),
            config,
            min_insync_default,
        }
    }
}

/// Why a topic change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("unknown topic {0:?}")]
    Unknown(String),
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error(transparent)]
    Controller(ProposeError),
}

impl From<ProposeError> for TopicError {
    fn from(e: ProposeError) -> TopicError {
        match e {
            ProposeError::Rejected(MetadataError::TopicExists(name)) => TopicError::Exists(name),
            ProposeError::Rejected(MetadataError::UnknownTopic(name)) => TopicError::Unknown(name),
            ProposeError::Rejected(
                e @ (MetadataError::NoPartitions | MetadataError::PartitionCountChanged { .. }),
            ) => TopicError::InvalidPartitions(e.to_string()),
            e => TopicError::Controller(e),
        }
    }
}

/// Kafka's topic-name rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 249 {
        return Err("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A fresh random topic id.
pub(crate) fn new_topic_id() -> TopicId {
    let mut id = [0u8; 16];
    // SAFETY: getrandom writes at most `id.len()` bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if usize::try_from(n).ok() != Some(id.len()) {
        // Never on Linux ≥ 3.17 for 16 bytes; fall back to the clock.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        id = now.to_le_bytes();
    }
    id
}

/// Every served topic by name: one `Arc` for a request to hold, so that
/// looking up its topics takes no lock and copies nothing.
pub type TopicsSnapshot = Arc<BTreeMap<String, Arc<TopicState>>>;

/// What the broker serves, as of metadata log index `index`.
#[derive(Default)]
struct View {
    index: u64,
    image: Arc<MetadataImage>,
    states: TopicsSnapshot,
}

/// How long a starting broker keeps trying to register while the
/// controller quorum cannot take the record.
const REGISTER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Topics {
    controller: Arc<Controller>,
    /// This broker's node id: it opens the logs of the partitions it holds
    /// a replica of, and only those.
    me: i32,
    /// The broker's log defaults, under every topic's overrides.
    base: LogConfig,
    view: RwLock<View>,
    /// Proposers waiting for their record's index to be published.
    waiters: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
}

impl Topics {
    pub fn new(controller: Arc<Controller>, me: i32, base: LogConfig) -> Topics {
        Topics {
            controller,
            me,
            base,
            view: RwLock::default(),
            waiters: Mutex::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The metadata log index the served view includes.
    pub fn index(&self) -> u64 {
        self.read().index
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicState>> {
        self.read().states.get(name).cloned()
    }

    /// Every served topic, as of now, for one request to look its topics
    /// up in: the lock is taken once per request, not once per topic.
    pub fn snapshot(&self) -> TopicsSnapshot {
        self.read().states.clone()
    }

    pub fn all(&self) -> Vec<(String, Arc<TopicState>)> {
        self.read()
            .states
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// The name of the topic with id `id`.
    pub fn name_of(&self, id: TopicId) -> Option<String> {
        self.read()
            .states
            .iter()
            .find(|(_, state)| state.id() == id)
            .map(|(name, _)| name.clone())
    }

    /// The whole published image (brokers and topics).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.read().image.clone()
    }

    fn states_of(&self, image: &MetadataImage) -> TopicsSnapshot {
        Arc::new(
            image
                .topics
                .iter()
                .map(|(name, topic)| {
                    (
                        name.clone(),
                        Arc::new(TopicState::from_image(
                            &self.base,
                            name,
                            topic,
                            image.min_insync_default,
                        )),
                    )
                })
                .collect(),
        )
    }

    fn publish(&self, index: u64, image: Arc<MetadataImage>, states: TopicsSnapshot) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = View {
            index,
            image,
            states,
        };
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let (ready, pending) = std::mem::take(&mut *waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|(i, _)| *i <= index);
        *waiters = pending;
        for (_, waiter) in ready {
            let _ = waiter.send(());
        }
    }

    /// Waits until the view includes metadata log index `index`.
    pub(crate) async fn published(&self, index: u64) {
        let wait = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            // `publish` updates the view before it takes this lock.
            if self.read().index >= index {
                return;
            }
            // Waiters that gave up (a follower manager's timer fired
            // first) go, so the list stays as long as the live ones.
            waiters.retain(|(_, tx)| !tx.is_canceled());
            let (tx, rx) = oneshot::channel();
            waiters.push((index, tx));
            rx
        };
        // The follower never drops a waiter without answering it.
        let _ = wait.await;
    }

    /// Proposes `record` and waits until the view includes it. A refused
    /// record waits too, for the view to include what the controller has
    /// applied: a creation refused because a racing request created the
    /// topic first answers only once that topic is served.
    async fn propose(&self, record: MetadataRecord) -> Result<(), TopicError> {
        match self.controller.propose(record).await {
            Ok(committed) => {
                self.published(committed.index).await;
                Ok(())
            }
            Err(e) => {
                if let ProposeError::Rejected(_) = e {
                    let (applied, _) = self.controller.published().get();
                    self.published(applied).await;
                }
                Err(e.into())
            }
        }
    }

    /// Start-up: opens every partition of the image the controller
    /// recovered, sets aside partition directories it does not know (left
    /// by a deletion cut short, or by another cluster) or whose
    /// `partition.metadata` names another topic id, and publishes.
    pub async fn load(&self, engine: &Engine, log_dir: &Path) -> Result<(), String> {
        let (index, image) = self.controller.published().get();
        let states = self.states_of(&image);
        for tp in engine.existing_partitions().map_err(|e| e.to_string())? {
            match states.get(&tp.topic) {
                Some(s) if s.hosted_by(tp.partition, self.me) => continue,
                Some(s) if s.has(tp.partition) => set_aside(
                    log_dir,
                    &tp,
                    "the metadata log places this partition's replicas on other brokers",
                )?,
                _ => set_aside(log_dir, &tp, "the metadata log has no such partition")?,
            }
        }
        for (name, state) in states.iter() {
            for p in (0..state.partitions).filter(|p| state.hosted_by(*p, self.me)) {
                let tp = TopicPartition::new(name.clone(), p);
                partition_metadata::prepare(log_dir, &tp, state.id()).await?;
                let report = engine
                    .open(tp.clone(), state.config.clone())
                    .await
                    .map_err(|e| format!("opening {tp}: {e}"))?;
                if report.bytes_truncated > 0 {
                    info!(partition = %tp, bytes = report.bytes_truncated, "recovery truncated a partition");
                }
            }
        }
        info!(index, topics = states.len(), "metadata loaded");
        self.publish(index, image, states);
        Ok(())
    }

    /// Follows the controller: reconciles the local logs with each newly
    /// applied image and publishes it. Runs for the life of the broker.
    pub async fn follow(&self, engine: &Engine) {
        loop {
            self.controller.published().changed().await;
            let (index, image) = self.controller.published().get();
            if index <= self.read().index {
                continue;
            }
            self.reconcile(engine, index, image).await;
        }
    }

    async fn reconcile(&self, engine: &Engine, index: u64, image: Arc<MetadataImage>) {
        let old = self.read().states.clone();
        let new = self.states_of(&image);
        for (name, state) in new.iter() {
            let opened_from = match old.get(name) {
                Some(before) if before.id() == state.id() => {
                    if before.config != state.config {
                        set_config(engine, name, before.partitions, &state.config).await;
                        info!(topic = %name, "topic configuration changed");
                    }
                    before.partitions
                }
                Some(before) => {
                    // Deleted and created again since the last image.
                    remove_logs(engine, name, before.partitions).await;
                    0
                }
                None => 0,
            };
            for p in (opened_from..state.partitions).filter(|p| state.hosted_by(*p, self.me)) {
                let tp = TopicPartition::new(name.clone(), p);
                let log_dir = &engine.config().data_dir;
                if let Err(e) = partition_metadata::prepare(log_dir, &tp, state.id()).await {
                    // Not opened: requests get UNKNOWN_TOPIC_OR_PARTITION
                    // rather than another topic's data.
                    error!(partition = %tp, error = %e, "preparing a partition directory failed");
                    continue;
                }
                match engine.open(tp.clone(), state.config.clone()).await {
                    Ok(_) | Err(sluice_engine::Error::PartitionExists(_)) => {}
                    Err(e) => error!(partition = %tp, error = %e, "opening a partition failed"),
                }
            }
            if opened_from < state.partitions {
                info!(topic = %name, partitions = state.partitions, "topic partitions ready");
            }
        }
        let removed: Vec<(String, i32)> = old
            .iter()
            .filter(|(name, _)| !new.contains_key(*name))
            .map(|(name, state)| (name.clone(), state.partitions))
            .collect();
        self.publish(index, image, new);
        for (name, partitions) in removed {
            remove_logs(engine, &name, partitions).await;
            info!(topic = %name, partitions, "deleted topic");
        }
    }

    /// Registers this run of the broker with the controller; returns the
    /// broker epoch the registration was given.
    /// While the quorum is still forming, a proposal may be given up
    /// (`Unavailable`, the leader that took it lost its quorum): it is made
    /// again, as a Kafka broker retries its registration, for up to
    /// [`REGISTER_RETRY_FOR`]. A record given up on may still be applied;
    /// the later registration of the same incarnation then supersedes it.
    pub async fn register(&self, registration: BrokerRegistration) -> Result<i64, TopicError> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(100);
        let committed = loop {
            let record = MetadataRecord::RegisterBroker(registration.clone());
            match self.controller.propose(record).await {
                Ok(committed) => break committed,
                Err(ProposeError::Unavailable(why)) if started.elapsed() < REGISTER_RETRY_FOR => {
                    warn!(error = %why, "registering with the controller: trying again");
                    compio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.published(committed.index).await;
        match committed.applied {
            Applied::BrokerEpoch { epoch } => Ok(epoch),
            other => Err(TopicError::Controller(ProposeError::Unavailable(format!(
                "a registration answered {other:?}"
            )))),
        }
    }

    /// This run of broker `id` (registered as `epoch`) is shutting down:
    /// once this returns, the image this broker serves shows it leading
    /// nothing and in no ISR it could leave.
    pub async fn shut_down(&self, id: i32, epoch: i64) -> Result<(), TopicError> {
        self.propose(MetadataRecord::ShutdownBroker { id, epoch })
            .await
    }

    /// Creates a topic of `partitions` partitions with `replication`
    /// replicas each, spread over the registered brokers
    /// ([`placement`]), with `overrides` (validated against the broker
    /// defaults first).
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        replication: i16,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<TopicState>, TopicError> {
        let count = usize::try_from(partitions)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                TopicError::InvalidPartitions("number of partitions must be at least 1".into())
            })?;
        self.create_placed(name, overrides, |id| self.place(id, 0, count, replication))
            .await
    }

    /// Creates a topic whose partition `i` has the replicas
    /// `assignment[i]` (its first the preferred leader), as CreateTopics'
    /// manual assignments ask.
    pub async fn create_assigned(
        &self,
        name: &str,
        assignment: Vec<Vec<i32>>,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<TopicState>, TopicError> {
        self.create_placed(name, overrides, |_| self.check_assignment(&assignment))
            .await
    }

    /// Partition records for a manual `assignment`, if every partition has
    /// replicas, on distinct registered brokers.
    pub fn check_assignment(
        &self,
        assignment: &[Vec<i32>],
    ) -> Result<Vec<PartitionRecord>, TopicError> {
        let image = self.image();
        if assignment.is_empty() {
            return Err(TopicError::InvalidPartitions(
                "number of partitions must be at least 1".into(),
            ));
        }
        for (index, replicas) in assignment.iter().enumerate() {
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let why = if replicas.is_empty() {
                Some("has no replicas".to_string())
            } else if distinct.len() != replicas.len() {
                Some(format!("names a broker twice in {replicas:?}"))
            } else {
                replicas
                    .iter()
                    .find(|b| !image.brokers.contains_key(b))
                    .map(|b| format!("names broker {b}, which is not registered"))
            };
            if let Some(why) = why {
                return Err(TopicError::InvalidReplicaAssignment(format!(
                    "partition {index} {why}"
                )));
            }
        }
        Ok(assignment
            .iter()
            .map(|replicas| PartitionRecord {
                leader: replicas[0],
                isr: replicas.clone(),
                replicas: replicas.clone(),
                ..PartitionRecord::single(replicas[0])
            })
            .collect())
    }

    async fn create_placed(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        place: impl FnOnce(&TopicId) -> Result<Vec<PartitionRecord>, TopicError>,
    ) -> Result<Arc<TopicState>, TopicError> {
        validate_name(name).map_err(|why| TopicError::InvalidName(name.to_string(), why))?;
        crate::topic_configs::apply(&self.base, &overrides).map_err(TopicError::InvalidConfig)?;
        if self.get(name).is_some() {
            return Err(TopicError::Exists(name.to_string()));
        }
        let id = new_topic_id();
        let partitions = place(&id)?;
        self.propose(MetadataRecord::CreateTopic {
            name: name.to_string(),
            id,
            partitions,
            overrides,
        })
        .await?;
        self.get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))
    }

    /// Replicas for `count` new partitions of the topic with id `id`,
    /// numbered from `first`, over the brokers registered now; where the
    /// rotation starts is taken from the topic id, so topics start on
    /// different brokers and a topic's later partitions continue its own.
    fn place(
        &self,
        id: &TopicId,
        first: usize,
        count: usize,
        replication: i16,
    ) -> Result<Vec<PartitionRecord>, TopicError> {
        let image = self.image();
        let candidates: Vec<placement::Candidate> = image
            .brokers
            .values()
            .map(|b| placement::Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect();
        let n = candidates.len().max(1);
        let start = usize::from(id[0]) % n;
        let shift = usize::from(id[1]) % n;
        let replication = usize::try_from(replication).unwrap_or(0);
        let placed = placement::place(&candidates, first, count, replication, start, shift)
            .ok_or_else(|| {
                TopicError::InvalidReplicationFactor(format!(
                    "replication factor {replication} needs that many brokers; {} registered",
                    candidates.len()
                ))
            })?;
        Ok(placed
            .into_iter()
            .map(|replicas| PartitionRecord {
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                high_watermark: 0,
                unclean: false,
                elr: Vec::new(),
            })
            .collect())
    }

    /// Checks that `replication` replicas can be placed now.
    pub fn check_replication(&self, replication: i16) -> Result<(), TopicError> {
        self.place(&[0; 16], 0, 1, replication).map(|_| ())
    }

    /// Deletes a topic: it leaves the published view first, so new
    /// requests see UNKNOWN_TOPIC_OR_PARTITION, then its logs go.
    pub async fn delete(&self, name: &str) -> Result<(), TopicError> {
        if self.get(name).is_none() {
            return Err(TopicError::Unknown(name.to_string()));
        }
        self.propose(MetadataRecord::DeleteTopic {
            name: name.to_string(),
        })
        .await
    }

    /// Replaces a topic's overrides, validated against the broker defaults.
    pub async fn alter(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        if self.get(name).is_none() {
            return Err(TopicError::Unknown(name.to_string()));
        }
        crate::topic_configs::apply(&self.base, &overrides).map_err(TopicError::InvalidConfig)?;
        if validate_only {
            return Ok(());
        }
        self.propose(MetadataRecord::AlterTopicConfigs {
            name: name.to_string(),
            overrides,
        })
        .await
    }

    /// Grows a topic to `count` partitions, the new ones with as many
    /// replicas as its first partition, placed as at creation.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let state = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if count <= state.partitions {
            return Err(TopicError::InvalidPartitions(format!(
                "the topic has {} partitions; {count} is not more",
                state.partitions
            )));
        }
        let first = state.image.partitions.len();
        let added = usize::try_from(count).unwrap_or(0).saturating_sub(first);
        let replication = state
            .image
            .partitions
            .first()
            .map_or(1, |p| p.replicas.len());
        let partitions = self.place(&state.id(), first, added, replication as i16)?;
        if validate_only {
            return Ok(());
        }
        self.propose(MetadataRecord::CreatePartitions {
            name: name.to_string(),
            first,
            partitions,
        })
        .await
    }

    /// The topic's state, creating it with `partitions` partitions of
    /// `replication` replicas and no overrides if it is missing and
    /// `auto_create` allows.
    pub async fn get_or_create(
        &self,
        name: &str,
        auto_create: bool,
        partitions: i32,
        replication: i16,
    ) -> Result<Option<Arc<TopicState>>, TopicError> {
        if let Some(state) = self.get(name) {
            return Ok(Some(state));
        }
        if !auto_create {
            return Ok(None);
        }
        match self
            .create(name, partitions, replication, BTreeMap::new())
            .await
        {
            Ok(state) => Ok(Some(state)),
            Err(TopicError::Exists(_)) => Ok(self.get(name)),
            Err(e) => Err(e),
        }
    }
}

/// Renames a partition directory that must not be served (`why`) to
/// `<dir>.<millis>.stray`, which is not a partition name, so its data is
/// kept for an operator but never served or reused.
fn set_aside(log_dir: &Path, tp: &TopicPartition, why: &str) -> Result<(), String> {
    let from = log_dir.join(tp.to_string());
    let millis = sluice_engine::shard::now_ms();
    let to = log_dir.join(format!("{tp}.{millis}.stray"));
    std::fs::rename(&from, &to).map_err(|e| format!("setting aside {}: {e}", from.display()))?;
    warn!(
        partition = %tp,
        moved_to = %to.display(),
        "{why}; set its directory aside"
    );
    Ok(())
}

async fn set_config(engine: &Engine, name: &str, partitions: i32, config: &LogConfig) {
    for p in 0..partitions {
        let tp = TopicPartition::new(name, p);
        let config = config.clone();
        let applied = engine
            .shard_for(&tp)
            .with_log(tp.clone(), move |log, _| {
                Box::pin(async move { log.set_config(config) })
            })
            .await;
        match applied {
            // A partition whose replicas are on other brokers.
            Ok(()) | Err(sluice_engine::Error::UnknownPartition(_)) => {}
            Err(e) => error!(partition = %tp, error = %e, "applying a topic configuration failed"),
        }
    }
}

async fn remove_logs(engine: &Engine, name: &str, partitions: i32) {
    for p in 0..partitions {
        let tp = TopicPartition::new(name, p);
        match engine.shard_for(&tp).close(tp.clone(), true).await {
            Ok(()) | Err(sluice_engine::Error::UnknownPartition(_)) => {}
            Err(e) => error!(partition = %tp, error = %e, "deleting a partition failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "has space", "slash/", "ü", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
