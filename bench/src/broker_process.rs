//! A `sluice` broker process started by the benchmark, and the CPU time of
//! any process read from `/proc`.
//!
//! The broker gets a free loopback port and its own data directory, and is
//! ready when it prints `sluice listening on ADDR`. [`BrokerProcess`] stops
//! it on drop (SIGTERM, then SIGKILL after a bounded wait), so every exit
//! path of the benchmark, errors and panics included, leaves no broker
//! behind; the child also gets SIGKILL from the kernel if the benchmark
//! itself is killed (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the broker may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the bounded exit-polling loop.
const POLL: Duration = Duration::from_millis(10);
/// Attempts when the free port we picked is taken before the broker binds it.
const START_ATTEMPTS_MAX: usize = 3;

/// A running broker owned by the benchmark. Stopped on drop.
pub struct BrokerProcess {
    child: Option<Child>,
    addr: String,
    log_path: PathBuf,
    /// Drains the broker's stdout so that it never blocks on a full pipe.
    stdout_drain: Option<std::thread::JoinHandle<()>>,
}

impl BrokerProcess {
    /// Starts `bin serve` on a free loopback port with `log.dirs = data_dir`
    /// and the extra `key=value` settings, and waits until it listens. Its
    /// stderr goes to `log_path`.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        log_path: &Path,
        settings: &[String],
    ) -> Result<BrokerProcess, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            match BrokerProcess::start_on(bin, data_dir, log_path, settings, port) {
                Ok(broker) => return Ok(broker),
                Err(StartError::AddrInUse) if attempt < START_ATTEMPTS_MAX => continue,
                Err(StartError::AddrInUse) => {
                    return Err(format!(
                        "the broker found its port taken {START_ATTEMPTS_MAX} times; see {}",
                        log_path.display()
                    ))
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    fn start_on(
        bin: &Path,
        data_dir: &Path,
        log_path: &Path,
        settings: &[String],
        port: u16,
    ) -> Result<BrokerProcess, StartError> {
        let other = StartError::Other;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| other(format!("creating {}: {e}", data_dir.display())))?;
        let log = std::fs::File::create(log_path)
            .map_err(|e| other(format!("creating {}: {e}", log_path.display())))?;
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--set")
            .arg(format!("listeners=PLAINTEXT://{addr}"))
            .arg("--set")
            .arg(format!("log.dirs={}", data_dir.display()))
            .arg("--set")
            .arg("node.id=1");
        for setting in settings {
            command.arg("--set").arg(setting);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // only the calling (child) process; nothing is allocated between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| other(format!("starting {}: {e}", bin.display())))?;
        let stdout = child.stdout.take();
        let mut broker = BrokerProcess {
            child: Some(child),
            addr,
            log_path: log_path.to_path_buf(),
            stdout_drain: None,
        };
        let Some(stdout) = stdout else {
            return Err(other("the broker's stdout was not piped".into()));
        };
        // A thread reads stdout: lines go through the channel until the
        // receiver is gone, and it keeps draining until EOF.
        let (tx, rx) = mpsc::channel::<String>();
        broker.stdout_drain = Some(std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => drop(tx.send(line.trim_end().to_string())),
                }
            }
        }));
        let expected = format!("sluice listening on {}", broker.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.trim() == expected => return Ok(broker),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                // stdout closed: the broker is exiting; try_wait sees it.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
            }
            if let Some(status) = broker.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                if log.contains("address already in use") || log.contains("AddrInUse") {
                    return Err(StartError::AddrInUse);
                }
                return Err(other(format!(
                    "the broker exited before listening ({status}); its log, {}:\n{}",
                    log_path.display(),
                    tail(&log, 20)
                )));
            }
            if Instant::now() >= deadline {
                return Err(other(format!(
                    "the broker did not listen on {} within {READY_TIMEOUT:?}; see {}",
                    broker.addr,
                    log_path.display()
                )));
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Panics nowhere; `None` while the broker runs.
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("sluice-bench: waiting for the broker: {e}");
                None
            }
        }
    }

    /// Stops the broker: SIGTERM, a bounded wait, then SIGKILL. Returns
    /// an error if it had to be killed or exited with a failure.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let result = stop_child(&mut child);
        if let Some(drain) = self.stdout_drain.take() {
            drop(drain.join());
        }
        result.map_err(|e| format!("{e}; see {}", self.log_path.display()))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("sluice-bench: stopping the broker: {e}");
        }
    }
}

fn stop_child(child: &mut Child) -> Result<(), String> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, which has not been reaped (we hold
    // the Child and have not waited on it), so the pid cannot be reused.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        drop(child.kill());
        drop(child.wait());
        return Err(format!("SIGTERM to the broker: {e}"));
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("the broker exited with {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the broker: {e}")),
        }
        if Instant::now() >= deadline {
            drop(child.kill());
            drop(child.wait());
            return Err(format!(
                "the broker did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it"
            ));
        }
        std::thread::sleep(POLL);
    }
}

enum StartError {
    AddrInUse,
    Other(String),
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// User plus system CPU time of a whole process (every thread), in
/// seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // the fields after its closing parenthesis start at field 3 (state), so
    // utime (14) and stime (15) are the 12th and 13th of them.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {} is missing", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    Ok(total as f64 / per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::cpu_seconds;

    #[test]
    fn cpu_time_of_this_process_is_read_and_grows() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("read own stat");
        // Burn a little CPU; the clock-tick resolution is 10 ms.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(pid).expect("read own stat");
        assert!(after >= before);
        assert!(before >= 0.0);
    }
}
