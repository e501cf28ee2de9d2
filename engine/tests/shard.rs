//! The shard set: thread-per-core ownership, group commit, ordering, the
//! driver choice, clean shutdown.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::split_batches;
use compio::driver::DriverType;
use sluice_engine::io::Fs;
use sluice_engine::log::{AppendMode, Durability, Log, RECOVERY_POINT_FILE};
use sluice_engine::shard::ShardHandle;
use sluice_engine::sim::SimFs;
use sluice_engine::{
    Backend, Engine, EngineConfig, Epoch, Error, IoDriver, LogConfig, Offset, TopicPartition,
};

const LEADER: AppendMode = AppendMode::Leader {
    epoch: Epoch(0),
    keep: true,
};

fn config(dir: &std::path::Path, driver: IoDriver, shards: usize) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        shards,
        io_driver: driver,
        ..EngineConfig::default()
    }
}

/// One shard on the crash simulator, with the poll driver.
fn sim_engine(sim: &SimFs) -> Engine {
    Engine::start(EngineConfig {
        data_dir: "/data".into(),
        shards: 1,
        fs: Fs::Sim(sim.clone()),
        io_driver: IoDriver::Poll,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// `flush.messages=1`: an fsync for every append.
fn every_batch() -> LogConfig {
    LogConfig {
        flush_messages: Some(1),
        ..LogConfig::default()
    }
}

fn drivers() -> Vec<IoDriver> {
    let mut out = vec![IoDriver::Poll];
    if common::runtime(DriverType::IoUring).is_some() {
        out.push(IoDriver::IoUring);
    }
    out
}

/// A batch whose single record names its sender (the value's bytes) and
/// the sender's sequence number (the timestamp), so that no two batches of
/// different senders look alike.
fn tagged(sender: usize, seq: usize) -> Vec<u8> {
    common::batch_with(
        1,
        8,
        seq as i64,
        kafka_protocol::records::Compression::None,
        sender as u8,
    )
}

#[test]
fn appends_from_many_threads_keep_per_partition_order_on_every_driver() {
    for driver in drivers() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::start(config(tmp.path(), driver, 2)).unwrap());
        match driver {
            IoDriver::Poll => assert_eq!(engine.backend(), Backend::Poll),
            _ => assert_eq!(engine.backend(), Backend::IoUring),
        }
        let partitions: Vec<TopicPartition> =
            (0..6).map(|p| TopicPartition::new("orders", p)).collect();
        let rt = common::runtime(DriverType::Poll).unwrap();
        rt.block_on(async {
            for tp in &partitions {
                engine.open(tp.clone(), LogConfig::default()).await.unwrap();
            }
        });
        let per_sender = 40;
        let senders: Vec<_> = (0..3)
            .map(|sender| {
                let (engine, partitions) = (engine.clone(), partitions.clone());
                std::thread::spawn(move || {
                    let rt = common::runtime(DriverType::Poll).unwrap();
                    rt.block_on(async {
                        // Each partition gets this sender's batches in order;
                        // appends to different partitions are in flight at once.
                        let tasks: Vec<_> = partitions
                            .iter()
                            .map(|tp| {
                                let (engine, tp) = (engine.clone(), tp.clone());
                                compio::runtime::spawn(async move {
                                    let mut offsets = Vec::new();
                                    for seq in 0..per_sender {
                                        let info = engine
                                            .append(tp.clone(), tagged(sender, seq), LEADER)
                                            .await
                                            .unwrap();
                                        offsets.push(info.base_offset);
                                    }
                                    offsets
                                })
                            })
                            .collect();
                        for task in tasks {
                            let offsets = task.await.unwrap();
                            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
                        }
                    })
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        rt.block_on(async {
            for tp in &partitions {
                let r = engine
                    .read(tp.clone(), Offset(0), 1 << 20, None, true)
                    .await
                    .unwrap();
                let batches = split_batches(&r.records);
                assert_eq!(batches.len(), 3 * per_sender, "{driver:?} {tp}");
                // Per sender, its batches appear in the order it sent them.
                let mut next_seq: HashMap<u8, i64> = HashMap::new();
                for (i, (base, bytes)) in batches.iter().enumerate() {
                    assert_eq!(*base, i as i64);
                    let sender = bytes[bytes.len() - 2];
                    let seq = sluice_engine::batch::validate(bytes, usize::MAX)
                        .unwrap()
                        .base_timestamp;
                    let expected = next_seq.entry(sender).or_default();
                    assert_eq!(
                        seq, *expected,
                        "{driver:?} {tp}: batch {i} of sender {sender} out of order"
                    );
                    *expected += 1;
                }
                assert_eq!(next_seq.len(), 3, "{driver:?} {tp}: {next_seq:?}");
            }
        });
        Arc::try_unwrap(engine).unwrap().shutdown().unwrap();
    }
}

#[test]
fn concurrent_appends_to_one_partition_share_fsyncs() {
    let sim = SimFs::new();
    let engine = Rc::new(sim_engine(&sim));
    let tp = TopicPartition::new("t", 0);
    let rt = common::runtime(DriverType::Poll).unwrap();
    let appends = 300;
    rt.block_on(async {
        let log_config = every_batch();
        engine.open(tp.clone(), log_config).await.unwrap();
        let syncs_before = sim.stats().syncs;
        let tasks: Vec<_> = (0..appends)
            .map(|_| {
                let (engine, tp) = (engine.clone(), tp.clone());
                compio::runtime::spawn(async move {
                    engine
                        .append(tp, common::batch(1, 10, 0), LEADER)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().durability, Durability::Flushed);
        }
        let syncs = sim.stats().syncs - syncs_before;
        assert!(syncs < appends / 2, "{syncs} fsyncs for {appends} appends");
        let info = engine.shard_for(&tp).info(tp.clone()).await.unwrap();
        assert_eq!(info.flushed_offset, Offset(appends as i64));
    });
    drop(rt);
    Rc::try_unwrap(engine).unwrap().shutdown().unwrap();
}

#[test]
fn flush_ms_is_run_by_the_shard_without_further_appends() {
    let engine = sim_engine(&SimFs::new());
    let tp = TopicPartition::new("t", 0);
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        let log_config = LogConfig {
            flush_ms: Some(20),
            ..LogConfig::default()
        };
        engine.open(tp.clone(), log_config).await.unwrap();
        let info = engine
            .append(tp.clone(), common::batch(2, 10, 0), LEADER)
            .await
            .unwrap();
        assert_eq!(info.durability, Durability::PageCache);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = engine.shard_for(&tp).info(tp.clone()).await.unwrap();
            if info.flushed_offset == Offset(2) {
                break;
            }
            assert!(Instant::now() < deadline, "flush.ms never flushed");
            compio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    drop(rt);
    engine.shutdown().unwrap();
}

/// Polls the partition's flushed offset until it reaches `want`.
async fn wait_flushed(engine: &Engine, tp: &TopicPartition, want: Offset, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = engine.shard_for(tp).info(tp.clone()).await.unwrap();
        if info.flushed_offset >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: flushed offset stuck at {:?}",
            info.flushed_offset
        );
        compio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn flush_ms_set_by_a_config_change_is_run_among_many_idle_partitions() {
    let engine = sim_engine(&SimFs::new());
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        // Idle partitions with unflushed data and no flush limit: the shard
        // must leave them alone, and still find the one that gets a limit.
        for p in 0..50 {
            let tp = TopicPartition::new("idle", p);
            engine.open(tp.clone(), LogConfig::default()).await.unwrap();
            engine
                .append(tp, common::batch(1, 10, 0), LEADER)
                .await
                .unwrap();
        }
        let tp = TopicPartition::new("t", 0);
        engine.open(tp.clone(), LogConfig::default()).await.unwrap();
        engine
            .append(tp.clone(), common::batch(3, 10, 0), LEADER)
            .await
            .unwrap();
        engine
            .shard_for(&tp)
            .with_log(tp.clone(), |log, _| {
                Box::pin(async move {
                    log.set_config(LogConfig {
                        flush_ms: Some(20),
                        ..LogConfig::default()
                    })
                })
            })
            .await
            .unwrap();
        wait_flushed(&engine, &tp, Offset(3), "flush.ms after a config change").await;
        let idle = TopicPartition::new("idle", 0);
        let info = engine.shard_for(&idle).info(idle.clone()).await.unwrap();
        assert_eq!(
            info.flushed_offset,
            Offset(0),
            "an idle partition without a limit was flushed"
        );
    });
    drop(rt);
    engine.shutdown().unwrap();
}

#[test]
fn a_rolled_segments_background_flush_is_reaped_with_no_further_commands() {
    for driver in drivers() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(tmp.path(), driver, 1)).unwrap();
        let tp = TopicPartition::new("t", 0);
        let rt = common::runtime(DriverType::Poll).unwrap();
        let segment_bytes = 4096;
        let batch = common::batch(10, 100, 0);
        // The append that would overflow the first segment rolls it; stop
        // right after it, so that no later command gets to reap its flush.
        let rolling = segment_bytes / batch.len() + 1;
        rt.block_on(async {
            let log_config = LogConfig {
                segment_bytes: segment_bytes as u64,
                ..LogConfig::default()
            };
            engine.open(tp.clone(), log_config).await.unwrap();
            for _ in 0..rolling {
                engine
                    .append(tp.clone(), batch.clone(), LEADER)
                    .await
                    .unwrap();
            }
        });
        // Reaping the flush writes a recovery point at the new segment's
        // base. Watch the file, not the shard: asking the shard anything
        // would give it a turn, and turns reap too.
        let new_base = (rolling as i64 - 1) * 10;
        let path = tmp.path().join(tp.dir_name()).join(RECOVERY_POINT_FILE);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let base = std::fs::read_to_string(&path).ok().and_then(|t| {
                t.split_whitespace()
                    .nth(2)
                    .and_then(|f| f.parse::<i64>().ok())
            });
            if base == Some(new_base) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{driver:?}: the recovery point stayed at segment {base:?}, not {new_base}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(rt);
        engine.shutdown().unwrap();
    }
}

/// One link of a chain of `spawn` commands: each sends the next to the same
/// shard before it returns, so the shard's queue is never empty until the
/// chain ends. Records the first link that sees `ran` set.
fn chain_link(
    shard: ShardHandle,
    step: usize,
    steps: usize,
    ran: Arc<AtomicBool>,
    seen_at: Arc<AtomicUsize>,
    done: std::sync::mpsc::Sender<()>,
) -> impl FnOnce() + Send + 'static {
    move || {
        if ran.load(Ordering::SeqCst) {
            seen_at.fetch_min(step, Ordering::SeqCst);
        }
        if step == steps {
            done.send(()).unwrap();
            return;
        }
        let next = chain_link(shard.clone(), step + 1, steps, ran, seen_at, done);
        // The queue has room, so the send completes on its first poll; no
        // runtime is needed (and this shard's must not be waited on here).
        let mut send = std::pin::pin!(shard.spawn(next));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            send.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        ));
    }
}

