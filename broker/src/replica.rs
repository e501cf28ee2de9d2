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
//! The leader moves each fetcher's connection to the shard that owns its
//! partitions there after its first few fetches (brokers with as many
//! shards place a partition on the same shard index), so a follower's
//! fetch is read, parked and answered on one leader thread.
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
//! Each fetch names the epoch of the follower's last batch
//! (`last_fetched_epoch`). A leader whose log does not have the follower's
//! as a prefix (the follower took batches from an old leader that the new
//! one never had) answers `diverging_epoch`: where that epoch ends in its
//! log. The follower truncates exactly there ([`truncation_offset`]), never
//! blindly to its high watermark, and fetches again (KIP-320, KIP-595).
//! A follower whose log ends below its leader's log start (retention or
//! DeleteRecords moved it) empties its log and starts again there.
//!
//! Not yet: per-fetcher metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_engine::shard::LocalShard;
use sluice_engine::{AppendMode, Epoch, Offset, TopicPartition};
use tracing::{debug, info, warn};

use crate::config::ReplicaFetch;
use crate::controller::image::ineligible_joiners;
use crate::controller::MetadataRecord;
use crate::topics::TopicState;
use crate::{partition, Broker};

/// The Fetch version followers speak (the newest that names topics).
const FETCH_VERSION: i16 = 12;
/// Kafka's OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Pause after a failed connection or exchange (`replica.fetch.backoff.ms`).
const BACKOFF: Duration = Duration::from_millis(100);
/// Pause before asking again for partitions a leader refused, or that
/// this shard has not opened yet.
const RECHECK: Duration = Duration::from_millis(50);
/// Longest a shard goes without looking at the metadata for changes to its
/// followed set (it is woken by every change).
const METADATA_RECHECK: Duration = Duration::from_secs(1);

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
        let image = broker.topics.image();
        let barred = image.barred_from_isr();
        for mut change in partition::isr_changes(sluice_engine::shard::now_ms(), lag_max) {
            // A caught-up follower that is fenced (its log directory full,
            // say) may not join: the controller would refuse the change,
            // and it would be proposed again every check.
            let current = image
                .topics
                .get(&change.tp.topic)
                .and_then(|t| t.partitions.get(usize::try_from(change.tp.partition).ok()?))
                .map(|p| p.isr.clone())
                .unwrap_or_default();
            let refused = ineligible_joiners(&barred, &current, &change.isr);
            if !refused.is_empty() {
                change.isr.retain(|r| !refused.contains(r));
                change.joining.retain(|r, _| !refused.contains(r));
                let (mut left, mut now) = (change.isr.clone(), current);
                left.sort_unstable();
                now.sort_unstable();
                if left == now {
                    // Nothing else to change: proposed again from the
                    // image at a later check.
                    partition::isr_refused(&change);
                    continue;
                }
            }
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
                    broker_epoch: broker.controller.broker_epoch(),
                    joining: change.joining.clone(),
                    high_watermark: change.high_watermark.0,
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
            if let Some(local) = sluice_engine::shard::local() {
                partition::on_metadata(&local, me, &broker.topics.snapshot());
            }
            let mut wanted: BTreeMap<i32, Vec<Followed>> = BTreeMap::new();
            // A broker in controlled shutdown follows nothing any more.
            let stopping = broker.topics.image().shutting_down.contains(&me);
            for (name, state) in broker.topics.all().into_iter().filter(|_| !stopping) {
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
        // Woken by the next metadata change, so that a follower starts
        // copying a partition just created at once: acks=all produces to
        // it wait for that. The timer is only a safety net.
        let changed = std::pin::pin!(broker.topics.published(index + 1));
        let timer = std::pin::pin!(compio::time::sleep(METADATA_RECHECK));
        futures_util::future::select(changed, timer).await;
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
                    // Each fetch is one small write: send it at once.
                    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_nodelay(true) {
                        debug!(leader, error = %e, "TCP_NODELAY on the fetch connection");
                    }
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
    let settings = broker.config.replica_fetch;
    // A response holds at most `response_max_bytes`, or one whole batch
    // that is larger (up to `message.max.bytes`), plus its framing.
    let frame_max = (settings.response_max_bytes.max(settings.max_bytes) as usize)
        .max(broker.config.message_max_bytes)
        .saturating_mul(2);
    let mut correlation_id = 0i32;
    let mut expect = 0;
    loop {
        correlation_id = correlation_id.wrapping_add(1);
        let request = fetch_request(local, me, parts, &settings);
        stream
            .write_all(encode_request(&request, correlation_id)?)
            .await
            .0?;
        // Expecting about as much as last time, the response usually
        // comes in one receive.
        let frame = crate::frames::read_whole(&mut stream, expect, frame_max).await?;
        expect = frame.len() + frame.len() / 4;
        let mut body = Bytes::from(frame).slice(4..);
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
        let mut refused = false;
        for topic in response.responses {
            for data in topic.partitions {
                let key = (topic.topic.0.as_str(), data.partition_index);
                let Some(followed) = by_name.get(&key) else {
                    continue;
                };
                refused |= data.error_code != 0;
                take(broker, local, followed, data).await;
            }
        }
        // A refused partition makes the leader answer at once (metadata
        // not settled on one side yet, typically): ask again after a short
        // pause rather than at once, which would spin until it settles.
        if refused {
            compio::time::sleep(RECHECK).await;
        }
    }
}

/// Appends what the leader sent for one partition and takes its high
/// watermark; or truncates where the leader says this log diverges, or
/// starts again at the leader's log start.
async fn take(
    broker: &Broker,
    local: &LocalShard,
    followed: &Followed,
    data: kafka_protocol::messages::fetch_response::PartitionData,
) {
    let tp = &followed.tp;
    if data.diverging_epoch.end_offset >= 0 {
        let leader = (
            Epoch(data.diverging_epoch.epoch),
            Offset(data.diverging_epoch.end_offset),
        );
        let cut = local
            .with_log(tp, move |log, now| {
                Box::pin(async move {
                    let first_start = log.epoch_cache().entries().first().map(|&(_, s)| s);
                    let to = truncation_offset(
                        leader,
                        log.end_offset_for_epoch(leader.0),
                        first_start,
                        log.log_end_offset(),
                    );
                    log.truncate_to(to, now).await.map(|()| to)
                })
            })
            .await;
        match cut {
            Ok(to) => info!(
                partition = %tp,
                leader_epoch = leader.0 .0,
                leader_end = leader.1 .0,
                to = to.0,
                "the log diverged from the leader's: truncated"
            ),
            Err(e) => {
                warn!(partition = %tp, error = %e, "truncating to the divergence point failed")
            }
        }
        return;
    }
    if data.error_code == OFFSET_OUT_OF_RANGE && data.high_watermark >= 0 {
        let leader_start = Offset(data.log_start_offset);
        let cut = local
            .with_log(tp, move |log, now| {
                Box::pin(async move {
                    if log.log_end_offset() < leader_start {
                        // Retention or DeleteRecords on the leader moved
                        // its log start past this log's end: what lies
                        // between is gone, so start again there.
                        log.restart_at(leader_start, now)
                            .await
                            .map(|()| leader_start)
                    } else {
                        // This log is ahead of its leader's and has no
                        // leader epochs to locate the divergence (batches
                        // written before epochs were kept): cut back to the
                        // leader's high watermark, below which every ISR
                        // member agrees.
                        let to = Offset(data.high_watermark);
                        log.truncate_to(to, now).await.map(|()| to)
                    }
                })
            })
            .await;
        match cut {
            Ok(to) => {
                warn!(partition = %tp, to = to.0, "out of the leader's range: the log now ends at {}", to.0)
            }
            Err(e) => warn!(partition = %tp, error = %e, "truncating to the leader's range failed"),
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

/// Where a follower truncates when its leader answers that its log
/// diverges (KIP-320), given: `leader`, the largest epoch the leader has
/// at most this log's last epoch and where it ends there; `own`, this
/// log's answer for that epoch (its largest epoch at most the leader's,
/// and where that ends here, or −1s if it has none); `first_start`, where
/// this log's earliest known epoch starts; and the log end.
///
/// With the same epoch on both sides, the logs agree up to the smaller
/// end. When this log lacks the leader's epoch, what follows its own
/// largest earlier epoch is of epochs the leader never had: cut there and
/// let the next fetch compare again. With no earlier epoch at all, none
/// of this log's epochs is the leader's. The result is always below the
/// log end when the leader found a divergence, so the follower converges.
pub fn truncation_offset(
    leader: (Epoch, Offset),
    own: (Epoch, Offset),
    first_start: Option<Offset>,
    log_end: Offset,
) -> Offset {
    let (leader_epoch, leader_end) = leader;
    let to = if leader_epoch.0 < 0 {
        leader_end
    } else if own.0 == leader_epoch {
        leader_end.min(own.1)
    } else if own.0 .0 >= 0 {
        own.1
    } else {
        leader_end.min(first_start.unwrap_or(log_end))
    };
    to.min(log_end)
}

/// One fetch of every followed partition that is open here, from its log
/// end. While some are not open yet (a topic just created: the metadata
/// is ahead of this shard), the leader is asked not to park the fetch for
/// long, so that the next one, which includes them, follows soon: acks=all
/// produces to a new partition wait for its followers' first fetch.
fn fetch_request(
    local: &LocalShard,
    me: i32,
    parts: &[Followed],
    settings: &ReplicaFetch,
) -> FetchRequest {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    let mut all_open = true;
    for f in parts {
        let Some((log_end, last_epoch)) = local.log_end_and_epoch(&f.tp) else {
            all_open = false;
            continue;
        };
        topics.entry(f.tp.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(f.tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(log_end.0)
                .with_last_fetched_epoch(last_epoch.0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(settings.max_bytes),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(if all_open {
            settings.wait_max_ms
        } else {
            settings.wait_max_ms.min(RECHECK.as_millis() as i32)
        })
        .with_min_bytes(if all_open { settings.min_bytes } else { 1 })
        .with_max_bytes(settings.response_max_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_offsets_follow_the_divergence_rules() {
        let o = |v| Offset(v);
        let e = |v| Epoch(v);
        // (leader's answer, own answer for that epoch, own first epoch
        // start, log end) → truncate to.
        let cases = [
            // Same epoch, the leader's ended first: there.
            ((e(3), o(100)), (e(3), o(120)), Some(o(0)), o(120), 100),
            // Same epoch, this log's ended first (later epochs follow).
            ((e(3), o(100)), (e(3), o(90)), Some(o(0)), o(130), 90),
            // This log lacks epoch 4: it keeps up to the end of its epoch
            // 2, and the next fetch compares again.
            ((e(4), o(100)), (e(2), o(80)), Some(o(0)), o(130), 80),
            // No epoch here at most the leader's: keep what precedes this
            // log's first epoch, or the leader's end if lower.
            ((e(1), o(50)), (e(-1), o(-1)), Some(o(40)), o(70), 40),
            ((e(1), o(30)), (e(-1), o(-1)), Some(o(40)), o(70), 30),
            // The leader has no epoch that old: its log start.
            ((e(-1), o(20)), (e(2), o(60)), Some(o(0)), o(70), 20),
            // Never past the log end.
            ((e(3), o(500)), (e(3), o(600)), Some(o(0)), o(70), 70),
        ];
        for (leader, own, first, end, want) in cases {
            assert_eq!(
                truncation_offset(leader, own, first, end),
                Offset(want),
                "leader {leader:?}, own {own:?}, first {first:?}, end {end:?}"
            );
        }
    }
}
