//! `partition.metadata`: which topic a partition directory belongs to.
//!
//! A directory is named `<topic>-<partition>`, and a name outlives the
//! topic that carried it: delete a topic, crash before its directories are
//! gone, create a topic of the same name, and the old directory looks like
//! the new topic's. Kafka closes that hole with this file (KIP-516): each
//! partition directory records its topic's id, and a directory whose id is
//! not the metadata image's is never served. Sluice writes Kafka's format,
//! so `cat` shows what Kafka's tools would show:
//!
//! ```text
//! version: 0
//! topic_id: 5mn3ddDRRC-AjIBX7wAx6w
//! ```
//!
//! The topic id is printed as Kafka prints a `Uuid`: its 16 bytes in
//! URL-safe base64 without padding (22 characters).
//!
//! The parsing is pure; [`claim`] is the small I/O shell, and [`prepare`]
//! what the topic layer calls before it opens a partition's log.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use sluice_engine::TopicPartition;
use tracing::info;

use crate::controller::image::TopicId;

/// The file's name inside a partition directory, as in Kafka.
pub const FILE_NAME: &str = "partition.metadata";
/// The replacement being written. The engine removes `*.tmp` files when it
/// opens a log, so one left by a crash does not linger.
const TEMP_NAME: &str = "partition.metadata.tmp";
/// The only version Kafka has defined.
const VERSION: u32 = 0;

/// Why a `partition.metadata` file's text is not one this broker reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line} should be {expected:?}")]
    MissingField { line: usize, expected: &'static str },
    #[error("unsupported version {0:?} (only 0 is known)")]
    Version(String),
    #[error("topic id {0:?} is not 22 characters of URL-safe base64 (16 bytes)")]
    TopicId(String),
    #[error("unexpected text after the topic id")]
    TrailingText,
}

/// The file's text for topic `id`.
pub fn encode(id: TopicId) -> String {
    format!("version: {VERSION}\ntopic_id: {}\n", format_topic_id(id))
}

/// The topic id in a file's `text`. Accepts what Kafka's reader accepts: the
/// two `key: value` lines in order (any whitespace after the colon), an
/// optional final newline.
pub fn decode(text: &str) -> Result<TopicId, ParseError> {
    let mut lines = text.lines();
    let version = field(lines.next(), 1, "version")?;
    if version.parse::<u32>().ok() != Some(VERSION) {
        return Err(ParseError::Version(version.to_string()));
    }
    let id = field(lines.next(), 2, "topic_id")?;
    let id = parse_topic_id(id).ok_or_else(|| ParseError::TopicId(id.to_string()))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(ParseError::TrailingText);
    }
    Ok(id)
}

/// The value of a `key: value` line.
fn field<'a>(
    line: Option<&'a str>,
    number: usize,
    key: &'static str,
) -> Result<&'a str, ParseError> {
    let missing = ParseError::MissingField {
        line: number,
        expected: key,
    };
    let (k, v) = line
        .and_then(|l| l.split_once(':'))
        .ok_or(missing.clone())?;
    if k != key || !v.starts_with(char::is_whitespace) {
        return Err(missing);
    }
    Ok(v.trim())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A topic id as Kafka prints a `Uuid`: URL-safe base64, no padding.
pub fn format_topic_id(id: TopicId) -> String {
    let mut out = String::with_capacity(22);
    for chunk in id.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k bytes carries k + 1 characters.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// The inverse of [`format_topic_id`]; `None` for anything else (wrong
/// length, other characters, or set bits past the 128th).
pub fn parse_topic_id(text: &str) -> Option<TopicId> {
    let text = text.as_bytes();
    if text.len() != 22 {
        return None;
    }
    let mut bits: u128 = 0;
    for (i, &c) in text.iter().enumerate() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u128;
        if i < 21 {
            bits = (bits << 6) | v;
        } else {
            // The last character carries the final 2 bits and 4 zero bits.
            if v & 0xf != 0 {
                return None;
            }
            bits = (bits << 2) | (v >> 4);
        }
    }
    Some(bits.to_be_bytes())
}

