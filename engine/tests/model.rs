//! Model-based test: random sequences of append, read, truncate, roll,
//! retention and reopen against a plain in-memory model of the log, with
//! proptest shrinking failures to a minimal sequence.

mod common;

use std::path::PathBuf;

use common::{split_batches, without_offsets};
use compio::driver::DriverType;
use proptest::prelude::*;
use sluice_engine::io::Fs;
use sluice_engine::log::{AppendMode, Log};
use sluice_engine::sim::SimFs;
use sluice_engine::{Epoch, LogConfig, Offset};

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_len: usize,
    },
    Read {
        at: u16,
        max_bytes: usize,
    },
    Truncate {
        at: u16,
    },
    Roll,
    Retention,
    /// Drop the log without closing it (a process crash: the page cache
    /// keeps every write) and open it again.
    Reopen,
    CloseAndReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..400).prop_map(|(records, value_len)| Op::Append { records, value_len }),
        3 => (any::<u16>(), 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Roll),
        1 => Just(Op::Retention),
        1 => Just(Op::Reopen),
        1 => Just(Op::CloseAndReopen),
    ]
}

/// The model: batches as (base offset, last offset, bytes without offsets).
#[derive(Debug, Default)]
struct Model {
    start: i64,
    batches: Vec<(i64, i64, Vec<u8>)>,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(self.start, |b| b.1 + 1)
    }

    /// An offset in [start, end] picked by `at`.
    fn pick(&self, at: u16) -> i64 {
        let span = (self.end() - self.start + 1) as u64;
        self.start + (u64::from(at) % span) as i64
    }
}

const NOW: u64 = 1_700_000_000_000;

async fn open(sim: &SimFs, config: &LogConfig) -> Log {
    Log::open(
        Fs::Sim(sim.clone()),
        PathBuf::from("/d/t-0"),
        config.clone(),
        NOW,
    )
    .await
    .unwrap()
    .0
}

async fn run(ops: Vec<Op>, segment_bytes: u64, retention_bytes: u64) -> Result<(), TestCaseError> {
    let config = LogConfig {
        segment_bytes,
        index_interval_bytes: 300,
        retention_bytes: Some(retention_bytes),
        retention_ms: None,
        ..LogConfig::default()
    };
    let sim = SimFs::new();
    let mut log = open(&sim, &config).await;
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { records, value_len } => {
                let b = common::batch_with(
                    records,
                    value_len,
                    NOW as i64,
                    kafka_protocol::records::Compression::None,
                    step as u8,
                );
                let info = log
                    .append(
                        b.clone(),
                        AppendMode::Leader {
                            epoch: Epoch(1),
                            keep: true,
                        },
                        NOW,
                    )
                    .await
                    .unwrap();
                prop_assert_eq!(info.base_offset.0, model.end());
                model
                    .batches
                    .push((info.base_offset.0, info.last_offset.0, without_offsets(&b)));
            }
            Op::Read { at, max_bytes } => {
                let from = model.pick(at);
                let r = log.read(Offset(from), max_bytes, None, true).await.unwrap();
                let got = split_batches(&r.records);
                let expected: Vec<_> = model.batches.iter().filter(|b| b.1 >= from).collect();
                prop_assert!(got.len() <= expected.len());
                if from < model.end() {
                    prop_assert!(!got.is_empty(), "a read inside the log returns a batch");
                }
                let mut total = 0;
                for ((base, bytes), want) in got.iter().zip(&expected) {
                    prop_assert_eq!(*base, want.0);
                    prop_assert_eq!(&without_offsets(bytes), &want.2);
                    total += bytes.len();
                }
                prop_assert!(got.len() <= 1 || total <= max_bytes);
                if let Some(next) = expected.get(got.len()).filter(|_| !got.is_empty()) {
                    // Stopped early only because the next batch did not fit,
                    // or (as in Kafka) because it is in the next segment.
                    let next_len = log
                        .read(Offset(next.0), 1, None, true)
                        .await
                        .unwrap()
                        .records
                        .len();
                    let next_segment = log.segment_bases().contains(&Offset(next.0));
                    prop_assert!(next_segment || total + next_len > max_bytes);
                }
            }
            Op::Truncate { at } => {
                let to = model.pick(at);
                log.truncate_to(Offset(to), NOW).await.unwrap();
                if to <= model.start {
                    model.batches.clear();
                    model.start = to;
                } else {
                    model.batches.retain(|b| b.1 < to);
                }
            }
            Op::Roll => {
                let before = log.segment_count();
                let empty_active = log.log_end_offset() == *log.segment_bases().last().unwrap();
                log.roll(NOW).await.unwrap();
                let expected = if empty_active { before } else { before + 1 };
                prop_assert_eq!(log.segment_count(), expected);
            }
            Op::Retention => {
                log.apply_retention(NOW).await.unwrap();
                let start = log.log_start_offset().0;
                prop_assert!(start >= model.start);
                prop_assert!(
                    start == model.end() || model.batches.iter().any(|b| b.0 == start),
                    "the log starts on a batch boundary"
                );
                model.batches.retain(|b| b.0 >= start);
                model.start = start;
            }
            Op::Reopen => {
                drop(log);
                log = open(&sim, &config).await;
            }
            Op::CloseAndReopen => {
                log.close(NOW).await.unwrap();
                log = open(&sim, &config).await;
            }
        }
        prop_assert_eq!(log.log_start_offset().0, model.start, "after {:?}", step);
        prop_assert_eq!(log.log_end_offset().0, model.end(), "after {:?}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_a_list_of_batches(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes in 600u64..6000,
        retention_bytes in 1000u64..20000,
    ) {
        let rt = common::runtime(DriverType::Poll).expect("poll driver");
        rt.block_on(run(ops, segment_bytes, retention_bytes))?;
    }
}
