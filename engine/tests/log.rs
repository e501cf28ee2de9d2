//! The log's operations, on every I/O backend (io_uring, epoll/thread pool,
//! crash simulator).

mod common;

use common::{batch, on_each_backend, split_batches, without_offsets};
use sluice_engine::io::Fs;
use sluice_engine::log::{AppendMode, Durability, Log};
use sluice_engine::{Epoch, Error, LogConfig, Offset, Unread};

const NOW: u64 = 1_700_000_000_000;
const LEADER: AppendMode = AppendMode::Leader {
    epoch: Epoch(3),
    keep: true,
};
/// A leader's append the log may not keep in its tail: reads of it go to
/// the segment files.
const LEADER_UNKEPT: AppendMode = AppendMode::Leader {
    epoch: Epoch(3),
    keep: false,
};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        retention_ms: None,
        ..LogConfig::default()
    }
}

async fn open(fs: &Fs, dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(fs.clone(), dir.to_path_buf(), config, NOW)
        .await
        .expect("open")
        .0
}

/// Appends `n` batches of `records` records each; returns what was sent.
async fn fill(log: &mut Log, n: usize, records: usize, value_len: usize) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for i in 0..n {
        let b = batch(records, value_len, NOW as i64 + i as i64);
        log.append(b.clone(), LEADER, NOW).await.expect("append");
        sent.push(b);
    }
    sent
}

async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = log.log_start_offset();
    while from < log.log_end_offset() {
        let r = log.read(from, 1 << 20, None, true).await.expect("read");
        assert!(r.next_offset > from, "a read makes progress");
        out.extend(split_batches(&r.records));
        from = r.next_offset;
    }
    out
}

#[test]
fn append_assigns_contiguous_offsets_and_reads_return_the_batches_as_sent() {
    on_each_backend(|backend, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let mut expected_base = 0;
        let mut sent = Vec::new();
        for count in [1usize, 5, 3] {
            let b = batch(count, 100, NOW as i64);
            let info = log.append(b.clone(), LEADER, NOW).await.unwrap();
            assert_eq!(info.base_offset, Offset(expected_base), "{backend:?}");
            assert_eq!(info.last_offset, Offset(expected_base + count as i64 - 1));
            assert_eq!(info.records, count as u64);
            assert_eq!(info.durability, Durability::PageCache);
            expected_base += count as i64;
            sent.push(b);
        }
        assert_eq!(log.log_end_offset(), Offset(9));
        let stored = read_all(&log).await;
        assert_eq!(stored.len(), 3);
        for ((base, bytes), (sent, want_base)) in stored.iter().zip(sent.iter().zip([0, 1, 6])) {
            assert_eq!(*base, want_base);
            assert_eq!(without_offsets(bytes), without_offsets(sent));
            let header = sluice_engine::batch::validate(bytes, usize::MAX).unwrap();
            assert_eq!(header.partition_leader_epoch, 3);
        }
        // A read from inside a batch returns that whole batch.
        let r = log.read(Offset(3), 1 << 20, None, true).await.unwrap();
        assert_eq!(split_batches(&r.records)[0].0, 1);
    });
}

#[test]
fn reads_honour_max_bytes_min_one_batch_and_the_upper_bound() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let sent = fill(&mut log, 4, 2, 300).await;
        let one = sent[0].len();
        // max_bytes below one batch: nothing, unless min_one_batch.
        let r = log.read(Offset(0), one - 1, None, false).await.unwrap();
        assert!(r.records.is_empty());
        assert_eq!(r.next_offset, Offset(0));
        let r = log.read(Offset(0), one - 1, None, true).await.unwrap();
        assert_eq!(r.records.len(), one);
        assert_eq!(r.next_offset, Offset(2));
        // Whole batches only: 2.5 batches' worth returns two.
        let r = log.read(Offset(0), one * 5 / 2, None, true).await.unwrap();
        assert_eq!(split_batches(&r.records).len(), 2);
        // The upper bound (a high watermark) hides batches that reach it.
        let r = log
            .read(Offset(0), 1 << 20, Some(Offset(5)), true)
            .await
            .unwrap();
        assert_eq!(r.next_offset, Offset(4));
        let r = log
            .read(Offset(4), 1 << 20, Some(Offset(4)), true)
            .await
            .unwrap();
        assert!(r.records.is_empty());
        // At the log end: empty. Past it or before the start: out of range.
        let r = log.read(Offset(8), 1 << 20, None, true).await.unwrap();
        assert!(r.records.is_empty());
        assert!(matches!(
            log.read(Offset(9), 100, None, true).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(Offset(-1), 100, None, true).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
    });
}

/// The bytes a read returned, whether in memory or named as a file range
/// or a tail's buffers.
fn range_bytes(
    result: &sluice_engine::ReadResult,
    range: &Option<sluice_engine::Unread>,
) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    match range {
        None => result.records.to_vec(),
        Some(unread) => {
            assert!(
                result.records.is_empty(),
                "unread bytes are not in the result"
            );
            match unread {
                Unread::File(range) => {
                    let file = std::fs::File::from(range.fd.try_clone().unwrap());
                    let mut out = vec![0; range.len];
                    file.read_exact_at(&mut out, range.pos).unwrap();
                    out
                }
                Unread::Memory(chunks) => chunks.concat(),
            }
        }
    }
}

