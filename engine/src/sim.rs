//! A crash-simulating filesystem for tests, in the spirit of LazyFS and
//! CrashMonkey.
//!
//! It keeps, for every file, the bytes a reader sees now and, apart, the
//! bytes that an `fdatasync` made durable, plus the ordered list of writes
//! since then. [`SimFs::crash`] models a power loss: each file keeps its
//! durable bytes plus an arbitrary prefix of the writes that were not synced,
//! optionally with the next write torn (a prefix of it) or garbled (random
//! bytes where it would have gone). Directory entries (create, rename,
//! remove) become durable only when their directory is synced; on a crash
//! each unsynced entry independently keeps its old or its new state.
//!
//! Faults: writes and file creations can fail with EIO, a space limit
//! produces short writes and ENOSPC, and fsync can fail with EIO. A failed fsync behaves as Linux does
//! after a writeback error: the unsynced writes stay readable but are dropped
//! from what can ever become durable, so code that retries an fsync and
//! carries on would lose data under [`SimFs::crash`] and be caught.
//!
//! Shared behind a mutex so shard threads can run on it too; it is test
//! infrastructure, so simplicity beats speed here.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A deterministic pseudo-random generator (SplitMix64), so that a crash is
/// reproducible from its seed without a dependency.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// Operations since the last successful sync, in order.
    pending: Vec<PendingOp>,
}

fn apply(target: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { pos, data } => write_into(target, *pos, data),
        PendingOp::SetLen(len) => target.resize(*len as usize, 0),
    }
}

fn write_into(target: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    let end = pos + data.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[pos..end].copy_from_slice(data);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

/// Counters that tests assert on (for example, that group commit issued one
/// fsync for many appends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    pub dir_syncs: u64,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    live: BTreeMap<PathBuf, Entry>,
    durable: BTreeMap<PathBuf, Entry>,
    fail_writes: bool,
    fail_syncs: bool,
    fail_creates: bool,
    space_limit: Option<u64>,
    stats: SimStats,
    stalls: Vec<Stall>,
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Ok(()),
            Some(parent) => match self.live.get(parent) {
                Some(Entry::Dir) => Ok(()),
                _ => Err(not_found(parent)),
            },
            None => Ok(()),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("sim: no such file or directory: {}", path.display()),
    )
}

/// EIO as the kernel reports it (a raw OS error), so code that sorts
/// errors by errno sees the simulator's the way it sees the real ones.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// The simulated filesystem. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// A file handle on a [`SimFs`]; it keeps its inode even if the name is
/// removed, as a POSIX descriptor does.
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    inode: u64,
    path: PathBuf,
}

