//! Listeners and connections, on the engine's shard threads.
//!
//! Every shard binds its own listener on the same address with
//! `SO_REUSEPORT`, so the kernel spreads connections over the shards. A
//! connection lives on one shard thread until its produces and fetches
//! have kept touching only another shard's partitions ([`MOVE_AFTER`] in
//! a row): it then moves there, between two requests. A connection
//! reads requests ahead (at most [`MAX_IN_FLIGHT`] unanswered), runs
//! read-only ones concurrently and every other one alone in request order,
//! and writes responses in request order. A frame's length is checked
//! against `socket.request.max.bytes` before anything is allocated for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use compio::net::{TcpListener, TcpStream};
use futures_channel::oneshot;
use kafka_protocol::messages::ApiKey;
use sluice_engine::{Engine, EngineConfig};
use tracing::{debug, info, warn};

use crate::codec::{self, DecodeError};
use crate::config::BrokerConfig;
use crate::controller::image::BrokerRegistration;
use crate::controller::Controller;
use crate::groups::coordinator::Coordinator;
use crate::groups::offsets_topic;
use crate::handlers;
use crate::topics::Topics;

/// How long a new cluster's first broker waits for the other voters to
/// register before it places `__consumer_offsets` without them.
const OFFSETS_TOPIC_WAIT: Duration = Duration::from_secs(10);

/// How often group sessions and rebalance deadlines are checked.
const GROUP_TICK: Duration = Duration::from_millis(100);
use crate::Broker;

