//! Fetch: stored batch bytes as they are, whole batches, up to the high
//! watermark, within the request's `max_bytes` (capped by the broker's
//! `fetch.max.bytes`) and each partition's `partition_max_bytes`. When less
//! than `min_bytes` is available the request waits up to `max_wait_ms`,
//! woken as soon as the high watermark of any of its partitions moves.
//!
//! Partitions are read on the shards that own them, one message per shard
//! (none for the connection's own shard). When the partitions' own limits,
//! plus one batch of `message.max.bytes`, fit the budget together (the
//! usual consumer: 1 MiB per partition, 50 MiB per request), every shard
//! and every partition is read at once, each up to its limit, and only the
//! request's first partition may return a batch larger than its limit.
//! Otherwise, or when that read found records but none that fitted, the
//! shards are read one after another in the order their partitions first
//! appear, each given what is left of the budget, and the first batch read
//! is returned whole even if larger than the budget, as Kafka does, so
//! that a consumer always makes progress. Either way a response never holds
//! more than the budget plus that one batch.
//!
//! Before reading, a fetch takes its budget's bytes from its connection's
//! budget and from the broker's (`queued.max.request.bytes`), and holds them
//! until its response is written: a client that does not read its socket
//! stalls its own fetches, not the broker's memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, select_all, Either, LocalBoxFuture};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use sluice_engine::shard::{LocalShard, Published};
use sluice_engine::{Epoch, Offset, TopicPartition, Unread};

use super::{Connection, Reply};
use crate::codec::{decode_body, Request};
use crate::topics::TopicState;
use crate::{errors, partition, Broker};

/// Longest wait honoured, whatever the client asks.
const MAX_WAIT_MS_MAX: i32 = 30_000;

/// In a response that may hold at least this many bytes, each partition's
/// records of at least [`RANGE_MIN`] bytes go out from their segment file
/// (`sendfile`), never read into the broker. Smaller responses are read
/// into memory and written from there: on loopback, reading a megabyte and
/// writing it while it is still in the core's cache costs less than
/// handing the socket a megabyte of 4 KiB page-cache pages, while staging
/// many megabytes costs more than handing them over (one consumer of 8
/// partitions, 8 MiB responses; docs/BENCHMARKS.md). A range also holds no
/// broker memory while a slow client reads it.
const RANGES_RESPONSE_MIN: usize = 4 << 20;

/// See [`RANGES_RESPONSE_MIN`].
const RANGE_MIN: usize = 256 * 1024;

/// One partition of the request, sent to the shard that owns it.
struct Want {
    slot: usize,
    tp: TopicPartition,
    topic: Arc<TopicState>,
    fetch_offset: Offset,
    partition_max_bytes: usize,
    /// The follower fetching (its node id), or -1 for a consumer, and the
    /// epoch of its registration as this broker knows it.
    replica: i32,
    replica_epoch: i64,
    /// The epoch of the batch before `fetch_offset` in the fetcher's log
    /// (v12+; -1 when not given).
    last_fetched_epoch: Epoch,
    /// Whether large record sets may be sent as file ranges (see
    /// [`RANGES_RESPONSE_MIN`]).
    ranges: bool,
}

/// What reading one partition found.
enum Found {
    /// The records, in the result or, to be sent unread, as the buffers
    /// the log's tail holds them in or (large enough, from a real file) as
    /// the range of a segment file they lie in.
    Records(sluice_engine::ReadResult, Option<Unread>),
    /// The fetcher's log is not a prefix of this one: where the epoch it
    /// last fetched ends here (KIP-595's `diverging_epoch`), and where this
    /// log starts.
    Diverged(Epoch, Offset, Offset),
}

