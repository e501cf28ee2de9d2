//! `sluice-bench wire`: the broker measured through a Kafka client we did
//! not write (librdkafka, through the `rdkafka` crate), over loopback.
//!
//! It starts a `sluice` broker on a free port with its data under `--dir`
//! (or drives `--bootstrap-server`), creates a topic, produces `--records`
//! records with `--producers` producer threads, then reads everything back
//! with `--consumers` consumer threads, each assigned a share of the
//! partitions from the beginning. It reports produce and consume MB/s and
//! records/s (of record values), the acknowledgement latency percentiles,
//! and the broker's CPU time per GiB produced and per GiB consumed from
//! `/proc/<pid>/stat`: on a shared machine CPU time is far steadier than
//! wall time, and it is what makes two brokers comparable. Finally, with
//! the broker stopped, the storage engine appends the same records through
//! the `engine` benchmark's code path, and `ratio` is the wire produce
//! rate over the engine's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::broker_process::{cpu_seconds, BrokerProcess};
use crate::engine::{self, FlushMode};
use crate::size::parse_size;

/// How long metadata, topic creation and watermark requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How far ahead of its schedule a paced producer sends rather than
/// waits.
const PACE_SLACK: Duration = Duration::from_millis(1);
/// Bytes per GiB, for the CPU-seconds-per-GiB figures.
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl Acks {
    fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the broker's data and the engine baseline (created; the
    /// benchmark's files are removed afterwards).
    #[arg(long)]
    dir: PathBuf,
    /// The `sluice` binary to start (default: the one next to this
    /// benchmark's binary, e.g. target/release/sluice).
    #[arg(long, conflicts_with = "bootstrap_server")]
    broker_bin: Option<PathBuf>,
    /// Drive an existing broker or cluster at HOST:PORT instead of starting
    /// one (no CPU figures unless --broker-pid is given).
    #[arg(long)]
    bootstrap_server: Option<String>,
    /// With --bootstrap-server: a broker process whose CPU time to report
    /// (repeatable: a cluster's brokers are reported as their sum).
    #[arg(long = "broker-pid", requires = "bootstrap_server")]
    broker_pid: Vec<u32>,
    /// A setting for the started broker, KEY=VALUE (repeatable), e.g.
    /// log.flush.interval.messages=1.
    #[arg(
        long = "broker-set",
        value_name = "KEY=VALUE",
        conflicts_with = "bootstrap_server"
    )]
    broker_set: Vec<String>,
    /// Size of one record's value.
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    record_size: u64,
    /// Records to produce in all (default: --total-bytes of values).
    #[arg(long, conflicts_with = "total_bytes")]
    records: Option<u64>,
    /// Bytes of record values to produce in all.
    #[arg(long, value_parser = parse_size)]
    total_bytes: Option<u64>,
    /// Partitions of the benchmark's topic.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replicas of each partition (a cluster, with `--bootstrap-server`).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Produce at most this many MB/s (10^6 bytes of record values, all
    /// producers together), paced record by record, so that latency can be
    /// read below saturation; without it, as fast as the client goes.
    #[arg(long)]
    throughput: Option<f64>,
    /// Producer acknowledgements: 0, 1 or all.
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    /// Producer threads, each with its own client (and connection).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer threads, each with its own client, each assigned every
    /// N-th partition.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// The producer's batch.size.
    #[arg(long, default_value = "65536", value_parser = parse_size)]
    batch_size: u64,
    /// The producer's linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Any other producer setting, KEY=VALUE (repeatable), e.g.
    /// max.in.flight=5 or compression.type=lz4.
    #[arg(long = "producer-set", value_name = "KEY=VALUE")]
    producer_set: Vec<String>,
    /// Any other consumer setting, KEY=VALUE (repeatable), e.g.
    /// fetch.max.bytes=52428800.
    #[arg(long = "consumer-set", value_name = "KEY=VALUE")]
    consumer_set: Vec<String>,
    /// Skip the engine baseline (then no ratio).
    #[arg(long)]
    no_engine: bool,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The records of one run, spread over the producers.
