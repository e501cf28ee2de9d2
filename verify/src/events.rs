//! The events the verifiable producer and consumer print, one JSON object
//! per line, named as Kafka's VerifiableProducer and VerifiableConsumer
//! name theirs (`"name": "producer_send_success"`, …) so that tools written
//! for those read these too. Every event carries `timestamp` (ms since the
//! Unix epoch).

use std::io::Write;

use serde::{Deserialize, Serialize};

/// One line of a producer's or consumer's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Event {
    StartupComplete {
        timestamp: u64,
    },
    /// A message the cluster acknowledged, where it was stored.
    ProducerSendSuccess {
        timestamp: u64,
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<String>,
        value: String,
    },
    /// A message the producer gave up on.
    ProducerSendError {
        timestamp: u64,
        topic: String,
        key: Option<String>,
        value: String,
        /// The Kafka error code's name (`NOT_ENOUGH_REPLICAS`, …) or the
        /// client's own (`_MSG_TIMED_OUT`, …).
        exception: String,
        message: String,
        retriable: bool,
    },
    /// The client raised a fatal error (librdkafka's idempotent producer
    /// does when the cluster answers as if acknowledged messages were lost,
    /// e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after an unclean election). Every
    /// message still queued then fails; the tool starts a new producer (a
    /// new producer id) and goes on, as an application would.
    ProducerFatalError {
        timestamp: u64,
        exception: String,
        message: String,
    },
    /// Totals and rates, every few seconds and at the end.
    ToolData {
        timestamp: u64,
        sent: u64,
        acked: u64,
        errors: u64,
        retries: u64,
        target_throughput: f64,
        avg_throughput: f64,
        /// Errors and retries per second over the run so far.
        error_rate: f64,
        retry_rate: f64,
    },
    PartitionsAssigned {
        timestamp: u64,
        partitions: Vec<TopicPartition>,
    },
    PartitionsRevoked {
        timestamp: u64,
        partitions: Vec<TopicPartition>,
    },
    /// One poll's worth of records.
    RecordsConsumed {
        timestamp: u64,
        count: u64,
        partitions: Vec<PartitionRange>,
    },
    /// One record (with `--verbose`, as Kafka's tool): what the checker
    /// compares with the acknowledgements.
    RecordData {
        timestamp: u64,
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<String>,
        value: String,
    },
    OffsetsCommitted {
        timestamp: u64,
        success: bool,
        offsets: Vec<CommittedOffset>,
        error: Option<String>,
    },
    /// The consumer's lag per partition: high watermark − position.
    ConsumerLag {
        timestamp: u64,
        partitions: Vec<PartitionLag>,
    },
    ShutdownComplete {
        timestamp: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub count: u64,
    #[serde(rename = "minOffset")]
    pub min_offset: i64,
    #[serde(rename = "maxOffset")]
    pub max_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a producer's or consumer's events go: stdout, or a file when the
/// scenario runner drives them; and the metrics they feed, if served.
#[derive(Clone)]
pub struct Sink {
    out: std::sync::Arc<std::sync::Mutex<Box<dyn std::io::Write + Send>>>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Sink {
    pub fn stdout() -> Sink {
        Sink::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn std::io::Write + Send>) -> Sink {
        Sink {
            out: std::sync::Arc::new(std::sync::Mutex::new(out)),
            metrics: None,
        }
    }

    /// Also feeds every event to `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Sink {
        self.metrics = Some(metrics);
        self
    }

    /// Writes `event` as one line.
    pub fn emit(&self, event: &Event) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(event);
        }
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Reads an event log; lines that are not events (a client's own output)
/// are skipped and counted.
pub fn parse(text: &str) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(event) => events.push(event),
            Err(_) => skipped += 1,
        }
    }
    (events, skipped)
}
