//! `sluice-verify consumer`: a consumer group member that prints what it
//! was assigned, what it read, what it committed and its lag (see
//! [`crate::events`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::events::{
    now_ms, CommittedOffset, Event, PartitionLag, PartitionRange, Sink, TopicPartition,
};

pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    pub group_id: String,
    /// `earliest` or `latest`.
    pub auto_offset_reset: String,
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// Commit synchronously after each batch read (with auto commit off).
    pub commit_after_process: bool,
    /// -1: until stopped.
    pub max_messages: i64,
    /// `range`, `roundrobin` or `cooperative-sticky`.
    pub assignment_strategy: String,
    /// Print every record (`record_data`), as the checker needs.
    pub verbose: bool,
    pub config: Vec<(String, String)>,
    pub out: Sink,
    /// Stop once nothing has been read for this long after the first
    /// assignment (the scenario runner's "read everything back").
    pub idle_exit: Option<Duration>,
    /// With `idle_exit`: stop sooner, once nothing has been read for
    /// [`CAUGHT_UP_IDLE`] and every partition of the topic named here has
    /// been read up to the offset given (the next one to read) and up to
    /// its high watermark. The scenario runner names what was acknowledged,
    /// so that a run that lost nothing does not wait out the idle time.
    pub read_through: Option<BTreeMap<i32, i64>>,
}

/// How long a consumer that has read everything named in
/// [`Options::read_through`] waits for more before it stops.
const CAUGHT_UP_IDLE: Duration = Duration::from_millis(500);

struct Context {
    out: Sink,
}

impl ClientContext for Context {}

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.out.emit(&Event::PartitionsRevoked {
                timestamp: now_ms(),
                partitions: partitions(list),
            });
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.out.emit(&Event::PartitionsAssigned {
                timestamp: now_ms(),
                partitions: partitions(list),
            });
        }
    }
}

/// Most records gathered before a batch is reported (and committed).
const BATCH_MAX: usize = 500;
/// How often the lag is reported.
const LAG_EVERY: Duration = Duration::from_secs(2);

pub fn run(options: Options, stop: &dyn Fn() -> bool) -> Result<(), String> {
    let out = options.out.clone();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.bootstrap)
        .set("group.id", &options.group_id)
        .set("auto.offset.reset", &options.auto_offset_reset)
        .set("enable.auto.commit", options.enable_auto_commit.to_string())
        .set(
            "auto.commit.interval.ms",
            options.auto_commit_interval_ms.to_string(),
        )
        .set(
            "partition.assignment.strategy",
            &options.assignment_strategy,
        );
    for (k, v) in &options.config {
        config.set(k, v);
    }
    let consumer: BaseConsumer<Context> = config
        .create_with_context(Context {
            out: options.out.clone(),
        })
        .map_err(|e| format!("creating the consumer: {e}"))?;
    consumer
        .subscribe(&[&options.topic])
        .map_err(|e| format!("subscribing to {}: {e}", options.topic))?;
    out.emit(&Event::StartupComplete {
        timestamp: now_ms(),
    });
    let mut consumed: i64 = 0;
    let mut next_lag = Instant::now() + LAG_EVERY;
    let mut last_read = Instant::now();
    let mut was_assigned = false;
    // Each partition's next offset to read, after what this consumer read.
    let mut read_up_to: BTreeMap<i32, i64> = BTreeMap::new();
    while (options.max_messages < 0 || consumed < options.max_messages) && !stop() {
        // Idle counts from the later of the last record and the moment the
        // consumer got partitions: a group slow to form is not idle.
        let assigned = consumer.assignment().is_ok_and(|a| a.count() > 0);
        if assigned && !was_assigned {
            last_read = Instant::now();
        }
        was_assigned = assigned;
        if options
            .idle_exit
            .is_some_and(|idle| assigned && last_read.elapsed() >= idle)
        {
            break;
        }
        if let Some(through) = options.read_through.as_ref() {
            if assigned
                && last_read.elapsed() >= CAUGHT_UP_IDLE
                && caught_up(&consumer, &options.topic, through, &read_up_to)
            {
                break;
            }
        }
        let mut batch: BTreeMap<(String, i32), PartitionRange> = BTreeMap::new();
        let mut count = 0usize;
        let mut wait = Duration::from_millis(100);
        while count < BATCH_MAX
            && (options.max_messages < 0 || consumed + (count as i64) < options.max_messages)
        {
            let Some(polled) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match polled {
                Ok(message) => message,
                Err(e) => {
                    eprintln!("sluice-verify consumer: {e}");
                    break;
                }
            };
            count += 1;
            let (topic, partition, offset) = (
                message.topic().to_string(),
                message.partition(),
                message.offset(),
            );
            if options.verbose {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.emit(&Event::RecordData {
                    timestamp: now_ms(),
                    topic: topic.clone(),
                    partition,
                    offset,
                    key: text(message.key()),
                    value: text(message.payload()).unwrap_or_default(),
                });
            }
            let range = batch
                .entry((topic.clone(), partition))
                .or_insert(PartitionRange {
                    topic,
                    partition,
                    count: 0,
                    min_offset: offset,
                    max_offset: offset,
                });
            range.count += 1;
            range.min_offset = range.min_offset.min(offset);
            range.max_offset = range.max_offset.max(offset);
            let next = read_up_to.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
        }
        if count > 0 {
            last_read = Instant::now();
            consumed += count as i64;
            out.emit(&Event::RecordsConsumed {
                timestamp: now_ms(),
                count: count as u64,
                partitions: batch.values().cloned().collect(),
            });
            if !options.enable_auto_commit && options.commit_after_process {
                commit(&consumer, &batch, &out);
            }
        }
        if Instant::now() >= next_lag {
            next_lag += LAG_EVERY;
            report_lag(&consumer, &out);
        }
    }
    report_lag(&consumer, &out);
    drop(consumer);
    out.emit(&Event::ShutdownComplete {
        timestamp: now_ms(),
    });
    Ok(())
}

