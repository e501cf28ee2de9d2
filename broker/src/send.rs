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
use compio::driver::op::{Interest, PollOnce};
use compio::driver::ToSharedFd;
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;

use crate::codec::Part;

/// Most bytes one `sendfile` call is asked for: a slow socket stops it
/// sooner, and other connections on the shard are not kept waiting longer.
const SENDFILE_MAX: usize = 1 << 20;

/// A connection's writer.
pub struct Sender {
    stream: TcpStream,
    /// Whether the socket is non-blocking yet (made so on the first range).
    nonblocking: bool,
}

impl Sender {
    pub fn new(stream: TcpStream) -> Sender {
        Sender {
            stream,
            nonblocking: false,
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

    /// Hands `range` from its file to the socket.
    async fn send_range(&mut self, range: &sluice_engine::FileRange) -> io::Result<()> {
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
            // SAFETY: sendfile(2) between two descriptors this writer holds
            // open, with an offset it owns.
            let sent = unsafe { libc::sendfile(socket, file, &mut offset, left.min(SENDFILE_MAX)) };
            match sent {
                0 => {
                    // The log was cut under the range (a follower truncating):
                    // the response's sizes are already on the wire.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "segment file shorter than the range being sent",
                    ));
                }
                n if n > 0 => left -= n as usize,
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

    /// Waits until the socket has room.
    async fn writable(&self) -> io::Result<()> {
        let op = PollOnce::new(self.stream.to_shared_fd(), Interest::Writable);
        let compio::BufResult(result, _) = compio::runtime::submit(op).await;
        result.map(drop)
    }
}
