//! Thread-per-core shards.
//!
//! ```text
//!   any thread ──(bounded channel)──▶ shard 0 thread: compio runtime + ring
//!                                      ├── shard loop task: owns its logs
//!                                      └── tasks spawned by callers (the
//!                                          broker's connections)
//!                                     shard 1 thread: ...
//! ```
//!
//! Each shard is one OS thread, pinned to a core, running its own compio
//! runtime (and so its own io_uring ring). A partition belongs to exactly
//! one shard, chosen by a stable hash of its name, and only that shard's
//! thread ever touches its [`Log`]: there are no locks on the append or read
//! path. Everyone else reaches a partition by sending a command over the
//! shard's bounded channel and awaiting a one-shot reply.
//!
//! Group commit: the shard loop wakes on the first command, then drains
//! whatever else has queued (up to a bound) and runs the turn. Consecutive
//! appends to one partition become one write and at most one fsync; the
//! partitions of a turn run concurrently, so their writes and fsyncs are in
//! flight on the ring together. Commands for one partition run in arrival
//! order, so per-partition order holds.
//!
//! The I/O driver is io_uring unless it cannot be set up (Docker's default
//! seccomp profile, `kernel.io_uring_disabled`), in which case every shard
//! uses compio's epoll and thread-pool driver and one log line says why.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::RuntimeBuilder;
use futures_channel::oneshot;
use futures_util::future::LocalBoxFuture;
use tracing::{error, info, warn};

use crate::budget::{Budget, Permit};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::io::Fs;
use crate::log::{AppendInfo, AppendMode, Log, RecoveryReport};
use crate::types::TopicPartition;

mod drive;
mod table;

use table::Core;
pub use table::{local, LocalShard, Published};

/// Which compio driver the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoDriver {
    /// io_uring, or epoll and a thread pool where io_uring is unavailable.
    #[default]
    Auto,
    /// io_uring only; start-up fails if it is unavailable.
    IoUring,
    /// epoll and a thread pool, even where io_uring works.
    Poll,
}

impl std::str::FromStr for IoDriver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(IoDriver::Auto),
            "io_uring" | "io-uring" | "iouring" => Ok(IoDriver::IoUring),
            "poll" | "epoll" | "polling" => Ok(IoDriver::Poll),
            other => Err(Error::InvalidConfig(format!(
                "io driver must be auto, io_uring or poll, got {other:?}"
            ))),
        }
    }
}

/// The driver actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Poll,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IoUring => "io_uring",
            Backend::Poll => "poll",
        })
    }
}

/// Configuration of the shard set.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where partition directories live (Kafka's `log.dirs`, one for now).
    pub data_dir: PathBuf,
    /// Number of shard threads; defaults to the number of cores.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th CPU this process may run on (wrapping).
    pub pin_cores: bool,
    pub io_driver: IoDriver,
    /// The filesystem: the real one, or the crash simulator in tests.
    pub fs: Fs,
    /// Bound of each shard's command channel.
    pub queue_capacity: usize,
    /// Most commands one shard turn takes (bounds a turn's latency).
    pub turn_commands_max: usize,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// Bytes of records that may be queued for one shard at once (appends
    /// and weighted runs through its channel); senders beyond it wait.
    pub queue_bytes_max: usize,
    /// Size of each shard runtime's queue of wake-ups from other threads.
    /// compio spins (yielding) when a thread wakes a task on a runtime whose
    /// queue is full; two runtimes waking each other's tasks with full
    /// queues then livelock. It must exceed the tasks that other threads can
    /// have waiting on one shard: see [`REMOTE_WAKES_MAX`].
    pub remote_wakes_max: usize,
    /// How often each shard applies retention (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("sluice-data"),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            io_driver: IoDriver::Auto,
            fs: Fs::Os,
            queue_capacity: 4096,
            turn_commands_max: 1024,
            queue_bytes_max: QUEUE_BYTES_MAX,
            ring_entries: 1024,
            remote_wakes_max: REMOTE_WAKES_MAX,
            retention_check_interval_ms: 300_000,
        }
    }
}

/// Default size of a runtime's queue of wake-ups from other threads (8 bytes
/// each). compio's default is 64, which a client with more than 64 tasks
/// awaiting shard replies overflows; see [`EngineConfig::remote_wakes_max`].
/// Runtimes that call into the engine from outside its shards should be
/// built with [`client_runtime`] or the same setting.
pub const REMOTE_WAKES_MAX: usize = 1 << 16;