/// Reads one partition as `want` asks, unless the fetcher's log diverges
/// from this one, in one piece of work on the partition's log.
async fn read_want(
    local: &LocalShard,
    want: &Want,
    max_bytes: usize,
    upper: Option<Offset>,
    min_one_batch: bool,
) -> sluice_engine::Result<Found> {
    let (from, last_epoch, slot, ranges) = (
        want.fetch_offset,
        want.last_fetched_epoch,
        want.slot,
        want.ranges,
    );
    local
        .with_log(&want.tp, move |log, _| {
            Box::pin(async move {
                if let Some((epoch, end)) = log.diverging(last_epoch, from) {
                    return Ok(Found::Diverged(epoch, end, log.log_start_offset()));
                }
                // A stand-in must exist for whatever the read may return.
                let largest = max_bytes.max(log.config().max_batch_bytes);
                if crate::codec::placeholder(slot, largest).is_some() {
                    let range_min = if ranges { RANGE_MIN } else { usize::MAX };
                    log.read_range(from, max_bytes, upper, min_one_batch, range_min)
                        .await
                        .map(|(result, unread)| Found::Records(result, unread))
                } else {
                    log.read(from, max_bytes, upper, min_one_batch)
                        .await
                        .map(|result| Found::Records(result, None))
                }
            })
        })
        .await
}

/// What one shard read.
struct ShardRead {
    partitions: Vec<(usize, PartitionData)>,
    bytes: usize,
    /// What each partition had, to wait on.
    seen: Vec<Seen>,
    /// A partition had records past its fetch offset and returned none
    /// (its next batch was larger than it was allowed).
    missed: bool,
    /// The partitions (by slot) whose records are sent unread (a segment
    /// file range, or buffers of a log's tail); their records in
    /// `partitions` are its [`crate::codec::placeholder`].
    files: Vec<(usize, Unread)>,
}

/// A partition a fetch that found too little may wait on.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Its index in the shard's wants.
    index: usize,
    /// The offset whose passing wakes the wait: the high watermark for a
    /// consumer, the fetch offset for a follower.
    past: Offset,
    /// Its log's appended bytes ([`Published`]) from before a follower's
    /// read; `None` for a consumer's, or when the partition did not say.
    appended: Option<u64>,
}

fn empty(index: i32) -> PartitionData {
    let mut data = PartitionData::default();
    data.partition_index = index;
    data.high_watermark = -1;
    data.last_stable_offset = -1;
    data.log_start_offset = -1;
    data.aborted_transactions = Some(Vec::new());
    data
}

/// How a round reads a shard's partitions.
#[derive(Clone, Copy)]
enum Pass {
    /// In request order, each partition given what the ones before it left
    /// of `budget`; the first batch read is returned whole when `first`
    /// says none was read before.
    InOrder { budget: usize, first: bool },
    /// All at once, each up to its own `partition_max_bytes`: for requests
    /// whose partition limits together fit the budget, so that no read
    /// depends on another's size. Only the partition in slot `first_slot`
    /// (the request's first) may return a batch larger than its limit.
    Together { first_slot: usize },
}

