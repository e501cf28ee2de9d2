//! The engine's window onto storage.
//!
//! Everything the log does to files goes through [`Fs`] and [`File`], so the
//! same log code runs on the real filesystem (through compio: io_uring where
//! the kernel allows it, epoll plus a thread pool where it does not) and on
//! the crash simulator in [`crate::sim`]. The two are an enum rather than a
//! trait object because the set is closed and the hot path should not pay
//! for dynamic dispatch or boxed futures.
//!
//! Buffers are owned (`Vec<u8>`) and handed back on success: a completion
//! based driver needs the kernel to own the memory while the operation is in
//! flight.

use std::io;
use std::path::{Path, PathBuf};

use std::os::fd::{AsRawFd, RawFd};

use compio::io::{AsyncReadAt, AsyncReadAtExt, AsyncWriteAtExt};

use crate::sim::{SimFile, SimFs};

/// A filesystem: the real one, or a simulated one for crash tests.
///
/// On the real filesystem, reads, fsyncs and directory operations go
/// through the shard's ring. Appends to the page cache are, by default,
/// `pwritev` calls made inline on the shard thread: ext4 has no
/// non-blocking buffered writes for io_uring, so the ring hands every
/// buffered write to an io-wq worker thread, and the two extra context
/// switches cost more than the copy itself (measured on this project's
/// machines: 50–100 µs per 64 KiB append through the ring against 26 µs
/// inline; see docs/BENCHMARKS.md). [`Fs::OsRingWrites`] sends writes
/// through the ring too, for filesystems that complete buffered writes
/// without blocking (XFS, btrfs) or for O_DIRECT experiments.
#[derive(Clone, Debug)]
pub enum Fs {
    /// The operating system's filesystem; page-cache writes inline.
    Os,
    /// The operating system's filesystem; writes through the ring as well.
    OsRingWrites,
    /// The in-memory crash simulator.
    Sim(SimFs),
}

/// An open file on an [`Fs`]. Owned by one shard; not shared across threads.
#[derive(Debug)]
pub enum File {
    Os {
        file: compio::fs::File,
        ring_writes: bool,
        /// The duplicate descriptor that [`File::range`]s in flight share:
        /// one per segment however many there are, closed with the last.
        shared: std::sync::Mutex<std::sync::Weak<std::os::fd::OwnedFd>>,
    },
    Sim(SimFile),
}

/// Bytes of a segment file, named rather than read: the descriptor is a
/// duplicate that keeps the file readable after the log deletes it (its
/// blocks stay allocated until the last range of it is dropped). The
/// bytes were whole batches when the range was made; a log truncated
/// meanwhile (a leader become follower) may have cut them, so a sender
/// must treat a short read as an error, or cut and appended other batches
/// in their place, which a sender cannot tell (Kafka's `sendfile` has the
/// same race; the batches' CRCs tell the client).
#[derive(Debug, Clone)]
pub struct FileRange {
    pub fd: std::sync::Arc<std::os::fd::OwnedFd>,
    pub pos: u64,
    pub len: usize,
}