/// Starts the engine, loads the topics on disk, and listens on every shard.
pub fn start(config: BrokerConfig) -> Result<Arc<Broker>, String> {
    std::fs::create_dir_all(&config.log_dir)
        .map_err(|e| format!("creating {}: {e}", config.log_dir.display()))?;
    lock_log_dir(&config.log_dir)?;
    ensure_port_free(config.listen)?;
    crate::partition::checkpoint::load(&config.log_dir);
    let mut engine_config = EngineConfig {
        data_dir: config.log_dir.clone(),
        io_driver: config.io_driver,
        pin_cores: config.pin_cores,
        ..EngineConfig::default()
    };
    if let Some(shards) = config.shards {
        engine_config.shards = shards;
    }
    let engine = Arc::new(
        Engine::start(engine_config).map_err(|e| format!("starting the storage engine: {e}"))?,
    );
    let controller_listener = config
        .controller_listen
        .map(|addr| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .and_then(|socket| {
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(128)?;
                Ok(socket)
            });
            socket
                .map(std::net::TcpListener::from)
                .map_err(|e| format!("the controller listener on {addr}: {e}"))
        })
        .transpose()?;
    let quorum = crate::controller::Quorum {
        node_id: config.node_id,
        voters: config
            .quorum_voters
            .iter()
            .map(|(id, addr)| (*id as u64, addr.clone()))
            .collect(),
        election_timeout_ms: config.controller_election_timeout_ms,
        fetch_timeout_ms: config.controller_fetch_timeout_ms,
        session_timeout_ms: config.broker_session_timeout_ms,
        elections: config.elections.clone(),
        learner_addr: if config.voter {
            None
        } else {
            config.controller_advertised.clone()
        },
    };
    std::fs::create_dir_all(&config.metadata_log_dir)
        .map_err(|e| format!("creating {}: {e}", config.metadata_log_dir.display()))?;
    let controller = Arc::new(Controller::start_quorum(
        &config.metadata_log_dir,
        quorum,
        controller_listener,
        crate::controller::SNAPSHOT_EVERY,
    )?);
    // This broker's heartbeat to the active controller, from as soon as
    // it has registered: start-up (the offsets topic, loading groups) may
    // take longer than a session.
    {
        let (controller, engine) = (controller.clone(), engine.clone());
        let room = Room {
            dir: config.log_dir.clone(),
            margin: ROOM_MARGIN.max(config.message_max_bytes as u64),
        };
        let (me, every) = (
            config.node_id,
            Duration::from_millis(config.broker_heartbeat_interval_ms),
        );
        std::thread::Builder::new()
            .name("sluice-heartbeat".into())
            .spawn(move || {
                let runtime = sluice_engine::shard::client_runtime()
                    .inspect_err(
                        |e| warn!(error = %e, "no runtime to check the log directory with"),
                    )
                    .ok();
                loop {
                    if let Some(runtime) = &runtime {
                        check_storage(runtime, &engine, &controller, &room);
                    }
                    controller.heartbeat(me);
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| format!("starting the heartbeat thread: {e}"))?;
    }
    let startup =
        sluice_engine::shard::client_runtime().map_err(|e| format!("start-up runtime: {e}"))?;
    let cluster_id = startup.block_on(cluster_id(&controller, &config.log_dir, config.node_id))?;
    info!(cluster = %cluster_id, node = config.node_id, "joined the cluster");
    let topics = Arc::new(Topics::new(
        controller.clone(),
        config.node_id,
        config.log.clone(),
    ));
    let runtime =
        sluice_engine::shard::client_runtime().map_err(|e| format!("start-up runtime: {e}"))?;
    runtime
        .block_on(topics.load(&engine, &config.log_dir))
        .map_err(|e| format!("loading the topics in {}: {e}", config.log_dir.display()))?;
    // Metadata changes are applied to the local logs on shard 0.
    let shard0 = engine
        .shards()
        .first()
        .ok_or("the engine has no shards")?
        .clone();
    let (for_follower, engine_for_follower) = (topics.clone(), engine.clone());
    runtime
        .block_on(shard0.spawn(move || {
            compio::runtime::spawn(async move {
                for_follower.follow(&engine_for_follower).await;
            })
            .detach();
        }))
        .map_err(|e| format!("starting the metadata follower: {e}"))?;
    let incarnation: String = crate::topics::new_topic_id()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let broker_epoch = runtime
        .block_on(topics.register(BrokerRegistration {
            id: config.node_id,
            host: config.advertised_host.clone(),
            port: config.advertised_port,
            rack: config.rack.clone(),
            incarnation,
            min_insync_replicas: config.min_insync_replicas,
            data_intact: data_intact(&config.log_dir),
            epoch: -1,
        }))
        .map_err(|e| format!("registering with the controller: {e}"))?;
    controller.set_broker_epoch(broker_epoch);
    info!(node = config.node_id, broker_epoch, "registered");
    // The cluster's default comes from the latest registration: a broker
    // configured otherwise has just changed it for every topic without an
    // override of its own.
    let image = topics.image();
    if image.brokers.len() > 1
        && image
            .brokers
            .values()
            .any(|b| b.min_insync_replicas != config.min_insync_replicas)
    {
        warn!(
            min_insync_replicas = config.min_insync_replicas,
            "brokers disagree on min.insync.replicas; the cluster now uses this broker's for \
             topics that do not set it: configure every broker alike"
        );
    }
    let producer_ids = crate::producer_ids::ProducerIds::new(controller.clone(), config.node_id);
    // The internal offsets topic exists from the first start on. In a new
    // cluster it is placed once the voters have registered (for a bounded
    // time), so that its partitions, and the groups they coordinate, spread
    // over the brokers rather than all land on the first one up.
    if topics.get(offsets_topic::TOPIC).is_none() {
        let deadline = std::time::Instant::now() + OFFSETS_TOPIC_WAIT;
        while topics.image().brokers.len() < config.quorum_voters.len()
            && topics.get(offsets_topic::TOPIC).is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if topics.get(offsets_topic::TOPIC).is_none() {
        runtime
            .block_on(
                topics.create(
                    offsets_topic::TOPIC,
                    offsets_topic::PARTITIONS,
                    config
                        .offsets_topic_replication_factor
                        .min(i16::try_from(topics.image().brokers.len()).unwrap_or(i16::MAX))
                        .max(1),
                    // Only compaction removes committed offsets.
                    [("retention.ms", "-1"), ("retention.bytes", "-1")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            )
            .map(|_| ())
            .or_else(|e| match e {
                // Another broker of the cluster created it first.
                crate::topics::TopicError::Exists(_) => Ok(()),
                e => Err(format!("creating {}: {e}", offsets_topic::TOPIC)),
            })?;
    }
    let groups = Coordinator::new(config.group_limits);
    let offsets = offsets_topic::OffsetStore::new(config.offsets_compact_records);
    // The groups replayed here are those of the offsets partitions led as
    // of now; any other that this broker comes to lead is replayed again.
    let coordinating = crate::groups::handover::Coordinating::replayed(
        crate::groups::handover::led(&topics, config.node_id),
    );
    let restored = runtime
        .block_on(offsets.load(&engine, &groups))
        .map_err(|e| format!("loading committed offsets: {e}"))?;
    info!(records = restored, "committed offsets loaded");
    let memory = crate::partition::budget::Budget::new(config.queued_max_request_bytes);
    let requests = crate::partition::budget::Budget::new(config.queued_max_request_bytes);
    let broker = Arc::new(Broker {
        coordinating,
        cluster_id,
        memory,
        requests,
        config,
        controller,
        engine,
        topics,
        producer_ids,
        groups,
        offsets,
    });
    // Group coordination follows the offsets partitions' leadership.
    {
        let for_handover = broker.clone();
        runtime
            .block_on(shard0.spawn(move || {
                compio::runtime::spawn(crate::groups::handover::follow(for_handover)).detach();
            }))
            .map_err(|e| format!("starting the coordinator handover: {e}"))?;
    }
    // Group sessions and rebalance deadlines advance on shard 0.
    {
        let for_ticker = broker.clone();
        runtime
            .block_on(shard0.spawn(move || {
                compio::runtime::spawn(async move {
                    loop {
                        compio::time::sleep(GROUP_TICK).await;
                        for_ticker.groups.tick(sluice_engine::shard::now_ms());
                    }
                })
                .detach();
            }))
            .map_err(|e| format!("starting the group ticker: {e}"))?;
    }
    // Group memberships that changed are written to __consumer_offsets, one
    // after another, by the broker coordinating each (a failed write is
    // tried again once the group is touched again).
    {
        let broker = broker.clone();
        runtime
            .block_on(shard0.spawn(move || {
                compio::runtime::spawn(async move {
                    loop {
                        compio::time::sleep(GROUP_TICK).await;
                        for (group, stored, key) in broker.groups.take_dirty() {
                            if !broker.coordinates(&group) {
                                continue;
                            }
                            match broker.offsets.store_group(&broker, &group, &stored).await {
                                Ok(()) => broker.groups.mark_stored(&group, key),
                                Err(e) => {
                                    warn!(group, error = %e, "writing the group's membership failed")
                                }
                            }
                        }
                    }
                })
                .detach();
            }))
            .map_err(|e| format!("starting the group membership writer: {e}"))?;
    }
    crate::replica::start(&broker)?;
    {
        let broker = broker.clone();
        let every = Duration::from_millis(broker.config.hw_checkpoint_interval_ms);
        std::thread::Builder::new()
            .name("sluice-hw-checkpoint".into())
            .spawn(move || {
                let mut last = None;
                loop {
                    std::thread::sleep(every);
                    last = checkpoint_high_watermarks(&broker, last);
                }
            })
            .map_err(|e| format!("starting the high-watermark checkpoint thread: {e}"))?;
    }
    for shard in broker.engine.shards() {
        let listener = bind_reuseport(broker.config.listen)
            .map_err(|e| format!("listening on {}: {e}", broker.config.listen))?;
        let for_shard = broker.clone();
        let id = shard.id();
        runtime
            .block_on(shard.spawn(move || match TcpListener::from_std(listener) {
                Ok(listener) => {
                    compio::runtime::spawn(accept_loop(listener, for_shard, id)).detach()
                }
                Err(e) => warn!(shard = id, error = %e, "cannot register the listener"),
            }))
            .map_err(|e| format!("starting the listener on shard {id}: {e}"))?;
    }
    info!(addr = %broker.config.listen, shards = broker.engine.shard_count(), backend = %broker.engine.backend(), "broker started");
    Ok(broker)
}

/// The cluster's id: named by the first broker of a new cluster (a
/// `SetClusterId` record), and tied to this broker's log directory by
/// `<log.dirs>/meta.properties` (`cluster.id`, `node.id`), as in Kafka.
/// A directory that belongs to another cluster, or to another node id, is
/// refused.
async fn cluster_id(
    controller: &Controller,
    log_dir: &std::path::Path,
    node_id: i32,
) -> Result<String, String> {
    let path = log_dir.join("meta.properties");
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = |key: &str| {
                text.lines()
                    .filter_map(|line| line.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_string())
            };
            let (Some(cluster), Some(node)) = (value("cluster.id"), value("node.id")) else {
                return Err(format!("{} lacks cluster.id or node.id", path.display()));
            };
            if node != node_id.to_string() {
                return Err(format!(
                    "{} belongs to node.id {node}, not {node_id}",
                    log_dir.display()
                ));
            }
            Some(cluster)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let known = controller.published().get().1.cluster_id.clone();
    let id = match known {
        Some(id) => id,
        None => {
            let proposed = stored.clone().unwrap_or_else(|| {
                crate::topics::new_topic_id()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            });
            // While the voters form the quorum, a proposal can fail for
            // the moment (its leader lost touch before committing, and the
            // record may still be applied): look again and retry until a
            // deadline, rather than refuse to start.
            let deadline = std::time::Instant::now() + NAMING_TIMEOUT;
            loop {
                let proposal = controller
                    .propose(crate::controller::MetadataRecord::SetClusterId {
                        id: proposed.clone(),
                    })
                    .await;
                match proposal {
                    Ok(_) => break proposed,
                    Err(crate::controller::ProposeError::Rejected(
                        crate::controller::MetadataError::ClusterIdSet(current),
                    )) => break current,
                    Err(e) => {
                        if let Some(id) = controller.published().get().1.cluster_id.clone() {
                            break id;
                        }
                        if std::time::Instant::now() >= deadline {
                            return Err(format!("naming the cluster: {e}"));
                        }
                        warn!(error = %e, "naming the cluster failed for now; trying again");
                        compio::time::sleep(NAMING_RETRY).await;
                    }
                }
            }
        }
    };
    match stored {
        Some(stored) if stored != id => Err(format!(
            "{} belongs to cluster {stored}, but the controller quorum is cluster {id}: \
             refusing to mix them (point log.dirs elsewhere or fix controller.quorum.voters)",
            log_dir.display()
        )),
        Some(_) => Ok(id),
        None => {
            let tmp = log_dir.join("meta.properties.tmp");
            let text = format!("version=1\ncluster.id={id}\nnode.id={node_id}\n");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| std::fs::File::open(log_dir)?.sync_all())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(id)
        }
    }
}

/// Takes `<log.dirs>/.lock` for the life of the process, as Kafka does, so
/// a second broker cannot open the same logs.
fn lock_log_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is in use by another broker ({})",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // The lock lives as long as the descriptor: keep it open until exit.
    std::mem::forget(file);
    Ok(())
}

/// Fails if another process listens on `addr`. The shards' listeners share
/// the port with SO_REUSEPORT, which would otherwise let a second broker
/// started on the same port join the group and take half the connections.
/// A connect, not a bind, is the probe: a bind also trips over the previous
/// run's connections still closing on that port. A listener of a process
/// that just exited can still accept for a moment (the kernel tears its
/// io_uring down asynchronously, and a pending accept holds the socket), so
/// the probe retries for a bounded time before giving up.
fn ensure_port_free(addr: SocketAddr) -> Result<(), String> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        match probe_listener(addr) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How long start-up waits for a previous listener on the port to go away.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);

fn probe_listener(addr: SocketAddr) -> Result<(), String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
        Ok(_) => Err(format!(
            "listening on {addr}: address already in use by another process"
        )),
        Err(_) => Ok(()),
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>, shard: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(shard, %peer, "connection accepted");
                compio::runtime::spawn(serve_connection(stream, peer, broker.clone(), Vec::new()))
                    .detach();
            }
            Err(e) => {
                // Out of descriptors, most likely: back off rather than spin.
                warn!(shard, error = %e, "accept failed");
                compio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Requests a connection may have read but not yet answered.
pub const MAX_IN_FLIGHT: usize = 16;

/// The outcome of one request: a response to send (or none, for
/// `acks=0`), or `Err` to close the connection once the responses before it
/// are sent.
type Outcome = Result<Option<handlers::Response>, ()>;

/// One request's place in a connection's response order.
enum Pending {
    /// A request running concurrently with its neighbours.
    Running(compio::runtime::JoinHandle<Outcome>),
    Done(Outcome),
    /// Fired once every earlier response has been written.
    Barrier(oneshot::Sender<()>),
    /// Like a barrier, and the writer then stops without closing the
    /// socket: the connection moves to another shard.
    Handover(oneshot::Sender<()>),
}

/// Whether a request may run alongside the requests before and after it
/// on its connection. These only read state (Metadata may create a topic,
/// which no later request on the connection can have depended on). Every
/// other request waits for all earlier ones to finish and runs alone, so
/// a connection's Produce requests append in the order they were sent and
/// group and offset changes apply in request order, as in Kafka, where a
/// connection has one request in progress at a time.
fn runs_concurrently(api_key: ApiKey) -> bool {
    matches!(
        api_key,
        ApiKey::Fetch
            | ApiKey::Metadata
            | ApiKey::ListOffsets
            | ApiKey::ApiVersions
            | ApiKey::OffsetFetch
            | ApiKey::DescribeConfigs
            | ApiKey::DescribeGroups
            | ApiKey::ListGroups
            | ApiKey::DescribeCluster
            | ApiKey::FindCoordinator
            | ApiKey::OffsetForLeaderEpoch
    )
}

/// Serves one connection: this task reads and starts requests while a
/// second task writes their responses in request order. At most
/// [`MAX_IN_FLIGHT`] requests are read ahead of the responses written.
/// `held`: bytes of the stream already received (by the shard the
/// connection moved from).
async fn serve_connection(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>, held: Vec<u8>) {
    let (tx, rx) = async_channel::bounded(MAX_IN_FLIGHT);
    // Closed when the client goes away: the writer then stops waiting for
    // requests still running and drops them, which cancels their work.
    let (client_here, client_gone) = async_channel::bounded::<()>(1);
    let writer = compio::runtime::spawn(write_responses(stream.clone(), peer, rx, client_gone));
    // A response may hold one batch larger than fetch.max.bytes (the first
    // batch is returned whole), so the budget covers one of those too.
    let budget = broker
        .config
        .fetch_max_bytes
        .max(broker.config.message_max_bytes);
    let connection = Arc::new(handlers::Connection {
        peer,
        budget: crate::partition::budget::Budget::new(budget),
        affinity: handlers::Affinity::default(),
    });
    let frames = crate::frames::FrameReader::with_bytes(held);
    let end = read_requests(stream, frames, connection, broker, tx).await;
    if end == ReadEnd::ClientGone {
        // As Kafka does at end of stream: the connection is gone, and so
        // are the answers it was owed.
        drop(client_here);
        let _ = writer.await;
    } else {
        // The writer sends what was started, then ends when the channel
        // does.
        let _ = writer.await;
        drop(client_here);
    }
}

/// Why a connection's reader stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// End of stream or a failed read: nobody will read the answers.
    ClientGone,
    /// The broker closes the connection (bad input) after the answers
    /// before it, or the writer has stopped.
    Closing,
    /// Another shard serves the connection now.
    Moved,
}

