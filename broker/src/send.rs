//! Writing a response to its connection: runs of bytes in memory with one
//! vectored write each, and segment file ranges (Fetch records) handed from
//! the page cache to the socket with `sendfile(2)`, so that the broker
//! never reads them: the socket takes references to the file's pages, as
//! Kafka's `FileChannel.transferTo` does.
//!
//! `sendfile` runs on the connection's shard thread, not through the ring:
//! io_uring has no sendfile, and its `splice` always runs on a kernel
//! worker thread, two thread hand-offs per megabyte that cost more than
//! the copies saved (measured: docs/BENCHMARKS.md). The socket is made
//! non-blocking for it, so a client that does not read makes `sendfile`
//! stop short instead of stalling the shard; the writer then waits for
//! room through the ring. (The ring's socket operations do not depend on
//! the flag: they wait by polling either way.)

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use bytes::Bytes;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::op::{Interest, PollOnce};
use compio::driver::ToSharedFd;
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;

use crate::codec::Part;

/// Most bytes one `sendfile` call is asked for: a slow socket stops it
/// sooner, and other connections on the shard are not kept waiting longer.
const SENDFILE_MAX: usize = 1 << 20;

/// Ranges not in the page cache are read and written this much at a time.
const CHUNK: usize = 256 * 1024;

/// A connection's writer.
pub struct Sender {
    stream: TcpStream,
    /// Whether the socket is non-blocking yet (made so on the first range).
    nonblocking: bool,
    /// The buffer ranges not in the page cache are read into, reused.
    chunk: Option<Vec<u8>>,
}

