//! Network faults without netem or iptables: a TCP proxy in front of each
//! listener of each broker (its client and its controller listener), which
//! the brokers advertise, so every connection to a broker, from a client or
//! from another broker, passes through one. Each accepted connection is
//! told apart by the process at its other end (a broker of the cluster, or
//! anyone else: a client), found through `/proc`, so a fault can cut a
//! broker off from the other brokers while clients still reach it.
//!
//! The faults are rules on links (a broker, and the brokers, the clients or
//! everyone talking to it): a partition holds every byte in both directions
//! until it heals (TCP would deliver them then, after retransmitting), a
//! delay holds each chunk for a time in each direction, a bandwidth limit
//! paces the bytes, and a disconnect resets the links' connections once.
//! Memory is bounded: each direction of a connection buffers at most
//! [`QUEUE_CHUNKS`] chunks of [`CHUNK`] bytes, and then stops reading.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
const QUEUE_CHUNKS: usize = 32;
/// How often a held link looks again whether its partition healed.
const HOLD_CHECK: Duration = Duration::from_millis(10);

/// Who is at the far end of a connection to a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Broker(i32),
    Client,
}

/// Whom a rule cuts a broker off from, delays or limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Peers {
    /// The other brokers (replication, the controller quorum, forwarding).
    #[default]
    Brokers,
    Clients,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    Partition,
    /// Added to each direction.
    Delay(Duration),
    /// Bytes per second, each direction.
    Bandwidth(u64),
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    broker: i32,
    peers: Peers,
    effect: Effect,
}

impl Rule {
    /// Whether this rule applies to a connection from `from` to broker `to`.
    fn matches(&self, from: Peer, to: i32) -> bool {
        let brokers = matches!(self.peers, Peers::Brokers | Peers::All);
        let clients = matches!(self.peers, Peers::Clients | Peers::All);
        match from {
            Peer::Client => clients && to == self.broker,
            Peer::Broker(b) if b == to => false,
            Peer::Broker(b) => brokers && (to == self.broker || b == self.broker),
        }
    }
}

/// What holds for one connection now.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Conditions {
    held: bool,
    delay: Duration,
    bandwidth: Option<u64>,
}

struct Connection {
    id: u64,
    from: Peer,
    to: i32,
    sockets: [TcpStream; 2],
}

/// The proxies of one cluster and the faults on them.
#[derive(Default)]
pub struct Network {
    rules: Mutex<Vec<Rule>>,
    /// Each broker's process id now (changes when it restarts).
    pids: Mutex<BTreeMap<i32, u32>>,
    /// The connections open now (a closed one is removed once both its
    /// directions have ended, so a long run does not hold their sockets).
    connections: Mutex<Vec<Connection>>,
    next_connection: std::sync::atomic::AtomicU64,
    stopped: AtomicBool,
}

impl Network {
    pub fn set_pid(&self, broker: i32, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        match pid {
            Some(pid) => pids.insert(broker, pid),
            None => pids.remove(&broker),
        };
    }

    pub fn add(&self, broker: i32, peers: Peers, effect: Effect) {
        self.lock_rules().push(Rule {
            broker,
            peers,
            effect,
        });
    }

    /// Removes every rule on `broker` (all of them with `None`).
    pub fn heal(&self, broker: Option<i32>) {
        self.lock_rules()
            .retain(|r| broker.is_some_and(|b| b != r.broker));
    }

