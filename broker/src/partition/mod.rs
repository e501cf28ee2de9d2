//! The broker's partition table: on each shard, the broker state of the
//! partitions whose logs that shard owns, kept beside the engine's logs.
//!
//! ```text
//!   shard k thread ─┬─ engine partition table (engine/src/shard/table.rs): Log, queue, LEO waiters
//!                   └─ this table (thread-local): PartitionState (ISR, HW, leader epoch),
//!                      high-watermark waiters (acks=all produces, consumer fetches)
//! ```
//!
//! Why beside the engine's table rather than inside it: the engine is a
//! storage library and knows nothing of ISRs or high watermarks; making its
//! shard generic over a broker extension would thread a type parameter
//! through `Engine`, `ShardHandle` and every test. Both tables live on the
//! same thread and are reached the same way (a task on that shard, from
//! [`sluice_engine::shard::LocalShard`] or one [`ShardHandle::run`] message
//! per shard), so nothing here takes a lock or crosses a thread.
//!
//! Every function here must run on the shard that owns the partition;
//! they find the table in a thread-local.
//!
//! [`ShardHandle::run`]: sluice_engine::shard::ShardHandle::run

pub mod checkpoint;
pub mod state;

/// Byte budgets (the engine's), for the responses the broker holds.
pub use sluice_engine::budget;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_channel::oneshot;
use sluice_engine::shard::LocalShard;
use sluice_engine::{AppendInfo, AppendMode, Epoch, Error, Offset, TopicPartition};

use crate::controller::image::TopicId;
use crate::topics::TopicState;
use state::{BrokerId, PartitionState};

/// Most high-watermark waiters one partition keeps; beyond it the oldest is
/// answered at once (a fetch that re-reads and finds nothing, a produce that
/// times out: both harmless).
const HW_WAITERS_MAX: usize = 4096;

struct Entry {
    topic_id: TopicId,
    state: PartitionState,
    /// Waiting for the high watermark to pass an offset.
    hw_waiters: Vec<(Offset, oneshot::Sender<Offset>)>,
}

impl Entry {
    /// Answers every high-watermark waiter with the current one, passed
    /// or not.
    fn wake_all(&mut self) {
        let hw = self.state.high_watermark();
        for (_, tx) in self.hw_waiters.drain(..) {
            let _answered = tx.send(hw);
        }
    }

    fn wake(&mut self) {
        let hw = self.state.high_watermark();
        let mut i = 0;
        while i < self.hw_waiters.len() {
            if self.hw_waiters[i].0 < hw {
                let (_, tx) = self.hw_waiters.swap_remove(i);
                let _woken = tx.send(hw);
            } else {
                i += 1;
            }
        }
    }
}

thread_local! {
    static TABLE: RefCell<HashMap<TopicPartition, Entry>> = RefCell::new(HashMap::new());
}