/// On the owning shard: reads `wants` as `pass` says.
async fn read_shard(
    local: LocalShard,
    me: i32,
    version: i16,
    wants: Arc<[Want]>,
    pass: Pass,
) -> ShardRead {
    let mut out = ShardRead {
        partitions: Vec::with_capacity(wants.len()),
        bytes: 0,
        seen: Vec::with_capacity(wants.len()),
        missed: false,
        files: Vec::new(),
    };
    let mut reads: Vec<(usize, PartitionData, Offset, LocalBoxFuture<'_, _>)> = Vec::new();
    let (mut budget, mut first) = match pass {
        Pass::InOrder { budget, first } => (budget, first),
        Pass::Together { .. } => (usize::MAX, false),
    };
    for (index, want) in wants.iter().enumerate() {
        let mut data = empty(want.tp.partition);
        // Taken before the read, so that whatever the read missed counts
        // as new to a wait after it.
        let published = local.published(&want.tp);
        // A follower whose log diverged from this one is told where, and
        // its fetch offset is not counted: past the divergence it holds
        // batches of another epoch, not this log's.
        if want.replica >= 0 {
            if let Some(diverged) = follower_diverged(&local, want, published).await {
                match partition::high_watermark(&local, me, &want.tp, &want.topic) {
                    Ok(hw) => {
                        data.high_watermark = hw.0;
                        data.last_stable_offset = hw.0;
                        take_read(&mut out, want, version, hw, &mut data, Ok(diverged));
                    }
                    Err(e) => data.error_code = errors::code(&e),
                }
                out.partitions.push((want.slot, data));
                continue;
            }
        }
        // Otherwise a follower's fetch offset says what it has: that may
        // move the high watermark it is then told.
        let hw = if want.replica >= 0 {
            partition::on_follower_fetch(
                &local,
                me,
                &want.tp,
                &want.topic,
                (want.replica, want.replica_epoch),
                want.fetch_offset,
            )
        } else {
            partition::high_watermark(&local, me, &want.tp, &want.topic)
        };
        let hw = match hw {
            Ok(hw) => hw,
            Err(e) => {
                data.error_code = errors::code(&e);
                out.partitions.push((want.slot, data));
                continue;
            }
        };
        data.high_watermark = hw.0;
        data.last_stable_offset = hw.0;
        // Consumers read below the high watermark and wait for it to move;
        // followers read to the log end and wait for appends.
        let (upper, wait_past) = if want.replica >= 0 {
            (None, want.fetch_offset)
        } else {
            (Some(hw), hw)
        };
        out.seen.push(Seen {
            index,
            past: wait_past,
            // Only a follower's wait counts bytes (see `wait_shard`).
            appended: published
                .filter(|_| want.replica >= 0)
                .map(|p| p.appended_bytes),
        });
        if let Some(empty) = nothing_to_read(published, want, upper) {
            // Nothing past the offset: answered here, not by a read queued
            // on the partition (a follower's fetch names every partition
            // it follows from this broker, most of them idle).
            take_read(&mut out, want, version, hw, &mut data, Ok(empty));
            out.partitions.push((want.slot, data));
            continue;
        }
        match pass {
            Pass::Together { first_slot } => {
                let read = read_want(
                    &local,
                    want,
                    want.partition_max_bytes,
                    upper,
                    want.slot == first_slot,
                );
                reads.push((index, data, hw, Box::pin(read)));
            }
            Pass::InOrder { .. } => {
                let max = want.partition_max_bytes.min(budget);
                let read = read_want(&local, want, max, upper, first).await;
                let got = take_read(&mut out, want, version, hw, &mut data, read);
                if got > 0 {
                    first = false;
                }
                budget = budget.saturating_sub(got);
                out.partitions.push((want.slot, data));
            }
        }
    }
    let (pending, reads): (Vec<_>, Vec<_>) = reads
        .into_iter()
        .map(|(index, data, hw, read)| ((index, data, hw), read))
        .unzip();
    let results = futures_util::future::join_all(reads).await;
    for ((index, mut data, hw), read) in pending.into_iter().zip(results) {
        let want = &wants[index];
        take_read(&mut out, want, version, hw, &mut data, read);
        out.partitions.push((want.slot, data));
    }
    out
}

/// Whether the follower fetching `want` has a log that diverged from this
/// one (KIP-595's check, as [`read_want`] makes it). Decided from
/// `published`, this log's last finished work, when the follower's last
/// batch is of this log's last epoch and no further than its end, as in
/// steady replication; otherwise asked of the log itself.
async fn follower_diverged(
    local: &LocalShard,
    want: &Want,
    published: Option<Published>,
) -> Option<Found> {
    let (last, from) = (want.last_fetched_epoch, want.fetch_offset);
    if last.0 < 0 || published.is_some_and(|p| p.last_epoch == last && from <= p.written_end) {
        return None;
    }
    local
        .with_log(&want.tp, move |log, _| {
            Box::pin(async move {
                Ok(log
                    .diverging(last, from)
                    .map(|(epoch, end)| Found::Diverged(epoch, end, log.log_start_offset())))
            })
        })
        .await
        .ok()
        .flatten()
}

/// What a read of `want` up to `upper` (none: the log end) would return,
/// when `published`, its last finished work, shows it can only be nothing:
/// the fetch offset is at the end, within the log, and the fetcher's last
/// epoch cannot diverge from this log's (it is this log's last one, or
/// none). `None`: the read must run. Appends still in flight are not seen
/// here; the fetch then waits and their end wakes it.
fn nothing_to_read(
    published: Option<Published>,
    want: &Want,
    upper: Option<Offset>,
) -> Option<Found> {
    let log = published?;
    let from = want.fetch_offset;
    let end = upper.map_or(log.written_end, |u| u.min(log.written_end));
    let epoch_agrees = want.last_fetched_epoch.0 < 0 || want.last_fetched_epoch == log.last_epoch;
    (from >= end && from >= log.log_start && from <= log.written_end && epoch_agrees).then(|| {
        Found::Records(
            sluice_engine::ReadResult {
                records: bytes::Bytes::new(),
                next_offset: from,
                log_start_offset: log.log_start,
                log_end_offset: log.written_end,
            },
            None,
        )
    })
}

/// Puts one partition's read into its response data; returns the bytes.
fn take_read(
    out: &mut ShardRead,
    want: &Want,
    version: i16,
    hw: Offset,
    data: &mut PartitionData,
    read: sluice_engine::Result<Found>,
) -> usize {
    match read {
        Ok(Found::Diverged(epoch, end, log_start)) => {
            data.diverging_epoch.epoch = epoch.0;
            data.diverging_epoch.end_offset = end.0;
            if version >= 5 {
                data.log_start_offset = log_start.0;
            }
            data.records = Some(bytes::Bytes::new());
            0
        }
        Ok(Found::Records(result, range)) => {
            if version >= 5 {
                data.log_start_offset = result.log_start_offset.0;
            }
            let got = range.as_ref().map_or(result.records.len(), Unread::len);
            // Records there, none returned: the next batch did not fit.
            out.missed |= got == 0 && want.fetch_offset < hw;
            out.bytes += got;
            data.records = Some(result.records);
            if let Some(range) = range {
                // `read_want` asked for a range only where a stand-in fits.
                data.records = crate::codec::placeholder(want.slot, range.len());
                out.files.push((want.slot, range));
            }
            got
        }
        Err(e) => {
            data.error_code = errors::code(&e);
            if let sluice_engine::Error::OffsetOutOfRange { log_start, .. } = e {
                if version >= 5 {
                    data.log_start_offset = log_start.0;
                }
            }
            0
        }
    }
}

/// On the owning shard: waits until the high watermark of any of `seen`
/// (a follower's: the log end) moves past what the read saw. A follower's
/// fetch that still lacks more than one byte of its minimum (`need`) then
/// waits on until its partitions' logs took at least `need` bytes since
/// the read: a read before that would find too little and be thrown away.
/// Its fetch offset stays behind a log end it has not reached, so without
/// this count a follower fetch that found some bytes but too few would
/// read again and again until its deadline. A consumer's fetch reads what
/// a moved high watermark let in, which appends since the read do not
/// measure: it reads again at every move, as before.
async fn wait_shard(
    local: LocalShard,
    me: i32,
    wants: Arc<[Want]>,
    mut seen: Vec<Seen>,
    need: usize,
) {
    if seen.is_empty() {
        return std::future::pending().await;
    }
    loop {
        wait_any(&local, me, &wants, &seen).await;
        if need <= 1 {
            return;
        }
        let mut appended = 0u64;
        for s in &mut seen {
            let want = &wants[s.index];
            // A consumer's partition, which counts no bytes, or one that
            // did not say (closed, failed), ends the wait: the read that
            // follows finds what there is.
            let (Some(before), Some(now)) = (s.appended, local.published(&want.tp)) else {
                return;
            };
            appended = appended.saturating_add(now.appended_bytes.saturating_sub(before));
            // The next wait is for what comes after this wake.
            s.past = now.written_end;
        }
        if appended >= need as u64 {
            return;
        }
    }
}

/// Waits until the high watermark (a follower's: the log end) of any of
/// `seen` moves past its `past`.
async fn wait_any(local: &LocalShard, me: i32, wants: &[Want], seen: &[Seen]) {
    let waits = seen.iter().map(|s| -> LocalBoxFuture<'_, ()> {
        let want = &wants[s.index];
        let past = s.past;
        Box::pin(async move {
            // A partition gone meanwhile ends the wait: the re-read says so.
            if want.replica >= 0 {
                let _appended = local.wait_for_append(&want.tp, past).await;
            } else {
                let _moved =
                    partition::wait_for_high_watermark(local, me, &want.tp, &want.topic, past)
                        .await;
            }
        })
    });
    select_all(waits).await;
}