impl Sender {
    pub fn new(stream: TcpStream) -> Sender {
        Sender {
            stream,
            nonblocking: false,
            chunk: None,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `parts` in order. An error leaves the connection unusable
    /// (part of a response may have gone): the caller closes it.
    pub async fn write(&mut self, parts: Vec<Part>) -> io::Result<()> {
        let mut run: Vec<Bytes> = Vec::new();
        for part in parts {
            match part {
                Part::Memory(bytes) => run.push(bytes),
                Part::File(range) => {
                    self.write_run(&mut run).await?;
                    self.send_range(&range).await?;
                }
            }
        }
        self.write_run(&mut run).await
    }

    async fn write_run(&mut self, run: &mut Vec<Bytes>) -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let compio::BufResult(result, _) =
            self.stream.write_vectored_all(std::mem::take(run)).await;
        result
    }

    /// Hands `range` from its file to the socket: with `sendfile` when every
    /// page of it is in the page cache, else by reading it through the ring
    /// (a `sendfile` of pages on the disk would block the shard's thread,
    /// and every partition and connection it serves, for the disk).
    async fn send_range(&mut self, range: &sluice_engine::FileRange) -> io::Result<()> {
        if !cached(range) {
            return self.read_and_write(range).await;
        }
        if !self.nonblocking {
            socket2::SockRef::from(&self.stream).set_nonblocking(true)?;
            self.nonblocking = true;
        }
        let socket = self.stream.as_fd().as_raw_fd();
        let file = range.fd.as_raw_fd();
        let mut offset =
            libc::off_t::try_from(range.pos).map_err(|_| io::Error::other("offset too large"))?;
        let mut left = range.len;
        while left > 0 {
            // A client gone raises SIGPIPE here (sendfile takes no
            // MSG_NOSIGNAL); Rust's runtime ignores SIGPIPE, so it is the
            // EPIPE error below. A page evicted since `cached` was asked
            // would block this thread on the disk once; that race is
            // accepted.
            // SAFETY: sendfile(2) between two descriptors this writer holds
            // open, with an offset it owns.
            let sent = unsafe { libc::sendfile(socket, file, &mut offset, left.min(SENDFILE_MAX)) };
            match sent {
                0 => return Err(cut_short()),
                n if n > 0 => {
                    left -= n as usize;
                    if left > 0 {
                        // Through the ring, so that the shard's other work
                        // runs between megabytes.
                        self.writable().await?;
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => self.writable().await?,
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads `range` through the ring a chunk at a time into the
    /// connection's reused buffer, and writes each chunk.
    async fn read_and_write(&mut self, range: &sluice_engine::FileRange) -> io::Result<()> {
        use compio::io::AsyncReadAt;
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: a new descriptor (a duplicate) that the compio file owns.
        let file = unsafe { compio::fs::File::from_raw_fd(range.fd.try_clone()?.into_raw_fd()) };
        // An error drops the buffer with the connection.
        let mut buf = self
            .chunk
            .take()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK));
        let (mut pos, mut left) = (range.pos, range.len);
        while left > 0 {
            buf.clear();
            let want = left.min(CHUNK);
            let compio::BufResult(read, back) = file.read_at(buf.slice(0..want), pos).await;
            buf = back.into_inner();
            match read {
                Ok(0) => return Err(cut_short()),
                Ok(n) => {
                    let compio::BufResult(wrote, back) =
                        self.stream.write_all(buf.slice(0..n)).await;
                    buf = back.into_inner();
                    wrote?;
                    pos += n as u64;
                    left -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.chunk = Some(buf);
        Ok(())
    }

    /// Waits until the socket has room.
    async fn writable(&self) -> io::Result<()> {
        let op = PollOnce::new(self.stream.to_shared_fd(), Interest::Writable);
        let compio::BufResult(result, _) = compio::runtime::submit(op).await;
        result.map(drop)
    }
}

/// The log was cut under a range being sent (a follower truncating): the
/// response's sizes are already on the wire, so the connection must close.
fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "segment file shorter than the range being sent",
    )
}

/// Whether this kernel answers `cachestat(2)` (Linux 6.5; a seccomp
/// filter may refuse it), asked once: without it no range could be known
/// to be in the page cache, every range would be read in chunks, and
/// Fetch should not make ranges at all.
pub fn ranges_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(exe) = std::fs::File::open("/proc/self/exe") else {
            return false;
        };
        cachestat(exe.as_raw_fd(), 0, 1).is_some()
    })
}

/// Whether every page of `range` is in the page cache. Unknown counts as
/// no.
fn cached(range: &sluice_engine::FileRange) -> bool {
    let Some(cached) = cachestat(range.fd.as_raw_fd(), range.pos, range.len as u64) else {
        return false;
    };
    // SAFETY: sysconf(3) has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    let first = range.pos / page;
    let last = (range.pos + range.len as u64).div_ceil(page);
    cached >= last - first
}

/// The number of pages of `[off, off + len)` of `fd` in the page cache
/// (`cachestat(2)`); `None` if the kernel does not answer.
fn cachestat(fd: std::os::fd::RawFd, off: u64, len: u64) -> Option<u64> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        /// The same number on both (the generic syscall table).
        const SYS_CACHESTAT: libc::c_long = 451;
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        let asked = Range { off, len };
        let mut stat = Stat::default();
        // SAFETY: cachestat(2) reads the range and fills the stat struct,
        // both owned here and laid out as the kernel's.
        let done = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                fd,
                &asked as *const Range,
                &mut stat as *mut Stat,
                0u32,
            )
        };
        (done == 0).then_some(stat.nr_cache)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (fd, off, len);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    #[test]
    fn a_range_is_cached_once_written_and_not_once_dropped() {
        // Under the build's target directory, on the project's disk: not a
        // tmpfs (whose pages cannot be dropped), not the source tree.
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(target).unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let range = sluice_engine::FileRange {
            fd: Arc::new(OwnedFd::from(file)),
            pos: 1000,
            len: 500_000,
        };
        assert!(ranges_supported(), "cachestat(2) on this kernel");
        assert!(cached(&range), "just written");
        let fd = range.fd.as_raw_fd();
        // SAFETY: fdatasync(2) and posix_fadvise(2) on a descriptor owned
        // by this test.
        unsafe {
            assert_eq!(libc::fdatasync(fd), 0);
            assert_eq!(libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED), 0);
        }
        // SAFETY: fstatfs(2) into a zeroed struct this test owns.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatfs(fd, &mut fs) }, 0);
        if fs.f_type != libc::TMPFS_MAGIC {
            assert!(!cached(&range), "dropped from the page cache");
        }
    }
}
