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

/// The benchmark's appends: a leader's, with no followers to keep a tail
/// for (as the broker appends to an unreplicated partition).
const LEADER: AppendMode = AppendMode::Leader {
    epoch: Epoch(0),
    keep: false,
};

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
    /// Rounds of engine then raw, each phase after the same settling; the
    /// report is the median ratio and its spread.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Files the raw loop spreads its writes over (round robin).
    #[arg(long, default_value_t = 1)]
    raw_files: usize,
    /// The earlier comparison: one engine phase and one raw phase (plus, with
    /// several partitions, one partition carrying the same bytes and the raw
    /// loop over as many files), each run once. Its ratio depends on the
    /// page cache state the previous phase left; prefer the rounds.
    #[arg(long)]
    single_shot: bool,
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

pub(crate) struct Outcome {
    pub(crate) seconds: f64,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    pub(crate) latency: Option<Histogram<u64>>,
    /// fsyncs the phase issued itself (known exactly for the raw loop only).
    pub(crate) fsyncs: Option<u64>,
    /// Cache flushes the data directory's block device completed while the
    /// phase was timed (one per fdatasync on ext4 over a write-back disk):
    /// the same measure for both sides, so the engine's group commit shows.
    pub(crate) device_flushes: Option<u64>,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.partitions == 0 || args.inflight == 0 || args.rounds == 0 || args.raw_files == 0 {
        return Err("--partitions, --inflight, --rounds and --raw-files must be positive".into());
    }
    let batch = build_batch(args.record_size as usize, args.batch_size as usize)?;
    let header = sluice_engine::batch::validate(&batch, usize::MAX)
        .map_err(|e| format!("built an invalid batch: {e}"))?;
    let records_per_batch = header.record_count() as u64;
    let batches = (args.total_bytes / batch.len() as u64).max(1);
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("creating {:?}: {e}", args.dir))?;
    if args.single_shot {
        run_single_shot(&args, &batch, batches, records_per_batch)
    } else {
        run_rounds(&args, &batch, batches, records_per_batch)
    }
}

/// One round of the interleaved comparison.
struct Round {
    engine: Outcome,
    raw: Outcome,
    writes_per_fsync: Option<u64>,
}

