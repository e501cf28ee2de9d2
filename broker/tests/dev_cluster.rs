//! `sluice dev-cluster`: starts three brokers, prints one bootstrap line
//! once all are ready, serves real clients, and stops every broker cleanly
//! on SIGTERM or SIGINT, also while they are still starting.

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
    let (dir, mut running, lines) = spawn_dev_cluster(&[]);
    let line = lines
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

    // Each broker keeps a window of its partitions in the page cache
    // (a broker started alone does not: -1).
    for (i, server) in servers.split(',').enumerate() {
        assert_eq!(
            broker_setting(server, i + 1, "sluice.page.cache.window.bytes"),
            (64 << 20).to_string(),
            "{server}"
        );
    }

    signal_and_wait(&mut running, libc::SIGTERM);
    assert_clean_shutdowns(dir.path());
}

/// One setting of the broker `node` at `addr`, from DescribeConfigs.
fn broker_setting(addr: &str, node: usize, key: &str) -> String {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::DescribeConfigsRequest;
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(kafka_protocol::protocol::StrBytes::from_string(
                node.to_string(),
            ))
            .with_configuration_keys(Some(vec![
                kafka_protocol::protocol::StrBytes::from_string(key.to_string()),
            ]))]);
    let response = common::cluster::ask(addr, 1, &request);
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{addr}: {result:?}");
    let entry = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .unwrap_or_else(|| panic!("{addr}: no {key} in {result:?}"));
    entry
        .value
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default()
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

/// Starts `sluice dev-cluster --brokers 3` in a new temporary directory
/// with `extra` settings; its stdout lines come through the receiver.
fn spawn_dev_cluster(
    extra: &[&str],
) -> (
    tempfile::TempDir,
    Running,
    std::sync::mpsc::Receiver<String>,
) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-dc-")
        .tempdir()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dev-cluster", "--brokers", "3", "--dir"])
        .arg(dir.path())
        .args(["--set", "controller.quorum.election.timeout.ms=300"])
        .args(extra.iter().flat_map(|setting| ["--set", setting]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice dev-cluster");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (dir, Running(child), rx)
}

/// Every broker's log says it shut down cleanly.
fn assert_clean_shutdowns(dir: &std::path::Path) {
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("broker-{id}.log"))).unwrap();
        assert!(
            log.contains("shutdown complete"),
            "broker {id} did not shut down cleanly:\n{log}"
        );
    }
}

/// Sends `signal` to the dev-cluster and waits for it to exit 0.
fn signal_and_wait(running: &mut Running, signal: i32) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(running.0.id() as libc::pid_t, signal) };
    let status = poll_until(Duration::from_secs(90), "the dev-cluster to exit", || {
        running.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
}

#[test]
fn ctrl_c_stops_the_dev_cluster_as_sigterm_does() {
    let (dir, mut running, lines) = spawn_dev_cluster(&[]);
    let line = lines
        .recv_timeout(Duration::from_secs(90))
        .expect("a bootstrap line");
    assert!(line.starts_with("bootstrap.servers="), "{line}");
    signal_and_wait(&mut running, libc::SIGINT);
    assert_clean_shutdowns(dir.path());
}

#[test]
fn a_signal_during_start_up_stops_the_brokers_without_waiting_for_them() {
    // Brokers stopped during start-up all at once need no controlled
    // shutdown, which would wait for controllers that are leaving too.
    let (_dir, mut running, lines) = spawn_dev_cluster(&["controlled.shutdown.enable=false"]);
    // Each broker is paused as soon as it appears, long before it could
    // be ready (it needs a quorum of the others): the cluster cannot
    // become ready while they are paused.
    let mut brokers: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while brokers.len() < 3 {
        assert!(Instant::now() < deadline, "three broker processes");
        for pid in children(running.0.id()) {
            // Only once it runs the broker: paused between fork and exec,
            // it would hold the dev-cluster's spawn of it.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let serving = cmdline.split(|b| *b == 0).any(|arg| arg == b"serve");
            if serving && !brokers.contains(&pid) {
                // SAFETY: kill(2) on a child of our child; pausing it.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                brokers.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(running.0.id() as libc::pid_t, libc::SIGTERM) };
    // The dev-cluster passes it on at once, without waiting for readiness,
    // to the last broker it started first (then to each in turn, as each
    // exits).
    let last = *brokers.last().unwrap();
    poll_until(
        Duration::from_secs(30),
        "the dev-cluster to send SIGTERM to a broker that is not ready",
        || sigterm_pending(last).then_some(()),
    );
    for pid in &brokers {
        // SAFETY: as above; resuming it.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGCONT) };
    }
    let status = poll_until(Duration::from_secs(90), "the dev-cluster to exit", || {
        running.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    let printed: Vec<String> = lines.try_iter().collect();
    assert!(
        printed.iter().all(|l| !l.starts_with("bootstrap.servers=")),
        "a cluster stopped during start-up said it was ready: {printed:?}"
    );
    // Every broker it started was stopped and reaped with it.
    for pid in brokers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "broker {pid} outlived the dev-cluster"
        );
    }
}

/// Whether SIGTERM is pending for process `pid` (its `ShdPnd` mask).
fn sigterm_pending(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("ShdPnd:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}