async fn handle(
    broker: &Broker,
    request: codec::Request,
    connection: &handlers::Connection,
) -> Outcome {
    let api_key = request.api_key;
    let peer = connection.peer;
    handlers::dispatch(broker, request, connection)
        .await
        .map_err(|e| {
            warn!(%peer, ?api_key, error = %e, "closing connection: bad request");
        })
}

async fn read_requests(
    mut stream: TcpStream,
    mut frames: crate::frames::FrameReader,
    connection: Arc<handlers::Connection>,
    broker: Arc<Broker>,
    responses: async_channel::Sender<Pending>,
) -> ReadEnd {
    let peer = connection.peer;
    let max = broker.config.socket_request_max_bytes;
    // Whether the requests since the last ordered one are all produces.
    let mut producing = false;
    let here = sluice_engine::shard::local().map(|l| l.id());
    loop {
        let home = connection.affinity.settled(MOVE_AFTER);
        if let Some(home) = home.filter(|&h| Some(h) != here) {
            return move_connection(stream, frames, peer, &broker, home, &responses).await;
        }
        let len = match frames.next_size(&mut stream).await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return ReadEnd::ClientGone,
            Err(e) => {
                debug!(%peer, error = %e, "connection read failed");
                return ReadEnd::ClientGone;
            }
        };
        if len <= 0 || len as usize > max {
            warn!(%peer, len, max, "closing connection: frame length outside (0, socket.request.max.bytes]");
            let _ = responses.send(Pending::Done(Err(()))).await;
            return ReadEnd::Closing;
        }
        // The frame's bytes count against the broker's request budget
        // from before they are read until the request is handled.
        let held = broker.requests.acquire(len as usize).await;
        let frame = match frames.body(&mut stream, len as usize).await {
            Ok(frame) => Bytes::from(frame),
            Err(e) => {
                debug!(%peer, error = %e, "client went away mid-request");
                return ReadEnd::ClientGone;
            }
        };
        let decoded = codec::decode_request(frame, peer);
        let is_produce = matches!(&decoded, Ok(r) if r.api_key == ApiKey::Produce);
        let pending = match decoded {
            Ok(request) if runs_concurrently(request.api_key) => {
                producing = false;
                let (broker, connection) = (broker.clone(), connection.clone());
                Pending::Running(compio::runtime::spawn(async move {
                    let outcome = handle(&broker, request, &connection).await;
                    drop(held);
                    outcome
                }))
            }
            Ok(request) if is_produce => {
                // The first produce after anything else waits, as every
                // ordered request does, for the responses before it; the
                // produces after it only for the one before them to be
                // queued on its partitions. They append in the order sent
                // and run together: a producer's requests in flight share
                // group commits instead of going one round trip at a time.
                if !producing {
                    let (done, earlier_sent) = oneshot::channel();
                    if responses.send(Pending::Barrier(done)).await.is_err()
                        || earlier_sent.await.is_err()
                    {
                        return ReadEnd::Closing;
                    }
                    producing = true;
                }
                let (queued, is_queued) = oneshot::channel();
                let (broker, connection) = (broker.clone(), connection.clone());
                let task = compio::runtime::spawn(async move {
                    let api_key = request.api_key;
                    let produced =
                        handlers::produce::handle(&broker, &request, &connection, Some(queued));
                    let outcome = produced.await.map_err(|e| {
                        warn!(%peer, ?api_key, error = %e, "closing connection: bad request");
                    });
                    drop(held);
                    outcome
                });
                // Told, or dropped if the handler ended first.
                let _ = is_queued.await;
                Pending::Running(task)
            }
            Ok(request) => {
                producing = false;
                let (done, earlier_sent) = oneshot::channel();
                if responses.send(Pending::Barrier(done)).await.is_err()
                    || earlier_sent.await.is_err()
                {
                    return ReadEnd::Closing;
                }
                let outcome = handle(&broker, request, &connection).await;
                drop(held);
                Pending::Done(outcome)
            }
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                version,
            }) => {
                debug!(%peer, version, "ApiVersions at an unknown version: answering with v0");
                Pending::Done(Ok(handlers::api_versions::unsupported_version(
                    correlation_id,
                )
                .map(handlers::Response::from)))
            }
            Err(e) => {
                warn!(%peer, error = %e, "closing connection: undecodable request");
                Pending::Done(Err(()))
            }
        };
        let closing = matches!(pending, Pending::Done(Err(())));
        if responses.send(pending).await.is_err() || closing {
            return ReadEnd::Closing;
        }
    }
}

