//! The client-side signals of a reliable pipeline, for a monitoring system
//! to scrape: the producer's totals and its error and retry rates, each
//! consumer's records read and its lag per partition. Kept from the same
//! events the tool prints, and served as Prometheus text on
//! `--metrics-listener HOST:PORT` (`GET /metrics`, one connection at a
//! time, requests read up to [`REQUEST_MAX`] bytes).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::Event;

/// The most of a request read before answering.
const REQUEST_MAX: usize = 8192;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Each series' latest value, by name and labels.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, String), f64>>,
}

/// (name, help, type) of every series, in the order they are rendered.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "sluice_verify_producer_sent_total",
        "Messages handed to the client.",
        "counter",
    ),
    (
        "sluice_verify_producer_acked_total",
        "Messages the cluster acknowledged.",
        "counter",
    ),
    (
        "sluice_verify_producer_errors_total",
        "Messages the client gave up on.",
        "counter",
    ),
    (
        "sluice_verify_producer_retries_total",
        "Produce requests the client retried.",
        "counter",
    ),
    (
        "sluice_verify_producer_error_rate",
        "Errors per second over the run.",
        "gauge",
    ),
    (
        "sluice_verify_producer_retry_rate",
        "Retries per second over the run.",
        "gauge",
    ),
    (
        "sluice_verify_consumer_records_total",
        "Records read.",
        "counter",
    ),
    (
        "sluice_verify_consumer_lag",
        "High watermark minus position, per partition.",
        "gauge",
    ),
];

impl Metrics {
    fn set(&self, name: &'static str, labels: String, value: f64) {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name, labels), value);
    }

    fn add(&self, name: &'static str, value: f64) {
        *self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name, String::new()))
            .or_default() += value;
    }

    /// Takes what an event says.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::ToolData {
                sent,
                acked,
                errors,
                retries,
                error_rate,
                retry_rate,
                ..
            } => {
                self.set(
                    "sluice_verify_producer_sent_total",
                    String::new(),
                    *sent as f64,
                );
                self.set(
                    "sluice_verify_producer_acked_total",
                    String::new(),
                    *acked as f64,
                );
                self.set(
                    "sluice_verify_producer_errors_total",
                    String::new(),
                    *errors as f64,
                );
                self.set(
                    "sluice_verify_producer_retries_total",
                    String::new(),
                    *retries as f64,
                );
                self.set(
                    "sluice_verify_producer_error_rate",
                    String::new(),
                    *error_rate,
                );
                self.set(
                    "sluice_verify_producer_retry_rate",
                    String::new(),
                    *retry_rate,
                );
            }
            Event::RecordsConsumed { count, .. } => {
                self.add("sluice_verify_consumer_records_total", *count as f64)
            }
            Event::ConsumerLag { partitions, .. } => {
                for p in partitions {
                    let labels = format!(
                        "topic=\"{}\",partition=\"{}\"",
                        p.topic.replace(['\\', '"', '\n'], "_"),
                        p.partition
                    );
                    self.set("sluice_verify_consumer_lag", labels, p.lag as f64);
                }
            }
            _ => {}
        }
    }

    /// The Prometheus text exposition of every series seen.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, help, kind) in FAMILIES {
            let mut family = series
                .range((*name, String::new())..)
                .take_while(|((n, _), _)| n == name);
            let Some(first) = family.next() else {
                continue;
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((_, labels), value) in std::iter::once(first).chain(family) {
                if labels.is_empty() {
                    out.push_str(&format!("{name} {value}\n"));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {value}\n"));
                }
            }
        }
        out
    }
}

/// Serves `metrics` on `addr` from a thread of its own; returns the
/// address bound (port 0 picks one).
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<std::net::SocketAddr, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("--metrics-listener {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &metrics);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_MAX {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let (status, body) = if line.starts_with("GET /metrics") || line.starts_with("GET / ") {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "GET /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PartitionLag;

    #[test]
    fn events_become_series_served_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.observe(&Event::ToolData {
            timestamp: 0,
            sent: 10,
            acked: 9,
            errors: 1,
            retries: 2,
            target_throughput: 5.0,
            avg_throughput: 4.5,
            error_rate: 0.5,
            retry_rate: 1.0,
        });
        metrics.observe(&Event::ConsumerLag {
            timestamp: 0,
            partitions: vec![PartitionLag {
                topic: "t".into(),
                partition: 2,
                lag: 7,
            }],
        });
        let addr = serve("127.0.0.1:0", metrics).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.contains("sluice_verify_producer_acked_total 9\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_verify_producer_error_rate 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_verify_consumer_lag{topic=\"t\",partition=\"2\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_verify_consumer_lag gauge"),
            "{text}"
        );
        assert!(
            !text.contains("records_total"),
            "no series never seen: {text}"
        );
    }
}