/// engine, raw, engine, raw, ...: each phase after the same settling, the
/// raw loop of each round given the fsync cadence the engine used just
/// before it; the median ratio and its spread are the result.
fn run_rounds(
    args: &Args,
    batch: &[u8],
    batches: u64,
    records_per_batch: u64,
) -> Result<(), String> {
    let mut rounds = Vec::with_capacity(args.rounds);
    let mut backend = String::new();
    for round in 1..=args.rounds {
        settle();
        let (engine, engine_backend) = run_engine(
            args,
            args.partitions,
            args.segment_bytes,
            batch,
            batches,
            records_per_batch,
        )?;
        backend = engine_backend;
        let writes_per_fsync = raw_writes_per_fsync(args.flush, &engine, batches);
        settle();
        let raw = run_raw(
            &args.dir,
            batch,
            batches,
            RawPlan {
                flush: args.flush,
                writes_per_fsync: writes_per_fsync.unwrap_or(1),
                segment_bytes: args.segment_bytes,
                files: args.raw_files,
            },
        )?;
        eprintln!(
            "round {round}/{}: engine {:.1} MB/s, raw {:.1} MB/s, ratio {:.3}",
            args.rounds,
            mb_s(&engine),
            mb_s(&raw),
            mb_s(&engine) / mb_s(&raw)
        );
        rounds.push(Round {
            engine,
            raw,
            writes_per_fsync,
        });
    }

    let ratios: Vec<f64> = rounds
        .iter()
        .map(|r| mb_s(&r.engine) / mb_s(&r.raw))
        .collect();
    let ratio = median(&ratios);
    let (low, high) = spread(&ratios);
    let engine_mb_s = median(&rounds.iter().map(|r| mb_s(&r.engine)).collect::<Vec<_>>());
    let raw_mb_s = median(&rounds.iter().map(|r| mb_s(&r.raw)).collect::<Vec<_>>());
    let mut latency = new_histogram()?;
    for round in &rounds {
        if let Some(h) = &round.engine.latency {
            latency
                .add(h)
                .map_err(|e| format!("merging histograms: {e}"))?;
        }
    }
    let flush = flush_name(args.flush);
    let clients = clients_name(args.clients);
    let per_round: Vec<serde_json::Value> = rounds
        .iter()
        .map(|r| {
            serde_json::json!({
                "engine_mb_s": mb_s(&r.engine),
                "raw_mb_s": mb_s(&r.raw),
                "ratio": mb_s(&r.engine) / mb_s(&r.raw),
                "engine_seconds": r.engine.seconds,
                "raw_seconds": r.raw.seconds,
                "engine_device_flushes": r.engine.device_flushes,
                "raw_device_flushes": r.raw.device_flushes,
                "raw_fsyncs": r.raw.fsyncs,
                "raw_writes_per_fsync": r.writes_per_fsync,
            })
        })
        .collect();
    let report = serde_json::json!({
        "workload": {
            "record_size": args.record_size,
            "batch_bytes": batch.len(),
            "records_per_batch": records_per_batch,
            "batches": batches,
            "total_bytes": batches * batch.len() as u64,
            "partitions": args.partitions,
            "raw_files": args.raw_files,
            "inflight_per_partition": args.inflight,
            "max_inflight": args.max_inflight,
            "flush": flush,
            "rounds": args.rounds,
        },
        "backend": backend,
        "clients": clients,
        "engine_mb_s": engine_mb_s,
        "raw_mb_s": raw_mb_s,
        "ratio": ratio,
        "ratio_min": low,
        "ratio_max": high,
        "records_per_s": engine_mb_s * 1e6 / batch.len() as f64 * records_per_batch as f64,
        "p50_us": latency.value_at_quantile(0.5),
        "p99_us": latency.value_at_quantile(0.99),
        "p999_us": latency.value_at_quantile(0.999),
        "rounds": per_round,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "workload: {} batches of {} B ({} records of {} B), {} partition(s), flush {flush}, backend {backend}, clients on {clients}, {} rounds",
        batches,
        batch.len(),
        records_per_batch,
        args.record_size,
        args.partitions,
        args.rounds
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "round {}: engine {:9.1} MB/s  raw {:9.1} MB/s  ratio {:.3}  device flushes engine {} raw {}  raw fsyncs {}{}",
            i + 1,
            mb_s(&r.engine),
            mb_s(&r.raw),
            mb_s(&r.engine) / mb_s(&r.raw),
            count_text(r.engine.device_flushes),
            count_text(r.raw.device_flushes),
            count_text(r.raw.fsyncs),
            r.writes_per_fsync
                .map_or_else(String::new, |k| format!(" (one per {k} writes, as the engine)")),
        );
    }
    println!(
        "engine: {engine_mb_s:9.1} MB/s (median)  append latency p50 {} us  p99 {} us  p99.9 {} us (all rounds)",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999)
    );
    println!(
        "raw:    {raw_mb_s:9.1} MB/s (median; pwrite loop, same block size and fsync cadence)"
    );
    println!(
        "ratio:  {ratio:.3} median of {} rounds, spread {low:.3} to {high:.3} (engine / raw)",
        args.rounds
    );
    Ok(())
}

/// For `every-batch`, the raw loop fsyncs once per as many writes as the
/// engine's group commit shared one fsync among, measured by the device's
/// flush count during the engine phase; `None` in the other modes (their
/// cadence is a clock or the roll) or where the count is unavailable.
fn raw_writes_per_fsync(flush: FlushMode, engine: &Outcome, batches: u64) -> Option<u64> {
    if flush != FlushMode::EveryBatch {
        return None;
    }
    let flushes = engine.device_flushes.filter(|&f| f > 0)?;
    Some(((batches as f64 / flushes as f64).round() as u64).clamp(1, batches.max(1)))
}

fn mb_s(o: &Outcome) -> f64 {
    o.bytes as f64 / o.seconds / 1e6
}

