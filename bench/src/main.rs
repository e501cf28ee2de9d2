//! `sluice-bench`: load generators that report every figure next to a
//! baseline measured in the same run, as a ratio, because the machines this
//! runs on are shared and noisy.
//!
//! # Layout
//!
//! - `engine`: appends through the storage engine's public API (shards and
//!   all) and compares with a raw sequential write loop on the same disk.
//! - `wire`: the broker through a real Kafka client (librdkafka) over
//!   loopback: produce and consume rates, acknowledgement latency, broker
//!   CPU per GiB, against the engine's own append rate for the same bytes.
//! - `broker_process`: a broker started (and always stopped) by a
//!   benchmark, and a process's CPU time from /proc.
//! - `size`: parsing of sizes such as `512MiB`.

mod broker_process;
mod engine;
mod size;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Sluice benchmarks with same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append throughput and latency of the storage engine against a raw
    /// sequential write loop with the same fsync cadence.
    Engine(engine::Args),
    /// Produce and consume through librdkafka against a broker this
    /// command starts (or --bootstrap-server): MB/s, acknowledgement
    /// latency, broker CPU-seconds per GiB, and the ratio to the engine's
    /// own append rate for the same bytes.
    Wire(wire::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(args),
        Command::Wire(args) => wire::run(args),
    };
    if let Err(e) = result {
        eprintln!("sluice-bench: {e}");
        std::process::exit(1);
    }
}