/// What one read of every shard found.
#[derive(Default)]
struct Round {
    total: usize,
    /// Per shard, the high watermarks its read saw.
    seen: BTreeMap<usize, Vec<Seen>>,
    errors: bool,
    missed: bool,
    /// The slots whose records are sent unread (see [`ShardRead`]).
    files: Vec<(usize, Unread)>,
}

/// Reads every shard's partitions into `slots`. A together pass reads all
/// shards at once; an in-order pass goes shard after shard, each given
/// what the ones before left of the pass's budget, the first batch whole
/// until something was read.
async fn read_round(
    broker: &Broker,
    order: &[usize],
    by_shard: &BTreeMap<usize, Arc<[Want]>>,
    slots: &mut [PartitionData],
    me: i32,
    version: i16,
    pass: Pass,
) -> Round {
    let mut round = Round::default();
    let read = |shard: usize, pass: Pass| {
        let wants = by_shard[&shard].clone();
        let handle = broker.engine.shards()[shard].clone();
        async move {
            let read = handle
                .run(move |local| Box::pin(read_shard(local, me, version, wants, pass)))
                .await;
            (shard, read)
        }
    };
    let results = match pass {
        Pass::Together { .. } => {
            futures_util::future::join_all(order.iter().map(|&shard| read(shard, pass))).await
        }
        Pass::InOrder { budget, .. } => {
            let mut results = Vec::with_capacity(order.len());
            let mut total = 0usize;
            for &shard in order {
                let pass = Pass::InOrder {
                    budget: budget.saturating_sub(total),
                    first: total == 0,
                };
                let done = read(shard, pass).await;
                if let (_, Ok(read)) = &done {
                    total += read.bytes;
                }
                results.push(done);
            }
            results
        }
    };
    for (shard, read) in results {
        absorb(&mut round, shard, read, by_shard, slots);
    }
    round
}