#[test]
fn a_range_read_names_the_same_batches_a_read_returns() {
    on_each_backend(|backend, fs, dir| async move {
        // Batches of many sizes over segments of 16 KiB, indexed every
        // 512 bytes, so that reads jump by the index and cross rolls.
        let config = LogConfig {
            segment_bytes: 16 * 1024,
            index_interval_bytes: 512,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config).await;
        // The newest 64 batches stay in the log's tail: reads of them come
        // from memory, the others from the files.
        for i in 0..120usize {
            let b = batch(1 + i % 4, 40 + (i * 37) % 900, NOW as i64);
            log.append(b, LEADER, NOW).await.unwrap();
        }
        let end = log.log_end_offset().0;
        let (mut ranges, mut tails) = (0, 0);
        for from in (0..end).step_by(7) {
            for max in [100usize, 700, 3000, 9000, 40_000] {
                for upper in [None, Some(Offset(from + 5)), Some(Offset(end - 3))] {
                    for min_one in [false, true] {
                        let want = log.read(Offset(from), max, upper, min_one).await.unwrap();
                        let (got, range) = log
                            .read_range(Offset(from), max, upper, min_one, 0)
                            .await
                            .unwrap();
                        let what = format!("{backend:?} from {from} max {max} upper {upper:?}");
                        assert_eq!(got.next_offset, want.next_offset, "{what}");
                        assert_eq!(got.log_end_offset, want.log_end_offset, "{what}");
                        assert_eq!(range_bytes(&got, &range), want.records.to_vec(), "{what}");
                        ranges += usize::from(matches!(range, Some(Unread::File(_))));
                        tails += usize::from(matches!(range, Some(Unread::Memory(_))));
                    }
                }
            }
        }
        // Real files give ranges; the simulator has no descriptor to give.
        assert_eq!(ranges > 0, !matches!(fs, Fs::Sim(_)), "{backend:?}");
        assert!(tails > 0, "{backend:?}");
        // Below `range_min`, the bytes come in memory.
        let (small, range) = log
            .read_range(Offset(0), 1 << 20, None, true, usize::MAX)
            .await
            .unwrap();
        assert!(range.is_none() && !small.records.is_empty());
    });
}

/// Reads at the log end come from the tail while it continues the log,
/// with the bytes the files hold; a truncation or an append the log may
/// not keep (a follower's, or one its caller says not to) ends that, and
/// the next kept append starts it again.
#[test]
fn reads_at_the_log_end_come_from_the_tail_only_while_it_continues_the_log() {
    on_each_backend(|backend, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        // (from, whether from memory); the bytes must match a plain read.
        async fn source(log: &Log, from: i64) -> Option<bool> {
            let want = log.read(Offset(from), 1 << 20, None, true).await.unwrap();
            let (got, unread) = log
                .read_range(Offset(from), 1 << 20, None, true, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                range_bytes(&got, &unread),
                want.records.to_vec(),
                "from {from}"
            );
            assert_eq!(got.next_offset, want.next_offset, "from {from}");
            (!want.records.is_empty()).then_some(matches!(unread, Some(Unread::Memory(_))))
        }
        fill(&mut log, 6, 5, 100).await; // offsets 0..30
        assert_eq!(source(&log, 25).await, Some(true), "{backend:?}");
        assert_eq!(source(&log, 0).await, Some(true), "{backend:?}");
        // Cut back to 20: the tail is gone; what is left comes from files.
        log.truncate_to(Offset(20), NOW).await.unwrap();
        assert_eq!(source(&log, 15).await, Some(false), "{backend:?}");
        // A kept append starts it again, at the new end.
        log.append(batch(5, 100, NOW as i64), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(source(&log, 20).await, Some(true), "{backend:?}");
        assert_eq!(source(&log, 15).await, Some(false), "{backend:?}");
        // A follower's append (the leader's offsets kept) is not kept, and
        // ends the tail: the batches before it come from the files too.
        let mut b = batch(5, 100, NOW as i64);
        sluice_engine::batch::patch(&mut b, 25, 4).unwrap();
        log.append(b, AppendMode::Follower, NOW).await.unwrap();
        assert_eq!(source(&log, 25).await, Some(false), "{backend:?}");
        assert_eq!(source(&log, 20).await, Some(false), "{backend:?}");
        let (kept, unkept) = (
            AppendMode::Leader {
                epoch: Epoch(4),
                keep: true,
            },
            AppendMode::Leader {
                epoch: Epoch(4),
                keep: false,
            },
        );
        log.append(batch(5, 100, NOW as i64), kept, NOW)
            .await
            .unwrap();
        assert_eq!(source(&log, 30).await, Some(true), "{backend:?}");
        log.append(batch(5, 100, NOW as i64), unkept, NOW)
            .await
            .unwrap();
        assert_eq!(source(&log, 35).await, Some(false), "{backend:?}");
        assert_eq!(source(&log, 30).await, Some(false), "{backend:?}");
    });
}

#[test]
fn a_range_read_walks_where_the_index_jumps_to_a_batch_it_cannot_parse() {
    on_each_backend(|backend, fs, dir| async move {
        let config = LogConfig {
            index_interval_bytes: 1,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config.clone()).await;
        let a = batch(2, 300, NOW as i64);
        let b = batch(2, 300, NOW as i64);
        let c = batch(2, 5000, NOW as i64);
        for x in [&a, &b, &c] {
            log.append(x.clone(), LEADER_UNKEPT, NOW).await.unwrap();
        }
        // The third batch is now larger than a batch may be: a header
        // parse of it fails. Reading exactly the first two must not need it.
        log.set_config(LogConfig {
            max_batch_bytes: 2000,
            ..config
        })
        .unwrap();
        let max = a.len() + b.len();
        let want = log.read(Offset(0), max, None, false).await.unwrap();
        let (got, range) = log
            .read_range(Offset(0), max, None, false, 0)
            .await
            .unwrap();
        assert_eq!(want.records.len(), max, "{backend:?}");
        assert_eq!(got.next_offset, Offset(4), "{backend:?}");
        assert_eq!(
            range_bytes(&got, &range),
            want.records.to_vec(),
            "{backend:?}"
        );
    });
}

#[test]
fn a_range_stays_readable_after_retention_deletes_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::Os;
    compio::runtime::Runtime::new().unwrap().block_on(async {
        let mut log = open(&fs, dir.path(), small_segments()).await;
        for _ in 0..40 {
            log.append(batch(2, 300, NOW as i64), LEADER_UNKEPT, NOW)
                .await
                .unwrap();
        }
        let want = log.read(Offset(0), 4096, None, true).await.unwrap();
        let (got, range) = log
            .read_range(Offset(0), 4096, None, true, 0)
            .await
            .unwrap();
        assert!(matches!(range, Some(sluice_engine::Unread::File(_))));
        log.delete_records_before(Offset(60)).await.unwrap();
        assert!(log.log_start_offset() > Offset(0));
        assert_eq!(range_bytes(&got, &range), want.records.to_vec());
    });
}

