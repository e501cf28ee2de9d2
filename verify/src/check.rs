//! The checker: from the event logs of the producers and consumers of a
//! run, what was acknowledged and never read back (lost), read at two
//! offsets (duplicated), stored out of the order it was sent in, two
//! values at one offset, and consumers that went backwards or skipped.
//! Pure: logs in, a report out.
//!
//! Values are `PREFIX.SEQ` (the verifiable producer's): messages of one
//! prefix were sent in `SEQ` order, so within a partition their offsets
//! must rise with it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::events::Event;

/// What a run must have done to be judged at all.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Fewer acknowledged messages than this: too little traffic to judge.
    pub min_acked: u64,
    /// Lost messages are expected (acks=1 under a leader crash, an unclean
    /// election): counted, not failed on.
    pub loss_allowed: bool,
}

/// One partition's offset.
type Position = (String, i32, i64);

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub acked: u64,
    pub send_errors: u64,
    /// Fatal client errors (each followed by a new producer): an idempotent
    /// producer that saw the cluster forget acknowledged messages. A failure
    /// unless loss is expected.
    pub fatal_errors: Vec<String>,
    /// Distinct (partition, offset) records the consumers read.
    pub consumed: u64,
    /// Acknowledged values no consumer read, with where they were acked.
    pub lost: Vec<(String, Position)>,
    /// Values read (or acknowledged) at more than one offset.
    pub duplicated: Vec<(String, Vec<Position>)>,
    /// Values of one producer stored in another order than sent.
    pub order_violations: Vec<String>,
    /// Offsets that held two different values.
    pub conflicting_offsets: Vec<(Position, Vec<String>)>,
    /// A consumer read an offset at or below one it had read, with no
    /// reassignment between.
    pub went_backwards: Vec<String>,
    /// A consumer moved past acknowledged offsets it never read, with no
    /// reassignment between.
    pub skipped: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Pass,
    Fail,
    /// Too little traffic to say anything.
    Insufficient,
}

/// `PREFIX.SEQ` split; a value without a numeric suffix has no order.
fn sequence(value: &str) -> Option<(&str, u64)> {
    let (prefix, seq) = value.rsplit_once('.')?;
    Some((prefix, seq.parse().ok()?))
}