/// Holds back every fsync of the files under one directory until dropped
/// ([`SimFs::stall_syncs_under`]): a disk that stalls on one partition, so
/// a test can show that the others go on.
#[derive(Debug)]
pub struct SyncStall {
    fs: SimFs,
    dir: PathBuf,
    /// Closed when the stall is dropped, which lets the held syncs go.
    _release: async_channel::Sender<()>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl SyncStall {
    /// How many fsyncs have reached the stall (held or let go since).
    pub fn syncs_held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SyncStall {
    fn drop(&mut self) {
        self.fs.lock().stalls.retain(|s| s.dir != self.dir);
    }
}

#[derive(Debug, Clone)]
struct Stall {
    dir: PathBuf,
    gate: async_channel::Receiver<()>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl SimFs {
    pub fn new() -> Self {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure already; keep
        // going so the original panic is the one reported.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut st = self.lock();
        match st.live.get(path) {
            Some(Entry::File(inode)) => Ok(SimFile {
                fs: self.clone(),
                inode: *inode,
                path: path.to_path_buf(),
            }),
            Some(Entry::Dir) => Ok(SimFile {
                fs: self.clone(),
                inode: u64::MAX,
                path: path.to_path_buf(),
            }),
            None if create => {
                if st.fail_creates {
                    return Err(eio());
                }
                st.check_parent(path)?;
                let inode = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(inode, Inode::default());
                st.live.insert(path.to_path_buf(), Entry::File(inode));
                Ok(SimFile {
                    fs: self.clone(),
                    inode,
                    path: path.to_path_buf(),
                })
            }
            None => Err(not_found(path)),
        }
    }

    /// Directories are durable as soon as they are made: the crash model is
    /// about file contents and file names, which is where logs go wrong.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        for ancestor in path.ancestors() {
            if ancestor.as_os_str().is_empty() {
                continue;
            }
            if let Some(Entry::File(_)) = st.live.get(ancestor) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("sim: {} is a file", ancestor.display()),
                ));
            }
            st.live.insert(ancestor.to_path_buf(), Entry::Dir);
            st.durable.insert(ancestor.to_path_buf(), Entry::Dir);
        }
        Ok(())
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        match st.live.get(path) {
            Some(Entry::File(_)) => {
                st.live.remove(path);
                Ok(())
            }
            _ => Err(not_found(path)),
        }
    }

    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.live.get(path) != Some(&Entry::Dir) {
            return Err(not_found(path));
        }
        st.live.retain(|p, _| !p.starts_with(path));
        // Like directory creation, removal of a whole directory is taken as
        // durable at once.
        st.durable.retain(|p, _| !p.starts_with(path));
        Ok(())
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_parent(to)?;
        let entry = st.live.remove(from).ok_or_else(|| not_found(from))?;
        st.live.insert(to.to_path_buf(), entry);
        Ok(())
    }

    /// Waits while a [`SyncStall`] covers `dir`, then syncs it as
    /// [`SimFs::sync_dir`] does: a slow disk stalls a directory's fsync
    /// as it stalls a file's.
    pub async fn sync_dir_stalled(&self, dir: &Path) -> io::Result<()> {
        self.wait_out_stall(dir).await;
        self.sync_dir(dir)
    }

    /// Returns once no [`SyncStall`] holds an fsync of `path` (a file, or
    /// a directory itself), counting the fsync as held if one did.
    async fn wait_out_stall(&self, path: &Path) {
        let stall = self
            .lock()
            .stalls
            .iter()
            .find(|s| path.starts_with(&s.dir))
            .cloned();
        if let Some(stall) = stall {
            stall.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Ends with an error once the stall's sender is dropped.
            let _released = stall.gate.recv().await;
        }
    }

    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fail_syncs {
            return Err(eio());
        }
        st.stats.dir_syncs += 1;
        let children = |map: &BTreeMap<PathBuf, Entry>| -> Vec<(PathBuf, Entry)> {
            map.iter()
                .filter(|(p, _)| p.parent() == Some(dir))
                .map(|(p, e)| (p.clone(), *e))
                .collect()
        };
        let live = children(&st.live);
        for (path, _) in children(&st.durable) {
            st.durable.remove(&path);
        }
        st.durable.extend(live);
        Ok(())
    }

    pub fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if st.live.get(dir) != Some(&Entry::Dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    pub fn exists(&self, path: &Path) -> bool {
        self.lock().live.contains_key(path)
    }

    /// Holds every fsync of a file under `dir`, and of `dir` itself, until
    /// the returned stall is dropped. Other files sync as usual.
    pub fn stall_syncs_under(&self, dir: &Path) -> SyncStall {
        let (release, gate) = async_channel::bounded(1);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.lock().stalls.push(Stall {
            dir: dir.to_path_buf(),
            gate,
            held: held.clone(),
        });
        SyncStall {
            fs: self.clone(),
            dir: dir.to_path_buf(),
            _release: release,
            held,
        }
    }

    /// While set, every write fails with EIO and changes nothing.
    pub fn set_fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// While set, creating a file fails with EIO (opening an existing one
    /// still works): a directory the filesystem can no longer extend.
    pub fn set_fail_creates(&self, fail: bool) {
        self.lock().fail_creates = fail;
    }

    /// While set, every fsync (file or directory) fails with EIO, and the
    /// writes it would have made durable never will be.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Total bytes the files may hold; a write past it is cut short and
    /// fails with ENOSPC. `None` lifts the limit.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        self.lock().space_limit = limit;
    }

    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// The current (not necessarily durable) contents of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        match st.live.get(path) {
            Some(Entry::File(inode)) => st.inodes.get(inode).map(|i| i.data.clone()),
            _ => None,
        }
    }

    /// Overwrites bytes of a file directly, durably, bypassing fault
    /// injection: for tests that corrupt a log behind the engine's back.
    pub fn corrupt(&self, path: &Path, pos: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let inode = match st.live.get(path) {
            Some(Entry::File(inode)) => *inode,
            _ => return Err(not_found(path)),
        };
        let node = st.inodes.entry(inode).or_default();
        write_into(&mut node.data, pos, bytes);
        write_into(&mut node.durable, pos, bytes);
        Ok(())
    }

    /// A power loss: returns the filesystem as it could be found after a
    /// reboot. The original is untouched (old handles keep working on it).
    pub fn crash(&self, seed: u64) -> SimFs {
        let st = self.lock();
        let mut rng = SimRng::new(seed);
        let mut out = State {
            next_inode: st.next_inode,
            ..State::default()
        };
        // Names: each entry whose directory was not synced since it changed
        // keeps its old or new state at random.
        let mut paths: Vec<&PathBuf> = st.live.keys().chain(st.durable.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let live = st.live.get(path);
            let durable = st.durable.get(path);
            let chosen = if live == durable || rng.below(2) == 0 {
                durable
            } else {
                live
            };
            if let Some(entry) = chosen {
                out.live.insert(path.clone(), *entry);
            }
        }
        out.durable = out.live.clone();
        // Contents: durable bytes plus a random prefix of the pending writes,
        // the next one possibly torn or garbled.
        for (id, inode) in &st.inodes {
            let mut data = inode.durable.clone();
            let n = inode.pending.len() as u64;
            let kept = rng.below(n + 1) as usize;
            for op in &inode.pending[..kept] {
                apply(&mut data, op);
            }
            if let Some(PendingOp::Write { pos, data: bytes }) = inode.pending.get(kept) {
                match rng.below(3) {
                    0 => {}
                    1 => {
                        let cut = rng.below(bytes.len() as u64 + 1) as usize;
                        write_into(&mut data, *pos, &bytes[..cut]);
                    }
                    _ => {
                        let cut = rng.below(bytes.len() as u64 + 1) as usize;
                        let garbage: Vec<u8> = (0..cut).map(|_| rng.next_u64() as u8).collect();
                        write_into(&mut data, *pos, &garbage);
                    }
                }
            }
            out.inodes.insert(
                *id,
                Inode {
                    durable: data.clone(),
                    data,
                    pending: Vec::new(),
                },
            );
        }
        SimFs {
            state: Arc::new(Mutex::new(out)),
        }
    }
}

