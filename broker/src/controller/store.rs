//! Durable storage for the controller's Raft: the log, the vote, and the
//! state machine (the metadata image) with its snapshot.
//!
//! Everything lives in `<log.dirs>/.sluice-metadata/`:
//!
//! - `journal`: an append-only file of frames `[length u32][crc32c u32]
//!   [JSON]`, each an entry, a truncation (`truncate` from an index on) or,
//!   first in the file, the last purged log id. Appends are fsynced before
//!   Raft hears they are durable. A purge rewrites the file without the
//!   purged entries (temp file, fsync, rename, fsync the directory). On
//!   open, a torn or corrupt tail frame is cut off: it was never reported
//!   durable.
//! - `vote`: the current vote, replaced atomically.
//! - `snapshot`: the image as of some log id, with the membership then,
//!   replaced atomically. The state machine itself lives in memory: on
//!   start it is the snapshot, and Raft re-applies the committed entries
//!   after it.
//!
//! The controller runs on its own single-threaded runtime, which also
//! serves its Raft connections and timers. The writes Raft waits for on
//! every append and vote (a write and an fsync) run on the runtime's
//! blocking pool, so that a slow fsync does not hold up the network: Raft
//! gives a peer's answer only the heartbeat interval. Rarer work (a purge's
//! rewrite, a snapshot) stays plain blocking I/O.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::image::{Applied, MetadataError, MetadataImage};
use super::{Published, TypeConfig};

type NodeId = u64;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// Runs blocking file work on the runtime's blocking pool.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Replaces `path` with `contents` durably: temp file, fsync, rename,
/// fsync the directory.
pub(crate) fn replace_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
enum Frame {
    Entry(Entry<TypeConfig>),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to this log id are gone (first frame only).
    Purged(LogId<NodeId>),
}

const FRAME_HEADER: usize = 8;

fn encode(frame: &Frame, out: &mut Vec<u8>) -> std::io::Result<()> {
    let json = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

/// Decodes frames from `bytes`; returns them with the length of the valid
/// prefix.
fn decode_all(bytes: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER {
        let word =
            |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap_or_default());
        let len = word(0) as usize;
        let crc = word(4);
        let Some(body) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(frame) = serde_json::from_slice(body) else {
            break;
        };
        frames.push(frame);
        at += FRAME_HEADER + len;
    }
    (frames, at)
}

/// Appends `frames` to the journal file and fsyncs it.
fn write_frames(file: &mut File, frames: &[Frame]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for frame in frames {
        encode(frame, &mut buf)?;
    }
    file.write_all(&buf)?;
    file.sync_data()
}