/// The partition's entry, made (or remade, for a re-created topic or a new
/// leader epoch) from the topic's metadata and the log's end. Runs `f` on
/// it. A partition whose log is not on this shard is `UnknownPartition`.
fn with_entry<R>(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
    f: impl FnOnce(&mut Entry) -> R,
) -> Result<R, Error> {
    let Some(log_end) = local.log_end_offset(tp) else {
        return Err(Error::UnknownPartition(tp.clone()));
    };
    let record = usize::try_from(tp.partition)
        .ok()
        .and_then(|i| topic.image.partitions.get(i))
        .ok_or_else(|| Error::UnknownPartition(tp.clone()))?;
    TABLE.with(|table| {
        let mut table = table.borrow_mut();
        let current = table.get(tp).is_some_and(|e| {
            e.topic_id == topic.id() && e.state.leader_epoch() == record.leader_epoch
        });
        if !current {
            // Waiters of a deleted topic's partition, or of an old epoch,
            // are answered with what there is; they re-check and move on.
            let previous_hw = table
                .get(tp)
                .filter(|e| e.topic_id == topic.id())
                .map(|e| e.state.high_watermark())
                .or_else(|| checkpoint::loaded(tp, &topic.id()))
                .unwrap_or(Offset::ZERO);
            let min_isr = topic.min_isr(tp.partition);
            let make = |me, epoch, replicas, isr, log_end, hw| {
                if record.leader == me {
                    PartitionState::leader(me, epoch, replicas, isr, log_end, hw, min_isr)
                } else {
                    PartitionState::follower(me, epoch, replicas, isr, log_end, hw)
                }
            };
            if record.leader == me && record.unclean {
                // What the old ISR acknowledged beyond this log is gone.
                let lost = (record.high_watermark - log_end.0).max(0);
                tracing::warn!(
                    partition = %tp,
                    leader_epoch = record.leader_epoch,
                    log_end_offset = log_end.0,
                    last_reported_high_watermark = record.high_watermark,
                    "leading after an unclean election: up to {lost} acknowledged offsets \
                     beyond this log's end are lost"
                );
            }
            let entry = Entry {
                topic_id: topic.id(),
                state: make(
                    me,
                    record.leader_epoch,
                    record.replicas.clone(),
                    record.isr.clone(),
                    log_end,
                    previous_hw,
                )
                .started(record.partition_epoch, sluice_engine::shard::now_ms()),
                hw_waiters: Vec::new(),
            };
            if let Some(mut old) = table.insert(tp.clone(), entry) {
                for (_, tx) in old.hw_waiters.drain(..) {
                    let _answered = tx.send(old.state.high_watermark());
                }
            }
        }
        let entry = table
            .get_mut(tp)
            .ok_or_else(|| Error::UnknownPartition(tp.clone()))?;
        // An ISR change the controller committed (this leader's, or one
        // made while it was not looking).
        if record.partition_epoch > entry.state.partition_epoch() {
            let moved = entry
                .state
                .on_isr_committed(record.isr.clone(), record.partition_epoch)
                .is_some();
            if moved {
                entry.wake();
            }
            // Below min.insync.replicas the high watermark stays put: every
            // waiter is answered now (acks=all produces then say
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND) rather than time out.
            if record.leader == me && record.isr.len() < topic.min_isr(tp.partition) {
                entry.wake_all();
            }
        }
        // A changed min.insync.replicas applies from the next event.
        if entry
            .state
            .set_min_isr(topic.min_isr(tp.partition))
            .is_some()
        {
            entry.wake();
        }
        // The log's end as its worker last left it: appends made without
        // this table (the broker's own, to `__consumer_offsets`) count too.
        if entry.state.on_leader_append(log_end).is_some() {
            entry.wake();
        }
        Ok(f(entry))
    })
}

/// Appends a produce request's batches as the partition's leader, stamping
/// the leader epoch, then moves the high watermark and wakes who waits on
/// it. The append queues on the partition's worker with the others, so
/// concurrent produces still share one write and one fsync. `records` are
/// the request's own bytes: nothing copies them on the way to the file.
pub async fn append(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &Arc<TopicState>,
    records: bytes::Bytes,
) -> Result<AppendInfo, Error> {
    // Only a partition with followers has anyone to keep records for.
    let keep = topic.replica_count(tp.partition) > 1;
    start_append(local, me, tp, topic, records, keep)?.await
}

/// [`append`], queued on the partition before this returns: appends
/// started one after another land in that order, however their futures are
/// polled (a connection's pipelined produce requests). `keep`: the log may
/// keep `records` in memory for reads at its end (`AppendMode::Leader`).
pub fn start_append(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &Arc<TopicState>,
    records: bytes::Bytes,
    keep: bool,
) -> Result<impl Future<Output = Result<AppendInfo, Error>> + 'static, Error> {
    let epoch = with_entry(local, me, tp, topic, |e| e.state.leader_epoch())?;
    let appended = local.start_append(
        tp,
        records,
        AppendMode::Leader {
            epoch: Epoch(epoch),
            keep,
        },
    );
    let (local, tp, topic) = (local.clone(), tp.clone(), topic.clone());
    Ok(async move {
        let info = appended.await?;
        // The topic may have gone while the append ran; its entry then goes
        // with it at the next lookup, and nobody waits on this one.
        let _ = with_entry(&local, me, &tp, &topic, |e| {
            if e.state.on_leader_append(info.last_offset.plus(1)).is_some() {
                e.wake();
            }
        });
        Ok(info)
    })
}

