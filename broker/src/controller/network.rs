//! The controllers' Raft transport, over the CONTROLLER listener.
//!
//! ```text
//!   controller A ──TCP──▶ controller B's CONTROLLER listener
//!      [len u32 BE][JSON Call]  ─▶  raft.vote / append_entries /
//!                                   install_snapshot, or a forwarded
//!                                   proposal, or a read-index question
//!      ◀─ [len u32 BE][JSON Answer]
//! ```
//!
//! One call at a time per connection, answered in order; a caller keeps one
//! connection per peer and opens a new one after any failure. Frames are
//! JSON (serde_json, as the metadata journal is) and bounded by
//! [`FRAME_MAX`]: a larger length closes the connection with a log line.
//! openraft bounds what it sends (entries per AppendEntries, snapshot chunk
//! size), so real frames stay far below it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::image::{Applied, MetadataError, MetadataRecord};
use super::liveness::Liveness;
use super::prevote::PreVote;
use super::TypeConfig;

/// Largest frame read; a peer announcing more is cut off.
pub const FRAME_MAX: usize = 64 << 20;

/// What one controller asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Vote(VoteRequest<u64>),
    Append(AppendEntriesRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A record proposed on a node that does not lead, for the leader to
    /// append.
    Propose(MetadataRecord),
    /// The leader's read index: the log index a node must have applied to
    /// have seen everything committed when it asked.
    ReadIndex,
    /// A broker's heartbeat, passed on to the leader.
    Heartbeat {
        broker: i32,
        epoch: i64,
        #[serde(default)]
        storage: super::Storage,
    },
    /// A broker that is not a voter asks to follow the metadata log as a
    /// learner, the leader to send it to its CONTROLLER listener at `addr`.
    AddLearner {
        id: u64,
        addr: String,
    },
    /// A voter that has heard from no leader asks whether this one would
    /// vote for it, its log ending at `last_log` (see `prevote`).
    PreVote {
        last_log: Option<openraft::LogId<u64>>,
    },
}

/// A forwarded proposal's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub enum Proposed {
    Committed {
        index: u64,
        applied: Applied,
    },
    Rejected(MetadataError),
    /// Not applied here (this node no longer leads, or is stopping); the
    /// proposer may try the new leader.
    NotHere(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Propose(Proposed),
    ReadIndex(Result<u64, String>),
    /// Whether the heartbeat was recorded (this node leads).
    Heartbeat(bool),
    /// Whether the learner is now in the membership, or why not.
    AddLearner(Result<(), String>),
    /// Whether this voter grants the pre-vote.
    PreVote(bool),
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len as usize <= FRAME_MAX)
        .ok_or_else(|| io::Error::other(format!("a {} byte frame is too large", body.len())))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a peer announced a {len} byte frame (at most {FRAME_MAX})"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A connection to one peer controller, opened on first use and again
/// after any failure.
pub struct Peer {
    target: u64,
    addr: String,
    stream: Option<TcpStream>,
}

impl Peer {
    pub fn new(target: u64, addr: String) -> Peer {
        Peer {
            target,
            addr,
            stream: None,
        }
    }

    /// Sends `call` and waits for its answer, for at most `ttl`.
    pub async fn call(&mut self, call: &Call, ttl: Duration) -> io::Result<Answer> {
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| io::Error::other("no connection"))?;
            write_frame(stream, call).await?;
            read_frame(stream).await
        };
        let outcome = match tokio::time::timeout(ttl, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from controller {} in {ttl:?}", self.target),
            )),
        };
        if outcome.is_err() {
            // The stream may hold half a frame: start afresh next time.
            self.stream = None;
        }
        outcome
    }

    fn unreachable<E: std::error::Error>(&self, e: io::Error) -> RPCError<u64, BasicNode, E> {
        debug!(target = self.target, addr = %self.addr, error = %e, "controller unreachable");
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn confused<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        let why = io::Error::other(format!(
            "controller {} answered a different call",
            self.target
        ));
        RPCError::Network(NetworkError::new(&why))
    }
}

/// A connection to the Raft leader as `metrics` know it, unless this node
/// leads or no leader is known.
pub fn leader_peer(metrics: &openraft::RaftMetrics<u64, BasicNode>) -> Option<Peer> {
    let leader = metrics.current_leader.filter(|l| *l != metrics.id)?;
    let node = metrics.membership_config.membership().get_node(&leader)?;
    Some(Peer::new(leader, node.addr.clone()))
}

/// Makes a [`Peer`] for each controller openraft talks to.
pub struct Peers;

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer::new(target, node.addr.clone())
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&Call::Append(rpc), option.hard_ttl()).await {
            Ok(Answer::Append(answer)) => {
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.confused()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.call(&Call::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Answer::Snapshot(answer)) => {
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.confused()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&Call::Vote(rpc), option.hard_ttl()).await {
            Ok(Answer::Vote(answer)) => {
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.confused()),
            Err(e) => Err(self.unreachable(e)),
        }
    }
}

