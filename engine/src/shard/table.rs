//! The shard thread's side: its partition table, one worker per busy
//! partition, and the same-thread API ([`LocalShard`]).
//!
//! ```text
//!   command channel ──▶ shard loop ──┬─▶ partition A: queue ─▶ worker task (owns the Log while it runs)
//!   LocalShard (tasks on this  ──────┤─▶ partition B: queue ─▶ (idle: no task)
//!   thread: broker connections)      └─▶ partition C: queue ─▶ worker task
//! ```
//!
//! There is no turn barrier. The loop only sorts commands into per-partition
//! queues; a partition with queued work gets a worker task that drains its
//! queue, runs it, and drains again until the queue is empty. A slow
//! operation (an fsync, a `flush.ms` flush, retention waiting for a rolled
//! segment's fsync, recovery at open, a deletion) holds up only its own
//! partition: every other partition's worker, the loop, and every other task
//! on the thread go on.
//!
//! Group commit comes from the queues: appends that arrive while a worker
//! is busy wait in the queue and go out together, in one vectored write,
//! when the worker next drains it. A group the flush policy wants flushed
//! does not hold the worker during its fsync: the fsync runs as its own
//! task ([`crate::log::FlushTicket`]), the group's replies wait in the partition's
//! `owed` queue, and the worker goes on writing the groups that arrive
//! meanwhile, so the disk's flush of one group overlaps the write of the
//! next. One fsync is in flight per partition; when it ends (its outcome is
//! queued to the worker like any work) the groups it covered are answered
//! and the next fsync, covering everything written since, begins. Replies
//! leave in log order, and the log end the partition publishes to the
//! broker's high watermark stops before the first group still waiting for
//! its fsync, as it did when the fsync was inline. Waiting fetches (a
//! follower's) are woken by the write itself: a follower copies the batch
//! and fsyncs it while the leader's own fsync runs, and the high watermark
//! passes it once both are done.
//!
//! Everything here lives on one shard thread: `Rc`, `RefCell` and `Cell`,
//! never a lock. Other threads reach it only through the command channel.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::LocalBoxFuture;
use tracing::{error, warn};

use super::{now_ms, Command, LogInfo, Reply};
use crate::budget::Permit;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::io::Fs;
use crate::log::{
    AppendInfo, AppendMode, Durability, FlushOutcome, Log, ReadResult, RecoveryReport,
    StorageHealth,
};
use crate::types::{Epoch, Offset, TopicPartition};

/// A job on one log, run on the shard thread (not `Send`).
pub(super) type LocalLogJob = Box<dyn for<'a> FnOnce(&'a mut Log, u64) -> LocalBoxFuture<'a, ()>>;

/// How often a log with a rolled segment's flush in flight is looked at, so
/// the flushed offset and the recovery point follow without another command.
const BACKGROUND_FLUSH_POLL_MS: u64 = 10;

/// Most waiters one partition keeps; beyond it the oldest are answered at
/// once (they re-read and find nothing new, which is harmless).
const WAITERS_PER_PARTITION_MAX: usize = 4096;

enum Work {
    /// Records, their mode, their bytes in the shard's queue budget (for
    /// appends that came through the channel), and where the result goes.
    Append(Bytes, AppendMode, Option<Permit>, Reply<AppendInfo>),
    Job(LocalLogJob),
    /// Close (and maybe delete) the log once the work before it is done.
    Close {
        delete: bool,
        reply: Reply<()>,
    },
    /// The partition's fsync in flight has ended.
    Flushed(FlushOutcome),
}

/// An append's result not yet sent: it waits for the flush it asked for,
/// or behind one that does (replies leave in log order).
struct Owed {
    /// The flushed offset must pass this (the append's last offset) first.
    needs: Option<Offset>,
    result: Result<AppendInfo>,
    reply: Reply<AppendInfo>,
}