pub fn check(producers: &[Vec<Event>], consumers: &[Vec<Event>], expect: Expect) -> Report {
    let mut report = Report::default();
    // value -> acknowledged positions
    let mut acked: BTreeMap<String, BTreeSet<Position>> = BTreeMap::new();
    for log in producers {
        for event in log {
            match event {
                Event::ProducerSendSuccess {
                    topic,
                    partition,
                    offset,
                    value,
                    ..
                } => {
                    report.acked += 1;
                    acked.entry(value.clone()).or_default().insert((
                        topic.clone(),
                        *partition,
                        *offset,
                    ));
                }
                Event::ProducerSendError { .. } => report.send_errors += 1,
                Event::ProducerFatalError {
                    exception, message, ..
                } => report.fatal_errors.push(format!("{exception}: {message}")),
                _ => {}
            }
        }
    }
    // (partition, offset) -> values read there; value -> positions read.
    let mut at: BTreeMap<Position, BTreeSet<String>> = BTreeMap::new();
    let mut read: BTreeMap<String, BTreeSet<Position>> = BTreeMap::new();
    for (index, log) in consumers.iter().enumerate() {
        // Per partition: the last offset read since it was (re)assigned.
        let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for event in log {
            match event {
                Event::PartitionsAssigned { partitions, .. }
                | Event::PartitionsRevoked { partitions, .. } => {
                    for p in partitions {
                        last.remove(&(p.topic.clone(), p.partition));
                    }
                }
                Event::RecordData {
                    topic,
                    partition,
                    offset,
                    value,
                    ..
                } => {
                    let pos = (topic.clone(), *partition, *offset);
                    at.entry(pos.clone()).or_default().insert(value.clone());
                    read.entry(value.clone()).or_default().insert(pos);
                    let key = (topic.clone(), *partition);
                    if let Some(&previous) = last.get(&key) {
                        if *offset <= previous {
                            report.went_backwards.push(format!(
                                "consumer {index}: {topic}-{partition} offset {offset} after {previous}"
                            ));
                        } else if *offset > previous + 1 {
                            let gap = acked
                                .values()
                                .flatten()
                                .filter(|(t, p, o)| {
                                    t == topic && p == partition && *o > previous && o < offset
                                })
                                .count();
                            if gap > 0 {
                                report.skipped.push(format!(
                                    "consumer {index}: {topic}-{partition} jumped from {previous} \
                                     to {offset} past {gap} acknowledged offsets"
                                ));
                            }
                        }
                    }
                    last.insert(key, *offset);
                }
                _ => {}
            }
        }
    }
    report.consumed = at.len() as u64;
    for (value, positions) in &acked {
        if !read.contains_key(value) {
            if let Some(pos) = positions.iter().next() {
                report.lost.push((value.clone(), pos.clone()));
            }
        }
    }
    // A value at more than one offset: acknowledged twice (a retry that
    // was stored again), or read at several.
    let mut values: BTreeSet<&String> = acked.keys().collect();
    values.extend(read.keys());
    for value in values {
        let mut positions: BTreeSet<Position> = BTreeSet::new();
        positions.extend(acked.get(value).into_iter().flatten().cloned());
        positions.extend(read.get(value).into_iter().flatten().cloned());
        if positions.len() > 1 {
            report
                .duplicated
                .push((value.clone(), positions.into_iter().collect()));
        }
    }
    // An offset acknowledged for one value and read with another.
    for (value, positions) in &acked {
        for pos in positions {
            at.entry(pos.clone()).or_default().insert(value.clone());
        }
    }
    let lost: BTreeSet<&String> = report.lost.iter().map(|(v, _)| v).collect();
    for (pos, held) in &at {
        // Where loss is expected, a lost message's offset holding the next
        // leader's message is that loss, not another fault.
        let expected = expect.loss_allowed && held.iter().any(|v| lost.contains(v));
        if held.len() > 1 && !expected {
            report
                .conflicting_offsets
                .push((pos.clone(), held.iter().cloned().collect()));
        }
    }
    // Per partition and prefix, the sequences stored must rise with their
    // offsets: what the consumers read, or (with no consumer) what was
    // acknowledged.
    let stored_at = if read.is_empty() { &acked } else { &read };
    let mut stored: BTreeMap<(String, i32, String), Vec<(i64, u64)>> = BTreeMap::new();
    for (value, positions) in stored_at {
        let Some((prefix, seq)) = sequence(value) else {
            continue;
        };
        for (topic, partition, offset) in positions {
            stored
                .entry((topic.clone(), *partition, prefix.to_string()))
                .or_default()
                .push((*offset, seq));
        }
    }
    for ((topic, partition, prefix), mut entries) in stored {
        entries.sort_unstable();
        for pair in entries.windows(2) {
            if pair[1].1 < pair[0].1 {
                report.order_violations.push(format!(
                    "{topic}-{partition}: {prefix}.{} at offset {} after {prefix}.{} at {}",
                    pair[1].1, pair[1].0, pair[0].1, pair[0].0
                ));
            }
        }
    }
    report.verdict = if report.acked < expect.min_acked.max(1) {
        Verdict::Insufficient
    } else if ((!report.lost.is_empty() || !report.fatal_errors.is_empty()) && !expect.loss_allowed)
        || !report.duplicated.is_empty()
        || !report.order_violations.is_empty()
        || !report.conflicting_offsets.is_empty()
        || !report.went_backwards.is_empty()
        || !report.skipped.is_empty()
    {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(partition: i32, offset: i64, value: &str) -> Event {
        Event::ProducerSendSuccess {
            timestamp: 0,
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: value.into(),
        }
    }

    fn read(partition: i32, offset: i64, value: &str) -> Event {
        Event::RecordData {
            timestamp: 0,
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: value.into(),
        }
    }

    const EXPECT: Expect = Expect {
        min_acked: 3,
        loss_allowed: false,
    };

    /// Three messages acknowledged at 0, 1, 2 of partition 0.
    fn produced() -> Vec<Vec<Event>> {
        vec![vec![
            acked(0, 0, "p.0"),
            acked(0, 1, "p.1"),
            acked(0, 2, "p.2"),
        ]]
    }

    #[test]
    fn a_clean_run_passes() {
        let consumed = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            read(0, 2, "p.2"),
        ]];
        let report = check(&produced(), &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
        assert_eq!((report.acked, report.consumed), (3, 3));
    }

    #[test]
    fn a_lost_message_is_caught_and_may_be_expected() {
        let consumed = vec![vec![read(0, 0, "p.0"), read(0, 1, "p.1")]];
        let report = check(&produced(), &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.lost, [("p.2".to_string(), ("t".to_string(), 0, 2))]);
        let allowed = Expect {
            loss_allowed: true,
            ..EXPECT
        };
        let report = check(&produced(), &consumed, allowed);
        assert_eq!((report.verdict, report.lost.len()), (Verdict::Pass, 1));
    }

    #[test]
    fn a_fatal_producer_error_fails_unless_loss_is_expected() {
        let mut producers = produced();
        producers[0].push(Event::ProducerFatalError {
            timestamp: 0,
            exception: "OUT_OF_ORDER_SEQUENCE_NUMBER".into(),
            message: "the broker lost acknowledged messages".into(),
        });
        let consumed = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            read(0, 2, "p.2"),
        ]];
        let report = check(&producers, &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Fail, "{report:?}");
        assert_eq!(report.fatal_errors.len(), 1);
        let allowed = Expect {
            loss_allowed: true,
            ..EXPECT
        };
        assert_eq!(check(&producers, &consumed, allowed).verdict, Verdict::Pass);
    }

    #[test]
    fn a_duplicate_is_caught() {
        // A retry stored p.1 again at offset 3.
        let mut producers = produced();
        producers[0].push(acked(0, 3, "p.1"));
        let consumed = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            read(0, 2, "p.2"),
            read(0, 3, "p.1"),
        ]];
        let report = check(&producers, &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.duplicated.len(), 1, "{report:?}");
        assert_eq!(report.duplicated[0].0, "p.1");
    }

    #[test]
    fn a_reordering_is_caught() {
        let producers = vec![vec![
            acked(0, 0, "p.0"),
            acked(0, 1, "p.2"),
            acked(0, 2, "p.1"),
        ]];
        let consumed = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.2"),
            read(0, 2, "p.1"),
        ]];
        let report = check(&producers, &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.order_violations.len(), 1, "{report:?}");
    }

    #[test]
    fn an_offset_with_two_values_is_caught() {
        // Acknowledged as p.2 at 2, read back as something else there (a
        // truncation and a new leader's write).
        let consumed = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            read(0, 2, "q.0"),
        ]];
        let report = check(&produced(), &consumed, EXPECT);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.conflicting_offsets.len(), 1, "{report:?}");
        assert_eq!(report.lost.len(), 1);
    }

    #[test]
    fn a_consumer_that_goes_backwards_or_skips_is_caught() {
        let backwards = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            read(0, 0, "p.0"),
            read(0, 2, "p.2"),
        ]];
        let report = check(&produced(), &backwards, EXPECT);
        assert_eq!(report.went_backwards.len(), 1, "{report:?}");
        // After a reassignment, reading again from an earlier offset is
        // the group's normal redelivery, not going backwards.
        let reassigned = vec![vec![
            read(0, 0, "p.0"),
            read(0, 1, "p.1"),
            Event::PartitionsAssigned {
                timestamp: 0,
                partitions: vec![crate::events::TopicPartition {
                    topic: "t".into(),
                    partition: 0,
                }],
            },
            read(0, 1, "p.1"),
            read(0, 2, "p.2"),
        ]];
        assert!(check(&produced(), &reassigned, EXPECT)
            .went_backwards
            .is_empty());
        let skipping = vec![
            vec![read(0, 0, "p.0"), read(0, 2, "p.2")],
            vec![read(0, 1, "p.1")],
        ];
        let report = check(&produced(), &skipping, EXPECT);
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(report.lost.is_empty());
    }

    #[test]
    fn an_empty_or_thin_run_is_not_judged() {
        let report = check(&[], &[], EXPECT);
        assert_eq!(report.verdict, Verdict::Insufficient);
        let two = vec![vec![acked(0, 0, "p.0"), acked(0, 1, "p.1")]];
        assert_eq!(check(&two, &[], EXPECT).verdict, Verdict::Insufficient);
    }
}
