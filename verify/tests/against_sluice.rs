//! The verifiable producer and consumer against a real single-node Sluice
//! broker, and the checker on their logs: a clean run passes; the same
//! logs with an acknowledged message removed from what was read fail.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sluice` broker binary of this build (built by `cargo test
/// --workspace`, beside this test's own directory).
fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build the broker first (cargo build -p sluice-broker)",
        bin.display()
    );
    bin
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Broker {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(sluice_bin())
        .arg("serve")
        .args(["--set", &format!("listeners=PLAINTEXT://127.0.0.1:{port}")])
        .args(["--set", &format!("log.dirs={}", dir.path().display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts");
    // It prints one line once it listens (or exits, closing stdout).
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let broker = Broker {
        child,
        port,
        _dir: dir,
    };
    assert!(
        line.contains("listening on"),
        "the broker did not start: {line:?}"
    );
    broker
}

/// Runs `sluice-verify ARGS`, killed after `limit`; its output goes to
/// files (a pipe nobody reads would stall it).
fn verify(args: &[&str], limit: Duration) -> Output {
    let out = tempfile::tempfile().expect("temp file");
    let err = tempfile::tempfile().expect("temp file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-verify"))
        .args(args)
        .stdout(out.try_clone().expect("clone"))
        .stderr(err.try_clone().expect("clone"))
        .spawn()
        .expect("sluice-verify starts");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut bytes).expect("read");
        bytes
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// A run's status and stderr, for a failed assertion (stdout is long).
fn said(output: &Output) -> String {
    format!(
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )
}

fn lines_named(output: &Output, name: &str) -> usize {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"name\":\"{name}\"")))
        .count()
}