/// Adds what `shard` read to `round` and puts it in `slots`.
fn absorb(
    round: &mut Round,
    shard: usize,
    read: sluice_engine::Result<ShardRead>,
    by_shard: &BTreeMap<usize, Arc<[Want]>>,
    slots: &mut [PartitionData],
) {
    match read {
        Ok(read) => {
            round.total += read.bytes;
            round.missed |= read.missed;
            for (slot, data) in read.partitions {
                round.errors |= answers_at_once(&data);
                slots[slot] = data;
            }
            round.seen.insert(shard, read.seen);
            round.files.extend(read.files);
        }
        Err(e) => {
            round.errors = true;
            for want in by_shard[&shard].iter() {
                slots[want.slot].error_code = errors::code(&e);
            }
        }
    }
}

/// An error or a divergence: the fetch is answered at once.
fn answers_at_once(data: &PartitionData) -> bool {
    data.error_code != 0 || data.diverging_epoch.end_offset >= 0
}

/// How a fetch reads its partitions: all at once when their limits fit
/// its budget together (`Some` slot of the request's first partition, the
/// only one that may return a batch larger than its limit), else in
/// request order; and that budget.
#[derive(Clone, Copy)]
struct Plan {
    together: Option<usize>,
    budget: usize,
}

impl Plan {
    fn first_pass(self) -> Pass {
        match self.together {
            Some(first_slot) => Pass::Together { first_slot },
            None => self.in_order(),
        }
    }

    /// In request order, the first batch whole, as Kafka reads.
    fn in_order(self) -> Pass {
        Pass::InOrder {
            budget: self.budget,
            first: true,
        }
    }

    /// Whether a pass that read `bytes` must be read again in order: a
    /// together pass that found records but none within their limits,
    /// and nothing to answer at once.
    fn again_in_order(self, pass: Pass, bytes: usize, missed: bool, errors: bool) -> bool {
        matches!(pass, Pass::Together { .. }) && bytes == 0 && missed && !errors
    }
}

