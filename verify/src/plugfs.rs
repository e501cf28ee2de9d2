//! `plugfs`: a FUSE filesystem that can lose power.
//!
//! A passthrough to a backing directory on the real disk, in the spirit of
//! LazyFS: file *data* written through the mount is not written to the
//! backing file but kept in memory, per inode, until the file is fsynced
//! (`fsync` or `fdatasync`). [`PlugFs::pull_plug`] throws every such pending
//! write away, which is what a power loss does to the page cache: afterwards
//! reads see only what was fsynced.
//!
//! The model, and its simplifications:
//!
//! - **Metadata is durable at once.** `create`, `mkdir`, `unlink`, `rmdir`,
//!   `rename` (also over an existing target), truncation (`setattr` with a
//!   size), `fallocate` and mode/owner/time changes go straight to the backing
//!   directory, as LazyFS does. So a file created and never fsynced survives
//!   the plug with size 0, and a truncate survives even if not fsynced.
//! - **Data is durable only by fsync** of that file. `close` (flush, release)
//!   makes nothing durable. `fsync` applies the file's pending writes to the
//!   backing file in the order they were made; it does not fsync the backing
//!   file itself, since the real disk never loses power here.
//! - **Reads** see the backing bytes overlaid with the pending writes (later
//!   writes win); the apparent size is the larger of the backing size and the
//!   end of the last pending byte. A truncate cuts pending writes at the new
//!   size, so a later write past it leaves a gap that reads as zeros.
//! - **Bounded memory.** Pending bytes of the whole filesystem stay under the
//!   cap given at mount. A write that would exceed it first writes back (makes
//!   durable) all pending writes of the file with the most pending bytes, as
//!   kernel writeback under memory pressure would; a single write larger than
//!   the cap goes straight to the backing file. So a power loss can keep more
//!   than was fsynced, never less, as on a real machine.
//! - **No kernel page cache.** Files are opened with `FOPEN_DIRECT_IO` and
//!   attributes are never cached, so after a plug the kernel cannot serve
//!   discarded data or sizes; `mmap` of files is therefore not supported.
//! - Not implemented: hard links (`EPERM`), `mknod` (`ENOSYS`), extended
//!   attributes (`EOPNOTSUPP`), `rename` flags such as `RENAME_NOREPLACE` or
//!   `RENAME_EXCHANGE` (`EINVAL`), `fallocate` modes other than plain
//!   allocation and `FALLOC_FL_KEEP_SIZE` (`EOPNOTSUPP`). `flock` and POSIX
//!   locks are handled by the kernel locally.
//!
//! - Pull the plug with the writers stopped, as a power loss stops them: a
//!   process that keeps a file open with `O_APPEND` across the plug may
//!   append at the kernel's stale idea of the file's end.
//! - Inode numbers are never reused nor forgotten (`forget` is ignored): the
//!   table grows with the number of distinct paths seen, fine for a test.
//!
//! Unmounting (dropping [`PlugFs`]) does not write pending data back: it is
//! lost as in a plug. Mounting needs root (the mount syscall is used
//! directly; `fusermount` is not needed).

use std::cmp::{max, min};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Nothing is cached by the kernel: sizes change behind its back on a plug,
/// and a lookup per path walk keeps its idea of a file's size fresh.
const TTL: Duration = Duration::ZERO;

/// A mounted power-loss filesystem. Dropping it unmounts (lazily if busy).
pub struct PlugFs {
    session: Option<BackgroundSession>,
    notifier: Notifier,
    state: Arc<Mutex<State>>,
    /// While set, every request waits: a disk that stopped answering.
    stalled: Arc<std::sync::atomic::AtomicBool>,
    /// While set, writes and fsyncs fail with EIO: a failing disk.
    failing: Arc<std::sync::atomic::AtomicBool>,
    mountpoint: PathBuf,
}