#[test]
fn a_clean_run_against_sluice_passes_the_checker_and_a_lost_message_fails_it() {
    let broker = start_broker();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let limit = Duration::from_secs(120);
    let produced = verify(
        &[
            "producer",
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            "verified",
            "--max-messages",
            "2000",
            "--value-prefix",
            "run1",
        ],
        limit,
    );
    assert!(produced.status.success(), "producer: {}", said(&produced));
    assert_eq!(lines_named(&produced, "producer_send_success"), 2000);
    assert_eq!(lines_named(&produced, "shutdown_complete"), 1);
    assert!(lines_named(&produced, "tool_data") >= 1);
    let consumed = verify(
        &[
            "consumer",
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            "verified",
            "--group-id",
            "verifiers",
            "--max-messages",
            "2000",
            "--verbose",
        ],
        limit,
    );
    assert!(consumed.status.success(), "consumer: {}", said(&consumed));
    assert_eq!(lines_named(&consumed, "record_data"), 2000);
    assert!(lines_named(&consumed, "partitions_assigned") >= 1);
    assert!(lines_named(&consumed, "offsets_committed") >= 1);

    let logs = tempfile::tempdir().expect("temp dir");
    let producer_log = logs.path().join("producer.jsonl");
    let consumer_log = logs.path().join("consumer.jsonl");
    std::fs::write(&producer_log, &produced.stdout).expect("write");
    std::fs::write(&consumer_log, &consumed.stdout).expect("write");
    let p = producer_log.to_str().unwrap();
    let c = consumer_log.to_str().unwrap();
    let checked = verify(&["check", "--producer", p, "--consumer", c], limit);
    assert!(checked.status.success(), "check: {}", said(&checked));
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("a JSON report");
    assert_eq!(report["acked"], 2000);
    assert_eq!(report["verdict"], "pass");

    // The same run, had the consumers missed one acknowledged message.
    let dropped: String = String::from_utf8_lossy(&consumed.stdout)
        .lines()
        .filter(|l| !l.contains("\"value\":\"run1.1234\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&consumer_log, dropped).expect("write");
    let checked = verify(&["check", "--producer", p, "--consumer", c], limit);
    assert_eq!(checked.status.code(), Some(1), "check: {}", said(&checked));
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("a JSON report");
    assert_eq!(report["lost"][0][0], "run1.1234");
}

/// Every scenario file, run by `sluice-verify run` one after another (two
/// runs side by side were quicker, but six debug brokers on two cores were
/// late enough with heartbeats of 1.5 s sessions to fence each other in
/// turn), judged as its file says: `expect_loss` scenarios may lose
/// (the seed scenario and a power loss of every replica must), all others
/// must not; every verdict passes.
#[test]
fn every_shipped_scenario_runs_and_judges_as_its_file_expects() {
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&scenarios)
        .expect("verify/scenarios")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    files.sort();
    let expect_loss: std::collections::BTreeSet<String> = files
        .iter()
        .filter(|p| {
            std::fs::read_to_string(p)
                .expect("scenario file")
                .lines()
                .any(|l| l.replace(' ', "") == "expect_loss=true")
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    let bin = sluice_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["run", "--sluice-bin", bin.to_str().unwrap()];
    args.extend(["--dir", dir.path().to_str().unwrap()]);
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let ran = verify(&args, Duration::from_secs(1500));
    let table = String::from_utf8_lossy(&ran.stdout).to_string();
    assert!(ran.status.success(), "{}\n{table}", said(&ran));
    // | scenario | acknowledged | lost | duplicated | order | outage | verdict |
    let rows: Vec<Vec<String>> = table
        .lines()
        .skip(2)
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(rows.len(), files.len(), "{table}");
    for row in &rows {
        assert_eq!(row[7], "Pass", "{table}");
        let lost: u64 = row[3].parse().expect("lost");
        if row[1] == "acks1-leader-crash" || row[1] == "power-loss-all" {
            // The seed scenario loses what only the dead leader had; a
            // power loss of every replica what the page caches held.
            assert!(lost > 0, "{} lost nothing:\n{table}", row[1]);
        } else if !expect_loss.contains(&row[1]) {
            assert_eq!(lost, 0, "{table}");
        }
    }
}

/// Brokers started by shell scripts, as a user's own cluster would be:
/// killed (by their pid files) when dropped.
struct ScriptedCluster {
    dir: tempfile::TempDir,
    nodes: usize,
}

impl Drop for ScriptedCluster {
    fn drop(&mut self) {
        for node in 1..=self.nodes {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(format!("{node}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    kill_pid(pid);
                }
            }
        }
    }
}

/// SIGKILL to a broker this test started.
fn kill_pid(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[test]
fn a_scenario_runs_against_a_cluster_it_did_not_start_through_command_hooks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..6)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("port"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let voters: Vec<String> = (0..3)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[3 + i]))
        .collect();
    let bin = sluice_bin();
    for i in 0..3 {
        let node = i + 1;
        let script = format!(
            "{bin} serve --set node.id={node} \
             --set listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{} \
             --set controller.quorum.voters={} --set log.dirs={}/data-{node} \
             --set broker.heartbeat.interval.ms=200 --set broker.session.timeout.ms=1500 \
             --set controller.quorum.election.timeout.ms=500 \
             > {}/broker-{node}.log 2>&1 &\necho $! > {}/{node}.pid\n",
            ports[i],
            ports[3 + i],
            voters.join(","),
            dir.path().display(),
            dir.path().display(),
            dir.path().display(),
            bin = bin.display(),
        );
        std::fs::write(dir.path().join(format!("start-{node}.sh")), script).expect("script");
    }
    let d = dir.path().display().to_string();
    let cluster = ScriptedCluster { dir, nodes: 3 };
    for node in 1..=3 {
        let started = Command::new("sh")
            .arg(format!("{d}/start-{node}.sh"))
            .status()
            .expect("sh");
        assert!(started.success());
    }
    let bootstrap: Vec<String> = ports[..3]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    // One hard kill of the leader, and its start again.
    let scenario = Path::new(&d).join("external-hard-kill.toml");
    std::fs::write(
        &scenario,
        "name = \"external-hard-kill\"\n\
         description = \"SIGKILL the leader of partition 0 through --kill-cmd, start it again through --start-cmd\"\n\
         [producer]\nmessages = 8000\nthroughput = 2000\n\
         [[fault]]\nat_ms = 1000\naction = \"kill\"\ntarget = \"leader\"\n\
         [[fault]]\nat_ms = 2500\naction = \"start\"\ntarget = \"last\"\n",
    )
    .expect("scenario file");
    let logs = format!("{d}/run");
    let kill = format!("kill -9 $(cat {d}/{{node}}.pid)");
    let start = format!("sh {d}/start-{{node}}.sh");
    let ran = verify(
        &[
            "run",
            "--bootstrap-server",
            &bootstrap.join(","),
            "--kill-cmd",
            &kill,
            "--start-cmd",
            &start,
            "--dir",
            &logs,
            scenario.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let table = String::from_utf8_lossy(&ran.stdout).to_string();
    assert!(ran.status.success(), "{}\n{table}", said(&ran));
    assert!(
        table.contains("| external-hard-kill | 8000 | 0 | 0 | 0 |"),
        "{table}"
    );
    assert!(table.contains("Pass"), "{table}");
    drop(cluster);
}