struct Workload {
    topic: String,
    records: u64,
    value: Vec<u8>,
    /// Records sent to one partition before the producer moves to the next,
    /// about one batch.size, as a sticky partitioner does.
    run_length: u64,
}

struct ProduceOutcome {
    seconds: f64,
    latency: Histogram<u64>,
    /// The slowest acknowledgement of each 100 ms of sending, all
    /// producers together.
    timeline: Vec<u64>,
}

struct ConsumeOutcome {
    seconds: f64,
    records: u64,
    bytes: u64,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.partitions <= 0 || args.producers == 0 || args.consumers == 0 {
        return Err("--partitions, --producers and --consumers must be positive".into());
    }
    if args.record_size == 0 {
        return Err("--record-size must be positive".into());
    }
    let records = match (args.records, args.total_bytes) {
        (Some(records), _) => records,
        (None, Some(bytes)) => bytes / args.record_size,
        (None, None) => (1u64 << 30) / args.record_size,
    };
    if records == 0 {
        return Err("nothing to produce: --records or --total-bytes is too small".into());
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("creating {:?}: {e}", args.dir))?;
    let work_dir = args.dir.join("sluice-bench-wire");
    remove_dir(&work_dir)?;

    let mut started = None;
    let (bootstrap, broker_pid) = match &args.bootstrap_server {
        Some(server) => (server.clone(), args.broker_pid.clone()),
        None => {
            let bin = match &args.broker_bin {
                Some(bin) => bin.clone(),
                None => default_broker_bin()?,
            };
            let broker = BrokerProcess::start(
                &bin,
                &work_dir.join("data"),
                &args.dir.join("sluice-bench-wire-broker.log"),
                &args.broker_set,
            )?;
            let addr = broker.addr().to_string();
            let pid = broker.pid();
            eprintln!(
                "sluice-bench: started {} (pid {}) on {addr}, data in {}",
                bin.display(),
                pid.map_or_else(|| "?".to_string(), |p| p.to_string()),
                work_dir.join("data").display()
            );
            started = Some(broker);
            (addr, pid.into_iter().collect::<Vec<_>>())
        }
    };