#[test]
fn tasks_on_a_shard_run_while_its_queue_never_empties() {
    for driver in drivers() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(tmp.path(), driver, 1)).unwrap();
        let shard = engine.shards()[0].clone();
        let steps = 1000;
        let ran = Arc::new(AtomicBool::new(false));
        let seen_at = Arc::new(AtomicUsize::new(usize::MAX));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let first = chain_link(
            shard.clone(),
            0,
            steps,
            ran.clone(),
            seen_at.clone(),
            done_tx,
        );
        let rt = common::runtime(DriverType::Poll).unwrap();
        rt.block_on(async {
            let ran = ran.clone();
            shard
                .spawn(move || {
                    // A task of the shard's own (a broker connection, say),
                    // ready to run at once, then the chain.
                    compio::runtime::spawn(async move { ran.store(true, Ordering::SeqCst) })
                        .detach();
                    first();
                })
                .await
                .unwrap();
        });
        done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let seen = seen_at.load(Ordering::SeqCst);
        assert!(
            seen <= 2,
            "{driver:?}: the shard's task first ran at link {seen} of {steps}"
        );
        drop(rt);
        engine.shutdown().unwrap();
    }
}

#[test]
fn tasks_spawned_on_a_shard_run_on_its_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(tmp.path(), IoDriver::Auto, 2)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        for shard in engine.shards() {
            let (seen, id) = (seen.clone(), shard.id());
            let (tx, rx) = futures_channel::oneshot::channel();
            shard
                .spawn(move || {
                    compio::runtime::spawn(async move {
                        let name = std::thread::current().name().map(str::to_owned);
                        seen.lock().unwrap().push((id, name));
                        tx.send(()).unwrap();
                    })
                    .detach();
                })
                .await
                .unwrap();
            rx.await.unwrap();
        }
    });
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (0, Some("sluice-shard-0".to_string())),
            (1, Some("sluice-shard-1".to_string()))
        ]
    );
}

