//! A local cluster for scenarios: `sluice serve` processes on loopback,
//! each started, stopped, killed, paused and resumed on its own. The first
//! three are controller voters, the rest brokers only (as `sluice
//! dev-cluster` does). Dropping it kills every process. With network
//! faults, each listener sits behind a fault proxy ([`crate::proxy`]) that
//! the brokers advertise and name as the controller voters.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a broker may take to say it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Node {
    pub id: i32,
    pub port: u16,
    /// Its `log.dirs`, and whether that is a small tmpfs of its own.
    data: PathBuf,
    small_disk: bool,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// What a scenario does to brokers, whoever runs them.
pub trait Nodes {
    /// Every broker's client address.
    fn bootstrap(&self) -> String;
    /// The brokers that can answer now (not paused).
    fn live_bootstrap(&self) -> String;
    fn paused(&self) -> Vec<i32>;
    fn kill(&mut self, id: i32) -> Result<(), String>;
    fn terminate(&mut self, id: i32) -> Result<(), String>;
    fn pause(&mut self, id: i32) -> Result<(), String>;
    fn resume(&mut self, id: i32) -> Result<(), String>;
    fn start_again(&mut self, id: i32) -> Result<(), String>;
    /// Starts the stopped brokers of `ids` together.
    fn start_all(&mut self, ids: &[i32]) -> Result<(), String> {
        ids.iter().try_for_each(|id| self.start_again(*id))
    }
    /// Every broker running and none paused.
    fn heal(&mut self) -> Result<(), String>;
    /// Every broker's id.
    fn ids(&self) -> Vec<i32>;
    /// The fault proxies in front of the brokers, if this cluster has them.
    fn network(&self) -> Option<Arc<crate::proxy::Network>>;
    /// Fills the broker's data disk (a small one of its own) to the last
    /// byte, or frees what that took.
    fn fill_disk(&mut self, id: i32) -> Result<(), String>;
    fn free_disk(&mut self, id: i32) -> Result<(), String>;
    /// SIGKILLs the brokers and drops what they had not fsynced; the bytes
    /// dropped per broker.
    fn power_loss(&mut self, ids: &[i32]) -> Result<Vec<u64>, String>;
    /// Stalls the broker's disk (its plugfs) or lets it go on.
    fn stall_disk(&mut self, id: i32, stalled: bool) -> Result<(), String>;
    /// Makes the broker's disk (its plugfs) fail writes and fsyncs with
    /// EIO, or not.
    fn fail_disk(&mut self, id: i32, failing: bool) -> Result<(), String>;
    /// The bytes of a broker's replica of `topic`-`partition`: its segment
    /// files in offset order, concatenated; `None` where the runner cannot
    /// see the broker's disk.
    fn replica_bytes(&self, _id: i32, _topic: &str, _partition: i32) -> Option<Vec<u8>> {
        None
    }
}

/// Where `fill_disk` puts its filler, in the broker's data directory.
const FILLER: &str = "sluice-verify-filler";

/// Mounts a tmpfs of `bytes` at `dir` (root only).
fn mount_small_disk(dir: &Path, bytes: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "mounting a {bytes} byte tmpfs at {} failed ({status}): disk faults need root",
            dir.display()
        ))
    }
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

pub struct LocalCluster {
    pub nodes: Vec<Node>,
    bin: PathBuf,
    network: Option<Arc<crate::proxy::Network>>,
    /// Each broker's power-loss filesystem, with `power_loss` (declared
    /// last: unmounted after the processes are killed).
    plugs: std::collections::BTreeMap<i32, crate::plugfs::PlugFs>,
}

/// How much data not yet fsynced a broker's power-loss filesystem holds
/// before it writes the largest file back (as the kernel would).
const PLUG_PENDING_MAX: u64 = 1 << 30;