/// On the leader: follower `replica` (registered with `broker_epoch`)
/// fetched from `fetch_offset`, so it has everything before it. Moves the
/// high watermark (waking whoever waits on it) and returns it.
pub fn on_follower_fetch(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
    (replica, broker_epoch): (BrokerId, i64),
    fetch_offset: Offset,
) -> Result<Offset, Error> {
    with_entry(local, me, tp, topic, |e| {
        let now = sluice_engine::shard::now_ms();
        if e.state
            .on_follower_fetch(replica, broker_epoch, fetch_offset, now)
            .is_some()
        {
            e.wake();
        }
        e.state.high_watermark()
    })
}

/// On a follower: the leader's fetch response said its high watermark is
/// `leader_hw`. Returns this replica's, which never passes its own log end.
pub fn on_leader_high_watermark(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
    leader_hw: Offset,
) -> Result<Offset, Error> {
    with_entry(local, me, tp, topic, |e| {
        if e.state.on_leader_high_watermark(leader_hw).is_some() {
            e.wake();
        }
        e.state.high_watermark()
    })
}

/// An ISR change a leader on this shard asks the controller for.
#[derive(Debug, Clone)]
pub struct IsrChange {
    pub tp: TopicPartition,
    pub topic_id: TopicId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<BrokerId>,
    /// The broker epochs of the members it adds (see
    /// [`PartitionState::joining_epochs`]).
    pub joining: std::collections::BTreeMap<BrokerId, i64>,
    /// The leader's high watermark when it proposed the change.
    pub high_watermark: Offset,
}

/// The ISR changes the partitions this shard leads need at `now_ms`
/// (`replica.lag.time.max.ms` = `lag_max_ms`); each is then in flight until
/// committed or [`isr_refused`].
pub fn isr_changes(now_ms: u64, lag_max_ms: u64) -> Vec<IsrChange> {
    TABLE.with(|table| {
        table
            .borrow_mut()
            .iter_mut()
            .filter_map(|(tp, e)| {
                let isr = e.state.isr_to_propose(now_ms, lag_max_ms)?;
                let joining = e.state.joining_epochs(&isr);
                Some(IsrChange {
                    joining,
                    high_watermark: e.state.high_watermark(),
                    tp: tp.clone(),
                    topic_id: e.topic_id,
                    leader_epoch: e.state.leader_epoch(),
                    partition_epoch: e.state.partition_epoch(),
                    isr,
                })
            })
            .collect()
    })
}

/// The controller refused `change`: it is proposed again, from the
/// current image, at a later check.
pub fn isr_refused(change: &IsrChange) {
    TABLE.with(|table| {
        if let Some(e) = table.borrow_mut().get_mut(&change.tp) {
            if e.topic_id == change.topic_id && e.state.partition_epoch() == change.partition_epoch
            {
                e.state.on_isr_refused();
            }
        }
    })
}

/// The metadata changed: brings every partition entry on this shard up to
/// date with it (an ISR the controller committed, by fencing a follower
/// say, or a new leader epoch), waking whoever waits on what that moved.
/// Without it an entry learned of a change only with its next produce or
/// fetch, and acks=all produces stuck on a fenced follower (a client whose
/// every in-flight request waits sends no new one) waited out their
/// timeout although the ISR without it had committed them.
pub fn on_metadata(local: &LocalShard, me: BrokerId, topics: &crate::topics::TopicsSnapshot) {
    let held: Vec<TopicPartition> = TABLE.with(|table| table.borrow().keys().cloned().collect());
    for tp in held {
        if let Some(topic) = topics.get(&tp.topic) {
            // A partition no longer open here is simply skipped.
            let _ = with_entry(local, me, &tp, topic, |_| ());
        }
    }
}