/// Makes `tp`'s directory under `log_dir` topic `id`'s before its log is
/// opened: creates it with its file, or adds the file to a directory that
/// has none, or sets aside a directory that names another topic (or whose
/// file cannot be read) and creates a fresh one. Small blocking file calls,
/// run off the shard's thread.
pub async fn prepare(log_dir: &Path, tp: &TopicPartition, id: TopicId) -> Result<(), String> {
    let (log_dir, owned) = (log_dir.to_path_buf(), tp.clone());
    let prepared = compio::runtime::spawn_blocking(move || {
        let tp = owned;
        let dir = log_dir.join(tp.dir_name());
        let fail = |e: io::Error| format!("checking {}: {e}", dir.join(FILE_NAME).display());
        match claim(&dir, id).map_err(fail)? {
            Claim::Created | Claim::Matches => {}
            Claim::Adopted => {
                info!(partition = %tp, "wrote the topic id of a partition directory that had none")
            }
            Claim::Foreign(why) => {
                let why = format!("the directory is not this topic's: {why}");
                super::set_aside(&log_dir, &tp, &why)?;
                claim(&dir, id).map_err(fail)?;
            }
        }
        Ok(())
    })
    .await;
    prepared.unwrap_or_else(|_| Err(format!("preparing the directory of {tp} panicked")))
}

/// What [`claim`] found in a partition directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// There was no directory: it now exists, holding the file.
    Created,
    /// The directory had no file (an older Sluice made it): now it has.
    Adopted,
    /// The directory already names the topic.
    Matches,
    /// The directory belongs to something else: another topic id, or a
    /// file this broker cannot read. Nothing was changed.
    Foreign(String),
}