#[test]
fn segments_roll_at_segment_bytes_and_reads_cross_them() {
    on_each_backend(|backend, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        let sent = fill(&mut log, 40, 3, 200).await;
        assert!(
            log.segment_count() > 5,
            "{backend:?}: {}",
            log.segment_count()
        );
        for base in log.segment_bases() {
            assert!(log.index_of(base).is_some());
        }
        let stored = read_all(&log).await;
        assert_eq!(stored.len(), sent.len());
        for (i, (base, bytes)) in stored.iter().enumerate() {
            assert_eq!(*base, i as i64 * 3);
            assert_eq!(without_offsets(bytes), without_offsets(&sent[i]));
        }
        // Every offset can be found through the indexes.
        for offset in 0..log.log_end_offset().0 {
            let r = log.read(Offset(offset), 1, None, true).await.unwrap();
            let (base, _) = split_batches(&r.records)[0];
            assert_eq!(base, offset / 3 * 3);
        }
        // Files are named by base offset, as Kafka names them.
        if backend != common::Backend::Sim {
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.contains(&"00000000000000000000.log".to_string()));
            assert!(names.contains(&"00000000000000000000.index".to_string()));
            assert!(names.contains(&"00000000000000000000.timeindex".to_string()));
        }
    });
}

#[test]
fn a_clean_close_leaves_nothing_to_recover_and_loses_nothing() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        let sent = fill(&mut log, 25, 2, 150).await;
        let end = log.log_end_offset();
        log.close(NOW).await.unwrap();
        let (log, report) = Log::open(fs.clone(), dir.clone(), small_segments(), NOW)
            .await
            .unwrap();
        assert_eq!(report.bytes_scanned, 0, "{report:?}");
        assert_eq!(report.bytes_truncated, 0);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.flushed_offset(), end);
        let stored = read_all(&log).await;
        assert_eq!(stored.len(), sent.len());
        // Appends continue where the log ended.
        let mut log = log;
        let info = log.append(batch(1, 10, 0), LEADER, NOW).await.unwrap();
        assert_eq!(info.base_offset, end);
    });
}

#[test]
fn flush_messages_decides_durability_and_the_flushed_offset() {
    on_each_backend(|_, fs, dir| async move {
        let config = LogConfig {
            flush_messages: Some(4),
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config).await;
        let a = log.append(batch(3, 10, 0), LEADER, NOW).await.unwrap();
        assert_eq!(a.durability, Durability::PageCache);
        assert_eq!(log.flushed_offset(), Offset(0));
        let b = log.append(batch(1, 10, 0), LEADER, NOW).await.unwrap();
        assert_eq!(b.durability, Durability::Flushed);
        assert_eq!(log.flushed_offset(), Offset(4));
        log.set_flush_limits(None, Some(10));
        let c = log.append(batch(1, 10, 0), LEADER, NOW).await.unwrap();
        assert_eq!(c.durability, Durability::PageCache);
        assert_eq!(log.next_flush_deadline_ms(), Some(NOW + 10));
        assert!(!log.maybe_flush(NOW + 9).await.unwrap());
        assert!(log.maybe_flush(NOW + 10).await.unwrap());
        assert_eq!(log.flushed_offset(), Offset(5));
    });
}

#[test]
fn truncate_to_drops_whole_batches_and_survives_reopen() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        fill(&mut log, 30, 2, 150).await;
        let segments_before = log.segment_count();
        // 21 is inside the batch [20, 21]: the whole batch goes.
        log.truncate_to(Offset(21), NOW).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(20));
        assert!(log.segment_count() < segments_before);
        let stored = read_all(&log).await;
        assert_eq!(stored.last().unwrap().0, 18);
        let info = log.append(batch(2, 10, 0), LEADER, NOW).await.unwrap();
        assert_eq!(info.base_offset, Offset(20));
        drop(log);
        let (log, _) = Log::open(fs.clone(), dir.clone(), small_segments(), NOW)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(22));
        assert_eq!(read_all(&log).await.len(), 11);
    });
}

#[test]
fn retention_deletes_whole_old_segments_and_moves_the_log_start() {
    on_each_backend(|_, fs, dir| async move {
        let config = LogConfig {
            retention_bytes: Some(8192),
            ..small_segments()
        };
        let mut log = open(&fs, &dir, config).await;
        fill(&mut log, 40, 3, 200).await;
        let before = log.size_bytes();
        let deleted = log.apply_retention(NOW).await.unwrap();
        assert!(deleted > 0);
        assert!(log.size_bytes() < before);
        assert!(
            log.size_bytes() >= 8192 - 4096,
            "keeps about retention.bytes"
        );
        let start = log.log_start_offset();
        assert_eq!(start, log.segment_bases()[0]);
        assert!(matches!(
            log.read(Offset(0), 100, None, true).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log).await[0].0, start.0);

        // By time: every batch is older than retention.ms, so all segments
        // go, the active one after a roll; the log end stays.
        let end = log.log_end_offset();
        let config = LogConfig {
            retention_ms: Some(1000),
            ..small_segments()
        };
        drop(log);
        let mut log = open(&fs, &dir, config).await;
        log.apply_retention(NOW + 10_000).await.unwrap();
        assert_eq!(log.log_start_offset(), end);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.size_bytes(), 0);
    });
}

