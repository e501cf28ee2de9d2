//! The controller quorum: cluster metadata as a Raft log (openraft).
//!
//! Topics, partitions, leaders, leader epochs, ISR, topic configs and
//! broker registrations are [`MetadataRecord`]s in a Raft log; applying
//! them builds a [`MetadataImage`]. The single-node default is a quorum
//! of one voter, this broker's `node.id`, which elects itself at start.
//!
//! Raft runs on its own thread with a current-thread tokio runtime
//! (openraft is tokio-bound). Shards reach it only by channel: a
//! [`Controller::propose`] call sends the record to that thread and
//! awaits, on the shard's own runtime, the result of applying it. Each
//! applied batch publishes a new image ([`Published`]); the broker
//! reconciles its local logs with it and serves Metadata from it (see
//! `topics.rs`).
//!
//! Controllers talk over their CONTROLLER listeners ([`network`]): Raft's
//! own calls, proposals forwarded by a node that does not lead to the one
//! that does, and the leader's read index for a node catching up at start.
//! The voters are static (`controller.quorum.voters`); on first start each
//! forms the quorum with all of them (openraft allows every voter to do so
//! with the same set), and they elect a leader among themselves. A single
//! node with no CONTROLLER listener is a quorum of one that never calls
//! anyone.

pub mod election;
pub mod image;
pub mod liveness;
pub mod network;
pub mod placement;
pub mod prevote;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::oneshot;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tracing::{debug, info, warn};

pub use image::{Applied, MetadataError, MetadataImage, MetadataRecord};

/// A broker's log directory as its heartbeats report it (as Kafka's report
/// offline log directories, KIP-858). The broker's only directory, since
/// `log.dirs` takes one: a failed one takes the broker's storage out of
/// service (see `MetadataRecord::LogDirFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Storage {
    #[default]
    Ok,
    /// Appends fail with ENOSPC; the broker reports `Ok` again once one fits.
    Full,
    /// A write or fsync failed: what was not flushed may be gone. Until the
    /// broker restarts.
    Offline,
}

openraft::declare_raft_types!(
    /// The controller's Raft types: metadata records in, their outcome out.
    pub TypeConfig:
        D = MetadataRecord,
        R = Result<Applied, MetadataError>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// The directory under `log.dirs` holding the metadata log. Its name
/// cannot be mistaken for a partition directory (`<topic>-<number>`).
pub const DIR: &str = ".sluice-metadata";

/// The newest applied image, and a signal for whoever follows it.
pub struct Published {
    latest: Mutex<(u64, Arc<MetadataImage>)>,
    tx: async_channel::Sender<()>,
    rx: async_channel::Receiver<()>,
}

impl Default for Published {
    fn default() -> Published {
        let (tx, rx) = async_channel::bounded(1);
        Published {
            latest: Mutex::new((0, Arc::default())),
            tx,
            rx,
        }
    }
}

impl Published {
    fn set(&self, index: u64, image: Arc<MetadataImage>) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = (index, image);
        // A full channel already holds a wake-up for the follower.
        let _ = self.tx.try_send(());
    }

    /// The newest image and the log index it includes.
    pub fn get(&self) -> (u64, Arc<MetadataImage>) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until an image newer than the last one waited for may exist.
    /// Meant for one follower.
    pub async fn changed(&self) {
        // The sender lives in `self`: the channel never closes.
        let _ = self.rx.recv().await;
    }
}

/// Why a proposal did not become part of the metadata.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    #[error("the controller is unavailable: {0}")]
    Unavailable(String),
}

/// A record committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its index in the metadata log.
    pub index: u64,
    pub applied: Applied,
}

struct Proposal {
    record: MetadataRecord,
    reply: oneshot::Sender<Result<Committed, ProposeError>>,
}

/// What the controller thread is asked.
enum Inbox {
    Propose(Proposal),
    /// A broker's heartbeat (this node's own broker's), with the epoch of
    /// its registration and the state of its log directory.
    Heartbeat(i32, i64, Storage),
}

