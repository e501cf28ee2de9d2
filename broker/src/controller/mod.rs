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
//! With one voter the network is never used, and [`NoPeers`] answers every
//! call as unreachable. More voters need a transport between controllers
//! here, and nothing else.

pub mod image;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::oneshot;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tracing::{info, warn};

pub use image::{Applied, MetadataError, MetadataImage, MetadataRecord};

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

/// How long start-up waits for this node to lead the quorum.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A handle to the controller thread, shared by every shard.
pub struct Controller {
    proposals: async_channel::Sender<Proposal>,
    published: Arc<Published>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Applied records between two snapshots of the image; the journal is
/// then cut down to the last tenth of them (at most 100).
pub const SNAPSHOT_EVERY: u64 = 1000;

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
        let id = u64::try_from(node_id).map_err(|_| format!("node.id {node_id} is negative"))?;
        let dir = log_dir.join(DIR);
        let log = store::LogStore::open(&dir)
            .map_err(|e| format!("opening the metadata log in {}: {e}", dir.display()))?;
        let published = Arc::new(Published::default());
        let machine = store::StateMachine::open(&dir, published.clone())
            .map_err(|e| format!("reading the metadata snapshot in {}: {e}", dir.display()))?;
        let (proposals, inbox) = async_channel::bounded::<Proposal>(1024);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let config = raft_config(snapshot_every)?;
        let thread = std::thread::Builder::new()
            .name("sluice-controller".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("controller runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(id, address, config, log, machine, inbox, ready_tx));
            })
            .map_err(|e| format!("starting the controller thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the controller thread ended during start-up".to_string())??;
        Ok(Controller {
            proposals,
            published,
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

    /// Appends `record` to the metadata log; answers once it is committed
    /// and applied, or why it did not apply.
    pub async fn propose(&self, record: MetadataRecord) -> Result<Committed, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { record, reply })
            .await
            .map_err(|_| ProposeError::Unavailable("the controller has stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Unavailable("the controller dropped the request".into()))?
    }

    /// The newest applied image.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }
}

fn raft_config(snapshot_every: u64) -> Result<Arc<Config>, String> {
    let config = Config {
        cluster_name: "sluice".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(100),
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| e.to_string())?))
}

async fn run(
    id: u64,
    address: String,
    config: Arc<Config>,
    log: store::LogStore,
    machine: store::StateMachine,
    inbox: async_channel::Receiver<Proposal>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let raft = match elect(id, address, config, log, machine).await {
        Ok(raft) => {
            let _ = ready.send(Ok(()));
            raft
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(proposal) = inbox.recv().await {
        let raft = raft.clone();
        tokio::spawn(async move {
            let outcome = match raft.client_write(proposal.record).await {
                Ok(response) => response
                    .data
                    .map(|applied| Committed {
                        index: response.log_id.index,
                        applied,
                    })
                    .map_err(ProposeError::Rejected),
                Err(e) => {
                    warn!(error = %e, "the metadata log refused a record");
                    Err(ProposeError::Unavailable(e.to_string()))
                }
            };
            let _ = proposal.reply.send(outcome);
        });
    }
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "stopping the controller");
    }
}

/// Starts Raft, forms the one-voter quorum on first start, and waits until
/// this node leads with every committed record applied.
async fn elect(
    id: u64,
    address: String,
    config: Arc<Config>,
    log: store::LogStore,
    machine: store::StateMachine,
) -> Result<Raft<TypeConfig>, String> {
    let raft = Raft::new(id, config, NoPeers, log, machine)
        .await
        .map_err(|e| format!("starting the controller: {e}"))?;
    let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
    if initialized {
        // The membership read from the log reaches the metrics shortly
        // after start.
        let voters: Vec<u64> = raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.membership_config.voter_ids().next().is_some(),
                "the stored membership",
            )
            .await
            .map(|m| m.membership_config.voter_ids().collect())
            .unwrap_or_default();
        if !voters.contains(&id) {
            return Err(format!(
                "the metadata log belongs to a quorum of node(s) {voters:?}, not to node.id {id}; \
                 start with the node.id it was created with"
            ));
        }
        // Do not wait out an election timeout to lead a quorum of one.
        raft.trigger().elect().await.map_err(|e| e.to_string())?;
    } else {
        let voters = BTreeMap::from([(id, BasicNode { addr: address })]);
        raft.initialize(voters)
            .await
            .map_err(|e| format!("forming the controller quorum: {e}"))?;
        info!(node = id, "formed a new controller quorum of one voter");
    }
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match raft.ensure_linearizable().await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("this node did not become the controller: {e}"));
            }
            Err(_) => {
                let _ = raft
                    .wait(Some(Duration::from_millis(100)))
                    .metrics(|m| m.current_leader == Some(id), "leader")
                    .await;
            }
        }
    }
    info!(node = id, "leading the controller quorum");
    Ok(raft)
}

/// The network of a quorum with one voter: there is nobody to call.
pub struct NoPeers;

fn no_peer<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    let why = std::io::Error::other("the controller quorum has one voter and no transport");
    RPCError::Unreachable(Unreachable::new(&why))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(no_peer())
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
