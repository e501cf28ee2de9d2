//! Shared helpers for the broker's integration tests: a `Broker` that runs
//! the real `sluice` binary on a free port with a private data directory, and
//! a `kcat` runner with a hard timeout.
//!
//! Nothing here sleeps to synchronise with the broker: readiness is the
//! `sluice listening on ...` line on stdout, exits are observed with
//! `try_wait`, and every wait has a deadline.

#![allow(dead_code)]

pub mod cluster;
pub mod raw;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the broker may take to print its `listening on` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard limit on one kcat invocation.
pub const KCAT_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of the bounded `try_wait` polling loops.
const POLL: Duration = Duration::from_millis(10);

/// A running `sluice serve` process with its own port and data directory.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    /// Holds `data/` (log.dirs) and `stderr.log`.
    dir: tempfile::TempDir,
    extra: Vec<(String, String)>,
    /// Lines of stdout after the readiness line (drained by a thread so the
    /// broker never blocks on a full pipe).
    stdout_tail: Option<thread::JoinHandle<Vec<String>>>,
    /// The first stdout lines, until the readiness line has been seen.
    stdout_head: Option<mpsc::Receiver<String>>,
    /// Set once a failure message has included the broker's stderr, so Drop
    /// does not print it a second time.
    stderr_shown: std::cell::Cell<bool>,
}

