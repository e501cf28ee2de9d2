//! `sluice-verify run`: a scenario file (TOML, `verify/scenarios/`) names a
//! cluster, a topic, a producer and a timeline of faults; the runner starts
//! the cluster, produces while it injects the faults, heals the cluster,
//! reads everything back with a consumer, and judges the logs with the
//! checker. Each scenario says whether loss is expected (acks=1 under a
//! leader crash) or forbidden.
//!
//! ```toml
//! name = "leader-hard-kill"
//! description = "SIGKILL the leader of partition 0 under load"
//! brokers = 3
//! broker_config = ["broker.session.timeout.ms=1000"]
//! [topic]
//! partitions = 3
//! replication_factor = 3
//! config = { "min.insync.replicas" = "2" }
//! [producer]
//! messages = 6000
//! throughput = 2000
//! [[fault]]
//! at_ms = 1000
//! action = "kill"          # kill, terminate, pause, resume, start, bounce, clean-bounce,
//!                          # set-topic-config (with config = { … }),
//!                          # isolate, delay (ms = N), limit (bytes_per_sec = N),
//!                          # disconnect, heal-network, fill-disk, free-disk (with
//!                          # [small_disks] brokers = [N], bytes = B),
//!                          # consumer-bounce, consumer-kill (with [consumers]),
//!                          # producer-bounce,
//!                          # power-loss, stall-disk, unstall-disk, fail-disk, unfail-disk
//!                          # (with power_loss = true:
//!                          # every broker's data on plugfs)
//! target = "leader"        # leader, followers, follower (the first), controller, broker:N,
//!                          # last, paused, all
//! peers = "brokers"        # network faults: brokers, clients or all (isolate: brokers,
//!                          # the others: clients)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::admin;
use crate::check::{self, Expect, Verdict};
use crate::cluster::{LocalCluster, Nodes};
use crate::events::{self, Event, Sink};
use crate::{consumer, producer};

fn three() -> usize {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Loss is the expected outcome: reported, not failed on.
    #[serde(default)]
    pub expect_loss: bool,
    #[serde(default = "three")]
    pub brokers: usize,
    /// `key=value` for every broker.
    #[serde(default)]
    pub broker_config: Vec<String>,
    #[serde(default)]
    pub topic: TopicSpec,
    pub producer: ProducerSpec,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// Brokers whose data sits on a small disk of its own, for disk faults.
    #[serde(default)]
    pub small_disks: Option<SmallDisks>,
    /// A consumer group reading while the faults happen.
    #[serde(default)]
    pub consumers: Option<crate::group::Spec>,
    /// Every broker's data on a filesystem that can lose power
    /// (`power-loss` faults; root only).
    #[serde(default)]
    pub power_loss: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallDisks {
    pub brokers: Vec<i32>,
    /// Each one's size.
    pub bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub config: BTreeMap<String, String>,
    /// Each partition's replicas (the first its preferred leader), instead
    /// of `partitions` and `replication_factor`: to put replicas on brokers
    /// that are not controller voters, say.
    pub assignment: Vec<Vec<i32>>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            name: "verify".into(),
            partitions: 3,
            replication_factor: 3,
            config: BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
            assignment: Vec::new(),
        }
    }
}

