//! A consumer group reading while the faults happen: each member is a
//! `sluice-verify consumer` process of its own (so that a member can be
//! SIGKILLed as an application would be), its events in a file per run of
//! it. What the group read is judged beside the checker's verdict: every
//! acknowledged message read by some member (nothing skipped across a
//! member's bounce), how many records were read more than once (bounded by
//! how often offsets are committed), and how many rebalances happened that
//! no consumer fault explains.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::events::{self, Event};

/// How long a member stopped with SIGTERM may take to leave the group.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The members' settings (the scenario's `[consumers]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Members of the group.
    pub count: usize,
    #[serde(default = "earliest")]
    pub auto_offset_reset: String,
    #[serde(default)]
    pub enable_auto_commit: bool,
    #[serde(default = "five_seconds")]
    pub auto_commit_interval_ms: u64,
    /// Commit after each batch read (with auto commit off).
    #[serde(default = "yes")]
    pub commit_after_process: bool,
    /// When the members start, ms into the run (0: before the producer).
    #[serde(default)]
    pub start_at_ms: u64,
    /// `key=value` librdkafka consumer settings.
    #[serde(default)]
    pub config: Vec<String>,
    /// Expected at most: records the group read more than once.
    #[serde(default)]
    pub max_redelivered: Option<u64>,
    /// Expected at most: partitions revoked from a member while the faults
    /// happen (from the first fault until the members are stopped).
    #[serde(default)]
    pub max_rebalances: Option<u64>,
}

fn earliest() -> String {
    "earliest".into()
}

fn five_seconds() -> u64 {
    5000
}

fn yes() -> bool {
    true
}

struct Member {
    child: Option<Child>,
    /// One event log per run of this member, oldest first.
    logs: Vec<PathBuf>,
}

/// The group's member processes; dropping it kills them.
pub struct Group {
    exe: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    members: Vec<Member>,
}