#[test]
fn unknown_and_duplicate_partitions_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(tmp.path(), IoDriver::Auto, 2)).unwrap();
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        let tp = TopicPartition::new("t", 0);
        let err = engine
            .append(tp.clone(), common::batch(1, 1, 0), LEADER)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnknownPartition(_)), "{err}");
        let err = engine
            .read(tp.clone(), Offset(0), 10, None, true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnknownPartition(_)), "{err}");
        engine.open(tp.clone(), LogConfig::default()).await.unwrap();
        let err = engine
            .open(tp.clone(), LogConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PartitionExists(_)), "{err}");
        let bad = LogConfig {
            segment_bytes: 1,
            ..LogConfig::default()
        };
        let err = engine
            .open(TopicPartition::new("t", 1), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    });
}

#[test]
fn partitions_spread_over_shards_by_a_stable_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(tmp.path(), IoDriver::Poll, 2)).unwrap();
    let mut counts = [0usize; 2];
    for p in 0..1000 {
        let tp = TopicPartition::new("spread", p);
        let shard = engine.shard_for(&tp).id();
        assert_eq!(engine.shard_for(&tp).id(), shard);
        counts[shard] += 1;
    }
    assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    // The same name maps to the same shard in another engine (and process).
    let other = Engine::start(config(tmp.path(), IoDriver::Poll, 2)).unwrap();
    let tp = TopicPartition::new("spread", 7);
    assert_eq!(engine.shard_for(&tp).id(), other.shard_for(&tp).id());
}