fn all() -> String {
    "all".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerSpec {
    pub messages: i64,
    /// Messages per second.
    pub throughput: f64,
    #[serde(default = "all")]
    pub acks: String,
    #[serde(default = "yes")]
    pub idempotence: bool,
    #[serde(default)]
    pub delivery_timeout_ms: Option<u64>,
    /// `key=value` librdkafka settings.
    #[serde(default)]
    pub config: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// SIGTERM (a controlled shutdown), waiting for the exit.
    Terminate,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
    /// Start a stopped broker again.
    Start,
    /// SIGKILL, then start again.
    Bounce,
    /// SIGTERM, then start again.
    CleanBounce,
    /// Set the fault's `config` on the scenario's topic
    /// (IncrementalAlterConfigs); `target` is ignored.
    SetTopicConfig,
    /// Network faults, through the fault proxies (a local cluster only):
    /// cut the target off from its `peers` (bytes held until healed),
    Isolate,
    /// add `ms` each way,
    Delay,
    /// pace to `bytes_per_sec` each way,
    Limit,
    /// reset the open connections once,
    Disconnect,
    /// and lift every network fault on the target.
    HealNetwork,
    /// Fill the target's small disk to the last byte (`small_disks`),
    FillDisk,
    /// and free it again.
    FreeDisk,
    /// A consumer group member (`target = "consumer:N"`, or `"consumers"`
    /// for each in turn) stopped with SIGTERM (it commits and leaves) and
    /// started again,
    ConsumerBounce,
    /// or SIGKILLed and started again.
    ConsumerKill,
    /// The targets lose power at one instant (`power_loss = true`): SIGKILL
    /// and everything they had not fsynced dropped; `start` brings them back.
    PowerLoss,
    /// The target's disk stops answering (`power_loss = true`: its plugfs
    /// holds every request),
    StallDisk,
    /// and goes on.
    UnstallDisk,
    /// The target's disk fails every write and fsync with EIO
    /// (`power_loss = true`),
    FailDisk,
    /// and works again.
    UnfailDisk,
    /// The producer stops (its messages in flight answered) and a new one
    /// (a new producer id, values `NAME-N.SEQ`) sends the rest.
    ProducerBounce,
}

impl Action {
    pub fn is_network(self) -> bool {
        matches!(
            self,
            Action::Isolate
                | Action::Delay
                | Action::Limit
                | Action::Disconnect
                | Action::HealNetwork
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at_ms: u64,
    pub action: Action,
    #[serde(default)]
    pub target: String,
    /// For `set-topic-config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// For network faults: whom the target is cut off from, delayed or
    /// limited towards.
    #[serde(default)]
    pub peers: Option<crate::proxy::Peers>,
    /// For `delay`.
    #[serde(default)]
    pub ms: Option<u64>,
    /// For `limit`.
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
}

impl Fault {
    /// Applies a network fault to broker `id`.
    fn apply_network(&self, network: &crate::proxy::Network, id: i32) -> Result<(), String> {
        use crate::proxy::{Effect, Peers};
        let peers = self.peers.unwrap_or(match self.action {
            Action::Isolate => Peers::Brokers,
            _ => Peers::Clients,
        });
        match self.action {
            Action::Isolate => network.add(id, peers, Effect::Partition),
            Action::Delay => {
                let ms = self.ms.ok_or("delay needs ms")?;
                network.add(id, peers, Effect::Delay(Duration::from_millis(ms)));
            }
            Action::Limit => {
                let rate = self.bytes_per_sec.ok_or("limit needs bytes_per_sec")?;
                network.add(id, peers, Effect::Bandwidth(rate));
            }
            Action::Disconnect => {
                network.disconnect(id, peers);
            }
            Action::HealNetwork => network.heal(Some(id)),
            _ => {}
        }
        Ok(())
    }
}

/// The pause between two cycles of a soak's faults, after the last fault
/// of a cycle.
const SOAK_GAP_MS: u64 = 3000;

impl Scenario {
    /// The soak variant: the faults repeat, one cycle every (last fault +
    /// [`SOAK_GAP_MS`]), for `duration`, and the producer sends at its rate
    /// throughout.
    pub fn soak(&mut self, duration: Duration) {
        let total_ms = duration.as_millis() as u64;
        let period = self.faults.iter().map(|f| f.at_ms).max().unwrap_or(0) + SOAK_GAP_MS;
        let cycle = std::mem::take(&mut self.faults);
        let mut start = 0;
        while start + period <= total_ms.max(period) && !cycle.is_empty() {
            self.faults.extend(cycle.iter().map(|f| Fault {
                at_ms: f.at_ms + start,
                ..f.clone()
            }));
            start += period;
        }
        let messages = (self.producer.throughput * duration.as_secs_f64()) as i64;
        self.producer.messages = self.producer.messages.max(messages);
        self.name = format!("{}-soak", self.name);
    }
}

/// A scenario's outcome, one row of the table.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub report: check::Report,
    /// What the consumer group running during the faults read, if any.
    pub group: Option<crate::group::Report>,
    /// Partitions whose replicas still held different bytes once healed
    /// (and how long the runner waited); `None` where it cannot look.
    pub divergent_replicas: Option<Vec<String>>,
    /// Per fault: when it happened (ms into the run) and how long until
    /// every partition had an acknowledgement after it.
    pub outages: Vec<(String, u64, Option<u64>)>,
    /// What the scenario file says it shows.
    pub description: String,
    /// Per partition, when each acknowledgement came (ms into the run).
    pub acks: BTreeMap<i32, Vec<u64>>,
}

impl Outcome {
    pub fn worst_outage_ms(&self) -> Option<u64> {
        self.outages.iter().filter_map(|(_, _, o)| *o).max()
    }
}

pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn key_values(items: &[String]) -> Result<Vec<(String, String)>, String> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{s:?}: expected key=value"))
        })
        .collect()
}