struct Journal {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

impl Journal {
    fn path(&self) -> PathBuf {
        self.dir.join("journal")
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        if let Some(purged) = self.purged {
            encode(&Frame::Purged(purged), &mut buf)?;
        }
        for entry in self.entries.values() {
            encode(&Frame::Entry(entry.clone()), &mut buf)?;
        }
        let path = self.path();
        replace_durably(&path, &buf)?;
        self.file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(())
    }
}

/// The Raft log: see the module documentation.
#[derive(Clone)]
pub struct LogStore {
    journal: Arc<Mutex<Journal>>,
}

impl LogStore {
    /// Opens (or creates) the journal and vote in `dir`, cutting off a
    /// torn tail.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (frames, valid) = decode_all(&bytes);
        let mut entries = BTreeMap::new();
        let mut purged = None;
        for frame in frames {
            match frame {
                Frame::Entry(entry) => {
                    entries.insert(entry.log_id.index, entry);
                }
                Frame::Truncate(index) => {
                    entries.split_off(&index);
                }
                Frame::Purged(log_id) => {
                    entries = entries.split_off(&(log_id.index + 1));
                    purged = Some(log_id);
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        if valid < bytes.len() {
            warn!(
                path = %path.display(),
                bytes = bytes.len() - valid,
                "cutting off a torn tail of the metadata journal"
            );
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let vote = match std::fs::read(dir.join("vote")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(LogStore {
            journal: Arc::new(Mutex::new(Journal {
                dir: dir.to_path_buf(),
                file,
                entries,
                purged,
                vote,
            })),
        })
    }

    /// The id of the last entry in the log (or the last purged one).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let journal = self.lock();
        journal
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(journal.purged)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_log_id = self.last_log_id();
        Ok(LogState {
            last_purged_log_id: self.lock().purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let path = self.lock().dir.join("vote");
        off_thread(move || replace_durably(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let frames: Vec<Frame> = entries.iter().cloned().map(Frame::Entry).collect();
        // openraft calls one storage method at a time (`&mut self`), so
        // nothing else writes the journal while this write is in flight.
        let file = self.lock().file.try_clone();
        let written = off_thread(move || write_frames(&mut file?, &frames)).await;
        if let Err(e) = written {
            let error = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(error.into());
        }
        let mut journal = self.lock();
        for entry in entries {
            journal.entries.insert(entry.log_id.index, entry);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut journal = self.lock();
        write_frames(&mut journal.file, &[Frame::Truncate(log_id.index)])
            .map_err(|e| StorageIOError::write_logs(&e))?;
        journal.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut journal = self.lock();
        journal.entries = journal.entries.split_off(&(log_id.index + 1));
        journal.purged = Some(log_id);
        journal
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// What the snapshot file holds.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: MetadataImage,
}

/// The state machine: the metadata image, published after every change.
pub struct StateMachine {
    dir: PathBuf,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    image: MetadataImage,
    published: Arc<Published>,
}

impl StateMachine {
    /// Starts from the snapshot in `dir`, if there is one.
    pub fn open(dir: &Path, published: Arc<Published>) -> std::io::Result<StateMachine> {
        let mut machine = StateMachine {
            dir: dir.to_path_buf(),
            applied: None,
            membership: Membership::default(),
            image: MetadataImage::default(),
            published,
        };
        match std::fs::read(dir.join("snapshot")) {
            Ok(bytes) => machine.restore(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(machine)
    }

    fn restore(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stored: StoredSnapshot =
            serde_json::from_slice(bytes).map_err(std::io::Error::other)?;
        self.applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership;
        self.image = stored.image;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let index = self.applied.map_or(0, |id| id.index);
        self.published.set(index, Arc::new(self.image.clone()));
    }
}

/// Builds a snapshot from a copy of the state machine taken when asked.
pub struct SnapshotBuilder {
    dir: PathBuf,
    stored: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&self.stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        replace_durably(&self.dir.join("snapshot"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta: self.stored.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Result<Applied, MetadataError>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => Ok(Applied::Done),
                EntryPayload::Normal(record) => self.image.apply(&record),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Applied::Done)
                }
            });
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let last = self.applied;
        SnapshotBuilder {
            dir: self.dir.clone(),
            stored: StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: self.membership.clone(),
                    snapshot_id: last.map_or_else(|| "empty".into(), |id| id.to_string()),
                },
                image: self.image.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let signature = Some(meta.signature());
        self.restore(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        replace_durably(&self.dir.join("snapshot"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let bytes = match std::fs::read(self.dir.join("snapshot")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_stops_at_the_first_torn_or_corrupt_frame() {
        let mut bytes = Vec::new();
        encode(&Frame::Truncate(5), &mut bytes).unwrap();
        let one = bytes.len();
        encode(&Frame::Truncate(7), &mut bytes).unwrap();
        let two = bytes.len();
        let (frames, valid) = decode_all(&bytes);
        assert_eq!((frames.len(), valid), (2, two));
        // Torn: the second frame is cut short anywhere.
        for cut in one..two {
            let (frames, valid) = decode_all(&bytes[..cut]);
            assert_eq!((frames.len(), valid), (1, one), "cut at {cut}");
        }
        // Corrupt: a flipped bit in the second frame's body.
        let mut corrupt = bytes.clone();
        corrupt[two - 2] ^= 1;
        assert_eq!(decode_all(&corrupt).1, one);
    }
}