fn count_text(count: Option<u64>) -> String {
    count.map_or_else(|| "n/a".to_string(), |c| c.to_string())
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(crate) fn spread(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (low, high)
}

fn flush_name(flush: FlushMode) -> String {
    match flush {
        FlushMode::None => "none".to_string(),
        FlushMode::EveryBatch => "every-batch".to_string(),
        FlushMode::IntervalMs(ms) => format!("ms:{ms}"),
    }
}

fn clients_name(clients: Clients) -> String {
    clap::ValueEnum::to_possible_value(&clients)
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// The earlier single-shot comparison (`--single-shot`): one engine phase
/// and one raw phase, plus, with several partitions, one partition carrying
/// the same bytes and the raw loop spread over as many files.
fn run_single_shot(
    args: &Args,
    batch: &[u8],
    batches: u64,
    records_per_batch: u64,
) -> Result<(), String> {
    settle();
    let (engine, backend) = run_engine(
        args,
        args.partitions,
        args.segment_bytes,
        batch,
        batches,
        records_per_batch,
    )?;
    let writes_per_fsync = raw_writes_per_fsync(args.flush, &engine, batches).unwrap_or(1);
    // With several partitions, also one partition carrying the same bytes,
    // its segments as large as the P partitions' together so that it rolls
    // (and fsyncs at the roll) as often as each of them does.
    let single = if args.partitions > 1 {
        let segment_bytes = args
            .segment_bytes
            .saturating_mul(args.partitions as u64)
            .min(sluice_engine::config::MAX_SEGMENT_BYTES);
        settle();
        Some(run_engine(args, 1, segment_bytes, batch, batches, records_per_batch)?.0)
    } else {
        None
    };
    let plan = |files| RawPlan {
        flush: args.flush,
        writes_per_fsync,
        segment_bytes: args.segment_bytes,
        files,
    };
    settle();
    let raw = run_raw(&args.dir, batch, batches, plan(1))?;
    // With several partitions, also the same loop spread over as many
    // files: what the filesystem itself gives that access pattern.
    let raw_spread = if args.partitions > 1 {
        settle();
        Some(run_raw(&args.dir, batch, batches, plan(args.partitions))?)
    } else {
        None
    };

    let idle = if args.idle_partitions > 0 {
        Some(measure_idle_partitions(args)?)
    } else {
        None
    };

    let mb = mb_s;
    let engine_mb_s = mb(&engine);
    let raw_mb_s = mb(&raw);
    let ratio = engine_mb_s / raw_mb_s;
    let hist = engine.latency.as_ref();
    let pct = |q: f64| hist.map_or(0, |h| h.value_at_quantile(q));
    let flush = flush_name(args.flush);
    let clients = clients_name(args.clients);
    let mut report = serde_json::json!({
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
            "single_shot": true,
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
        "engine_device_flushes": engine.device_flushes,
        "raw_device_flushes": raw.device_flushes,
        "raw_fsyncs": raw.fsyncs,
    });
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
            "workload: {} batches of {} B ({} records of {} B), {} partition(s), flush {flush}, backend {backend}, clients on {clients}, single shot",
            batches,
            batch.len(),
            records_per_batch,
            args.record_size,
            args.partitions
        );
        println!(
            "engine: {engine_mb_s:9.1} MB/s  {:>12.0} records/s  append latency p50 {} us  p99 {} us  p99.9 {} us  device flushes {}",
            engine.records as f64 / engine.seconds,
            pct(0.5),
            pct(0.99),
            pct(0.999),
            count_text(engine.device_flushes),
        );
        println!(
            "raw:    {raw_mb_s:9.1} MB/s  (pwrite loop, same block size and fsync cadence)  device flushes {}  fsyncs {}",
            count_text(raw.device_flushes),
            count_text(raw.fsyncs),
        );
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

/// The engine's append throughput for `sluice-bench wire`: the same code
/// path as `sluice-bench engine` (one phase, after settling), with that
/// command's defaults for everything the wire benchmark does not set.
pub(crate) struct Baseline {
    pub(crate) records_per_s: f64,
    pub(crate) seconds: f64,
    pub(crate) records: u64,
    pub(crate) batch_bytes: usize,
    pub(crate) device_flushes: Option<u64>,
    pub(crate) backend: String,
}

pub(crate) fn append_baseline(
    dir: &Path,
    record_size: u64,
    batch_size: u64,
    records: u64,
    partitions: usize,
    flush: FlushMode,
    segment_bytes: u64,
) -> Result<Baseline, String> {
    let args = Args {
        dir: dir.to_path_buf(),
        record_size,
        batch_size,
        total_bytes: 0,
        partitions: partitions.max(1),
        flush,
        inflight: 8,
        max_inflight: 64,
        shards: None,
        io_driver: "auto".into(),
        ring_writes: false,
        no_pin: false,
        segment_bytes,
        idle_partitions: 0,
        json: false,
        clients: Clients::Thread,
        rounds: 1,
        raw_files: 1,
        single_shot: true,
    };
    let batch = build_batch(record_size as usize, batch_size as usize)?;
    let header = sluice_engine::batch::validate(&batch, usize::MAX)
        .map_err(|e| format!("built an invalid batch: {e}"))?;
    let records_per_batch = (header.record_count() as u64).max(1);
    let batches = records.div_ceil(records_per_batch).max(1);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir:?}: {e}"))?;
    settle();
    let (outcome, backend) = run_engine(
        &args,
        args.partitions,
        segment_bytes,
        &batch,
        batches,
        records_per_batch,
    )?;
    Ok(Baseline {
        records_per_s: outcome.records as f64 / outcome.seconds,
        seconds: outcome.seconds,
        records: outcome.records,
        batch_bytes: batch.len(),
        device_flushes: outcome.device_flushes,
        backend,
    })
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
        let flushes = DeviceFlushes::start(&args.dir);
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
                fsyncs: None,
                device_flushes: flushes.since(),
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
                        .append(tp.clone(), records, LEADER)
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
        let device_flushes = flushes.since();
        let latency = histogram.borrow().clone();
        Ok::<_, String>(Outcome {
            seconds,
            bytes: batches * batch.len() as u64,
            records: batches * records_per_batch,
            latency: Some(latency),
            fsyncs: None,
            device_flushes,
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
                                    .append(tp.clone(), records, LEADER)
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

/// How the raw loop writes and fsyncs.
struct RawPlan {
    flush: FlushMode,
    /// For `every-batch`: fsync a file after this many writes to it (the
    /// engine's group commit shares one fsync among several appends).
    writes_per_fsync: u64,
    segment_bytes: u64,
    files: usize,
}

/// The baseline: `pwrite` the same block sequentially, with `fdatasync` at
/// the engine's cadence, timed until the data is as durable as the mode
/// promises. `every-batch`: an fsync per `writes_per_fsync` writes, the
/// cadence the engine's group commit used, and one at the end, so the last
/// write is durable when the clock stops, as the engine's last acknowledged
/// append is. `ms:N`: every N ms. In every mode the file is also fsynced
/// each time `segment.bytes` is crossed, as the engine flushes a segment
/// when it rolls; outside `every-batch` that fsync runs on a background
/// thread, as the engine's roll flush does, so neither side's clock
/// includes it.
fn run_raw(dir: &Path, batch: &[u8], batches: u64, plan: RawPlan) -> Result<Outcome, String> {
    // Write i goes to file i mod `files`, as the engine's append i goes to
    // partition i mod P; each file rolls (fsyncs) at its own
    // `segment.bytes`.
    let files = plan.files.max(1);
    let raw_dir = dir.join("sluice-bench-raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| format!("creating {raw_dir:?}: {e}"))?;
    let mut open = Vec::with_capacity(files);
    for i in 0..files {
        let path = raw_dir.join(format!("{i}.dat"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("creating {path:?}: {e}"))?;
        open.push(RawFile {
            file,
            position: 0,
            unsynced_writes: 0,
        });
    }
    sync_all();
    let every_batch = plan.flush == FlushMode::EveryBatch;
    let per_fsync = plan.writes_per_fsync.max(1);
    let (roll_tx, roll_rx) = std::sync::mpsc::channel::<std::fs::File>();
    let roller = std::thread::spawn(move || -> Result<u64, String> {
        let mut count = 0;
        for file in roll_rx {
            file.sync_data()
                .map_err(|e| format!("raw fdatasync at a roll: {e}"))?;
            count += 1;
        }
        Ok(count)
    });
    let flushes = DeviceFlushes::start(dir);
    let start = Instant::now();
    let mut last_sync = start;
    let mut written = 0u64;
    let mut fsyncs = 0u64;
    let roll = plan.segment_bytes.max(1);
    let timed = (|| -> Result<(), String> {
        for i in 0..batches {
            let raw = &mut open[(i % files as u64) as usize];
            raw.file
                .write_all_at(batch, raw.position)
                .map_err(|e| format!("raw write: {e}"))?;
            let rolled = (raw.position + batch.len() as u64) / roll > raw.position / roll;
            raw.position += batch.len() as u64;
            raw.unsynced_writes += 1;
            written += batch.len() as u64;
            if every_batch {
                if raw.unsynced_writes >= per_fsync || rolled {
                    raw.sync(&mut fsyncs)?;
                }
            } else if rolled {
                let clone = raw.file.try_clone().map_err(|e| format!("raw roll: {e}"))?;
                roll_tx
                    .send(clone)
                    .map_err(|_| "the raw roll thread stopped".to_string())?;
            }
            if let FlushMode::IntervalMs(ms) = plan.flush {
                if last_sync.elapsed() >= Duration::from_millis(ms) {
                    for raw in &mut open {
                        raw.sync(&mut fsyncs)?;
                    }
                    last_sync = Instant::now();
                }
            }
        }
        if every_batch {
            for raw in &mut open {
                if raw.unsynced_writes > 0 {
                    raw.sync(&mut fsyncs)?;
                }
            }
        }
        Ok(())
    })();
    let seconds = start.elapsed().as_secs_f64();
    let device_flushes = flushes.since();
    drop(roll_tx);
    let rolled = roller
        .join()
        .map_err(|_| "the raw roll thread panicked".to_string())?;
    timed?;
    fsyncs += rolled?;
    drop(open);
    remove_dir(&raw_dir)?;
    std::io::stdout().flush().ok();
    Ok(Outcome {
        seconds,
        bytes: written,
        records: 0,
        latency: None,
        fsyncs: Some(fsyncs),
        device_flushes,
    })
}

struct RawFile {
    file: std::fs::File,
    position: u64,
    unsynced_writes: u64,
}

impl RawFile {
    fn sync(&mut self, count: &mut u64) -> Result<(), String> {
        self.file
            .sync_data()
            .map_err(|e| format!("raw fdatasync: {e}"))?;
        self.unsynced_writes = 0;
        *count += 1;
        Ok(())
    }
}

/// Writes back all dirty pages so each phase starts from the same state.
fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Dirty and under-writeback page cache at or below which the machine
/// counts as settled before a phase.
const SETTLED_DIRTY_BYTES_MAX: u64 = 64 << 20;
/// How long settling may wait for other processes' dirty pages to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Brings the page cache to the same state before every phase: the
/// previous phase's files are already removed, `sync(2)` writes back what
/// is dirty, and then we wait (bounded) until dirty and writeback pages are
/// below [`SETTLED_DIRTY_BYTES_MAX`], since other processes on a shared
/// machine keep dirtying pages. What the previous phase left dirty decided
/// the single-shot ratio (0.10 to 0.76 for the same command).
pub(crate) fn settle() {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        sync_all();
        match dirty_bytes() {
            Some(dirty) if dirty > SETTLED_DIRTY_BYTES_MAX && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return,
        }
    }
}

/// `Dirty` plus `Writeback` from /proc/meminfo.
fn dirty_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// The cache-flush count of the block device holding a directory (field
/// 16 of `/sys/dev/block/MAJ:MIN/stat`, Linux 5.5 and later), sampled at
/// the start of a phase. Machine-wide, so other processes' fsyncs count
/// too; `None` where the directory is not on a block device.
pub(crate) struct DeviceFlushes {
    path: Option<PathBuf>,
    start: Option<u64>,
}

impl DeviceFlushes {
    pub(crate) fn start(dir: &Path) -> DeviceFlushes {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::metadata(dir).ok().map(|m| {
            let dev = m.dev();
            let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
            let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
            PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"))
        });
        let start = path.as_deref().and_then(read_device_flushes);
        DeviceFlushes { path, start }
    }

    /// Flushes completed since `start`.
    pub(crate) fn since(&self) -> Option<u64> {
        let now = self.path.as_deref().and_then(read_device_flushes)?;
        Some(now.saturating_sub(self.start?))
    }
}

fn read_device_flushes(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    stat.split_whitespace().nth(15)?.parse().ok()
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
                .append(tp, small.clone(), LEADER)
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

#[cfg(test)]
mod tests {
    use super::{median, raw_writes_per_fsync, spread, FlushMode, Outcome};

    fn engine_outcome(device_flushes: Option<u64>) -> Outcome {
        Outcome {
            seconds: 1.0,
            bytes: 1,
            records: 1,
            latency: None,
            fsyncs: None,
            device_flushes,
        }
    }

    #[test]
    fn median_and_spread_of_round_ratios() {
        assert_eq!(median(&[0.7, 0.1, 0.15]), 0.15);
        assert_eq!(median(&[0.2, 0.1, 0.4, 0.3]), 0.25);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[0.7, 0.1, 0.15]), (0.1, 0.7));
    }

    #[test]
    fn raw_loop_shares_fsyncs_as_the_engine_did_only_for_every_batch() {
        // 4,120 appends acknowledged by 1,030 fsyncs: one per 4 writes.
        let engine = engine_outcome(Some(1030));
        assert_eq!(
            raw_writes_per_fsync(FlushMode::EveryBatch, &engine, 4120),
            Some(4)
        );
        // More flushes than appends (other processes' fsyncs): every write.
        let noisy = engine_outcome(Some(9000));
        assert_eq!(
            raw_writes_per_fsync(FlushMode::EveryBatch, &noisy, 4120),
            Some(1)
        );
        // Nothing measured: the caller falls back to every write.
        let unknown = engine_outcome(None);
        assert_eq!(
            raw_writes_per_fsync(FlushMode::EveryBatch, &unknown, 4120),
            None
        );
        assert_eq!(raw_writes_per_fsync(FlushMode::None, &engine, 4120), None);
        assert_eq!(
            raw_writes_per_fsync(FlushMode::IntervalMs(50), &engine, 4120),
            None
        );
    }
}
