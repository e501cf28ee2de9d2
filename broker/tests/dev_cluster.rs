//! `sluice dev-cluster`: starts three brokers, prints one bootstrap line
//! once all are ready, serves real clients, and stops every broker cleanly
//! on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kcat, poll_until};

/// Kills the dev-cluster (and so, through its own handling, nothing else)
/// if the test fails before it stopped it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(40);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn dev_cluster_starts_three_brokers_and_stops_them_on_sigterm() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-dc-")
        .tempdir()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dev-cluster", "--brokers", "3", "--dir"])
        .arg(dir.path())
        .args(["--set", "controller.quorum.election.timeout.ms=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice dev-cluster");
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("a bootstrap line");
    let servers = line
        .strip_prefix("bootstrap.servers=")
        .unwrap_or_else(|| panic!("not a bootstrap line: {line}"));
    assert_eq!(servers.split(',').count(), 3, "{servers}");

    let first = servers.split(',').next().unwrap();
    poll_until(Duration::from_secs(30), "kcat to see three brokers", || {
        let out = kcat(&["-L", "-b", first, "-m", "10"], None);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains(" 3 brokers:")).then_some(())
    });

    // The brokers share the machine's cores: none pins its shards.
    let brokers = children(running.0.id());
    assert_eq!(brokers.len(), 3, "broker processes {brokers:?}");
    for pid in brokers {
        let all = allowed_cpus(&format!("/proc/{pid}/status"));
        let shards = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|task| task.path())
            .filter(|task| {
                std::fs::read_to_string(task.join("comm"))
                    .is_ok_and(|name| name.starts_with("sluice-shard"))
            })
            .collect::<Vec<_>>();
        assert!(!shards.is_empty(), "broker {pid} has no shard threads");
        for task in shards {
            let cpus = allowed_cpus(&task.join("status").display().to_string());
            assert_eq!(cpus, all, "{} is pinned", task.display());
        }
    }

    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(running.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = poll_until(Duration::from_secs(90), "the dev-cluster to exit", || {
        running.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("broker-{id}.log"))).unwrap();
        assert!(
            log.contains("shutdown complete"),
            "broker {id} did not shut down cleanly:\n{log}"
        );
    }
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The parent pid is the second field after the parenthesised
            // command name.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// The `Cpus_allowed_list` line of a `/proc/.../status` file.
fn allowed_cpus(status: &str) -> String {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|cpus| cpus.trim().to_string())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status}"))
}
