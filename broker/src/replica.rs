//! Followers: each shard copies the partitions it follows from their
//! leaders with the Fetch API, as a Kafka follower does.
//!
//! ```text
//!   shard k: manager ── one fetcher per leader broker, for the partitions
//!                       of shard k that broker leads and this one follows
//!     fetcher ──Fetch v12, replica_id = node.id──▶ leader's client listener
//!             ◀── records (whole batches, the leader's bytes)
//!     append as AppendMode::Follower on shard k (offsets and epochs kept)
//!     take the leader's high watermark (capped by what this replica has)
//! ```
//!
//! The fetch offset the follower sends is its log end: the leader counts
//! it as what the follower has, which moves the leader's high watermark
//! (`partition::on_follower_fetch`). The leader parks a fetch that finds
//! nothing new until its next append, so a follower sees an append one
//! round trip after it is made, and acks=all waits one more.
//!
//! Each shard also watches the ISRs of the partitions it leads
//! ([`watch_isr`]) and proposes the changes lag calls for.
//!
//! A follower asked to fetch past its leader's log end (it has more than a
//! newly elected leader) truncates to the leader's high watermark and
//! fetches again.
//!
//! Not yet (issue 10): truncation at the exact divergence point by leader
//! epoch (`last_fetched_epoch`); per-fetcher metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_engine::shard::LocalShard;
use sluice_engine::{AppendMode, Offset, TopicPartition};
use tracing::{debug, info, warn};

use crate::controller::MetadataRecord;
use crate::topics::TopicState;
use crate::{partition, Broker};

/// The Fetch version followers speak (the newest that names topics).
const FETCH_VERSION: i16 = 12;
/// How long the leader may park a fetch that finds nothing new
/// (`replica.fetch.wait.max.ms`).
const WAIT_MAX_MS: i32 = 500;
/// Most bytes per partition and per response (`replica.fetch.max.bytes`,
/// `replica.fetch.response.max.bytes`, Kafka's defaults).
const PARTITION_MAX_BYTES: i32 = 1 << 20;
const RESPONSE_MAX_BYTES: i32 = 10 << 20;
/// Kafka's OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Pause after a failed connection or exchange (`replica.fetch.backoff.ms`).
const BACKOFF: Duration = Duration::from_millis(100);
/// How often a shard looks for metadata changes to its followed set.
const RECHECK: Duration = Duration::from_millis(50);

/// A partition this shard follows.
#[derive(Clone)]
struct Followed {
    tp: TopicPartition,
    topic: Arc<TopicState>,
    leader_epoch: i32,
}

impl PartialEq for Followed {
    fn eq(&self, other: &Followed) -> bool {
        self.tp == other.tp
            && self.leader_epoch == other.leader_epoch
            && self.topic.id() == other.topic.id()
    }
}

/// Starts the follower manager on every shard.
pub fn start(broker: &Arc<Broker>) -> Result<(), String> {
    let runtime =
        sluice_engine::shard::client_runtime().map_err(|e| format!("start-up runtime: {e}"))?;
    for shard in broker.engine.shards() {
        let (broker, id) = (broker.clone(), shard.id());
        runtime
            .block_on(shard.spawn(move || {
                compio::runtime::spawn(watch_isr(broker.clone())).detach();
                compio::runtime::spawn(manage(broker, id)).detach();
            }))
            .map_err(|e| format!("starting the followers of shard {id}: {e}"))?;
    }
    Ok(())
}