#[test]
fn retention_of_an_expired_active_segment_leaves_no_files_of_it_behind() {
    on_each_backend(|backend, fs, dir| async move {
        let config = LogConfig {
            retention_ms: Some(1000),
            ..small_segments()
        };
        let mut log = open(&fs, &dir, config).await;
        fill(&mut log, 3, 2, 100).await;
        // The only segment has expired: retention rolls it, which starts its
        // background flush, and deletes it.
        assert_eq!(log.apply_retention(NOW + 10_000).await.unwrap(), 1);
        log.reap_background_flushes(true).await.unwrap();
        let names = fs.list_dir(&dir).await.unwrap();
        let bases: Vec<String> = log
            .segment_bases()
            .iter()
            .map(|b| format!("{:020}", b.0))
            .collect();
        for name in &names {
            if let Some(stem) = name
                .strip_suffix(".log")
                .or_else(|| name.strip_suffix(".index"))
                .or_else(|| name.strip_suffix(".timeindex"))
            {
                assert!(
                    bases.iter().any(|b| b == stem),
                    "{backend:?}: {name} belongs to no segment; files: {names:?}"
                );
            }
        }
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_at_or_after_it() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        for i in 0..30i64 {
            log.append(batch(2, 200, 1000 + i * 10), LEADER, NOW)
                .await
                .unwrap();
        }
        let cases = [
            (0, Some((0, 1000))),
            (1000, Some((0, 1000))),
            (1001, Some((2, 1010))),
            (1155, Some((32, 1160))),
            (1290, Some((58, 1290))),
            (1291, None),
        ];
        for (ts, want) in cases {
            let got = log.offset_for_timestamp(ts).await.unwrap();
            assert_eq!(got, want.map(|(o, t)| (Offset(o), t)), "timestamp {ts}");
        }
    });
}

#[test]
fn leader_epochs_are_cached_checkpointed_and_answer_offset_for_leader_epoch() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        for (epoch, n) in [(1, 2), (4, 3), (7, 1)] {
            for _ in 0..n {
                log.append(
                    batch(5, 10, 0),
                    AppendMode::Leader {
                        epoch: Epoch(epoch),
                        keep: true,
                    },
                    NOW,
                )
                .await
                .unwrap();
            }
        }
        let check = |log: &Log| {
            assert_eq!(log.end_offset_for_epoch(Epoch(0)), (Epoch(-1), Offset(-1)));
            assert_eq!(log.end_offset_for_epoch(Epoch(1)), (Epoch(1), Offset(10)));
            assert_eq!(log.end_offset_for_epoch(Epoch(3)), (Epoch(1), Offset(10)));
            assert_eq!(log.end_offset_for_epoch(Epoch(4)), (Epoch(4), Offset(25)));
            assert_eq!(log.end_offset_for_epoch(Epoch(7)), (Epoch(7), Offset(30)));
        };
        check(&log);
        drop(log);
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        check(&log);
        // 17 lies in the batch [15, 19]: the log ends at 15, in epoch 4.
        log.truncate_to(Offset(17), NOW).await.unwrap();
        assert_eq!(log.end_offset_for_epoch(Epoch(7)), (Epoch(4), Offset(15)));
    });
}

#[test]
fn a_fetch_whose_last_epoch_this_log_never_had_or_ended_earlier_diverges() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        // Epoch 1: offsets 0..10, epoch 4: 10..25 (two batches each of 5).
        for (epoch, n) in [(1, 2), (4, 3)] {
            for _ in 0..n {
                let b = batch(5, 10, NOW as i64);
                log.append(
                    b,
                    AppendMode::Leader {
                        epoch: Epoch(epoch),
                        keep: true,
                    },
                    NOW,
                )
                .await
                .unwrap();
            }
        }
        // (last fetched epoch, fetch offset) → divergence, as a table.
        let cases = [
            // No epoch given (a consumer, or an empty follower): never.
            (-1, 3, None),
            // A prefix of this log, in its epoch: none.
            (1, 10, None),
            (4, 25, None),
            (4, 12, None),
            // Epoch 1 ended at 10 here; the fetcher has more of it.
            (1, 12, Some((1, 10))),
            // Epochs this log never had: the largest below and its end.
            (3, 12, Some((1, 10))),
            (5, 25, Some((4, 25))),
            (0, 2, Some((-1, 0))),
            // Nothing to compare at the log start: the offset decides.
            (0, 0, None),
            // Past the end in the latest epoch: the log end.
            (4, 30, Some((4, 25))),
        ];
        for (epoch, offset, want) in cases {
            let got = log
                .diverging(Epoch(epoch), Offset(offset))
                .map(|(e, o)| (e.0, o.0));
            assert_eq!(
                got, want,
                "last fetched epoch {epoch}, fetch offset {offset}"
            );
        }
    });
}

#[test]
fn restart_at_empties_the_log_forgets_its_epochs_and_survives_reopen() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        fill(&mut log, 20, 5, 100).await;
        assert!(log.segment_count() > 1);
        // A leader whose log now starts at 500 (retention moved it).
        log.restart_at(Offset(500), NOW).await.unwrap();
        let check = |log: &Log| {
            assert_eq!(log.log_start_offset(), Offset(500));
            assert_eq!(log.log_end_offset(), Offset(500));
            assert_eq!(log.segment_count(), 1);
            assert!(log.epoch_cache().entries().is_empty());
        };
        check(&log);
        // The leader's batches follow from there, with their offsets.
        let mut b = batch(5, 100, NOW as i64);
        sluice_engine::batch::patch(&mut b, 500, 2).unwrap();
        log.append(b, AppendMode::Follower, NOW).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(505));
        assert_eq!(log.end_offset_for_epoch(Epoch(2)), (Epoch(2), Offset(505)));
        drop(log);
        let log = open(&fs, &dir, small_segments()).await;
        assert_eq!(log.log_start_offset(), Offset(500));
        assert_eq!(log.log_end_offset(), Offset(505));
        assert_eq!(read_all(&log).await.len(), 1);
        let mut empty = open(&fs, &dir.join("empty"), small_segments()).await;
        empty.restart_at(Offset(7), NOW).await.unwrap();
        drop(empty);
        check_empty_at(&open(&fs, &dir.join("empty"), small_segments()).await, 7);
    });
}

fn check_empty_at(log: &Log, at: i64) {
    assert_eq!(log.log_start_offset(), Offset(at));
    assert_eq!(log.log_end_offset(), Offset(at));
}