    let per_batch = (args.batch_size / (args.record_size + RECORD_OVERHEAD_BYTES)).max(1);
    let workload = Workload {
        topic: format!(
            "sluice-bench-wire-{}-{}",
            std::process::id(),
            sluice_engine::shard::now_ms()
        ),
        records,
        value: vec![b'x'; args.record_size as usize],
        run_length: per_batch,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    create_topic(
        &bootstrap,
        &workload.topic,
        args.partitions,
        args.replication_factor,
    )?;

    engine::settle();
    let cpu_before = broker_cpu(&broker_pid)?;
    let client_before = cpu_seconds(std::process::id())?;
    let produced = produce(&args, &bootstrap, &workload, timeout)?;
    let produce_cpu = broker_cpu(&broker_pid)?.zip(cpu_before).map(|(a, b)| a - b);
    let produce_client_cpu = cpu_seconds(std::process::id())? - client_before;

    let ends = end_offsets(&bootstrap, &workload.topic, args.partitions)?;
    let on_broker: u64 = ends.iter().map(|&(_, low, high)| (high - low) as u64).sum();
    if on_broker != records {
        return Err(format!(
            "the broker holds {on_broker} records of the {records} produced (watermarks {ends:?})"
        ));
    }

    let consumers = prepare_consumers(&args, &bootstrap, &workload, &ends)?;
    engine::settle();
    let cpu_before = broker_cpu(&broker_pid)?;
    let client_before = cpu_seconds(std::process::id())?;
    let consumed = consume(&consumers, timeout)?;
    drop(consumers);
    let consume_cpu = broker_cpu(&broker_pid)?.zip(cpu_before).map(|(a, b)| a - b);
    let consume_client_cpu = cpu_seconds(std::process::id())? - client_before;
    if consumed.records != records {
        return Err(format!(
            "consumed {} records of the {records} produced",
            consumed.records
        ));
    }

    if let Some(mut broker) = started.take() {
        broker.stop()?;
    } else if let Err(e) = delete_topic(&bootstrap, &workload.topic) {
        eprintln!(
            "sluice-bench: deleting the benchmark topic {}: {e}",
            workload.topic
        );
    }
    remove_dir(&work_dir)?;

    let baseline = if args.no_engine {
        None
    } else {
        let flush = engine_flush_mode(&args.broker_set)?;
        let segment_bytes = broker_setting(&args.broker_set, "log.segment.bytes")
            .map(parse_size)
            .transpose()?
            .unwrap_or(1 << 30);
        Some(engine::append_baseline(
            &work_dir.join("engine"),
            args.record_size,
            args.batch_size,
            records,
            args.partitions as usize,
            flush,
            segment_bytes,
        )?)
    };
    remove_dir(&work_dir)?;

    report(
        &args,
        &workload,
        &produced,
        &consumed,
        Cpu {
            produce: produce_cpu,
            consume: consume_cpu,
            produce_client: produce_client_cpu,
            consume_client: consume_client_cpu,
        },
        baseline.as_ref(),
    );
    Ok(())
}

/// About what a record adds to its value in a v2 batch (length, attributes,
/// deltas and header count as varints), for sizing the sticky runs.
const RECORD_OVERHEAD_BYTES: u64 = 12;

struct Cpu {
    produce: Option<f64>,
    consume: Option<f64>,
    produce_client: f64,
    consume_client: f64,
}

fn report(
    args: &Args,
    workload: &Workload,
    produced: &ProduceOutcome,
    consumed: &ConsumeOutcome,
    cpu: Cpu,
    baseline: Option<&engine::Baseline>,
) {
    let value_bytes = workload.records * args.record_size;
    let produce_mb_s = value_bytes as f64 / produced.seconds / 1e6;
    let produce_records_s = workload.records as f64 / produced.seconds;
    let consume_mb_s = consumed.bytes as f64 / consumed.seconds / 1e6;
    let consume_records_s = consumed.records as f64 / consumed.seconds;
    let gib = value_bytes as f64 / GIB;
    let produce_cpu_per_gib = cpu.produce.map(|s| s / gib);
    let consume_cpu_per_gib = cpu.consume.map(|s| s / gib);
    let pct = |q: f64| produced.latency.value_at_quantile(q);
    // The engine appends the same records; its rate in the same unit.
    let engine_mb_s = baseline.map(|b| b.records_per_s * args.record_size as f64 / 1e6);
    let ratio = baseline.map(|b| produce_records_s / b.records_per_s);
    let report = serde_json::json!({
        "workload": {
            "record_size": args.record_size,
            "records": workload.records,
            "value_bytes": value_bytes,
            "partitions": args.partitions,
            "acks": args.acks.as_config(),
            "producers": args.producers,
            "consumers": args.consumers,
            "batch_size": args.batch_size,
            "linger_ms": args.linger_ms,
            "producer_set": args.producer_set,
            "consumer_set": args.consumer_set,
            "broker_set": args.broker_set,
            "broker": args.bootstrap_server.as_deref().unwrap_or("started"),
        },
        "produce": {
            "mb_s": produce_mb_s,
            "records_s": produce_records_s,
            "seconds": produced.seconds,
            "ack_p50_us": pct(0.5),
            "ack_p99_us": pct(0.99),
            "ack_p999_us": pct(0.999),
            "ack_max_us": produced.latency.max(),
            "ack_max_us_per_100ms": produced.timeline,
            "broker_cpu_s": cpu.produce,
            "broker_cpu_s_per_gib": produce_cpu_per_gib,
            "client_cpu_s": cpu.produce_client,
        },
        "consume": {
            "mb_s": consume_mb_s,
            "records_s": consume_records_s,
            "seconds": consumed.seconds,
            "broker_cpu_s": cpu.consume,
            "broker_cpu_s_per_gib": consume_cpu_per_gib,
            "client_cpu_s": cpu.consume_client,
        },
        "engine": baseline.map(|b| serde_json::json!({
            "mb_s": engine_mb_s,
            "records_s": b.records_per_s,
            "seconds": b.seconds,
            "records": b.records,
            "batch_bytes": b.batch_bytes,
            "device_flushes": b.device_flushes,
            "backend": b.backend,
        })),
        "ratio": ratio,
    });
    if args.json {
        println!("{report}");
        return;
    }
    let seconds = |s: Option<f64>| s.map_or_else(|| "n/a".to_string(), |s| format!("{s:.2}"));
    println!(
        "workload: {} records of {} B, {} partition(s), acks={}, {} producer(s), {} consumer(s), batch.size {} linger.ms {}",
        workload.records,
        args.record_size,
        args.partitions,
        args.acks.as_config(),
        args.producers,
        args.consumers,
        args.batch_size,
        args.linger_ms
    );
    println!(
        "produce: {produce_mb_s:9.1} MB/s  {produce_records_s:>10.0} records/s  ack latency p50 {} us  p99 {} us  p99.9 {} us  max {} us",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        produced.latency.max()
    );
    println!("consume: {consume_mb_s:9.1} MB/s  {consume_records_s:>10.0} records/s",);
    println!(
        "broker CPU: {} s per GiB produced ({} s), {} s per GiB consumed ({} s); client CPU {:.2} s / {:.2} s",
        seconds(produce_cpu_per_gib),
        seconds(cpu.produce),
        seconds(consume_cpu_per_gib),
        seconds(cpu.consume),
        cpu.produce_client,
        cpu.consume_client
    );
    if let (Some(engine_mb_s), Some(ratio)) = (engine_mb_s, ratio) {
        println!("engine:  {engine_mb_s:9.1} MB/s  (the same records appended through the engine)");
        println!("ratio:   {ratio:.3} (wire produce / engine)");
    }
}

/// The broker binary next to this benchmark's: both are built into the
/// same target/<profile>/ directory.
fn default_broker_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let bin = me.with_file_name("sluice");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no broker at {} (build it with `cargo build --release -p sluice-broker`, or pass --broker-bin or --bootstrap-server)",
            bin.display()
        ))
    }
}