impl Broker {
    /// Starts a broker with the default settings.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra `--set key=value` pairs.
    pub fn start_with(extra: &[(&str, &str)]) -> Broker {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The port is free when we look but may be taken before the broker
        // binds it; retry with a fresh port (and directory) only in that case.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = broker_dir();
            let mut broker = Broker {
                child: None,
                port: free_port(),
                dir,
                extra: extra.clone(),
                stdout_tail: None,
                stdout_head: None,
                stderr_shown: std::cell::Cell::new(false),
            };
            match broker.spawn_and_wait_ready() {
                Ok(()) => return broker,
                Err(StartError::AddrInUse) if attempt < 3 => continue,
                Err(e) => broker.fail(&format!("broker did not start: {e:?}")),
            }
        }
    }

    /// `127.0.0.1:PORT`, for kcat's `-b` and raw TCP clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory given as `log.dirs`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Everything the broker wrote to stderr so far (all runs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Panics (with the broker's stderr) if the process has exited.
    pub fn assert_running(&mut self) {
        self.assert_running_after("");
    }

    /// Like `assert_running`, naming what was done just before.
    pub fn assert_running_after(&mut self, what: &str) {
        let status = match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait"),
            None => self.fail("broker is not started"),
        };
        if let Some(status) = status {
            self.child = None;
            let after = if what.is_empty() {
                String::new()
            } else {
                format!(" after {what}")
            };
            self.fail(&format!("broker exited unexpectedly{after}: {status}"));
        }
    }

    /// SIGTERM, wait for the exit (bounded), assert exit status 0.
    pub fn stop(&mut self) {
        let pid = match self.child.as_ref() {
            Some(c) => c.id() as libc::pid_t,
            None => self.fail("stop(): broker is not running"),
        };
        // SAFETY: plain kill(2) on the pid of our own child, which has not
        // been reaped yet (we hold the Child and have not waited on it).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) => {
                self.child = None;
                self.join_stdout();
                if status.code() != Some(0) {
                    self.fail(&format!(
                        "broker did not exit cleanly after SIGTERM: {status}"
                    ));
                }
            }
            None => {
                self.kill9();
                self.fail(&format!(
                    "broker did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it)"
                ));
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_stdout();
    }

    /// Starts the broker again on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again(): the previous process is still running"
        );
        if let Err(e) = self.spawn_and_wait_ready() {
            self.fail(&format!("broker did not restart: {e:?}"));
        }
    }

    /// Panics with `msg` and the broker's stderr.
    pub fn fail(&self, msg: &str) -> ! {
        self.stderr_shown.set(true);
        panic!(
            "{msg}\n--- broker stderr ({}) ---\n{}\n--- end of broker stderr ---",
            self.stderr_path().display(),
            self.stderr()
        );
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve")
            .arg("--set")
            .arg(format!("listeners=PLAINTEXT://127.0.0.1:{}", self.port))
            .arg("--set")
            .arg(format!("log.dirs={}", self.data_dir().display()))
            .arg("--set")
            .arg("node.id=1");
        for (k, v) in &self.extra {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Starts a broker on `port` with `extra` settings without waiting for
    /// it: the brokers of a cluster wait for each other before they are
    /// ready. [`Broker::wait_ready`] then waits.
    pub fn spawn_with(port: u16, extra: &[(String, String)]) -> Broker {
        let dir = broker_dir();
        let mut broker = Broker {
            child: None,
            port,
            dir,
            extra: extra.to_vec(),
            stdout_tail: None,
            stdout_head: None,
            stderr_shown: std::cell::Cell::new(false),
        };
        broker.spawn();
        broker
    }

    /// Waits until a broker started by [`Broker::spawn_with`] (or
    /// [`Broker::spawn_again`]) is ready.
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.wait_for_ready_line() {
            self.fail(&format!("broker did not start: {e:?}"));
        }
    }

    /// Starts the broker again without waiting (see [`Broker::spawn_with`]).
    pub fn spawn_again(&mut self) {
        assert!(self.child.is_none(), "spawn_again(): still running");
        self.spawn();
    }

    fn spawn_and_wait_ready(&mut self) -> Result<(), StartError> {
        self.spawn();
        self.wait_for_ready_line()
    }

    fn spawn(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .expect("open stderr log");
        let _ = writeln!(
            log,
            "=== test harness: starting sluice on port {} ===",
            self.port
        );
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().expect("stdout pipe");
        self.child = Some(child);

        // A thread reads stdout line by line: the first lines go through the
        // channel, and it keeps draining until EOF.
        let (tx, rx) = mpsc::channel::<String>();
        let handle = thread::spawn(move || {
            let mut rest = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = line.trim_end().to_string();
                        if tx.send(l.clone()).is_err() {
                            rest.push(l);
                        }
                    }
                }
            }
            rest
        });
        self.stdout_tail = Some(handle);
        self.stdout_head = Some(rx);
    }

    fn wait_for_ready_line(&mut self) -> Result<(), StartError> {
        let rx = self
            .stdout_head
            .take()
            .expect("wait_for_ready_line after spawn");
        let expected = format!("sluice listening on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if line.contains("listening on") {
                        if line.trim() != expected {
                            return Err(StartError::WrongLine {
                                expected,
                                got: line,
                            });
                        }
                        return Ok(());
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting; the try_wait
                    // below observes it (bounded by the deadline).
                    thread::sleep(POLL);
                }
            }
            let status = self.child.as_mut().unwrap().try_wait().expect("try_wait");
            if let Some(status) = status {
                self.child = None;
                let stderr = self.stderr();
                if stderr.contains("in use") || stderr.contains("AddrInUse") {
                    return Err(StartError::AddrInUse);
                }
                return Err(StartError::Exited {
                    status,
                    stdout: seen,
                });
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(StartError::NotReady {
                    timeout: READY_TIMEOUT,
                    stdout: seen,
                });
            }
        }
    }

    /// Waits (bounded) for a broker that should stop by itself, such as
    /// one refusing its configuration, and returns how it exited.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let Some(status) = self.wait_exit(timeout) else {
            self.fail("the broker did not exit")
        };
        self.child = None;
        self.stdout_head = None;
        self.join_stdout();
        status
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    fn join_stdout(&mut self) {
        if let Some(h) = self.stdout_tail.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_stdout();
        if thread::panicking() && !self.stderr_shown.get() {
            eprintln!(
                "--- broker stderr ({}) ---\n{}\n--- end of broker stderr ---",
                self.stderr_path().display(),
                self.stderr()
            );
        }
    }
}

#[derive(Debug)]
enum StartError {
    AddrInUse,
    Exited {
        status: ExitStatus,
        stdout: Vec<String>,
    },
    NotReady {
        timeout: Duration,
        stdout: Vec<String>,
    },
    WrongLine {
        expected: String,
        got: String,
    },
}

/// A port that was free a moment ago on 127.0.0.1.
/// A fresh directory for one broker: `data/` (log.dirs) and its stderr.
fn broker_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sluice-it-")
        .tempdir()
        .expect("create temp dir");
    std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
    dir
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------
// kcat

