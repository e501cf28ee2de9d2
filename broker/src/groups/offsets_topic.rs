//! Committed offsets in the internal topic `__consumer_offsets`, in Kafka's
//! record format: key (version 1) = group, topic, partition; value
//! (version 3) = offset, leader epoch, metadata, commit timestamp; a null
//! value is a tombstone. Group membership too (Kafka's group metadata
//! record): key (version 2) = group; value (version 3) = protocol type,
//! generation, protocol, leader, timestamp and each member's ids, timeouts,
//! subscription and assignment; written when a rebalance ends or the group
//! empties, so that the broker that coordinates the group next (its
//! coordinator moved) lets the members go on without a rebalance. A group's records go to partition
//! `abs(javaHashCode(group)) % 50`, as in Kafka, so the latest record per key
//! is the committed offset.
//!
//! # Compaction
//!
//! Kafka compacts this topic in place. Sluice's logs keep offsets
//! contiguous, so a partition is compacted by checkpoint instead: once
//! `sluice.offsets.compact.records` records (and at least twice the live
//! ones) have been appended since the last time, the live offsets of its
//! groups are appended again as fresh records, the partition is flushed,
//! and its log start moves to the first of them (a durable DeleteRecords).
//! Replaying from the log start then still yields the latest record per
//! key, and the partition holds about one copy of the live offsets plus
//! what came since. A per-partition lock keeps commits and compaction
//! apart, so no commit can land below the new log start without being in
//! the checkpoint. The topic has no time or size retention: only
//! compaction removes records.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, RecordSet,
    TimestampType,
};
use sluice_engine::{Engine, Offset, TopicPartition};

use super::coordinator::{Committed, Coordinator};
use super::state::{Stored, StoredMember};
use crate::Broker;

pub const TOPIC: &str = "__consumer_offsets";
/// Kafka's `offsets.topic.num.partitions` default.
pub const PARTITIONS: i32 = 50;

/// Java's `String.hashCode`, over UTF-16 code units.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Whether `topic` is the broker's own: clients read it, but deleting,
/// re-partitioning or reconfiguring it is refused with INVALID_REQUEST.
/// Kafka's broker allows those and leaves the refusal to its command-line
/// tools; here every client gets it, because each of them loses or
/// scrambles every group's committed offsets.
pub fn is_internal(topic: &str) -> bool {
    topic == TOPIC
}