/// Serves the CONTROLLER listener for the life of the controller thread.
pub async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    liveness: Arc<Liveness>,
    pre_vote: Arc<PreVote>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (raft, liveness, pre_vote) = (raft.clone(), liveness.clone(), pre_vote.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_peer(stream, raft, liveness, pre_vote).await {
                        if e.kind() == io::ErrorKind::InvalidData {
                            warn!(%peer, error = %e, "closing a controller connection: bad frame");
                        } else {
                            debug!(%peer, error = %e, "controller connection ended");
                        }
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting on the controller listener failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_peer(
    mut stream: TcpStream,
    raft: Raft<TypeConfig>,
    liveness: Arc<Liveness>,
    pre_vote: Arc<PreVote>,
) -> io::Result<()> {
    loop {
        let call: Call = read_frame(&mut stream).await?;
        let answer = match call {
            Call::Vote(rpc) => {
                let answer = raft.vote(rpc).await;
                if matches!(&answer, Ok(vote) if vote.vote_granted) {
                    pre_vote.heard_from_leader();
                }
                Answer::Vote(answer)
            }
            Call::Append(rpc) => {
                let answer = raft.append_entries(rpc).await;
                if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    pre_vote.heard_from_leader();
                }
                Answer::Append(answer)
            }
            Call::Snapshot(rpc) => {
                let answer = raft.install_snapshot(rpc).await;
                if answer.is_ok() {
                    pre_vote.heard_from_leader();
                }
                Answer::Snapshot(answer)
            }
            Call::PreVote { last_log } => Answer::PreVote(pre_vote.answer(&raft, last_log)),
            Call::Propose(record) => Answer::Propose(propose_here(&raft, record).await),
            Call::ReadIndex => Answer::ReadIndex(read_index(&raft).await),
            Call::Heartbeat {
                broker,
                epoch,
                storage,
            } => super::liveness::on_forwarded(&raft, &liveness, (broker, epoch), storage),
            Call::AddLearner { id, addr } => Answer::AddLearner(add_learner(&raft, id, addr).await),
        };
        write_frame(&mut stream, &answer).await?;
    }
}

/// Makes node `id` a learner reached at `addr`, on the leader (passed on
/// once if this node does not lead). A learner already known there at
/// another address gets the new one. A voter cannot become a learner.
async fn add_learner(raft: &Raft<TypeConfig>, id: u64, addr: String) -> Result<(), String> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        let mut leader = leader_peer(&metrics).ok_or("no controller leader yet")?;
        return match leader
            .call(&Call::AddLearner { id, addr }, Duration::from_secs(5))
            .await
        {
            Ok(Answer::AddLearner(answer)) => answer,
            Ok(_) => Err("the controller leader answered something else".into()),
            Err(e) => Err(format!("the controller leader is unreachable: {e}")),
        };
    }
    let membership = metrics.membership_config.membership();
    if membership.voter_ids().any(|v| v == id) {
        return Err(format!(
            "node {id} is a controller voter: it cannot join as a learner"
        ));
    }
    let node = BasicNode { addr: addr.clone() };
    let known = membership.get_node(&id).map(|n| n.addr.clone());
    let changed = match known {
        Some(known) if known == addr => return Ok(()),
        Some(_) => {
            let change =
                openraft::ChangeMembers::SetNodes(std::collections::BTreeMap::from([(id, node)]));
            raft.change_membership(change, true).await.map(|_| ())
        }
        None => raft.add_learner(id, node, false).await.map(|_| ()),
    };
    changed.map_err(|e| e.to_string())
}

/// Appends a forwarded record if this node leads.
async fn propose_here(raft: &Raft<TypeConfig>, record: MetadataRecord) -> Proposed {
    let Some(written) = super::unless_cut_off(raft, raft.client_write(record)).await else {
        return Proposed::NotHere(super::CUT_OFF.into());
    };
    match written {
        Ok(response) => match response.data {
            Ok(applied) => Proposed::Committed {
                index: response.log_id.index,
                applied,
            },
            Err(e) => Proposed::Rejected(e),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Proposed::NotHere(format!("controller leader is now {:?}", f.leader_id))
        }
        Err(e) => Proposed::NotHere(e.to_string()),
    }
}

/// The leader's read index (`get_read_log_id` after confirming it still
/// leads).
async fn read_index(raft: &Raft<TypeConfig>) -> Result<u64, String> {
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(format!(
            "not the controller leader (that is {:?})",
            f.leader_id
        )),
        Err(e) => Err(e.to_string()),
    }
}