/// How a fetch reads again after a wait: its plan, and the bytes it takes
/// from its budgets first.
struct Reread {
    /// The bytes the fetch still lacks of its minimum (see [`wait_shard`]).
    need: usize,
    plan: Plan,
    hold: usize,
    budgets: [Arc<partition::budget::Budget>; 2],
}

/// On the owning shard, for a fetch whose partitions all live there (a
/// follower's, whose fetcher matches this shard): waits as [`wait_shard`]
/// does, then reads again at once, as a round over this one shard would,
/// sparing the two messages between the connection's shard and this one
/// that a wake and a new round cost on every replication round trip.
/// `None`: the budgets' bytes were not free at once (see the caller).
async fn wait_then_read(
    local: LocalShard,
    me: i32,
    version: i16,
    wants: Arc<[Want]>,
    seen: Vec<Seen>,
    again: Reread,
) -> Option<(ShardRead, Vec<partition::budget::Permit>)> {
    wait_shard(local.clone(), me, wants.clone(), seen, again.need).await;
    let [connection, broker] = &again.budgets;
    let held = match (
        connection.try_acquire(again.hold),
        broker.try_acquire(again.hold),
    ) {
        (Some(connection), Some(broker)) => vec![connection, broker],
        _ => return None,
    };
    let plan = again.plan;
    let pass = plan.first_pass();
    let read = read_shard(local.clone(), me, version, wants.clone(), pass).await;
    let errors = read.partitions.iter().any(|(_, d)| answers_at_once(d));
    if plan.again_in_order(pass, read.bytes, read.missed, errors) {
        let read = read_shard(local, me, version, wants, plan.in_order()).await;
        return Some((read, held));
    }
    Some((read, held))
}

/// Takes `hold` bytes from the connection's and the broker's budgets for a
/// round's read. Back from a wait (`woken`), the bytes may be held by
/// responses queued behind this one on its connection, which are written
/// only after it: waiting for them would hang the connection. Unless they
/// are free at once, the fetch is answered with nothing read (`None`).
async fn read_budget(
    broker: &Broker,
    connection: &Connection,
    hold: usize,
    woken: bool,
) -> Option<Vec<partition::budget::Permit>> {
    if !woken {
        return Some(vec![
            connection.budget.acquire(hold).await,
            broker.memory.acquire(hold).await,
        ]);
    }
    match (
        connection.budget.try_acquire(hold),
        broker.memory.try_acquire(hold),
    ) {
        (Some(connection), Some(broker)) => Some(vec![connection, broker]),
        _ => None,
    }
}

/// One round over every shard, as `plan` says.
async fn full_round(
    broker: &Broker,
    order: &[usize],
    by_shard: &BTreeMap<usize, Arc<[Want]>>,
    slots: &mut [PartitionData],
    me: i32,
    version: i16,
    plan: Plan,
) -> Round {
    let pass = plan.first_pass();
    let round = read_round(broker, order, by_shard, slots, me, version, pass).await;
    if plan.again_in_order(pass, round.total, round.missed, round.errors) {
        return read_round(broker, order, by_shard, slots, me, version, plan.in_order()).await;
    }
    round
}