/// How many produces or fetches in a row must touch only another shard's
/// partitions before their connection moves there. A follower's fetches
/// name the partitions of one shard (brokers with as many shards place a
/// partition on the same shard index), and so does a producer's or
/// consumer's of one partition per broker; a client of many partitions
/// spreads over the shards and stays where the kernel put it.
const MOVE_AFTER: u32 = 16;

/// Moves the connection to shard `home` between two requests: once every
/// answer owed is written, the socket is duplicated there, served anew,
/// and this end dropped. Costs the client one pause of its answers in
/// flight, once.
async fn move_connection(
    stream: TcpStream,
    frames: crate::frames::FrameReader,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    home: usize,
    responses: &async_channel::Sender<Pending>,
) -> ReadEnd {
    let (done, written) = oneshot::channel();
    if responses.send(Pending::Handover(done)).await.is_err() || written.await.is_err() {
        return ReadEnd::Closing;
    }
    let Some(shard) = broker.engine.shard(home) else {
        return ReadEnd::Closing;
    };
    let socket = match socket2::SockRef::from(&stream).try_clone() {
        Ok(socket) => socket,
        Err(e) => {
            warn!(%peer, error = %e, "closing connection: cannot move it to another shard");
            let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Both);
            return ReadEnd::Closing;
        }
    };
    let moved = broker.clone();
    // What this shard received of the requests after the last one read.
    let held = frames.into_held();
    let sent = shard
        .spawn(move || {
            compio::runtime::spawn(async move {
                match TcpStream::from_std(socket.into()) {
                    Ok(stream) => {
                        info!(%peer, shard = home, "connection moved to the shard of its partitions");
                        serve_connection(stream, peer, moved, held).await;
                    }
                    Err(e) => warn!(%peer, error = %e, "closing connection: cannot take it over"),
                }
            })
            .detach();
        })
        .await;
    if let Err(e) = sent {
        // Only a stopping broker has a shard gone.
        debug!(%peer, error = %e, "connection dropped: its shard stopped");
    }
    ReadEnd::Moved
}