/// The CPU seconds of the brokers `pids`, summed; none without a broker.
fn broker_cpu(pids: &[u32]) -> Result<Option<f64>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for &pid in pids {
        total += cpu_seconds(pid)?;
    }
    Ok(Some(total))
}

fn broker_setting<'a>(settings: &'a [String], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .filter_map(|s| s.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// The engine flush policy matching the broker's flush settings:
/// `log.flush.interval.messages=1` is the engine benchmark's
/// `every-batch`, `log.flush.interval.ms=N` its `ms:N`.
fn engine_flush_mode(settings: &[String]) -> Result<FlushMode, String> {
    if let Some(messages) = broker_setting(settings, "log.flush.interval.messages") {
        let messages: u64 = messages
            .parse()
            .map_err(|_| format!("log.flush.interval.messages={messages:?} is not a number"))?;
        if messages == 1 {
            return Ok(FlushMode::EveryBatch);
        }
        return Err(format!(
            "the engine baseline models log.flush.interval.messages=1 only, not {messages}; add --no-engine"
        ));
    }
    if let Some(ms) = broker_setting(settings, "log.flush.interval.ms") {
        return match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(FlushMode::IntervalMs(ms)),
            _ => Err(format!(
                "log.flush.interval.ms={ms:?} is not a positive number"
            )),
        };
    }
    Ok(FlushMode::None)
}

fn client_config(bootstrap: &str, extra: &[String]) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for setting in extra {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim());
    }
    Ok(config)
}

fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, &[])?
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let runtime = compio::runtime::Runtime::new()
        .map_err(|e| format!("runtime for the admin client: {e}"))?;
    let new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = runtime
        .block_on(admin.create_topics(&[new_topic], &options))
        .map_err(|e| format!("creating topic {topic}: {e}"))?;
    for result in results {
        result.map_err(|(name, code)| format!("creating topic {name}: {code}"))?;
    }
    // Wait (bounded) until the metadata shows every partition with a leader.
    let probe: BaseConsumer = client_config(bootstrap, &[])?
        .create()
        .map_err(|e| format!("metadata client: {e}"))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let ready = probe
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .ok()
            .and_then(|m| {
                m.topics().iter().find(|t| t.name() == topic).map(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "topic {topic} has no leader for all {partitions} partitions after {REQUEST_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delete_topic(bootstrap: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, &[])?
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let runtime = compio::runtime::Runtime::new()
        .map_err(|e| format!("runtime for the admin client: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = runtime
        .block_on(admin.delete_topics(&[topic], &options))
        .map_err(|e| e.to_string())?;
    for result in results {
        result.map_err(|(name, code)| format!("{name}: {code}"))?;
    }
    Ok(())
}

/// Records every delivery report: the acknowledgement latency (the send
/// time travels as the message's opaque value, nanoseconds since `origin`)
/// and failures.
struct Deliveries {
    origin: Instant,
    latency: Mutex<Histogram<u64>>,
    /// The slowest acknowledgement (µs) of the records sent in each
    /// [`TIMELINE_STEP`] since `origin`: where in a run a tail comes from.
    timeline: Mutex<Vec<u64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                let now_ns = self.origin.elapsed().as_nanos() as u64;
                let micros = (now_ns.saturating_sub(sent_ns as u64) / 1000).max(1);
                if let Ok(mut latency) = self.latency.lock() {
                    latency.saturating_record(micros);
                }
                let step = (sent_ns as u128 / TIMELINE_STEP.as_nanos()) as usize;
                if let Ok(mut timeline) = self.timeline.lock() {
                    if timeline.len() <= step {
                        timeline.resize(step + 1, 0);
                    }
                    timeline[step] = timeline[step].max(micros);
                }
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// The width of one step of the acknowledgement timeline.
const TIMELINE_STEP: Duration = Duration::from_millis(100);

/// Acknowledgement latencies in microseconds, up to ten minutes.
fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

fn produce(
    args: &Args,
    bootstrap: &str,
    workload: &Workload,
    timeout: Duration,
) -> Result<ProduceOutcome, String> {
    let mut config = client_config(bootstrap, &[])?;
    config
        .set("acks", args.acks.as_config())
        .set("batch.size", args.batch_size.to_string())
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.type", "none");
    for setting in &args.producer_set {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("--producer-set {setting:?}: expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim());
    }
    let origin = Instant::now();
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        let context = Deliveries {
            origin,
            latency: Mutex::new(new_histogram()?),
            timeline: Mutex::new(Vec::new()),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        };
        // Delivery reports are served by the producer's own polling thread
        // as they arrive, which is when acknowledgements are timed.
        let producer: ThreadedProducer<Deliveries> = config
            .create_with_context(context)
            .map_err(|e| format!("creating a producer: {e}"))?;
        producers.push(producer);
    }
    // Connect and learn the topic's leaders before the clock starts.
    for producer in &producers {
        producer
            .client()
            .fetch_metadata(Some(&workload.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("producer metadata: {e}"))?;
    }
    let partitions = args.partitions as u64;
    let count = producers.len() as u64;
    // Seconds between two records of one producer, when paced.
    let gap = args
        .throughput
        .filter(|mb| *mb > 0.0)
        .map(|mb| workload.value.len() as f64 * count as f64 / (mb * 1e6));
    let start = Instant::now();
    let deadline = start + timeout;
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(j, producer)| {
                let share =
                    workload.records / count + u64::from((j as u64) < workload.records % count);
                scope.spawn(move || {
                    for i in 0..share {
                        if let Some(gap) = gap {
                            let due = start + Duration::from_secs_f64(i as f64 * gap);
                            // Wait only when a whole PACE_SLACK ahead: at 80
                            // MB/s of 1 KiB records one is due every 13 µs, and
                            // a sleep each would cost more than the send. A
                            // record sent under PACE_SLACK early leaves the
                            // average rate as asked. (Waiting in librdkafka's
                            // poll instead spun out each sub-millisecond wait
                            // on the clock, taking most of a core from the
                            // brokers on a two-core machine.)
                            let left = due.saturating_duration_since(Instant::now());
                            if left >= PACE_SLACK {
                                std::thread::sleep(left);
                            }
                        }
                        let partition = ((j as u64 + i / workload.run_length) % partitions) as i32;
                        let mut record = BaseRecord::with_opaque_to(&workload.topic, 0usize)
                            .payload(workload.value.as_slice())
                            .partition(partition);
                        loop {
                            record.delivery_opaque = origin.elapsed().as_nanos() as usize;
                            match producer.send::<(), [u8]>(record) {
                                Ok(()) => break,
                                Err((
                                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                    back,
                                )) => {
                                    record = back;
                                    if Instant::now() >= deadline {
                                        return Err(format!(
                                            "producer {j}: queue full until the timeout"
                                        ));
                                    }
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                                Err((e, _)) => return Err(format!("producer {j}: send: {e}")),
                            }
                        }
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    producer
                        .flush(left)
                        .map_err(|e| format!("producer {j}: flush: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a producer thread panicked".into()))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    for result in results {
        result?;
    }
    let mut latency = new_histogram()?;
    let mut timeline: Vec<u64> = Vec::new();
    let mut delivered = 0;
    for producer in &producers {
        let context = producer.context();
        if context.failed.load(Ordering::Relaxed) > 0 {
            let first = context
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(format!(
                "{} records failed to be delivered; the first: {first}",
                context.failed.load(Ordering::Relaxed)
            ));
        }
        delivered += context.delivered.load(Ordering::Relaxed);
        let histogram = context
            .latency
            .lock()
            .map_err(|_| "a delivery callback panicked".to_string())?;
        latency
            .add(&*histogram)
            .map_err(|e| format!("merging histograms: {e}"))?;
        let theirs = context
            .timeline
            .lock()
            .map_err(|_| "a delivery callback panicked".to_string())?;
        if timeline.len() < theirs.len() {
            timeline.resize(theirs.len(), 0);
        }
        for (mine, &their) in timeline.iter_mut().zip(theirs.iter()) {
            *mine = (*mine).max(their);
        }
    }
    if delivered != workload.records {
        return Err(format!(
            "{delivered} delivery reports for {} records",
            workload.records
        ));
    }
    Ok(ProduceOutcome {
        seconds,
        latency,
        timeline,
    })
}

/// `(partition, log start offset, high watermark)` of every partition.
fn end_offsets(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let probe: BaseConsumer = client_config(bootstrap, &[])?
        .create()
        .map_err(|e| format!("watermark client: {e}"))?;
    (0..partitions)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map(|(low, high)| (p, low, high))
                .map_err(|e| format!("watermarks of {topic}-{p}: {e}"))
        })
        .collect()
}

/// Consumers created, connected and with their group coordinator known,
/// each with its share of the partitions; nothing read yet.
struct Consumers {
    consumers: Vec<(BaseConsumer, TopicPartitionList)>,
    shares: Vec<Vec<(i32, i64, i64)>>,
}

fn prepare_consumers(
    args: &Args,
    bootstrap: &str,
    workload: &Workload,
    ends: &[(i32, i64, i64)],
) -> Result<Consumers, String> {
    // librdkafka needs a group.id even to assign partitions; the group
    // commits nothing. Its coordinator (and, on a fresh broker, the
    // __consumer_offsets topic with its 50 partitions) is set up below,
    // before the clock and the CPU sample start.
    let mut base = vec![
        "group.id=sluice-bench-wire".to_string(),
        "enable.auto.commit=false".to_string(),
        "enable.auto.offset.store=false".to_string(),
        "auto.offset.reset=earliest".to_string(),
    ];
    base.extend(args.consumer_set.iter().cloned());
    let config = client_config(bootstrap, &base)?;
    // Consumer c reads partitions c, c + N, c + 2N, ...; a consumer with
    // none (more consumers than partitions) is not started.
    let mut shares: Vec<Vec<(i32, i64, i64)>> = vec![Vec::new(); args.consumers];
    for (i, end) in ends.iter().enumerate() {
        shares[i % args.consumers].push(*end);
    }
    shares.retain(|s| !s.is_empty());
    let mut consumers = Vec::with_capacity(shares.len());
    for share in &shares {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| format!("creating a consumer: {e}"))?;
        consumer
            .fetch_metadata(Some(&workload.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("consumer metadata: {e}"))?;
        let mut assignment = TopicPartitionList::new();
        for &(p, _, _) in share {
            assignment
                .add_partition_offset(&workload.topic, p, Offset::Beginning)
                .map_err(|e| format!("assignment: {e}"))?;
        }
        // Asking for committed offsets waits for the group coordinator.
        consumer
            .committed_offsets(assignment.clone(), REQUEST_TIMEOUT)
            .map_err(|e| format!("consumer group coordinator: {e}"))?;
        consumers.push((consumer, assignment));
    }
    Ok(Consumers { consumers, shares })
}

fn consume(prepared: &Consumers, timeout: Duration) -> Result<ConsumeOutcome, String> {
    let Consumers { consumers, shares } = prepared;
    let start = Instant::now();
    let deadline = start + timeout;
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = consumers
            .iter()
            .zip(shares)
            .enumerate()
            .map(|(c, ((consumer, assignment), share))| {
                scope.spawn(move || read_share(c, consumer, assignment, share, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a consumer thread panicked".into()))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut records = 0;
    let mut bytes = 0;
    for result in results {
        let (r, b) = result?;
        records += r;
        bytes += b;
    }
    Ok(ConsumeOutcome {
        seconds,
        records,
        bytes,
    })
}

/// Reads one consumer's partitions from the start to their high
/// watermarks; returns the records and value bytes read.
fn read_share(
    c: usize,
    consumer: &BaseConsumer,
    assignment: &TopicPartitionList,
    share: &[(i32, i64, i64)],
    deadline: Instant,
) -> Result<(u64, u64), String> {
    consumer
        .assign(assignment)
        .map_err(|e| format!("consumer {c}: assign: {e}"))?;
    // The next offset to read, per partition of the share.
    let mut next: Vec<(i32, i64, i64)> =
        share.iter().map(|&(p, low, high)| (p, low, high)).collect();
    let mut unfinished = next.iter().filter(|(_, low, high)| low < high).count();
    let (mut records, mut bytes) = (0u64, 0u64);
    while unfinished > 0 {
        if Instant::now() >= deadline {
            return Err(format!(
                "consumer {c}: {unfinished} partition(s) not read to the end before the timeout: {next:?}"
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| format!("consumer {c}: {e}"))?;
        let Some(entry) = next.iter_mut().find(|(p, _, _)| *p == message.partition()) else {
            return Err(format!(
                "consumer {c}: a record of partition {}, not assigned",
                message.partition()
            ));
        };
        if message.offset() != entry.1 {
            return Err(format!(
                "consumer {c}: partition {} gave offset {} where {} was next",
                entry.0,
                message.offset(),
                entry.1
            ));
        }
        entry.1 += 1;
        records += 1;
        bytes += message.payload_len() as u64;
        if entry.1 == entry.2 {
            unfinished -= 1;
        }
    }
    Ok((records, bytes))
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {dir:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{broker_setting, engine_flush_mode, FlushMode};

    fn settings(pairs: &[&str]) -> Vec<String> {
        pairs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn broker_flush_settings_map_to_the_engine_flush_mode() {
        assert_eq!(engine_flush_mode(&[]), Ok(FlushMode::None));
        assert_eq!(
            engine_flush_mode(&settings(&["log.flush.interval.messages=1"])),
            Ok(FlushMode::EveryBatch)
        );
        assert_eq!(
            engine_flush_mode(&settings(&["log.flush.interval.ms=50"])),
            Ok(FlushMode::IntervalMs(50))
        );
        assert!(engine_flush_mode(&settings(&["log.flush.interval.messages=10"])).is_err());
        assert!(engine_flush_mode(&settings(&["log.flush.interval.ms=x"])).is_err());
    }

    #[test]
    fn the_last_broker_setting_of_a_key_wins() {
        let s = settings(&["a=1", "log.segment.bytes=5", "log.segment.bytes = 7"]);
        assert_eq!(broker_setting(&s, "log.segment.bytes"), Some("7"));
        assert_eq!(broker_setting(&s, "missing"), None);
    }
}
