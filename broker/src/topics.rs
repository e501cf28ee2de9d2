//! The topic registry: which topics exist, with how many partitions and
//! which log configuration.
//!
//! Until the controller quorum exists, the registry is rebuilt at start-up
//! from the partition directories on disk, and topics are created here.
//! A read-write lock guards it: it is read once per request, never on the
//! engine's append or read path, and written only when a topic is created.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use sluice_engine::{Engine, LogConfig, TopicPartition};
use tracing::info;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub partitions: i32,
    /// The broker defaults with `overrides` applied.
    pub config: LogConfig,
    /// The topic-level settings this topic sets (Kafka names), persisted.
    pub overrides: BTreeMap<String, String>,
}

impl TopicState {
    /// Whether `partition` is one of this topic's.
    pub fn has(&self, partition: i32) -> bool {
        (0..self.partitions).contains(&partition)
    }
}

#[derive(Debug, Clone)]
pub struct Topics {
    inner: Arc<RwLock<BTreeMap<String, TopicState>>>,
    /// `log.dirs`, where topic overrides are persisted.
    log_dir: PathBuf,
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("opening the partitions failed: {0}")]
    Engine(#[from] sluice_engine::Error),
    #[error("persisting the topic's configuration failed: {0}")]
    Persist(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("unknown topic {0:?}")]
    Unknown(String),
    #[error("deleting the partitions failed: {0}")]
    Engine(sluice_engine::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum AlterError {
    #[error("unknown topic {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("persisting the configuration failed: {0}")]
    Persist(std::io::Error),
    #[error("applying the configuration failed: {0}")]
    Engine(sluice_engine::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("unknown topic {0:?}")]
    Unknown(String),
    #[error("the topic has {current} partitions; {requested} is not more")]
    NotMore { current: i32, requested: i32 },
    #[error("opening the new partitions failed: {0}")]
    Engine(sluice_engine::Error),
}

/// Kafka's topic-name rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 249 {
        return Err("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl Topics {
    pub fn new(log_dir: PathBuf) -> Topics {
        Topics {
            inner: Arc::default(),
            log_dir,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TopicState>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<TopicState> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<(String, TopicState)> {
        self.read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Opens every partition directory the engine finds and registers the
    /// topics, with the broker defults `base` plus each topic's persisted
    /// overrides as their log configuration.
    pub async fn load(&self, engine: &Engine, base: &LogConfig) -> Result<(), String> {
        let mut counts: HashMap<String, i32> = HashMap::new();
        let mut configs: HashMap<String, (LogConfig, BTreeMap<String, String>)> = HashMap::new();
        for tp in engine.existing_partitions().map_err(|e| e.to_string())? {
            if validate_name(&tp.topic).is_err() || tp.partition < 0 {
                continue;
            }
            if !configs.contains_key(&tp.topic) {
                let overrides = crate::topic_configs::load(&self.log_dir, &tp.topic)?;
                let config = crate::topic_configs::apply(base, &overrides)
                    .map_err(|e| format!("topic {}: {e}", tp.topic))?;
                configs.insert(tp.topic.clone(), (config, overrides));
            }
            let config = configs[&tp.topic].0.clone();
            let report = engine
                .open(tp.clone(), config)
                .await
                .map_err(|e| format!("opening {tp}: {e}"))?;
            if report.bytes_truncated > 0 {
                info!(partition = %tp, bytes = report.bytes_truncated, "recovery truncated a partition");
            }
            let count = counts.entry(tp.topic.clone()).or_default();
            *count = (*count).max(tp.partition + 1);
        }
        for (topic, &partitions) in &counts {
            // A missing middle partition directory is recreated empty.
            for p in 0..partitions {
                let tp = TopicPartition::new(topic.clone(), p);
                match engine.open(tp.clone(), configs[topic].0.clone()).await {
                    Ok(_) | Err(sluice_engine::Error::PartitionExists(_)) => {}
                    Err(e) => return Err(format!("opening {tp}: {e}")),
                }
            }
        }
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (topic, partitions) in counts {
            let (config, overrides) = configs.remove(&topic).unwrap_or_default();
            map.insert(
                topic,
                TopicState {
                    partitions,
                    config,
                    overrides,
                },
            );
        }
        Ok(())
    }

    /// Replaces a topic's overrides: validated against the broker defaults
    /// `base`, persisted, then applied to every partition's log.
    pub async fn alter(
        &self,
        engine: &Engine,
        base: &LogConfig,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), AlterError> {
        let state = self
            .get(name)
            .ok_or_else(|| AlterError::Unknown(name.to_string()))?;
        let config = crate::topic_configs::apply(base, &overrides).map_err(AlterError::Invalid)?;
        if validate_only {
            return Ok(());
        }
        crate::topic_configs::save(&self.log_dir, name, &overrides).map_err(AlterError::Persist)?;
        {
            let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = map.get_mut(name) {
                entry.config = config.clone();
                entry.overrides = overrides;
            }
        }
        for p in 0..state.partitions {
            let tp = TopicPartition::new(name, p);
            let config = config.clone();
            engine
                .shard_for(&tp)
                .with_log(tp.clone(), move |log, _| {
                    Box::pin(async move { log.set_config(config) })
                })
                .await
                .map_err(AlterError::Engine)?;
        }
        info!(topic = name, "topic configuration changed");
        Ok(())
    }

    /// Creates a topic: opens its partitions on their shards, then makes
    /// it visible. Two concurrent creations of one topic both succeed.
    pub async fn create(
        &self,
        engine: &Engine,
        name: &str,
        state: TopicState,
    ) -> Result<TopicState, CreateError> {
        validate_name(name).map_err(|why| CreateError::InvalidName(name.to_string(), why))?;
        if self.get(name).is_some() {
            return Err(CreateError::Exists(name.to_string()));
        }
        crate::topic_configs::save(&self.log_dir, name, &state.overrides)
            .map_err(CreateError::Persist)?;
        for p in 0..state.partitions {
            let tp = TopicPartition::new(name, p);
            match engine.open(tp, state.config.clone()).await {
                Ok(_) | Err(sluice_engine::Error::PartitionExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(name.to_string()).or_insert(state).clone();
        info!(topic = name, partitions = entry.partitions, "created topic");
        Ok(entry)
    }

    /// Deletes a topic: it disappears from the registry first, so new
    /// requests see UNKNOWN_TOPIC_OR_PARTITION, then each partition's log is
    /// closed and its directory removed on its shard.
    pub async fn delete(&self, engine: &Engine, name: &str) -> Result<(), DeleteError> {
        let state = {
            let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
            map.remove(name)
                .ok_or_else(|| DeleteError::Unknown(name.to_string()))?
        };
        for p in 0..state.partitions {
            let tp = TopicPartition::new(name, p);
            match engine.shard_for(&tp).close(tp.clone(), true).await {
                Ok(()) | Err(sluice_engine::Error::UnknownPartition(_)) => {}
                Err(e) => return Err(DeleteError::Engine(e)),
            }
        }
        if let Err(e) = crate::topic_configs::save(&self.log_dir, name, &BTreeMap::new()) {
            tracing::warn!(topic = name, error = %e, "removing the topic's configuration failed");
        }
        info!(topic = name, partitions = state.partitions, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        engine: &Engine,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), GrowError> {
        let state = self
            .get(name)
            .ok_or_else(|| GrowError::Unknown(name.to_string()))?;
        if count <= state.partitions {
            return Err(GrowError::NotMore {
                current: state.partitions,
                requested: count,
            });
        }
        if validate_only {
            return Ok(());
        }
        for p in state.partitions..count {
            let tp = TopicPartition::new(name, p);
            match engine.open(tp, state.config.clone()).await {
                Ok(_) | Err(sluice_engine::Error::PartitionExists(_)) => {}
                Err(e) => return Err(GrowError::Engine(e)),
            }
        }
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(name) {
            entry.partitions = entry.partitions.max(count);
        }
        info!(topic = name, partitions = count, "added partitions");
        Ok(())
    }

    /// The topic's state, creating it with the broker defaults if it is
    /// missing and `auto_create` allows.
    pub async fn get_or_create(
        &self,
        engine: &Engine,
        name: &str,
        auto_create: bool,
        defaults: impl FnOnce() -> TopicState,
    ) -> Result<Option<TopicState>, CreateError> {
        if let Some(state) = self.get(name) {
            return Ok(Some(state));
        }
        if !auto_create {
            return Ok(None);
        }
        match self.create(engine, name, defaults()).await {
            Ok(state) => Ok(Some(state)),
            Err(CreateError::Exists(_)) => Ok(self.get(name)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "has space", "slash/", "ü", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