async fn write_responses(
    stream: TcpStream,
    peer: SocketAddr,
    pending: async_channel::Receiver<Pending>,
    client_gone: async_channel::Receiver<()>,
) {
    let mut sender = crate::send::Sender::new(stream);
    while let Ok(next) = pending.recv().await {
        let outcome = match next {
            Pending::Running(task) => {
                let gone = client_gone.recv();
                futures_util::pin_mut!(gone);
                match futures_util::future::select(task, gone).await {
                    futures_util::future::Either::Left((done, _)) => done.unwrap_or_else(|e| {
                        warn!(%peer, error = ?e, "closing connection: a request handler failed");
                        Err(())
                    }),
                    // The client went away: dropping the queue (below)
                    // cancels the requests still running.
                    futures_util::future::Either::Right(_) => break,
                }
            }
            Pending::Done(outcome) => outcome,
            Pending::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
            Pending::Handover(done) => {
                let _ = done.send(());
                return;
            }
        };
        match outcome {
            Ok(Some(response)) => {
                // The budget bytes the response holds go back once it is
                // written (when `held` drops at the end of this arm).
                let handlers::Response { parts, held } = response;
                let result = sender.write(parts).await;
                drop(held);
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection write failed");
                    break;
                }
            }
            Ok(None) => {}
            Err(()) => break,
        }
    }
    // Closing both directions also ends the reader's pending read.
    let _ = socket2::SockRef::from(sender.stream()).shutdown(std::net::Shutdown::Both);
}