impl PlugFs {
    /// Mounts a filesystem at `mountpoint` whose durable state lives in
    /// `backing` (needs root). At most `max_pending_bytes` of written but not
    /// fsynced data are kept in memory (see the module doc).
    pub fn mount(
        backing: &Path,
        mountpoint: &Path,
        max_pending_bytes: u64,
    ) -> Result<PlugFs, String> {
        let backing = backing
            .canonicalize()
            .map_err(|e| format!("backing directory {}: {e}", backing.display()))?;
        if !backing.is_dir() {
            return Err(format!("{} is not a directory", backing.display()));
        }
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
        let state = Arc::new(Mutex::new(State::new(backing, max_pending_bytes)));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("plugfs".to_string()),
            MountOption::Subtype("plugfs".to_string()),
        ];
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ops = Ops {
            state: Arc::clone(&state),
            stalled: Arc::clone(&stalled),
            failing: Arc::clone(&failing),
        };
        let session = fuser::spawn_mount(ops, &mountpoint, &config)
            .map_err(|e| format!("mounting plugfs at {}: {e}", mountpoint.display()))?;
        let notifier = session.notifier();
        Ok(PlugFs {
            session: Some(session),
            notifier,
            state,
            stalled,
            failing,
            mountpoint,
        })
    }

    /// Where the filesystem is mounted (canonical path).
    #[cfg(test)]
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Stalls the disk (every request waits, as on a disk that stopped
    /// answering) or lets it go on.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes writes and fsyncs fail with EIO (a failing disk), or not.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops every write not yet fsynced, as a power loss would; returns the
    /// bytes dropped. Metadata changes (files created, renamed, truncated)
    /// stay.
    pub fn pull_plug(&self) -> u64 {
        let (dropped, inodes) = {
            let mut st = lock(&self.state);
            let inodes: Vec<u64> = st.dirty.keys().copied().collect();
            st.dirty.clear();
            (std::mem::take(&mut st.pending_total), inodes)
        };
        // Attributes are not cached (TTL 0), but the kernel keeps an inode's
        // size between requests; mark it stale so the next use asks again.
        // Done without the lock: the kernel may call back into the filesystem.
        for ino in inodes {
            let _ = self.notifier.inval_inode(INodeNo(ino), -1, 0);
        }
        dropped
    }

    /// Bytes written and not yet fsynced.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> u64 {
        lock(&self.state).pending_total
    }
}

