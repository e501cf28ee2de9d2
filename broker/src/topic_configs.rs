//! Topic-level configuration: Kafka's topic config names over the engine's
//! `LogConfig`, with the overrides each topic sets and where values come
//! from. The overrides themselves are records in the controller's
//! metadata log, so they survive restarts with the topic.

use std::collections::BTreeMap;

use sluice_engine::LogConfig;

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

/// The broker settings that give topic setting `key` its default.
pub fn broker_keys(key: &str) -> &'static [&'static str] {
    match key {
        "segment.bytes" => &["log.segment.bytes"],
        "segment.ms" => &["log.roll.ms", "log.roll.hours"],
        "segment.index.bytes" => &["log.index.size.max.bytes"],
        "index.interval.bytes" => &["log.index.interval.bytes"],
        "retention.ms" => &[
            "log.retention.ms",
            "log.retention.minutes",
            "log.retention.hours",
        ],
        "retention.bytes" => &["log.retention.bytes"],
        "flush.messages" => &["log.flush.interval.messages"],
        "flush.ms" => &["log.flush.interval.ms"],
        "max.message.bytes" => &["message.max.bytes"],
        "min.insync.replicas" => &["min.insync.replicas"],
        "unclean.leader.election.enable" => &["unclean.leader.election.enable"],
        _ => &[],
    }
}

fn limit_text(value: Option<u64>, unlimited: &str) -> String {
    value.map_or_else(|| unlimited.to_string(), |v| v.to_string())
}

/// The broker's defaults for the topic settings that have no engine field.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub min_insync_replicas: i32,
    pub unclean_leader_election: bool,
}

/// The current value of `key` in `config` (with `overrides` for the keys
/// that have no engine field, else `defaults`), as Kafka spells it.
pub fn value_of(
    key: &str,
    config: &LogConfig,
    overrides: &BTreeMap<String, String>,
    defaults: Defaults,
) -> Option<String> {
    Some(match key {
        "cleanup.policy" => "delete".to_string(),
        "flush.messages" => limit_text(config.flush_messages, "9223372036854775807"),
        "flush.ms" => limit_text(config.flush_ms, "9223372036854775807"),
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_batch_bytes.to_string(),
        "min.insync.replicas" => overrides
            .get(key)
            .cloned()
            .unwrap_or_else(|| defaults.min_insync_replicas.to_string()),
        "retention.bytes" => limit_text(config.retention_bytes, "-1"),
        "retention.ms" => limit_text(config.retention_ms, "-1"),
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.index.bytes" => config.segment_index_bytes.to_string(),
        "segment.ms" => limit_text(config.segment_ms, "9223372036854775807"),
        "unclean.leader.election.enable" => overrides
            .get(key)
            .cloned()
            .unwrap_or_else(|| defaults.unclean_leader_election.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DEFAULTS: Defaults = Defaults {
        min_insync_replicas: 1,
        unclean_leader_election: false,
    };

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
        assert_eq!(
            value_of("retention.ms", &config, &o, DEFAULTS).as_deref(),
            Some("-1")
        );
        assert_eq!(
            value_of("min.insync.replicas", &config, &o, DEFAULTS).as_deref(),
            Some("2")
        );
        assert_eq!(
            value_of("flush.ms", &config, &o, DEFAULTS).as_deref(),
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
}
