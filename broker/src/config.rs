//! The broker's configuration: a Kafka-style `server.properties` file plus
//! `--set key=value` overrides, with Kafka's names and defaults. Unknown keys
//! are warned about; an invalid value stops start-up naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_engine::LogConfig;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}={value:?}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Everything the broker reads from its configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Where the broker listens (`listeners`, PLAINTEXT only for now).
    pub listen: SocketAddr,
    /// What clients are told to connect to (`advertised.listeners`).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `log.dirs`: one directory for now.
    pub log_dir: PathBuf,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub min_insync_replicas: i32,
    pub auto_create_topics: bool,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: usize,
    /// Defaults for every topic's log (`log.segment.bytes`, `log.flush.*`,
    /// `log.retention.*`).
    pub log: LogConfig,
    /// Shard threads (`num.io.threads` has no meaning here; `sluice.shards`,
    /// default one per core).
    pub shards: Option<usize>,
    /// `sluice.io.driver`: auto, io_uring or poll.
    pub io_driver: sluice_engine::IoDriver,
    /// `group.*` limits of the group coordinator.
    pub group_limits: crate::groups::state::Limits,
    /// `sluice.offsets.compact.records`: records appended to a
    /// `__consumer_offsets` partition before it is compacted.
    pub offsets_compact_records: u64,
    /// `fetch.max.bytes`: the most record bytes one Fetch response holds,
    /// whatever the client asks (the first batch is returned whole even if
    /// larger, as Kafka does). Also each connection's budget of response
    /// bytes in flight.
    pub fetch_max_bytes: usize,
    /// `queued.max.request.bytes`: the size of two broker-wide budgets, of
    /// request bytes read and not yet handled, and of response bytes read
    /// and not yet written to their sockets.
    pub queued_max_request_bytes: usize,
    /// The known keys the configuration sets (rather than defaults), for
    /// DescribeConfigs' sources.
    pub set_keys: std::collections::BTreeSet<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "node.id",
    "broker.id",
    "listeners",
    "advertised.listeners",
    "log.dirs",
    "log.dir",
    "num.partitions",
    "default.replication.factor",
    "min.insync.replicas",
    "auto.create.topics.enable",
    "message.max.bytes",
    "socket.request.max.bytes",
    "log.segment.bytes",
    "log.roll.ms",
    "log.roll.hours",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.retention.ms",
    "log.retention.minutes",
    "log.retention.hours",
    "log.retention.bytes",
    "log.index.interval.bytes",
    "log.index.size.max.bytes",
    "producer.id.expiration.ms",
    "group.initial.rebalance.delay.ms",
    "sluice.offsets.compact.records",
    "group.min.session.timeout.ms",
    "group.max.session.timeout.ms",
    "sluice.shards",
    "sluice.io.driver",
    "fetch.max.bytes",
    "queued.max.request.bytes",
];

/// Kafka's default `fetch.max.bytes` (55 MiB).
pub const FETCH_MAX_BYTES: usize = 57_671_680;
/// Sluice's default `queued.max.request.bytes` (Kafka's is -1, unbounded).
pub const QUEUED_MAX_REQUEST_BYTES: usize = 512 << 20;
const _: () = assert!(FETCH_MAX_BYTES <= QUEUED_MAX_REQUEST_BYTES);