/// Every partition's high watermark on this shard, for the checkpoint.
pub fn high_watermarks() -> Vec<(TopicPartition, TopicId, Offset)> {
    TABLE.with(|table| {
        table
            .borrow()
            .iter()
            .map(|(tp, e)| (tp.clone(), e.topic_id, e.state.high_watermark()))
            .collect()
    })
}

/// How many replicas the partition's ISR holds, as this shard knows it.
pub fn in_sync_count(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
) -> Result<usize, Error> {
    with_entry(local, me, tp, topic, |e| e.state.isr().len())
}

/// The partition's high watermark.
pub fn high_watermark(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
) -> Result<Offset, Error> {
    with_entry(local, me, tp, topic, |e| e.state.high_watermark())
}

/// Waits until the partition's high watermark is above `after` and returns
/// it. Registering neither waits for the partition's queued appends nor
/// makes them run early. Callers bound the wait with their own timeout; a
/// dropped wait is cleaned up at the next registration.
pub async fn wait_for_high_watermark(
    local: &LocalShard,
    me: BrokerId,
    tp: &TopicPartition,
    topic: &TopicState,
    after: Offset,
) -> Result<Offset, Error> {
    let waiting = with_entry(local, me, tp, topic, |e| {
        let hw = e.state.high_watermark();
        if hw > after {
            return Err(hw);
        }
        e.hw_waiters.retain(|(_, tx)| !tx.is_canceled());
        if e.hw_waiters.len() >= HW_WAITERS_MAX {
            let (_, oldest) = e.hw_waiters.remove(0);
            let _answered = oldest.send(hw);
        }
        let (tx, rx) = oneshot::channel();
        e.hw_waiters.push((after, tx));
        Ok(rx)
    })?;
    match waiting {
        Err(hw) => Ok(hw),
        Ok(rx) => rx.await.map_err(|_| Error::UnknownPartition(tp.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use sluice_engine::io::Fs;
    use sluice_engine::sim::SimFs;
    use sluice_engine::{Engine, EngineConfig, IoDriver, LogConfig};

    use super::*;
    use crate::controller::image::{PartitionRecord, TopicImage};
    use std::future::Future;

    const ME: BrokerId = 1;

    fn one_record() -> bytes::Bytes {
        let record = Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
            delete_horizon: false,
        };
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
        buf.freeze()
    }

    fn topic(id: u8, partition: PartitionRecord) -> Arc<TopicState> {
        Arc::new(TopicState {
            image: Arc::new(TopicImage {
                id: [id; 16],
                partitions: vec![partition],
                overrides: Default::default(),
            }),
            partitions: 1,
            config: LogConfig::default(),
            min_insync_default: 1,
        })
    }

    /// Runs `body` on the only shard of a simulated engine holding `tp`.
    fn on_shard<F>(tp: &TopicPartition, body: F)
    where
        F: FnOnce(LocalShard) -> futures_util::future::LocalBoxFuture<'static, ()> + Send + 'static,
    {
        let engine = Engine::start(EngineConfig {
            data_dir: "/data".into(),
            shards: 1,
            fs: Fs::Sim(SimFs::new()),
            io_driver: IoDriver::Poll,
            ..EngineConfig::default()
        })
        .unwrap();
        let runtime = sluice_engine::shard::client_runtime().unwrap();
        runtime.block_on(async {
            engine.open(tp.clone(), LogConfig::default()).await.unwrap();
            engine.shard_for(tp).run(body).await.unwrap();
        });
        drop(runtime);
        engine.shutdown().unwrap();
    }

    #[test]
    fn an_append_wakes_the_waiters_its_high_watermark_passes() {
        let tp = TopicPartition::new("t", 0);
        let state = topic(1, PartitionRecord::single(ME));
        on_shard(&tp.clone(), move |local| {
            Box::pin(async move {
                let local = &local;
                assert_eq!(high_watermark(local, ME, &tp, &state).ok(), Some(Offset(0)));
                // An acks=all produce of offset 0 waits for a high watermark
                // above 0; the append of that very batch wakes it.
                let waiting = wait_for_high_watermark(local, ME, &tp, &state, Offset(0));
                let appending = append(local, ME, &tp, &state, one_record());
                let (woken, appended) = futures_util::join!(waiting, appending);
                assert_eq!(appended.unwrap().base_offset, Offset(0));
                assert_eq!(woken.ok(), Some(Offset(1)));
                // Already passed: answered at once.
                let passed = wait_for_high_watermark(local, ME, &tp, &state, Offset(0)).await;
                assert_eq!(passed.ok(), Some(Offset(1)));
            })
        });
    }

    #[test]
    fn with_a_second_in_sync_replica_the_high_watermark_waits_for_it() {
        let tp = TopicPartition::new("t", 0);
        let state = topic(
            2,
            PartitionRecord {
                replicas: vec![ME, 2],
                isr: vec![ME, 2],
                leader: ME,
                leader_epoch: 3,
                partition_epoch: 0,
                high_watermark: 0,
                unclean: false,
                elr: Vec::new(),
            },
        );
        on_shard(&tp.clone(), move |local| {
            Box::pin(async move {
                let local = &local;
                let info = append(local, ME, &tp, &state, one_record()).await.unwrap();
                assert_eq!(info.base_offset, Offset(0));
                // The follower has fetched nothing: nothing is committed.
                assert_eq!(high_watermark(local, ME, &tp, &state).ok(), Some(Offset(0)));
                let mut waiting =
                    Box::pin(wait_for_high_watermark(local, ME, &tp, &state, Offset(0)));
                let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
                assert!(waiting.as_mut().poll(cx).is_pending());
                // The follower's fetch from offset 1 says it has offset 0.
                let moved = with_entry(local, ME, &tp, &state, |e| {
                    let moved = e.state.on_follower_fetch(2, 0, Offset(1), 0);
                    e.wake();
                    moved
                });
                assert_eq!(moved.ok(), Some(Some(Offset(1))));
                assert_eq!(waiting.await.ok(), Some(Offset(1)));
            })
        });
    }

    #[test]
    fn a_waiter_left_by_a_leader_change_learns_its_batch_was_not_committed() {
        let tp = TopicPartition::new("t", 0);
        let record = |leader: i32, leader_epoch: i32| PartitionRecord {
            replicas: vec![ME, 2],
            isr: vec![ME, 2],
            leader,
            leader_epoch,
            partition_epoch: leader_epoch,
            high_watermark: 0,
            unclean: false,
            elr: Vec::new(),
        };
        let (before, after) = (topic(2, record(ME, 3)), topic(2, record(2, 4)));
        on_shard(&tp.clone(), move |local| {
            Box::pin(async move {
                let local = &local;
                let info = append(local, ME, &tp, &before, one_record()).await.unwrap();
                let mut waiting = Box::pin(wait_for_high_watermark(
                    local,
                    ME,
                    &tp,
                    &before,
                    info.last_offset,
                ));
                let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
                assert!(waiting.as_mut().poll(cx).is_pending());
                // Broker 2 leads from epoch 4: the old epoch's waiters are
                // answered with a high watermark that does not pass their
                // batch, which the produce handler turns into
                // NOT_LEADER_OR_FOLLOWER rather than an acknowledgement.
                let now = high_watermark(local, ME, &tp, &after).unwrap();
                assert_eq!(now, Offset(0));
                let woken = waiting.await.unwrap();
                assert!(woken <= info.last_offset, "{woken:?}");
            })
        });
    }
}