/// Controlled shutdown (SIGTERM): asks the controller to move every
/// leadership this broker holds to another in-sync replica and take it out
/// of the ISRs, and waits until this broker's own image says so, trying
/// `controlled.shutdown.max.retries` times. Clients then get
/// NOT_LEADER_OR_FOLLOWER here and go to the new leaders while this broker
/// still answers, rather than time out on a dead socket. Skipped on a
/// cluster of one (there is nobody to hand over to) or when disabled.
pub fn controlled_shutdown(broker: &Broker) {
    let Some((retries, backoff_ms)) = broker.config.controlled_shutdown else {
        return;
    };
    let me = broker.config.node_id;
    let epoch = broker.controller.broker_epoch();
    if epoch < 0 || broker.topics.image().brokers.len() <= 1 {
        return;
    }
    let runtime = match sluice_engine::shard::client_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            warn!(error = %e, "controlled shutdown: no runtime; stopping without it");
            return;
        }
    };
    let attempt_limit = Duration::from_millis(broker.config.controller_fetch_timeout_ms.max(1) * 5);
    for attempt in 1..=retries {
        // Brokers stopped together (`sluice dev-cluster` on Ctrl-C): once
        // the others are down, the controller may have gone with them, and
        // no one is left to take leaderships over anyway.
        if !another_broker_lives(broker, me) {
            return no_one_left(me);
        }
        let alone = async {
            while another_broker_lives(broker, me) {
                compio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let done = runtime.block_on(compio::time::timeout(
            attempt_limit,
            futures_util::future::select(
                Box::pin(broker.topics.shut_down(me, epoch)),
                Box::pin(alone),
            ),
        ));
        let done = match done {
            Ok(futures_util::future::Either::Left((done, _))) => Ok(done),
            Ok(futures_util::future::Either::Right(((), _))) => return no_one_left(me),
            Err(elapsed) => Err(elapsed),
        };
        match done {
            Ok(Ok(())) => {
                info!(
                    node = me,
                    "controlled shutdown: leaderships moved, out of every ISR"
                );
                return;
            }
            Ok(Err(e)) => warn!(attempt, retries, error = %e, "controlled shutdown failed"),
            Err(_) => warn!(
                attempt,
                retries, "controlled shutdown: the controller did not answer in time"
            ),
        }
        if attempt < retries {
            std::thread::sleep(Duration::from_millis(backoff_ms));
        }
    }
    warn!(node = me, "controlled shutdown gave up: stopping anyway; the controller fences this broker once its session times out");
}

/// Logs why a controlled shutdown ends without the controller's answer.
fn no_one_left(me: i32) {
    info!(
        node = me,
        "controlled shutdown: no other live broker to take leaderships over; stopping"
    );
}

/// Whether the metadata shows a broker other than `me` registered and
/// neither fenced, shutting down nor without storage.
fn another_broker_lives(broker: &Broker, me: i32) -> bool {
    let image = broker.topics.image();
    image.brokers.keys().any(|b| {
        *b != me
            && !image.fenced.contains(b)
            && !image.shutting_down.contains(b)
            && !image.storage_failed.contains(b)
    })
}

/// Writes every group membership that changed since it was last written
/// (the background writer runs every `GROUP_TICK`): called before a broker
/// stops, so that the next coordinator of each group, this broker after a
/// restart or another after the handover, does not restore members that
/// had already left.
pub fn store_group_memberships(broker: &Arc<Broker>) {
    let Ok(runtime) = sluice_engine::shard::client_runtime() else {
        return;
    };
    for (group, stored, key) in broker.groups.unsaved() {
        if !broker.coordinates(&group) {
            continue;
        }
        match runtime.block_on(broker.offsets.store_group(broker, &group, &stored)) {
            Ok(()) => broker.groups.mark_stored(&group, key),
            Err(e) => warn!(group, error = %e, "writing the group's membership failed"),
        }
    }
}

/// How long a starting broker keeps trying to name a new cluster, and how
/// long it waits between tries.
const NAMING_TIMEOUT: Duration = Duration::from_secs(30);
const NAMING_RETRY: Duration = Duration::from_millis(100);

/// How long a heartbeat waits for a shard to say how its logs' storage is.
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_millis(200);

/// The free space a full log directory needs again before the broker
/// says it has room: at least a batch, and enough that the next appends
/// do not fill it at once (and fence the broker again a moment later).
const ROOM_MARGIN: u64 = 8 << 20;

/// Where the log directory is, and how much free space counts as room.
struct Room {
    dir: std::path::PathBuf,
    margin: u64,
}

impl Room {
    /// Whether the file system of the log directory has the margin free
    /// (for writers without root's reserve, as the broker may be one).
    fn is_there(&self) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(self.dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statvfs(3) fills the struct it is given; all-zero bytes
        // are a valid value of it.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `stat` a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return false;
        }
        (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64) >= self.margin
    }
}