/// Where each broker's data lives, for disk faults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disks<'a> {
    /// These brokers' data on a tmpfs of this many bytes each.
    pub small: Option<(&'a [i32], u64)>,
    /// Every broker's data on a power-loss filesystem ([`crate::plugfs`]).
    pub power_loss: bool,
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // Held together so that no two are the same.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

impl LocalCluster {
    /// Starts `n` brokers with `settings` on each, their data and logs
    /// under `dir`, and waits until all listen; with `proxied`, behind
    /// fault proxies; the brokers `small_disks` names with their data on a
    /// tmpfs of that many bytes each (and every broker's metadata log
    /// apart, `metadata.log.dir`, so that a full data disk leaves the
    /// controller quorum alone).
    pub fn start(
        bin: &Path,
        n: usize,
        dir: &Path,
        settings: &[String],
        proxied: bool,
        disks: Disks<'_>,
    ) -> Result<Self, String> {
        let small_disks = disks.small;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // The proxies' listeners are bound first and held: the brokers'
        // ports, chosen next, can then never be one of them.
        let proxy_listeners: Vec<TcpListener> = if proxied {
            (0..2 * n)
                .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let ports = free_ports(2 * n)?;
        // What everyone else connects to: the listeners, or their proxies.
        let mut front = ports.clone();
        let network = if proxied {
            let network = Arc::new(crate::proxy::Network::default());
            for (i, listener) in proxy_listeners.into_iter().enumerate() {
                front[i] = listener.local_addr().map_err(|e| e.to_string())?.port();
                let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], ports[i]));
                crate::proxy::spawn(network.clone(), listener, (i % n) as i32 + 1, upstream)?;
            }
            Some(network)
        } else {
            None
        };
        let voters: Vec<String> = (0..n.min(3))
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, front[n + i]))
            .collect();
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            bin: bin.to_path_buf(),
            network,
            plugs: Default::default(),
        };
        for i in 0..n {
            let id = i as i32 + 1;
            let data = dir.join(format!("broker-{id}"));
            let small_disk = small_disks.is_some_and(|(ids, _)| ids.contains(&id));
            let mut args = vec![
                format!("node.id={id}"),
                format!(
                    "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    ports[i],
                    ports[n + i]
                ),
                format!(
                    "advertised.listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    front[i],
                    front[n + i]
                ),
                format!("controller.quorum.voters={}", voters.join(",")),
                format!(
                    "process.roles={}",
                    if i < 3 { "broker,controller" } else { "broker" }
                ),
                format!("log.dirs={}", data.display()),
            ];
            if disks.power_loss {
                let backing = dir.join(format!("broker-{id}-durable"));
                std::fs::create_dir_all(&backing)
                    .and_then(|()| std::fs::create_dir_all(&data))
                    .map_err(|e| format!("{}: {e}", data.display()))?;
                let plug = crate::plugfs::PlugFs::mount(&backing, &data, PLUG_PENDING_MAX)?;
                cluster.plugs.insert(id, plug);
            }
            if let Some((_, bytes)) = small_disks {
                args.push(format!(
                    "metadata.log.dir={}",
                    dir.join(format!("broker-{id}-metadata")).display()
                ));
                if small_disk {
                    mount_small_disk(&data, bytes)?;
                }
            }
            // `{dir}` in a setting: this broker's data directory.
            let own = data.display().to_string();
            args.extend(settings.iter().map(|s| s.replace("{dir}", &own)));
            cluster.nodes.push(Node {
                id,
                port: front[i],
                data,
                small_disk,
                args,
                log: dir.join(format!("broker-{id}.log")),
                child: None,
                paused: false,
            });
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The brokers that are running and not paused, as a bootstrap list.
    pub fn live_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The brokers paused now.
    pub fn paused(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.paused)
            .map(|n| n.id)
            .collect()
    }

    fn index(&self, id: i32) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| format!("no broker {id}"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let mut command = Command::new(&self.bin);
        command.arg("serve");
        for a in &node.args {
            command.args(["--set", a]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        if let Some(network) = &self.network {
            network.set_pid(node.id, Some(child.id()));
        }
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let Some(stdout) = node.child.as_mut().and_then(|c| c.stdout.take()) else {
            return Err(format!("broker {} is not running", node.id));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the broker never blocks on a full pipe.
            let mut rest = String::new();
            while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
                rest.clear();
            }
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        if line.contains("listening on") {
            Ok(())
        } else {
            Err(format!(
                "broker {} did not start (see {})",
                node.id,
                node.log.display()
            ))
        }
    }

    fn signal(&mut self, id: i32, sig: libc::c_int) -> Result<(), String> {
        let i = self.index(id)?;
        let Some(child) = self.nodes[i].child.as_ref() else {
            return Err(format!("broker {id} is not running"));
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        if unsafe { libc::kill(child.id() as libc::pid_t, sig) } != 0 {
            return Err(format!(
                "signalling broker {id}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: i32) -> Result<(), String> {
        let i = self.index(id)?;
        if let Some(network) = &self.network {
            network.set_pid(id, None);
        }
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGTERM, and wait (bounded) for a clean exit.
    pub fn terminate(&mut self, id: i32) -> Result<(), String> {
        self.signal(id, libc::SIGTERM)?;
        let i = self.index(id)?;
        if let Some(network) = &self.network {
            network.set_pid(id, None);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(mut child) = self.nodes[i].child.take() {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(()),
                    Ok(Some(status)) => return Err(format!("broker {id} exited {status}")),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("broker {id} did not stop on SIGTERM"));
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&mut self, id: i32) -> Result<(), String> {
        self.signal(id, libc::SIGSTOP)?;
        let i = self.index(id)?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: i32) -> Result<(), String> {
        self.signal(id, libc::SIGCONT)?;
        let i = self.index(id)?;
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Starts a stopped broker again on its port and data, and waits until
    /// it listens.
    pub fn start_again(&mut self, id: i32) -> Result<(), String> {
        self.start_all(&[id])
    }

    /// Starts the stopped brokers of `ids` together, then waits until each
    /// listens: one alone may wait for the others (a controller quorum).
    pub fn start_all(&mut self, ids: &[i32]) -> Result<(), String> {
        let mut started = Vec::new();
        for &id in ids {
            let i = self.index(id)?;
            if self.nodes[i].child.is_none() {
                self.spawn(i)?;
                started.push(i);
            }
        }
        for i in started {
            self.wait_ready(i)?;
        }
        Ok(())
    }

    /// Fills the broker's small disk: a filler file written until the
    /// file system has no byte left.
    pub fn fill_disk(&mut self, id: i32) -> Result<(), String> {
        use std::io::Write;
        let node = &self.nodes[self.index(id)?];
        if !node.small_disk {
            return Err(format!(
                "broker {id} has no small disk of its own (the scenario's small_disks)"
            ));
        }
        let path = node.data.join(FILLER);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            while file.write_all(&buf).is_ok() {}
        }
        Ok(())
    }

    /// SIGKILLs the brokers and drops everything they wrote and did not
    /// fsync, as a power loss of their machines at one instant would; the
    /// bytes dropped, per broker.
    pub fn power_loss(&mut self, ids: &[i32]) -> Result<Vec<u64>, String> {
        for &id in ids {
            if !self.plugs.contains_key(&id) {
                return Err(format!(
                    "broker {id} has no power-loss filesystem (the scenario's power_loss)"
                ));
            }
            self.kill(id)?;
        }
        Ok(ids.iter().map(|id| self.plugs[id].pull_plug()).collect())
    }

    fn plug(&self, id: i32) -> Result<&crate::plugfs::PlugFs, String> {
        self.plugs.get(&id).ok_or_else(|| {
            format!("broker {id} has no plugfs disk (the scenario's power_loss = true)")
        })
    }

    pub fn stall_disk(&mut self, id: i32, stalled: bool) -> Result<(), String> {
        self.plug(id)?.set_stalled(stalled);
        Ok(())
    }

    pub fn fail_disk(&mut self, id: i32, failing: bool) -> Result<(), String> {
        self.plug(id)?.set_failing(failing);
        Ok(())
    }

    pub fn free_disk(&mut self, id: i32) -> Result<(), String> {
        let node = &self.nodes[self.index(id)?];
        match std::fs::remove_file(node.data.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    /// Every broker running, none paused, no network or disk fault.
    pub fn heal(&mut self) -> Result<(), String> {
        if let Some(network) = &self.network {
            network.heal(None);
        }
        let small: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.small_disk)
            .map(|n| n.id)
            .collect();
        for id in small {
            self.free_disk(id)?;
        }
        for plug in self.plugs.values() {
            plug.set_stalled(false);
            plug.set_failing(false);
        }
        let ids: Vec<i32> = self.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            let i = self.index(id)?;
            if self.nodes[i].paused {
                self.resume(id)?;
            }
        }
        self.start_all(&ids)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(network) = &self.network {
            network.stop();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if node.small_disk {
                unmount(&node.data);
            }
        }
    }
}

impl Nodes for LocalCluster {
    fn bootstrap(&self) -> String {
        LocalCluster::bootstrap(self)
    }
    fn live_bootstrap(&self) -> String {
        LocalCluster::live_bootstrap(self)
    }
    fn paused(&self) -> Vec<i32> {
        LocalCluster::paused(self)
    }
    fn kill(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::kill(self, id)
    }
    fn terminate(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::terminate(self, id)
    }
    fn pause(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::pause(self, id)
    }
    fn resume(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::resume(self, id)
    }
    fn start_again(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::start_again(self, id)
    }
    fn start_all(&mut self, ids: &[i32]) -> Result<(), String> {
        LocalCluster::start_all(self, ids)
    }
    fn heal(&mut self) -> Result<(), String> {
        LocalCluster::heal(self)
    }
    fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    fn network(&self) -> Option<Arc<crate::proxy::Network>> {
        self.network.clone()
    }
    fn fill_disk(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::fill_disk(self, id)
    }
    fn free_disk(&mut self, id: i32) -> Result<(), String> {
        LocalCluster::free_disk(self, id)
    }
    fn power_loss(&mut self, ids: &[i32]) -> Result<Vec<u64>, String> {
        LocalCluster::power_loss(self, ids)
    }
    fn stall_disk(&mut self, id: i32, stalled: bool) -> Result<(), String> {
        LocalCluster::stall_disk(self, id, stalled)
    }
    fn fail_disk(&mut self, id: i32, failing: bool) -> Result<(), String> {
        LocalCluster::fail_disk(self, id, failing)
    }
    fn replica_bytes(&self, id: i32, topic: &str, partition: i32) -> Option<Vec<u8>> {
        let node = &self.nodes[self.index(id).ok()?];
        let dir = node.data.join(format!("{topic}-{partition}"));
        // No directory (yet): an empty replica.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Some(Vec::new());
        };
        let mut segments: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        // Named by base offset, zero-padded: name order is offset order.
        segments.sort();
        let mut bytes = Vec::new();
        for segment in segments {
            bytes.extend(std::fs::read(segment).ok()?);
        }
        Some(bytes)
    }
}

/// A cluster someone else runs (Kafka, Redpanda, Sluice elsewhere),
/// reached at `bootstrap` and controlled by shell command templates in
/// which `{node}` stands for the broker id.
pub struct ExternalCluster {
    pub bootstrap: String,
    pub kill: String,
    pub start: String,
    /// Defaults to sending SIGTERM the way `kill` sends SIGKILL is not
    /// knowable: without it, `terminate` is refused.
    pub terminate: Option<String>,
    pub pause: Option<String>,
    pub resume: Option<String>,
    /// Brokers this run took down or paused, to heal at the end.
    down: std::collections::BTreeSet<i32>,
    paused: std::collections::BTreeSet<i32>,
}

impl ExternalCluster {
    pub fn new(
        bootstrap: String,
        kill: String,
        start: String,
        terminate: Option<String>,
        pause: Option<String>,
        resume: Option<String>,
    ) -> ExternalCluster {
        ExternalCluster {
            bootstrap,
            kill,
            start,
            terminate,
            pause,
            resume,
            down: Default::default(),
            paused: Default::default(),
        }
    }

    fn run(template: Option<&String>, what: &str, id: i32) -> Result<(), String> {
        let template = template.ok_or_else(|| format!("no --{what}-cmd given"))?;
        let command = template.replace("{node}", &id.to_string());
        let status = Command::new("sh")
            .args(["-c", &command])
            .status()
            .map_err(|e| format!("{command}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{command}: {status}"))
        }
    }
}

impl Nodes for ExternalCluster {
    fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }
    fn live_bootstrap(&self) -> String {
        self.bootstrap.clone()
    }
    fn paused(&self) -> Vec<i32> {
        self.paused.iter().copied().collect()
    }
    fn kill(&mut self, id: i32) -> Result<(), String> {
        Self::run(Some(&self.kill), "kill", id)?;
        self.down.insert(id);
        Ok(())
    }
    fn terminate(&mut self, id: i32) -> Result<(), String> {
        Self::run(self.terminate.as_ref(), "terminate", id)?;
        self.down.insert(id);
        Ok(())
    }
    fn pause(&mut self, id: i32) -> Result<(), String> {
        Self::run(self.pause.as_ref(), "pause", id)?;
        self.paused.insert(id);
        Ok(())
    }
    fn resume(&mut self, id: i32) -> Result<(), String> {
        Self::run(self.resume.as_ref(), "resume", id)?;
        self.paused.remove(&id);
        Ok(())
    }
    fn start_again(&mut self, id: i32) -> Result<(), String> {
        Self::run(Some(&self.start), "start", id)?;
        self.down.remove(&id);
        Ok(())
    }
    fn heal(&mut self) -> Result<(), String> {
        for id in self.paused() {
            self.resume(id)?;
        }
        let down: Vec<i32> = self.down.iter().copied().collect();
        for id in down {
            self.start_again(id)?;
        }
        Ok(())
    }
    /// Not known: faults that target "all" need a local cluster.
    fn ids(&self) -> Vec<i32> {
        Vec::new()
    }
    fn network(&self) -> Option<Arc<crate::proxy::Network>> {
        None
    }
    fn fill_disk(&mut self, _: i32) -> Result<(), String> {
        Err("disk faults need a local cluster".into())
    }
    fn free_disk(&mut self, _: i32) -> Result<(), String> {
        Err("disk faults need a local cluster".into())
    }
    fn power_loss(&mut self, _: &[i32]) -> Result<Vec<u64>, String> {
        Err("power loss needs a local cluster".into())
    }
    fn stall_disk(&mut self, _: i32, _: bool) -> Result<(), String> {
        Err("disk faults need a local cluster".into())
    }
    fn fail_disk(&mut self, _: i32, _: bool) -> Result<(), String> {
        Err("disk faults need a local cluster".into())
    }
}