impl Drop for PlugFs {
    fn drop(&mut self) {
        self.set_stalled(false);
        let Some(session) = self.session.take() else {
            return;
        };
        // A plain unmount ends the session thread, which we then join. If
        // something still has a file open, it fails with EBUSY; detach the
        // mount instead (it goes away when the last file is closed).
        if session.umount_and_join().is_err() {
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: `path` is a valid NUL-terminated string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one request must not wedge the whole mount.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One write not yet fsynced.
struct Extent {
    offset: u64,
    data: Vec<u8>,
}

impl Extent {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// The pending writes of one inode, in the order they were made.
struct Dirty {
    /// The backing file to apply them to (kept open: the path may be renamed).
    file: Arc<File>,
    extents: Vec<Extent>,
    /// Sum of the extents' lengths.
    bytes: u64,
    /// Largest extent end: the apparent size is at least this.
    end: u64,
}

impl Dirty {
    fn push(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        // Sequential writes grow one extent instead of piling up small ones;
        // appending to the latest extent keeps "later writes win".
        match self.extents.last_mut() {
            Some(last) if last.end() == offset => last.data.extend_from_slice(data),
            _ => self.extents.push(Extent {
                offset,
                data: data.to_vec(),
            }),
        }
        self.bytes += len;
        self.end = max(self.end, offset + len);
    }

    /// Pwrites the extents to the backing file, in order.
    fn apply(&self) -> io::Result<()> {
        for e in &self.extents {
            self.file.write_all_at(&e.data, e.offset)?;
        }
        Ok(())
    }
}

struct OpenFile {
    ino: u64,
    file: Arc<File>,
}

/// Everything the filesystem knows, behind one mutex (simple beats fast).
struct State {
    backing: PathBuf,
    max_pending: u64,
    /// Inode → path relative to `backing` (root is the empty path). Unlinked
    /// or replaced inodes are removed.
    paths: HashMap<u64, PathBuf>,
    /// Relative path → inode.
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, OpenFile>,
    /// Open directories: a listing taken at opendir, so readdir offsets hold.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    dirty: HashMap<u64, Dirty>,
    pending_total: u64,
}

impl State {
    fn new(backing: PathBuf, max_pending: u64) -> State {
        let root = INodeNo::ROOT.0;
        State {
            backing,
            max_pending,
            paths: HashMap::from([(root, PathBuf::new())]),
            inos: HashMap::from([(PathBuf::new(), root)]),
            next_ino: root + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            dirty: HashMap::new(),
            pending_total: 0,
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn path_of(&self, ino: u64) -> Result<&PathBuf, Errno> {
        self.paths.get(&ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The inode of `rel`, allocating one the first time the path is seen.
    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    /// `rel` no longer names its inode (unlinked or replaced): forget the
    /// mapping and drop the inode's pending writes.
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            self.drop_dirty(ino);
        }
    }

    fn drop_dirty(&mut self, ino: u64) {
        if let Some(d) = self.dirty.remove(&ino) {
            self.pending_total -= d.bytes;
        }
    }

    fn open_file(&self, fh: FileHandle) -> Result<(u64, Arc<File>), Errno> {
        let f = self.files.get(&fh.0).ok_or(Errno::EBADF)?;
        Ok((f.ino, Arc::clone(&f.file)))
    }

    fn new_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    fn attr(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
        let mut size = meta.len();
        if kind == FileType::RegularFile {
            if let Some(d) = self.dirty.get(&ino) {
                size = max(size, d.end);
            }
        }
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks(),
            atime: meta.accessed().unwrap_or(UNIX_EPOCH),
            mtime: meta.modified().unwrap_or(UNIX_EPOCH),
            ctime: system_time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            flags: 0,
        }
    }

    /// Attributes of `ino`, through the open file if there is one (it may be
    /// unlinked), else through its path.
    fn getattr(&self, ino: u64, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let meta = match fh.and_then(|fh| self.files.get(&fh.0)) {
            Some(f) => f.file.metadata()?,
            None => fs::symlink_metadata(self.full(self.path_of(ino)?))?,
        };
        Ok(self.attr(ino, &meta))
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let meta = fs::symlink_metadata(self.full(&rel))?;
        let ino = self.ino_for(&rel);
        Ok(self.attr(ino, &meta))
    }

    /// Truncation: durable at once on the backing file, and pending writes
    /// past the new size are cut so they cannot resurrect the old tail.
    fn truncate(&mut self, ino: u64, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        match fh.and_then(|fh| self.files.get(&fh.0)) {
            Some(f) => f.file.set_len(size)?,
            None => OpenOptions::new()
                .write(true)
                .open(self.full(self.path_of(ino)?))?
                .set_len(size)?,
        }
        if let Some(d) = self.dirty.get_mut(&ino) {
            d.extents.retain_mut(|e| {
                if e.offset >= size {
                    return false;
                }
                e.data
                    .truncate(min(e.data.len() as u64, size - e.offset) as usize);
                true
            });
            let before = d.bytes;
            d.bytes = d.extents.iter().map(|e| e.data.len() as u64).sum();
            d.end = d.extents.iter().map(Extent::end).max().unwrap_or(0);
            self.pending_total -= before - d.bytes;
            if d.extents.is_empty() {
                self.dirty.remove(&ino);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        // A truncate may come through a handle of an unlinked file; the other
        // changes need the path.
        if let Some(size) = size {
            self.truncate(ino, fh, size)?;
        }
        if mode.is_none() && uid.is_none() && gid.is_none() && atime.is_none() && mtime.is_none() {
            return self.getattr(ino, fh);
        }
        let full = self.full(self.path_of(ino)?);
        if let Some(mode) = mode {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&full, uid, gid)?;
        }
        if atime.is_some() || mtime.is_some() {
            let path = CString::new(full.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
            let times = [timespec(atime), timespec(mtime)];
            // SAFETY: `path` is NUL-terminated and `times` holds two timespecs.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        self.getattr(ino, fh)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let full = self.full(&rel);
        fs::DirBuilder::new().mode(mode & 0o7777).create(&full)?;
        let meta = fs::symlink_metadata(&full)?;
        let ino = self.ino_for(&rel);
        Ok(self.attr(ino, &meta))
    }

    fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let full = self.full(&rel);
        std::os::unix::fs::symlink(target, &full)?;
        let meta = fs::symlink_metadata(&full)?;
        let ino = self.ino_for(&rel);
        Ok(self.attr(ino, &meta))
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let rel = self.child(parent, name)?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let file = options.open(self.full(&rel))?;
        let ino = self.ino_for(&rel);
        let fh = self.new_fh();
        self.files.insert(
            fh,
            OpenFile {
                ino,
                file: Arc::new(file),
            },
        );
        if flags & libc::O_TRUNC != 0 {
            self.truncate(ino, Some(FileHandle(fh)), 0)?;
        }
        let attr = self.getattr(ino, Some(FileHandle(fh)))?;
        Ok((attr, fh))
    }

    fn open(&mut self, ino: u64, flags: OpenFlags) -> Result<u64, Errno> {
        let full = self.full(self.path_of(ino)?);
        // Always read-write when possible: reads overlay pending data and any
        // handle may be the one an fsync or a writeback goes through.
        let file = match OpenOptions::new().read(true).write(true).open(&full) {
            Ok(f) => f,
            Err(_) if flags.0 & libc::O_ACCMODE == libc::O_RDONLY => File::open(&full)?,
            Err(e) => return Err(e.into()),
        };
        let fh = self.new_fh();
        self.files.insert(
            fh,
            OpenFile {
                ino,
                file: Arc::new(file),
            },
        );
        Ok(fh)
    }

    fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (ino, file) = self.open_file(fh)?;
        let backing_len = file.metadata()?.len();
        let dirty = self.dirty.get(&ino);
        let end = max(backing_len, dirty.map_or(0, |d| d.end));
        if offset >= end {
            return Ok(Vec::new());
        }
        let n = min(u64::from(size), end - offset) as usize;
        let mut buf = vec![0u8; n];
        // Bytes past the backing file's end stay zero unless a pending write
        // covers them (a gap left by a truncate reads as zeros).
        let from_backing = min(n as u64, backing_len.saturating_sub(offset)) as usize;
        let mut done = 0;
        while done < from_backing {
            match file.read_at(&mut buf[done..from_backing], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(d) = dirty {
            let read_end = offset + n as u64;
            for e in &d.extents {
                let from = max(e.offset, offset);
                let to = min(e.end(), read_end);
                if from < to {
                    buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &e.data[(from - e.offset) as usize..(to - e.offset) as usize],
                    );
                }
            }
        }
        Ok(buf)
    }

    fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (ino, file) = self.open_file(fh)?;
        let len = data.len() as u64;
        while self.pending_total > 0 && self.pending_total + len > self.max_pending {
            self.write_back_largest()?;
        }
        if len > self.max_pending {
            // Larger than the whole cap: durable at once. Nothing of this file
            // is pending any more (the loop above emptied everything), so the
            // order of writes is kept.
            file.write_all_at(data, offset)?;
        } else {
            self.dirty
                .entry(ino)
                .or_insert_with(|| Dirty {
                    file,
                    extents: Vec::new(),
                    bytes: 0,
                    end: 0,
                })
                .push(offset, data);
            self.pending_total += len;
        }
        Ok(data.len() as u32)
    }

    /// Memory pressure: make the biggest file's pending writes durable.
    fn write_back_largest(&mut self) -> Result<(), Errno> {
        let Some(ino) = self
            .dirty
            .iter()
            .max_by_key(|(_, d)| d.bytes)
            .map(|(&ino, _)| ino)
        else {
            return Ok(());
        };
        self.sync(ino)
    }

    /// Applies the pending writes of `ino` to its backing file. On error they
    /// stay pending (re-applying them in order later is harmless).
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        if let Some(d) = self.dirty.get(&ino) {
            d.apply()?;
            self.drop_dirty(ino);
        }
        Ok(())
    }

    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let rel = self.child(parent, name)?;
        fs::remove_file(self.full(&rel))?;
        self.forget_path(&rel);
        Ok(())
    }

    fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let rel = self.child(parent, name)?;
        fs::remove_dir(self.full(&rel))?;
        self.forget_path(&rel);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if !flags.is_empty() {
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        fs::rename(self.full(&from), self.full(&to))?;
        if from == to {
            return Ok(());
        }
        // A replaced target is gone, and so are its pending writes.
        self.forget_path(&to);
        // The renamed inode (and, for a directory, everything under it) keeps
        // its number and its pending writes under the new path.
        let moved: Vec<(u64, PathBuf)> = self
            .paths
            .iter()
            .filter_map(|(&ino, p)| {
                let rest = p.strip_prefix(&from).ok()?;
                Some((
                    ino,
                    if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    },
                ))
            })
            .collect();
        for (ino, new_path) in moved {
            if let Some(old) = self.paths.insert(ino, new_path.clone()) {
                self.inos.remove(&old);
            }
            self.inos.insert(new_path, ino);
        }
        Ok(())
    }

    fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let rel = self.path_of(ino)?.clone();
        let parent_ino = match rel.parent() {
            Some(p) => self.ino_for(p),
            None => ino,
        };
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent_ino, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(self.full(&rel))? {
            let entry = entry?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let name = entry.file_name();
            let child = self.ino_for(&rel.join(&name));
            entries.push((child, kind, name));
        }
        let fh = self.new_fh();
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    fn fallocate(&self, fh: FileHandle, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (_, file) = self.open_file(fh)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let length = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nsecs.clamp(0, 999_999_999) as u32);
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
                if n == 0 {
                    (-s, 0)
                } else {
                    (-s - 1, 1_000_000_000 - n)
                }
            }
        },
    };
    libc::timespec {
        tv_sec: tv_sec as libc::time_t,
        tv_nsec: tv_nsec as _,
    }
}