impl Fs {
    /// Opens `path` for reading and writing, creating it when `create` is set.
    pub async fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        match self {
            Fs::Os | Fs::OsRingWrites => {
                let file = compio::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .open(path)
                    .await?;
                Ok(File::Os {
                    file,
                    ring_writes: matches!(self, Fs::OsRingWrites),
                    shared: std::sync::Mutex::new(std::sync::Weak::new()),
                })
            }
            Fs::Sim(sim) => Ok(File::Sim(sim.open(path, create)?)),
        }
    }

    pub async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os | Fs::OsRingWrites => compio::fs::create_dir_all(path).await,
            Fs::Sim(sim) => sim.create_dir_all(path),
        }
    }

    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os | Fs::OsRingWrites => compio::fs::remove_file(path).await,
            Fs::Sim(sim) => sim.remove_file(path),
        }
    }

    /// Removes a directory and everything in it.
    pub async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            // Unlinking a large segment can take tens of milliseconds: off
            // the shard thread, so the shard's other partitions go on.
            Fs::Os | Fs::OsRingWrites => {
                let path = path.to_path_buf();
                compio::runtime::spawn_blocking(move || std::fs::remove_dir_all(path))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("removing a directory panicked")))
            }
            Fs::Sim(sim) => sim.remove_dir_all(path),
        }
    }

    /// Renames `from` to `to`, replacing `to`. Durable only once the parent
    /// directory is synced with [`Fs::sync_dir`].
    pub async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Fs::Os | Fs::OsRingWrites => compio::fs::rename(from, to).await,
            Fs::Sim(sim) => sim.rename(from, to),
        }
    }

    /// Makes the directory's entries (files created, renamed or removed in
    /// it) durable.
    pub async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os | Fs::OsRingWrites => {
                let dir = compio::fs::File::open(path).await?;
                dir.sync_all().await
            }
            Fs::Sim(sim) => sim.sync_dir_stalled(path).await,
        }
    }

    /// The names of the entries of a directory, sorted.
    pub async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = match self {
            // Off the shard thread: a directory on a slow disk must not hold
            // up the shard's other partitions while one opens.
            Fs::Os | Fs::OsRingWrites => {
                let path = path.to_path_buf();
                compio::runtime::spawn_blocking(move || -> io::Result<Vec<String>> {
                    let mut names = Vec::new();
                    for entry in std::fs::read_dir(path)? {
                        names.push(entry?.file_name().to_string_lossy().into_owned());
                    }
                    Ok(names)
                })
                .await
                .unwrap_or_else(|_| Err(io::Error::other("listing a directory panicked")))?
            }
            Fs::Sim(sim) => sim.list_dir(path)?,
        };
        names.sort();
        Ok(names)
    }

    /// Whether a path exists.
    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        match self {
            Fs::Os | Fs::OsRingWrites => path.try_exists(),
            Fs::Sim(sim) => Ok(sim.exists(path)),
        }
    }

    /// Replaces `path` atomically with `contents`: write a temporary file,
    /// sync it, rename it over `path`, sync the directory. A crash at any
    /// point leaves either the old or the new contents, never a mix.
    pub async fn replace_atomically(&self, path: &Path, contents: Vec<u8>) -> io::Result<()> {
        let tmp = tmp_path(path);
        let file = self.open(&tmp, true).await?;
        file.set_len(0).await?;
        file.write_all_at(contents, 0).await?;
        file.sync_data().await?;
        drop(file);
        self.rename(&tmp, path).await?;
        match path.parent() {
            Some(dir) => self.sync_dir(dir).await,
            None => Ok(()),
        }
    }

    /// Reads a whole small file (checkpoints), or `None` when it is absent.
    pub async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        if !self.exists(path).await? {
            return Ok(None);
        }
        let file = self.open(path, false).await?;
        let len = file.len().await?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "checkpoint file too large"))?;
        Ok(Some(file.read_exact_at(len, 0).await?))
    }
}