/// Runs `kcat ARGS` with `stdin` (or /dev/null), kills it after
/// `KCAT_TIMEOUT` (and panics with its output), and returns its output.
pub fn kcat(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("kcat")
        .args(args)
        .env("KCAT_CONFIG", "/dev/null")
        // `cargo test --workspace` puts the bench crate's librdkafka build
        // directory on LD_LIBRARY_PATH; kcat would load that librdkafka
        // (built without zstd) instead of the system's it was built for.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat (apt-get install kcat)");

    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
            // Dropping the pipe closes kcat's stdin: end of input.
        })
    });
    let out = spawn_reader(child.stdout.take().unwrap());
    let err = spawn_reader(child.stderr.take().unwrap());

    let deadline = Instant::now() + KCAT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait kcat") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "kcat {} timed out after {KCAT_TIMEOUT:?} (killed)\n{}",
            args.join(" "),
            describe_raw(&stdout, &stderr)
        ),
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn describe_raw(stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "--- kcat stdout ---\n{}\n--- kcat stderr ---\n{}\n--- end ---",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    )
}

/// Human-readable stdout and stderr of a kcat run.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n{}",
        out.status,
        describe_raw(&out.stdout, &out.stderr)
    )
}

/// Runs kcat and asserts that it exited with 0; returns the output.
pub fn kcat_ok(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let out = kcat(args, stdin);
    assert!(
        out.status.success(),
        "kcat {} failed\n{}",
        args.join(" "),
        describe(&out)
    );
    out
}

/// Asserts that a kcat run succeeded, mentioning the broker's stderr if not.
pub fn assert_kcat_ok(broker: &Broker, args: &[&str], out: &Output) {
    if !out.status.success() {
        broker.fail(&format!(
            "kcat {} failed\n{}",
            args.join(" "),
            describe(out)
        ));
    }
}

/// Runs kcat; on failure panics with kcat's and the broker's output.
pub fn kcat_on(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let out = kcat(args, stdin);
    assert_kcat_ok(broker, args, &out);
    out
}

/// Produces newline-separated `input` to `topic` with `kcat -P` plus
/// `extra` arguments, and asserts every message was delivered (kcat exits
/// with 1 when a delivery report carries an error).
pub fn produce(broker: &Broker, topic: &str, extra: &[&str], input: &[u8]) {
    let addr = broker.addr();
    let mut args = vec![
        "-P",
        "-b",
        &addr,
        "-t",
        topic,
        "-X",
        "message.timeout.ms=30000",
    ];
    args.extend_from_slice(extra);
    let out = kcat_on(broker, &args, Some(input));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Delivery failed") {
        broker.fail(&format!(
            "kcat {} reported a failed delivery\n{}",
            args.join(" "),
            describe(&out)
        ));
    }
}

/// One message as printed by `kcat -C -J`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, Option<String>)>,
}

/// Parses kcat's `-J` consumer output, one JSON object per line.
pub fn parse_messages(stdout: &[u8]) -> Vec<Msg> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("kcat -J line is not JSON ({e}): {l}"));
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let mut headers = Vec::new();
            if let Some(h) = v.get("headers").and_then(|h| h.as_array()) {
                for pair in h.chunks(2) {
                    let name = pair[0].as_str().unwrap_or_default().to_string();
                    let value = pair.get(1).and_then(|x| x.as_str()).map(str::to_string);
                    headers.push((name, value));
                }
            }
            Msg {
                topic: s("topic").unwrap_or_default(),
                partition: v["partition"].as_i64().expect("partition") as i32,
                offset: v["offset"].as_i64().expect("offset"),
                key: s("key"),
                value: s("payload"),
                headers,
            }
        })
        .collect()
}

/// `kcat -C -b ADDR -t TOPIC -o beginning -e -J` plus `extra`: every message
/// up to the end of the partition(s) at the time of the call.
pub fn consume(broker: &Broker, topic: &str, extra: &[&str]) -> Vec<Msg> {
    let addr = broker.addr();
    let mut args = vec!["-C", "-b", &addr, "-t", topic, "-e", "-J"];
    if !extra.contains(&"-o") {
        args.extend_from_slice(&["-o", "beginning"]);
    }
    args.extend_from_slice(extra);
    let out = kcat_on(broker, &args, None);
    parse_messages(&out.stdout)
}

/// Values of the messages, in order.
pub fn values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.value.clone().unwrap_or_else(|| "<null>".into()))
        .collect()
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_for(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` until it returns `Some`, or gives up after `timeout` (for a
/// caller that has more to say when it fails).
pub fn poll_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Lines `prefix0\nprefix1\n...` as kcat input, and the matching values.
pub fn numbered(prefix: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let vals: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut input = vals.join("\n").into_bytes();
    input.push(b'\n');
    (input, vals)
}