/// On the partitions this shard leads: proposes the ISR changes that
/// `replica.lag.time.max.ms` calls for, as Kafka's leader sends
/// AlterPartition, checking a quarter of that period at a time.
async fn watch_isr(broker: Arc<Broker>) {
    let lag_max = broker.config.replica_lag_time_max_ms;
    let every = Duration::from_millis((lag_max / 4).clamp(10, 1000));
    loop {
        compio::time::sleep(every).await;
        for change in partition::isr_changes(sluice_engine::shard::now_ms(), lag_max) {
            let broker = broker.clone();
            compio::runtime::spawn(async move {
                let record = MetadataRecord::AlterPartition {
                    topic: change.tp.topic.clone(),
                    topic_id: change.topic_id,
                    partition: change.tp.partition,
                    leader: broker.config.node_id,
                    leader_epoch: change.leader_epoch,
                    partition_epoch: change.partition_epoch,
                    isr: change.isr.clone(),
                };
                match broker.controller.propose(record).await {
                    Ok(_) => info!(partition = %change.tp, isr = ?change.isr, "ISR changed"),
                    Err(e) => {
                        warn!(partition = %change.tp, isr = ?change.isr, error = %e, "ISR change refused");
                        partition::isr_refused(&change);
                    }
                }
            })
            .detach();
        }
    }
}

/// Keeps one fetcher per leader broker for the partitions of shard `shard`
/// that this broker follows, restarting a fetcher when its set changes.
async fn manage(broker: Arc<Broker>, shard: usize) {
    let me = broker.config.node_id;
    let mut running: HashMap<i32, (Vec<Followed>, compio::runtime::JoinHandle<()>)> =
        HashMap::new();
    let mut seen = None;
    loop {
        let index = broker.topics.index();
        if seen != Some(index) {
            seen = Some(index);
            let mut wanted: BTreeMap<i32, Vec<Followed>> = BTreeMap::new();
            for (name, state) in broker.topics.all() {
                for p in 0..state.partitions {
                    let leader = state.leader(p);
                    if leader == me || leader < 0 || !state.hosted_by(p, me) {
                        continue;
                    }
                    let tp = TopicPartition::new(name.clone(), p);
                    if broker.engine.shard_for(&tp).id() != shard {
                        continue;
                    }
                    wanted.entry(leader).or_default().push(Followed {
                        tp,
                        topic: state.clone(),
                        leader_epoch: state.leader_epoch(p),
                    });
                }
            }
            running.retain(|leader, (parts, _)| wanted.get(leader) == Some(parts));
            for (leader, parts) in wanted {
                if running.contains_key(&leader) {
                    continue;
                }
                info!(shard, leader, partitions = parts.len(), "following");
                let task =
                    compio::runtime::spawn(fetch_from(broker.clone(), leader, parts.clone()));
                running.insert(leader, (parts, task));
            }
        }
        compio::time::sleep(RECHECK).await;
    }
}

/// Fetches `parts` from `leader` for as long as this task lives,
/// reconnecting after any failure.
async fn fetch_from(broker: Arc<Broker>, leader: i32, parts: Vec<Followed>) {
    let Some(local) = sluice_engine::shard::local() else {
        warn!(leader, "a follower fetcher started off its shard");
        return;
    };
    loop {
        let addr = broker
            .topics
            .image()
            .brokers
            .get(&leader)
            .map(|b| format!("{}:{}", b.host, b.port));
        if let Some(addr) = addr {
            match TcpStream::connect(&addr).await {
                Ok(stream) => {
                    if let Err(e) = fetch_loop(&broker, &local, stream, &parts).await {
                        debug!(leader, %addr, error = %e, "follower fetch failed; reconnecting");
                    }
                }
                Err(e) => debug!(leader, %addr, error = %e, "cannot reach the leader"),
            }
        }
        compio::time::sleep(BACKOFF).await;
    }
}

