//! `sluice dev-cluster`: N brokers on loopback as child processes, for
//! tests, benchmarks and trying replication out. The first three (or all,
//! if fewer) are controller voters; any more are brokers only
//! (`process.roles=broker`), following the metadata log as learners, as a
//! Kafka cluster keeps a small controller quorum however many brokers it
//! has.
//!
//! Picks free ports, starts `sluice serve` N times with node ids 1..=N,
//! their data in `DIR/broker-<id>/` and their logs in `DIR/broker-<id>.log`,
//! waits until each says it is listening, prints
//! `bootstrap.servers=host:port,…` on one line, and runs until SIGTERM or
//! SIGINT, which it passes on to every broker (each then shuts down
//! cleanly) before it exits, reporting any that did not exit cleanly. A
//! broker that dies meanwhile does not stop the others.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long each broker may take to say it is listening.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many brokers are controller voters.
const VOTERS: usize = 3;
/// How long each broker gets to shut down cleanly before it is killed:
/// more than a broker's controlled shutdown may take with the default
/// settings (3 attempts of up to 10 s, 5 s apart), should its controller
/// be unreachable; it then gives up and still closes its logs cleanly.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One started broker.
struct Member {
    id: usize,
    child: Child,
    log: PathBuf,
}

/// Starts the cluster, prints its bootstrap line, waits for one of
/// `signals` (blocked by the caller), and stops every broker.
pub fn run(
    brokers: usize,
    dir: &Path,
    extra: &[String],
    signals: &libc::sigset_t,
) -> Result<(), String> {
    if brokers == 0 {
        return Err("--brokers must be at least 1".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ports = free_ports(2 * brokers)?;
    let voters: Vec<String> = (0..brokers.min(VOTERS))
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[brokers + i]))
        .collect();
    let exe = std::env::current_exe().map_err(|e| format!("finding the sluice binary: {e}"))?;
    let mut members: Vec<Member> = Vec::new();
    let mut ready = Vec::new();
    for i in 0..brokers {
        let id = i + 1;
        let log = dir.join(format!("broker-{id}.log"));
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--set", &format!("node.id={id}")])
            .args([
                "--set",
                &format!(
                    "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    ports[i],
                    ports[brokers + i]
                ),
            ])
            .args([
                "--set",
                &format!("controller.quorum.voters={}", voters.join(",")),
            ])
            .args([
                "--set",
                if i < VOTERS {
                    "process.roles=broker,controller"
                } else {
                    "process.roles=broker"
                },
            ])
            .args([
                "--set",
                &format!("log.dirs={}", dir.join(format!("broker-{id}")).display()),
            ])
            // The brokers share this machine's cores: each pinning its
            // shard i to core i would stack every broker's shard 0 on core
            // 0 and keep the scheduler from moving a waiting one to an
            // idle core (acks=all p99 at 64 MB/s, three brokers on two
            // cores: about 15% lower unpinned). `--set` can turn it back.
            .args(["--set", "sluice.pin.cores=false"])
            // Three brokers write every byte three times into one
            // machine's page cache; each keeps only its partitions' newest
            // bytes there, so that appends reuse freed pages (on virtual
            // machines whose host takes back idle memory, fresh pages cost
            // ten times as much: docs/ENGINE.md, section 7). A consumer far
            // behind reads from the disk. `--set` can turn it back.
            .args([
                "--set",
                &format!(
                    "sluice.page.cache.window.bytes={}",
                    sluice_broker::config::DEV_CLUSTER_PAGE_CACHE_WINDOW_BYTES
                ),
            ]);
        for setting in extra {
            command.args(["--set", setting]);
        }
        let spawned = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                stop(&mut members);
                return Err(format!("starting broker {id}: {e}"));
            }
        };
        ready.push(watch_ready(&mut child));
        members.push(Member { id, child, log });
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for (member, ready) in members.iter_mut().zip(&ready) {
        loop {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(signal) = pending_signal(signals) {
                        eprintln!(
                            "sluice dev-cluster: signal {signal} during start-up; stopping the brokers"
                        );
                        stop(&mut members);
                        return Ok(());
                    }
                    if let Ok(Some(status)) = member.child.try_wait() {
                        let why = format!(
                            "broker {} exited during start-up ({status}); see {}",
                            member.id,
                            member.log.display()
                        );
                        stop(&mut members);
                        return Err(why);
                    }
                }
                Err(_) => {
                    let why = format!(
                        "broker {} was not ready within {READY_TIMEOUT:?}; see {}",
                        member.id,
                        member.log.display()
                    );
                    stop(&mut members);
                    return Err(why);
                }
            }
        }
    }
    let bootstrap: Vec<String> = ports[..brokers]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    println!("bootstrap.servers={}", bootstrap.join(","));
    drop(std::io::stdout().flush());
    eprintln!(
        "sluice dev-cluster: {brokers} brokers, logs in {}; SIGTERM or Ctrl-C stops them",
        dir.display()
    );
    let mut signal = 0;
    // SAFETY: `signals` is the set the caller blocked; sigwait stores the
    // signal.
    unsafe { libc::sigwait(signals, &mut signal) };
    stop(&mut members);
    Ok(())
}

/// Takes a pending SIGTERM or SIGINT (blocked, see `main`) without
/// waiting; its number, or `None` if none is pending.
fn pending_signal(signals: &libc::sigset_t) -> Option<i32> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `signals` is an initialised set; a null info pointer is
    // allowed; `zero` lives across the call.
    let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &zero) };
    (signal > 0).then_some(signal)
}

/// A channel told once the child prints its readiness line; the thread
/// keeps draining stdout so the child never blocks on a full pipe.
fn watch_ready(child: &mut Child) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("sluice listening on") {
                    let _ = tx.send(());
                }
            }
        });
    }
    rx
}

/// Stops the brokers one at a time, the last started first: SIGTERM, then
/// a bounded wait, then SIGKILL if it still runs. Stopped all at once,
/// the active controller could leave between another broker's
/// controlled-shutdown request and its answer, and that broker would wait
/// out every attempt (about 40 s). One at a time, each hands its
/// leaderships to brokers still running while a quorum of controllers
/// lives, and the last sees no one left to take them and stops at once.
fn stop(members: &mut [Member]) {
    for m in members.iter_mut().rev() {
        if let Ok(Some(_)) = m.child.try_wait() {
            continue;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match m.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("sluice dev-cluster: broker {} exited with {status}", m.id);
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    eprintln!(
                        "sluice dev-cluster: broker {} did not stop; killing it",
                        m.id
                    );
                    let _ = m.child.kill();
                    let _ = m.child.wait();
                    break;
                }
            }
        }
    }
}

/// `n` distinct ports the kernel had free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("finding a free port: {e}"))?;
        listeners.push(listener);
    }
    // All held at once, so they are distinct; released together.
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("finding a free port: {e}"))
        })
        .collect()
}
