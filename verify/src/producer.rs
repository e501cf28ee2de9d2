//! `sluice-verify producer`: sends `PREFIX.SEQ` values with librdkafka and
//! prints what became of each (see [`crate::events`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::events::{now_ms, Event, Sink};

/// The producer's settings (`sluice-verify producer --help`).
#[derive(Clone)]
pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    /// -1: until stopped.
    pub max_messages: i64,
    /// Messages per second; -1: as fast as it goes.
    pub throughput: f64,
    pub acks: String,
    pub idempotence: bool,
    pub retries: Option<u32>,
    pub delivery_timeout_ms: u64,
    pub value_prefix: String,
    pub config: Vec<(String, String)>,
    pub out: Sink,
}

/// Totals over the run, across the producers a fatal error replaces.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    errors: AtomicU64,
    /// Retries of the producers replaced so far.
    retries_before: AtomicU64,
    /// Retries of the current producer (from its statistics).
    retries: AtomicU64,
}

struct Context {
    out: Sink,
    counts: Arc<Counts>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let retries: u64 = statistics.brokers.values().map(|b| b.txretries).sum();
        self.counts.retries.store(retries, Ordering::Relaxed);
    }

    /// librdkafka's own log lines (its `debug` setting chooses which) on
    /// stderr, stamped, to see what the client did around a fault.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("{} librdkafka {level:?} {fac}: {log_message}", now_ms());
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
        match result {
            Ok(message) => {
                self.counts.acked.fetch_add(1, Ordering::Relaxed);
                self.out.emit(&Event::ProducerSendSuccess {
                    timestamp: now_ms(),
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: text(message.key()),
                    value: text(message.payload()).unwrap_or_default(),
                });
            }
            Err((error, message)) => {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                let (exception, retriable) = classify(error);
                self.out.emit(&Event::ProducerSendError {
                    timestamp: now_ms(),
                    topic: message.topic().to_string(),
                    key: text(message.key()),
                    value: text(message.payload()).unwrap_or_default(),
                    exception,
                    message: error.to_string(),
                    retriable,
                });
            }
        }
    }
}

/// The error's Kafka name (`NOT_ENOUGH_REPLICAS`) and whether Kafka counts
/// it retriable (a `RetriableException`).
pub fn classify(error: &KafkaError) -> (String, bool) {
    let Some(code) = error.rdkafka_error_code() else {
        return (error.to_string(), false);
    };
    use RDKafkaErrorCode as C;
    let retriable = matches!(
        code,
        C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::RequestTimedOut
            | C::NetworkException
            | C::UnknownTopicOrPartition
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
    );
    (screaming_snake(&format!("{code:?}")), retriable)
}

/// `NotEnoughReplicas` → `NOT_ENOUGH_REPLICAS`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn create(options: &Options, counts: &Arc<Counts>) -> Result<BaseProducer<Context>, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.bootstrap)
        .set("acks", &options.acks)
        .set("enable.idempotence", options.idempotence.to_string())
        .set(
            "delivery.timeout.ms",
            options.delivery_timeout_ms.to_string(),
        )
        .set("statistics.interval.ms", "1000");
    if let Some(retries) = options.retries {
        config.set("retries", retries.to_string());
    }
    for (k, v) in &options.config {
        config.set(k, v);
    }
    // librdkafka's log lines come through only up to this level; with its
    // `debug` setting, all of them.
    config.set_log_level(if options.config.iter().any(|(k, _)| k == "debug") {
        rdkafka::config::RDKafkaLogLevel::Debug
    } else {
        rdkafka::config::RDKafkaLogLevel::Warning
    });
    let context = Context {
        out: options.out.clone(),
        counts: counts.clone(),
    };
    config
        .create_with_context(context)
        .map_err(|e| format!("creating the producer: {e}"))
}

/// Prints the producer's fatal error, if it has one; true if so.
fn report_fatal(out: &Sink, producer: &BaseProducer<Context>) -> bool {
    let Some((code, reason)) = producer.client().fatal_error() else {
        return false;
    };
    out.emit(&Event::ProducerFatalError {
        timestamp: now_ms(),
        exception: screaming_snake(&format!("{code:?}")),
        message: reason,
    });
    true
}

/// After a fatal error: lets every queued message fail (each gets its
/// `producer_send_error`) and returns a new producer.
fn replace(
    options: &Options,
    counts: &Arc<Counts>,
    producer: BaseProducer<Context>,
) -> Result<BaseProducer<Context>, String> {
    let _ = producer.flush(Duration::from_secs(5));
    counts
        .retries_before
        .fetch_add(counts.retries.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    drop(producer);
    create(options, counts)
}

/// Produces until `max_messages` are sent or `stop` says so, then waits
/// for every answer; returns how many messages it sent.
pub fn run(options: Options, stop: &dyn Fn() -> bool) -> Result<u64, String> {
    let counts = Arc::new(Counts::default());
    let mut producer = create(&options, &counts)?;
    let out = options.out.clone();
    out.emit(&Event::StartupComplete {
        timestamp: now_ms(),
    });
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut next_report = start + REPORT_EVERY;
    let tool_data = |sent: u64| {
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let (acked, errors, retries) = (
            counts.acked.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
            counts.retries_before.load(Ordering::Relaxed) + counts.retries.load(Ordering::Relaxed),
        );
        Event::ToolData {
            timestamp: now_ms(),
            sent,
            acked,
            errors,
            retries,
            target_throughput: options.throughput,
            avg_throughput: acked as f64 / secs,
            error_rate: errors as f64 / secs,
            retry_rate: retries as f64 / secs,
        }
    };
    while (options.max_messages < 0 || (sent as i64) < options.max_messages) && !stop() {
        if report_fatal(&out, &producer) {
            producer = replace(&options, &counts, producer)?;
        }
        if options.throughput > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / options.throughput);
            let now = Instant::now();
            if due > now {
                producer.poll(due - now);
                continue;
            }
        }
        let value = format!("{}.{sent}", options.value_prefix);
        let record: BaseRecord<'_, (), str> = BaseRecord::to(&options.topic).payload(&value);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            // Checked at the top of the loop: the message is sent again by
            // the new producer.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _)) => {}
            Err((e, _)) => return Err(format!("sending: {e}")),
        }
        producer.poll(Duration::ZERO);
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            out.emit(&tool_data(sent));
        }
    }
    // Whatever is in flight gets its answer (or its error) before the end.
    let flush_for = Duration::from_millis(options.delivery_timeout_ms.saturating_add(5_000));
    let _ = producer.flush(flush_for);
    report_fatal(&out, &producer);
    drop(producer);
    out.emit(&tool_data(sent));
    out.emit(&Event::ShutdownComplete {
        timestamp: now_ms(),
    });
    Ok(sent)
}

/// How often `tool_data` is printed while running.
const REPORT_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_get_kafkas_names_and_retriability() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas);
        assert_eq!(classify(&e), ("NOT_ENOUGH_REPLICAS".to_string(), true));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&e), ("MESSAGE_SIZE_TOO_LARGE".to_string(), false));
    }
}
