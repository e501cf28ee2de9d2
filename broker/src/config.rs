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
    /// `metadata.log.dir`: where the controller's metadata log lives; by
    /// default in `log.dirs`. Apart, a full or failing data disk leaves the
    /// controller quorum working.
    pub metadata_log_dir: PathBuf,
    /// Where this node's controller listens for the other controllers: the
    /// `listeners` entry named in `controller.listener.names`. None for a
    /// quorum of one, which talks to nobody.
    pub controller_listen: Option<SocketAddr>,
    /// `controller.quorum.voters`: each voter's node id and CONTROLLER
    /// address (`host:port`). Defaults to this node alone.
    pub quorum_voters: BTreeMap<i32, String>,
    /// Whether this node is a controller voter (`process.roles` has
    /// `controller`); a broker alone follows the metadata log as a Raft
    /// learner.
    pub voter: bool,
    /// Where the active controller reaches this node's CONTROLLER
    /// listener: its `advertised.listeners` entry, else its `listeners`
    /// one.
    pub controller_advertised: Option<String>,
    /// `controller.quorum.election.timeout.ms`.
    pub controller_election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`.
    pub controller_fetch_timeout_ms: u64,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// `offsets.topic.replication.factor`: replicas of each
    /// `__consumer_offsets` partition, capped at the brokers registered
    /// when it is created.
    pub offsets_topic_replication_factor: i16,
    /// `replica.lag.time.max.ms`: a follower not caught up with its leader
    /// for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `replica.fetch.*`: how followers fetch from their leaders.
    pub replica_fetch: ReplicaFetch,
    /// `replica.high.watermark.checkpoint.interval.ms`: how often every
    /// partition's high watermark is written to `log.dirs`.
    pub hw_checkpoint_interval_ms: u64,
    /// `broker.heartbeat.interval.ms`: how often this broker tells the
    /// active controller it is alive.
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// `controlled.shutdown.enable`: on SIGTERM, have the controller move
    /// this broker's leaderships first, trying `controlled.shutdown.max.retries`
    /// times `controlled.shutdown.retry.backoff.ms` apart (None: disabled).
    pub controlled_shutdown: Option<(u32, u64)>,
    /// `unclean.leader.election.enable`, `auto.leader.rebalance.enable`,
    /// `leader.imbalance.check.interval.seconds` and
    /// `leader.imbalance.per.broker.percentage`: the elections the active
    /// controller makes.
    pub elections: crate::controller::election::Settings,
    /// `broker.rack`: placement puts one replica per rack before any rack
    /// gets a second.
    pub rack: Option<String>,
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
    /// `sluice.pin.cores`: pin shard `i` to the `i`-th allowed core.
    pub pin_cores: bool,
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

/// How followers fetch from their leaders (Kafka's `replica.fetch.*`, with
/// its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaFetch {
    /// `replica.fetch.wait.max.ms`: how long the leader may park a fetch
    /// that has less than `min_bytes` to return.
    pub wait_max_ms: i32,
    /// `replica.fetch.min.bytes`: the bytes a fetch waits for before the
    /// leader answers it.
    pub min_bytes: i32,
    /// `replica.fetch.max.bytes`: the most bytes per partition (the first
    /// batch comes whole even when larger, so followers always progress).
    pub max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: the most bytes per response.
    pub response_max_bytes: i32,
}

const KNOWN_KEYS: &[&str] = &[
    "node.id",
    "broker.id",
    "listeners",
    "advertised.listeners",
    "process.roles",
    "controller.listener.names",
    "controller.quorum.voters",
    "controller.quorum.election.timeout.ms",
    "controller.quorum.fetch.timeout.ms",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "log.dirs",
    "log.dir",
    "metadata.log.dir",
    "num.partitions",
    "default.replication.factor",
    "offsets.topic.replication.factor",
    "replica.lag.time.max.ms",
    "replica.fetch.wait.max.ms",
    "replica.fetch.min.bytes",
    "replica.fetch.max.bytes",
    "replica.fetch.response.max.bytes",
    "replica.high.watermark.checkpoint.interval.ms",
    "broker.rack",
    "broker.heartbeat.interval.ms",
    "broker.session.timeout.ms",
    "controlled.shutdown.enable",
    "unclean.leader.election.enable",
    "auto.leader.rebalance.enable",
    "leader.imbalance.check.interval.seconds",
    "leader.imbalance.per.broker.percentage",
    "controlled.shutdown.max.retries",
    "controlled.shutdown.retry.backoff.ms",
    "min.insync.replicas",
    "auto.create.topics.enable",
    "message.max.bytes",
    "socket.request.max.bytes",
    "log.segment.bytes",
    "log.roll.ms",
    "log.roll.hours",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.flush.offset.checkpoint.interval.ms",
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
    "sluice.pin.cores",
    "sluice.page.cache.window.bytes",
    "fetch.max.bytes",
    "queued.max.request.bytes",
];

/// The `sluice.page.cache.window.bytes` that `sluice dev-cluster` gives its
/// brokers: each partition's newest 64 MiB stay in the page cache, older
/// bytes go once written back. A broker alone leaves the page cache to the
/// kernel, as Kafka does.
pub const DEV_CLUSTER_PAGE_CACHE_WINDOW_BYTES: u64 = 64 << 20;
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

        let roles = get("process.roles").unwrap_or("broker,controller");
        let mut role_list: Vec<&str> = roles.split(',').map(str::trim).collect();
        role_list.sort_unstable();
        let voter = match role_list.as_slice() {
            ["broker", "controller"] => true,
            ["broker"] => false,
            ["controller"] => {
                return Err(bad(
                    "process.roles",
                    roles,
                    "a controller alone is not supported: every node serves clients \
                     (broker,controller or broker)",
                ))
            }
            _ => {
                return Err(bad(
                    "process.roles",
                    roles,
                    "expected broker,controller or broker",
                ))
            }
        };
        let controller_names = get("controller.listener.names").unwrap_or("CONTROLLER");
        let controller_names: Vec<&str> = controller_names.split(',').map(str::trim).collect();
        let listeners = get("listeners").unwrap_or("PLAINTEXT://127.0.0.1:9092");
        let named = parse_listeners(listeners).map_err(|r| bad("listeners", listeners, &r))?;
        let (client, controller) = split_listeners(&named, &controller_names)
            .map_err(|r| bad("listeners", listeners, &r))?;
        let listen = listen_addr(&client.1, client.2)
            .map_err(|reason| bad("listeners", listeners, &reason))?;
        let controller_listen = controller
            .map(|(_, host, port)| listen_addr(host, *port))
            .transpose()
            .map_err(|reason| bad("listeners", listeners, &reason))?;
        let mut controller_advertised = controller.map(|(_, host, port)| format!("{host}:{port}"));
        let (advertised_host, advertised_port) = match get("advertised.listeners") {
            Some(text) => {
                let named = parse_listeners(text)
                    .map_err(|reason| bad("advertised.listeners", text, &reason))?;
                let (client, advertised_controller) = split_listeners(&named, &controller_names)
                    .map_err(|reason| bad("advertised.listeners", text, &reason))?;
                if let Some((_, host, port)) = advertised_controller {
                    controller_advertised = Some(format!("{host}:{port}"));
                }
                (client.1.clone(), client.2)
            }
            None => (listen.ip().to_string(), listen.port()),
        };
        let quorum_voters = match get("controller.quorum.voters") {
            Some(text) => parse_voters(text)
                .map_err(|reason| bad("controller.quorum.voters", text, &reason))?,
            None => BTreeMap::from([(
                node_id,
                match controller_listen {
                    Some(addr) => addr.to_string(),
                    None => format!("{advertised_host}:{advertised_port}"),
                },
            )]),
        };
        let voters_text = get("controller.quorum.voters").unwrap_or_default();
        if !voter && voters_text.is_empty() {
            return Err(bad(
                "controller.quorum.voters",
                voters_text,
                "a broker that is not a controller needs the controllers: set \
                 controller.quorum.voters",
            ));
        }
        if voter && !quorum_voters.contains_key(&node_id) {
            return Err(bad(
                "controller.quorum.voters",
                voters_text,
                &format!("node.id {node_id} is a controller (process.roles) but not a voter"),
            ));
        }
        if !voter && quorum_voters.contains_key(&node_id) {
            return Err(bad(
                "process.roles",
                roles,
                &format!(
                    "node.id {node_id} is in controller.quorum.voters, so it must be a \
                     controller too (broker,controller)"
                ),
            ));
        }
        if !voter && controller_listen.is_none() {
            return Err(bad(
                "listeners",
                listeners,
                &format!(
                    "a broker that is not a controller follows the metadata log, which the \
                     active controller sends to its listener named {}: add one",
                    controller_names.join(" or ")
                ),
            ));
        }
        if quorum_voters.len() > 1 && controller_listen.is_none() {
            return Err(bad(
                "listeners",
                listeners,
                &format!(
                    "a quorum of {} voters needs a listener named {} for the controllers",
                    quorum_voters.len(),
                    controller_names.join(" or ")
                ),
            ));
        }
        if controller_listen.is_some_and(|c| c.port() == listen.port()) {
            return Err(bad(
                "listeners",
                listeners,
                "the client and controller listeners need different ports",
            ));
        }
        let offsets_topic_replication_factor = num(
            "offsets.topic.replication.factor",
            get("offsets.topic.replication.factor"),
            3i16,
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let replica_lag_time_max_ms = num(
            "replica.lag.time.max.ms",
            get("replica.lag.time.max.ms"),
            30_000u64,
            |v| *v >= 10,
            "must be at least 10",
        )?;
        let replica_fetch = ReplicaFetch {
            wait_max_ms: num(
                "replica.fetch.wait.max.ms",
                get("replica.fetch.wait.max.ms"),
                500i32,
                |v| *v >= 0 && (*v as u64) < replica_lag_time_max_ms,
                "must be at least 0 and less than replica.lag.time.max.ms",
            )?,
            min_bytes: num(
                "replica.fetch.min.bytes",
                get("replica.fetch.min.bytes"),
                1i32,
                |v| *v >= 1,
                "must be at least 1",
            )?,
            max_bytes: num(
                "replica.fetch.max.bytes",
                get("replica.fetch.max.bytes"),
                1i32 << 20,
                |v| *v >= 0,
                "must be at least 0",
            )?,
            response_max_bytes: num(
                "replica.fetch.response.max.bytes",
                get("replica.fetch.response.max.bytes"),
                10i32 << 20,
                |v| *v >= 0,
                "must be at least 0",
            )?,
        };
        let hw_checkpoint_interval_ms = num(
            "replica.high.watermark.checkpoint.interval.ms",
            get("replica.high.watermark.checkpoint.interval.ms"),
            5000u64,
            |v| *v >= 10,
            "must be at least 10",
        )?;
        let broker_heartbeat_interval_ms = num(
            "broker.heartbeat.interval.ms",
            get("broker.heartbeat.interval.ms"),
            2000u64,
            |v| *v >= 10,
            "must be at least 10",
        )?;
        let broker_session_timeout_ms = num(
            "broker.session.timeout.ms",
            get("broker.session.timeout.ms"),
            9000u64,
            |v| *v > broker_heartbeat_interval_ms,
            "must be more than broker.heartbeat.interval.ms",
        )?;
        let controller_election_timeout_ms = num(
            "controller.quorum.election.timeout.ms",
            get("controller.quorum.election.timeout.ms"),
            1000u64,
            |v| *v >= 10,
            "must be at least 10",
        )?;
        let controller_fetch_timeout_ms = num(
            "controller.quorum.fetch.timeout.ms",
            get("controller.quorum.fetch.timeout.ms"),
            2000u64,
            |v| *v >= 10,
            "must be at least 10",
        )?;
        let log_dir = PathBuf::from(
            get("log.dirs")
                .or(get("log.dir"))
                .map(|dirs| dirs.split(',').next().unwrap_or(dirs).trim())
                .unwrap_or("sluice-data"),
        );
        let metadata_log_dir = get("metadata.log.dir")
            .map(|d| PathBuf::from(d.trim()))
            .unwrap_or_else(|| log_dir.clone());
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
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let min_insync_replicas = num(
            "min.insync.replicas",
            get("min.insync.replicas"),
            1i32,
            |v| *v >= 1,
            "must be at least 1",
        )?;
        let flag = |key: &'static str, default: bool| match get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(bad(key, other, "must be true or false")),
        };
        let auto_create_topics = flag("auto.create.topics.enable", true)?;
        let pin_cores = flag("sluice.pin.cores", true)?;
        let elections = crate::controller::election::Settings {
            unclean_default: flag("unclean.leader.election.enable", false)?,
            auto_rebalance: flag("auto.leader.rebalance.enable", true)?,
            imbalance_check: std::time::Duration::from_secs(num(
                "leader.imbalance.check.interval.seconds",
                get("leader.imbalance.check.interval.seconds"),
                300u64,
                |v| *v >= 1,
                "must be at least 1",
            )?),
            imbalance_percentage: num(
                "leader.imbalance.per.broker.percentage",
                get("leader.imbalance.per.broker.percentage"),
                10u32,
                |v| *v <= 100,
                "must be a percentage, 0 to 100",
            )?,
        };
        let controlled_shutdown = if flag("controlled.shutdown.enable", true)? {
            let retries = num(
                "controlled.shutdown.max.retries",
                get("controlled.shutdown.max.retries"),
                3u32,
                |v| *v >= 1,
                "must be at least 1",
            )?;
            let backoff_ms = num(
                "controlled.shutdown.retry.backoff.ms",
                get("controlled.shutdown.retry.backoff.ms"),
                5000u64,
                |_| true,
                "must be a number of milliseconds",
            )?;
            Some((retries, backoff_ms))
        } else {
            None
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
            recovery_checkpoint_interval_ms: num(
                "log.flush.offset.checkpoint.interval.ms",
                get("log.flush.offset.checkpoint.interval.ms"),
                defaults.recovery_checkpoint_interval_ms,
                |v| *v <= i32::MAX as u64,
                "must be between 0 and 2147483647",
            )?,
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
            page_cache_window: limit(
                "sluice.page.cache.window.bytes",
                get("sluice.page.cache.window.bytes"),
                None,
            )?,
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
            metadata_log_dir,
            controller_listen,
            quorum_voters,
            voter,
            controller_advertised,
            controller_election_timeout_ms,
            controller_fetch_timeout_ms,
            num_partitions,
            default_replication_factor,
            offsets_topic_replication_factor,
            replica_lag_time_max_ms,
            replica_fetch,
            broker_heartbeat_interval_ms,
            hw_checkpoint_interval_ms,
            controlled_shutdown,
            elections,
            broker_session_timeout_ms,
            rack: get("broker.rack")
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            min_insync_replicas,
            auto_create_topics,
            message_max_bytes,
            socket_request_max_bytes,
            log,
            shards,
            io_driver,
            pin_cores,
        })
    }
}

/// One `listeners` entry: its name, host and port.
type Listener = (String, String, u16);

/// `NAME://host:port,NAME://host:port`; a bare `host:port` is PLAINTEXT.
fn parse_listeners(text: &str) -> Result<Vec<Listener>, String> {
    let mut out: Vec<Listener> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, rest) = entry.split_once("://").unwrap_or(("PLAINTEXT", entry));
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?}: expected NAME://host:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{port:?} is not a port"))?;
        if out.iter().any(|(n, _, _)| n == name) {
            return Err(format!("the listener name {name} appears twice"));
        }
        out.push((name.to_string(), host.to_string(), port));
    }
    Ok(out)
}