#[test]
fn bad_batches_are_rejected_with_typed_errors_and_change_nothing() {
    on_each_backend(|_, fs, dir| async move {
        let config = LogConfig {
            max_batch_bytes: 2000,
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config).await;
        let mut corrupt = batch(2, 50, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        type IsExpected = fn(&Error) -> bool;
        let cases: Vec<(Vec<u8>, IsExpected)> = vec![
            (corrupt, |e| matches!(e, Error::InvalidBatch(_))),
            (batch(2, 50, 0)[..70].to_vec(), |e| {
                matches!(e, Error::InvalidBatch(_))
            }),
            (Vec::new(), |e| matches!(e, Error::InvalidBatch(_))),
            (vec![0u8; 200], |e| matches!(e, Error::InvalidBatch(_))),
            (batch(3, 1000, 0), |e| {
                matches!(e, Error::BatchTooLarge { .. })
            }),
        ];
        for (bytes, is_expected) in cases {
            let err = log.append(bytes, LEADER, NOW).await.unwrap_err();
            assert!(is_expected(&err), "{err}");
        }
        assert_eq!(log.log_end_offset(), Offset(0));
        assert_eq!(log.size_bytes(), 0);
        // Several batches in one append are fine; a good one still works.
        let mut two = batch(1, 10, 0);
        two.extend(batch(2, 10, 0));
        let info = log.append(two, LEADER, NOW).await.unwrap();
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(2)));
    });
}

#[test]
fn follower_appends_keep_the_leaders_offsets_and_must_continue_the_log() {
    on_each_backend(|_, fs, dir| async move {
        let mut leader = open(&fs, &dir.with_file_name("leader-0"), LogConfig::default()).await;
        fill(&mut leader, 3, 2, 10).await;
        let fetched = leader.read(Offset(0), 1 << 20, None, true).await.unwrap();
        let mut follower = open(&fs, &dir, LogConfig::default()).await;
        let info = follower
            .append(fetched.records.to_vec(), AppendMode::Follower, NOW)
            .await
            .unwrap();
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(5)));
        assert_eq!(
            follower.end_offset_for_epoch(Epoch(3)),
            (Epoch(3), Offset(6))
        );
        let err = follower
            .append(fetched.records.to_vec(), AppendMode::Follower, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NonContiguousAppend { .. }), "{err}");
    });
}

#[test]
fn a_follower_takes_several_idempotent_batches_and_answers_their_retries_as_leader() {
    use common::idempotent_batch;
    on_each_backend(|_, fs, dir| async move {
        let mut leader = open(&fs, &dir.with_file_name("leader-0"), LogConfig::default()).await;
        for seq in [0, 2] {
            leader
                .append(idempotent_batch(42, 0, seq, 2), LEADER, NOW)
                .await
                .unwrap();
        }
        let fetched = leader.read(Offset(0), 1 << 20, None, true).await.unwrap();
        let mut follower = open(&fs, &dir, LogConfig::default()).await;
        // Two batches of one idempotent producer in one follower append.
        follower
            .append(fetched.records.to_vec(), AppendMode::Follower, NOW)
            .await
            .unwrap();
        assert_eq!(follower.log_end_offset(), Offset(4));
        // As the next leader it knows the producer: a retry of the second
        // batch gets its original offsets, and the next sequence follows.
        let retry = follower
            .append(idempotent_batch(42, 0, 2, 2), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            (retry.base_offset, retry.last_offset),
            (Offset(2), Offset(3))
        );
        let next = follower
            .append(idempotent_batch(42, 0, 4, 1), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(next.base_offset, Offset(4));
    });
}

#[test]
fn recovery_truncates_a_torn_tail_and_keeps_flushed_batches() {
    on_each_backend(|backend, fs, dir| async move {
        let config = LogConfig {
            flush_messages: Some(1),
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config.clone()).await;
        fill(&mut log, 5, 2, 100).await;
        let end = log.log_end_offset();
        let size = log.size_bytes();
        drop(log);
        // A torn write: half a batch after the last good one.
        let torn = batch(2, 100, 0);
        let path = dir.join("00000000000000000000.log");
        match &fs {
            Fs::Sim(sim) => sim.corrupt(&path, size, &torn[..torn.len() / 2]).unwrap(),
            Fs::Os | Fs::OsRingWrites => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&torn[..torn.len() / 2], size).unwrap();
            }
        }
        // A stale recovery point makes recovery scan the segment.
        let rp = dir.join("recovery-point-checkpoint");
        match &fs {
            Fs::Sim(sim) => sim.corrupt(&rp, 0, b"garbage").unwrap(),
            Fs::Os | Fs::OsRingWrites => std::fs::write(&rp, b"garbage").unwrap(),
        }
        let (log, report) = Log::open(fs.clone(), dir.clone(), config, NOW)
            .await
            .unwrap();
        assert_eq!(
            report.bytes_truncated,
            (torn.len() / 2) as u64,
            "{backend:?} {report:?}"
        );
        assert!(report.truncation_reason.unwrap().contains("torn"));
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log).await.len(), 5);
    });
}

#[test]
fn retention_ms_uses_the_append_time_when_batches_carry_no_timestamp() {
    on_each_backend(|_, fs, dir| async move {
        let config = LogConfig {
            retention_ms: Some(60_000),
            ..small_segments()
        };
        let mut log = open(&fs, &dir, config).await;
        for _ in 0..20 {
            log.append(batch(2, 200, -1), LEADER, NOW).await.unwrap();
        }
        // A missing timestamp (-1) is not "older than everything".
        assert_eq!(log.apply_retention(NOW + 1_000).await.unwrap(), 0);
        assert_eq!(log.log_start_offset(), Offset(0));
        // Once the appends themselves are older than retention.ms, they go.
        assert!(log.apply_retention(NOW + 120_000).await.unwrap() > 0);
        assert_eq!(log.log_start_offset(), Offset(40));
    });
}