/// A compio runtime for a thread that calls into the engine from outside
/// its shards, with a remote-wake queue as large as the shards' own.
pub fn client_runtime() -> std::io::Result<compio::runtime::Runtime> {
    RuntimeBuilder::new()
        .sync_queue_size(REMOTE_WAKES_MAX)
        .build()
}

/// Default of [`EngineConfig::queue_bytes_max`].
pub const QUEUE_BYTES_MAX: usize = 256 << 20;

/// Bound checks between the limits above, at compile time where they are
/// constants.
const SHARDS_MAX: usize = 1024;
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);

/// Summary of one log, as reported by its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInfo {
    pub log_start_offset: crate::Offset,
    pub log_end_offset: crate::Offset,
    pub flushed_offset: crate::Offset,
    pub size_bytes: u64,
    pub segments: usize,
}

impl LogInfo {
    pub(crate) fn of(log: &Log) -> LogInfo {
        LogInfo {
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
            flushed_offset: log.flushed_offset(),
            size_bytes: log.size_bytes(),
            segments: log.segment_count(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;
type LogJob = Box<dyn for<'a> FnOnce(&'a mut Log, u64) -> LocalBoxFuture<'a, ()> + Send>;
type ShardTask = Box<dyn FnOnce() + Send>;

enum Command {
    Open {
        tp: TopicPartition,
        config: LogConfig,
        reply: Reply<RecoveryReport>,
    },
    Append {
        tp: TopicPartition,
        records: bytes::Bytes,
        mode: AppendMode,
        reply: Reply<AppendInfo>,
        /// The records' bytes in the shard's queue budget, given back when
        /// the append is done.
        held: Permit,
    },
    /// Any other operation on one log, run in order with its appends.
    WithLog {
        tp: TopicPartition,
        job: LogJob,
        on_missing: Reply<()>,
    },
    Close {
        tp: TopicPartition,
        delete: bool,
        reply: Reply<()>,
    },
    /// Run a closure on the shard thread (it may spawn compio tasks there).
    Spawn(ShardTask),
    /// Reply once the partition's log end offset passes `after` (a fetch
    /// waiting for data). The reply is dropped if the log goes away.
    WaitForAppend {
        tp: TopicPartition,
        after: crate::Offset,
        reply: Reply<crate::Offset>,
    },
    Shutdown {
        reply: std::sync::mpsc::SyncSender<Result<()>>,
    },
}

/// A cloneable, `Send` handle to one shard.
#[derive(Clone)]
pub struct ShardHandle {
    id: usize,
    tx: async_channel::Sender<Command>,
    /// Bytes of records in flight to this shard through this handle's
    /// channel (`EngineConfig::queue_bytes_max`): the queue is bounded in
    /// bytes as well as in commands.
    queued: Arc<Budget>,
}

impl fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardHandle").field("id", &self.id).finish()
    }
}

impl ShardHandle {
    pub fn id(&self) -> usize {
        self.id
    }

    /// Bytes of records queued for this shard through its channel now, and
    /// senders waiting for room.
    pub fn queued_bytes(&self) -> (usize, usize) {
        (self.queued.used(), self.queued.waiting())
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::ShardStopped(self.id))?;
        rx.await.map_err(|_| Error::ShardStopped(self.id))?
    }

    /// Opens (or creates) a partition's log on this shard, running recovery.
    pub async fn open(&self, tp: TopicPartition, config: LogConfig) -> Result<RecoveryReport> {
        self.call(|reply| Command::Open { tp, config, reply }).await
    }

    /// Appends one request's batches.
    pub async fn append(
        &self,
        tp: TopicPartition,
        records: impl Into<bytes::Bytes>,
        mode: AppendMode,
    ) -> Result<AppendInfo> {
        let records = records.into();
        let held = self.queued.acquire(records.len()).await;
        self.call(|reply| Command::Append {
            tp,
            records,
            mode,
            reply,
            held,
        })
        .await
    }

