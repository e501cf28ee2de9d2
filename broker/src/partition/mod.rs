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

pub mod state;

/// Byte budgets (the engine's), for the responses the broker holds.
pub use sluice_engine::budget;

use std::cell::RefCell;
use std::collections::HashMap;

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
                .map_or(Offset::ZERO, |e| e.state.high_watermark());
            let entry = Entry {
                topic_id: topic.id(),
                state: PartitionState::leader(
                    me,
                    record.leader_epoch,
                    record.replicas.clone(),
                    record.isr.clone(),
                    log_end,
                    previous_hw,
                ),
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
    topic: &TopicState,
    records: bytes::Bytes,
) -> Result<AppendInfo, Error> {
    let epoch = with_entry(local, me, tp, topic, |e| e.state.leader_epoch())?;
    let info = local
        .append(
            tp,
            records,
            AppendMode::Leader {
                epoch: Epoch(epoch),
            },
        )
        .await?;
    // The topic may have gone while the append ran; its entry then goes
    // with it at the next lookup, and nobody waits on this one.
    let _ = with_entry(local, me, tp, topic, |e| {
        if e.state.on_leader_append(info.last_offset.plus(1)).is_some() {
            e.wake();
        }
    });
    Ok(info)
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