#[test]
fn idempotent_producers_get_duplicates_answered_and_gaps_refused_across_reopen() {
    use common::idempotent_batch;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let first = log
            .append(idempotent_batch(42, 0, 0, 3), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            (first.base_offset, first.last_offset),
            (Offset(0), Offset(2))
        );
        // The producer retries the same batch: same offsets, nothing appended.
        let retry = log
            .append(idempotent_batch(42, 0, 0, 3), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            (retry.base_offset, retry.last_offset),
            (Offset(0), Offset(2))
        );
        assert_eq!(log.log_end_offset(), Offset(3));
        let gap = log
            .append(idempotent_batch(42, 0, 5, 1), LEADER, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                gap,
                Error::OutOfOrderSequence {
                    expected: 3,
                    got: 5,
                    ..
                }
            ),
            "{gap}"
        );
        let next = log
            .append(idempotent_batch(42, 0, 3, 2), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(next.base_offset, Offset(3));
        // A batch group with two idempotent batches is refused, as Kafka does.
        let mut two = idempotent_batch(42, 0, 5, 1);
        two.extend(idempotent_batch(42, 0, 6, 1));
        assert!(matches!(
            log.append(two, LEADER, NOW).await,
            Err(Error::InvalidRecord(_))
        ));
        // The state survives a reopen: it is rebuilt from the log.
        drop(log);
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let again = log
            .append(idempotent_batch(42, 0, 3, 2), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(again.base_offset, Offset(3));
        assert_eq!(log.log_end_offset(), Offset(5));
        // A new epoch starts at 0 and fences the old one.
        log.append(idempotent_batch(42, 1, 0, 1), LEADER, NOW)
            .await
            .unwrap();
        let fenced = log
            .append(idempotent_batch(42, 0, 5, 1), LEADER, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(fenced, Error::InvalidProducerEpoch { .. }),
            "{fenced}"
        );
    });
}

#[test]
fn delete_records_moves_the_log_start_durably_and_drops_whole_segments_below_it() {
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        fill(&mut log, 40, 3, 200).await;
        let segments = log.segment_count();
        assert_eq!(
            log.delete_records_before(Offset(50)).await.unwrap(),
            Offset(50)
        );
        assert!(log.segment_count() < segments);
        assert!(matches!(
            log.read(Offset(49), 100, None, true).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        // The batch holding offset 50 starts at 48 and is returned whole.
        let r = log.read(Offset(50), 1, None, true).await.unwrap();
        assert_eq!(split_batches(&r.records)[0].0, 48);
        // Moving it back is a no-op; past the log end is out of range.
        assert_eq!(
            log.delete_records_before(Offset(10)).await.unwrap(),
            Offset(50)
        );
        assert!(matches!(
            log.delete_records_before(Offset(121)).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        drop(log);
        let log = open(&fs, &dir, small_segments()).await;
        assert_eq!(log.log_start_offset(), Offset(50));
    });
}

async fn snapshot_files(fs: &Fs, dir: &std::path::Path) -> Vec<i64> {
    let mut offsets: Vec<i64> = fs
        .list_dir(dir)
        .await
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_suffix(".snapshot")?.parse().ok())
        .collect();
    offsets.sort();
    offsets
}

#[test]
fn a_producer_whose_batches_delete_records_removed_is_forgotten_even_through_its_snapshot() {
    use common::idempotent_batch_at;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        let mut seq = 0;
        for _ in 0..100 {
            log.append(idempotent_batch_at(7, 0, seq, 3, NOW as i64), LEADER, NOW)
                .await
                .unwrap();
            seq += 3;
        }
        fill(&mut log, 40, 3, 200).await;
        assert!(log.segment_count() > 4);
        assert_eq!(log.producer_state().producer_count(), 1);
        // Every batch of producer 7 goes: so does its state, as in Kafka.
        let end = log.log_end_offset();
        log.delete_records_before(Offset(end.0 - 3)).await.unwrap();
        assert_eq!(log.producer_state().producer_count(), 0);
        log.close(NOW).await.unwrap();
        // Snapshots below the log start went, except the newest.
        assert_eq!(snapshot_files(&fs, &dir).await.len(), 1);

        // That snapshot still names producer 7; reopening does not bring
        // it back, since its batches are all below the log start.
        let mut log = open(&fs, &dir, small_segments()).await;
        assert_eq!(log.producer_state().producer_count(), 0);
        // A producer with no state carries on at any sequence (KIP-360).
        log.append(
            idempotent_batch_at(7, 0, seq + 1, 1, NOW as i64),
            LEADER,
            NOW,
        )
        .await
        .unwrap();
    });
}

#[test]
fn an_expired_producer_is_forgotten_and_carries_on_at_any_sequence_as_in_kafka() {
    use common::idempotent_batch_at;
    on_each_backend(|_, fs, dir| async move {
        let config = LogConfig {
            producer_id_expiration_ms: 60_000,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config.clone()).await;
        let t = NOW as i64;
        log.append(idempotent_batch_at(7, 0, 0, 3, t), LEADER, NOW)
            .await
            .unwrap();
        // Within producer.id.expiration.ms of its last timestamp: known,
        // so a gap is refused.
        log.apply_retention(NOW + 59_999).await.unwrap();
        assert_eq!(log.producer_state().producer_count(), 1);
        let gap = log
            .append(idempotent_batch_at(7, 0, 5, 1, t), LEADER, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                gap,
                Error::OutOfOrderSequence {
                    expected: 3,
                    got: 5,
                    ..
                }
            ),
            "{gap}"
        );
        // At the expiration: forgotten. Kafka (since KIP-360) then accepts
        // the producer's next batch at whatever sequence it has reached.
        log.apply_retention(NOW + 60_000).await.unwrap();
        assert_eq!(log.producer_state().producer_count(), 0);
        let resumed = log
            .append(
                idempotent_batch_at(7, 0, 5, 1, t + 60_000),
                LEADER,
                NOW + 60_000,
            )
            .await
            .unwrap();
        assert_eq!(resumed.base_offset, Offset(3));
        // From there on its sequence is checked again.
        let gap = log
            .append(
                idempotent_batch_at(7, 0, 8, 1, t + 60_000),
                LEADER,
                NOW + 60_000,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                gap,
                Error::OutOfOrderSequence {
                    expected: 6,
                    got: 8,
                    ..
                }
            ),
            "{gap}"
        );
    });
}

