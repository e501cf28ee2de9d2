//! Topic-level configuration: Kafka's topic config names over the engine's
//! `LogConfig`, with the overrides each topic sets and where values come
//! from, persisted per topic.
//!
//! Overrides live in `<log.dirs>/.sluice-topic-configs/<topic>.properties`,
//! replaced atomically (temp file, fsync, rename, fsync the directory), so
//! they survive restarts. The controller's metadata log will take this over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_engine::LogConfig;

/// The directory under `log.dirs` holding topic overrides. Its name cannot
/// be mistaken for a partition directory (`<topic>-<number>`).
pub const DIR: &str = ".sluice-topic-configs";

/// Kafka's `ConfigSource` values used here.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// Every topic config this broker knows, in the order DescribeConfigs lists.
pub const KEYS: &[&str] = &[
    "cleanup.policy",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

fn limit_text(value: Option<u64>, unlimited: &str) -> String {
    value.map_or_else(|| unlimited.to_string(), |v| v.to_string())
}

/// The current value of `key` in `config` (with `overrides` for the keys
/// that have no engine field), as Kafka spells it.
pub fn value_of(
    key: &str,
    config: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Option<String> {
    Some(match key {
        "cleanup.policy" => "delete".to_string(),
        "flush.messages" => limit_text(config.flush_messages, "9223372036854775807"),
        "flush.ms" => limit_text(config.flush_ms, "9223372036854775807"),
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_batch_bytes.to_string(),
        "min.insync.replicas" => overrides.get(key).cloned().unwrap_or_else(|| "1".into()),
        "retention.bytes" => limit_text(config.retention_bytes, "-1"),
        "retention.ms" => limit_text(config.retention_ms, "-1"),
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.index.bytes" => config.segment_index_bytes.to_string(),
        "segment.ms" => limit_text(config.segment_ms, "9223372036854775807"),
        "unclean.leader.election.enable" => overrides
            .get(key)
            .cloned()
            .unwrap_or_else(|| "false".into()),
        _ => return None,
    })
}

/// `base` with `overrides` applied; the error names the key.
pub fn apply(base: &LogConfig, overrides: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut config = base.clone();
    for (key, value) in overrides {
        let long = || {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key}={value:?} is not a number"))
        };
        let positive = |v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{key}={value} must be positive"))
        };
        // Kafka's "-1 (or Long.MAX) means no limit".
        let limit = |v: i64| match v {
            -1 | i64::MAX => Ok(None),
            v if v >= 0 => Ok(Some(v as u64)),
            _ => Err(format!("{key}={value} must be -1 or non-negative")),
        };
        match key.as_str() {
            "segment.bytes" => config.segment_bytes = positive(long()?)?,
            "segment.ms" => config.segment_ms = limit(long()?)?,
            "segment.index.bytes" => config.segment_index_bytes = positive(long()?)?,
            "retention.ms" => config.retention_ms = limit(long()?)?,
            "retention.bytes" => config.retention_bytes = limit(long()?)?,
            "flush.messages" => config.flush_messages = limit(long()?)?,
            "flush.ms" => config.flush_ms = limit(long()?)?,
            "max.message.bytes" => {
                config.max_batch_bytes = usize::try_from(positive(long()?)?)
                    .map_err(|_| format!("{key} is too large"))?
            }
            "index.interval.bytes" => config.index_interval_bytes = positive(long()?)?,
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "cleanup.policy={value} is not supported (only delete)"
                ))
            }
            "min.insync.replicas" => {
                positive(long()?)?;
            }
            "unclean.leader.election.enable" if value == "true" || value == "false" => {}
            "unclean.leader.election.enable" => return Err(format!("{key} must be true or false")),
            _ => return Err(format!("unknown topic config {key}")),
        }
    }
    if config.flush_messages == Some(0) {
        return Err("flush.messages must be at least 1".into());
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn path(log_dir: &Path, topic: &str) -> PathBuf {
    log_dir.join(DIR).join(format!("{topic}.properties"))
}

/// Persists a topic's overrides durably (or removes the file when empty).
pub fn save(
    log_dir: &Path,
    topic: &str,
    overrides: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let dir = log_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let target = path(log_dir, topic);
    if overrides.is_empty() {
        match std::fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    } else {
        let tmp = target.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        for (key, value) in overrides {
            writeln!(file, "{key}={value}")?;
        }
        file.sync_data()?;
        drop(file);
        std::fs::rename(&tmp, &target)?;
    }
    std::fs::File::open(&dir)?.sync_all()
}

/// A topic's persisted overrides (none if it has no file).
pub fn load(log_dir: &Path, topic: &str) -> Result<BTreeMap<String, String>, String> {
    let target = path(log_dir, topic);
    let text = match std::fs::read_to_string(&target) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("reading {}: {e}", target.display())),
    };
    let mut overrides = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("{}: malformed line {line:?}", target.display()))?;
        overrides.insert(key.to_string(), value.to_string());
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_apply_and_describe_back_as_kafka_spells_them() {
        let o = overrides(&[
            ("retention.ms", "-1"),
            ("flush.messages", "1"),
            ("min.insync.replicas", "2"),
        ]);
        let config = apply(&LogConfig::default(), &o).unwrap();
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.flush_messages, Some(1));
        assert_eq!(value_of("retention.ms", &config, &o).as_deref(), Some("-1"));
        assert_eq!(
            value_of("min.insync.replicas", &config, &o).as_deref(),
            Some("2")
        );
        assert_eq!(
            value_of("flush.ms", &config, &o).as_deref(),
            Some("9223372036854775807")
        );
        for (k, v) in [
            ("segment.bytes", "1"),
            ("retention.ms", "x"),
            ("cleanup.policy", "compact"),
            ("nope", "1"),
            ("flush.messages", "0"),
            ("unclean.leader.election.enable", "yes"),
        ] {
            assert!(
                apply(&LogConfig::default(), &overrides(&[(k, v)])).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn overrides_persist_and_an_empty_set_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let o = overrides(&[("retention.ms", "1000")]);
        save(dir.path(), "t", &o).unwrap();
        assert_eq!(load(dir.path(), "t").unwrap(), o);
        save(dir.path(), "t", &BTreeMap::new()).unwrap();
        assert!(load(dir.path(), "t").unwrap().is_empty());
    }
}