/// The client listener (the one not named as a controller listener, which
/// must be PLAINTEXT) and the controller listener, if any.
fn split_listeners<'a>(
    named: &'a [Listener],
    controller_names: &[&str],
) -> Result<(&'a Listener, Option<&'a Listener>), String> {
    let mut client = None;
    let mut controller = None;
    for listener in named {
        if controller_names.contains(&listener.0.as_str()) {
            controller = controller.or(Some(listener));
        } else if listener.0 == "PLAINTEXT" {
            client = client.or(Some(listener));
        } else {
            return Err(format!(
                "only PLAINTEXT listeners are supported, not {} (name the controllers' listener \
                 in controller.listener.names)",
                listener.0
            ));
        }
    }
    let client = client.ok_or("no PLAINTEXT listener for clients")?;
    Ok((client, controller))
}

/// The socket address to bind for a listener's host and port.
fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    let host = match host {
        "" => "0.0.0.0",
        "localhost" => "127.0.0.1",
        other => other,
    };
    format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("{host}:{port} is not an IP address and port"))
}

/// `1@host:port,2@host:port,…`
fn parse_voters(text: &str) -> Result<BTreeMap<i32, String>, String> {
    let mut voters = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| format!("{entry:?}: expected id@host:port"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id: &i32| *id >= 0)
            .ok_or_else(|| format!("{id:?} is not a node id"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?}: expected id@host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{entry:?}: expected id@host:port"));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if voters.is_empty() {
        return Err("no voters".into());
    }
    Ok(voters)
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
        assert_eq!(config.log.recovery_checkpoint_interval_ms, 60_000);
        // As Kafka: the kernel keeps what it likes in the page cache.
        assert_eq!(config.log.page_cache_window, None);
        for (text, window) in [("-1", None), ("0", Some(0)), ("1048576", Some(1 << 20))] {
            let set = BrokerConfig::from_pairs(&pairs(&[("sluice.page.cache.window.bytes", text)]))
                .unwrap();
            assert_eq!(set.log.page_cache_window, window, "{text}");
        }
        let set = BrokerConfig::from_pairs(&pairs(&[(
            "log.flush.offset.checkpoint.interval.ms",
            "100",
        )]))
        .unwrap();
        assert_eq!(set.log.recovery_checkpoint_interval_ms, 100);
        assert_eq!(config.default_replication_factor, 1);
        // More replicas than brokers is refused when a topic is created,
        // not at start: the cluster may grow.
        let three = BrokerConfig::from_pairs(&pairs(&[("default.replication.factor", "3")]));
        assert_eq!(three.unwrap().default_replication_factor, 3);
    }

    #[test]
    fn replica_fetch_settings_default_to_kafkas_and_are_checked() {
        let config = BrokerConfig::from_pairs(&[]).unwrap();
        assert_eq!(
            config.replica_fetch,
            ReplicaFetch {
                wait_max_ms: 500,
                min_bytes: 1,
                max_bytes: 1_048_576,
                response_max_bytes: 10_485_760,
            }
        );
        let set = BrokerConfig::from_pairs(&pairs(&[
            ("replica.fetch.wait.max.ms", "20"),
            ("replica.fetch.min.bytes", "65536"),
            ("replica.fetch.max.bytes", "4096"),
            ("replica.fetch.response.max.bytes", "8192"),
        ]))
        .unwrap();
        assert_eq!(
            set.replica_fetch,
            ReplicaFetch {
                wait_max_ms: 20,
                min_bytes: 65536,
                max_bytes: 4096,
                response_max_bytes: 8192,
            }
        );
        // As Kafka insists: a follower parked as long as the lag allowed
        // would leave the ISR while waiting for records.
        for (key, value) in [
            ("replica.fetch.wait.max.ms", "-1"),
            ("replica.fetch.wait.max.ms", "30000"),
            ("replica.fetch.min.bytes", "0"),
            ("replica.fetch.max.bytes", "-1"),
            ("replica.fetch.response.max.bytes", "lots"),
        ] {
            let err = BrokerConfig::from_pairs(&pairs(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
        let lower_lag = BrokerConfig::from_pairs(&pairs(&[
            ("replica.lag.time.max.ms", "1000"),
            ("replica.fetch.wait.max.ms", "1000"),
        ]));
        assert_eq!(
            lower_lag.unwrap_err().key,
            "replica.fetch.wait.max.ms",
            "the wait must stay below the lag allowed"
        );
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
            ("sluice.pin.cores", "yes"),
            ("sluice.page.cache.window.bytes", "-2"),
            ("sluice.page.cache.window.bytes", "64MiB"),
            ("producer.id.expiration.ms", "0"),
            ("log.flush.offset.checkpoint.interval.ms", "-1"),
            ("default.replication.factor", "0"),
        ] {
            let err = BrokerConfig::from_pairs(&pairs(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn kraft_settings_name_the_controllers_and_bad_ones_say_why() {
        let config = BrokerConfig::from_pairs(&pairs(&[
            ("node.id", "2"),
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
            ),
            (
                "advertised.listeners",
                "PLAINTEXT://broker2.example:9092,CONTROLLER://broker2.example:9093",
            ),
            ("process.roles", "controller,broker"),
            (
                "controller.quorum.voters",
                "1@h1:9093,2@127.0.0.1:19093,3@h3:9093",
            ),
            ("controller.quorum.election.timeout.ms", "300"),
        ]))
        .unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.controller_listen.map(|a| a.port()), Some(19093));
        assert_eq!(
            (config.advertised_host.as_str(), config.advertised_port),
            ("broker2.example", 9092)
        );
        assert_eq!(
            config.quorum_voters.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(config.controller_election_timeout_ms, 300);
        assert_eq!(config.controller_fetch_timeout_ms, 2000);

        assert!(config.voter);
        assert_eq!(
            config.controller_advertised.as_deref(),
            Some("broker2.example:9093")
        );
        // A broker that is not a voter follows the quorum of the others.
        let learner = BrokerConfig::from_pairs(&pairs(&[
            ("node.id", "4"),
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
            ),
            ("process.roles", "broker"),
            ("controller.quorum.voters", "1@h1:9093,2@h2:9093,3@h3:9093"),
        ]))
        .unwrap();
        assert!(!learner.voter);
        assert_eq!(
            learner.controller_advertised.as_deref(),
            Some("127.0.0.1:19093")
        );

        // The single-node default: a quorum of this node alone, no
        // controller listener.
        let single = BrokerConfig::from_pairs(&[]).unwrap();
        assert_eq!(single.controller_listen, None);
        assert_eq!(
            single.quorum_voters.keys().copied().collect::<Vec<_>>(),
            [1]
        );

        for (settings, key, says) in [
            (
                vec![("controller.quorum.voters", "1@h:1,2@h:2")],
                "listeners",
                "needs a listener named CONTROLLER",
            ),
            (
                vec![("controller.quorum.voters", "2@h:1,3@h:2")],
                "controller.quorum.voters",
                "not a voter",
            ),
            (
                vec![("controller.quorum.voters", "1@h:1,1@h:2")],
                "controller.quorum.voters",
                "listed twice",
            ),
            (
                vec![("controller.quorum.voters", "one@h:1")],
                "controller.quorum.voters",
                "not a node id",
            ),
            (
                vec![("process.roles", "controller")],
                "process.roles",
                "not supported",
            ),
            (
                vec![("process.roles", "broker")],
                "controller.quorum.voters",
                "needs the controllers",
            ),
            (
                vec![
                    ("process.roles", "broker"),
                    ("controller.quorum.voters", "1@h:1"),
                ],
                "process.roles",
                "must be a controller too",
            ),
            (
                vec![
                    ("process.roles", "broker"),
                    ("controller.quorum.voters", "2@h:1"),
                ],
                "listeners",
                "add one",
            ),
            (
                vec![(
                    "listeners",
                    "PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:1",
                )],
                "listeners",
                "different ports",
            ),
            (
                vec![("listeners", "CONTROLLER://127.0.0.1:1")],
                "listeners",
                "no PLAINTEXT listener",
            ),
        ] {
            let err = BrokerConfig::from_pairs(&pairs(&settings)).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.reason.contains(says), "{err}");
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