#[test]
fn retention_forgets_a_producer_when_it_removes_its_last_batch() {
    use common::idempotent_batch_at;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        let t = NOW as i64;
        for k in 0..3 {
            log.append(idempotent_batch_at(1, 0, 3 * k, 3, t), LEADER, NOW)
                .await
                .unwrap();
        }
        for k in 0..100 {
            log.append(idempotent_batch_at(2, 0, 3 * k, 3, t), LEADER, NOW)
                .await
                .unwrap();
        }
        assert!(log.segment_count() > 3);
        assert_eq!(log.producer_state().producer_count(), 2);
        log.set_config(LogConfig {
            retention_bytes: Some(4096),
            ..small_segments()
        })
        .unwrap();
        assert!(log.apply_retention(NOW).await.unwrap() > 0);
        assert!(
            log.log_start_offset() > Offset(9),
            "producer 1's batches went"
        );
        assert_eq!(
            log.producer_state().producer_count(),
            1,
            "only producer 2 is left"
        );
        // Producer 2 is still checked; producer 1 carries on anywhere.
        let gap = log
            .append(idempotent_batch_at(2, 0, 301, 1, t), LEADER, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(gap, Error::OutOfOrderSequence { expected: 300, .. }),
            "{gap}"
        );
        log.append(idempotent_batch_at(1, 0, 40, 1, t), LEADER, NOW)
            .await
            .unwrap();
    });
}

#[test]
fn producer_snapshots_past_a_truncation_are_removed_and_the_state_follows_the_log() {
    use common::idempotent_batch;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        for k in 0..100 {
            log.append(idempotent_batch(9, 0, 3 * k, 3), LEADER, NOW)
                .await
                .unwrap();
        }
        // Rolled segments are flushed, and their snapshots written, in the
        // background; wait for all of them.
        log.reap_background_flushes(true).await.unwrap();
        assert!(
            snapshot_files(&fs, &dir).await.len() >= 2,
            "rolls wrote snapshots"
        );
        log.truncate_to(Offset(3), NOW).await.unwrap();
        assert!(
            snapshot_files(&fs, &dir).await.iter().all(|o| *o <= 3),
            "{:?}",
            snapshot_files(&fs, &dir).await
        );
        // The batch at sequence 3 was truncated: it is appended anew, not
        // answered as a duplicate.
        let again = log
            .append(idempotent_batch(9, 0, 3, 3), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(again.base_offset, Offset(3));
        log.close(NOW).await.unwrap();
        let mut log = open(&fs, &dir, small_segments()).await;
        let retry = log
            .append(idempotent_batch(9, 0, 3, 3), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            (retry.base_offset, log.log_end_offset()),
            (Offset(3), Offset(6))
        );
    });
}

#[test]
fn a_damaged_producer_snapshot_is_ignored_for_an_older_one_or_the_batches() {
    use common::idempotent_batch;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, small_segments()).await;
        for k in 0..60 {
            log.append(idempotent_batch(5, 0, 3 * k, 3), LEADER, NOW)
                .await
                .unwrap();
        }
        log.close(NOW).await.unwrap();
        let newest = *snapshot_files(&fs, &dir).await.last().unwrap();
        let path = dir.join(format!("{newest:020}.snapshot"));
        fs.replace_atomically(&path, b"garbage".to_vec())
            .await
            .unwrap();
        let mut log = open(&fs, &dir, small_segments()).await;
        let retry = log
            .append(idempotent_batch(5, 0, 3 * 59, 3), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            retry.base_offset,
            Offset(3 * 59),
            "the last batch is a duplicate"
        );
        assert_eq!(log.log_end_offset(), Offset(180));
    });
}

#[test]
fn a_clean_close_of_a_large_active_segment_snapshots_the_producers_at_the_log_end() {
    use common::idempotent_batch;
    on_each_backend(|_, fs, dir| async move {
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let mut k = 0;
        while log.size_bytes() < 1 << 20 {
            log.append(idempotent_batch(4, 0, 300 * k, 300), LEADER, NOW)
                .await
                .unwrap();
            k += 1;
        }
        let end = log.log_end_offset();
        log.close(NOW).await.unwrap();
        assert_eq!(snapshot_files(&fs, &dir).await, vec![end.0]);
        let mut log = open(&fs, &dir, LogConfig::default()).await;
        let retry = log
            .append(idempotent_batch(4, 0, 300 * (k - 1), 300), LEADER, NOW)
            .await
            .unwrap();
        assert_eq!(
            retry.last_offset.0,
            end.0 - 1,
            "the last batch is a duplicate"
        );
    });
}

/// Bytes a file holds and bytes of blocks it has allocated.
fn size_and_allocated(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("segment metadata");
    (meta.len(), meta.blocks() * 512)
}

/// Appends reserve the active segment's blocks ahead of them, so that a
/// buffered write into them does not wait on the kernel's writeback of the
/// pages before; the file's size stays what was written, and a rolled
/// segment gives back what it did not use. (Simulated files have no
/// blocks.)
#[test]
fn appends_reserve_blocks_ahead_and_a_rolled_segment_gives_back_the_rest() {
    on_each_backend(|backend, fs, dir| async move {
        if backend == common::Backend::Sim {
            return;
        }
        let config = LogConfig {
            segment_bytes: 64 << 20,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&fs, &dir, config).await;
        let sent = fill(&mut log, 4, 10, 1000).await;
        let segment = dir.join(sluice_engine::segment::file_name(Offset(0), "log"));
        let (size, allocated) = size_and_allocated(&segment);
        let written: u64 = sent.iter().map(|b| b.len() as u64).sum();
        assert_eq!(size, written, "{backend:?}: the size is what was written");
        assert!(
            allocated >= size + 128 * 1024,
            "{backend:?}: {allocated} bytes allocated for {size} written"
        );
        log.roll(NOW).await.expect("roll");
        log.reap_background_flushes(true)
            .await
            .expect("rolled flush");
        let (rolled_size, rolled_allocated) = size_and_allocated(&segment);
        assert_eq!(rolled_size, size, "{backend:?}");
        assert!(
            rolled_allocated < size + 64 * 1024,
            "{backend:?}: {rolled_allocated} bytes still allocated for {size} after the roll"
        );
        assert_eq!(read_all(&log).await.len(), sent.len());
        log.close(NOW).await.expect("close");
    });
}