/// How long a fault aimed at partition 0's leader waits for there to be
/// one.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Polls `f` every 100 ms until it answers, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The brokers `target` names now.
fn resolve(
    target: &str,
    cluster: &dyn Nodes,
    topic: &str,
    last: &[i32],
) -> Result<Vec<i32>, String> {
    // Asked of brokers that can answer: a paused one would not.
    let bootstrap = cluster.live_bootstrap();
    let view = || admin::view(&bootstrap, topic);
    match target {
        "leader" => {
            // Between faults (a soak repeats them every few seconds) the
            // partition may be between leaders: the fault waits for the
            // next one, and the outage it finds counts in the report.
            let leader = wait_for("a leader of partition 0", LEADER_WAIT, || {
                view()
                    .ok()
                    .and_then(|v| v.partitions.first().map(|p| p.leader))
                    .filter(|l| *l >= 0)
            })?;
            Ok(vec![leader])
        }
        "followers" | "follower" => {
            let v = view()?;
            let p = v.partitions.first().ok_or("no partition 0")?;
            let mut followers: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| *r != p.leader)
                .collect();
            if target == "follower" {
                followers.truncate(1);
            }
            Ok(followers)
        }
        "controller" => {
            let c = view()?.controller;
            if c < 0 {
                return Err("no active controller".into());
            }
            Ok(vec![c])
        }
        "last" => Ok(last.to_vec()),
        "paused" => Ok(cluster.paused()),
        "all" => {
            let ids = cluster.ids();
            if ids.is_empty() {
                return Err("target \"all\" needs a local cluster".into());
            }
            Ok(ids)
        }
        other => other
            .strip_prefix("broker:")
            .and_then(|n| n.parse().ok())
            .map(|n| vec![n])
            .ok_or_else(|| format!("unknown target {other:?}")),
    }
}

/// The scenario's producer on a thread of its own, restartable: each run
/// sends what is left of the messages, under its own value prefix (the
/// order check is per prefix), to the same event log.
struct Producing {
    options: producer::Options,
    remaining: i64,
    runs: u32,
    current: Option<ProducerRun>,
}

/// A running producer: its stop flag and its thread (which returns how
/// many messages it sent).
type ProducerRun = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Result<u64, String>>,
);

impl Producing {
    fn new(options: producer::Options) -> Producing {
        Producing {
            remaining: options.max_messages,
            options,
            runs: 0,
            current: None,
        }
    }

    fn start(&mut self) {
        self.runs += 1;
        let mut options = self.options.clone();
        options.max_messages = self.remaining;
        if self.runs > 1 {
            options.value_prefix = format!("{}-{}", options.value_prefix, self.runs);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            producer::run(options, &|| {
                stopped.load(std::sync::atomic::Ordering::Relaxed)
            })
        });
        self.current = Some((stop, thread));
    }

    /// Stops the current run once its messages in flight are answered.
    fn stop(&mut self) -> Result<(), String> {
        if let Some((stop, _)) = &self.current {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.finish()
    }

    /// Waits for the current run to end.
    fn finish(&mut self) -> Result<(), String> {
        let Some((_, thread)) = self.current.take() else {
            return Ok(());
        };
        let sent = thread
            .join()
            .map_err(|_| "the producer panicked".to_string())??;
        if self.remaining >= 0 {
            self.remaining = (self.remaining - sent as i64).max(0);
        }
        Ok(())
    }
}