/// Sets what the next heartbeats say of the log directory: offline if any
/// log went offline (a failed write or fsync; for good, until a restart
/// reopens them), full while appends hit ENOSPC and the disk has no room,
/// else fine. A log stays marked full until an append to it succeeds, and
/// a partition that no longer gets any (its leadership moved away and
/// nothing new was written) would keep the broker fenced for ever: so once
/// the file system has room again the directory counts as fine. Told only
/// in a cluster of more than one broker: a sole broker has nowhere to move
/// its leaderships, so it keeps serving the partitions whose logs work
/// (and a full disk's appends resume once there is room).
fn check_storage(
    runtime: &compio::runtime::Runtime,
    engine: &Engine,
    controller: &Controller,
    room: &Room,
) {
    use crate::controller::Storage;
    use sluice_engine::StorageHealth;
    let before = controller.storage();
    if before == Storage::Offline {
        return;
    }
    let mut failures = Vec::new();
    for shard in engine.shards() {
        // A shard too busy to answer soon is asked again next time: the
        // heartbeat must not wait for it.
        let asked = shard.run(|local| Box::pin(async move { local.storage_failures() }));
        match runtime.block_on(compio::time::timeout(STORAGE_CHECK_TIMEOUT, asked)) {
            Ok(Ok(found)) => failures.extend(found),
            _ => return,
        }
    }
    let worst = failures.iter().map(|(_, h)| *h).max();
    let now = match worst {
        Some(StorageHealth::Offline) => Storage::Offline,
        Some(StorageHealth::Full) if !room.is_there() => Storage::Full,
        _ => Storage::Ok,
    };
    if now == before || controller.published().get().1.brokers.len() < 2 {
        return;
    }
    let partitions: Vec<String> = failures.iter().map(|(tp, _)| tp.to_string()).collect();
    match now {
        Storage::Ok => info!("the log directory has room again; telling the controller"),
        _ => tracing::error!(
            state = ?now,
            partitions = ?partitions,
            "the log directory failed; telling the controller, which moves this broker's \
             leaderships and takes it out of every ISR"
        ),
    }
    controller.set_storage(now);
}

