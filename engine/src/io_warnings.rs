//! Rate-limited warnings for failed appends and flushes.
//!
//! A full disk fails every append to a partition while the log stays online
//! (ENOSPC cuts the partial write off again), so producers see
//! KAFKA_STORAGE_ERROR or time out, and without a log line an operator
//! cannot tell why. One line per failed append would flood the log at the
//! request rate instead. So each log keeps an [`IoWarnLimiter`]: a warning
//! for the first failure of each kind, then at most one per kind every
//! [`WARN_INTERVAL_MS`], carrying how many failures it stood for.
//!
//! Pure: time is an argument, so the limiter is tested without a clock.

use crate::error::Error;

/// At most one warning per log and error kind in this many milliseconds.
pub const WARN_INTERVAL_MS: u64 = 60_000;

/// The failures an operator acts on differently, each limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    /// ENOSPC: free space, and appends resume.
    NoSpace,
    /// EIO: the device is failing; the log is offline until reopened.
    Eio,
    /// Any other I/O error.
    Other,
}

impl IoFailure {
    const COUNT: usize = 3;

    /// The kind of an I/O error; `None` for errors that are not I/O.
    pub fn of(err: &Error) -> Option<IoFailure> {
        match err {
            Error::NoSpace { .. } => Some(IoFailure::NoSpace),
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO) => {
                Some(IoFailure::Eio)
            }
            Error::Io { .. } => Some(IoFailure::Other),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            IoFailure::NoSpace => 0,
            IoFailure::Eio => 1,
            IoFailure::Other => 2,
        }
    }
}

/// One log's warning state per [`IoFailure`]. Owned by the log.
#[derive(Debug, Default, Clone)]
pub struct IoWarnLimiter {
    /// When the last warning of each kind went out.
    last_warned_ms: [Option<u64>; IoFailure::COUNT],
    /// Failures of each kind since that warning that did not get their own.
    suppressed: [u64; IoFailure::COUNT],
}

impl IoWarnLimiter {
    /// Records a failure of `kind` at `now_ms`. Returns `Some(n)` when a
    /// warning is due, `n` being the failures of that kind it also stands
    /// for (quiet ones since the last warning); `None` to stay quiet.
    pub fn on_failure(&mut self, kind: IoFailure, now_ms: u64) -> Option<u64> {
        let i = kind.index();
        let due = match self.last_warned_ms[i] {
            None => true,
            // A clock that went back never makes a warning due early.
            Some(last) => now_ms.saturating_sub(last) >= WARN_INTERVAL_MS,
        };
        if due {
            self.last_warned_ms[i] = Some(now_ms);
            Some(std::mem::take(&mut self.suppressed[i]))
        } else {
            self.suppressed[i] += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_warns_then_one_a_minute_counting_the_quiet_ones() {
        let mut limiter = IoWarnLimiter::default();
        let t0 = 1_000_000;
        assert_eq!(limiter.on_failure(IoFailure::NoSpace, t0), Some(0));
        assert_eq!(limiter.on_failure(IoFailure::NoSpace, t0), None);
        assert_eq!(limiter.on_failure(IoFailure::NoSpace, t0 + 1), None);
        assert_eq!(
            limiter.on_failure(IoFailure::NoSpace, t0 + WARN_INTERVAL_MS - 1),
            None
        );
        assert_eq!(
            limiter.on_failure(IoFailure::NoSpace, t0 + WARN_INTERVAL_MS),
            Some(3)
        );
        assert_eq!(
            limiter.on_failure(IoFailure::NoSpace, t0 + WARN_INTERVAL_MS + 1),
            None
        );
        // After a quiet spell longer than the interval, the next one warns.
        assert_eq!(
            limiter.on_failure(IoFailure::NoSpace, t0 + 10 * WARN_INTERVAL_MS),
            Some(1)
        );
    }

    #[test]
    fn each_kind_is_limited_on_its_own() {
        let mut limiter = IoWarnLimiter::default();
        assert_eq!(limiter.on_failure(IoFailure::NoSpace, 0), Some(0));
        assert_eq!(limiter.on_failure(IoFailure::Eio, 1), Some(0));
        assert_eq!(limiter.on_failure(IoFailure::Other, 2), Some(0));
        assert_eq!(limiter.on_failure(IoFailure::NoSpace, 3), None);
        assert_eq!(limiter.on_failure(IoFailure::Eio, 4), None);
        assert_eq!(
            limiter.on_failure(IoFailure::Eio, WARN_INTERVAL_MS + 1),
            Some(1)
        );
        assert_eq!(
            limiter.on_failure(IoFailure::NoSpace, WARN_INTERVAL_MS + 1),
            Some(1)
        );
    }

    #[test]
    fn a_clock_that_goes_back_keeps_the_limiter_quiet() {
        let mut limiter = IoWarnLimiter::default();
        assert_eq!(
            limiter.on_failure(IoFailure::Eio, 5 * WARN_INTERVAL_MS),
            Some(0)
        );
        assert_eq!(limiter.on_failure(IoFailure::Eio, 0), None);
        assert_eq!(
            limiter.on_failure(IoFailure::Eio, 6 * WARN_INTERVAL_MS),
            Some(1)
        );
    }

    #[test]
    fn errors_are_sorted_by_what_the_operator_does_about_them() {
        let io = |errno| Error::io("x", std::io::Error::from_raw_os_error(errno));
        assert_eq!(IoFailure::of(&io(libc::ENOSPC)), Some(IoFailure::NoSpace));
        assert_eq!(IoFailure::of(&io(libc::EIO)), Some(IoFailure::Eio));
        assert_eq!(IoFailure::of(&io(libc::EACCES)), Some(IoFailure::Other));
        assert_eq!(IoFailure::of(&Error::InvalidConfig("x".into())), None);
    }
}