#[test]
fn shutdown_flushes_so_the_next_start_recovers_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(tmp.path(), IoDriver::Auto, 2)).unwrap();
    let tp = TopicPartition::new("kept", 3);
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        engine.open(tp.clone(), LogConfig::default()).await.unwrap();
        for _ in 0..10 {
            engine
                .append(tp.clone(), common::batch(3, 50, 0), LEADER)
                .await
                .unwrap();
        }
    });
    assert_eq!(engine.existing_partitions().unwrap(), vec![tp.clone()]);
    engine.shutdown().unwrap();
    rt.block_on(async {
        let (log, report) = Log::open(Fs::Os, tmp.path().join("kept-3"), LogConfig::default(), 0)
            .await
            .unwrap();
        assert_eq!(report.bytes_scanned, 0, "{report:?}");
        assert_eq!(log.log_end_offset(), Offset(30));
        assert_eq!(log.flushed_offset(), Offset(30));
    });
}

#[test]
fn thousands_of_appends_in_flight_from_one_client_all_complete() {
    // compio spins when it wakes a task on a runtime whose remote-wake
    // queue is full; with its default queue of 64 this workload livelocked
    // the shard and the client. client_runtime() sizes the queue.
    let tmp = tempfile::tempdir().unwrap();
    let engine = Rc::new(Engine::start(config(tmp.path(), IoDriver::Auto, 1)).unwrap());
    let rt = sluice_engine::shard::client_runtime().unwrap();
    let partitions: Vec<TopicPartition> =
        (0..200).map(|p| TopicPartition::new("many", p)).collect();
    rt.block_on(async {
        for tp in &partitions {
            engine.open(tp.clone(), LogConfig::default()).await.unwrap();
        }
        let tasks: Vec<_> = (0..4000)
            .map(|i| {
                let (engine, tp) = (engine.clone(), partitions[i % partitions.len()].clone());
                compio::runtime::spawn(async move {
                    engine
                        .append(tp, common::batch(1, 10, 0), LEADER)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for tp in &partitions {
            let info = engine.shard_for(tp).info(tp.clone()).await.unwrap();
            assert_eq!(info.log_end_offset, Offset(20));
        }
    });
    drop(rt);
    Rc::try_unwrap(engine).unwrap().shutdown().unwrap();
}

/// Polls `cond` every millisecond until it holds, failing after 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        compio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn a_partition_stalled_in_fsync_holds_up_no_other_partition_on_its_shard() {
    let sim = SimFs::new();
    let engine = Rc::new(sim_engine(&sim));
    let (slow, fast) = (
        TopicPartition::new("slow", 0),
        TopicPartition::new("fast", 0),
    );
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        let every_batch = every_batch();
        engine
            .open(slow.clone(), every_batch.clone())
            .await
            .unwrap();
        engine.open(fast.clone(), every_batch).await.unwrap();
        let stall = sim.stall_syncs_under(std::path::Path::new("/data/slow-0"));
        let slow_done = Rc::new(std::cell::Cell::new(false));
        let slow_append = {
            let (engine, slow, done) = (engine.clone(), slow.clone(), slow_done.clone());
            compio::runtime::spawn(async move {
                let info = engine.append(slow, common::batch(1, 10, 0), LEADER).await;
                done.set(true);
                info
            })
        };
        eventually("the slow partition's fsync to be held", || {
            stall.syncs_held() > 0
        })
        .await;
        // The other partition on the same shard appends (fsync included)
        // and reads, through the channel and on the shard itself.
        for _ in 0..5 {
            let info = engine
                .append(fast.clone(), common::batch(1, 10, 0), LEADER)
                .await
                .unwrap();
            assert_eq!(info.durability, Durability::Flushed);
        }
        let read = engine
            .read(fast.clone(), Offset(0), 1 << 20, None, true)
            .await
            .unwrap();
        assert_eq!(read.next_offset, Offset(5));
        let on_shard = {
            let fast = fast.clone();
            engine.shard_for(&fast).run(move |local| {
                Box::pin(async move {
                    let info = local.append(&fast, common::batch(2, 10, 0), LEADER).await?;
                    let read = local.read(&fast, Offset(0), 1 << 20, None, true).await?;
                    Ok::<_, Error>((info.base_offset, read.next_offset))
                })
            })
        };
        assert_eq!(on_shard.await.unwrap().unwrap(), (Offset(5), Offset(7)));
        assert!(
            !slow_done.get(),
            "the slow partition's append finished while its fsync was held"
        );
        drop(stall);
        let info = slow_append.await.unwrap().unwrap();
        assert_eq!(info.durability, Durability::Flushed);
    });
    drop(rt);
    Rc::try_unwrap(engine).unwrap().shutdown().unwrap();
}

#[test]
fn appends_are_written_while_the_fsync_before_them_runs_and_acknowledged_after_their_own() {
    // With an fsync per batch, the fsync of one group runs beside the write
    // of the next: the appends that arrive while it is held are written
    // (the log end moves, and wakes waiting fetches) but neither
    // acknowledged nor counted by the published log end until an fsync
    // covers them; replies leave in order; one fsync is in flight at a time
    // and the next covers everything written meanwhile.
    let sim = SimFs::new();
    let engine = Rc::new(sim_engine(&sim));
    let tp = TopicPartition::new("pipelined", 0);
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        let every_batch = every_batch();
        engine.open(tp.clone(), every_batch).await.unwrap();
        let stall = sim.stall_syncs_under(std::path::Path::new("/data/pipelined-0"));
        let answered: Rc<std::cell::RefCell<Vec<i64>>> = Rc::default();
        let append = |records: usize| {
            let (engine, tp, answered) = (engine.clone(), tp.clone(), answered.clone());
            compio::runtime::spawn(async move {
                let info = engine
                    .append(tp, common::batch(records, 10, 0), LEADER)
                    .await;
                if let Ok(info) = &info {
                    answered.borrow_mut().push(info.base_offset.0);
                }
                info
            })
        };
        let first = append(1);
        eventually("the first group's fsync to be held", || {
            stall.syncs_held() == 1
        })
        .await;
        let later: Vec<_> = (0..3).map(|_| append(2)).collect();
        let shard = engine.shard_for(&tp).clone();
        let mut written = Offset(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while written < Offset(7) {
            assert!(Instant::now() < deadline, "later appends were not written");
            written = shard.info(tp.clone()).await.unwrap().log_end_offset;
        }
        assert!(
            answered.borrow().is_empty(),
            "acknowledged before its fsync"
        );
        assert_eq!(
            stall.syncs_held(),
            1,
            "a second fsync began beside the first"
        );
        let visible = {
            let tp = tp.clone();
            shard
                .run(move |local| Box::pin(async move { local.log_end_offset(&tp) }))
                .await
                .unwrap()
        };
        assert_eq!(visible, Some(Offset(0)), "unflushed appends were visible");
        // A follower's fetch waiting for appends is woken by the write: it
        // copies what the leader is still flushing.
        let woken = {
            let tp = tp.clone();
            shard
                .run(move |local| {
                    Box::pin(async move { local.wait_for_append(&tp, Offset(0)).await })
                })
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(woken, Offset(7));
        drop(stall);
        assert_eq!(
            first.await.unwrap().unwrap().durability,
            Durability::Flushed
        );
        for append in later {
            assert_eq!(
                append.await.unwrap().unwrap().durability,
                Durability::Flushed
            );
        }
        assert_eq!(
            *answered.borrow(),
            vec![0, 1, 3, 5],
            "replies out of log order"
        );
        let visible = {
            let tp = tp.clone();
            shard
                .run(move |local| Box::pin(async move { local.log_end_offset(&tp) }))
                .await
                .unwrap()
        };
        assert_eq!(visible, Some(Offset(7)));
    });
    drop(rt);
    Rc::try_unwrap(engine).unwrap().shutdown().unwrap();
}

#[test]
fn a_fetch_waiting_for_an_append_does_not_split_group_commit() {
    // Waiters are registered beside the queue, not as a command that runs
    // the queued appends early: the appends on either side of a wait still
    // share one write and one fsync.
    let sim = SimFs::new();
    let engine = sim_engine(&sim);
    let tp = TopicPartition::new("t", 0);
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        let log_config = every_batch();
        engine.open(tp.clone(), log_config).await.unwrap();
        let shard = engine.shard_for(&tp).clone();
        let tp2 = tp.clone();
        let syncs_before = sim.stats().syncs;
        let (first, woken) = shard
            .run(move |local| {
                Box::pin(async move {
                    let a = local.append(&tp2, common::batch(1, 10, 0), LEADER);
                    let wait = local.wait_for_append(&tp2, Offset(0));
                    let b = local.append(&tp2, common::batch(1, 10, 0), LEADER);
                    let (a, woken, b) = futures_util::join!(a, wait, b);
                    assert_eq!(b.unwrap().base_offset, Offset(1));
                    (a.unwrap().base_offset, woken.unwrap())
                })
            })
            .await
            .unwrap();
        assert_eq!((first, woken), (Offset(0), Offset(2)));
        assert_eq!(sim.stats().syncs - syncs_before, 1);
    });
    drop(rt);
    engine.shutdown().unwrap();
}

