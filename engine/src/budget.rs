//! Byte budgets: an asynchronous semaphore counted in bytes, so that what
//! is queued or held in memory stays under a limit whatever callers ask.
//!
//! The engine bounds each shard's command queue with one (the record bytes
//! of appends and weighted [`ShardHandle::run`] calls in flight to it); the
//! broker bounds the responses it holds for clients with others (per
//! connection and broker-wide, see the broker's `fetch` handler).
//!
//! A budget is shared across threads, so it sits behind a mutex, held only
//! to update the count, never across an await.
//!
//! [`ShardHandle::run`]: crate::shard::ShardHandle::run

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;

#[derive(Debug, Default)]
struct Inner {
    used: usize,
    peak: usize,
    /// Waiting acquirers, first come first served: a large request is not
    /// overtaken for ever by small ones.
    waiting: VecDeque<(usize, oneshot::Sender<()>)>,
}

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    inner: Mutex<Inner>,
}

/// Bytes taken from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Permit {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back all but `bytes` (a read that came back smaller than the
    /// bytes it reserved).
    pub fn shrink(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// An acquirer in the queue. Dropped after `grant` sent it bytes but
/// before it took them, it gives them back.
struct Waiting {
    budget: Arc<Budget>,
    bytes: usize,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done && matches!(self.rx.try_recv(), Ok(Some(()))) {
            self.budget.release(self.bytes);
        }
    }
}