impl BrokerConfig {
    /// Builds the configuration from `server.properties`-style pairs, later
    /// pairs overriding earlier ones.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<BrokerConfig, ConfigError> {
        let mut map: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in pairs {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                warn!(key = %key, "unknown configuration key ignored");
                continue;
            }
            map.insert(key.as_str(), value.trim());
        }
        let get = |key: &str| map.get(key).copied();
        let bad = |key: &str, value: &str, reason: &str| ConfigError {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        fn num<T: std::str::FromStr>(
            key: &str,
            value: Option<&str>,
            default: T,
            check: impl Fn(&T) -> bool,
            rule: &str,
        ) -> Result<T, ConfigError> {
            let Some(text) = value else {
                return Ok(default);
            };
            match text.parse::<T>() {
                Ok(v) if check(&v) => Ok(v),
                _ => Err(ConfigError {
                    key: key.to_string(),
                    value: text.to_string(),
                    reason: rule.to_string(),
                }),
            }
        }
        /// Kafka's "-1 means unlimited" longs.
        fn limit(
            key: &str,
            value: Option<&str>,
            default: Option<u64>,
        ) -> Result<Option<u64>, ConfigError> {
            let Some(text) = value else {
                return Ok(default);
            };
            match text.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(v) if v >= 0 => Ok(Some(v as u64)),
                _ => Err(ConfigError {
                    key: key.to_string(),
                    value: text.to_string(),
                    reason: "must be -1 (unlimited) or a non-negative integer".into(),
                }),
            }
        }

        let node_id_key = if get("node.id").is_some() {
            "node.id"
        } else {
            "broker.id"
        };
        let node_id = num(
            node_id_key,
            get(node_id_key),
            1i32,
            |v| *v >= 0,
            "must be a non-negative integer",
        )?;

        let listeners = get("listeners").unwrap_or("PLAINTEXT://127.0.0.1:9092");
        let listen =
            parse_listener(listeners).map_err(|reason| bad("listeners", listeners, &reason))?;
        let (advertised_host, advertised_port) = match get("advertised.listeners") {
            Some(text) => {
                let (host, port) = parse_host_port(text)
                    .map_err(|reason| bad("advertised.listeners", text, &reason))?;
                (host, port)
            }
            None => (listen.ip().to_string(), listen.port()),
        };
        let log_dir = PathBuf::from(
            get("log.dirs")
                .or(get("log.dir"))
                .map(|dirs| dirs.split(',').next().unwrap_or(dirs).trim())
                .unwrap_or("sluice-data"),
        );
        let num_partitions = num(
            "num.partitions",
            get("num.partitions"),
            1i32,
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let default_replication_factor = num(
            "default.replication.factor",
            get("default.replication.factor"),
            1i16,
            |v| *v == 1,
            "must be 1 on a single node (replication comes with the cluster)",
        )?;
        let min_insync_replicas = num(
            "min.insync.replicas",
            get("min.insync.replicas"),
            1i32,
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let auto_create_topics = match get("auto.create.topics.enable") {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(bad(
                    "auto.create.topics.enable",
                    other,
                    "must be true or false",
                ))
            }
        };
        let message_max_bytes = num(
            "message.max.bytes",
            get("message.max.bytes"),
            1_048_588usize,
            |v| *v >= 61,
            "must be at least 61 (one batch header)",
        )?;
        let socket_request_max_bytes = num(
            "socket.request.max.bytes",
            get("socket.request.max.bytes"),
            104_857_600usize,
            |v| *v >= 1024 && *v <= i32::MAX as usize,
            "must be between 1024 and 2147483647",
        )?;

        let defaults = LogConfig::default();
        let segment_ms = match (get("log.roll.ms"), get("log.roll.hours")) {
            (Some(ms), _) => num(
                "log.roll.ms",
                Some(ms),
                0u64,
                |v| *v >= 1,
                "must be at least 1",
            )?,
            (None, Some(h)) => {
                num(
                    "log.roll.hours",
                    Some(h),
                    0u64,
                    |v| *v >= 1,
                    "must be at least 1",
                )? * 3_600_000
            }
            (None, None) => defaults.segment_ms.unwrap_or(604_800_000),
        };
        let retention_ms = match (
            get("log.retention.ms"),
            get("log.retention.minutes"),
            get("log.retention.hours"),
        ) {
            (Some(ms), _, _) => limit("log.retention.ms", Some(ms), None)?,
            (None, Some(m), _) => {
                limit("log.retention.minutes", Some(m), None)?.map(|m| m * 60_000)
            }
            (None, None, Some(h)) => {
                limit("log.retention.hours", Some(h), None)?.map(|h| h * 3_600_000)
            }
            (None, None, None) => defaults.retention_ms,
        };
        let log = LogConfig {
            segment_bytes: num(
                "log.segment.bytes",
                get("log.segment.bytes"),
                defaults.segment_bytes,
                |v| {
                    (sluice_engine::config::MIN_SEGMENT_BYTES
                        ..=sluice_engine::config::MAX_SEGMENT_BYTES)
                        .contains(v)
                },
                "must be between 14 and 2147483647",
            )?,
            segment_ms: Some(segment_ms),
            index_interval_bytes: num(
                "log.index.interval.bytes",
                get("log.index.interval.bytes"),
                defaults.index_interval_bytes,
                |v| *v >= 1,
                "must be at least 1",
            )?,
            segment_index_bytes: num(
                "log.index.size.max.bytes",
                get("log.index.size.max.bytes"),
                defaults.segment_index_bytes,
                |v| *v >= 8,
                "must be at least 8",
            )?,
            flush_messages: limit(
                "log.flush.interval.messages",
                get("log.flush.interval.messages"),
                None,
            )?
            .filter(|&n| n < i64::MAX as u64),
            flush_ms: limit("log.flush.interval.ms", get("log.flush.interval.ms"), None)?,
            retention_ms,
            retention_bytes: limit("log.retention.bytes", get("log.retention.bytes"), None)?,
            max_batch_bytes: message_max_bytes,
            // Kafka's is an int of at least 1, broker-only (no topic name).
            producer_id_expiration_ms: num(
                "producer.id.expiration.ms",
                get("producer.id.expiration.ms"),
                defaults.producer_id_expiration_ms,
                |v| (1..=i32::MAX as u64).contains(v),
                "must be between 1 and 2147483647",
            )?,
            ..defaults
        };
        if log.flush_messages == Some(0) {
            return Err(bad(
                "log.flush.interval.messages",
                "0",
                "must be at least 1",
            ));
        }
        let shards = match get("sluice.shards") {
            Some(text) => Some(num(
                "sluice.shards",
                Some(text),
                1usize,
                |v| (1..=1024).contains(v),
                "must be between 1 and 1024",
            )?),
            None => None,
        };
        let io_driver = match get("sluice.io.driver") {
            Some(text) => text
                .parse()
                .map_err(|_| bad("sluice.io.driver", text, "must be auto, io_uring or poll"))?,
            None => sluice_engine::IoDriver::Auto,
        };
        let offsets_compact_records = num(
            "sluice.offsets.compact.records",
            get("sluice.offsets.compact.records"),
            crate::groups::offsets_topic::COMPACT_RECORDS,
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let group_defaults = crate::groups::state::Limits::default();
        let group_limits = crate::groups::state::Limits {
            initial_rebalance_delay_ms: num(
                "group.initial.rebalance.delay.ms",
                get("group.initial.rebalance.delay.ms"),
                group_defaults.initial_rebalance_delay_ms,
                |_| true,
                "must be a non-negative integer",
            )?,
            min_session_timeout_ms: num(
                "group.min.session.timeout.ms",
                get("group.min.session.timeout.ms"),
                group_defaults.min_session_timeout_ms,
                |v| *v >= 1,
                "must be at least 1",
            )?,
            max_session_timeout_ms: num(
                "group.max.session.timeout.ms",
                get("group.max.session.timeout.ms"),
                group_defaults.max_session_timeout_ms,
                |v| *v >= 1,
                "must be at least 1",
            )?,
        };
        let fetch_max_bytes = num(
            "fetch.max.bytes",
            get("fetch.max.bytes"),
            FETCH_MAX_BYTES,
            |v| (1024..=i32::MAX as usize).contains(v),
            "must be between 1024 and 2147483647",
        )?;
        let queued_max_request_bytes = match get("queued.max.request.bytes") {
            // Kafka's "unbounded". Sluice always bounds what it holds for
            // clients, so the default stands in.
            Some("-1") => {
                warn!(
                    default = QUEUED_MAX_REQUEST_BYTES,
                    "queued.max.request.bytes=-1 (unbounded) is not supported; using the default"
                );
                QUEUED_MAX_REQUEST_BYTES
            }
            text => num(
                "queued.max.request.bytes",
                text,
                QUEUED_MAX_REQUEST_BYTES,
                |v| *v >= 1024,
                "must be at least 1024, or -1 for the default",
            )?,
        };
        let set_keys = map.keys().map(|k| k.to_string()).collect();
        Ok(BrokerConfig {
            fetch_max_bytes,
            queued_max_request_bytes,
            set_keys,
            offsets_compact_records,
            group_limits,
            node_id,
            listen,
            advertised_host,
            advertised_port,
            log_dir,
            num_partitions,
            default_replication_factor,
            min_insync_replicas,
            auto_create_topics,
            message_max_bytes,
            socket_request_max_bytes,
            log,
            shards,
            io_driver,
        })
    }
}