impl SimFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.fs.lock();
        if !st.inodes.contains_key(&self.inode) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sim: not a regular file",
            ));
        }
        f(&mut st, self.inode)
    }

    pub fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.with_inode(|st, id| {
            if st.fail_writes {
                return Err(eio());
            }
            st.stats.writes += 1;
            let mut len = buf.len();
            let mut enospc = false;
            if let Some(limit) = st.space_limit {
                let current = st.inodes[&id].data.len() as u64;
                let end = pos + buf.len() as u64;
                let growth = end.saturating_sub(current);
                let free = limit.saturating_sub(st.used_bytes());
                if growth > free {
                    enospc = true;
                    len = (current + free).saturating_sub(pos).min(buf.len() as u64) as usize;
                }
            }
            if len > 0 {
                let op = PendingOp::Write {
                    pos,
                    data: buf[..len].to_vec(),
                };
                let node = st.inodes.entry(id).or_default();
                apply(&mut node.data, &op);
                node.pending.push(op);
            }
            if enospc {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(())
            }
        })
    }

    pub fn read_up_to(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        self.with_inode(|st, id| {
            let data = &st.inodes[&id].data;
            let start = (pos as usize).min(data.len());
            let end = start.saturating_add(len).min(data.len());
            Ok(data[start..end].to_vec())
        })
    }

    pub fn read_exact_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let out = self.read_up_to(len, pos)?;
        if out.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sim: read past end of file",
            ));
        }
        Ok(out)
    }

    /// Waits while a [`SyncStall`] covers this file, then syncs it.
    pub async fn sync_data_stalled(&self) -> io::Result<()> {
        self.fs.wait_out_stall(&self.path).await;
        self.sync_data()
    }

    pub fn sync_data(&self) -> io::Result<()> {
        self.with_inode(|st, id| {
            let fail = st.fail_syncs;
            st.stats.syncs += 1;
            let node = st.inodes.entry(id).or_default();
            let pending = std::mem::take(&mut node.pending);
            if fail {
                // The kernel marks the pages clean after a failed writeback:
                // these writes will never reach the disk.
                return Err(eio());
            }
            for op in &pending {
                apply(&mut node.durable, op);
            }
            Ok(())
        })
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_inode(|st, id| {
            let op = PendingOp::SetLen(len);
            let node = st.inodes.entry(id).or_default();
            apply(&mut node.data, &op);
            node.pending.push(op);
            Ok(())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> u64 {
        self.with_inode(|st, id| Ok(st.inodes[&id].data.len() as u64))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn synced_bytes_survive_every_crash_and_unsynced_ones_may_not() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/f"), true).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b" world", 5).unwrap();
        let mut saw_short = false;
        let mut saw_full = false;
        for seed in 0..64 {
            let after = fs.crash(seed);
            let bytes = after.contents(&p("/d/f")).unwrap();
            assert_eq!(&bytes[..5], b"hello");
            saw_short |= bytes.len() == 5;
            saw_full |= bytes == b"hello world";
        }
        assert!(saw_short);
        assert!(saw_full);
    }

    #[test]
    fn a_file_whose_directory_was_never_synced_can_vanish() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/f"), true).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        let vanished = (0..64).any(|seed| fs.crash(seed).contents(&p("/d/f")).is_none());
        assert!(vanished);
        fs.sync_dir(&p("/d")).unwrap();
        assert!((0..64).all(|seed| fs.crash(seed).contents(&p("/d/f")).is_some()));
    }

    #[test]
    fn a_failed_fsync_loses_the_writes_even_if_a_later_fsync_succeeds() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/f"), true).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_at(b"lost", 0).unwrap();
        fs.set_fail_syncs(true);
        assert!(f.sync_data().is_err());
        fs.set_fail_syncs(false);
        f.sync_data().unwrap();
        assert_eq!(f.read_exact_at(4, 0).unwrap(), b"lost");
        for seed in 0..16 {
            assert_eq!(fs.crash(seed).contents(&p("/d/f")).unwrap(), b"");
        }
    }

    #[test]
    fn a_space_limit_gives_a_short_write_and_enospc() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/f"), true).unwrap();
        fs.set_space_limit(Some(3));
        let err = f.write_at(b"abcdef", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(f.len(), 3);
        fs.set_space_limit(None);
        f.write_at(b"abcdef", 0).unwrap();
        assert_eq!(f.len(), 6);
    }
}