/// How long replicas may take, once healed and idle, to hold the same
/// bytes.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Once healed (and nothing produced any more): the partitions whose
/// replicas do not hold byte-identical logs within [`CONVERGE_TIMEOUT`]
/// (every replica in the ISR, every log the leader's, batch for batch);
/// `None` if the runner cannot see the brokers' disks.
fn identical_replicas(cluster: &dyn Nodes, topic: &str, partitions: usize) -> Option<Vec<String>> {
    let bootstrap = cluster.live_bootstrap();
    let differing = || -> Option<Vec<String>> {
        let view = admin::view(&bootstrap, topic).ok()?;
        let mut differ = Vec::new();
        if view.partitions.len() != partitions {
            return None;
        }
        for part in &view.partitions {
            let logs: Vec<Vec<u8>> = part
                .replicas
                .iter()
                .map(|r| cluster.replica_bytes(*r, topic, part.partition))
                .collect::<Option<_>>()?;
            if logs.windows(2).any(|w| w[0] != w[1]) || part.isr.len() != part.replicas.len() {
                differ.push(format!("{topic}-{}", part.partition));
            }
        }
        Some(differ)
    };
    // Only a local cluster's disks are the runner's to read.
    if cluster.ids().is_empty() {
        return None;
    }
    let outcome = wait_for("the replicas to converge", CONVERGE_TIMEOUT, || {
        differing().filter(|d| d.is_empty())
    });
    Some(match outcome {
        Ok(none) => none,
        Err(_) => differing().unwrap_or_else(|| vec![format!("{topic} (not described)")]),
    })
}

