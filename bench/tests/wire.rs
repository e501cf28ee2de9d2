//! `sluice-bench wire` end to end: the real benchmark binary starts the real
//! broker binary, librdkafka produces and consumes, and the broker is gone
//! afterwards whether the run succeeded or failed.
//!
//! The broker binary is the one cargo builds beside this test's binary
//! (`target/<profile>/sluice`); `cargo test --workspace` builds it.
//! No assertion here is about speed.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Bound on one benchmark run in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn broker_bin() -> PathBuf {
    // target/<profile>/deps/wire-<hash> -> target/<profile>/sluice
    let me = std::env::current_exe().expect("test binary path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.is_file(),
        "{} is missing: build the broker first (`cargo build -p sluice-broker`, or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// Runs `sluice-bench wire` with a hard timeout.
fn run_wire(dir: &std::path::Path, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("wire")
        .arg("--dir")
        .arg(dir)
        .arg("--broker-bin")
        .arg(broker_bin())
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice-bench");
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "sluice-bench wire did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The broker's pid from the benchmark's `started ... (pid N)` line.
fn broker_pid(stderr: &str) -> u32 {
    let line = stderr
        .lines()
        .find(|l| l.contains("sluice-bench: started"))
        .unwrap_or_else(|| panic!("no `started` line in stderr:\n{stderr}"));
    let after = line.split("(pid ").nth(1).expect("pid in the started line");
    after
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unreadable pid in {line:?}"))
}

/// True while a process with this pid exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[test]
fn wire_benchmark_reads_back_every_record_and_reports_broker_cpu() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_wire(
        dir.path(),
        &[
            "--records",
            "3000",
            "--record-size",
            "512",
            "--partitions",
            "3",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--acks",
            "all",
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sluice-bench wire failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    assert_eq!(report["workload"]["records"], 3000);
    assert_eq!(report["workload"]["acks"], "all");
    assert!(report["produce"]["records_s"].as_f64().unwrap() > 0.0);
    assert!(report["consume"]["records_s"].as_f64().unwrap() > 0.0);
    // CPU time is read from /proc for the broker the benchmark started.
    assert!(report["produce"]["broker_cpu_s"].as_f64().is_some());
    assert!(report["consume"]["broker_cpu_s"].as_f64().is_some());
    assert!(report["produce"]["ack_p50_us"].as_u64().unwrap() >= 1);
    // The timeline's slowest acknowledgement is the histogram's maximum
    // (to its three significant digits).
    let timeline: Vec<u64> = report["produce"]["ack_max_us_per_100ms"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let slowest = *timeline.iter().max().expect("a step with acknowledgements");
    let max = report["produce"]["ack_max_us"].as_u64().unwrap();
    assert!(
        slowest <= max && slowest * 1002 / 1000 + 1 >= max,
        "{timeline:?} against {max}"
    );
    // The engine baseline ran on the same records.
    assert!(report["engine"]["records"].as_u64().unwrap() >= 3000);
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
    assert!(
        !alive(broker_pid(&stderr)),
        "the broker outlived the benchmark"
    );
    // Nothing of the benchmark's data is left behind.
    assert!(!dir.path().join("sluice-bench-wire").exists());
}

#[test]
fn wire_benchmark_stops_its_broker_when_the_run_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The broker starts, then the consumer cannot be created: an error path
    // after the broker is up.
    let output = run_wire(
        dir.path(),
        &[
            "--records",
            "100",
            "--no-engine",
            "--consumer-set",
            "no.such.librdkafka.setting=1",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the run should fail on the unknown consumer setting; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("no.such.librdkafka.setting"),
        "the error should name the bad setting; stderr:\n{stderr}"
    );
    assert!(
        !alive(broker_pid(&stderr)),
        "the broker outlived the failed benchmark"
    );
}
