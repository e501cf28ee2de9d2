//! `sluice-verify`: Kafka's verifiable producer and consumer, and a checker
//! of their event logs, against Sluice or any Kafka-compatible cluster.
//!
//! ```text
//! sluice-verify producer --bootstrap-server B --topic T --max-messages N > producer.jsonl
//! sluice-verify consumer --bootstrap-server B --topic T --group-id G --verbose > consumer.jsonl
//! sluice-verify check --producer producer.jsonl --consumer consumer.jsonl
//! ```
//!
//! SIGTERM or SIGINT stops a producer (after what is in flight is answered)
//! or a consumer cleanly.

mod admin;
mod check;
mod cluster;
mod consumer;
mod events;
mod group;
mod metrics;
mod plugfs;
mod producer;
mod proxy;
mod report;
mod scenario;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-verify",
    about = "Verifiable producer and consumer, and their checker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends PREFIX.SEQ messages and prints one JSON event per line.
    Producer {
        #[arg(long)]
        bootstrap_server: String,
        #[arg(long)]
        topic: String,
        /// -1: until SIGTERM.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        max_messages: i64,
        /// Messages per second; -1: as fast as it goes.
        #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
        throughput: f64,
        #[arg(long, default_value = "all")]
        acks: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        enable_idempotence: bool,
        #[arg(long)]
        retries: Option<u32>,
        #[arg(long, default_value_t = 120_000)]
        delivery_timeout_ms: u64,
        /// Values are PREFIX.SEQ; a different prefix per producer of a run.
        #[arg(long, default_value = "v")]
        value_prefix: String,
        /// Any librdkafka producer setting, KEY=VALUE (repeatable).
        #[arg(long = "producer-config", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Serve the error and retry rates as Prometheus text here.
        #[arg(long)]
        metrics_listener: Option<String>,
    },
    /// Reads as a consumer group member and prints one JSON event per line.
    Consumer {
        #[arg(long)]
        bootstrap_server: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group_id: String,
        #[arg(long, default_value = "earliest")]
        auto_offset_reset: String,
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        enable_auto_commit: bool,
        #[arg(long, default_value_t = 5000)]
        auto_commit_interval_ms: u64,
        /// Commit after each batch read (with auto commit off).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        commit_after_process: bool,
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        max_messages: i64,
        #[arg(long, default_value = "range")]
        assignment_strategy: String,
        /// Print every record read (record_data), which `check` needs.
        #[arg(long)]
        verbose: bool,
        /// Any librdkafka consumer setting, KEY=VALUE (repeatable).
        #[arg(long = "consumer-config", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Serve records read and the lag per partition as Prometheus text
        /// here.
        #[arg(long)]
        metrics_listener: Option<String>,
    },
    /// Runs scenario files: a local cluster, a producer under the faults
    /// of each, a consumer reading everything back, the checker; prints a
    /// table and exits 1 if any scenario failed.
    Run {
        #[arg(required = true)]
        scenarios: Vec<std::path::PathBuf>,
        /// The broker binary (default: `sluice` beside this one).
        #[arg(long)]
        sluice_bin: Option<std::path::PathBuf>,
        /// Where each scenario's cluster, logs and event logs go (default:
        /// a new directory under the system's temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Run against this cluster instead of starting one (Kafka,
        /// Redpanda, Sluice elsewhere); faults go through the commands
        /// below, in which {node} stands for the broker id.
        #[arg(long, requires_all = ["kill_cmd", "start_cmd"])]
        bootstrap_server: Option<String>,
        /// Kills broker {node} (SIGKILL or the like).
        #[arg(long)]
        kill_cmd: Option<String>,
        /// Starts broker {node} again.
        #[arg(long)]
        start_cmd: Option<String>,
        /// Stops broker {node} cleanly (SIGTERM or the like).
        #[arg(long)]
        terminate_cmd: Option<String>,
        /// Pauses broker {node} (SIGSTOP or the like).
        #[arg(long)]
        pause_cmd: Option<String>,
        /// Resumes a paused broker {node}.
        #[arg(long)]
        resume_cmd: Option<String>,
        /// The soak variant: repeat each scenario's faults, in cycles, for
        /// this many seconds while producing at its rate throughout.
        #[arg(long)]
        duration: Option<u64>,
        /// Write a JSON and a Markdown report and an SVG timeline per
        /// scenario, and README.md with the table, into this directory.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Judges a run from its producers' and consumers' event logs; exits 1
    /// if anything acknowledged was lost (unless --allow-loss), duplicated
    /// or reordered, or if the run acknowledged too little to judge.
    Check {
        #[arg(long = "producer", required = true)]
        producers: Vec<std::path::PathBuf>,
        #[arg(long = "consumer")]
        consumers: Vec<std::path::PathBuf>,
        /// Fewer acknowledged messages than this: no verdict (exit 2).
        #[arg(long, default_value_t = 100)]
        min_acked: u64,
        /// Loss is expected (acks=1, unclean election): reported, not failed.
        #[arg(long)]
        allow_loss: bool,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// Events to stdout, and to Prometheus text on `metrics` if given.
fn sink(metrics: Option<&str>) -> Result<events::Sink, String> {
    let out = events::Sink::stdout();
    let Some(addr) = metrics else {
        return Ok(out);
    };
    let registry = std::sync::Arc::new(metrics::Metrics::default());
    let bound = metrics::serve(addr, registry.clone())?;
    eprintln!("sluice-verify: metrics on http://{bound}/metrics");
    Ok(out.with_metrics(registry))
}

fn main() {
    let cli = Cli::parse();
    stop_on_signals();
    let stop = || STOP.load(Ordering::Relaxed);
    let outcome = match cli.command {
        Command::Producer {
            bootstrap_server,
            topic,
            max_messages,
            throughput,
            acks,
            enable_idempotence,
            retries,
            delivery_timeout_ms,
            value_prefix,
            config,
            metrics_listener,
        } => sink(metrics_listener.as_deref()).and_then(|out| {
            producer::run(
                producer::Options {
                    bootstrap: bootstrap_server,
                    topic,
                    max_messages,
                    throughput,
                    acks,
                    idempotence: enable_idempotence,
                    retries,
                    delivery_timeout_ms,
                    value_prefix,
                    config,
                    out,
                },
                &stop,
            )
            .map(drop)
        }),
        Command::Consumer {
            bootstrap_server,
            topic,
            group_id,
            auto_offset_reset,
            enable_auto_commit,
            auto_commit_interval_ms,
            commit_after_process,
            max_messages,
            assignment_strategy,
            verbose,
            config,
            metrics_listener,
        } => sink(metrics_listener.as_deref()).and_then(|out| {
            consumer::run(
                consumer::Options {
                    bootstrap: bootstrap_server,
                    topic,
                    group_id,
                    auto_offset_reset,
                    enable_auto_commit,
                    auto_commit_interval_ms,
                    commit_after_process,
                    max_messages,
                    assignment_strategy,
                    verbose,
                    config,
                    out,
                    idle_exit: None,
                    read_through: None,
                },
                &stop,
            )
        }),
        Command::Run {
            scenarios,
            sluice_bin,
            dir,
            bootstrap_server,
            kill_cmd,
            start_cmd,
            terminate_cmd,
            pause_cmd,
            resume_cmd,
            duration,
            report,
        } => {
            let external = bootstrap_server.map(|b| {
                cluster::ExternalCluster::new(
                    b,
                    kill_cmd.unwrap_or_default(),
                    start_cmd.unwrap_or_default(),
                    terminate_cmd,
                    pause_cmd,
                    resume_cmd,
                )
            });
            let soak = duration.map(std::time::Duration::from_secs);
            run_scenarios(&scenarios, sluice_bin, dir, external, soak, report)
        }
        Command::Check {
            producers,
            consumers,
            min_acked,
            allow_loss,
        } => run_check(&producers, &consumers, min_acked, allow_loss),
    };
    if let Err(e) = outcome {
        eprintln!("sluice-verify: {e}");
        std::process::exit(1);
    }
}

fn read_logs(paths: &[std::path::PathBuf]) -> Result<Vec<Vec<events::Event>>, String> {
    paths
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            Ok(events::parse(&text).0)
        })
        .collect()
}