/// Where a scenario runs.
pub enum Target<'a> {
    /// A local cluster of this `sluice` binary, its data under the run's
    /// directory.
    Local(&'a Path),
    /// A cluster someone else runs (the scenario's `brokers` and
    /// `broker_config` do not apply).
    External(&'a mut crate::cluster::ExternalCluster),
}

/// Runs `scenario` on `target`, its event logs under `dir`.
pub fn run(scenario: &Scenario, target: Target<'_>, dir: &Path) -> Result<Outcome, String> {
    let topic = &scenario.topic.name;
    let mut local;
    let cluster: &mut dyn Nodes = match target {
        Target::Local(bin) => {
            local = LocalCluster::start(
                bin,
                scenario.brokers,
                &dir.join("cluster"),
                &scenario.broker_config,
                scenario.faults.iter().any(|f| f.action.is_network()),
                crate::cluster::Disks {
                    small: scenario
                        .small_disks
                        .as_ref()
                        .map(|d| (d.brokers.as_slice(), d.bytes)),
                    power_loss: scenario.power_loss,
                },
            )?;
            &mut local
        }
        Target::External(external) => external,
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bootstrap = cluster.bootstrap();
    let configs: Vec<(String, String)> = scenario
        .topic
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    wait_for("the topic to be created", Duration::from_secs(60), || {
        admin::create_topic(
            &bootstrap,
            topic,
            scenario.topic.partitions,
            scenario.topic.replication_factor,
            &configs,
            &scenario.topic.assignment,
        )
        .ok()
    })?;
    let partitions = if scenario.topic.assignment.is_empty() {
        scenario.topic.partitions as usize
    } else {
        scenario.topic.assignment.len()
    };
    let in_sync = |bootstrap: &str| {
        let view = admin::view(bootstrap, topic).ok()?;
        (view.partitions.len() == partitions
            && view
                .partitions
                .iter()
                .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len()))
        .then_some(())
    };
    wait_for("every partition in sync", Duration::from_secs(60), || {
        in_sync(&bootstrap)
    })?;

    let producer_log = dir.join("producer.jsonl");
    let consumer_log = dir.join("consumer.jsonl");
    let file = |path: &PathBuf| -> Result<Sink, String> {
        let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Sink::new(Box::new(std::io::BufWriter::new(f))))
    };
    let spec = &scenario.producer;
    let options = producer::Options {
        bootstrap: bootstrap.clone(),
        topic: topic.clone(),
        max_messages: spec.messages,
        throughput: spec.throughput,
        acks: spec.acks.clone(),
        idempotence: spec.idempotence,
        retries: None,
        delivery_timeout_ms: spec.delivery_timeout_ms.unwrap_or(120_000),
        value_prefix: scenario.name.clone(),
        config: key_values(&spec.config)?,
        out: file(&producer_log)?,
    };
    // The group starts, and the run goes on once its members hold every
    // partition (a new group's first assignment takes seconds).
    let start_group = || {
        scenario.consumers.as_ref().map(|spec| {
            let group = crate::group::Group::start(
                spec,
                &bootstrap,
                topic,
                &format!("verify-group-{}", scenario.name),
                dir,
            )?;
            wait_for(
                "the consumer group to hold every partition",
                Duration::from_secs(60),
                || (group.assigned().len() == partitions).then_some(()),
            )?;
            Ok::<_, String>((group, events::now_ms()))
        })
    };
    let group_at = scenario.consumers.as_ref().map(|c| c.start_at_ms);
    // The group and when it first held every partition.
    let mut group = match group_at {
        Some(0) => start_group().transpose()?,
        _ => None,
    };
    let start = Instant::now();
    let epoch_ms = events::now_ms();
    let mut producing = Producing::new(options);
    producing.start();
    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_ms);
    let mut applied: Vec<(String, u64)> = Vec::new();
    let mut last: Vec<i32> = Vec::new();
    let sleep_until = |at_ms: u64| {
        let due = start + Duration::from_millis(at_ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    };
    for fault in &faults {
        if let Some(at) = group_at.filter(|at| group.is_none() && *at <= fault.at_ms) {
            sleep_until(at);
            group = start_group().transpose()?;
        }
        sleep_until(fault.at_ms);
        if fault.action == Action::ProducerBounce {
            let at = epoch_ms + start.elapsed().as_millis() as u64;
            producing.stop()?;
            producing.start();
            applied.push(("ProducerBounce".to_string(), at));
            continue;
        }
        if matches!(fault.action, Action::ConsumerBounce | Action::ConsumerKill) {
            let (members, _) = group
                .as_mut()
                .ok_or("consumer faults need a running [consumers] group")?;
            let which: Vec<usize> = match fault.target.as_str() {
                "consumers" => (1..=members.len()).collect(),
                other => vec![other
                    .strip_prefix("consumer:")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("unknown consumer target {other:?}"))?],
            };
            let at = epoch_ms + start.elapsed().as_millis() as u64;
            for &i in &which {
                members.bounce(i, fault.action == Action::ConsumerKill)?;
            }
            applied.push((format!("{:?} consumers {which:?}", fault.action), at));
            continue;
        }
        if fault.action == Action::SetTopicConfig {
            let configs: Vec<(String, String)> = fault
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            admin::set_topic_configs(&cluster.live_bootstrap(), topic, &configs)?;
            let at = epoch_ms + start.elapsed().as_millis() as u64;
            applied.push((format!("set {configs:?}"), at));
            continue;
        }
        let targets = resolve(&fault.target, &*cluster, topic, &last)?;
        let at = epoch_ms + start.elapsed().as_millis() as u64;
        let network = cluster.network();
        if fault.action == Action::Start {
            cluster.start_all(&targets)?;
            applied.push((format!("Start {targets:?}"), at));
            last = targets;
            continue;
        }
        if fault.action == Action::PowerLoss {
            let dropped = cluster.power_loss(&targets)?;
            applied.push((
                format!("PowerLoss {targets:?} (unsynced bytes dropped: {dropped:?})"),
                at,
            ));
            last = targets;
            continue;
        }
        for &id in &targets {
            if fault.action.is_network() {
                let network = network.as_ref().ok_or(
                    "network faults need a local cluster (the fault proxies sit in front of its \
                     listeners)",
                )?;
                fault.apply_network(network, id)?;
                continue;
            }
            match fault.action {
                Action::Kill => cluster.kill(id)?,
                Action::Terminate => cluster.terminate(id)?,
                Action::Pause => cluster.pause(id)?,
                Action::Resume => cluster.resume(id)?,
                Action::Start => cluster.start_again(id)?,
                Action::Bounce => {
                    cluster.kill(id)?;
                    cluster.start_again(id)?;
                }
                Action::CleanBounce => {
                    cluster.terminate(id)?;
                    cluster.start_again(id)?;
                }
                Action::FillDisk => cluster.fill_disk(id)?,
                Action::StallDisk => cluster.stall_disk(id, true)?,
                Action::UnstallDisk => cluster.stall_disk(id, false)?,
                Action::FailDisk => cluster.fail_disk(id, true)?,
                Action::UnfailDisk => cluster.fail_disk(id, false)?,
                Action::FreeDisk => cluster.free_disk(id)?,
                _ => {}
            }
        }
        applied.push((format!("{:?} {:?}", fault.action, targets), at));
        last = targets;
    }
    if let Some(at) = group_at.filter(|_| group.is_none()) {
        sleep_until(at);
        group = start_group().transpose()?;
    }
    producing.finish()?;
    // Heal, then read everything back.
    cluster.heal()?;
    wait_for(
        "every partition to have a leader again",
        Duration::from_secs(60),
        || {
            let view = admin::view(&bootstrap, topic).ok()?;
            view.partitions.iter().all(|p| p.leader >= 0).then_some(())
        },
    )?;
    let read = |path: &PathBuf| -> Result<Vec<Event>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(events::parse(&text).0)
    };
    let produced = read(&producer_log)?;
    // The reader stops once it has everything acknowledged and all that
    // the partitions commit (or after 5 s without a record, when something
    // acknowledged never comes: a loss).
    let mut through: std::collections::BTreeMap<i32, i64> =
        (0..partitions as i32).map(|p| (p, 0)).collect();
    for e in &produced {
        if let Event::ProducerSendSuccess {
            partition, offset, ..
        } = e
        {
            let next = through.entry(*partition).or_insert(0);
            *next = (*next).max(offset + 1);
        }
    }
    let consumed = consumer::Options {
        bootstrap: bootstrap.clone(),
        topic: topic.clone(),
        group_id: format!("verify-{}", scenario.name),
        auto_offset_reset: "earliest".into(),
        enable_auto_commit: false,
        auto_commit_interval_ms: 5000,
        commit_after_process: true,
        max_messages: -1,
        assignment_strategy: "range".into(),
        verbose: true,
        config: Vec::new(),
        out: file(&consumer_log)?,
        idle_exit: Some(Duration::from_secs(5)),
        read_through: Some(through),
    };
    consumer::run(consumed, &|| false)?;

    // The group, if any, reads on until it has everything acknowledged
    // (bounded: what was lost it never will), then its members leave.
    let mut group_logs = Vec::new();
    let mut stopped_at = events::now_ms();
    let mut assigned_at = 0;
    if let Some((members, at)) = group.as_mut() {
        assigned_at = *at;
        // Starting from the latest offsets, it need not read what came
        // before it (nor shortly after: see `group::check`).
        let from = match scenario.consumers.as_ref() {
            Some(c) if c.auto_offset_reset == "latest" => *at + crate::group::LATEST_GRACE_MS,
            _ => 0,
        };
        let acked: std::collections::BTreeSet<(i32, i64)> = produced
            .iter()
            .filter_map(|e| match e {
                Event::ProducerSendSuccess {
                    partition,
                    offset,
                    timestamp,
                    ..
                } if *timestamp >= from => Some((*partition, *offset)),
                _ => None,
            })
            .collect();
        let _ = wait_for(
            "the group to read everything",
            Duration::from_secs(60),
            || members.has_read(&acked).then_some(()),
        );
        stopped_at = events::now_ms();
        members.stop_all();
        group_logs = members.read_logs();
    }
    let divergent_replicas = identical_replicas(&*cluster, topic, partitions);
    let mut consumers = vec![read(&consumer_log)?];
    consumers.extend(group_logs.iter().cloned());
    let mut report = check::check(
        std::slice::from_ref(&produced),
        &consumers,
        Expect {
            min_acked: (spec.messages.max(0) as u64 / 10).max(100),
            loss_allowed: scenario.expect_loss,
        },
    );
    let group_report = scenario.consumers.as_ref().map(|spec| {
        let lost = report.lost.iter().map(|(v, _)| v.clone()).collect();
        let first_fault = applied.first().map_or(stopped_at, |(_, at)| *at);
        crate::group::check(
            spec,
            &produced,
            &group_logs,
            &lost,
            (first_fault, stopped_at),
            assigned_at,
        )
    });
    let replicas_differ = divergent_replicas.as_ref().is_some_and(|d| !d.is_empty());
    if (replicas_differ
        || group_report
            .as_ref()
            .is_some_and(|g| !g.failures.is_empty()))
        && report.verdict == Verdict::Pass
    {
        report.verdict = Verdict::Fail;
    }
    // Per partition, when its acknowledgements came.
    let mut acks: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for e in &produced {
        if let Event::ProducerSendSuccess {
            timestamp,
            partition,
            ..
        } = e
        {
            acks.entry(*partition).or_default().push(*timestamp);
        }
    }
    // A fault's outage: until every partition has been acknowledged again
    // (the slowest partition's wait); None if one never was.
    let outages = applied
        .into_iter()
        .map(|(what, at)| {
            let next = acks
                .values()
                .map(|times| times.iter().filter(|t| **t >= at).min().map(|t| t - at))
                .try_fold(0u64, |worst, wait| wait.map(|w| worst.max(w)));
            (what, at - epoch_ms, next)
        })
        .collect();
    for times in acks.values_mut() {
        for t in times.iter_mut() {
            *t = t.saturating_sub(epoch_ms);
        }
    }
    Ok(Outcome {
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        acks,
        report,
        group: group_report,
        divergent_replicas,
        outages,
    })
}

