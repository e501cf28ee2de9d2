//! The high-watermark checkpoint: every partition's high watermark, written
//! to `log.dirs` every `replica.high.watermark.checkpoint.interval.ms` and
//! at shutdown, read at start (Kafka's `replication-offset-checkpoint`, with
//! topic ids so a re-created topic does not inherit its predecessor's).
//!
//! A replica starts with the high watermark it checkpointed rather than
//! zero. Everything below a high watermark was committed, so starting from
//! an older one is safe; without it, a leader that restarts alone below
//! `min.insync.replicas` could serve nothing of what was committed before,
//! since its high watermark may not move until the ISR grows (KIP-966).
//!
//! ```text
//! 0                                      <- version
//! 2                                      <- entries
//! orders 3 0123456789abcdef0123456789abcdef 1200   <- topic partition id hw
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use sluice_engine::{Offset, TopicPartition};

use crate::controller::image::TopicId;

pub const FILE: &str = "replication-offset-checkpoint";

/// One partition's checkpointed high watermark.
pub type Checkpointed = HashMap<TopicPartition, (TopicId, Offset)>;

static LOADED: OnceLock<Checkpointed> = OnceLock::new();

/// The high watermark `tp` (of topic `id`) had at the last checkpoint read
/// at start, if any.
pub fn loaded(tp: &TopicPartition, id: &TopicId) -> Option<Offset> {
    LOADED
        .get()?
        .get(tp)
        .filter(|(loaded, _)| loaded == id)
        .map(|(_, hw)| *hw)
}

/// Reads the checkpoint in `log_dir` (a missing or malformed one is
/// empty: replicas then start from zero) for [`loaded`]. Once, at start.
pub fn load(log_dir: &Path) {
    let parsed = std::fs::read_to_string(log_dir.join(FILE))
        .ok()
        .and_then(|text| decode(&text))
        .unwrap_or_default();
    let _ = LOADED.set(parsed);
}

/// Writes `entries` to `log_dir` atomically (a temporary file renamed over
/// the old one, both synced).
pub fn store(log_dir: &Path, entries: &Checkpointed) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = log_dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(encode(entries).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, log_dir.join(FILE))?;
    std::fs::File::open(log_dir)?.sync_all()
}

pub fn encode(entries: &Checkpointed) -> String {
    let mut lines: Vec<String> = entries
        .iter()
        .map(|(tp, (id, hw))| {
            let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} {} {id} {}", tp.topic, tp.partition, hw.0)
        })
        .collect();
    lines.sort();
    format!(
        "0\n{}\n{}",
        lines.len(),
        lines.join("\n") + if lines.is_empty() { "" } else { "\n" }
    )
}

pub fn decode(text: &str) -> Option<Checkpointed> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut out = HashMap::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let mut fields = lines.next()?.split_whitespace();
        let topic = fields.next()?;
        let partition: i32 = fields.next()?.parse().ok()?;
        let hex = fields.next()?;
        let hw: i64 = fields.next()?.parse().ok()?;
        if hex.len() != 32 || fields.next().is_some() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        out.insert(TopicPartition::new(topic, partition), (id, Offset(hw)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_bad_ones_are_refused() {
        let mut entries = Checkpointed::new();
        entries.insert(TopicPartition::new("orders", 3), ([0xab; 16], Offset(1200)));
        entries.insert(TopicPartition::new("a.b-c", 0), ([1; 16], Offset(0)));
        let text = encode(&entries);
        assert_eq!(decode(&text), Some(entries));
        assert_eq!(
            decode(&encode(&Checkpointed::new())),
            Some(Checkpointed::new())
        );
        for bad in [
            "",
            "1\n0\n",
            "0\n2\norders 3 abababababababababababababababab 1200\n",
            "0\n1\norders x abababababababababababababababab 1\n",
            "0\n1\norders 3 abab 1\n",
            "0\n1\norders 3 zzababababababababababababababab 1\n",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