/// Fetch after fetch on one connection.
async fn fetch_loop(
    broker: &Broker,
    local: &LocalShard,
    mut stream: TcpStream,
    parts: &[Followed],
) -> std::io::Result<()> {
    let me = broker.config.node_id;
    let by_name: HashMap<(&str, i32), &Followed> = parts
        .iter()
        .map(|f| ((f.tp.topic.as_str(), f.tp.partition), f))
        .collect();
    let frame_max = (RESPONSE_MAX_BYTES as usize)
        .max(broker.config.message_max_bytes)
        .saturating_mul(2);
    let mut correlation_id = 0i32;
    loop {
        correlation_id = correlation_id.wrapping_add(1);
        let request = fetch_request(local, me, parts);
        stream
            .write_all(encode_request(&request, correlation_id)?)
            .await
            .0?;
        let compio::BufResult(read, prefix) = stream.read_exact(Vec::with_capacity(4)).await;
        read?;
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > frame_max {
            return Err(std::io::Error::other(format!(
                "the leader sent a {len} byte frame"
            )));
        }
        let compio::BufResult(read, body) = stream.read_exact(Vec::with_capacity(len)).await;
        read?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(
            &mut body,
            ApiKey::Fetch.response_header_version(FETCH_VERSION),
        )
        .map_err(std::io::Error::other)?;
        if header.correlation_id != correlation_id {
            return Err(std::io::Error::other("the leader answered out of order"));
        }
        let response =
            FetchResponse::decode(&mut body, FETCH_VERSION).map_err(std::io::Error::other)?;
        if response.error_code != 0 {
            return Err(std::io::Error::other(format!(
                "the leader refused the fetch: error {}",
                response.error_code
            )));
        }
        for topic in response.responses {
            for data in topic.partitions {
                let key = (topic.topic.0.as_str(), data.partition_index);
                let Some(followed) = by_name.get(&key) else {
                    continue;
                };
                take(broker, local, followed, data).await;
            }
        }
    }
}

/// Appends what the leader sent for one partition and takes its high
/// watermark.
async fn take(
    broker: &Broker,
    local: &LocalShard,
    followed: &Followed,
    data: kafka_protocol::messages::fetch_response::PartitionData,
) {
    let tp = &followed.tp;
    if data.error_code == OFFSET_OUT_OF_RANGE && data.high_watermark >= 0 {
        // This replica has more than its leader: a new leader, elected
        // from the ISR, lacks what this one appended as the old leader or
        // fetched from it beyond the high watermark. Until leader epochs
        // locate the divergence (part 2), cut back to the leader's high
        // watermark, below which every ISR member agrees, and fetch again.
        let to = Offset(data.high_watermark);
        let cut = local
            .with_log(tp, move |log, now| Box::pin(log.truncate_to(to, now)))
            .await;
        match cut {
            Ok(()) => {
                warn!(partition = %tp, to = to.0, "ahead of the leader: truncated to its high watermark")
            }
            Err(e) => {
                warn!(partition = %tp, error = %e, "truncating to the leader's high watermark failed")
            }
        }
        return;
    }
    if data.error_code != 0 {
        // NOT_LEADER_OR_FOLLOWER while metadata settles, for instance; the
        // next fetch asks again.
        debug!(partition = %tp, error = data.error_code, "the leader refused a partition");
        return;
    }
    if let Some(records) = data.records.filter(|r| !r.is_empty()) {
        if let Err(e) = local.append(tp, records, AppendMode::Follower).await {
            warn!(partition = %tp, error = %e, "appending the leader's records failed");
            return;
        }
    }
    let me = broker.config.node_id;
    let leader_hw = Offset(data.high_watermark.max(0));
    if let Err(e) = partition::on_leader_high_watermark(local, me, tp, &followed.topic, leader_hw) {
        debug!(partition = %tp, error = %e, "taking the leader's high watermark");
    }
}

/// One fetch of every followed partition that is open here, from its log
/// end.
fn fetch_request(local: &LocalShard, me: i32, parts: &[Followed]) -> FetchRequest {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for f in parts {
        // Not open yet (the metadata is ahead of this shard): next time.
        let Some(log_end) = local.log_end_offset(&f.tp) else {
            continue;
        };
        topics.entry(f.tp.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(f.tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(log_end.0)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(PARTITION_MAX_BYTES),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(WAIT_MAX_MS)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_MAX_BYTES)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

fn encode_request(request: &FetchRequest, correlation_id: i32) -> std::io::Result<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(FETCH_VERSION)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-follower")));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    header
        .encode(
            &mut buf,
            ApiKey::Fetch.request_header_version(FETCH_VERSION),
        )
        .map_err(std::io::Error::other)?;
    request
        .encode(&mut buf, FETCH_VERSION)
        .map_err(std::io::Error::other)?;
    let len = u32::try_from(buf.len() - 4).map_err(std::io::Error::other)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}