/// The FUSE side: each request locks the state and replies.
struct Ops {
    state: Arc<Mutex<State>>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Ops {
    /// The state, once the disk is not stalled: every request passes here,
    /// and the session has one thread, so a stall holds them all.
    fn state(&self) -> MutexGuard<'_, State> {
        self.wait_unstalled();
        lock(&self.state)
    }

    fn wait_unstalled(&self) {
        while self.stalled.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(STALL_CHECK);
        }
    }
}

impl Ops {
    /// Whether the disk fails writes now (checked once not stalled).
    fn failing(&self) -> bool {
        self.wait_unstalled();
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How often a stalled filesystem looks whether it may go on.
const STALL_CHECK: Duration = Duration::from_millis(10);

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry_with_ttls(&TTL, &TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().getattr(ino.0, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self
            .state()
            .setattr(ino.0, fh, mode, uid, gid, size, atime, mtime);
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = (|| {
            let st = self.state();
            Ok::<_, Errno>(fs::read_link(st.full(st.path_of(ino.0)?))?)
        })();
        match result {
            Ok(target) => reply.data(&target.into_os_string().into_vec()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().mkdir(parent.0, name, mode & !umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.state().symlink(parent.0, link_name, target));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags);
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open(ino.0, flags) {
            // Direct I/O: the kernel keeps no page cache that could serve
            // data a plug has discarded.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.failing() {
            return reply.error(Errno::EIO);
        }
        match self.state().write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    /// `close`: makes nothing durable.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// Last close of a handle: pending data stays pending (it belongs to the
    /// inode, not to the handle).
    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.failing() {
            return reply.error(Errno::EIO);
        }
        reply_empty(reply, self.state().sync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state();
        let Some(entries) = st.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            // The offset given with an entry is where the next readdir resumes.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().dirs.remove(&fh.0);
        reply.ok();
    }

    /// Directory entries are durable at once, so there is nothing to do.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = CString::new(self.state().backing.as_os_str().as_bytes());
        let Ok(path) = path else {
            reply.error(Errno::EINVAL);
            return;
        };
        // SAFETY: `path` is NUL-terminated; `s` is written by the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            reply.error(io::Error::last_os_error().into());
            return;
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    /// Only root uses the mount (no `allow_other`), so everything is allowed.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent.0, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.state().fallocate(fh, offset, length, mode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mounted filesystem with its two directories. Fields drop in order:
    /// the mount goes first, then the directories are removed.
    struct Harness {
        fs: PlugFs,
        backing: tempfile::TempDir,
        _mnt: tempfile::TempDir,
    }

    impl Harness {
        fn path(&self, name: &str) -> PathBuf {
            self.fs.mountpoint().join(name)
        }

        fn durable(&self, name: &str) -> Vec<u8> {
            fs::read(self.backing.path().join(name)).unwrap()
        }
    }

    fn mount(cap: u64) -> Option<Harness> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: FUSE mounts need root");
            return None;
        }
        if !Path::new("/dev/fuse").exists() {
            println!("skipped: no /dev/fuse");
            return None;
        }
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let fs = PlugFs::mount(backing.path(), mnt.path(), cap).unwrap();
        Some(Harness {
            fs,
            backing,
            _mnt: mnt,
        })
    }

    /// The handle can be shared with the threads that run a scenario.
    #[test]
    fn the_handle_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PlugFs>();
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_failing_disk_fails_writes_and_fsyncs_with_eio() {
        let Some(h) = mount(64 << 20) else { return };
        let mut f = File::create(h.path("e")).unwrap();
        f.write_all(b"ok").unwrap();
        h.fs.set_failing(true);
        let err = f.write_all(b"lost").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
        h.fs.set_failing(false);
        f.sync_all().unwrap();
        assert_eq!(h.durable("e"), b"ok");
    }

    #[test]
    fn a_stalled_disk_holds_every_request_until_it_goes_on() {
        let Some(h) = mount(64 << 20) else { return };
        std::fs::write(h.path("s"), b"before").unwrap();
        h.fs.set_stalled(true);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = h.path("s");
        let writer = std::thread::spawn(move || {
            let done = std::fs::write(path, b"during");
            let _ = tx.send(());
            done
        });
        // Not a timing claim: the write cannot finish while stalled, however
        // long this waits.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        h.fs.set_stalled(false);
        writer.join().unwrap().unwrap();
        assert_eq!(std::fs::read(h.path("s")).unwrap(), b"during");
    }

    #[test]
    fn fsynced_data_survives_the_plug_and_the_rest_is_lost() {
        let Some(h) = mount(64 << 20) else { return };
        let data = pattern(8192, 1);

        let mut f = File::create(h.path("a.log")).unwrap();
        f.write_all(&data[..4096]).unwrap();
        f.sync_all().unwrap();
        f.write_all(&data[4096..]).unwrap();
        drop(f); // close makes nothing durable

        let mut g = File::create(h.path("never-synced.log")).unwrap();
        g.write_all(b"lost").unwrap();
        drop(g);

        assert_eq!(fs::read(h.path("a.log")).unwrap(), data);
        assert_eq!(fs::metadata(h.path("a.log")).unwrap().len(), 8192);
        assert_eq!(h.durable("a.log"), &data[..4096]);
        assert_eq!(h.fs.pending_bytes(), 4096 + 4);

        assert_eq!(h.fs.pull_plug(), 4096 + 4);
        assert_eq!(h.fs.pending_bytes(), 0);
        assert_eq!(fs::metadata(h.path("a.log")).unwrap().len(), 4096);
        assert_eq!(fs::read(h.path("a.log")).unwrap(), &data[..4096]);
        // Created but never fsynced: the file exists (metadata is durable),
        // its data does not.
        assert_eq!(fs::metadata(h.path("never-synced.log")).unwrap().len(), 0);
        assert!(fs::read(h.path("never-synced.log")).unwrap().is_empty());
    }

    #[test]
    fn rename_over_a_file_keeps_the_renamed_data_and_drops_the_replaced() {
        let Some(h) = mount(64 << 20) else { return };
        fs::create_dir(h.path("dir")).unwrap();
        let mut old = File::create(h.path("dir/target")).unwrap();
        old.write_all(b"durable-old").unwrap();
        old.sync_all().unwrap();
        old.write_all(b"+pending-old").unwrap();
        drop(old);

        let new = pattern(10_000, 7);
        let mut tmp = File::create(h.path("tmp")).unwrap();
        tmp.write_all(&new).unwrap();
        drop(tmp);
        assert_eq!(h.fs.pending_bytes(), 12 + 10_000);

        fs::rename(h.path("tmp"), h.path("dir/target")).unwrap();
        assert!(!h.path("tmp").exists());
        assert_eq!(h.fs.pending_bytes(), 10_000);
        assert_eq!(fs::read(h.path("dir/target")).unwrap(), new);
        let names: Vec<_> = fs::read_dir(h.path("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["target"]);

        // The pending data moved with the inode: an fsync through the new
        // name makes it durable.
        File::open(h.path("dir/target"))
            .unwrap()
            .sync_all()
            .unwrap();
        assert_eq!(h.fs.pending_bytes(), 0);
        assert_eq!(h.fs.pull_plug(), 0);
        assert_eq!(fs::read(h.path("dir/target")).unwrap(), new);
        assert_eq!(h.durable("dir/target"), new);
    }

    #[test]
    fn truncate_then_write_beyond_leaves_a_zero_gap() {
        let Some(h) = mount(64 << 20) else { return };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(h.path("t"))
            .unwrap();
        f.write_all_at(&[0xAA; 1000], 0).unwrap();
        f.set_len(100).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100);
        f.write_all_at(&[0xBB; 100], 500).unwrap();

        let mut expected = vec![0xAA; 100];
        expected.resize(500, 0);
        expected.resize(600, 0xBB);
        assert_eq!(fs::read(h.path("t")).unwrap(), expected);
        assert_eq!(h.fs.pending_bytes(), 200);

        f.sync_all().unwrap();
        assert_eq!(h.fs.pull_plug(), 0);
        assert_eq!(fs::read(h.path("t")).unwrap(), expected);
        assert_eq!(h.durable("t"), expected);

        // A truncate is durable even without fsync; data written after it
        // and not fsynced is not.
        f.set_len(50).unwrap();
        f.write_all_at(b"gone", 50).unwrap();
        drop(f);
        assert_eq!(h.fs.pull_plug(), 4);
        assert_eq!(fs::read(h.path("t")).unwrap(), &expected[..50]);
    }

    #[test]
    fn pending_bytes_stay_under_the_cap() {
        const CAP: u64 = 64 << 10;
        let Some(h) = mount(CAP) else { return };
        let a = pattern(1 << 20, 3);
        let b = pattern(300 << 10, 5);
        let mut fa = File::create(h.path("a")).unwrap();
        let mut fb = File::create(h.path("b")).unwrap();
        // One write bigger than the whole cap.
        fb.write_all(&b).unwrap();
        assert!(h.fs.pending_bytes() <= CAP);
        for chunk in a.chunks(4096) {
            fa.write_all(chunk).unwrap();
            assert!(h.fs.pending_bytes() <= CAP);
        }
        drop((fa, fb));
        assert_eq!(fs::read(h.path("a")).unwrap(), a);
        assert_eq!(fs::read(h.path("b")).unwrap(), b);

        // What memory pressure wrote back survives the plug, the rest does
        // not: each file keeps a prefix of what was written.
        let dropped = h.fs.pull_plug();
        assert!(dropped > 0 && dropped <= CAP, "{dropped}");
        let after_a = fs::read(h.path("a")).unwrap();
        let after_b = fs::read(h.path("b")).unwrap();
        assert!(a.starts_with(&after_a) && b.starts_with(&after_b));
        assert_eq!(
            (after_a.len() + after_b.len()) as u64 + dropped,
            (a.len() + b.len()) as u64
        );
    }
}