impl Budget {
    /// A budget of `limit` bytes (at least 1).
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: limit.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Acquirers waiting for bytes to come back (not counting those that
    /// gave up and are still queued).
    pub fn waiting(&self) -> usize {
        let inner = self.lock();
        inner
            .waiting
            .iter()
            .filter(|(_, tx)| !tx.is_canceled())
            .count()
    }

    /// Takes `bytes` (at most the whole limit), waiting until they are free.
    /// Dropping the future before it is ready takes nothing.
    pub async fn acquire(self: &Arc<Self>, bytes: usize) -> Permit {
        let bytes = bytes.min(self.limit);
        let rx = {
            let mut inner = self.lock();
            if inner.waiting.is_empty() && inner.used + bytes <= self.limit {
                inner.used += bytes;
                inner.peak = inner.peak.max(inner.used);
                return Permit {
                    budget: self.clone(),
                    bytes,
                };
            }
            let (tx, rx) = oneshot::channel();
            inner.waiting.push_back((bytes, tx));
            rx
        };
        let mut waiting = Waiting {
            budget: self.clone(),
            bytes,
            rx,
            done: false,
        };
        // `grant` counts the bytes as ours before it sends.
        let granted = (&mut waiting.rx).await.is_ok();
        waiting.done = true;
        Permit {
            budget: self.clone(),
            bytes: if granted { bytes } else { 0 },
        }
    }

    /// Takes `bytes` (at most the whole limit) if they are free now and no
    /// one is queued for bytes; never waits. For a caller that may not wait:
    /// one whose bytes may be held by work that can only finish after it.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<Permit> {
        let bytes = bytes.min(self.limit);
        let mut inner = self.lock();
        while inner
            .waiting
            .front()
            .is_some_and(|(_, tx)| tx.is_canceled())
        {
            inner.waiting.pop_front();
        }
        if !inner.waiting.is_empty() || inner.used + bytes > self.limit {
            return None;
        }
        inner.used += bytes;
        inner.peak = inner.peak.max(inner.used);
        Some(Permit {
            budget: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.used -= bytes;
        self.grant(&mut inner);
    }

    /// Hands free bytes to the waiters at the front, in order. A waiter
    /// that gave up (its future dropped) is skipped; if it had already been
    /// granted, its bytes come back here.
    fn grant(&self, inner: &mut Inner) {
        while let Some((bytes, tx)) = inner.waiting.front() {
            let bytes = *bytes;
            // One that gave up must not hold back those behind it.
            if tx.is_canceled() {
                inner.waiting.pop_front();
                continue;
            }
            if inner.used + bytes > self.limit {
                return;
            }
            let Some((_, tx)) = inner.waiting.pop_front() else {
                return;
            };
            if tx.send(()).is_ok() {
                inner.used += bytes;
                inner.peak = inner.peak.max(inner.used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn bytes_beyond_the_limit_wait_until_a_permit_is_dropped() {
        let budget = Budget::new(100);
        let a = pin!(budget.acquire(60));
        let Poll::Ready(a) = poll(a) else {
            panic!("free bytes are granted at once")
        };
        let mut b = pin!(budget.acquire(60));
        assert!(poll(b.as_mut()).is_pending());
        assert_eq!((budget.used(), budget.waiting()), (60, 1));
        drop(a);
        let Poll::Ready(b) = poll(b.as_mut()) else {
            panic!("released bytes go to the waiter")
        };
        assert_eq!((budget.used(), b.bytes(), budget.peak()), (60, 60, 60));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_request_larger_than_the_limit_takes_the_whole_limit() {
        let budget = Budget::new(10);
        let Poll::Ready(p) = poll(pin!(budget.acquire(1 << 40))) else {
            panic!("an idle budget grants at once")
        };
        assert_eq!(p.bytes(), 10);
        assert!(budget.peak() <= budget.limit());
    }

    #[test]
    fn a_waiter_that_gives_up_takes_nothing() {
        let budget = Budget::new(10);
        let Poll::Ready(first) = poll(pin!(budget.acquire(10))) else {
            panic!("granted")
        };
        {
            let mut gone = Box::pin(budget.acquire(5));
            assert!(poll(gone.as_mut()).is_pending());
        }
        let mut next = pin!(budget.acquire(5));
        assert!(poll(next.as_mut()).is_pending());
        drop(first);
        let Poll::Ready(_next) = poll(next.as_mut()) else {
            panic!("the live waiter is served")
        };
        assert_eq!(budget.used(), 5);
    }

    #[test]
    fn a_waiter_dropped_after_its_grant_gives_the_bytes_back() {
        let budget = Budget::new(10);
        let Poll::Ready(first) = poll(pin!(budget.acquire(10))) else {
            panic!("granted")
        };
        let mut late = Box::pin(budget.acquire(5));
        assert!(poll(late.as_mut()).is_pending());
        drop(first);
        assert_eq!(budget.used(), 5, "granted to the waiter");
        drop(late);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_shrunk_permit_gives_back_the_difference_to_waiters() {
        let budget = Budget::new(10);
        let Poll::Ready(mut first) = poll(pin!(budget.acquire(10))) else {
            panic!("granted")
        };
        let mut next = pin!(budget.acquire(6));
        assert!(poll(next.as_mut()).is_pending());
        first.shrink(4);
        let Poll::Ready(_next) = poll(next.as_mut()) else {
            panic!("the difference goes to the waiter")
        };
        assert_eq!(budget.used(), 10);
        first.shrink(9);
        assert_eq!(first.bytes(), 4, "shrinking never grows");
    }

    #[test]
    fn a_waiter_that_gave_up_does_not_hold_back_the_ones_behind_it() {
        let budget = Budget::new(10);
        let Poll::Ready(mut first) = poll(pin!(budget.acquire(10))) else {
            panic!("granted")
        };
        {
            let mut gone = Box::pin(budget.acquire(8));
            assert!(poll(gone.as_mut()).is_pending());
        }
        let mut small = pin!(budget.acquire(2));
        assert!(poll(small.as_mut()).is_pending());
        assert_eq!(budget.waiting(), 1, "the one that gave up is not counted");
        // 3 free: the 8 that gave up would not fit, the live 2 does.
        first.shrink(7);
        let Poll::Ready(_small) = poll(small.as_mut()) else {
            panic!("the live waiter behind an abandoned one is served")
        };
        assert_eq!((budget.used(), budget.waiting()), (9, 0));
    }

    #[test]
    fn try_acquire_takes_only_free_bytes_and_never_overtakes_a_waiter() {
        let budget = Budget::new(10);
        let mut first = budget.try_acquire(6).expect("free bytes are taken");
        assert!(budget.try_acquire(6).is_none(), "only 4 are free");
        let mut queued = pin!(budget.acquire(6));
        assert!(poll(queued.as_mut()).is_pending());
        first.shrink(1);
        let Poll::Ready(_queued) = poll(queued.as_mut()) else {
            panic!("the waiter gets the bytes given back")
        };
        assert!(budget.try_acquire(3).is_some(), "3 of the 10 are free");
        let mut behind = pin!(budget.acquire(5));
        assert!(poll(behind.as_mut()).is_pending());
        drop(first);
        assert!(
            budget.try_acquire(1).is_none(),
            "a free byte is not taken ahead of a queued waiter"
        );
        assert_eq!(budget.try_acquire(1 << 40).map(|p| p.bytes()), None);
    }

    #[test]
    fn waiters_are_served_in_order() {
        let budget = Budget::new(10);
        let Poll::Ready(mut first) = poll(pin!(budget.acquire(10))) else {
            panic!("granted")
        };
        let mut big = pin!(budget.acquire(8));
        let mut small = pin!(budget.acquire(1));
        assert!(poll(big.as_mut()).is_pending());
        assert!(poll(small.as_mut()).is_pending());
        first.shrink(5);
        // The small one would fit, but does not overtake the big one.
        assert!(poll(small.as_mut()).is_pending());
        drop(first);
        let (Poll::Ready(_big), Poll::Ready(_small)) = (poll(big.as_mut()), poll(small.as_mut()))
        else {
            panic!("both fit once the first is gone")
        };
        assert_eq!(budget.used(), 9);
    }
}