impl Group {
    /// Starts `spec.count` members of `group` reading `topic`.
    pub fn start(
        spec: &Spec,
        bootstrap: &str,
        topic: &str,
        group: &str,
        dir: &Path,
    ) -> Result<Group, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let mut args = vec![
            "consumer".to_string(),
            "--bootstrap-server".into(),
            bootstrap.into(),
            "--topic".into(),
            topic.into(),
            "--group-id".into(),
            group.into(),
            "--auto-offset-reset".into(),
            spec.auto_offset_reset.clone(),
            "--enable-auto-commit".into(),
            spec.enable_auto_commit.to_string(),
            "--auto-commit-interval-ms".into(),
            spec.auto_commit_interval_ms.to_string(),
            "--commit-after-process".into(),
            spec.commit_after_process.to_string(),
            "--verbose".into(),
        ];
        for kv in &spec.config {
            args.extend(["--consumer-config".to_string(), kv.clone()]);
        }
        let mut group = Group {
            exe,
            args,
            dir: dir.to_path_buf(),
            members: (0..spec.count)
                .map(|_| Member {
                    child: None,
                    logs: Vec::new(),
                })
                .collect(),
        };
        for i in 0..spec.count {
            group.spawn(i)?;
        }
        Ok(group)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        let path = self.dir.join(format!(
            "consumer-{}-{}.jsonl",
            i + 1,
            member.logs.len() + 1
        ));
        let out = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let child = Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a consumer: {e}"))?;
        member.child = Some(child);
        member.logs.push(path);
        Ok(())
    }

    /// Stops member `i` (1-based), with SIGKILL or a clean SIGTERM (it
    /// commits and leaves the group), and starts it again.
    pub fn bounce(&mut self, i: usize, kill: bool) -> Result<(), String> {
        let index = i
            .checked_sub(1)
            .filter(|i| *i < self.members.len())
            .ok_or_else(|| format!("no consumer {i}"))?;
        self.stop(index, kill);
        self.spawn(index)
    }

    fn stop(&mut self, index: usize, kill: bool) {
        let Some(mut child) = self.members[index].child.take() else {
            return;
        };
        if !kill {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops every member cleanly.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i, false);
        }
    }

    /// Every run's event log.
    pub fn read_logs(&self) -> Vec<Vec<Event>> {
        self.members
            .iter()
            .flat_map(|m| &m.logs)
            .map(|path| events::parse(&std::fs::read_to_string(path).unwrap_or_default()).0)
            .collect()
    }

    /// The partitions the running members hold now, by their latest
    /// logs: what each was last assigned, unless revoked since.
    pub fn assigned(&self) -> BTreeSet<i32> {
        let mut held = BTreeSet::new();
        for member in &self.members {
            let Some(path) = member.logs.last() else {
                continue;
            };
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut now: Vec<i32> = Vec::new();
            for event in events::parse(&text).0 {
                match event {
                    Event::PartitionsAssigned { partitions, .. } => {
                        now = partitions.iter().map(|p| p.partition).collect()
                    }
                    Event::PartitionsRevoked { .. } => now.clear(),
                    _ => {}
                }
            }
            held.extend(now);
        }
        held
    }

    /// Whether the members have read every position in `acked`.
    pub fn has_read(&self, acked: &BTreeSet<(i32, i64)>) -> bool {
        let read: BTreeSet<(i32, i64)> = self
            .read_logs()
            .iter()
            .flatten()
            .filter_map(|e| match e {
                Event::RecordData {
                    partition, offset, ..
                } => Some((*partition, *offset)),
                _ => None,
            })
            .collect();
        acked.is_subset(&read)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What the group read, judged.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Report {
    /// Records read more than once (a member that took over a partition
    /// re-read what was read but not committed).
    pub redelivered: u64,
    /// Acknowledged values no member read (and not lost): skipped.
    pub unread: Vec<String>,
    /// Partitions revoked from members within the window.
    pub rebalances: u64,
    /// What failed, if anything.
    pub failures: Vec<String>,
}

/// With `auto.offset.reset=latest`, how long after the group first held
/// every partition its members may still be looking up where to start:
/// messages acknowledged meanwhile may or may not be read.
pub const LATEST_GRACE_MS: u64 = 5000;

/// Judges the group's logs against the producer's: `lost` are the values
/// the checker found lost (not counted again as skipped), `window` the
/// span (ms since the epoch) in which rebalances count, `assigned_at` when
/// the group first held every partition. A group starting from the
/// earliest offsets must read everything acknowledged; one starting from
/// the latest must read nothing acknowledged before `assigned_at` and
/// everything acknowledged from shortly after.
pub fn check(
    spec: &Spec,
    produced: &[Event],
    group: &[Vec<Event>],
    lost: &BTreeSet<String>,
    window: (u64, u64),
    assigned_at: u64,
) -> Report {
    let mut report = Report::default();
    let mut reads: BTreeMap<(i32, i64), u64> = BTreeMap::new();
    let mut read_values: BTreeSet<&str> = BTreeSet::new();
    for event in group.iter().flatten() {
        match event {
            Event::RecordData {
                partition,
                offset,
                value,
                ..
            } => {
                *reads.entry((*partition, *offset)).or_default() += 1;
                read_values.insert(value);
            }
            Event::PartitionsRevoked {
                timestamp,
                partitions,
            } if (window.0..window.1).contains(timestamp) && !partitions.is_empty() => {
                report.rebalances += 1;
            }
            _ => {}
        }
    }
    report.redelivered = reads.values().map(|n| n - 1).sum();
    let latest = spec.auto_offset_reset == "latest";
    let mut read_too_early = Vec::new();
    for event in produced {
        if let Event::ProducerSendSuccess {
            value, timestamp, ..
        } = event
        {
            let read = read_values.contains(value.as_str());
            if latest && *timestamp < assigned_at {
                if read {
                    read_too_early.push(value.clone());
                }
                continue;
            }
            if latest && *timestamp < assigned_at + LATEST_GRACE_MS {
                continue;
            }
            if !read && !lost.contains(value) {
                report.unread.push(value.clone());
            }
        }
    }
    if let Some(first) = read_too_early.first() {
        report.failures.push(format!(
            "with auto.offset.reset=latest the group read {} messages acknowledged before it \
             started (first: {first})",
            read_too_early.len()
        ));
    }
    if !report.unread.is_empty() {
        report.failures.push(format!(
            "{} acknowledged messages were never read by the group (first: {})",
            report.unread.len(),
            report.unread[0]
        ));
    }
    if let Some(max) = spec.max_redelivered.filter(|m| report.redelivered > *m) {
        report.failures.push(format!(
            "{} records read more than once, more than the {max} expected",
            report.redelivered
        ));
    }
    if let Some(max) = spec.max_rebalances.filter(|m| report.rebalances > *m) {
        report.failures.push(format!(
            "{} rebalances during the faults, more than the {max} expected",
            report.rebalances
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TopicPartition;

    fn spec() -> Spec {
        toml::from_str("count = 2\nmax_redelivered = 1\nmax_rebalances = 0\n").unwrap()
    }

    fn acked(offset: i64) -> Event {
        Event::ProducerSendSuccess {
            timestamp: 0,
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            value: format!("p.{offset}"),
        }
    }

    fn read(offset: i64) -> Event {
        Event::RecordData {
            timestamp: 0,
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            value: format!("p.{offset}"),
        }
    }

    fn revoked(at: u64) -> Event {
        Event::PartitionsRevoked {
            timestamp: at,
            partitions: vec![TopicPartition {
                topic: "t".into(),
                partition: 0,
            }],
        }
    }

    #[test]
    fn a_group_that_read_everything_once_passes() {
        let produced = vec![acked(0), acked(1), acked(2)];
        let group = vec![vec![read(0), read(1)], vec![read(2)]];
        let report = check(&spec(), &produced, &group, &BTreeSet::new(), (10, 20), 0);
        assert_eq!(report, Report::default());
    }

    #[test]
    fn a_latest_group_reads_only_what_came_after_it_started() {
        let mut spec = spec();
        spec.auto_offset_reset = "latest".into();
        let at = |offset: i64, timestamp: u64| match acked(offset) {
            Event::ProducerSendSuccess {
                timestamp: _,
                topic,
                partition,
                offset,
                key,
                value,
            } => Event::ProducerSendSuccess {
                timestamp,
                topic,
                partition,
                offset,
                key,
                value,
            },
            other => other,
        };
        // Started at 10 000: 0 came before, 1 within the grace, 2 after.
        let produced = vec![at(0, 9_000), at(1, 10_500), at(2, 20_000)];
        let good = vec![vec![read(2)]];
        let report = check(&spec, &produced, &good, &BTreeSet::new(), (0, 1), 10_000);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let early = vec![vec![read(0), read(2)]];
        let report = check(&spec, &produced, &early, &BTreeSet::new(), (0, 1), 10_000);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        let missed = vec![vec![read(1)]];
        let report = check(&spec, &produced, &missed, &BTreeSet::new(), (0, 1), 10_000);
        assert_eq!(report.unread, ["p.2"]);
    }

    #[test]
    fn skips_redeliveries_and_rebalances_are_counted_against_the_bounds() {
        let produced = vec![acked(0), acked(1), acked(2), acked(3)];
        // Member 1 read 0–1 and died before committing; member 2 read 0–2
        // again, then skipped 3; two revocations in the window, one before.
        let group = vec![
            vec![revoked(5), read(0), read(1), revoked(12)],
            vec![read(0), read(1), read(2), revoked(15)],
        ];
        let report = check(&spec(), &produced, &group, &BTreeSet::new(), (10, 20), 0);
        assert_eq!(report.redelivered, 2);
        assert_eq!(report.unread, ["p.3"]);
        assert_eq!(report.rebalances, 2);
        assert_eq!(report.failures.len(), 3, "{:?}", report.failures);
        // A value the checker already counts lost is not skipped too.
        let lost = BTreeSet::from(["p.3".to_string()]);
        let report = check(&spec(), &produced, &group, &lost, (10, 20), 0);
        assert!(report.unread.is_empty());
    }
}