pub async fn handle(broker: &Broker, request: &Request, connection: &Connection) -> Reply {
    let body: FetchRequest = decode_body(request)?;
    let wait = Duration::from_millis(body.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(body.min_bytes).unwrap_or(0);
    let me = broker.config.node_id;
    let version = request.version;
    // A follower names itself (replica_id, in replica_state from v15).
    let replica = if request.version >= 15 {
        body.replica_state.replica_id.0
    } else {
        body.replica_id.0
    };
    let budget = usize::try_from(body.max_bytes)
        .unwrap_or(0)
        .clamp(1, broker.config.fetch_max_bytes);
    // What the response may hold: the budget, or one whole batch if that is
    // larger (the first batch is returned whole).
    let hold = budget.max(broker.config.message_max_bytes);
    let topics = broker.topics.snapshot();
    // The follower's registration as of this request: its fetches count
    // towards joining an ISR for that run of its process only (KIP-903).
    // Fetch v15+ says the epoch itself; older versions leave it to the
    // image.
    let replica_epoch = if replica < 0 {
        -1
    } else if request.version >= 15 && body.replica_state.replica_epoch >= 0 {
        body.replica_state.replica_epoch
    } else {
        broker
            .topics
            .image()
            .brokers
            .get(&replica)
            .map_or(-1, |b| b.epoch)
    };
    let mut slots: Vec<PartitionData> = Vec::new();
    let mut shape: Vec<(kafka_protocol::messages::TopicName, usize)> = Vec::new();
    // Shards in the order their partitions first appear, each with its
    // partitions in request order.
    let mut order: Vec<usize> = Vec::new();
    let mut wanted: BTreeMap<usize, Vec<Want>> = BTreeMap::new();
    for topic in &body.topics {
        let name = topic.topic.0.as_str();
        let state = topics.get(name);
        shape.push((topic.topic.clone(), topic.partitions.len()));
        for partition in &topic.partitions {
            let slot = slots.len();
            let mut data = empty(partition.partition);
            let Some(state) = state.filter(|s| s.has(partition.partition)) else {
                data.error_code = ResponseError::UnknownTopicOrPartition.code();
                slots.push(data);
                continue;
            };
            if broker.not_leader(Some(state), partition.partition)
                || (replica >= 0 && !state.hosted_by(partition.partition, replica))
            {
                data.error_code = ResponseError::NotLeaderOrFollower.code();
                slots.push(data);
                continue;
            }
            if let Some(error) = broker.leader_epoch_error(
                state,
                partition.partition,
                partition.current_leader_epoch,
            ) {
                data.error_code = error.code();
                slots.push(data);
                continue;
            }
            slots.push(data);
            let tp = TopicPartition::new(name, partition.partition);
            let shard = broker.engine.shard_for(&tp).id();
            if !wanted.contains_key(&shard) {
                order.push(shard);
            }
            wanted.entry(shard).or_default().push(Want {
                slot,
                tp,
                topic: state.clone(),
                fetch_offset: Offset(partition.fetch_offset),
                partition_max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
                replica,
                replica_epoch,
                last_fetched_epoch: Epoch(if version >= 12 {
                    partition.last_fetched_epoch
                } else {
                    -1
                }),
                ranges: false,
            });
        }
    }
    // A partition refused before any read (unknown here, led elsewhere, a
    // stale or future leader epoch): the fetch answers at once, as Kafka's
    // does, so that the fetcher learns it now instead of after a long-poll
    // on the partitions it may read. A follower whose first fetch of a new
    // partition reached the leader before the leader knew the topic would
    // otherwise park for its full wait on its other partitions, and hold
    // the new partition's high watermark (and every acks=all produce to
    // it) back that long.
    let refused = slots.iter().any(|d| d.error_code != 0);
    // Every partition may read its own limit at once when the limits,
    // plus one batch larger than a limit, fit the budget together.
    let limits: usize = wanted
        .values()
        .flatten()
        .map(|w| w.partition_max_bytes)
        .fold(0, usize::saturating_add);
    let together = limits.saturating_add(broker.config.message_max_bytes) <= budget;
    let ranges = if together { limits } else { budget } >= RANGES_RESPONSE_MIN
        && crate::send::ranges_supported();
    for want in wanted.values_mut().flatten() {
        want.ranges = ranges;
    }
    // Shared, not copied, by every round's messages to the shard.
    let by_shard: BTreeMap<usize, Arc<[Want]>> = wanted
        .into_iter()
        .map(|(shard, wants)| (shard, wants.into()))
        .collect();
    connection.affinity.note(by_shard.keys().copied());
    // The connection's own shard first: no message needed.
    let here = sluice_engine::shard::local().map(|l| l.id());
    order.sort_by_key(|shard| Some(*shard) != here);
    let first_slot = by_shard
        .values()
        .flat_map(|wants| wants.iter())
        .map(|w| w.slot)
        .min()
        .unwrap_or(0);
    let plan = Plan {
        together: together.then_some(first_slot),
        budget,
    };
    let mut woken = false;
    // The last round's file ranges, by slot.
    let mut files: Vec<(usize, Unread)> = Vec::new();
    // A round read on the partitions' shard right after its wait.
    let mut ready: Option<(Round, Vec<partition::budget::Permit>)> = None;
    let held = loop {
        // Reserved for the read, cut to what was read once it is done, and
        // given back entirely while the fetch waits.
        let (mut held, round) = if let Some(ready) = ready.take() {
            (ready.1, ready.0)
        } else {
            let Some(held) = read_budget(broker, connection, hold, woken).await else {
                break Vec::new();
            };
            let round = full_round(broker, &order, &by_shard, &mut slots, me, version, plan).await;
            (held, round)
        };
        let Round {
            total,
            seen,
            errors,
            files: round_files,
            ..
        } = round;
        files = round_files;
        for permit in &mut held {
            permit.shrink(total);
        }
        let now = Instant::now();
        if total >= min_bytes.max(1) || errors || refused || now >= deadline || seen.is_empty() {
            break held;
        }
        // The bytes read go with their budget; the next round reads again.
        drop(held);
        for data in &mut slots {
            data.records = None;
        }
        woken = true;
        // What the fetch still lacks of its minimum.
        let short = min_bytes.max(1) - total;
        let timeout = compio::time::sleep(deadline - now);
        futures_util::pin_mut!(timeout);
        if let (1, Some((&shard, _))) = (by_shard.len(), by_shard.first_key_value()) {
            // One shard: it waits and reads again itself.
            let handle = broker.engine.shards()[shard].clone();
            let wants = by_shard[&shard].clone();
            let seen = seen.into_values().next().unwrap_or_default();
            let again = Reread {
                need: short,
                plan,
                hold,
                budgets: [connection.budget.clone(), broker.memory.clone()],
            };
            let work = handle
                .run(move |local| Box::pin(wait_then_read(local, me, version, wants, seen, again)));
            futures_util::pin_mut!(work);
            match select(work, timeout).await {
                Either::Left((Ok(Some((read, held))), _)) => {
                    let mut round = Round::default();
                    absorb(&mut round, shard, Ok(read), &by_shard, &mut slots);
                    ready = Some((round, held));
                }
                // The budgets' bytes were not free (see `read_budget`).
                Either::Left((Ok(None), _)) => break Vec::new(),
                // The shard stopped (a new round says so), or the deadline:
                // one last read answers with whatever has come.
                Either::Left((Err(_), _)) | Either::Right(_) => {}
            }
            continue;
        }
        // Wait for a high watermark past what this read saw, on any shard.
        // Once the shards together took `short` bytes, one of them took at
        // least its share: no shard waits for more than that.
        let need = short.div_ceil(seen.len());
        let waits = seen.into_iter().map(|(shard, seen)| {
            let handle = broker.engine.shards()[shard].clone();
            let wants = by_shard[&shard].clone();
            Box::pin(async move {
                let _ = handle
                    .run(move |local| Box::pin(wait_shard(local, me, wants, seen, need)))
                    .await;
            })
        });
        if let Either::Right(_) = select(select_all(waits), timeout).await {
            // Deadline: one last read answers with whatever has come.
            continue;
        }
    };
    // Each range with the stand-in its slot's records hold.
    let files: Vec<(bytes::Bytes, Unread)> = files
        .into_iter()
        .filter_map(|(slot, range)| Some((slots[slot].records.clone()?, range)))
        .collect();
    let mut response = FetchResponse::default();
    let mut slots = slots.into_iter();
    for (name, count) in shape {
        let mut out = FetchableTopicResponse::default();
        out.topic = name;
        out.partitions = slots.by_ref().take(count).collect();
        response.responses.push(out);
    }
    // The records go out as the reads returned them, not copied into the
    // encoded response.
    let records: Vec<bytes::Bytes> = response
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter_map(|p| p.records.clone())
        .filter(|r| !crate::codec::is_stand_in(r))
        .collect();
    let parts = crate::codec::encode_response_spliced(
        request.api_key,
        request.version,
        request.header.correlation_id,
        &response,
        &records,
        &files,
    )
    .map_err(|e| crate::codec::DecodeError::Malformed {
        what: "response",
        reason: e.to_string(),
    })?;
    Ok(Some(super::Response { parts, held }))
}