/// Whether every partition in `through` was read up to its offset there
/// and up to its high watermark now (a partition never read counts as read
/// up to its low watermark).
fn caught_up(
    consumer: &BaseConsumer<Context>,
    topic: &str,
    through: &BTreeMap<i32, i64>,
    read_up_to: &BTreeMap<i32, i64>,
) -> bool {
    through.iter().all(|(&partition, &wanted)| {
        let read = read_up_to.get(&partition).copied();
        // Short of what was acknowledged: no need to ask the broker.
        if read.is_some_and(|read| read < wanted) {
            return false;
        }
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(2))
        else {
            return false;
        };
        let read = read.unwrap_or(low);
        read >= wanted && read >= high
    })
}

/// Commits the offsets after each partition's last record read.
fn commit(
    consumer: &BaseConsumer<Context>,
    batch: &BTreeMap<(String, i32), PartitionRange>,
    out: &Sink,
) {
    let mut list = TopicPartitionList::new();
    let mut offsets = Vec::new();
    for ((topic, partition), range) in batch {
        let next = range.max_offset + 1;
        if list
            .add_partition_offset(topic, *partition, Offset::Offset(next))
            .is_ok()
        {
            offsets.push(CommittedOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: next,
            });
        }
    }
    let result = consumer.commit(&list, CommitMode::Sync);
    out.emit(&Event::OffsetsCommitted {
        timestamp: now_ms(),
        success: result.is_ok(),
        offsets,
        error: result.err().map(|e| e.to_string()),
    });
}

/// Each assigned partition's lag: its high watermark minus the position.
fn report_lag(consumer: &BaseConsumer<Context>, out: &Sink) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut lags = Vec::new();
    for e in positions.elements() {
        let Ok((_, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
        else {
            continue;
        };
        let position = match e.offset() {
            Offset::Offset(o) => o,
            _ => continue,
        };
        lags.push(PartitionLag {
            topic: e.topic().to_string(),
            partition: e.partition(),
            lag: (high - position).max(0),
        });
    }
    if !lags.is_empty() {
        out.emit(&Event::ConsumerLag {
            timestamp: now_ms(),
            partitions: lags,
        });
    }
}