/// `PLAINTEXT://host:port` (one listener for now).
fn parse_listener(text: &str) -> Result<SocketAddr, String> {
    let (host, port) = parse_host_port(text)?;
    let host = if host.is_empty() {
        "0.0.0.0".to_string()
    } else {
        host
    };
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("{host}:{port} is not an IP address and port"))
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let first = text.split(',').next().unwrap_or(text).trim();
    let rest = match first.split_once("://") {
        Some(("PLAINTEXT", rest)) => rest,
        Some((proto, _)) => {
            return Err(format!(
                "only PLAINTEXT listeners are supported, not {proto}"
            ))
        }
        None => first,
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| "expected PLAINTEXT://host:port".to_string())?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_kafkas() {
        let config = BrokerConfig::from_pairs(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(config.num_partitions, 1);
        assert!(config.auto_create_topics);
        assert_eq!(config.log.segment_bytes, 1 << 30);
        assert_eq!(config.log.flush_messages, None);
        assert_eq!(config.log.retention_ms, Some(604_800_000));
        assert_eq!(config.socket_request_max_bytes, 104_857_600);
        assert_eq!(config.log.producer_id_expiration_ms, 86_400_000);
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (key, value) in [
            ("num.partitions", "0"),
            ("log.segment.bytes", "3"),
            ("listeners", "SSL://h:1"),
            ("auto.create.topics.enable", "maybe"),
            ("log.flush.interval.messages", "0"),
            ("sluice.io.driver", "magic"),
            ("producer.id.expiration.ms", "0"),
        ] {
            let err = BrokerConfig::from_pairs(&pairs(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn kafka_names_map_onto_log_settings() {
        let config = BrokerConfig::from_pairs(&pairs(&[
            ("listeners", "PLAINTEXT://127.0.0.1:19092"),
            ("log.flush.interval.messages", "1"),
            ("log.retention.hours", "1"),
            ("log.retention.bytes", "-1"),
            ("log.dirs", "/a,/b"),
            ("producer.id.expiration.ms", "60000"),
        ]))
        .unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.log.flush_messages, Some(1));
        assert_eq!(config.log.retention_ms, Some(3_600_000));
        assert_eq!(config.log.retention_bytes, None);
        assert_eq!(config.log_dir, PathBuf::from("/a"));
        assert_eq!(config.log.producer_id_expiration_ms, 60_000);
    }
}