impl Owed {
    /// Where the records of an append waiting for its flush start: the
    /// published log end stays below it meanwhile.
    fn waiting_from(&self) -> Option<Offset> {
        self.needs?;
        self.result.as_ref().ok().map(|info| info.base_offset)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Recovery is running; work queues until it ends.
    Opening,
    Open,
    /// A close is queued or running; new work is refused.
    Closing,
}

/// One partition on its shard: the log (held by the worker while it runs),
/// the queued work, and the fetches waiting for its log end to move.
struct Partition {
    tp: TopicPartition,
    phase: Cell<Phase>,
    log: RefCell<Option<Log>>,
    queue: RefCell<VecDeque<Work>>,
    /// Whether a worker task is draining `queue`.
    running: Cell<bool>,
    /// The log end offset as of the last finished work, short of the
    /// appends still waiting for their fsync: what the high watermark may
    /// count.
    end: Cell<Offset>,
    /// The log end offset as of the last finished work, whether flushed or
    /// not: where this replica's next append goes, and what wakes waiting
    /// fetches.
    written_end: Cell<Offset>,
    /// [`Log::appended_bytes`] as of the last finished work.
    appended_bytes: Cell<u64>,
    /// Appends' results waiting for an fsync, in log order.
    owed: RefCell<VecDeque<Owed>>,
    /// The leader epoch of the log's last batch, as of the last finished
    /// work (-1: none).
    last_epoch: Cell<Epoch>,
    waiters: RefCell<Vec<(Offset, Reply<Offset>)>>,
    /// Told when a close of this partition has finished.
    closed: RefCell<Vec<oneshot::Sender<()>>>,
    /// The log's storage health as of the last finished work.
    health: Cell<StorageHealth>,
    /// The log start offset as of the last finished work.
    log_start: Cell<Offset>,
    /// The earliest deadline a flush timer is armed for.
    flush_timer_ms: Cell<Option<u64>>,
    /// Whether a flush check is queued and not yet run.
    flush_queued: Cell<bool>,
}

impl Partition {
    fn new(tp: TopicPartition) -> Partition {
        Partition {
            tp,
            phase: Cell::new(Phase::Opening),
            log: RefCell::new(None),
            queue: RefCell::new(VecDeque::new()),
            running: Cell::new(false),
            end: Cell::new(Offset::ZERO),
            written_end: Cell::new(Offset::ZERO),
            appended_bytes: Cell::new(0),
            owed: RefCell::new(VecDeque::new()),
            last_epoch: Cell::new(Epoch(-1)),
            waiters: RefCell::new(Vec::new()),
            closed: RefCell::new(Vec::new()),
            health: Cell::new(StorageHealth::Ok),
            log_start: Cell::new(Offset::ZERO),
            flush_timer_ms: Cell::new(None),
            flush_queued: Cell::new(false),
        }
    }
}

/// A shard's state, shared by its loop and its worker tasks through `Rc`.
/// Owned by one shard thread; not `Send`.
pub(super) struct Core {
    pub(super) id: usize,
    fs: Fs,
    data_dir: PathBuf,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
}

thread_local! {
    /// The shard this thread runs, if it is a shard thread.
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

impl Core {
    pub(super) fn new(id: usize, fs: Fs, data_dir: PathBuf) -> Rc<Core> {
        let core = Rc::new(Core {
            id,
            fs,
            data_dir,
            partitions: RefCell::new(HashMap::new()),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
        core
    }

    fn get(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }

    /// Handles one command from the channel. Nothing here awaits: slow work
    /// is queued on its partition or spawned.
    pub(super) fn command(self: &Rc<Self>, cmd: Command) {
        match cmd {
            Command::Append {
                tp,
                records,
                mode,
                reply,
                held,
            } => self.push(&tp, Work::Append(records, mode, Some(held), reply)),
            Command::WithLog {
                tp,
                job,
                on_missing,
            } => match self.accepting(&tp) {
                Some(part) => {
                    drop(on_missing.send(Ok(())));
                    self.enqueue(&part, Work::Job(job));
                }
                None => drop(on_missing.send(Err(Error::UnknownPartition(tp)))),
            },
            Command::Open { tp, config, reply } => self.open(tp, config, reply),
            Command::Close { tp, delete, reply } => self.close(tp, delete, reply),
            Command::WaitForAppend { tp, after, reply } => self.add_waiter(tp, after, reply),
            Command::Spawn(f) => f(),
            Command::Shutdown { .. } => {
                // The loop handles shutdown itself.
            }
        }
    }

    /// The partition, if it takes new work.
    fn accepting(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.get(tp).filter(|p| p.phase.get() != Phase::Closing)
    }

    fn push(self: &Rc<Self>, tp: &TopicPartition, work: Work) {
        match self.accepting(tp) {
            Some(part) => self.enqueue(&part, work),
            None => fail(work, Error::UnknownPartition(tp.clone())),
        }
    }

    fn enqueue(self: &Rc<Self>, part: &Rc<Partition>, work: Work) {
        part.queue.borrow_mut().push_back(work);
        self.kick(part);
    }

    /// Starts a worker for `part` unless one runs or there is no log to
    /// work on (recovery has not finished).
    fn kick(self: &Rc<Self>, part: &Rc<Partition>) {
        if part.running.get() || part.log.borrow().is_none() {
            return;
        }
        part.running.set(true);
        let (core, part) = (self.clone(), part.clone());
        compio::runtime::spawn(async move { core.drive(part).await }).detach();
    }

    /// A partition's worker: drains its queue until it is empty.
    async fn drive(self: Rc<Self>, part: Rc<Partition>) {
        loop {
            let work: Vec<Work> = part.queue.borrow_mut().drain(..).collect();
            if work.is_empty() {
                part.running.set(false);
                return;
            }
            let Some(log) = part.log.borrow_mut().take() else {
                for w in work {
                    fail(w, Error::UnknownPartition(part.tp.clone()));
                }
                continue;
            };
            let now = now_ms();
            let (mut log, close) = self.run_work(&part, log, work, now).await;
            match close {
                None => {
                    self.after_work(&part, &mut log);
                    *part.log.borrow_mut() = Some(log);
                }
                Some((delete, reply)) => {
                    let result = if delete {
                        log.delete().await
                    } else {
                        log.close(now_ms()).await
                    };
                    settle_owed_at_close(&part, &result, delete);
                    self.finish_close(&part);
                    drop(reply.send(result));
                    // Whatever queued behind the close finds no log.
                }
            }
        }
    }

    /// After a worker's batch: publish the log end, wake the fetches it
    /// satisfies, and arm a flush timer if the log has flush work.
    fn after_work(self: &Rc<Self>, part: &Rc<Partition>, log: &mut Log) {
        release_owed(part, log);
        if part.owed.borrow().iter().any(|o| o.needs.is_some()) {
            // Appends wait for a flush and none covers them yet.
            self.begin_flush(part, log);
        }
        let written = log.log_end_offset();
        // `owed` is in log order: the first append waiting for its flush
        // starts lowest.
        let waiting_from = part.owed.borrow().iter().find_map(Owed::waiting_from);
        part.end
            .set(waiting_from.map_or(written, |f| f.min(written)));
        part.written_end.set(written);
        part.appended_bytes.set(log.appended_bytes());
        part.health.set(log.storage_health());
        part.log_start.set(log.log_start_offset());
        part.last_epoch
            .set(log.epoch_cache().latest_epoch().unwrap_or(Epoch(-1)));
        answer_waiters(part);
        if !log.has_flush_work() {
            return;
        }
        let now = now_ms();
        let reap = log
            .has_background_flushes()
            .then_some(now + BACKGROUND_FLUSH_POLL_MS);
        let deadline = match (log.next_flush_deadline_ms(), reap) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        if part
            .flush_timer_ms
            .get()
            .is_some_and(|armed| armed <= deadline)
        {
            return;
        }
        part.flush_timer_ms.set(Some(deadline));
        let (core, part) = (self.clone(), part.clone());
        compio::runtime::spawn(async move {
            let wait = deadline.saturating_sub(now_ms());
            if wait > 0 {
                compio::time::sleep(Duration::from_millis(wait)).await;
            }
            if part.flush_timer_ms.get() == Some(deadline) {
                part.flush_timer_ms.set(None);
            }
            core.queue_flush_check(&part);
        })
        .detach();
    }

    /// Begins an fsync of the partition's log unless one is in flight, as
    /// a task of its own whose outcome is queued back to the worker.
    fn begin_flush(self: &Rc<Self>, part: &Rc<Partition>, log: &mut Log) {
        let Some(ticket) = log.begin_flush() else {
            return;
        };
        let (core, part) = (self.clone(), part.clone());
        compio::runtime::spawn(async move {
            let outcome = ticket.run().await;
            // Queued even behind a close: the close's own flush settles
            // the owed replies, and this outcome is then dropped.
            part.queue.borrow_mut().push_back(Work::Flushed(outcome));
            core.kick(&part);
        })
        .detach();
    }

    /// Runs one drained batch of a partition's work in order: consecutive
    /// appends become one group commit; jobs run in between. Stops at a
    /// close and hands it back with the log; work after a close fails.
    async fn run_work(
        self: &Rc<Self>,
        part: &Rc<Partition>,
        mut log: Log,
        work: Vec<Work>,
        now: u64,
    ) -> (Log, Option<(bool, Reply<()>)>) {
        let mut group = Group::default();
        let mut items = work.into_iter();
        let mut close = None;
        for item in items.by_ref() {
            match item {
                Work::Append(records, mode, held, reply) => {
                    group.appends.push((records, mode));
                    group.replies.push(reply);
                    // Given back once the group is written (below).
                    group.held_bytes.extend(held);
                }
                Work::Job(job) => {
                    self.commit(part, &mut log, &mut group, now).await;
                    job(&mut log, now).await;
                }
                Work::Flushed(outcome) => {
                    self.commit(part, &mut log, &mut group, now).await;
                    // A failure takes the log offline and says so; the
                    // replies that waited for this flush get its error.
                    let _offline = log.end_flush(outcome, now).await;
                    release_owed(part, &log);
                }
                Work::Close { delete, reply } => {
                    close = Some((delete, reply));
                    break;
                }
            }
        }
        self.commit(part, &mut log, &mut group, now).await;
        for rest in items {
            fail(rest, Error::UnknownPartition(part.tp.clone()));
        }
        (log, close)
    }

    /// Writes the group's appends and queues their replies behind any still
    /// owed; those the flush policy wants flushed wait for an fsync, which
    /// begins now unless one is in flight.
    async fn commit(
        self: &Rc<Self>,
        part: &Rc<Partition>,
        log: &mut Log,
        group: &mut Group,
        now: u64,
    ) {
        if group.appends.is_empty() {
            return;
        }
        let (results, flush_due) = log
            .append_group_unflushed(std::mem::take(&mut group.appends), now)
            .await;
        // Out of the queue and written: room for the next senders.
        group.held_bytes.clear();
        {
            let mut owed = part.owed.borrow_mut();
            for (reply, result) in group.replies.drain(..).zip(results) {
                let needs = match &result {
                    Ok(info) if flush_due => Some(info.last_offset),
                    _ => None,
                };
                owed.push_back(Owed {
                    needs,
                    result,
                    reply,
                });
            }
        }
        if flush_due {
            self.begin_flush(part, log);
        }
        release_owed(part, log);
    }

    /// Queues a `flush.ms` check (and the reaping of background flushes) on
    /// the partition, once.
    fn queue_flush_check(self: &Rc<Self>, part: &Rc<Partition>) {
        if part.flush_queued.get() || part.phase.get() != Phase::Open {
            return;
        }
        part.flush_queued.set(true);
        let flagged = part.clone();
        let job: LocalLogJob = Box::new(move |log, now| {
            Box::pin(async move {
                flagged.flush_queued.set(false);
                if let Err(e) = log.maybe_flush(now).await {
                    error!(partition = %flagged.tp, error = %e, "time-based flush failed");
                }
            })
        });
        self.enqueue(part, Work::Job(job));
    }

    /// Queues retention on every open partition; each runs on its own
    /// worker, so a retention that waits on a large fsync holds up nobody
    /// else.
    pub(super) fn queue_retention(self: &Rc<Self>) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for part in parts {
            if part.phase.get() != Phase::Open {
                continue;
            }
            let tp = part.tp.clone();
            let job: LocalLogJob = Box::new(move |log, now| {
                Box::pin(async move {
                    if log.is_offline() {
                        return;
                    }
                    if let Err(e) = log.apply_retention(now).await {
                        error!(partition = %tp, error = %e, "retention failed");
                    }
                })
            });
            self.enqueue(&part, Work::Job(job));
        }
    }

    fn open(self: &Rc<Self>, tp: TopicPartition, config: LogConfig, reply: Reply<RecoveryReport>) {
        let previous = self.get(&tp);
        let after_close = match &previous {
            Some(p) if p.phase.get() == Phase::Closing => {
                let (tx, rx) = oneshot::channel();
                p.closed.borrow_mut().push(tx);
                Some(rx)
            }
            Some(_) => {
                drop(reply.send(Err(Error::PartitionExists(tp))));
                return;
            }
            None => None,
        };
        let part = Rc::new(Partition::new(tp.clone()));
        self.partitions
            .borrow_mut()
            .insert(tp.clone(), part.clone());
        let core = self.clone();
        compio::runtime::spawn(async move {
            if let Some(rx) = after_close {
                // A deletion of the same name must be done before this log
                // creates its directory.
                let _closed = rx.await;
            }
            let dir = core.data_dir.join(tp.dir_name());
            match Log::open(core.fs.clone(), dir, config, now_ms()).await {
                Ok((mut log, report)) => {
                    // A close may have come during recovery; it stays queued.
                    if part.phase.get() == Phase::Opening {
                        part.phase.set(Phase::Open);
                    }
                    core.after_work(&part, &mut log);
                    *part.log.borrow_mut() = Some(log);
                    drop(reply.send(Ok(report)));
                    core.kick(&part);
                }
                Err(e) => {
                    core.finish_close(&part);
                    let queued: Vec<Work> = part.queue.borrow_mut().drain(..).collect();
                    for w in queued {
                        fail(w, Error::UnknownPartition(tp.clone()));
                    }
                    drop(reply.send(Err(e)));
                }
            }
        })
        .detach();
    }

    fn close(self: &Rc<Self>, tp: TopicPartition, delete: bool, reply: Reply<()>) {
        let Some(part) = self.accepting(&tp) else {
            drop(reply.send(Err(Error::UnknownPartition(tp))));
            return;
        };
        part.phase.set(Phase::Closing);
        // Waiting fetches see their wait end with the shard's reply gone.
        part.waiters.borrow_mut().clear();
        part.queue
            .borrow_mut()
            .push_back(Work::Close { delete, reply });
        // An opening partition's worker starts when recovery ends.
        self.kick(&part);
    }

    /// A partition's log is gone: take it out of the table (unless a new
    /// partition of the same name replaced it) and tell who waits.
    fn finish_close(&self, part: &Rc<Partition>) {
        part.phase.set(Phase::Closing);
        part.waiters.borrow_mut().clear();
        let mut table = self.partitions.borrow_mut();
        if table.get(&part.tp).is_some_and(|p| Rc::ptr_eq(p, part)) {
            table.remove(&part.tp);
        }
        drop(table);
        for tx in part.closed.borrow_mut().drain(..) {
            let _told = tx.send(());
        }
    }

    fn add_waiter(&self, tp: TopicPartition, after: Offset, reply: Reply<Offset>) {
        let Some(part) = self.accepting(&tp) else {
            drop(reply.send(Err(Error::UnknownPartition(tp))));
            return;
        };
        let end = part.written_end.get();
        if end > after && part.phase.get() == Phase::Open {
            drop(reply.send(Ok(end)));
            return;
        }
        let mut waiters = part.waiters.borrow_mut();
        // Fetches that timed out have dropped their receivers.
        waiters.retain(|(_, r)| !r.is_canceled());
        if waiters.len() >= WAITERS_PER_PARTITION_MAX {
            let (_, oldest) = waiters.remove(0);
            drop(oldest.send(Ok(end)));
        }
        waiters.push((after, reply));
    }

    /// Closes every log, waiting for each partition's queued work first.
    pub(super) async fn close_all(self: &Rc<Self>) -> Result<()> {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let mut replies = Vec::new();
        for part in parts {
            match part.phase.get() {
                Phase::Closing => {
                    let (tx, rx) = oneshot::channel();
                    part.closed.borrow_mut().push(tx);
                    replies.push((part.tp.clone(), None, Some(rx)));
                }
                Phase::Open | Phase::Opening => {
                    let (tx, rx) = oneshot::channel();
                    self.close(part.tp.clone(), false, tx);
                    replies.push((part.tp.clone(), Some(rx), None));
                }
            }
        }
        let mut first_error = None;
        for (tp, reply, closed) in replies {
            if let Some(rx) = closed {
                let _closed = rx.await;
            }
            if let Some(rx) = reply {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!(shard = self.id, partition = %tp, error = %e, "closing a log failed");
                        first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        warn!(shard = self.id, partition = %tp, "a log's close was dropped");
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Answers every waiter whose offset the written log end has passed.
fn answer_waiters(part: &Partition) {
    let end = part.written_end.get();
    let mut waiters = part.waiters.borrow_mut();
    let mut i = 0;
    while i < waiters.len() {
        if waiters[i].0 < end {
            let (_, reply) = waiters.swap_remove(i);
            drop(reply.send(Ok(end)));
        } else {
            i += 1;
        }
    }
}

fn fail(work: Work, err: Error) {
    match work {
        Work::Append(_, _, _, reply) => drop(reply.send(Err(err))),
        // A job's own reply is inside it; dropping it ends the caller's
        // wait with ShardStopped. Jobs are only queued on accepting
        // partitions, so this is a close racing them.
        Work::Job(job) => drop(job),
        Work::Close { reply, .. } => drop(reply.send(Err(err))),
        // The flush's replies were settled by the close before it.
        Work::Flushed(_) => {}
    }
}

/// The appends of one group commit, gathered from a partition's queue.
#[derive(Default)]
struct Group {
    appends: Vec<(Bytes, AppendMode)>,
    replies: Vec<Reply<AppendInfo>>,
    held_bytes: Vec<Permit>,
}

/// Sends the owed replies, in order, up to the first whose flush has not
/// happened. A log gone offline will flush nothing more: what waits for a
/// flush gets its error. An append that a truncation removed while it
/// waited (a leader become follower) is answered as if its flush had come
/// first, as it was before flushes ran apart: the broker's own checks
/// (leadership, the high watermark) then decide its fate.
fn release_owed(part: &Partition, log: &Log) {
    let flushed = log.flushed_offset();
    let end = log.log_end_offset();
    let offline = log.is_offline();
    let mut owed = part.owed.borrow_mut();
    while let Some(front) = owed.front() {
        let waiting = front
            .needs
            .is_some_and(|last| last >= flushed && last < end);
        if waiting && !offline {
            break;
        }
        let Some(o) = owed.pop_front() else { break };
        let result = match o.result {
            Ok(_) if waiting => Err(log
                .offline_error()
                .unwrap_or_else(|| Error::UnknownPartition(part.tp.clone()))),
            Ok(mut info) => {
                if info.last_offset < flushed {
                    info.durability = Durability::Flushed;
                }
                Ok(info)
            }
            Err(e) => Err(e),
        };
        drop(o.reply.send(result));
    }
}

/// At a close, the owed replies: a clean close flushed everything; a
/// deletion or a failed close leaves what waited for a flush unflushed.
fn settle_owed_at_close(part: &Partition, closed: &Result<()>, delete: bool) {
    for o in part.owed.borrow_mut().drain(..) {
        let result = match (o.result, o.needs) {
            (Ok(mut info), Some(_)) => match closed {
                Ok(()) if !delete => {
                    info.durability = Durability::Flushed;
                    Ok(info)
                }
                Err(e) => Err(e.clone()),
                Ok(()) => Err(Error::UnknownPartition(part.tp.clone())),
            },
            (result, _) => result,
        };
        drop(o.reply.send(result));
    }
}

/// The shard of the calling thread, for tasks running on a shard thread
/// (the broker's connections): its partitions are reached with no channel
/// and no lock. `None` on any other thread.
pub fn local() -> Option<LocalShard> {
    CURRENT.with(|c| c.borrow().clone()).map(LocalShard)
}

/// A handle to the shard of the current thread. Not `Send`: it lives on
/// the shard thread it came from.
#[derive(Clone)]
pub struct LocalShard(Rc<Core>);

/// A partition's log as of its last finished work (see
/// [`LocalShard::published`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub log_start: Offset,
    /// The end written, flushed or not.
    pub written_end: Offset,
    /// The leader epoch of the last batch (-1: none).
    pub last_epoch: Epoch,
    /// Bytes appended since the log was opened on this shard: only grows,
    /// so the difference of two readings is what was written between them.
    pub appended_bytes: u64,
}

impl std::fmt::Debug for LocalShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShard")
            .field("id", &self.0.id)
            .finish()
    }
}

impl LocalShard {
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// Whether this shard holds `tp` (open or opening).
    pub fn has(&self, tp: &TopicPartition) -> bool {
        self.0.accepting(tp).is_some()
    }

    /// Appends one request's batches; group-committed with the other
    /// appends queued on the partition.
    pub async fn append(
        &self,
        tp: &TopicPartition,
        records: impl Into<Bytes>,
        mode: AppendMode,
    ) -> Result<AppendInfo> {
        self.start_append(tp, records, mode).await
    }

    /// Queues the append now, before returning, and gives back a future of
    /// its outcome. Appends started one after another land in that order
    /// whatever order their futures are polled in: this is what lets a
    /// connection pipeline its produce requests and still append them in
    /// the order it sent them.
    pub fn start_append(
        &self,
        tp: &TopicPartition,
        records: impl Into<Bytes>,
        mode: AppendMode,
    ) -> impl std::future::Future<Output = Result<AppendInfo>> + 'static {
        let (tx, rx) = oneshot::channel();
        self.0
            .push(tp, Work::Append(records.into(), mode, None, tx));
        let shard = self.0.id;
        async move { rx.await.map_err(|_| Error::ShardStopped(shard))? }
    }

    /// Runs `f` on the partition's log, in order with its other work.
    pub async fn with_log<R, F>(&self, tp: &TopicPartition, f: F) -> Result<R>
    where
        R: 'static,
        F: for<'a> FnOnce(&'a mut Log, u64) -> LocalBoxFuture<'a, Result<R>> + 'static,
    {
        let Some(part) = self.0.accepting(tp) else {
            return Err(Error::UnknownPartition(tp.clone()));
        };
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let job: LocalLogJob = Box::new(move |log, now| {
            Box::pin(async move {
                // Nobody waits any more (a fetch of a closed connection):
                // skip the work rather than read for nobody.
                if tx.is_canceled() {
                    return;
                }
                drop(tx.send(f(log, now).await));
            })
        });
        self.0.enqueue(&part, Work::Job(job));
        rx.await.map_err(|_| Error::UnknownPartition(tp.clone()))?
    }

    pub async fn read(
        &self,
        tp: &TopicPartition,
        from: Offset,
        max_bytes: usize,
        upper_bound: Option<Offset>,
        min_one_batch: bool,
    ) -> Result<ReadResult> {
        self.with_log(tp, move |log, _| {
            Box::pin(log.read(from, max_bytes, upper_bound, min_one_batch))
        })
        .await
    }

    pub async fn info(&self, tp: &TopicPartition) -> Result<LogInfo> {
        self.with_log(tp, |log, _| Box::pin(async move { Ok(LogInfo::of(log)) }))
            .await
    }

    /// The log end offset as of the partition's last finished work, without
    /// queueing behind its current work, and short of the appends still
    /// waiting for the fsync their flush policy asked for: what a reader
    /// (a consumer's fetch, the high watermark) may count on.
    pub fn log_end_offset(&self, tp: &TopicPartition) -> Option<Offset> {
        self.0
            .accepting(tp)
            .filter(|p| p.phase.get() == Phase::Open)
            .map(|p| p.end.get())
    }

    /// The log end offset (written, flushed or not) and the leader epoch of
    /// the last batch (-1 for none), as of the partition's last finished
    /// work: where a follower fetches from, and its `last_fetched_epoch`.
    pub fn log_end_and_epoch(&self, tp: &TopicPartition) -> Option<(Offset, Epoch)> {
        self.0
            .accepting(tp)
            .filter(|p| p.phase.get() == Phase::Open)
            .map(|p| (p.written_end.get(), p.last_epoch.get()))
    }

    /// What the partition's last finished work left, read without queueing
    /// behind its current work; `None` unless the partition is open and its
    /// storage healthy. A reader that finds its offset at the end here
    /// knows a read would return nothing, without sending the read.
    pub fn published(&self, tp: &TopicPartition) -> Option<Published> {
        self.0
            .accepting(tp)
            .filter(|p| p.phase.get() == Phase::Open && p.health.get() == StorageHealth::Ok)
            .map(|p| Published {
                log_start: p.log_start.get(),
                written_end: p.written_end.get(),
                last_epoch: p.last_epoch.get(),
                appended_bytes: p.appended_bytes.get(),
            })
    }

    /// The partitions of this shard whose storage is not [`StorageHealth::Ok`]
    /// as of their last finished work.
    pub fn storage_failures(&self) -> Vec<(TopicPartition, StorageHealth)> {
        self.0
            .partitions
            .borrow()
            .values()
            .filter(|p| p.health.get() != StorageHealth::Ok)
            .map(|p| (p.tp.clone(), p.health.get()))
            .collect()
    }

    /// Waits until the partition's log end offset (written, flushed or
    /// not) is greater than `after`. Registering does not wait for the
    /// partition's queued work, nor make it run early.
    pub async fn wait_for_append(&self, tp: &TopicPartition, after: Offset) -> Result<Offset> {
        let (tx, rx) = oneshot::channel();
        self.0.add_waiter(tp.clone(), after, tx);
        rx.await.map_err(|_| Error::UnknownPartition(tp.clone()))?
    }
}