#[test]
fn a_shards_queue_is_bounded_in_bytes_while_a_partition_stalls() {
    let sim = SimFs::new();
    let queue_bytes_max = 64 * 1024;
    let engine = Rc::new(
        Engine::start(EngineConfig {
            data_dir: "/data".into(),
            shards: 1,
            fs: Fs::Sim(sim.clone()),
            io_driver: IoDriver::Poll,
            queue_bytes_max,
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let tp = TopicPartition::new("slow", 0);
    let rt = common::runtime(DriverType::Poll).unwrap();
    rt.block_on(async {
        engine.open(tp.clone(), LogConfig::default()).await.unwrap();
        engine
            .append(tp.clone(), common::batch(1, 1024, 0), LEADER)
            .await
            .unwrap();
        let stall = sim.stall_syncs_under(std::path::Path::new("/data/slow-0"));
        let shard = engine.shard_for(&tp).clone();
        // An explicit flush holds the partition's worker in the stalled
        // fsync (a flush the policy asks for would run beside the appends).
        let flush = {
            let shard = shard.clone();
            let tp = tp.clone();
            compio::runtime::spawn(async move { shard.flush(tp).await })
        };
        eventually("the flush to reach the stalled disk", || {
            stall.syncs_held() > 0
        })
        .await;
        // 16 appends of ~16 KiB: four fit in the queue's 64 KiB.
        let appends: Vec<_> = (0..16)
            .map(|_| {
                let (engine, tp) = (engine.clone(), tp.clone());
                compio::runtime::spawn(async move {
                    engine
                        .append(tp, common::batch(1, 16 * 1024, 0), LEADER)
                        .await
                })
            })
            .collect();
        eventually("senders to wait for room in the queue", || {
            shard.queued_bytes().1 > 0
        })
        .await;
        let (queued, waiting) = shard.queued_bytes();
        assert!(queued <= queue_bytes_max, "{queued} bytes queued");
        assert!(waiting >= 16 - 5, "{waiting} senders waiting");
        drop(stall);
        flush.await.unwrap().unwrap();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        assert_eq!(shard.queued_bytes(), (0, 0));
    });
    drop(rt);
    Rc::try_unwrap(engine).unwrap().shutdown().unwrap();
}
