//! `sluice-bench engine`: append throughput through the engine's public API
//! against a raw sequential write loop on the same directory, in one run.
//!
//! The engine phase starts the shard threads, opens the partitions and
//! appends pre-built v2 record batches with `--inflight` appends outstanding
//! per partition, timing each append (hdrhistogram). The appending tasks run
//! on one client thread, or with `--clients shards` on the shard threads as
//! the broker's connections do. The raw phase writes blocks of the same size
//! to one file with `pwrite`, with `fdatasync` at the same cadence as the
//! flush policy. With several partitions the run also times one partition
//! carrying the same bytes, and the raw loop spread over as many files. Every
//! phase starts from a clean page cache state (`sync` first) and none counts
//! set-up or shutdown.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_engine::{AppendMode, Engine, EngineConfig, Epoch, IoDriver, LogConfig, TopicPartition};

use crate::size::parse_size;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    None,
    EveryBatch,
    IntervalMs(u64),
}

fn parse_flush(text: &str) -> Result<FlushMode, String> {
    match text {
        "none" => Ok(FlushMode::None),
        "every-batch" => Ok(FlushMode::EveryBatch),
        other => match other.strip_prefix("ms:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(FlushMode::IntervalMs(ms)),
            _ => Err(format!(
                "--flush must be none, every-batch or ms:N with N > 0, got {other:?}"
            )),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clients {
    Thread,
    Shards,
    ShardsLocal,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write in (created; the benchmark's files are removed
    /// afterwards).
    #[arg(long)]
    dir: PathBuf,
    /// Size of one record's value.
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    record_size: u64,
    /// Size of one record batch (one append).
    #[arg(long, default_value = "65536", value_parser = parse_size)]
    batch_size: u64,
    /// Bytes to append in all.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    total_bytes: u64,
    /// Partitions, spread over the shards.
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// none | every-batch (flush.messages=1) | ms:N (flush.ms=N).
    #[arg(long, default_value = "none", value_parser = parse_flush)]
    flush: FlushMode,
    /// Appends outstanding per partition, as a pipelining producer keeps
    /// several requests in flight (librdkafka allows 5 per connection).
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Appends outstanding in all, whatever the partition count.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// Shard threads (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// auto | io_uring | poll.
    #[arg(long, default_value = "auto")]
    io_driver: String,
    /// Send page-cache writes through the ring too (see `Fs::OsRingWrites`)
    /// instead of writing inline on the shard thread.
    #[arg(long)]
    ring_writes: bool,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// segment.bytes for the engine's logs.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    segment_bytes: u64,
    /// Also measure the resident memory of this many open, idle partitions
    /// (each holding one small batch); 0 skips it.
    #[arg(long, default_value_t = 0)]
    idle_partitions: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Where the appending tasks run: `thread` (one client thread outside
    /// the shards), `shards` (on the shard threads, as the broker's
    /// connections do, each appending to every partition) or
    /// `shards-local` (on the shard threads, each to its own partitions).
    #[arg(long, value_enum, default_value = "thread")]
    clients: Clients,
}

/// Builds one v2 batch of records with `record_size`-byte values, about
/// `batch_size` bytes long in all, with kafka-protocol's encoder.
fn build_batch(record_size: usize, batch_size: usize) -> Result<Vec<u8>, String> {
    // A record costs its value plus about a dozen bytes of varints.
    let per_record = record_size + 12;
    let count = (batch_size.saturating_sub(61) / per_record).max(1);
    let value = Bytes::from(vec![b'x'; record_size]);
    let now = sluice_engine::shard::now_ms() as i64;
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol keeps records in one batch only while offset minus
            // sequence stays constant; this keeps the base sequence at -1 (none).
            sequence: i as i32 - 1,
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("encoding a batch: {e}"))?;
    Ok(buf.to_vec())
}

struct Outcome {
    seconds: f64,
    bytes: u64,
    records: u64,
    latency: Option<Histogram<u64>>,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.partitions == 0 || args.inflight == 0 {
        return Err("--partitions and --inflight must be positive".into());
    }
    let batch = build_batch(args.record_size as usize, args.batch_size as usize)?;
    let header = sluice_engine::batch::validate(&batch, usize::MAX)
        .map_err(|e| format!("built an invalid batch: {e}"))?;
    let records_per_batch = header.record_count() as u64;
    let batches = (args.total_bytes / batch.len() as u64).max(1);
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("creating {:?}: {e}", args.dir))?;

    let (engine, backend) = run_engine(
        &args,
        args.partitions,
        args.segment_bytes,
        &batch,
        batches,
        records_per_batch,
    )?;
    // With several partitions, also one partition carrying the same bytes,
    // its segments as large as the P partitions' together so that it rolls
    // (and fsyncs at the roll) as often as each of them does.
    let single = if args.partitions > 1 {
        let segment_bytes = args
            .segment_bytes
            .saturating_mul(args.partitions as u64)
            .min(sluice_engine::config::MAX_SEGMENT_BYTES);
        Some(run_engine(&args, 1, segment_bytes, &batch, batches, records_per_batch)?.0)
    } else {
        None
    };
    let raw = run_raw(
        &args.dir,
        &batch,
        batches,
        args.flush,
        args.segment_bytes,
        1,
    )?;
    // With several partitions, also the same loop spread over as many
    // files: what the filesystem itself gives that access pattern.
    let raw_spread = if args.partitions > 1 {
        Some(run_raw(
            &args.dir,
            &batch,
            batches,
            args.flush,
            args.segment_bytes,
            args.partitions,
        )?)
    } else {
        None
    };

    let idle = if args.idle_partitions > 0 {
        Some(measure_idle_partitions(&args)?)
    } else {
        None
    };

    let mb = |o: &Outcome| o.bytes as f64 / o.seconds / 1e6;
    let engine_mb_s = mb(&engine);
    let raw_mb_s = mb(&raw);
    let ratio = engine_mb_s / raw_mb_s;
    let hist = engine.latency.as_ref();
    let pct = |q: f64| hist.map_or(0, |h| h.value_at_quantile(q));
    let flush = match args.flush {
        FlushMode::None => "none".to_string(),
        FlushMode::EveryBatch => "every-batch".to_string(),
        FlushMode::IntervalMs(ms) => format!("ms:{ms}"),
    };
    let clients = clap::ValueEnum::to_possible_value(&args.clients)
        .map_or_else(String::new, |v| v.get_name().to_string());
    let report = serde_json::json!({
        "workload": {
            "record_size": args.record_size,
            "batch_bytes": batch.len(),
            "records_per_batch": records_per_batch,
            "batches": batches,
            "total_bytes": engine.bytes,
            "partitions": args.partitions,
            "inflight_per_partition": args.inflight,
            "max_inflight": args.max_inflight,
            "flush": flush,
        },
        "backend": backend,
        "engine_mb_s": engine_mb_s,
        "raw_mb_s": raw_mb_s,
        "ratio": ratio,
        "records_per_s": engine.records as f64 / engine.seconds,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "engine_seconds": engine.seconds,
        "raw_seconds": raw.seconds,
    });
    let mut report = report;
    if let Some(spread) = &raw_spread {
        report["raw_spread_mb_s"] = mb(spread).into();
        report["ratio_spread"] = (engine_mb_s / mb(spread)).into();
    }
    if let Some(single) = &single {
        report["single_mb_s"] = mb(single).into();
        report["ratio_single"] = (engine_mb_s / mb(single)).into();
    }
    report["clients"] = clients.clone().into();
    if let Some((count, per_partition)) = idle {
        report["idle_partitions"] = count.into();
        report["rss_per_idle_partition_bytes"] = per_partition.into();
    }
    if args.json {
        println!("{report}");
    } else {
        println!(
            "workload: {} batches of {} B ({} records of {} B), {} partition(s), flush {flush}, backend {backend}, clients on {clients}",
            batches,
            batch.len(),
            records_per_batch,
            args.record_size,
            args.partitions
        );
        println!(
            "engine: {engine_mb_s:9.1} MB/s  {:>12.0} records/s  append latency p50 {} us  p99 {} us  p99.9 {} us",
            engine.records as f64 / engine.seconds,
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
        println!("raw:    {raw_mb_s:9.1} MB/s  (pwrite loop, same block size and fsync cadence)");
        println!("ratio:  {ratio:.3} (engine / raw)");
        if let Some(single) = &single {
            println!(
                "engine, 1 partition: {:9.1} MB/s  ratio {:.3} ({} partitions / 1, same bytes and rolls)",
                mb(single),
                engine_mb_s / mb(single),
                args.partitions
            );
        }
        if let Some(spread) = &raw_spread {
            println!(
                "raw over {} files: {:9.1} MB/s  ratio {:.3} (engine / raw over as many files as partitions)",
                args.partitions,
                mb(spread),
                engine_mb_s / mb(spread)
            );
        }
        if let Some((count, per_partition)) = idle {
            println!(
                "memory: {count} idle partitions cost {per_partition} B resident each ({:.1} KiB)",
                per_partition as f64 / 1024.0
            );
        }
    }
    Ok(())
}

fn run_engine(
    args: &Args,
    partition_count: usize,
    segment_bytes: u64,
    batch: &[u8],
    batches: u64,
    records_per_batch: u64,
) -> Result<(Outcome, String), String> {
    let data_dir = args.dir.join("sluice-bench-engine");
    remove_dir(&data_dir)?;
    let log = LogConfig {
        segment_bytes,
        flush_messages: (args.flush == FlushMode::EveryBatch).then_some(1),
        flush_ms: match args.flush {
            FlushMode::IntervalMs(ms) => Some(ms),
            _ => None,
        },
        retention_ms: None,
        ..LogConfig::default()
    };
    let mut config = EngineConfig {
        data_dir: data_dir.clone(),
        io_driver: args.io_driver.parse().map_err(|e| format!("{e}"))?,
        pin_cores: !args.no_pin,
        fs: if args.ring_writes {
            sluice_engine::io::Fs::OsRingWrites
        } else {
            sluice_engine::io::Fs::Os
        },
        ..EngineConfig::default()
    };
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if config.io_driver == IoDriver::Auto && std::env::var_os("SLUICE_IO_DRIVER").is_some() {
        config.io_driver = std::env::var("SLUICE_IO_DRIVER")
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("SLUICE_IO_DRIVER: {e}"))?;
    }
    let engine = Rc::new(Engine::start(config).map_err(|e| format!("starting the engine: {e}"))?);
    let mut backend = engine.backend().to_string();
    if args.ring_writes {
        backend.push_str("+ring-writes");
    }
    let partitions: Vec<TopicPartition> = (0..partition_count)
        .map(|i| TopicPartition::new("bench", i as i32))
        .collect();

    // Each append copies the batch from one template, as a broker copies
    // a request out of its socket buffer; the raw loop writes the template
    // itself. Pre-building every append instead would hand the engine cold
    // buffers from DRAM while the raw loop writes a cache-hot one.
    let template = Rc::new(batch.to_vec());
    let runtime =
        sluice_engine::shard::client_runtime().map_err(|e| format!("driver runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        let opening = Instant::now();
        for tp in &partitions {
            engine
                .open(tp.clone(), log.clone())
                .await
                .map_err(|e| format!("opening {tp}: {e}"))?;
        }
        sync_all();
        eprintln!(
            "opened {} partition(s) in {:.1} s; appending",
            partitions.len(),
            opening.elapsed().as_secs_f64()
        );
        if args.clients != Clients::Thread {
            let local = args.clients == Clients::ShardsLocal;
            let workers = (args.inflight * partitions.len()).min(args.max_inflight.max(1));
            let (seconds, latency) =
                append_from_shards(&engine, &partitions, batch, batches, workers, local).await?;
            return Ok(Outcome {
                seconds,
                bytes: batches * batch.len() as u64,
                records: batches * records_per_batch,
                latency: Some(latency),
            });
        }
        let histogram = Rc::new(RefCell::new(new_histogram()?));
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Append i goes to partition i mod P. The number of appends in
        // flight is bounded in all, not only per partition: 1000 partitions
        // with 8 each would keep 500 MiB of batches queued, and the test
        // would measure DRAM rather than the engine.
        let next = Rc::new(std::cell::Cell::new(0u64));
        let partitions = Rc::new(partitions.clone());
        let workers = (args.inflight * partitions.len()).min(args.max_inflight.max(1));
        for _ in 0..workers {
            let (engine, next, histogram, partitions, template) = (
                engine.clone(),
                next.clone(),
                histogram.clone(),
                partitions.clone(),
                template.clone(),
            );
            tasks.push(compio::runtime::spawn(async move {
                loop {
                    let i = next.get();
                    if i == batches {
                        return Ok::<(), String>(());
                    }
                    next.set(i + 1);
                    let tp = &partitions[(i % partitions.len() as u64) as usize];
                    let records = template.to_vec();
                    let sent = Instant::now();
                    engine
                        .append(tp.clone(), records, AppendMode::Leader { epoch: Epoch(0) })
                        .await
                        .map_err(|e| format!("append to {tp}: {e}"))?;
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    histogram.borrow_mut().saturating_record(micros);
                }
            }));
        }
        for task in tasks {
            task.await
                .map_err(|_| "an append task panicked".to_string())??;
        }
        let seconds = start.elapsed().as_secs_f64();
        let latency = histogram.borrow().clone();
        Ok::<_, String>(Outcome {
            seconds,
            bytes: batches * batch.len() as u64,
            records: batches * records_per_batch,
            latency: Some(latency),
        })
    })?;
    drop(runtime);
    match Rc::try_unwrap(engine) {
        Ok(engine) => engine
            .shutdown()
            .map_err(|e| format!("engine shutdown: {e}"))?,
        Err(_) => return Err("engine still referenced after the run".into()),
    }
    remove_dir(&data_dir)?;
    Ok((outcome, backend))
}

/// Append latencies in microseconds, up to a minute.
fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

/// Runs the appending tasks on the shard threads, `workers` in all, split
/// evenly over the shards. Each task copies the batch from its shard's own
/// template and appends it to partition i mod P (every partition), or with
/// `local` only to partitions its own shard owns. Returns the elapsed time
/// and the merged latency histogram.
async fn append_from_shards(
    engine: &Engine,
    partitions: &[TopicPartition],
    batch: &[u8],
    batches: u64,
    workers: usize,
    local: bool,
) -> Result<(f64, Histogram<u64>), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let shards = engine.shards().to_vec();
    let per_shard = workers.div_ceil(shards.len()).max(1);
    // Each shard's share of the partitions (all of them unless `local`) and
    // of the appends.
    let mut plans = Vec::new();
    for (k, shard) in shards.iter().enumerate() {
        let routes: Vec<(TopicPartition, sluice_engine::shard::ShardHandle)> = partitions
            .iter()
            .map(|tp| (tp.clone(), engine.shard_for(tp).clone()))
            .filter(|(_, owner)| !local || owner.id() == shard.id())
            .collect();
        let share = if local {
            // Append i goes to partition i mod P, as in the other modes.
            let p = partitions.len() as u64;
            partitions
                .iter()
                .enumerate()
                .filter(|(_, tp)| engine.shard_for(tp).id() == shard.id())
                .map(|(j, _)| batches / p + u64::from((j as u64) < batches % p))
                .sum()
        } else {
            batches / shards.len() as u64 + u64::from((k as u64) < batches % shards.len() as u64)
        };
        plans.push((shard.clone(), routes, share));
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<Histogram<u64>, String>>();
    let start = Instant::now();
    let mut tasks = 0;
    for (shard, routes, share) in plans {
        if routes.is_empty() || share == 0 {
            continue;
        }
        let routes = Arc::new(routes);
        let next = Arc::new(AtomicU64::new(0));
        let template = Arc::new(batch.to_vec());
        let done_tx = done_tx.clone();
        tasks += per_shard;
        shard
            .spawn(move || {
                for _ in 0..per_shard {
                    let (routes, next, template, done_tx) = (
                        routes.clone(),
                        next.clone(),
                        template.clone(),
                        done_tx.clone(),
                    );
                    compio::runtime::spawn(async move {
                        let result = async {
                            let mut histogram = new_histogram()?;
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                if i >= share {
                                    return Ok(histogram);
                                }
                                let (tp, owner) = &routes[(i % routes.len() as u64) as usize];
                                let records = template.to_vec();
                                let sent = Instant::now();
                                owner
                                    .append(
                                        tp.clone(),
                                        records,
                                        AppendMode::Leader { epoch: Epoch(0) },
                                    )
                                    .await
                                    .map_err(|e| format!("append to {tp}: {e}"))?;
                                histogram
                                    .saturating_record(sent.elapsed().as_micros().max(1) as u64);
                            }
                        }
                        .await;
                        drop(done_tx.send(result));
                    })
                    .detach();
                }
            })
            .await
            .map_err(|e| format!("starting tasks on shard {}: {e}", shard.id()))?;
    }
    drop(done_tx);
    let mut latency = new_histogram()?;
    for _ in 0..tasks {
        let histogram = done_rx
            .recv()
            .map_err(|_| "an append task on a shard stopped without a result".to_string())??;
        latency
            .add(&histogram)
            .map_err(|e| format!("merging histograms: {e}"))?;
    }
    Ok((start.elapsed().as_secs_f64(), latency))
}

/// The baseline: `pwrite` the same block sequentially, with `fdatasync` at
/// the engine's cadence: after every write for `every-batch`, every N ms for
/// `ms:N`, and in every mode each time `segment.bytes` is crossed, since
/// the engine flushes a segment when it rolls.
fn run_raw(
    dir: &Path,
    batch: &[u8],
    batches: u64,
    flush: FlushMode,
    segment_bytes: u64,
    files: usize,
) -> Result<Outcome, String> {
    // Write i goes to file i mod `files`, as the engine's append i goes to
    // partition i mod P; each file rolls (fsyncs) at its own
    // `segment.bytes`, and `every-batch` fsyncs the file just written.
    let raw_dir = dir.join("sluice-bench-raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| format!("creating {raw_dir:?}: {e}"))?;
    let mut open = Vec::with_capacity(files);
    for i in 0..files.max(1) {
        let path = raw_dir.join(format!("{i}.dat"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("creating {path:?}: {e}"))?;
        open.push((file, 0u64));
    }
    sync_all();
    let start = Instant::now();
    let mut last_sync = start;
    let mut written = 0u64;
    let roll = segment_bytes.max(1);
    for i in 0..batches {
        let (file, pos) = &mut open[(i % files.max(1) as u64) as usize];
        file.write_all_at(batch, *pos)
            .map_err(|e| format!("raw write: {e}"))?;
        let rolled = (*pos + batch.len() as u64) / roll > *pos / roll;
        *pos += batch.len() as u64;
        written += batch.len() as u64;
        if rolled || flush == FlushMode::EveryBatch {
            file.sync_data()
                .map_err(|e| format!("raw fdatasync: {e}"))?;
        }
        if let FlushMode::IntervalMs(ms) = flush {
            if last_sync.elapsed() >= Duration::from_millis(ms) {
                for (file, _) in &open {
                    file.sync_data()
                        .map_err(|e| format!("raw fdatasync: {e}"))?;
                }
                last_sync = Instant::now();
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(open);
    remove_dir(&raw_dir)?;
    std::io::stdout().flush().ok();
    Ok(Outcome {
        seconds,
        bytes: written,
        records: 0,
        latency: None,
    })
}

/// Writes back all dirty pages so each phase starts from the same state.
fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {dir:?}: {e}")),
    }
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> Result<u64, String> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|e| format!("statm: {e}"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or("statm has no resident field")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(1) as u64)
}

/// Opens `--idle-partitions` partitions with one small batch each and
/// reports the growth in resident memory per partition.
fn measure_idle_partitions(args: &Args) -> Result<(usize, u64), String> {
    // One open descriptor per partition (its active segment) plus slack.
    raise_fd_limit(args.idle_partitions as u64 + 1024)?;
    let data_dir = args.dir.join("sluice-bench-idle");
    remove_dir(&data_dir)?;
    let engine = Engine::start(EngineConfig {
        data_dir: data_dir.clone(),
        ..EngineConfig::default()
    })
    .map_err(|e| format!("starting the engine: {e}"))?;
    let runtime =
        sluice_engine::shard::client_runtime().map_err(|e| format!("driver runtime: {e}"))?;
    let small = build_batch(100, 100)?;
    let before = rss_bytes()?;
    runtime.block_on(async {
        for p in 0..args.idle_partitions {
            let tp = TopicPartition::new("idle", p as i32);
            engine
                .open(tp.clone(), LogConfig::default())
                .await
                .map_err(|e| format!("opening {tp}: {e}"))?;
            engine
                .append(tp, small.clone(), AppendMode::Leader { epoch: Epoch(0) })
                .await
                .map_err(|e| format!("append: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    let after = rss_bytes()?;
    drop(runtime);
    engine
        .shutdown()
        .map_err(|e| format!("engine shutdown: {e}"))?;
    remove_dir(&data_dir)?;
    let per_partition = after.saturating_sub(before) / args.idle_partitions as u64;
    Ok((args.idle_partitions, per_partition))
}

fn raise_fd_limit(wanted: u64) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    if limit.rlim_cur < wanted {
        return Err(format!(
            "{wanted} file descriptors needed, the hard limit is {}",
            limit.rlim_max
        ));
    }
    Ok(())
}