    /// Runs `f` on the partition's log on its shard, in order with the
    /// partition's other commands. `f` gets the log and the shard's clock
    /// (ms since the epoch).
    pub async fn with_log<R, F>(&self, tp: TopicPartition, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'a> FnOnce(&'a mut Log, u64) -> LocalBoxFuture<'a, Result<R>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let job: LogJob = Box::new(move |log, now| {
            Box::pin(async move {
                let result = f(log, now).await;
                // The caller may have gone away; nothing to do then.
                drop(tx.send(result));
            })
        });
        self.call(|on_missing| Command::WithLog {
            tp,
            job,
            on_missing,
        })
        .await?;
        rx.await.map_err(|_| Error::ShardStopped(self.id))?
    }

    pub async fn read(
        &self,
        tp: TopicPartition,
        from: crate::Offset,
        max_bytes: usize,
        upper_bound: Option<crate::Offset>,
        min_one_batch: bool,
    ) -> Result<crate::log::ReadResult> {
        self.with_log(tp, move |log, _| {
            Box::pin(log.read(from, max_bytes, upper_bound, min_one_batch))
        })
        .await
    }

    pub async fn info(&self, tp: TopicPartition) -> Result<LogInfo> {
        self.with_log(tp, |log, _| Box::pin(async move { Ok(LogInfo::of(log)) }))
            .await
    }

    pub async fn flush(&self, tp: TopicPartition) -> Result<()> {
        self.with_log(tp, |log, now| Box::pin(log.flush(now))).await
    }

    /// Closes a partition's log (flushing it), optionally deleting it.
    pub async fn close(&self, tp: TopicPartition, delete: bool) -> Result<()> {
        self.call(|reply| Command::Close { tp, delete, reply })
            .await
    }

    /// Waits until the partition's log end offset is greater than `after`
    /// and returns it (a long-polling fetch). Callers bound the wait with
    /// their own timeout; a dropped wait is cleaned up by the shard.
    pub async fn wait_for_append(
        &self,
        tp: TopicPartition,
        after: crate::Offset,
    ) -> Result<crate::Offset> {
        self.call(|reply| Command::WaitForAppend { tp, after, reply })
            .await
    }

    /// Runs the future `f` makes on this shard's thread, with the shard's
    /// [`LocalShard`], and returns its output: one message to the shard
    /// however many partitions `f` touches (none when the caller already
    /// runs on this shard). This is how a request fans out by shard.
    pub async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(LocalShard) -> LocalBoxFuture<'static, R> + Send + 'static,
    {
        self.run_weighted(0, f).await
    }

    /// [`ShardHandle::run`] for work that carries `bytes` of data to the
    /// shard (a produce request's records): they count against the shard's
    /// queue budget until the work is done, so a flood of large requests
    /// waits here instead of piling up in the shard's queue.
    pub async fn run_weighted<R, F>(&self, bytes: usize, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(LocalShard) -> LocalBoxFuture<'static, R> + Send + 'static,
    {
        self.submit_weighted(bytes, f).await?.await
    }

    /// Hands `f` to the shard and returns, once it is there, a future of its
    /// output. `f` itself (not the future it makes) runs on the shard in the
    /// order the submissions were made, so what `f` does before returning
    /// its future (queueing appends on partitions) happens in submission
    /// order: one caller's successive submissions to a shard keep their
    /// order even though their futures run concurrently. On the caller's
    /// own shard `f` runs before this returns. Dropping the returned future
    /// cancels the work.
    pub async fn submit_weighted<R, F>(
        &self,
        bytes: usize,
        f: F,
    ) -> Result<LocalBoxFuture<'static, Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(LocalShard) -> LocalBoxFuture<'static, R> + Send + 'static,
    {
        if let Some(here) = local().filter(|l| l.id() == self.id) {
            let work = f(here);
            return Ok(Box::pin(async move { Ok(work.await) }));
        }
        let held = self.queued.acquire(bytes).await;
        let (tx, rx) = oneshot::channel();
        self.spawn(move || {
            // On the shard thread, which always has its LocalShard; without
            // it `tx` is dropped and the caller sees the shard stopped.
            if let Some(here) = local() {
                // Called here, in the shard's command order, not in the
                // task below.
                let work = f(here);
                compio::runtime::spawn(async move {
                    // A caller that goes away (a closed connection) cancels
                    // the work instead of leaving it to run to the end.
                    let mut tx = tx;
                    let outcome = {
                        let cancelled = tx.cancellation();
                        futures_util::pin_mut!(work, cancelled);
                        match futures_util::future::select(work, cancelled).await {
                            futures_util::future::Either::Left((outcome, _)) => Some(outcome),
                            futures_util::future::Either::Right(_) => None,
                        }
                    };
                    drop(held);
                    if let Some(outcome) = outcome {
                        drop(tx.send(outcome));
                    }
                })
                .detach();
            }
        })
        .await?;
        let id = self.id;
        Ok(Box::pin(async move {
            rx.await.map_err(|_| Error::ShardStopped(id))
        }))
    }

    /// Runs `f` on this shard's thread. `f` may start compio tasks there
    /// (`compio::runtime::spawn`), which then share the shard's ring.
    pub async fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.tx
            .send(Command::Spawn(Box::new(f)))
            .await
            .map_err(|_| Error::ShardStopped(self.id))
    }
}