/// The table `sluice-verify run` prints.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | acknowledged | lost | duplicated | order violations | worst outage (ms) | verdict |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let r = &o.report;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:?} |\n",
            o.name,
            r.acked,
            r.lost.len(),
            r.duplicated.len(),
            r.order_violations.len(),
            o.worst_outage_ms()
                .map_or_else(|| "-".to_string(), |v| v.to_string()),
            r.verdict
        ));
    }
    out
}

/// Whether every outcome passed.
pub fn passed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| o.report.verdict == Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("verify/scenarios") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                let scenario = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!scenario.description.is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} scenarios");
    }

    #[test]
    fn a_soak_repeats_the_faults_in_cycles_for_its_duration() {
        let text = "name='x'\ndescription='y'\n[producer]\nmessages=100\nthroughput=10\n\
                    [[fault]]\nat_ms=1000\naction='kill'\ntarget='leader'\n\
                    [[fault]]\nat_ms=2000\naction='start'\ntarget='last'\n";
        let mut scenario: Scenario = toml::from_str(text).unwrap();
        scenario.soak(Duration::from_secs(20));
        // A cycle every 5 s (2 s of faults, 3 s apart): four in 20 s.
        let times: Vec<u64> = scenario.faults.iter().map(|f| f.at_ms).collect();
        assert_eq!(times, [1000, 2000, 6000, 7000, 11000, 12000, 16000, 17000]);
        assert_eq!(scenario.producer.messages, 200);
        assert_eq!(scenario.name, "x-soak");
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        let bad = [
            "name='x'\ndescription='y'\n[producer]\nmessages=1\nthroughput=1\nspeed=3\n",
            "name='x'\ndescription='y'\n[producer]\nmessages=1\nthroughput=1\n[[fault]]\nat_ms=1\naction='explode'\ntarget='leader'\n",
        ];
        for text in bad {
            assert!(toml::from_str::<Scenario>(text).is_err(), "{text}");
        }
    }
}