/// Makes sure directory `dir` is topic `id`'s: creates it with its file,
/// adds the file to a directory that has none, or reports a directory that
/// names another topic (which the caller sets aside and claims again).
pub fn claim(dir: &Path, id: TopicId) -> io::Result<Claim> {
    let text = match fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match text {
        Some(bytes) => Ok(
            match std::str::from_utf8(&bytes)
                .map_err(|_| "it is not UTF-8".to_string())
                .and_then(|t| decode(t).map_err(|e| e.to_string()))
            {
                Ok(found) if found == id => Claim::Matches,
                Ok(found) => Claim::Foreign(format!(
                    "its {FILE_NAME} names topic id {}, the metadata log {}",
                    format_topic_id(found),
                    format_topic_id(id)
                )),
                Err(why) => Claim::Foreign(format!("its {FILE_NAME} is unreadable: {why}")),
            },
        ),
        None => {
            let created = match fs::create_dir(dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            if created {
                // The directory's name must survive a power loss.
                sync_parent(dir)?;
            }
            write(dir, id)?;
            Ok(if created {
                Claim::Created
            } else {
                Claim::Adopted
            })
        }
    }
}

/// Writes the file atomically: a temporary file, fsynced, renamed over the
/// name, and the directory fsynced so the rename is durable.
pub fn write(dir: &Path, id: TopicId) -> io::Result<()> {
    let temp = dir.join(TEMP_NAME);
    let mut file = File::create(&temp)?;
    file.write_all(encode(id).as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()
}

fn sync_parent(dir: &Path) -> io::Result<()> {
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TopicId = [
        0xe6, 0x69, 0xf7, 0x75, 0xd0, 0xd1, 0x44, 0x2f, 0x80, 0x8c, 0x80, 0x57, 0xef, 0x00, 0x31,
        0xeb,
    ];

    #[test]
    fn topic_ids_print_as_kafka_prints_a_uuid() {
        // Kafka's Uuid.toString: URL-safe base64 of the 16 bytes, no padding.
        assert_eq!(format_topic_id(ID), "5mn3ddDRRC-AjIBX7wAx6w");
        assert_eq!(format_topic_id([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(format_topic_id([0xff; 16]), "_____________________w");
    }

    #[test]
    fn topic_ids_round_trip_through_their_text() {
        for id in [ID, [0; 16], [0xff; 16], *b"0123456789abcdef"] {
            assert_eq!(parse_topic_id(&format_topic_id(id)), Some(id));
        }
    }

    #[test]
    fn malformed_topic_ids_are_refused() {
        for bad in [
            "",
            "5mn3ddDRRC-AjIBX7wAx6",    // 21 characters
            "5mn3ddDRRC-AjIBX7wAx6ww",  // 23
            "5mn3ddDRRC+AjIBX7wAx6w",   // standard, not URL-safe, base64
            "5mn3ddDRRC-AjIBX7wAx6w==", // padding
            "5mn3ddDRRC-AjIBX7wAx6x",   // bits past the 128th
            "5mn3ddDRRC-AjIBX7wAxéw",
        ] {
            assert_eq!(parse_topic_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_file_is_kafkas_two_lines_and_reads_back() {
        let text = encode(ID);
        assert_eq!(text, "version: 0\ntopic_id: 5mn3ddDRRC-AjIBX7wAx6w\n");
        assert_eq!(decode(&text), Ok(ID));
        // Kafka's reader splits on ":\s+", and the final newline is optional.
        assert_eq!(
            decode("version:  0\r\ntopic_id:\t5mn3ddDRRC-AjIBX7wAx6w"),
            Ok(ID)
        );
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let cases: &[(&str, ParseError)] = &[
            (
                "",
                ParseError::MissingField {
                    line: 1,
                    expected: "version",
                },
            ),
            (
                "version: 0\n",
                ParseError::MissingField {
                    line: 2,
                    expected: "topic_id",
                },
            ),
            (
                "topic_id: 5mn3ddDRRC-AjIBX7wAx6w\nversion: 0\n",
                ParseError::MissingField {
                    line: 1,
                    expected: "version",
                },
            ),
            (
                "version:0\ntopic_id: 5mn3ddDRRC-AjIBX7wAx6w\n",
                ParseError::MissingField {
                    line: 1,
                    expected: "version",
                },
            ),
            (
                "version: 1\ntopic_id: 5mn3ddDRRC-AjIBX7wAx6w\n",
                ParseError::Version("1".into()),
            ),
            (
                "version: -0x\ntopic_id: x\n",
                ParseError::Version("-0x".into()),
            ),
            (
                "version: 0\ntopic_id: not-an-id\n",
                ParseError::TopicId("not-an-id".into()),
            ),
            (
                "version: 0\ntopic_id: 5mn3ddDRRC-AjIBX7wAx6w\nmore: 1\n",
                ParseError::TrailingText,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text).as_ref(), Err(expected), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_text_never_panics(text in "\\PC{0,80}") {
            let _ = decode(&text);
        }

        #[test]
        fn decoding_near_valid_text_never_panics(
            id in "[A-Za-z0-9_+/=-]{0,24}",
            version in "[0-9a-z -]{0,4}",
        ) {
            let _ = decode(&format!("version: {version}\ntopic_id: {id}\n"));
        }
    }

    #[test]
    fn claim_creates_adopts_matches_and_spots_a_foreign_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t-0");
        assert_eq!(claim(&dir, ID).unwrap(), Claim::Created);
        assert_eq!(fs::read_to_string(dir.join(FILE_NAME)).unwrap(), encode(ID));
        assert!(!dir.join(TEMP_NAME).exists());
        assert_eq!(claim(&dir, ID).unwrap(), Claim::Matches);

        let other = [7; 16];
        let Claim::Foreign(why) = claim(&dir, other).unwrap() else {
            panic!("a directory of another topic id was claimed");
        };
        assert!(why.contains(&format_topic_id(ID)), "{why}");
        // Nothing changed.
        assert_eq!(fs::read_to_string(dir.join(FILE_NAME)).unwrap(), encode(ID));

        fs::remove_file(dir.join(FILE_NAME)).unwrap();
        assert_eq!(claim(&dir, other).unwrap(), Claim::Adopted);
        assert_eq!(claim(&dir, other).unwrap(), Claim::Matches);

        fs::write(dir.join(FILE_NAME), b"\xff\xfe").unwrap();
        assert!(matches!(claim(&dir, other).unwrap(), Claim::Foreign(_)));
    }
}