/// The running shard threads.
pub struct Engine {
    handles: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
    backend: Backend,
    config: EngineConfig,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.handles.len())
            .field("backend", &self.backend)
            .finish()
    }
}

/// Milliseconds since the Unix epoch: the shell's clock, passed to the pure
/// parts as an argument.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides the driver once, so that every shard uses the same one and the
/// fallback is logged once.
fn choose_backend(driver: IoDriver, ring_entries: u32) -> Result<Backend> {
    match driver {
        IoDriver::Poll => Ok(Backend::Poll),
        IoDriver::IoUring | IoDriver::Auto => {
            let mut proactor = ProactorBuilder::new();
            proactor
                .capacity(ring_entries)
                .driver_type(DriverType::IoUring);
            match RuntimeBuilder::new().with_proactor(proactor).build() {
                Ok(runtime) => {
                    drop(runtime);
                    Ok(Backend::IoUring)
                }
                Err(e) if driver == IoDriver::Auto => {
                    warn!(
                        error = %e,
                        "io_uring is unavailable (blocked by seccomp, kernel.io_uring_disabled or an old kernel); \
                         using the epoll and thread-pool driver"
                    );
                    Ok(Backend::Poll)
                }
                Err(e) => Err(Error::InvalidConfig(format!(
                    "io_uring was required but cannot be set up: {e}"
                ))),
            }
        }
    }
}