/// Largest number of buffers one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// `pwritev` until every byte of `bufs` is written at `pos`.
fn pwritev_all<B: AsRef<[u8]>>(fd: RawFd, bufs: &[B], mut pos: u64) -> io::Result<()> {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(AsRef::as_ref)
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut first = 0;
    while first < iovs.len() {
        let count = (iovs.len() - first).min(IOV_MAX);
        let offset = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file position too large"))?;
        // SAFETY: the iovecs point into `bufs`, which outlive the call, and
        // `count` of them starting at `first` are in bounds.
        let written = unsafe { libc::pwritev(fd, iovs[first..].as_ptr(), count as i32, offset) };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut left = written as usize;
        pos += left as u64;
        while left > 0 {
            let iov = &mut iovs[first];
            if left >= iov.iov_len {
                left -= iov.iov_len;
                first += 1;
            } else {
                // SAFETY: `left` is less than this buffer's remaining length.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                iov.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

impl File {
    /// Writes all of `buf` at `pos` and hands the buffer back for reuse.
    pub async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<Vec<u8>> {
        let mut bufs = self.write_vectored_all_at(vec![buf], pos).await?;
        Ok(bufs.pop().unwrap_or_default())
    }

    /// Writes the buffers back to back from `pos`, as one vectored write
    /// where the backend allows, and hands them back.
    pub async fn write_vectored_all_at<B>(&self, bufs: Vec<B>, pos: u64) -> io::Result<Vec<B>>
    where
        B: compio::buf::IoBuf + AsRef<[u8]>,
    {
        match self {
            File::Os {
                file,
                ring_writes: true,
                ..
            } => {
                let mut writer = file;
                let compio::BufResult(result, bufs) = writer.write_vectored_all_at(bufs, pos).await;
                result.map(|()| bufs)
            }
            File::Os { file, .. } => {
                pwritev_all(file.as_raw_fd(), &bufs, pos)?;
                Ok(bufs)
            }
            File::Sim(file) => {
                let mut at = pos;
                for buf in &bufs {
                    let buf = buf.as_ref();
                    file.write_at(buf, at)?;
                    at += buf.len() as u64;
                }
                Ok(bufs)
            }
        }
    }

    /// Reads exactly `len` bytes at `pos`; an `UnexpectedEof` error if the
    /// file is shorter.
    pub async fn read_exact_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        match self {
            File::Os { file, .. } => {
                let buf = Vec::with_capacity(len);
                let compio::BufResult(result, buf) = file.read_exact_at(buf, pos).await;
                result.map(|()| buf)
            }
            File::Sim(file) => file.read_exact_at(len, pos),
        }
    }

    /// Reads up to `len` bytes at `pos`, fewer only at the end of the file.
    pub async fn read_up_to(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        match self {
            File::Os { file, .. } => {
                use compio::buf::{IntoInner, IoBuf};
                let mut out: Vec<u8> = Vec::with_capacity(len);
                while out.len() < len {
                    // Into the buffer's free tail: the bytes are copied once,
                    // from the page cache.
                    let begin = out.len();
                    let compio::BufResult(result, tail) =
                        file.read_at(out.slice(begin..), pos + begin as u64).await;
                    out = tail.into_inner();
                    match result {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            File::Sim(file) => file.read_up_to(len, pos),
        }
    }

    /// `len` bytes at `pos`, as a range of a descriptor that a caller may
    /// send without reading them (`sendfile`); `None` for the simulator,
    /// which has no descriptor, or when `dup` fails.
    pub fn range(&self, pos: u64, len: usize) -> Option<FileRange> {
        match self {
            File::Os { file, shared, .. } => {
                use std::os::fd::AsFd;
                let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
                let fd = match shared.upgrade() {
                    Some(fd) => fd,
                    None => {
                        let fd = std::sync::Arc::new(file.as_fd().try_clone_to_owned().ok()?);
                        *shared = std::sync::Arc::downgrade(&fd);
                        fd
                    }
                };
                Some(FileRange { fd, pos, len })
            }
            File::Sim(_) => None,
        }
    }

    /// `fdatasync`: the file's data (and the size needed to read it back) is
    /// durable when this returns `Ok`. An error means the page cache may have
    /// dropped the data; the caller must not retry and pretend it worked.
    pub async fn sync_data(&self) -> io::Result<()> {
        match self {
            File::Os { file, .. } => file.sync_data().await,
            File::Sim(file) => file.sync_data_stalled().await,
        }
    }

    /// Reserves the file's blocks for `len` bytes from `from` without
    /// changing its size (`fallocate` with `FALLOC_FL_KEEP_SIZE`). The
    /// simulator has no blocks to reserve.
    pub fn reserve(&self, from: u64, len: u64) -> io::Result<()> {
        match self {
            File::Os { file, .. } => {
                let (Ok(from), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(len))
                else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "range too large",
                    ));
                };
                // On tmpfs a reservation is memory allocated and zeroed
                // now, on the shard thread, and there is no writeback to
                // spare: none there (acks=all p99 at 64 MB/s on tmpfs was
                // 1.6-2.2 times higher with it).
                // SAFETY: fstatfs(2) into a zeroed struct this call owns.
                let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
                if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0
                    && fs.f_type == libc::TMPFS_MAGIC
                {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, "tmpfs"));
                }
                // SAFETY: fallocate(2) on a descriptor this file owns.
                let done = unsafe {
                    libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, from, len)
                };
                if done == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
            File::Sim(_) => Ok(()),
        }
    }

    /// Gives back the blocks reserved past `size`, the file's size
    /// (truncating to the same size frees them).
    pub async fn release_reserved(&self, size: u64) -> io::Result<()> {
        match self {
            File::Os { file, .. } => file.set_len(size).await,
            File::Sim(_) => Ok(()),
        }
    }

    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            File::Os { file, .. } => file.set_len(len).await,
            File::Sim(file) => file.set_len(len),
        }
    }

    pub async fn len(&self) -> io::Result<u64> {
        match self {
            File::Os { file, .. } => Ok(file.metadata().await?.len()),
            File::Sim(file) => Ok(file.len()),
        }
    }
}
