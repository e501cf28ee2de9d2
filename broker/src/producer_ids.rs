//! Producer ids for idempotent producers (InitProducerId), unique across
//! restarts.
//!
//! Ids are reserved in blocks: the end of the current block is written to
//! `<log.dirs>/producer-id-block` (temp file, fsync, rename, fsync the
//! directory) before any id of the block is handed out, so a crash can
//! skip ids but never hand one out twice. Until the controller quorum
//! exists this file is the single node's source of truth.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ids reserved per write of the block file.
pub const BLOCK: i64 = 1000;
const FILE: &str = "producer-id-block";

#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    /// (next id to hand out, first id not yet reserved)
    state: Mutex<(i64, i64)>,
}

fn replace_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl ProducerIds {
    /// Reads the reserved block's end from `dir` (0 if there is none yet).
    pub fn load(dir: &Path) -> Result<ProducerIds, String> {
        let path = dir.join(FILE);
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{} is not a producer id: {text:?}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        Ok(ProducerIds {
            path,
            state: Mutex::new((next, next)),
        })
    }

    /// The next unused producer id. Writes the block file once per
    /// [`BLOCK`] ids (a short blocking write on the calling shard).
    pub fn allocate(&self) -> std::io::Result<i64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, reserved) = *state;
        if next >= reserved {
            let end = next + BLOCK;
            replace_durably(&self.path, end.to_string().as_bytes())?;
            state.1 = end;
        }
        state.0 = next + 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts_even_when_a_block_was_not_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::load(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(ids);
        let ids = ProducerIds::load(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), BLOCK);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(ProducerIds::load(dir.path()).is_err());
    }
}