/// Written into `log.dirs` once every log is flushed and closed, removed at
/// the next start.
pub const CLEAN_SHUTDOWN_FILE: &str = ".sluice-clean-shutdown";
/// The boot id of the machine at this broker's last start.
const BOOT_ID_FILE: &str = ".sluice-boot-id";

/// Whether everything the previous run of this broker wrote is still in
/// `log_dir`: it shut down cleanly, or the machine has not restarted since
/// that run started (a killed process loses nothing the page cache holds).
/// Records this start's boot id.
fn data_intact(log_dir: &std::path::Path) -> bool {
    let clean = std::fs::remove_file(log_dir.join(CLEAN_SHUTDOWN_FILE)).is_ok();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let previous = std::fs::read_to_string(log_dir.join(BOOT_ID_FILE)).ok();
    if let Err(e) = std::fs::write(log_dir.join(BOOT_ID_FILE), &boot) {
        warn!(error = %e, "recording the boot id");
    }
    let same_boot = !boot.is_empty() && previous.as_deref().map(str::trim) == Some(boot.as_str());
    clean || same_boot
}

/// Writes every partition's high watermark to `log.dirs` unless it is what
/// `last` (the previous call's result) already wrote; returns what is on
/// disk now.
pub fn checkpoint_high_watermarks(
    broker: &Broker,
    last: Option<crate::partition::checkpoint::Checkpointed>,
) -> Option<crate::partition::checkpoint::Checkpointed> {
    use crate::partition::checkpoint;
    let runtime = sluice_engine::shard::client_runtime().ok()?;
    let mut now = checkpoint::Checkpointed::new();
    for shard in broker.engine.shards() {
        let found = runtime
            .block_on(shard.run(|_| Box::pin(async { crate::partition::high_watermarks() })));
        for (tp, id, hw) in found.unwrap_or_default() {
            now.insert(tp, (id, hw));
        }
    }
    if last.as_ref() == Some(&now) {
        return last;
    }
    match checkpoint::store(&broker.config.log_dir, &now) {
        Ok(()) => Some(now),
        Err(e) => {
            warn!(error = %e, "writing the high-watermark checkpoint");
            last
        }
    }
}
