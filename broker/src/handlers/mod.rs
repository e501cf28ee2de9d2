//! One module per Kafka API. Each decodes its request body, does the work
//! (reaching partitions through their shards) and encodes its response.

pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_topic_partitions;
pub mod elect_leaders;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;

use crate::codec::{DecodeError, Request};
use crate::partition::budget::{Budget, Permit};
use crate::Broker;

/// What a handler produced: a response to send, or nothing (Produce with
/// `acks=0` gets no response).
pub type Reply = Result<Option<Response>, DecodeError>;

/// A response's bytes, and the budget bytes they hold until they have been
/// written to the socket (or the connection closes).
#[derive(Debug)]
pub struct Response {
    /// Written in order: the encoded response, in one piece or (Fetch)
    /// split around the record bytes it shares with the log reads and the
    /// segment file ranges it sends without reading.
    pub parts: Vec<crate::codec::Part>,
    pub held: Vec<Permit>,
}

impl From<Vec<u8>> for Response {
    fn from(bytes: Vec<u8>) -> Response {
        Response {
            parts: vec![crate::codec::Part::Memory(bytes.into())],
            held: Vec::new(),
        }
    }
}

/// What a handler may know of the connection its request came on.
#[derive(Debug)]
pub struct Connection {
    pub peer: std::net::SocketAddr,
    /// Response bytes this connection may hold in flight.
    pub budget: Arc<Budget>,
    /// Which shards its produces and fetches touch.
    pub affinity: Affinity,
}

/// The one shard a connection's last produces and fetches all touched, and
/// how many in a row did. A connection whose requests keep going to one
/// other shard is moved there (server.rs), so they stop costing a message
/// to that shard and one back, each a sleep and a wake-up of two threads.
#[derive(Debug, Default)]
pub struct Affinity {
    shard: AtomicUsize,
    streak: AtomicU32,
}

impl Affinity {
    /// A produce or fetch touched the partitions of `shards`. A request
    /// that touched none (every partition refused) changes nothing.
    pub fn note(&self, mut shards: impl Iterator<Item = usize>) {
        match (shards.next(), shards.next()) {
            (None, _) => {}
            (Some(shard), None) if self.shard.load(Ordering::Relaxed) == shard => {
                let streak = self.streak.load(Ordering::Relaxed);
                self.streak
                    .store(streak.saturating_add(1), Ordering::Relaxed);
            }
            (Some(shard), None) => {
                self.shard.store(shard, Ordering::Relaxed);
                self.streak.store(1, Ordering::Relaxed);
            }
            _ => self.streak.store(0, Ordering::Relaxed),
        }
    }

    /// The shard the last `at_least` produces and fetches all touched.
    pub fn settled(&self, at_least: u32) -> Option<usize> {
        (self.streak.load(Ordering::Relaxed) >= at_least)
            .then(|| self.shard.load(Ordering::Relaxed))
    }
}

pub async fn dispatch(broker: &Broker, request: Request, connection: &Connection) -> Reply {
    match request.api_key {
        ApiKey::ApiVersions => api_versions::handle(&request),
        ApiKey::Metadata => metadata::handle(broker, &request).await,
        ApiKey::Produce => produce::handle(broker, &request, connection, None).await,
        ApiKey::Fetch => fetch::handle(broker, &request, connection).await,
        ApiKey::ListOffsets => list_offsets::handle(broker, &request).await,
        ApiKey::CreateTopics => create_topics::handle(broker, &request).await,
        ApiKey::DeleteTopics => delete_topics::handle(broker, &request).await,
        ApiKey::CreatePartitions => create_partitions::handle(broker, &request).await,
        ApiKey::InitProducerId => init_producer_id::handle(broker, &request).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(broker, &request).await,
        ApiKey::DescribeCluster => describe_cluster::handle(broker, &request).await,
        ApiKey::ElectLeaders => elect_leaders::handle(broker, &request).await,
        ApiKey::DescribeTopicPartitions => {
            describe_topic_partitions::handle(broker, &request).await
        }
        ApiKey::DeleteRecords => delete_records::handle(broker, &request).await,
        ApiKey::FindCoordinator => find_coordinator::handle(broker, &request).await,
        ApiKey::JoinGroup => join_group::handle(broker, &request).await,
        ApiKey::SyncGroup => sync_group::handle(broker, &request).await,
        ApiKey::Heartbeat => heartbeat::handle(broker, &request).await,
        ApiKey::LeaveGroup => leave_group::handle(broker, &request).await,
        ApiKey::OffsetCommit => offset_commit::handle(broker, &request).await,
        ApiKey::OffsetFetch => offset_fetch::handle(broker, &request).await,
        ApiKey::ListGroups => list_groups::handle(broker, &request).await,
        ApiKey::DescribeGroups => describe_groups::handle(broker, &request).await,
        ApiKey::DeleteGroups => delete_groups::handle(broker, &request).await,
        ApiKey::DescribeConfigs => describe_configs::handle(broker, &request).await,
        ApiKey::IncrementalAlterConfigs => {
            incremental_alter_configs::handle(broker, &request).await
        }
        other => Err(DecodeError::UnsupportedVersion {
            api_key: other,
            version: request.version,
            correlation_id: request.header.correlation_id,
        }),
    }
}

/// NOT_COORDINATOR for a group another broker coordinates (or none does
/// yet): the client asks FindCoordinator again; COORDINATOR_LOAD_IN_PROGRESS
/// while this broker loads the group's offsets.
pub(crate) fn not_coordinator(broker: &Broker, group: &str) -> Option<i16> {
    use kafka_protocol::ResponseError;
    match broker.coordination(group) {
        crate::Coordination::Elsewhere => Some(ResponseError::NotCoordinator.code()),
        // This broker just became its coordinator and is replaying its
        // offsets: the client retries shortly.
        crate::Coordination::Loading => Some(ResponseError::CoordinatorLoadInProgress.code()),
        crate::Coordination::Ready => None,
    }
}

/// Encodes `body` as the response to `request`.
pub(crate) fn respond<T: kafka_protocol::protocol::Encodable>(
    request: &Request,
    body: &T,
) -> Reply {
    crate::codec::encode_response(
        request.api_key,
        request.version,
        request.header.correlation_id,
        body,
    )
    .map(|bytes| Some(Response::from(bytes)))
    .map_err(|e| DecodeError::Malformed {
        what: "response",
        reason: e.to_string(),
    })
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