fn run_check(
    producers: &[std::path::PathBuf],
    consumers: &[std::path::PathBuf],
    min_acked: u64,
    allow_loss: bool,
) -> Result<(), String> {
    let report = check::check(
        &read_logs(producers)?,
        &read_logs(consumers)?,
        check::Expect {
            min_acked,
            loss_allowed: allow_loss,
        },
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    eprintln!(
        "acknowledged {}, send errors {}, fatal client errors {}, consumed {}, lost {}, duplicated {}, order violations {}, \
         conflicting offsets {}, consumers backwards {} / skipped {}: {:?}",
        report.acked,
        report.send_errors,
        report.fatal_errors.len(),
        report.consumed,
        report.lost.len(),
        report.duplicated.len(),
        report.order_violations.len(),
        report.conflicting_offsets.len(),
        report.went_backwards.len(),
        report.skipped.len(),
        report.verdict
    );
    match report.verdict {
        check::Verdict::Pass => Ok(()),
        check::Verdict::Fail => std::process::exit(1),
        check::Verdict::Insufficient => {
            eprintln!("sluice-verify: too little traffic to judge (--min-acked {min_acked})");
            std::process::exit(2)
        }
    }
}

fn run_scenarios(
    paths: &[std::path::PathBuf],
    bin: Option<std::path::PathBuf>,
    dir: Option<std::path::PathBuf>,
    mut external: Option<cluster::ExternalCluster>,
    soak: Option<std::time::Duration>,
    report_dir: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let bin = match bin {
        Some(bin) => bin,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("sluice"),
    };
    let base = match dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("sluice-verify-{}", std::process::id())),
    };
    let mut outcomes = Vec::new();
    for path in paths {
        let mut scenario = scenario::load(path)?;
        if let Some(duration) = soak {
            scenario.soak(duration);
        }
        eprintln!("sluice-verify: {}: {}", scenario.name, scenario.description);
        let dir = base.join(&scenario.name);
        let _ = std::fs::remove_dir_all(&dir);
        let target = match external.as_mut() {
            Some(external) => scenario::Target::External(external),
            None => scenario::Target::Local(&bin),
        };
        let outcome = scenario::run(&scenario, target, &dir)?;
        for (what, at, outage) in &outcome.outages {
            eprintln!(
                "  {at} ms: {what}; next acknowledgement {}",
                outage.map_or_else(|| "never".to_string(), |o| format!("{o} ms later"))
            );
        }
        match &outcome.divergent_replicas {
            Some(d) if d.is_empty() => eprintln!("  replicas byte-identical once healed"),
            Some(d) => eprintln!(
                "  FAILED: replicas still differ once healed: {}",
                d.join(", ")
            ),
            None => {}
        }
        if let Some(group) = &outcome.group {
            eprintln!(
                "  consumer group: read more than once {}, unread {}, rebalances during the faults {}",
                group.redelivered,
                group.unread.len(),
                group.rebalances
            );
            for failure in &group.failures {
                eprintln!("  FAILED: {failure}");
            }
        }
        eprintln!("  logs and event logs in {}", dir.display());
        if let Some(report_dir) = &report_dir {
            report::write(report_dir, &outcome)?;
        }
        outcomes.push(outcome);
    }
    print!("{}", scenario::table(&outcomes));
    if let Some(report_dir) = &report_dir {
        report::index(report_dir, &outcomes)?;
        eprintln!("sluice-verify: reports in {}", report_dir.display());
    }
    if !scenario::passed(&outcomes) {
        std::process::exit(1);
    }
    Ok(())
}
