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

use compio::io::{AsyncReadAt, AsyncReadAtExt, AsyncWriteAtExt};

use crate::sim::{SimFile, SimFs};

/// A filesystem: the real one, or a simulated one for crash tests.
#[derive(Clone, Debug)]
pub enum Fs {
    /// The operating system's filesystem through the current compio runtime.
    Os,
    /// The in-memory crash simulator.
    Sim(SimFs),
}

/// An open file on an [`Fs`]. Owned by one shard; not shared across threads.
#[derive(Debug)]
pub enum File {
    Os(compio::fs::File),
    Sim(SimFile),
}

impl Fs {
    /// Opens `path` for reading and writing, creating it when `create` is set.
    pub async fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        match self {
            Fs::Os => {
                let file = compio::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .open(path)
                    .await?;
                Ok(File::Os(file))
            }
            Fs::Sim(sim) => Ok(File::Sim(sim.open(path, create)?)),
        }
    }

    pub async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os => compio::fs::create_dir_all(path).await,
            Fs::Sim(sim) => sim.create_dir_all(path),
        }
    }

    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os => compio::fs::remove_file(path).await,
            Fs::Sim(sim) => sim.remove_file(path),
        }
    }

    /// Removes a directory and everything in it.
    pub async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            // Deleting a partition is rare and not on a hot path; std's
            // recursive removal is not worth re-implementing on the ring.
            Fs::Os => std::fs::remove_dir_all(path),
            Fs::Sim(sim) => sim.remove_dir_all(path),
        }
    }

    /// Renames `from` to `to`, replacing `to`. Durable only once the parent
    /// directory is synced with [`Fs::sync_dir`].
    pub async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Fs::Os => compio::fs::rename(from, to).await,
            Fs::Sim(sim) => sim.rename(from, to),
        }
    }

    /// Makes the directory's entries (files created, renamed or removed in
    /// it) durable.
    pub async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os => {
                let dir = compio::fs::File::open(path).await?;
                dir.sync_all().await
            }
            Fs::Sim(sim) => sim.sync_dir(path),
        }
    }

    /// The names of the entries of a directory, sorted.
    pub async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = match self {
            // Listing happens only when a log is opened, never on the append
            // or read path, so a blocking readdir is acceptable here.
            Fs::Os => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(path)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                names
            }
            Fs::Sim(sim) => sim.list_dir(path)?,
        };
        names.sort();
        Ok(names)
    }

    /// Whether a path exists.
    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        match self {
            Fs::Os => path.try_exists(),
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

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

impl File {
    /// Writes all of `buf` at `pos` and hands the buffer back for reuse.
    pub async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<Vec<u8>> {
        match self {
            File::Os(file) => {
                let mut writer = file;
                let compio::BufResult(result, buf) = writer.write_all_at(buf, pos).await;
                result.map(|()| buf)
            }
            File::Sim(file) => file.write_at(&buf, pos).map(|()| buf),
        }
    }

    /// Reads exactly `len` bytes at `pos`; an `UnexpectedEof` error if the
    /// file is shorter.
    pub async fn read_exact_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        match self {
            File::Os(file) => {
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
            File::Os(file) => {
                let mut out: Vec<u8> = Vec::with_capacity(len);
                while out.len() < len {
                    let chunk = Vec::with_capacity(len - out.len());
                    let compio::BufResult(result, chunk) =
                        file.read_at(chunk, pos + out.len() as u64).await;
                    match result {
                        Ok(0) => break,
                        Ok(_) => out.extend_from_slice(&chunk),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            File::Sim(file) => file.read_up_to(len, pos),
        }
    }

    /// `fdatasync`: the file's data (and the size needed to read it back) is
    /// durable when this returns `Ok`. An error means the page cache may have
    /// dropped the data; the caller must not retry and pretend it worked.
    pub async fn sync_data(&self) -> io::Result<()> {
        match self {
            File::Os(file) => file.sync_data().await,
            File::Sim(file) => file.sync_data(),
        }
    }

    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            File::Os(file) => file.set_len(len).await,
            File::Sim(file) => file.set_len(len),
        }
    }

    pub async fn len(&self) -> io::Result<u64> {
        match self {
            File::Os(file) => Ok(file.metadata().await?.len()),
            File::Sim(file) => Ok(file.len()),
        }
    }
}