/// On tmpfs nothing is reserved: there a reservation is memory allocated
/// now, and there is no writeback for it to spare.
#[test]
fn on_tmpfs_appends_reserve_nothing() {
    let Ok(tmp) = tempfile::tempdir_in("/dev/shm") else {
        // No /dev/shm on this machine: nothing to check.
        return;
    };
    let rt = common::runtime(compio::driver::DriverType::Poll).expect("a runtime");
    rt.block_on(async {
        let dir = tmp.path().join("topic-0");
        let config = LogConfig {
            segment_bytes: 64 << 20,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&Fs::Os, &dir, config).await;
        fill(&mut log, 4, 10, 1000).await;
        let segment = dir.join(sluice_engine::segment::file_name(Offset(0), "log"));
        let (size, allocated) = size_and_allocated(&segment);
        assert!(
            allocated < size + 64 * 1024,
            "{allocated} bytes allocated for {size} written on tmpfs"
        );
        log.close(NOW).await.expect("close");
    });
}

/// A roll makes the new segment's name durable off the append path. With
/// every fsync under the log's directory held by a slow disk, the directory's
/// own included, the append that rolls and the appends after it complete
/// at once; the rolled segments count as flushed only once the disk lets
/// the syncs go. (An inline directory sync, on ext4 with gigabytes dirty,
/// stalled every roll's appends for 0.1-0.6 s: docs/BENCHMARKS.md.)
#[test]
fn a_roll_does_not_wait_for_the_directory_sync() {
    use futures_util::FutureExt;
    let rt = common::runtime(compio::driver::DriverType::Poll).expect("poll driver");
    rt.block_on(async {
        let sim = sluice_engine::sim::SimFs::new();
        let dir = std::path::PathBuf::from("/sim/data/rolling-0");
        let config = LogConfig {
            segment_bytes: 4096,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&Fs::Sim(sim.clone()), &dir, config).await;
        let stall = sim.stall_syncs_under(&dir);
        let mut appended = 0;
        while log.segment_count() < 3 {
            let done = log
                .append(batch(5, 200, NOW as i64), LEADER, NOW)
                .now_or_never();
            assert!(
                matches!(done, Some(Ok(_))),
                "append {appended} (segments: {}) waited for the stalled disk: {done:?}",
                log.segment_count()
            );
            appended += 1;
        }
        // The rolled segments' background flushes reach the stalled disk
        // and wait there: nothing counts as flushed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stall.syncs_held() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background flush started"
            );
            compio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        log.reap_background_flushes(false).await.unwrap();
        assert_eq!(log.flushed_offset(), Offset(0));
        drop(stall);
        log.reap_background_flushes(true).await.unwrap();
        let bases = log.segment_bases();
        assert_eq!(log.flushed_offset(), *bases.last().unwrap());
        assert_eq!(read_all(&log).await.len(), appended);
    });
}

/// Bytes of `path` the page cache holds, per MiB of the file (`mincore`).
fn resident_per_mib(path: &std::path::Path) -> Vec<f64> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open the segment");
    let len = file.metadata().expect("metadata").len() as usize;
    if len == 0 {
        return Vec::new();
    }
    let page = 4096usize;
    // SAFETY: a read-only shared mapping of a file this function holds
    // open, never touched (mincore does not fault pages in), unmapped
    // before returning.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap the segment");
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    unsafe { libc::munmap(map, len) };
    assert_eq!(rc, 0, "mincore");
    vec.chunks(256)
        .map(|mib| mib.iter().filter(|b| **b & 1 == 1).count() as f64 / mib.len() as f64)
        .collect()
}

/// With `page_cache_window` set, the page cache keeps only a log's newest
/// bytes: older ones, rolled segments included, are dropped once written
/// back, and the newest window stays for the readers at the tail. (Each
/// step is fsynced first so that every page is clean when it falls behind:
/// the log drops only clean pages.)
#[test]
fn only_the_newest_window_of_a_log_stays_in_the_page_cache() {
    // On the project's disk: tmpfs pages cannot be dropped.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let rt = common::runtime(compio::driver::DriverType::Poll).expect("a runtime");
    rt.block_on(async {
        const MIB: u64 = 1 << 20;
        let dir = tmp.path().join("topic-0");
        let config = LogConfig {
            segment_bytes: 16 * MIB,
            retention_ms: None,
            page_cache_window: Some(8 * MIB),
            ..LogConfig::default()
        };
        let mut log = open(&Fs::Os, &dir, config).await;
        let seg = |base: Offset| dir.join(sluice_engine::segment::file_name(base, "log"));
        // About 64 KiB per batch, until two segments have rolled and the
        // third holds 14 MiB.
        loop {
            let bases = log.segment_bases();
            let active = std::fs::metadata(seg(*bases.last().unwrap()))
                .unwrap()
                .len();
            if bases.len() == 3 && active >= 14 * MIB {
                break;
            }
            assert!(bases.len() <= 3, "a fourth segment: {bases:?}");
            fill(&mut log, 4, 64, 1000).await;
            log.flush(NOW).await.expect("flush");
            log.settle_page_cache().await;
        }
        let bases = log.segment_bases();
        for base in &bases[..2] {
            let resident = resident_per_mib(&seg(*base));
            let held: f64 = resident.iter().sum();
            assert!(
                held < 0.5,
                "rolled segment {base:?}, well behind the window, still cached: {resident:?}"
            );
        }
        let active = resident_per_mib(&seg(bases[2]));
        let mibs = active.len();
        assert!(mibs >= 14, "the active segment holds 14 MiB: {mibs}");
        // The newest 8 MiB stay; what is more than a window and a step of
        // dropping (4 MiB) behind the end is gone.
        assert!(
            active[mibs - 7..].iter().all(|r| *r > 0.9),
            "the newest window was dropped: {active:?}"
        );
        assert!(
            active[..mibs - 13].iter().all(|r| *r < 0.1),
            "bytes beyond the window stay cached: {active:?}"
        );
        log.close(NOW).await.expect("close");
    });
}