pub fn partition_for(group: &str) -> i32 {
    (java_hash(group) & 0x7fff_ffff) % PARTITIONS
}

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn get_string(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::try_from(buf.get_i16()).ok()?;
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

pub fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

pub fn encode_value(c: &Committed) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    buf.put_i64(c.offset);
    buf.put_i32(c.leader_epoch);
    put_string(&mut buf, &c.metadata);
    buf.put_i64(c.commit_timestamp_ms);
    buf.freeze()
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn get_nullable_string(buf: &mut Bytes) -> Option<Option<String>> {
    if buf.remaining() < 2 {
        return None;
    }
    if i16::from_be_bytes([buf[0], buf[1]]) < 0 {
        buf.advance(2);
        return Some(None);
    }
    get_string(buf).map(Some)
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

fn get_bytes(buf: &mut Bytes) -> Option<Vec<u8>> {
    if buf.remaining() < 4 {
        return None;
    }
    let len = usize::try_from(buf.get_i32()).ok()?;
    (buf.remaining() >= len).then(|| buf.split_to(len).to_vec())
}

/// The key of a group's membership record (version 2).
pub fn encode_group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(2);
    put_string(&mut buf, group);
    buf.freeze()
}

/// The group a membership key names; `None` for other keys.
pub fn decode_group_key(mut key: Bytes) -> Option<String> {
    if key.remaining() < 2 || key.get_i16() != 2 {
        return None;
    }
    get_string(&mut key)
}

pub fn encode_group_value(g: &Stored, now_ms: i64) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    put_string(&mut buf, &g.protocol_type);
    buf.put_i32(g.generation);
    put_nullable_string(&mut buf, g.protocol.as_deref());
    put_nullable_string(&mut buf, g.leader.as_deref());
    buf.put_i64(now_ms);
    buf.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_string(&mut buf, &m.id);
        put_nullable_string(&mut buf, m.group_instance_id.as_deref());
        put_string(&mut buf, &m.client_id);
        put_string(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

/// A membership value of versions 0–3 (Kafka's layouts: v1 adds the
/// rebalance timeout, v2 the state timestamp, v3 the instance id).
pub fn decode_group_value(mut v: Bytes) -> Option<Stored> {
    if v.remaining() < 2 {
        return None;
    }
    let version = v.get_i16();
    let protocol_type = get_string(&mut v)?;
    if v.remaining() < 4 {
        return None;
    }
    let generation = v.get_i32();
    let protocol = get_nullable_string(&mut v)?;
    let leader = get_nullable_string(&mut v)?;
    if version >= 2 {
        if v.remaining() < 8 {
            return None;
        }
        v.get_i64();
    }
    if v.remaining() < 4 {
        return None;
    }
    let count = v.get_i32().max(0) as usize;
    let mut members = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let id = get_string(&mut v)?;
        let group_instance_id = if version >= 3 {
            get_nullable_string(&mut v)?
        } else {
            None
        };
        let client_id = get_string(&mut v)?;
        let client_host = get_string(&mut v)?;
        let rebalance_timeout_ms = if version >= 1 {
            (v.remaining() >= 4).then(|| v.get_i32())?
        } else {
            -1
        };
        let session_timeout_ms = (v.remaining() >= 4).then(|| v.get_i32())?;
        let subscription = get_bytes(&mut v)?;
        let assignment = get_bytes(&mut v)?;
        let rebalance_timeout_ms = if rebalance_timeout_ms < 0 {
            session_timeout_ms
        } else {
            rebalance_timeout_ms
        };
        members.push(StoredMember {
            id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Some(Stored {
        protocol_type,
        generation,
        protocol,
        leader,
        members,
    })
}

/// (group, topic, partition) from an offset-commit key; `None` for other
/// record kinds (group metadata) and for malformed keys.
pub fn decode_key(mut key: Bytes) -> Option<(String, String, i32)> {
    if key.remaining() < 2 {
        return None;
    }
    if !matches!(key.get_i16(), 0 | 1) {
        return None;
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    if key.remaining() < 4 {
        return None;
    }
    Some((group, topic, key.get_i32()))
}

pub fn decode_value(mut value: Bytes) -> Option<Committed> {
    if value.remaining() < 2 {
        return None;
    }
    let version = value.get_i16();
    if value.remaining() < 8 {
        return None;
    }
    let offset = value.get_i64();
    let leader_epoch = if version >= 3 && value.remaining() >= 4 {
        value.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    let commit_timestamp_ms = if value.remaining() >= 8 {
        value.get_i64()
    } else {
        -1
    };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

/// The default of `sluice.offsets.compact.records`.
pub const COMPACT_RECORDS: u64 = 100_000;

/// How long a commit waits to be on every in-sync replica
/// (`offsets.commit.timeout.ms`, Kafka's default).
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest checkpoint batch, in key and value bytes.
const CHECKPOINT_BATCH_BYTES: usize = 256 << 10;

/// A partition's bookkeeping for compaction.
#[derive(Default)]
struct Growth {
    /// Records appended since the last compaction (or replayed at start).
    appended: u64,
    /// Live offsets the last checkpoint held.
    live: u64,
}

/// Writes and reads committed offsets through the engine.
pub struct OffsetStore {
    compact_after: u64,
    /// Per partition, behind a lock held across each commit and each
    /// compaction.
    partitions: Vec<futures_util::lock::Mutex<Growth>>,
}

impl OffsetStore {
    pub fn new(compact_after: u64) -> OffsetStore {
        OffsetStore {
            compact_after,
            partitions: (0..PARTITIONS)
                .map(|_| futures_util::lock::Mutex::new(Growth::default()))
                .collect(),
        }
    }

    fn lock(&self, partition: i32) -> futures_util::lock::MutexLockFuture<'_, Growth> {
        let index = usize::try_from(partition).unwrap_or(0);
        self.partitions[index % self.partitions.len()].lock()
    }

    /// Appends `records` to `partition` as its leader, through the
    /// partition table (the current leader epoch, the high watermark), and
    /// returns once they are committed: on every in-sync replica, as Kafka
    /// answers offset commits (`offsets.commit.required.acks` = -1).
    async fn append(
        &self,
        broker: &Broker,
        partition: i32,
        records: Vec<Record>,
    ) -> Result<Offset, String> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| format!("encoding offset records: {e}"))?;
        let tp = TopicPartition::new(TOPIC, partition);
        let topic = broker
            .topics
            .get(TOPIC)
            .ok_or_else(|| format!("{TOPIC} does not exist"))?;
        let me = broker.config.node_id;
        let records = buf.freeze();
        broker
            .engine
            .shard_for(&tp)
            .run(move |local| {
                Box::pin(async move {
                    let info = crate::partition::append(&local, me, &tp, &topic, records)
                        .await
                        .map_err(|e| e.to_string())?;
                    let committed = crate::partition::wait_for_high_watermark(
                        &local,
                        me,
                        &tp,
                        &topic,
                        info.last_offset,
                    );
                    match compio::time::timeout(COMMIT_TIMEOUT, committed).await {
                        Ok(Ok(hw)) if hw > info.last_offset => Ok(info.base_offset),
                        // Woken by a leader change, not by the commit.
                        Ok(Ok(_)) => Err(format!("{tp} changed leader before the commit")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!(
                            "the commit was not replicated to the ISR within {COMMIT_TIMEOUT:?}"
                        )),
                    }
                })
            })
            .await
            .map_err(|e| e.to_string())?
    }

    fn record(key: Bytes, value: Option<Bytes>, offset: i64, timestamp: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // kafka-protocol batches records while offset - sequence is constant.
            sequence: offset as i32 - 1,
            timestamp,
            key: Some(key),
            value,
            headers: Default::default(),
        }
    }

    /// Appends a group's commit, then makes it visible in `coordinator`
    /// (durable first, so an acknowledged commit survives a restart), and
    /// compacts the partition when it is due.
    pub async fn commit(
        &self,
        broker: &Broker,
        coordinator: &Coordinator,
        group: &str,
        offsets: Vec<((String, i32), Committed)>,
    ) -> Result<(), String> {
        let partition = partition_for(group);
        let mut growth = self.lock(partition).await;
        let records = offsets
            .iter()
            .enumerate()
            .map(|(i, ((topic, partition), c))| {
                Self::record(
                    encode_key(group, topic, *partition),
                    Some(encode_value(c)),
                    i as i64,
                    c.commit_timestamp_ms,
                )
            })
            .collect();
        self.append(broker, partition, records).await?;
        growth.appended += offsets.len() as u64;
        coordinator.record(group, offsets);
        if growth.appended >= self.compact_after.max(2 * growth.live) {
            match self.compact(broker, coordinator, partition).await {
                Ok(live) => {
                    *growth = Growth {
                        appended: live,
                        live,
                    }
                }
                // The commit itself is durable; compaction retries later.
                Err(e) => tracing::warn!(partition, error = %e, "compacting {TOPIC} failed"),
            }
        }
        Ok(())
    }

    /// Checkpoints partition `partition` (see the module documentation);
    /// returns how many live offsets the checkpoint holds. The caller holds
    /// the partition's lock.
    async fn compact(
        &self,
        broker: &Broker,
        coordinator: &Coordinator,
        partition: i32,
    ) -> Result<u64, String> {
        let engine = &broker.engine;
        let tp = TopicPartition::new(TOPIC, partition);
        let live = coordinator.committed_where(|group| partition_for(group) == partition);
        // Memberships too, as each group stands now (one mid-rebalance has
        // none to write: its members rejoin if its coordinator moves).
        let now = sluice_engine::shard::now_ms() as i64;
        let memberships: Vec<(Bytes, Bytes, i64)> = coordinator
            .stored_where(|group| partition_for(group) == partition)
            .into_iter()
            .map(|(group, stored)| {
                (
                    encode_group_key(&group),
                    encode_group_value(&stored, now),
                    now,
                )
            })
            .collect();
        let offsets = live.iter().map(|(group, (topic, p), c)| {
            (
                encode_key(group, topic, *p),
                encode_value(c),
                c.commit_timestamp_ms,
            )
        });
        let mut batches: Vec<Vec<Record>> = vec![Vec::new()];
        let mut bytes = 0;
        for (key, value, timestamp) in memberships.into_iter().chain(offsets) {
            if bytes + key.len() + value.len() > CHECKPOINT_BATCH_BYTES {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += key.len() + value.len();
            let batch = batches.last_mut().expect("one batch at least");
            let offset = batch.len() as i64;
            batch.push(Self::record(key, Some(value), offset, timestamp));
        }
        let mut start = None;
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            let base = self.append(broker, partition, batch).await?;
            start.get_or_insert(base);
        }
        let shard = engine.shard_for(&tp);
        // The checkpoint is durable before the records it replaces go.
        shard.flush(tp.clone()).await.map_err(|e| e.to_string())?;
        let start = match start {
            Some(start) => start,
            None => {
                shard
                    .info(tp.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .log_end_offset
            }
        };
        shard
            .with_log(tp.clone(), move |log, _| {
                Box::pin(async move { log.delete_records_before(start).await })
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(partition = %tp, live = live.len(), log_start = start.0, "compacted committed offsets");
        Ok(live.len() as u64)
    }

    /// Appends a group's membership (see the module documentation).
    pub async fn store_group(
        &self,
        broker: &Broker,
        group: &str,
        stored: &Stored,
    ) -> Result<(), String> {
        let partition = partition_for(group);
        let mut growth = self.lock(partition).await;
        let now = sluice_engine::shard::now_ms() as i64;
        let record = Self::record(
            encode_group_key(group),
            Some(encode_group_value(stored, now)),
            0,
            now,
        );
        self.append(broker, partition, vec![record]).await?;
        growth.appended += 1;
        Ok(())
    }

    /// Deletes a group for good: tombstones for its committed offsets at
    /// `keys` and for its membership.
    pub async fn tombstone(
        &self,
        broker: &Broker,
        group: &str,
        keys: &[(String, i32)],
    ) -> Result<(), String> {
        let partition = partition_for(group);
        let mut growth = self.lock(partition).await;
        let now = sluice_engine::shard::now_ms() as i64;
        // The group's membership record goes too.
        let keys = keys
            .iter()
            .map(|(topic, partition)| encode_key(group, topic, *partition))
            .chain(std::iter::once(encode_group_key(group)));
        let records: Vec<Record> = keys
            .enumerate()
            .map(|(i, key)| Self::record(key, None, i as i64, now))
            .collect();
        growth.appended += records.len() as u64;
        self.append(broker, partition, records).await?;
        Ok(())
    }

    /// Replays every `__consumer_offsets` partition this broker holds into
    /// the coordinator.
    pub async fn load(&self, engine: &Engine, coordinator: &Coordinator) -> Result<usize, String> {
        let mut restored = 0;
        for p in 0..PARTITIONS {
            restored += self.load_partition(engine, coordinator, p).await?;
        }
        Ok(restored)
    }

    /// Replays `__consumer_offsets` partition `p` into the coordinator, if
    /// this broker holds it; returns the records replayed.
    pub async fn load_partition(
        &self,
        engine: &Engine,
        coordinator: &Coordinator,
        p: i32,
    ) -> Result<usize, String> {
        let mut restored = 0;
        let tp = TopicPartition::new(TOPIC, p);
        let mut from: Option<Offset> = None;
        // The latest membership record of each group (`None`: a tombstone).
        let mut memberships: std::collections::BTreeMap<String, Option<Stored>> =
            Default::default();
        loop {
            let start = match from {
                Some(o) => o,
                None => match engine.shard_for(&tp).info(tp.clone()).await {
                    Ok(info) => info.log_start_offset,
                    // Its replicas are on other brokers, which coordinate
                    // its groups.
                    Err(sluice_engine::Error::UnknownPartition(_)) => break,
                    Err(e) => return Err(e.to_string()),
                },
            };
            let read = engine
                .read(tp.clone(), start, 1 << 20, None, true)
                .await
                .map_err(|e| format!("reading {tp}: {e}"))?;
            if read.records.is_empty() {
                break;
            }
            for set in decode_batches(&tp, read.records) {
                for record in set.records {
                    let Some(key) = record.key else {
                        continue;
                    };
                    if let Some(group) = decode_group_key(key.clone()) {
                        let stored = record.value.and_then(decode_group_value);
                        memberships.insert(group, stored);
                        restored += 1;
                        continue;
                    }
                    let Some((group, topic, partition)) = decode_key(key) else {
                        continue;
                    };
                    let value = record.value.and_then(decode_value);
                    coordinator.restore(&group, (topic, partition), value);
                    restored += 1;
                }
            }
            from = Some(read.next_offset);
        }
        // Every member gets a fresh session from now, as if it had just
        // heartbeated: the coordinator moved, the members did not.
        let now = sluice_engine::shard::now_ms();
        for (group, stored) in memberships {
            coordinator.restore_group(&group, stored, now);
        }
        // Replayed records count toward the next compaction.
        self.lock(p).await.appended = restored as u64;
        Ok(restored)
    }
}

/// Decodes the batches the engine read from `tp`, one at a time. A batch
/// that does not decode (a codec the decoder does not know, garbage records
/// behind a valid CRC: the engine checks only the CRC) is skipped with one
/// warning naming the partition and its offset, and the others still load:
/// one bad batch must not keep the broker from starting, nor cost the other
/// groups their offsets.
fn decode_batches(tp: &TopicPartition, bytes: Bytes) -> Vec<RecordSet> {
    let mut sets = Vec::new();
    let mut batches = sluice_engine::batch::batches(&bytes, usize::MAX);
    for item in batches.by_ref() {
        let (header, position) = match item {
            Ok(found) => found,
            Err(e) => {
                // The engine validated every batch it stored, so this is a
                // read that changed under us; nothing after it can be framed.
                tracing::warn!(partition = %tp, error = %e, "skipping the rest of a read of {TOPIC}: its batches cannot be framed");
                break;
            }
        };
        let mut one = bytes.slice(position..position + header.total_len());
        match RecordBatchDecoder::decode(&mut one) {
            Ok(set) => sets.push(set),
            Err(e) => tracing::warn!(
                partition = %tp,
                offset = header.base_offset,
                error = %e,
                "skipping a batch of {TOPIC} that does not decode; the committed offsets it held are lost"
            ),
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_partitions_as_kafka_does() {
        // Java: "my-group".hashCode() == -1906497762; Kafka's Utils.abs
        // masks the sign bit: 240985886 % 50 == 36.
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(partition_for("my-group"), 36);
        assert!((0..50).contains(&partition_for("\u{7fff}weird")));
    }

    fn commit_batch(group: &str, offset: i64) -> Vec<u8> {
        let c = Committed {
            offset,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        };
        let record = OffsetStore::record(encode_key(group, "t", 0), Some(encode_value(&c)), 0, 1);
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn a_batch_that_does_not_decode_is_skipped_and_the_others_load() {
        let mut unknown_codec = commit_batch("lost", 1);
        sluice_engine::batch::set_compression_id(&mut unknown_codec, 7).unwrap();
        let mut garbage = commit_batch("lost", 2);
        let end = garbage.len();
        garbage[sluice_engine::batch::HEADER_LEN..end].fill(0xff);
        sluice_engine::batch::reseal(&mut garbage).unwrap();
        let mut bytes = commit_batch("a", 10);
        bytes.extend(unknown_codec);
        bytes.extend(garbage);
        bytes.extend(commit_batch("b", 20));
        let sets = decode_batches(&TopicPartition::new(TOPIC, 0), Bytes::from(bytes));
        let groups: Vec<_> = sets
            .into_iter()
            .flat_map(|s| s.records)
            .filter_map(|r| r.key.and_then(decode_key))
            .map(|(group, _, _)| group)
            .collect();
        assert_eq!(groups, ["a", "b"]);
    }

    #[test]
    fn keys_and_values_round_trip_and_garbage_is_skipped() {
        let key = encode_key("g", "t", 3);
        assert_eq!(decode_key(key), Some(("g".into(), "t".into(), 3)));
        let c = Committed {
            offset: 42,
            leader_epoch: 0,
            metadata: "m".into(),
            commit_timestamp_ms: 7,
        };
        assert_eq!(decode_value(encode_value(&c)), Some(c));
        assert_eq!(decode_key(Bytes::from_static(b"\x00\x02junk")), None);
        assert_eq!(decode_value(Bytes::from_static(b"\x00")), None);
    }

    #[test]
    fn memberships_round_trip_and_are_told_apart_from_offsets() {
        let stored = Stored {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("a-1".into()),
            members: vec![
                StoredMember {
                    id: "a-1".into(),
                    group_instance_id: None,
                    client_id: "a".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: vec![0, 1, 2],
                    assignment: vec![3, 4],
                },
                StoredMember {
                    id: "b-2".into(),
                    group_instance_id: Some("static-b".into()),
                    client_id: "b".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 60_000,
                    session_timeout_ms: 10_000,
                    subscription: Vec::new(),
                    assignment: Vec::new(),
                },
            ],
        };
        let key = encode_group_key("g");
        assert_eq!(decode_group_key(key.clone()).as_deref(), Some("g"));
        // Neither decoder takes the other's key.
        assert_eq!(decode_key(key), None);
        assert_eq!(decode_group_key(encode_key("g", "t", 0)), None);
        let value = encode_group_value(&stored, 1234);
        assert_eq!(decode_group_value(value.clone()), Some(stored));
        // An empty group (no protocol, no leader) round-trips too.
        let empty = Stored {
            protocol_type: "consumer".into(),
            generation: 8,
            protocol: None,
            leader: None,
            members: Vec::new(),
        };
        assert_eq!(
            decode_group_value(encode_group_value(&empty, 0)),
            Some(empty)
        );
        // Cut anywhere, it is refused rather than misread.
        for len in 0..value.len() {
            assert_eq!(decode_group_value(value.slice(..len)), None, "cut at {len}");
        }
    }
}
