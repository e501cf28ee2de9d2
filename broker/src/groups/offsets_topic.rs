//! Committed offsets in the internal topic `__consumer_offsets`, in Kafka's
//! record format: key (version 1) = group, topic, partition; value
//! (version 3) = offset, leader epoch, metadata, commit timestamp; a null
//! value is a tombstone. A group's records go to partition
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
        let mut batches: Vec<Vec<Record>> = vec![Vec::new()];
        let mut bytes = 0;
        for (group, (topic, p), c) in &live {
            let key = encode_key(group, topic, *p);
            let value = encode_value(c);
            if bytes + key.len() + value.len() > CHECKPOINT_BATCH_BYTES {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += key.len() + value.len();
            let batch = batches.last_mut().expect("one batch at least");
            let offset = batch.len() as i64;
            batch.push(Self::record(
                key,
                Some(value),
                offset,
                c.commit_timestamp_ms,
            ));
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

    pub async fn tombstone(
        &self,
        broker: &Broker,
        group: &str,
        keys: &[(String, i32)],
    ) -> Result<(), String> {
        let partition = partition_for(group);
        let mut growth = self.lock(partition).await;
        let now = sluice_engine::shard::now_ms() as i64;
        let records = keys
            .iter()
            .enumerate()
            .map(|(i, (topic, partition))| {
                Self::record(encode_key(group, topic, *partition), None, i as i64, now)
            })
            .collect();
        self.append(broker, partition, records).await?;
        growth.appended += keys.len() as u64;
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
                    let Some((group, topic, partition)) = record.key.and_then(decode_key) else {
                        continue;
                    };
                    let value = record.value.and_then(decode_value);
                    coordinator.restore(&group, (topic, partition), value);
                    restored += 1;
                }
            }
            from = Some(read.next_offset);
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
}