/// A handle to the controller thread, shared by every shard.
pub struct Controller {
    proposals: async_channel::Sender<Inbox>,
    published: Arc<Published>,
    /// The Raft leader as this node last saw it.
    leader: Arc<Mutex<Option<u64>>>,
    /// This run's broker epoch (-1 until registered).
    broker_epoch: std::sync::atomic::AtomicI64,
    /// This broker's log directory, as its heartbeats report it.
    storage: Mutex<Storage>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Applied records between two snapshots of the image; the journal is
/// then cut down to the last tenth of them (at most 100).
pub const SNAPSHOT_EVERY: u64 = 1000;

/// Who the controllers are and how long they wait for each other.
#[derive(Debug, Clone)]
pub struct Quorum {
    pub node_id: i32,
    /// The voters (`controller.quorum.voters`): node id and the address of
    /// its CONTROLLER listener.
    pub voters: BTreeMap<u64, String>,
    /// `controller.quorum.election.timeout.ms`.
    pub election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`.
    pub fetch_timeout_ms: u64,
    /// `broker.session.timeout.ms`: the active controller fences a broker
    /// it has not heard from for this long.
    pub session_timeout_ms: u64,
    /// For a node that is not a voter (`process.roles=broker`): the address
    /// of its CONTROLLER listener, where the leader sends it the log.
    pub learner_addr: Option<String>,
    /// The elections this node makes while it is the active controller.
    pub elections: election::Settings,
}

impl Quorum {
    /// This node alone, with nobody to call.
    pub fn single(node_id: i32, address: String) -> Quorum {
        Quorum {
            node_id,
            voters: BTreeMap::from([(node_id.max(0) as u64, address)]),
            election_timeout_ms: 1000,
            fetch_timeout_ms: 2000,
            session_timeout_ms: 9000,
            learner_addr: None,
            elections: election::Settings::default(),
        }
    }
}

impl Controller {
    /// Opens the metadata log under `log_dir`, starts Raft on its own
    /// thread with `node_id` as the one voter, and returns once this node
    /// leads and has applied every committed record.
    pub fn start(log_dir: &Path, node_id: i32, address: String) -> Result<Controller, String> {
        Controller::start_with(log_dir, node_id, address, SNAPSHOT_EVERY)
    }

    /// [`Controller::start`], snapshotting every `snapshot_every` records.
    pub fn start_with(
        log_dir: &Path,
        node_id: i32,
        address: String,
        snapshot_every: u64,
    ) -> Result<Controller, String> {
        Controller::start_quorum(
            log_dir,
            Quorum::single(node_id, address),
            None,
            snapshot_every,
        )
    }

    /// Opens the metadata log under `log_dir`, starts Raft on its own
    /// thread, serves `listener` (the CONTROLLER listener) for the other
    /// voters, forms the quorum on first start, and returns once there is
    /// a leader and this node has applied everything committed when it
    /// asked. Waits as long as it takes a majority of the voters to come
    /// up, saying so every few seconds.
    pub fn start_quorum(
        log_dir: &Path,
        quorum: Quorum,
        listener: Option<std::net::TcpListener>,
        snapshot_every: u64,
    ) -> Result<Controller, String> {
        let id = u64::try_from(quorum.node_id)
            .map_err(|_| format!("node.id {} is negative", quorum.node_id))?;
        let dir = log_dir.join(DIR);
        let log = store::LogStore::open(&dir)
            .map_err(|e| format!("opening the metadata log in {}: {e}", dir.display()))?;
        let published = Arc::new(Published::default());
        let machine = store::StateMachine::open(&dir, published.clone())
            .map_err(|e| format!("reading the metadata snapshot in {}: {e}", dir.display()))?;
        let (proposals, inbox) = async_channel::bounded::<Inbox>(1024);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let config = raft_config(snapshot_every, quorum.election_timeout_ms)?;
        let leader = Arc::new(Mutex::new(None));
        let seen_leader = leader.clone();
        let for_thread = published.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-controller".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .enable_io()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("controller runtime: {e}")));
                        return;
                    }
                };
                let start = Start {
                    id,
                    quorum,
                    listener,
                    config,
                    log,
                    machine,
                    leader: seen_leader,
                    published: for_thread,
                };
                runtime.block_on(run(start, inbox, ready_tx));
            })
            .map_err(|e| format!("starting the controller thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the controller thread ended during start-up".to_string())??;
        Ok(Controller {
            proposals,
            published,
            leader,
            broker_epoch: std::sync::atomic::AtomicI64::new(-1),
            storage: Mutex::new(Storage::Ok),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops Raft and waits for its thread. Proposals still in flight
    /// answer `Unavailable`; everything already answered is durable.
    pub fn stop(&self) {
        self.proposals.close();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Appends `record` to the metadata log (through the leader, wherever
    /// it is); answers once it is committed and applied by the leader, or
    /// why it did not apply.
    pub async fn propose(&self, record: MetadataRecord) -> Result<Committed, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Inbox::Propose(Proposal { record, reply }))
            .await
            .map_err(|_| ProposeError::Unavailable("the controller has stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Unavailable("the controller dropped the request".into()))?
    }

    /// This broker (`broker`) is alive: passed to the active controller,
    /// which fences brokers it has not heard from for
    /// `broker.session.timeout.ms`. Never waits; a heartbeat that finds
    /// the controller thread busy is dropped (the next one counts). Sent
    /// only once this run of the broker has registered: it speaks for
    /// that registration (its broker epoch).
    pub fn heartbeat(&self, broker: i32) {
        let epoch = self.broker_epoch();
        if epoch >= 0 {
            let storage = self.storage();
            let _ = self
                .proposals
                .try_send(Inbox::Heartbeat(broker, epoch, storage));
        }
    }

    /// This broker's log directory as the next heartbeats report it.
    pub fn set_storage(&self, storage: Storage) {
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = storage;
    }

    pub fn storage(&self) -> Storage {
        *self.storage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch this run of the broker's registration was given, or -1
    /// before it registered.
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_broker_epoch(&self, epoch: i64) {
        self.broker_epoch
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    /// The newest applied image.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// The active controller (the Raft leader), if one is known.
    pub fn leader(&self) -> Option<i32> {
        self.leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|id| id as i32)
    }
}

fn raft_config(snapshot_every: u64, election_timeout_ms: u64) -> Result<Arc<Config>, String> {
    let election = election_timeout_ms.max(10);
    let config = Config {
        cluster_name: "sluice".into(),
        // openraft gives each AppendEntries (heartbeats included) the
        // heartbeat interval to be answered. A fifth of the election
        // timeout (100 ms with the tests' 500) was too short on a loaded
        // machine: a peer that answered late was never caught up and the
        // quorum could stall for a minute. Half of it still sends two
        // heartbeats per election timeout.
        heartbeat_interval: (election / 2).max(5),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(100),
        // Elections start from `prevote::watch`, after a pre-vote.
        enable_elect: false,
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| e.to_string())?))
}

/// How long a proposal may look for a leader to take it.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often start-up says it is still waiting for a quorum.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

/// What the controller thread starts with.
struct Start {
    id: u64,
    quorum: Quorum,
    listener: Option<std::net::TcpListener>,
    config: Arc<Config>,
    log: store::LogStore,
    machine: store::StateMachine,
    leader: Arc<Mutex<Option<u64>>>,
    published: Arc<Published>,
}

async fn run(
    start: Start,
    inbox: async_channel::Receiver<Inbox>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let id = start.id;
    let seen_leader = start.leader.clone();
    let fetch_timeout = Duration::from_millis(start.quorum.fetch_timeout_ms.max(1));
    let session_timeout = Duration::from_millis(start.quorum.session_timeout_ms.max(1));
    let published = start.published.clone();
    let elections = start.quorum.elections.clone();
    let liveness = Arc::new(liveness::Liveness::default());
    let raft = match begin(start, liveness.clone()).await {
        Ok(raft) => {
            let _ = ready.send(Ok(()));
            raft
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    info!(node = id, "controller ready");
    // Keeps `Controller::leader` current.
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let now = metrics.borrow().current_leader;
            *seen_leader.lock().unwrap_or_else(|e| e.into_inner()) = now;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(liveness::watch(
        raft.clone(),
        published.clone(),
        liveness.clone(),
        session_timeout,
        fetch_timeout,
    ));
    tokio::spawn(election::watch(
        raft.clone(),
        published,
        elections,
        fetch_timeout,
    ));
    while let Ok(message) = inbox.recv().await {
        let (raft, liveness) = (raft.clone(), liveness.clone());
        match message {
            Inbox::Propose(proposal) => tokio::spawn(async move {
                let outcome = propose(&raft, proposal.record, fetch_timeout).await;
                let _ = proposal.reply.send(outcome);
            }),
            Inbox::Heartbeat(broker, epoch, storage) => tokio::spawn(async move {
                liveness::heartbeat(&raft, &liveness, (broker, epoch), storage, fetch_timeout)
                    .await;
            }),
        };
    }
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "stopping the controller");
    }
}

/// Starts Raft and the listener, forms the quorum on first start, and
/// catches up.
async fn begin(
    start: Start,
    liveness: Arc<liveness::Liveness>,
) -> Result<Raft<TypeConfig>, String> {
    let Start {
        id,
        quorum,
        listener,
        config,
        log,
        machine,
        leader: _,
        published: _,
    } = start;
    let pre_vote = Arc::new(prevote::PreVote::new(
        Duration::from_millis(config.election_timeout_min),
        log.clone(),
    ));
    let raft = Raft::new(id, config, network::Peers, log, machine)
        .await
        .map_err(|e| format!("starting the controller: {e}"))?;
    tokio::spawn(prevote::watch(raft.clone(), pre_vote.clone()));
    if let Some(listener) = listener {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("the controller listener: {e}"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("the controller listener: {e}"))?;
        tokio::spawn(network::serve(listener, raft.clone(), liveness, pre_vote));
    }
    match &quorum.learner_addr {
        None => form(&raft, id, &quorum.voters).await?,
        Some(addr) => {
            let fetch_timeout = Duration::from_millis(quorum.fetch_timeout_ms.max(1));
            join(&raft, id, addr, &quorum.voters, fetch_timeout).await?
        }
    }
    catch_up(
        &raft,
        id,
        Duration::from_millis(quorum.fetch_timeout_ms.max(1)),
    )
    .await?;
    Ok(raft)
}

/// Forms the quorum of `voters` on a pristine log, or checks that the
/// stored one is the same set.
async fn form(
    raft: &Raft<TypeConfig>,
    id: u64,
    voters: &BTreeMap<u64, String>,
) -> Result<(), String> {
    let configured: Vec<u64> = voters.keys().copied().collect();
    let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
    if !initialized {
        let members: BTreeMap<u64, BasicNode> = voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => info!(node = id, voters = ?configured, "formed a new controller quorum"),
            // Another voter's formation reached this one first.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(format!("forming the controller quorum: {e}")),
        }
        return Ok(());
    }
    let stored = stored_voters(raft).await;
    if !stored.contains(&id) {
        return Err(format!(
            "the metadata log belongs to a quorum of node(s) {stored:?}, not to node.id {id}; \
             start with the node.id it was created with"
        ));
    }
    if stored != configured {
        return Err(format!(
            "controller.quorum.voters names node(s) {configured:?}, but the metadata log's \
             quorum is {stored:?}; the voter set is static: start with the voters it was \
             formed with"
        ));
    }
    if stored.len() == 1 {
        // Do not wait out an election timeout to lead a quorum of one.
        raft.trigger().elect().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The voters of the membership stored in the log (an initialized one):
/// it reaches the metrics shortly after start.
async fn stored_voters(raft: &Raft<TypeConfig>) -> Vec<u64> {
    raft.wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.membership_config.voter_ids().next().is_some(),
            "the stored membership",
        )
        .await
        .map(|m| m.membership_config.voter_ids().collect())
        .unwrap_or_default()
}

/// A node that is not a voter: asks the voters, one after another until
/// one answers yes, to have the leader add it as a learner that it sends
/// the metadata log to at `addr`. Refuses a stored log of another quorum.
async fn join(
    raft: &Raft<TypeConfig>,
    id: u64,
    addr: &str,
    voters: &BTreeMap<u64, String>,
    fetch_timeout: Duration,
) -> Result<(), String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        let stored = stored_voters(raft).await;
        let configured: Vec<u64> = voters.keys().copied().collect();
        if stored != configured {
            return Err(format!(
                "controller.quorum.voters names node(s) {configured:?}, but the metadata log \
                 follows a quorum of {stored:?}"
            ));
        }
    }
    let mut next_log = tokio::time::Instant::now() + WAITING_LOG_EVERY;
    loop {
        for (voter, voter_addr) in voters {
            let mut peer = network::Peer::new(*voter, voter_addr.clone());
            let call = network::Call::AddLearner {
                id,
                addr: addr.to_string(),
            };
            match peer.call(&call, fetch_timeout * 3).await {
                Ok(network::Answer::AddLearner(Ok(()))) => {
                    info!(node = id, voter, "following the metadata log as a learner");
                    return Ok(());
                }
                Ok(network::Answer::AddLearner(Err(e))) if e.contains("is a controller voter") => {
                    return Err(e)
                }
                Ok(answer) => debug!(voter, ?answer, "joining as a learner: not yet"),
                Err(e) => debug!(voter, error = %e, "joining as a learner: unreachable"),
            }
        }
        let now = tokio::time::Instant::now();
        if now >= next_log {
            next_log = now + WAITING_LOG_EVERY;
            warn!(
                node = id,
                "waiting to join the controller quorum as a learner: is a majority of \
                 controller.quorum.voters up, and this node's CONTROLLER listener \
                 ({addr}) reachable from them?"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until there is a leader and this node has applied everything
/// committed when it asked (its read index).
async fn catch_up(raft: &Raft<TypeConfig>, id: u64, fetch_timeout: Duration) -> Result<(), String> {
    let mut next_log = tokio::time::Instant::now() + WAITING_LOG_EVERY;
    loop {
        let metrics = raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == id => {
                let confirmed = raft.ensure_linearizable().await;
                if confirmed.is_ok() {
                    info!(node = id, "leading the controller quorum");
                    return Ok(());
                }
            }
            Some(leader) => {
                if let Some(mut peer) = network::leader_peer(&metrics) {
                    if let Ok(network::Answer::ReadIndex(Ok(index))) =
                        peer.call(&network::Call::ReadIndex, fetch_timeout).await
                    {
                        let caught_up = raft
                            .wait(Some(fetch_timeout * 5))
                            .applied_index_at_least(Some(index), "the leader's read index")
                            .await;
                        if caught_up.is_ok() {
                            info!(node = id, leader, "following the controller quorum");
                            return Ok(());
                        }
                    }
                }
            }
            None => {}
        }
        let now = tokio::time::Instant::now();
        if now >= next_log {
            next_log = now + WAITING_LOG_EVERY;
            warn!(
                node = id,
                "waiting for a controller quorum: is a majority of controller.quorum.voters up \
                 and reachable on their CONTROLLER listeners?"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends `record` through whichever node leads, looking for a leader
/// for up to [`PROPOSE_TIMEOUT`]. A proposal whose forwarding failed
/// half-way may be applied and then proposed again: records are written
/// so that a repeat is refused (a topic that exists) or harmless.
async fn propose(
    raft: &Raft<TypeConfig>,
    record: MetadataRecord,
    fetch_timeout: Duration,
) -> Result<Committed, ProposeError> {
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    // Why the last try failed, for the error if none succeeds.
    let mut why = String::from("no controller leader known");
    // Doubled after each failed try: a broker's ISR changes are one
    // proposal per partition, and a tight retry of each (a connection
    // every 50 ms) swamped the controllers while a leader was away.
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(written) = unless_cut_off(raft, raft.client_write(record.clone())).await else {
            return Err(ProposeError::Unavailable(CUT_OFF.into()));
        };
        let leader = match written {
            Ok(response) => {
                return response
                    .data
                    .map(|applied| Committed {
                        index: response.log_id.index,
                        applied,
                    })
                    .map_err(ProposeError::Rejected)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(leader))) => leader,
            Err(e) => {
                warn!(error = %e, "the metadata log refused a record");
                return Err(ProposeError::Unavailable(e.to_string()));
            }
        };
        if let (Some(target), Some(node)) = (leader.leader_id, leader.leader_node) {
            let mut peer = network::Peer::new(target, node.addr);
            match peer
                .call(&network::Call::Propose(record.clone()), fetch_timeout)
                .await
            {
                Ok(network::Answer::Propose(network::Proposed::Committed { index, applied })) => {
                    return Ok(Committed { index, applied })
                }
                Ok(network::Answer::Propose(network::Proposed::Rejected(e))) => {
                    return Err(ProposeError::Rejected(e))
                }
                Ok(other) => why = format!("controller {target} answered {other:?}"),
                Err(e) => why = format!("forwarding to controller {target}: {e}"),
            }
            debug!(leader = target, why, "forwarding a proposal");
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProposeError::Unavailable(format!(
                "no controller leader took the record within {PROPOSE_TIMEOUT:?} (last: {why})"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Why a proposal made on a leader that lost its quorum was given up.
const CUT_OFF: &str = "this controller lost touch with the rest of the quorum before the \
                       record was committed (it may still be applied); try again";

/// The time after which a leader that has heard from no quorum may have
/// been replaced: openraft's leader lease (the longest election timeout),
/// which is also how long a voter refuses a pre-vote after hearing from
/// a leader.
fn lease(raft: &Raft<TypeConfig>) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}

/// Whether `metrics` say this node leads and a quorum acknowledged it
/// within `lease`. openraft 0.9 has no check-quorum: a leader cut off
/// from the other voters goes on believing it leads (and appending what
/// it is asked to) until it hears of a newer term.
fn leads_in_touch(metrics: &openraft::RaftMetrics<u64, BasicNode>, lease: Duration) -> bool {
    metrics.current_leader == Some(metrics.id)
        && metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| u128::from(ms) <= lease.as_millis())
}

/// Waits for `write` (a record appended to this node's log) unless this
/// node leads and loses touch with its quorum first (`None`). Without
/// this, a proposal on a cut-off leader waited until a new leader's
/// entries overwrote it, which an idle metadata log may not do for tens
/// of seconds: the fencing and election loops, which make one proposal
/// per broker or partition at a time, were stuck behind it, as were the
/// broker's own ISR changes. A follower's write is answered at once.
async fn unless_cut_off<T>(
    raft: &Raft<TypeConfig>,
    write: impl std::future::Future<Output = T>,
) -> Option<T> {
    let lease = lease(raft);
    let mut metrics = raft.metrics();
    let id = metrics.borrow().id;
    if metrics.borrow().current_leader != Some(id) {
        return Some(write.await);
    }
    let began = tokio::time::Instant::now();
    let cut_off = |metrics: &openraft::RaftMetrics<u64, BasicNode>| {
        let stale = match metrics.millis_since_quorum_ack {
            Some(ms) => u128::from(ms) > lease.as_millis(),
            // Elected, but no quorum has answered it yet.
            None => began.elapsed() > lease,
        };
        metrics.current_leader != Some(id) || stale
    };
    // Already cut off: appending would only lengthen the log that the
    // next leader has to overwrite (a broker's ISR changes are retried
    // every few hundred milliseconds).
    if cut_off(&metrics.borrow()) {
        return None;
    }
    let lapsed = async {
        loop {
            if cut_off(&metrics.borrow()) {
                return;
            }
            // The acknowledgement's age grows without a change of
            // metrics (openraft refreshes them each tick): look again.
            let _ = tokio::time::timeout(lease / 8, metrics.changed()).await;
        }
    };
    tokio::select! {
        biased;
        out = write => Some(out),
        () = lapsed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::image::PartitionRecord;
    use super::*;

    fn create(name: &str) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.into(),
            id: [name.len() as u8; 16],
            partitions: vec![PartitionRecord::single(1); 2],
            overrides: BTreeMap::new(),
        }
    }

    fn start(dir: &Path, snapshot_every: u64) -> Controller {
        Controller::start_with(dir, 1, "127.0.0.1:9092".into(), snapshot_every).unwrap()
    }

    fn propose(controller: &Controller, record: MetadataRecord) -> Result<u64, ProposeError> {
        let runtime = sluice_engine::shard::client_runtime().unwrap();
        runtime
            .block_on(controller.propose(record))
            .map(|committed| committed.index)
    }

    fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn records_survive_restarts_through_snapshots_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let controller = start(dir.path(), 10);
        let mut last = 0;
        for i in 0..40 {
            last = propose(&controller, create(&format!("t{i}"))).unwrap();
        }
        assert!(matches!(
            propose(&controller, create("t3")),
            Err(ProposeError::Rejected(MetadataError::TopicExists(_)))
        ));
        assert_eq!(controller.published().get().0, last + 1);
        let journal = dir.path().join(DIR).join("journal");
        poll_until("a snapshot and a purged journal", || {
            let bytes = std::fs::read(&journal).unwrap();
            dir.path().join(DIR).join("snapshot").exists()
                && bytes.windows(b"Purged".len()).any(|w| w == b"Purged")
        });
        let before = controller.published().get().1;
        controller.stop();

        let controller = start(dir.path(), 10);
        let (index, image) = controller.published().get();
        assert!(index > last, "the restart re-applied the log");
        assert_eq!(image.topics, before.topics);
        propose(
            &controller,
            MetadataRecord::DeleteTopic { name: "t0".into() },
        )
        .unwrap();
        controller.stop();

        let controller = start(dir.path(), 10);
        let image = controller.published().get().1;
        assert_eq!(image.topics.len(), 39);
        assert!(!image.topics.contains_key("t0"));
        controller.stop();
    }

    #[test]
    fn a_metadata_log_refuses_a_node_id_it_was_not_created_with() {
        let dir = tempfile::tempdir().unwrap();
        start(dir.path(), 1000).stop();
        let refused = Controller::start(dir.path(), 2, "127.0.0.1:9092".into())
            .err()
            .expect("node 2 started on node 1's metadata log");
        assert!(refused.contains("node.id 2"), "{refused}");
        start(dir.path(), 1000).stop();
    }

    #[test]
    fn a_torn_journal_tail_is_cut_off_and_appends_continue() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let controller = start(dir.path(), 1000);
        for name in ["a", "bb"] {
            propose(&controller, create(name)).unwrap();
        }
        controller.stop();
        let journal = dir.path().join(DIR).join("journal");
        let intact = std::fs::metadata(&journal).unwrap().len();
        // A frame header promising more bytes than were written.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(file);

        let controller = start(dir.path(), 1000);
        assert!(std::fs::metadata(&journal).unwrap().len() >= intact);
        propose(&controller, create("ccc")).unwrap();
        controller.stop();
        let controller = start(dir.path(), 1000);
        let names: Vec<String> = controller
            .published()
            .get()
            .1
            .topics
            .keys()
            .cloned()
            .collect();
        assert_eq!(names, ["a", "bb", "ccc"]);
        controller.stop();
    }
}
