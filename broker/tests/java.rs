//! Apache Kafka's Java client, the one most Kafka users run, against the
//! `sluice` binary this build produced: broker/tests/java/JavaClientCheck.java
//! is compiled with `javac` and run against a real broker.
//!
//! The client's jars (kafka-clients 3.9 with slf4j-api, lz4-java,
//! snappy-java and zstd-jni) come from the PyPI wheel
//! `shigawire-apache-flink-libraries`; `.ci/run` unpacks them into
//! `$SLUICE_JAVA_CLIENTS`, by default `~/.cache/sluice/java-clients`
//! (`$XDG_CACHE_HOME/sluice/java-clients` where that is set). Where Java or
//! the jars are missing this test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{
    leader_alone_in_sync, leader_and_isr, produce_committed, set_topic_config, signal, Cluster,
    SETTLE,
};
use common::{poll_until, Broker};

const JARS: [&str; 5] = [
    "kafka-clients",
    "slf4j-api",
    "lz4-java",
    "snappy-java",
    "zstd-jni",
];
/// Hard limit on the Java program (it takes a few seconds).
const JAVA_TIMEOUT: Duration = Duration::from_secs(180);

/// Where `.ci/run` puts the jars.
fn jar_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_JAVA_CLIENTS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    cache.join("sluice").join("java-clients")
}