    /// Resets every open connection on the links `broker`–`peers`, once.
    pub fn disconnect(&self, broker: i32, peers: Peers) -> usize {
        let rule = Rule {
            broker,
            peers,
            effect: Effect::Partition,
        };
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let mut reset = 0;
        connections.retain(|c| {
            if rule.matches(c.from, c.to) {
                for s in &c.sockets {
                    let _ = s.shutdown(Shutdown::Both);
                }
                reset += 1;
                false
            } else {
                true
            }
        });
        reset
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conditions(&self, from: Peer, to: i32) -> Conditions {
        let mut c = Conditions::default();
        for rule in self.lock_rules().iter().filter(|r| r.matches(from, to)) {
            match rule.effect {
                Effect::Partition => c.held = true,
                Effect::Delay(d) => c.delay = c.delay.max(d),
                Effect::Bandwidth(b) => c.bandwidth = Some(c.bandwidth.map_or(b, |x| x.min(b))),
            }
        }
        c
    }

    /// The broker whose process holds the other end of `peer` (a
    /// connection to our listener at `local`), if any.
    fn identify(&self, peer: SocketAddr, local: SocketAddr) -> Peer {
        let Some(inode) = socket_inode(peer, local) else {
            return Peer::Client;
        };
        let needle = format!("socket:[{inode}]");
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (broker, pid) in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                    return Peer::Broker(broker);
                }
            }
        }
        Peer::Client
    }

    /// Stops accepting; open connections end when their ends close.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.heal(None);
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for c in connections.drain(..) {
            for s in &c.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// `/proc/net/tcp` writes an IPv4 address as the hex of its bytes in host
/// (little-endian) order, then the port in hex.
fn proc_address(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The inode of the socket whose local end is `peer` and remote end
/// `local`: the other side of a connection we accepted.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (want_local, want_remote) = (proc_address(peer)?, proc_address(local)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == want_local && fields[2] == want_remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

/// A proxy for broker `broker`'s listener at `upstream`, listening on
/// `listener`.
pub fn spawn(
    network: Arc<Network>,
    listener: TcpListener,
    broker: i32,
    upstream: SocketAddr,
) -> Result<(), String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name(format!("proxy-{broker}-{}", local.port()))
        .spawn(move || {
            while !network.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, peer)) => {
                        let network = network.clone();
                        // Telling the far end apart reads /proc (every
                        // broker's open files): done on the connection's
                        // own thread, so that a burst of new connections
                        // (every retried Raft call opens one) does not
                        // queue behind it and delay the brokers'
                        // heartbeats past their session.
                        let _ = std::thread::Builder::new().name("proxy-conn".into()).spawn(
                            move || {
                                let from = network.identify(peer, local);
                                connect(network, client, from, broker, upstream)
                            },
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(HOLD_CHECK);
                    }
                    Err(_) => std::thread::sleep(HOLD_CHECK),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn connect(network: Arc<Network>, client: TcpStream, from: Peer, to: i32, upstream: SocketAddr) {
    let _ = client.set_nonblocking(false);
    // A partitioned link does not let a new connection through either.
    while network.conditions(from, to).held {
        if network.stopped.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(HOLD_CHECK);
    }
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (|| {
        Some([
            client.try_clone().ok()?,
            server.try_clone().ok()?,
            server.try_clone().ok()?,
            client.try_clone().ok()?,
        ])
    })();
    let Some([c_read, s_write, s_read, c_write]) = clones else {
        return;
    };
    let id = network.next_connection.fetch_add(1, Ordering::Relaxed);
    network
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Connection {
            id,
            from,
            to,
            sockets: [client, server],
        });
    let n = network.clone();
    let upward = std::thread::spawn(move || pump(&n, from, to, c_read, s_write));
    pump(&network, from, to, s_read, c_write);
    let _ = upward.join();
    network
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| c.id != id);
}

/// Copies `from_socket` into `to_socket` under the link's conditions: a
/// reader fills a bounded queue, a writer delivers each chunk when its
/// delay has passed, paced to the bandwidth, and not while held.
fn pump(network: &Arc<Network>, from: Peer, to: i32, mut source: TcpStream, sink: TcpStream) {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let n = network.clone();
    let writer = std::thread::spawn(move || deliver(&n, from, to, rx, sink));
    let mut buf = vec![0u8; CHUNK];
    loop {
        match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(len) => {
                if tx.send((Instant::now(), buf[..len].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = source.shutdown(Shutdown::Read);
}

fn deliver(
    network: &Network,
    from: Peer,
    to: i32,
    rx: Receiver<(Instant, Vec<u8>)>,
    mut sink: TcpStream,
) {
    while let Ok((read_at, chunk)) = rx.recv() {
        let mut c = network.conditions(from, to);
        while c.held {
            if network.stopped.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(HOLD_CHECK);
            c = network.conditions(from, to);
        }
        if let Some(wait) = (read_at + c.delay).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if sink.write_all(&chunk).is_err() {
            let _ = sink.shutdown(Shutdown::Both);
            return;
        }
        if let Some(rate) = c.bandwidth.filter(|r| *r > 0) {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
        }
    }
    let _ = sink.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_links_they_cut() {
        let isolate = Rule {
            broker: 2,
            peers: Peers::Brokers,
            effect: Effect::Partition,
        };
        assert!(isolate.matches(Peer::Broker(1), 2));
        assert!(isolate.matches(Peer::Broker(2), 3));
        assert!(!isolate.matches(Peer::Broker(1), 3));
        assert!(!isolate.matches(Peer::Client, 2));
        assert!(!isolate.matches(Peer::Broker(2), 2));
        let slow_clients = Rule {
            broker: 1,
            peers: Peers::Clients,
            effect: Effect::Delay(Duration::from_millis(50)),
        };
        assert!(slow_clients.matches(Peer::Client, 1));
        assert!(!slow_clients.matches(Peer::Client, 2));
        assert!(!slow_clients.matches(Peer::Broker(2), 1));
    }

    #[test]
    fn proc_addresses_are_little_endian_hex() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(proc_address(addr).unwrap(), "0100007F:1F90");
    }

    /// Through a real proxy on loopback: bytes pass, a partition holds them
    /// until it heals, a disconnect resets, and this process (a client, not
    /// a broker) is told apart from a broker's process.
    #[test]
    fn a_partition_holds_bytes_until_it_heals() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in upstream.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let network = Arc::new(Network::default());
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        spawn(network.clone(), front, 7, upstream_addr).unwrap();
        let mut s = TcpStream::connect(front_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut echo = [0u8; 5];
        s.write_all(b"hello").unwrap();
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"hello");

        network.add(7, Peers::All, Effect::Partition);
        s.write_all(b"again").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(s.read(&mut echo).is_err(), "a partition let bytes through");
        network.heal(Some(7));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"again");

        // This test's process is no broker: a rule on brokers leaves it be.
        network.add(7, Peers::Brokers, Effect::Partition);
        s.write_all(b"third").unwrap();
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"third");
        network.heal(None);

        assert_eq!(network.disconnect(7, Peers::Clients), 1);
        assert!(matches!(s.read(&mut echo), Ok(0) | Err(_)));
        network.stop();
    }

    #[test]
    fn a_connection_from_a_known_process_is_a_broker() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _out = TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        let network = Network::default();
        assert_eq!(network.identify(peer, local), Peer::Client);
        network.set_pid(4, Some(std::process::id()));
        assert_eq!(network.identify(peer, local), Peer::Broker(4));
    }
}
