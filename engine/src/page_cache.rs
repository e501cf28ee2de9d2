//! How much of a log the page cache keeps: its newest bytes only.
//!
//! Left alone, the kernel keeps every byte a log appends in the page cache
//! until memory runs short, and writes the dirty ones back in one burst once
//! a tenth of memory is dirty. [`CacheWindow`] bounds both, per log: each
//! few MiB appended are handed to writeback at once
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), and bytes more than the
//! window behind the log end are dropped from the cache once written back
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`). New appends then reuse the pages
//! just freed instead of taking fresh ones, and writeback runs steadily at
//! the append rate. Readers at the tail (followers, caught-up consumers)
//! read from memory as before; a reader further behind than the window
//! reads from the disk.
//!
//! Neither call makes anything durable: the flush policy and its fsyncs are
//! untouched. Neither waits for the disk or reads an error back, so a
//! writeback error stays for the log's own fsync to report. Both run on
//! another descriptor of the file, opened for the purpose.
//!
//! The bookkeeping is pure: which byte ranges of which segment files are
//! due for writeback or dropping. [`submit`] hands the calls to a thread of
//! their own, one per shard thread, that runs below the shard threads'
//! priority (see [`CACHE_NICE`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use futures_channel::oneshot;

use crate::types::Offset;

/// Writeback and dropping go in steps of at least this many bytes, on
/// boundaries of [`ALIGN`].
pub const CHUNK: u64 = 4 << 20;
const ALIGN: u64 = 1 << 20;
/// Most segment files one log tracks; a log of tiny segments drops the
/// oldest whole.
const MAX_REGIONS: usize = 64;

/// One range of a segment file appended since the log opened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Region {
    segment: Offset,
    start: u64,
    end: u64,
    /// The log's count of bytes appended when `end` was written.
    end_appended: u64,
    /// Writeback was started for `[start, written_back)`.
    written_back: u64,
    /// Dropped from the cache: `[start, dropped)`.
    dropped: u64,
    /// The previous drop began here: the next one covers it again, for the
    /// pages that were still being written back then.
    resweep: u64,
}

/// A call due on one segment file's page cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    /// Start writing back `[from, from + len)`.
    WriteBack {
        segment: Offset,
        from: u64,
        len: u64,
    },
    /// Drop the clean pages of `[from, from + len)` from the cache.
    Drop {
        segment: Offset,
        from: u64,
        len: u64,
    },
}

/// Per-log bookkeeping; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct CacheWindow {
    /// Bytes behind the log end kept in the cache; `None` keeps everything
    /// and starts no writeback (the kernel decides, as for Kafka).
    window: Option<u64>,
    regions: VecDeque<Region>,
}

impl CacheWindow {
    pub fn new(window: Option<u64>) -> Self {
        CacheWindow {
            window,
            ..CacheWindow::default()
        }
    }

    pub fn set_window(&mut self, window: Option<u64>) {
        self.window = window;
        if window.is_none() {
            self.regions.clear();
        }
    }

    /// Records `len` bytes written at `pos` of the segment file based at
    /// `segment`, which brought the log's count of bytes appended (a count
    /// that only grows) to `appended`.
    pub fn on_write(&mut self, segment: Offset, pos: u64, len: u64, appended: u64) {
        if self.window.is_none() || len == 0 {
            return;
        }
        match self.regions.back_mut() {
            Some(last) if last.segment == segment && last.end == pos => {
                last.end += len;
                last.end_appended = appended;
            }
            _ => self.regions.push_back(Region {
                segment,
                start: pos,
                end: pos + len,
                end_appended: appended,
                written_back: pos,
                dropped: pos,
                resweep: pos,
            }),
        }
    }

    /// Forgets every range (after a truncation: the positions recorded may
    /// no longer hold the same bytes, or exist). Pages of ranges not yet
    /// dropped stay in the cache for the kernel to evict.
    pub fn forget(&mut self) {
        self.regions.clear();
    }

    /// The calls now due, oldest range first; marks them done.
    pub fn due(&mut self) -> Vec<CacheOp> {
        let Some(window) = self.window else {
            return Vec::new();
        };
        let mut ops = Vec::new();
        // Writeback of the newest range, in whole chunks. Older ranges are
        // rolled segments, which their own background flush writes back.
        if let Some(last) = self.regions.back_mut() {
            let to = align_down(last.end).max(last.written_back);
            if to - last.written_back >= CHUNK {
                ops.push(CacheOp::WriteBack {
                    segment: last.segment,
                    from: last.written_back,
                    len: to - last.written_back,
                });
                last.written_back = to;
            }
        }
        let appended = self.regions.back().map_or(0, |r| r.end_appended);
        let behind = appended.saturating_sub(window);
        let count = self.regions.len();
        for (i, r) in self.regions.iter_mut().enumerate() {
            let newest = i + 1 == count;
            // The position in this range that is `window` bytes behind the
            // log end, or its end if all of it is.
            let edge = if r.end_appended <= behind {
                r.end
            } else {
                r.end.saturating_sub(r.end_appended - behind).max(r.start)
            };
            let whole = edge == r.end && !newest;
            let to = if whole { edge } else { align_down(edge) };
            if to > r.dropped && (whole || to - r.dropped >= CHUNK) {
                ops.push(CacheOp::Drop {
                    segment: r.segment,
                    from: r.resweep,
                    len: to - r.resweep,
                });
                r.resweep = r.dropped;
                r.dropped = to;
            }
            if edge < r.end {
                break;
            }
        }
        // A rolled segment dropped whole is swept once more when it is a
        // second window behind, then forgotten.
        while self.regions.len() > 1 {
            let first = &mut self.regions[0];
            if first.dropped < first.end || first.end_appended.saturating_add(window) > behind {
                break;
            }
            if first.resweep < first.end {
                ops.push(CacheOp::Drop {
                    segment: first.segment,
                    from: first.resweep,
                    len: first.end - first.resweep,
                });
            }
            self.regions.pop_front();
        }
        while self.regions.len() > MAX_REGIONS {
            if let Some(r) = self.regions.pop_front() {
                ops.push(CacheOp::Drop {
                    segment: r.segment,
                    from: r.resweep,
                    len: r.end - r.resweep,
                });
            }
        }
        ops
    }
}

fn align_down(pos: u64) -> u64 {
    pos / ALIGN * ALIGN
}

/// The nice value of the threads that make the page-cache calls: ten
/// steps below the shard threads, so a shard thread woken by a request
/// takes the core from them at once. Their work is housekeeping: run late,
/// it costs memory for a moment, while each call holds a core for up to a
/// few milliseconds (writing back or dropping 4 MiB), which on a busy
/// machine a waiting `acks=all` round trip would otherwise queue behind
/// (docs/BENCHMARKS.md, "The page-cache calls at a lower priority").
pub const CACHE_NICE: i32 = 10;

/// The calls handed to the cache thread by [`submit`], not yet all made.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<()>);

impl Pending {
    /// Whether the calls are done (or were dropped with the thread).
    pub fn is_finished(&mut self) -> bool {
        !matches!(self.0.try_recv(), Ok(None))
    }

    /// Waits until the calls are done.
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

type Job = (PathBuf, Vec<CacheOp>, oneshot::Sender<()>);

thread_local! {
    /// This shard thread's cache thread, started at the first call. It
    /// stops once this thread has gone and its queue is empty. Its queue
    /// holds at most one batch per log, since a log hands over its next
    /// batch only once the last is done.
    static CACHE_THREAD: RefCell<Option<mpsc::Sender<Job>>> = const { RefCell::new(None) };
}

/// Hands `ops` on the segment files in `dir` to this thread's cache
/// thread. `None` if no such thread could be started: the calls are then
/// not made, and the kernel writes back and reclaims as it would without a
/// window.
pub fn submit(dir: PathBuf, ops: Vec<CacheOp>) -> Option<Pending> {
    let (done, pending) = oneshot::channel();
    CACHE_THREAD.with_borrow_mut(|slot| {
        let mut job = (dir, ops, done);
        for _ in 0..2 {
            let tx = match slot {
                Some(tx) => tx,
                None => slot.insert(start_cache_thread()?),
            };
            match tx.send(job) {
                Ok(()) => return Some(Pending(pending)),
                // The thread died (a panic in a call): start another.
                Err(mpsc::SendError(back)) => {
                    job = back;
                    *slot = None;
                }
            }
        }
        None
    })
}

fn start_cache_thread() -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("sluice-cache".into())
        .spawn(move || {
            // SAFETY: plain integers; a thread may always lower its own
            // priority. A refusal leaves it at the shard threads' priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, CACHE_NICE);
            }
            for (dir, ops, done) in rx {
                run(&dir, &ops);
                let _ = done.send(());
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the page-cache thread; the page-cache window is not applied");
            None
        }
    }
}

/// Makes the calls, on a descriptor of each segment file opened here (so
/// that no error of the log's own descriptor is read). Best effort: a file
/// gone meanwhile (retention, truncation) or a call the filesystem refuses
/// is skipped. Blocking: it runs on the cache thread.
fn run(dir: &Path, ops: &[CacheOp]) {
    use std::os::fd::AsRawFd;
    let mut open: Option<(Offset, std::fs::File)> = None;
    for op in ops {
        let (segment, from, len) = match *op {
            CacheOp::WriteBack { segment, from, len } | CacheOp::Drop { segment, from, len } => {
                (segment, from, len)
            }
        };
        if open.as_ref().map(|(s, _)| *s) != Some(segment) {
            open = std::fs::File::open(segment_path(dir, segment))
                .ok()
                .map(|f| (segment, f));
        }
        let Some((_, file)) = &open else { continue };
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            continue;
        };
        let fd = file.as_raw_fd();
        // SAFETY: both calls take a descriptor this function owns and
        // plain integers; neither touches memory of ours.
        match op {
            CacheOp::WriteBack { .. } => unsafe {
                libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE);
            },
            CacheOp::Drop { .. } => unsafe {
                libc::posix_fadvise(fd, from, len, libc::POSIX_FADV_DONTNEED);
            },
        }
    }
}

fn segment_path(dir: &Path, segment: Offset) -> PathBuf {
    dir.join(crate::segment::file_name(
        segment,
        crate::segment::LOG_SUFFIX,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    /// The nice value of each of this process's threads named `name`.
    fn nice_of_threads_named(name: &str) -> Vec<i32> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).unwrap();
            // After the command's closing parenthesis, nice is field 19
            // of stat(5), the 17th from there.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            nice.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
        }
        nice
    }

    #[test]
    fn calls_run_on_a_thread_of_their_own_below_the_callers_priority() {
        let dir = std::env::temp_dir();
        let missing = CacheOp::Drop {
            segment: seg(u64::MAX - 7),
            from: 0,
            len: M,
        };
        let mut pending = submit(dir, vec![missing]).expect("a cache thread");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pending.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the calls never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let nice = nice_of_threads_named("sluice-cache");
        assert!(!nice.is_empty(), "no thread named sluice-cache");
        assert!(nice.iter().all(|&n| n == CACHE_NICE), "{nice:?}");
    }

    fn seg(n: u64) -> Offset {
        Offset(n as i64)
    }

    /// A write of `len` bytes at `pos`, the log's count growing by `len`.
    fn write(w: &mut CacheWindow, segment: Offset, pos: u64, len: u64) {
        let appended = w.regions.back().map_or(0, |r| r.end_appended) + len;
        w.on_write(segment, pos, len, appended);
    }

    /// The drops (or writebacks) among `ops`, as (segment, from MiB, to MiB).
    fn ranges(ops: &[CacheOp], want_drops: bool) -> Vec<(u64, u64, u64)> {
        ops.iter()
            .filter_map(|op| match *op {
                CacheOp::Drop { segment, from, len } if want_drops => Some((segment, from, len)),
                CacheOp::WriteBack { segment, from, len } if !want_drops => {
                    Some((segment, from, len))
                }
                _ => None,
            })
            .map(|(segment, from, len)| (segment.0 as u64, from / M, (from + len) / M))
            .collect()
    }

    fn drops(ops: &[CacheOp]) -> Vec<(u64, u64, u64)> {
        ranges(ops, true)
    }

    fn writebacks(ops: &[CacheOp]) -> Vec<(u64, u64, u64)> {
        ranges(ops, false)
    }

    #[test]
    fn without_a_window_nothing_is_due() {
        let mut w = CacheWindow::new(None);
        for i in 0..100 {
            write(&mut w, seg(0), i * M, M);
        }
        assert!(w.due().is_empty());
    }

    #[test]
    fn writeback_starts_in_whole_chunks_of_the_newest_range() {
        let mut w = CacheWindow::new(Some(64 * M));
        write(&mut w, seg(0), 0, 3 * M);
        assert!(w.due().is_empty(), "less than a chunk");
        write(&mut w, seg(0), 3 * M, 2 * M + 10);
        assert_eq!(
            writebacks(&w.due()),
            vec![(0, 0, 5)],
            "to the last whole MiB"
        );
        write(&mut w, seg(0), 5 * M + 10, 3 * M);
        assert!(w.due().is_empty());
        write(&mut w, seg(0), 8 * M + 10, M);
        assert_eq!(writebacks(&w.due()), vec![(0, 5, 9)]);
    }

    #[test]
    fn bytes_a_window_behind_the_end_are_dropped_and_swept_again_once() {
        let mut w = CacheWindow::new(Some(8 * M));
        let mut all = Vec::new();
        for i in 0..20 {
            write(&mut w, seg(0), i * M, M);
            all.extend(drops(&w.due()));
        }
        // 20 MiB written, 8 kept: [0, 12) dropped, in chunks of 4 MiB, each
        // drop covering the one before it again.
        assert_eq!(all, vec![(0, 0, 4), (0, 0, 8), (0, 4, 12)]);
    }

    #[test]
    fn a_rolled_segment_is_dropped_whole_once_the_window_passes_it() {
        let mut w = CacheWindow::new(Some(8 * M));
        write(&mut w, seg(0), 0, 10 * M + 5);
        let first = w.due();
        assert_eq!(writebacks(&first), vec![(0, 0, 10)]);
        assert!(drops(&first).is_empty(), "2 MiB behind: less than a chunk");
        // Rolled: a new segment.
        write(&mut w, seg(100), 0, 6 * M);
        let ops = w.due();
        assert!(writebacks(&ops).contains(&(100, 0, 6)));
        assert_eq!(drops(&ops), vec![(0, 0, 8)]);
        write(&mut w, seg(100), 6 * M, 3 * M);
        let ops = w.due();
        // The old segment's end is now 9 MiB behind: dropped to its end.
        assert_eq!(
            ops.iter()
                .filter(|op| matches!(op, CacheOp::Drop { segment, .. } if segment.0 == 0))
                .count(),
            1
        );
        let mut later = Vec::new();
        for i in 0..20 {
            write(&mut w, seg(100), (9 + i) * M, M);
            later.extend(w.due());
        }
        assert!(
            later.iter().all(
                |op| !matches!(op, CacheOp::Drop { segment, .. } if segment.0 == 0)
                    || matches!(op, CacheOp::Drop { from, len, .. } if from + len == 10 * M + 5)
            ),
            "the old segment is swept to its end once more, then forgotten: {later:?}"
        );
        assert_eq!(w.regions.len(), 1);
    }

    #[test]
    fn forgetting_after_a_truncation_starts_over() {
        let mut w = CacheWindow::new(Some(4 * M));
        write(&mut w, seg(0), 0, 10 * M);
        w.due();
        w.forget();
        write(&mut w, seg(0), 2 * M, M);
        assert!(w.due().is_empty());
        assert_eq!(w.regions.len(), 1);
        assert_eq!(w.regions[0].start, 2 * M);
    }

    #[test]
    fn tiny_segments_are_bounded() {
        let mut w = CacheWindow::new(Some(1 << 40));
        for i in 0..1000 {
            write(&mut w, seg(i), 0, 100);
            w.due();
        }
        assert!(w.regions.len() <= MAX_REGIONS);
    }
}
