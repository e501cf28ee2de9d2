//! `sluice`: the broker. `sluice` alone starts a single node on
//! 127.0.0.1:9092 with data in ./sluice-data; `sluice serve --config
//! server.properties --set key=value` reads Kafka-style configuration.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice_broker::config::BrokerConfig;
use sluice_broker::server;

mod dev_cluster;

#[derive(Parser)]
#[command(name = "sluice", about = "A Kafka-compatible message log")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve {
        /// A Kafka-style server.properties file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one setting, e.g. --set log.dirs=/data (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Start N brokers on free loopback ports, each a controller voter,
    /// print `bootstrap.servers=…` once all are ready, and stop them all on
    /// SIGTERM or Ctrl-C.
    DevCluster {
        /// How many brokers.
        #[arg(long, default_value_t = 3)]
        brokers: usize,
        /// Where their data (`broker-<id>/`) and logs (`broker-<id>.log`) go.
        #[arg(long)]
        dir: PathBuf,
        /// A setting for every broker, e.g. --set min.insync.replicas=2
        /// (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; the mask
    // is set before any other thread exists, so every thread inherits it and
    // only the main thread's sigwait sees these signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn load_pairs(config: Option<PathBuf>, set: Vec<String>) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    if let Some(path) = config {
        let file =
            std::fs::File::open(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let map = java_properties::read(std::io::BufReader::new(file))
            .map_err(|e| format!("parsing {}: {e}", path.display()))?;
        let mut entries: Vec<(String, String)> = map.into_iter().collect();
        entries.sort();
        pairs.extend(entries);
    }
    for item in set {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("--set {item:?}: expected KEY=VALUE"))?;
        pairs.push((key.trim().to_string(), value.to_string()));
    }
    Ok(pairs)
}

fn main() {
    sluice_broker::alloc::keep_freed_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let signals = block_termination_signals();
    let (config, set) = match cli.command {
        Some(Command::Serve { config, set }) => (config, set),
        Some(Command::DevCluster { brokers, dir, set }) => {
            if let Err(e) = dev_cluster::run(brokers, &dir, &set, &signals) {
                eprintln!("sluice dev-cluster: {e}");
                std::process::exit(1);
            }
            return;
        }
        None => (None, Vec::new()),
    };
    let pairs = match load_pairs(config, set) {
        Ok(pairs) => pairs,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    };
    let config = match BrokerConfig::from_pairs(&pairs) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    };
    let listen = config.listen;
    let broker = match server::start(config) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(1);
        }
    };
    println!("sluice listening on {listen}");
    use std::io::Write;
    drop(std::io::stdout().flush());
    let mut signal = 0;
    // SAFETY: `signals` is the set blocked above; sigwait stores the signal.
    unsafe { libc::sigwait(&signals, &mut signal) };
    tracing::info!(signal, "shutting down");
    // Leaderships move to other brokers first; then this broker stops
    // following, and its logs are flushed and closed.
    // Group memberships first, while this broker still coordinates them.
    server::store_group_memberships(&broker);
    server::controlled_shutdown(&broker);
    server::checkpoint_high_watermarks(&broker, None);
    tracing::info!("flushing and closing logs");
    // No metadata changes from here on; every committed record is durable.
    broker.controller.stop();
    // Connections hold the broker too, so the engine is closed through a
    // shared reference: every log is flushed and closed, then the shards stop.
    let failed = match broker.engine.close() {
        // A log directory that lost writes must not be vouched for.
        Ok(()) if broker.controller.storage() == sluice_broker::controller::Storage::Offline => {
            tracing::warn!("the log directory failed during this run: no clean-shutdown marker");
            false
        }
        Ok(()) => {
            // The next start knows nothing written here was lost.
            let marker = broker.config.log_dir.join(server::CLEAN_SHUTDOWN_FILE);
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!(error = %e, "writing the clean-shutdown marker");
            }
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "closing the logs failed");
            true
        }
    };
    tracing::info!("shutdown complete");
    std::process::exit(if failed { 1 } else { 0 });
}