/// The CPUs this process may run on (its affinity mask, which a cgroup or
/// `taskset` may have narrowed), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// A stable hash (FNV-1a) of a partition's name: the same partition lands
/// on the same shard in every process, whatever the standard library's
/// hasher seed.
fn partition_hash(tp: &TopicPartition) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = tp.topic.bytes().chain(tp.partition.to_be_bytes());
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Engine {
    /// Starts the shard threads.
    pub fn start(config: EngineConfig) -> Result<Engine> {
        if config.shards == 0 || config.shards > SHARDS_MAX {
            return Err(Error::InvalidConfig(format!(
                "shard count must be in [1, {SHARDS_MAX}], got {}",
                config.shards
            )));
        }
        if config.queue_capacity == 0 || config.turn_commands_max == 0 {
            return Err(Error::InvalidConfig(
                "queue capacity and commands per turn must be positive".into(),
            ));
        }
        let backend = choose_backend(config.io_driver, config.ring_entries)?;
        let cpus = allowed_cpus();
        let mut handles = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        for id in 0..config.shards {
            let (tx, rx) = async_channel::bounded(config.queue_capacity);
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
            let mut proactor = ProactorBuilder::new();
            proactor
                .capacity(config.ring_entries)
                .driver_type(match backend {
                    Backend::IoUring => DriverType::IoUring,
                    Backend::Poll => DriverType::Poll,
                });
            let mut builder = RuntimeBuilder::new();
            builder
                .with_proactor(proactor)
                .sync_queue_size(config.remote_wakes_max.max(config.queue_capacity));
            if config.pin_cores && !cpus.is_empty() {
                builder.thread_affinity(HashSet::from([cpus[id % cpus.len()]]));
            }
            let (fs, data_dir) = (config.fs.clone(), config.data_dir.clone());
            let (turn_commands_max, retention_check_interval_ms) =
                (config.turn_commands_max, config.retention_check_interval_ms);
            let thread = std::thread::Builder::new()
                .name(format!("sluice-shard-{id}"))
                .spawn(move || {
                    let runtime = match builder.build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            drop(ready_tx.send(Err(Error::io("starting the shard runtime", e))));
                            return;
                        }
                    };
                    drop(ready_tx.send(Ok(())));
                    // Logs hold compio files, which are not `Send`: the shard
                    // is built on its own thread and never leaves it.
                    let core = Core::new(id, fs, data_dir);
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        drive::drive(
                            &runtime,
                            run_loop(core, rx, turn_commands_max, retention_check_interval_ms),
                        )
                    }));
                    if let Err(panic) = ran {
                        // As compio's block_on does: the shard's other tasks
                        // are dropped (with the runtime) after the unwind, not
                        // during it, so a task that panics in its drop does
                        // not abort the process.
                        drop(runtime);
                        std::panic::resume_unwind(panic);
                    }
                })
                .map_err(|e| Error::io("spawning a shard thread", e))?;
            ready_rx
                .recv()
                .map_err(|_| Error::ShardStopped(id))
                .and_then(|r| r)?;
            handles.push(ShardHandle {
                id,
                tx,
                queued: Budget::new(config.queue_bytes_max),
            });
            threads.push(thread);
        }
        info!(shards = config.shards, backend = %backend, dir = %config.data_dir.display(), "storage engine started");
        Ok(Engine {
            handles,
            threads,
            backend,
            config,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    /// The shard that owns `tp`.
    pub fn shard_for(&self, tp: &TopicPartition) -> &ShardHandle {
        let n = self.handles.len() as u64;
        &self.handles[(partition_hash(tp) % n) as usize]
    }

    pub fn shard(&self, id: usize) -> Option<&ShardHandle> {
        self.handles.get(id)
    }

    pub fn shards(&self) -> &[ShardHandle] {
        &self.handles
    }

    pub async fn open(&self, tp: TopicPartition, config: LogConfig) -> Result<RecoveryReport> {
        self.shard_for(&tp).open(tp, config).await
    }

    pub async fn append(
        &self,
        tp: TopicPartition,
        records: impl Into<bytes::Bytes>,
        mode: AppendMode,
    ) -> Result<AppendInfo> {
        self.shard_for(&tp).append(tp, records, mode).await
    }

    pub async fn read(
        &self,
        tp: TopicPartition,
        from: crate::Offset,
        max_bytes: usize,
        upper_bound: Option<crate::Offset>,
        min_one_batch: bool,
    ) -> Result<crate::log::ReadResult> {
        self.shard_for(&tp)
            .read(tp, from, max_bytes, upper_bound, min_one_batch)
            .await
    }

    /// The partitions that have a directory under the data directory.
    pub fn existing_partitions(&self) -> Result<Vec<TopicPartition>> {
        let dir = &self.config.data_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((topic, partition)) = name.rsplit_once('-') else {
                continue;
            };
            if let (false, Ok(partition)) = (topic.is_empty(), partition.parse::<i32>()) {
                out.push(TopicPartition::new(topic, partition));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Flushes and closes every log and stops the shard threads.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    /// Flushes and closes every log and stops the shard loops, through a
    /// shared reference (a server whose connections still hold the engine).
    /// The threads end on their own; later calls find the shards stopped.
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        let mut replies = Vec::new();
        for handle in &self.handles {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            if handle
                .tx
                .send_blocking(Command::Shutdown { reply: tx })
                .is_ok()
            {
                replies.push((handle.id, rx));
            }
        }
        for (id, rx) in replies {
            let result = rx.recv().map_err(|_| Error::ShardStopped(id));
            if let Err(e) | Ok(Err(e)) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop(&mut self) -> Result<()> {
        let mut first_error = self.close().err();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                first_error.get_or_insert(Error::ShardStopped(usize::MAX));
            }
        }
        self.handles.clear();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            if let Err(e) = self.stop() {
                error!(error = %e, "engine shutdown failed");
            }
        }
    }
}

/// The shard loop: sorts commands into the partition table and never
/// waits on a partition's work (see [`table`]). It wakes for commands and,
/// every `log.retention.check.interval.ms`, to queue retention.
async fn run_loop(
    core: Rc<Core>,
    rx: async_channel::Receiver<Command>,
    turn_commands_max: usize,
    retention_check_interval_ms: u64,
) {
    let mut next_retention_ms = now_ms() + retention_check_interval_ms;
    loop {
        // The runtime runs the shard's other tasks (partition workers, a
        // broker's connections) only while this loop is pending. Under a
        // steady stream of commands from other threads it would never be,
        // and they would starve, so a busy loop yields once per batch.
        if !rx.is_empty() {
            yield_now().await;
        }
        let wait = Duration::from_millis(next_retention_ms.saturating_sub(now_ms()).max(1));
        let first = match compio::time::timeout(wait, rx.recv()).await {
            Ok(Ok(cmd)) => Some(cmd),
            // Every handle is gone: nobody can ask for anything again.
            Ok(Err(_)) => {
                // close_all logs each failure itself.
                if core.close_all().await.is_err() {
                    error!(shard = core.id, "some logs failed to close");
                }
                return;
            }
            Err(_elapsed) => None,
        };
        // Take what has queued (bounded) before acting on any of it: a
        // command that sends another (a chain of spawns) must not keep this
        // batch going for ever.
        let mut batch: Vec<Command> = first.into_iter().collect();
        while batch.len() < turn_commands_max {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        for cmd in batch {
            if let Command::Shutdown { reply } = cmd {
                let result = core.close_all().await;
                drop(reply.send(result));
                return;
            }
            core.command(cmd);
        }
        let now = now_ms();
        if now >= next_retention_ms {
            next_retention_ms = now + retention_check_interval_ms;
            core.queue_retention();
        }
    }
}

/// Returns pending once, having woken itself, so that the runtime polls its
/// other ready tasks before the caller continues.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
