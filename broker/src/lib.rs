//! Sluice's broker shell: the Kafka wire protocol over the storage engine.
//!
//! # Layout
//!
//! - [`config`]: `server.properties` and `--set` overrides, Kafka's names.
//! - [`codec`]: framing, request headers, the supported API versions.
//! - [`controller`]: the metadata quorum (openraft): records, the image
//!   they build, the Raft log's storage.
//! - [`topics`]: the topics this broker serves, from the controller's
//!   image, reconciled with the local logs.
//! - [`topic_configs`]: topic-level settings and their sources.
//! - [`server`]: listeners on every shard (`SO_REUSEPORT`), connections,
//!   request dispatch.
//! - [`handlers`]: one module per Kafka API.
//! - [`partition`]: the broker's partition table on each shard (ISR, high
//!   watermark, leader epoch, high-watermark waiters) beside the engine's
//!   logs; the pure [`partition::state`]; byte budgets for responses.
//! - [`errors`]: engine errors as Kafka error codes.
//! - [`groups`]: consumer groups: the pure state machine, the coordinator
//!   that parks and answers requests, committed offsets in
//!   `__consumer_offsets`.
//! - [`producer_ids`]: producer ids (InitProducerId), reserved in blocks
//!   through the metadata log.
//! - [`alloc`]: the global allocator that keeps hostile array lengths from
//!   aborting the broker.

pub mod alloc;
pub mod codec;
pub mod config;
pub mod controller;
pub mod errors;
pub mod frames;
pub mod groups;
pub mod handlers;
pub mod partition;
pub mod producer_ids;
pub mod replica;
pub mod send;
pub mod server;
pub mod topic_configs;
pub mod topics;

use std::sync::Arc;

use sluice_engine::Engine;

#[global_allocator]
static GLOBAL: alloc::NoReserveLarge = alloc::NoReserveLarge;

/// What every connection shares. Read-mostly; the engine is reached by
/// messages to its shards.
pub struct Broker {
    pub config: config::BrokerConfig,
    /// The cluster's id (`meta.properties`, the metadata log).
    pub cluster_id: String,
    pub engine: Arc<Engine>,
    pub controller: Arc<controller::Controller>,
    pub topics: Arc<topics::Topics>,
    pub producer_ids: producer_ids::ProducerIds,
    pub groups: groups::coordinator::Coordinator,
    pub offsets: groups::offsets_topic::OffsetStore,
    /// Response bytes read for clients and not yet written to their sockets,
    /// broker-wide (`queued.max.request.bytes`).
    pub memory: Arc<partition::budget::Budget>,
    /// Request bytes read from clients and not yet handled, broker-wide
    /// (`queued.max.request.bytes`, as Kafka bounds them).
    pub requests: Arc<partition::budget::Budget>,
    /// The `__consumer_offsets` partitions whose groups this broker has
    /// replayed, and in which leader epoch.
    pub coordinating: groups::handover::Coordinating,
}

pub use groups::handover::Coordination;

impl Broker {
    /// Whether this broker must refuse a leader's request (produce, a
    /// consumer's fetch, ListOffsets, DeleteRecords, OffsetForLeaderEpoch)
    /// for `partition` of `state` with NOT_LEADER_OR_FOLLOWER: the
    /// partition exists and another broker, or none, leads it.
    pub fn not_leader(&self, state: Option<&topics::TopicState>, partition: i32) -> bool {
        state.is_some_and(|s| s.has(partition) && s.leader(partition) != self.config.node_id)
    }

    /// The error for a request that names the leader epoch it expects
    /// (`current_leader_epoch`, -1 for none): FENCED_LEADER_EPOCH if it is
    /// older than the partition's, UNKNOWN_LEADER_EPOCH if newer (this
    /// broker's metadata is behind), as KIP-320 has it.
    pub fn leader_epoch_error(
        &self,
        state: &topics::TopicState,
        partition: i32,
        current_leader_epoch: i32,
    ) -> Option<kafka_protocol::ResponseError> {
        use std::cmp::Ordering;
        if current_leader_epoch < 0 {
            return None;
        }
        match current_leader_epoch.cmp(&state.leader_epoch(partition)) {
            Ordering::Less => Some(kafka_protocol::ResponseError::FencedLeaderEpoch),
            Ordering::Greater => Some(kafka_protocol::ResponseError::UnknownLeaderEpoch),
            Ordering::Equal => None,
        }
    }

    /// The broker coordinating `group`: the leader of its
    /// `__consumer_offsets` partition, if it has one.
    pub fn coordinator_of(&self, group: &str) -> Option<i32> {
        let topic = self.topics.get(groups::offsets_topic::TOPIC)?;
        let leader = topic.leader(groups::offsets_topic::partition_for(group));
        (leader >= 0).then_some(leader)
    }

    /// Whether this broker coordinates `group` now: it leads the group's
    /// offsets partition and has replayed its groups in that leadership.
    /// Group requests for other groups get NOT_COORDINATOR (the client asks
    /// FindCoordinator again) or, while the replay runs,
    /// COORDINATOR_LOAD_IN_PROGRESS (see `handlers::not_coordinator`).
    pub fn coordinates(&self, group: &str) -> bool {
        self.coordination(group) == Coordination::Ready
    }

    /// Where this broker stands with `group`'s coordination.
    pub fn coordination(&self, group: &str) -> Coordination {
        let partition = groups::offsets_topic::partition_for(group);
        let (leader, epoch) = self
            .topics
            .get(groups::offsets_topic::TOPIC)
            .map_or((-1, 0), |t| {
                (t.leader(partition), t.leader_epoch(partition))
            });
        self.coordinating
            .stand(partition, leader == self.config.node_id, epoch)
    }

    /// The high watermark of `partition` of the topic (`state`, if it
    /// exists), read on its shard: the log end on a single node, the
    /// committed offset with replicas.
    pub async fn high_watermark(
        &self,
        state: Option<&Arc<topics::TopicState>>,
        topic: &str,
        partition: i32,
    ) -> sluice_engine::Result<Option<sluice_engine::Offset>> {
        let Some(state) = state.cloned() else {
            return Ok(None);
        };
        let tp = sluice_engine::TopicPartition::new(topic, partition);
        let me = self.config.node_id;
        self.engine
            .shard_for(&tp)
            .run(move |local| {
                Box::pin(async move { partition::high_watermark(&local, me, &tp, &state) })
            })
            .await?
            .map(Some)
    }

    /// Runs `f` on a partition's log, on the shard that owns it. A partition
    /// `state` (the topic, if it exists) does not have is
    /// `UnknownPartition`, which answers UNKNOWN_TOPIC_OR_PARTITION.
    pub async fn with_partition_log<R, F>(
        &self,
        state: Option<&topics::TopicState>,
        topic: &str,
        partition: i32,
        f: F,
    ) -> sluice_engine::Result<R>
    where
        R: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut sluice_engine::Log,
                u64,
            )
                -> futures_util::future::LocalBoxFuture<'a, sluice_engine::Result<R>>
            + Send
            + 'static,
    {
        let tp = sluice_engine::TopicPartition::new(topic, partition);
        if state.is_none_or(|s| !s.has(partition)) {
            return Err(sluice_engine::Error::UnknownPartition(tp));
        }
        self.engine.shard_for(&tp).with_log(tp.clone(), f).await
    }
}