/// Panics with how to get Java and the jars unless both are there.
fn require_java_and_jars(jars: &Path) {
    let install = format!(
        "the Java client test needs java and javac (17+) and the kafka-clients jars in {}; \
         .ci/run installs them (it pip-downloads the wheel shigawire-apache-flink-libraries \
         and unpacks pyflink/lib/{{{}}}.jar there)",
        jars.display(),
        JARS.join(",")
    );
    for tool in ["java", "javac"] {
        let runs = Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(runs, "{tool} does not run: {install}");
    }
    for jar in JARS {
        let path = jars.join(format!("{jar}.jar"));
        assert!(path.is_file(), "{} is missing: {install}", path.display());
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            eprintln!("killed after {timeout:?}");
            break status;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The check compiled with `javac` into a temporary directory; returns the
/// directory (kept while it lives) and the classpath to run it with.
fn compile_check() -> (tempfile::TempDir, String) {
    let jars = jar_dir();
    require_java_and_jars(&jars);
    let classes = tempfile::Builder::new()
        .prefix("sluice-java-")
        .tempdir()
        .expect("temp dir");
    let sources = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java");
    let mut javac = Command::new("javac");
    javac
        .arg("-d")
        .arg(classes.path())
        .arg("-cp")
        .arg(jars.join("kafka-clients.jar"))
        .arg(format!("{sources}/JavaClientCheck.java"))
        .arg(format!("{sources}/TruncationCheck.java"))
        .arg(format!("{sources}/LeaderKillCheck.java"));
    let compiled = run_with_timeout(javac, JAVA_TIMEOUT);
    assert!(
        compiled.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let classpath = format!("{}:{}/*", classes.path().display(), jars.display());
    (classes, classpath)
}

/// Runs the check against `bootstrap`; returns its stdout, or why not.
fn run_check(
    classpath: &str,
    bootstrap: &str,
    topic: &str,
    replication: i16,
) -> Result<String, String> {
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(classpath)
        .arg("JavaClientCheck")
        .arg(bootstrap)
        .arg(topic)
        .arg("3")
        .arg("1000")
        .arg(replication.to_string());
    let run = run_with_timeout(java, JAVA_TIMEOUT);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        return Err(format!(
            "the Java client check failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            run.status
        ));
    }
    for step in [
        format!("created {topic} with 3 partitions"),
        "produced 1000 records to 3 partitions".to_string(),
        "consumed 1000 records once each".to_string(),
        "a second consumer in the group read only the 10 new records".to_string(),
    ] {
        if !stdout.contains(&step) {
            return Err(format!("missing step {step:?}:\n{stdout}\n{stderr}"));
        }
    }
    Ok(stdout)
}

#[test]
fn java_client_produces_idempotently_and_a_consumer_group_reads_once_and_resumes() {
    let (_classes, classpath) = compile_check();
    // No initial rebalance delay: each consumer is a new group generation.
    let mut broker = Broker::start_with(&[("group.initial.rebalance.delay.ms", "0")]);
    if let Err(why) = run_check(&classpath, &broker.addr(), "java-clients", 1) {
        broker.fail(&why);
    }
    broker.assert_running_after("the Java client check");
}

/// The same check against three brokers, with three replicas per
/// partition: the client finds each partition's leader and its group's
/// coordinator among them, and acks=all waits for the followers.
#[test]
fn java_client_works_against_a_three_broker_cluster_with_three_replicas() {
    let (_classes, classpath) = compile_check();
    let cluster = Cluster::start_with(3, &[("group.initial.rebalance.delay.ms", "0")]);
    if let Err(why) = run_check(&classpath, &cluster.bootstrap(), "java-cluster", 3) {
        cluster.brokers[0].fail(&why);
    }
}

/// A Java program run with its stdin and stdout piped, killed on drop.
struct Interactive {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Interactive {
    fn start(mut cmd: Command) -> Interactive {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn java");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// The first line (from now) that contains `what`, within `timeout`.
    fn expect_line(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what:?} from the Java program; it printed:\n{}",
                    self.seen
                ),
            }
        }
    }

    fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("writing to the Java program");
        stdin.flush().expect("flush");
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// KIP-320 with Apache Kafka's consumer: it read records only the leader
/// had (its follower paused out of the ISR); the leader dies and the
/// follower is elected uncleanly. Polling on, the client asks the new
/// leader where the epoch of its last record ends, finds that below its
/// position, and (auto.offset.reset=none) throws LogTruncationException
/// instead of silently reading on from a position that no longer exists.
#[test]
fn the_java_consumer_detects_the_truncation_an_unclean_election_causes() {
    let (_classes, classpath) = compile_check();
    let (mut cluster, leader, follower, third) = leader_alone_in_sync("trunc");
    // Committed by the leader alone (min.insync.replicas=1).
    for _ in 0..5 {
        produce_committed(cluster.broker(leader), "trunc", 0);
    }
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(&classpath)
        .arg("TruncationCheck")
        .arg(cluster.bootstrap())
        .arg("trunc")
        .arg("6");
    let mut consumer = Interactive::start(java);
    consumer.expect_line("read 6 records up to offset 6", JAVA_TIMEOUT);

    cluster.brokers[leader as usize - 1].kill9();
    signal(cluster.broker(follower), libc::SIGCONT);
    set_topic_config(
        cluster.broker(third),
        "trunc",
        "unclean.leader.election.enable",
        "true",
    );
    poll_until(SETTLE, "the out-of-sync replica to lead", || {
        (leader_and_isr(cluster.broker(third), "trunc", 0).0 == follower).then_some(())
    });
    consumer.say("go");
    let line = consumer.expect_line("truncation detected", JAVA_TIMEOUT);
    // The new leader has the first record only: the divergence is at 1.
    assert!(line.contains("offset=1"), "{line}");
}

/// Apache Kafka's producer (idempotent, acks=all) keeps going when a
/// partition's leader is SIGKILLed half-way with records in flight: every
/// record is acknowledged once, and read back once, at the offset its
/// acknowledgement named, each key's records in the order sent.
#[test]
fn the_java_producer_loses_and_duplicates_nothing_when_a_leader_is_killed() {
    let (_classes, classpath) = compile_check();
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
        ],
    );
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(&classpath)
        .arg("LeaderKillCheck")
        .arg(cluster.bootstrap())
        .arg("killed")
        .arg("6000");
    let mut check = Interactive::start(java);
    check.expect_line("created", JAVA_TIMEOUT);
    let (leader, _) = leader_and_isr(cluster.broker(1), "killed", 0);
    assert!(leader > 0, "partition 0 has no leader");
    check.expect_line("half-way", JAVA_TIMEOUT);
    cluster.brokers[leader as usize - 1].kill9();
    let line = check.expect_line("OK", JAVA_TIMEOUT);
    assert_eq!(line, "OK acked=6000");
}
