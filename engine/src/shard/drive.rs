//! The loop a shard thread runs: compio's `Runtime::block_on`, except for
//! how it polls the ring when it must not wait.
//!
//! compio's loop polls with a zero timeout when tasks are still ready after
//! a turn, and its plain `poll` does the same when a timer is already due.
//! Unless the runtime was marked woken since its last poll, the io_uring
//! driver turns that into `io_uring_enter(min_complete = 1, timeout = 0)`;
//! with no completion waiting, the kernel arms a timer for "now" and waits
//! for its interrupt, which returns `ETIME`. In a 3-broker acks=all run at
//! 112 MB/s, `perf` counted 12,171 ring-wait timers expiring in 3 s, about
//! one per batch written, and `strace` showed hundreds of such waits a
//! second on each shard thread. Each is a timer to program and an
//! interrupt to take, which on a virtual machine means exits to the host.
//!
//! Here, before a poll that must not wait, the loop marks the runtime as
//! woken. The driver then asks the ring for no completion
//! (`min_complete = 0`): the kernel submits what is queued and returns, and
//! the runtime reaps whatever completions are there. Marking costs one
//! atomic operation (the driver is awake, so no eventfd write follows), and
//! only this thread reads the mark, in that same poll. The same run with
//! this loop: no ring wait ended in `ETIME`.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use compio::runtime::Runtime;

/// Runs `future` to its end on `runtime`, running the runtime's other
/// tasks meanwhile. Waits in the ring only when no task is ready.
pub(crate) fn drive<F: Future>(runtime: &Runtime, future: F) -> F::Output {
    runtime.enter(|| {
        let waker = runtime.waker();
        let mut context = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                runtime.run();
                return output;
            }
            let wait = next_wait(runtime.run(), || runtime.current_timeout());
            if wait == Some(Duration::ZERO) {
                waker.wake_by_ref();
            }
            runtime.poll_with(wait);
        }
    })
}

/// How long the next poll may wait for the ring: not at all while tasks
/// are ready, else until the first timer falls due (zero if one is due
/// already), else until a completion or a wake-up arrives. A zero wait is
/// the case the caller marks the runtime woken for.
fn next_wait(
    tasks_ready: bool,
    first_timer: impl FnOnce() -> Option<Duration>,
) -> Option<Duration> {
    if tasks_ready {
        Some(Duration::ZERO)
    } else {
        first_timer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A future that is pending once and wakes itself: a task that is ready
    /// again at the end of the turn that ran it.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    #[test]
    fn the_wait_is_zero_while_tasks_are_ready_or_a_timer_is_due() {
        let ms = Duration::from_millis;
        // (tasks ready, first timer) -> wait
        let table = [
            (true, None, Some(Duration::ZERO)),
            (true, Some(ms(5)), Some(Duration::ZERO)),
            (false, Some(Duration::ZERO), Some(Duration::ZERO)),
            (false, Some(ms(5)), Some(ms(5))),
            (false, None, None),
        ];
        for (ready, timer, wait) in table {
            assert_eq!(
                next_wait(ready, || timer),
                wait,
                "ready {ready}, timer {timer:?}"
            );
        }
    }

    /// Ready tasks do not starve the ring: a timer and a file read complete
    /// while another task is always ready, long before it gives up.
    #[test]
    fn completions_arrive_while_a_task_is_always_ready() {
        const SPINS_MAX: u64 = 10_000_000;
        let runtime = Runtime::new().expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("f");
        std::fs::write(&path, b"sluice").expect("writing the file");
        let spins = Rc::new(Cell::new(0u64));
        let read = drive(&runtime, async {
            let stop = Rc::new(Cell::new(false));
            let (spinning, stop_spinner) = (spins.clone(), stop.clone());
            let spinner = compio::runtime::spawn(async move {
                while !stop_spinner.get() && spinning.get() < SPINS_MAX {
                    spinning.set(spinning.get() + 1);
                    yield_once().await;
                }
            });
            compio::time::sleep(Duration::from_millis(5)).await;
            let file = compio::fs::File::open(&path).await.expect("opening");
            let compio::BufResult(result, buf) = {
                use compio::io::AsyncReadAt;
                file.read_at(Vec::with_capacity(16), 0).await
            };
            result.expect("reading");
            stop.set(true);
            spinner.await.expect("the spinner ends");
            buf
        });
        assert_eq!(read, b"sluice");
        assert!(spins.get() > 0, "the ready task never ran");
        assert!(
            spins.get() < SPINS_MAX,
            "the timer and the read completed only once the ready task gave up"
        );
    }
}
