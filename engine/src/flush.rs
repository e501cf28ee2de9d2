//! The flush policy (pure): when must unflushed appends be fsynced?
//!
//! Kafka's `flush.messages` and `flush.ms`. Both unset (the default) means
//! the engine never fsyncs on its own and durability comes from replication;
//! appends then survive a process crash (the page cache has them) but not a
//! power loss. The log also flushes on segment roll and clean shutdown.

/// Tracks unflushed records against the policy. Owned by one log.
#[derive(Debug, Clone, Default)]
pub struct FlushPolicy {
    flush_messages: Option<u64>,
    flush_ms: Option<u64>,
    unflushed_messages: u64,
    /// When the oldest unflushed record was appended.
    oldest_unflushed_ms: Option<u64>,
}

impl FlushPolicy {
    pub fn new(flush_messages: Option<u64>, flush_ms: Option<u64>) -> Self {
        FlushPolicy {
            flush_messages,
            flush_ms,
            ..FlushPolicy::default()
        }
    }

    /// Records an append of `records` at `now_ms`; returns whether the log
    /// must fsync before the append is reported.
    pub fn on_append(&mut self, records: u64, now_ms: u64) -> bool {
        self.unflushed_messages = self.unflushed_messages.saturating_add(records);
        self.oldest_unflushed_ms.get_or_insert(now_ms);
        self.is_due(now_ms)
    }

    /// Whether the unflushed records must be fsynced now.
    pub fn is_due(&self, now_ms: u64) -> bool {
        if self.unflushed_messages == 0 {
            return false;
        }
        let by_count = self
            .flush_messages
            .is_some_and(|max| self.unflushed_messages >= max);
        let by_age = match (self.flush_ms, self.oldest_unflushed_ms) {
            (Some(max_age), Some(oldest)) => now_ms.saturating_sub(oldest) >= max_age,
            _ => false,
        };
        by_count || by_age
    }

    /// When a time-based flush falls due, if one is pending.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match (self.flush_ms, self.oldest_unflushed_ms) {
            (Some(max_age), Some(oldest)) if self.unflushed_messages > 0 => {
                Some(oldest.saturating_add(max_age))
            }
            _ => None,
        }
    }

    /// Everything appended so far is durable.
    pub fn on_flushed(&mut self) {
        self.unflushed_messages = 0;
        self.oldest_unflushed_ms = None;
    }

    pub fn unflushed_messages(&self) -> u64 {
        self.unflushed_messages
    }

    pub fn set_limits(&mut self, flush_messages: Option<u64>, flush_ms: Option<u64>) {
        self.flush_messages = flush_messages;
        self.flush_ms = flush_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (flush.messages, flush.ms, appends as (records, now_ms), expected
    /// decision after each append)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(Option<u64>, Option<u64>, &[(u64, u64)], &[bool])] = &[
        (
            None,
            None,
            &[(1, 0), (1000, 10), (1, 1_000_000)],
            &[false, false, false],
        ),
        (Some(1), None, &[(1, 0), (5, 0)], &[true, true]),
        (
            Some(10),
            None,
            &[(4, 0), (5, 0), (1, 0)],
            &[false, false, true],
        ),
        (
            None,
            Some(100),
            &[(1, 0), (1, 99), (1, 100)],
            &[false, false, true],
        ),
        (Some(100), Some(50), &[(1, 0), (1, 60)], &[false, true]),
    ];

    #[test]
    fn decisions_follow_the_table() {
        for (messages, ms, appends, expected) in TABLE {
            let mut policy = FlushPolicy::new(*messages, *ms);
            for ((records, now), want) in appends.iter().zip(expected.iter()) {
                assert_eq!(
                    policy.on_append(*records, *now),
                    *want,
                    "flush.messages={messages:?} flush.ms={ms:?} at {now}"
                );
            }
        }
    }

    #[test]
    fn a_flush_resets_the_count_and_the_age() {
        let mut policy = FlushPolicy::new(Some(2), Some(100));
        assert!(!policy.on_append(1, 0));
        assert_eq!(policy.next_deadline_ms(), Some(100));
        policy.on_flushed();
        assert_eq!(policy.next_deadline_ms(), None);
        assert!(!policy.is_due(1000));
        assert!(!policy.on_append(1, 1000));
        assert_eq!(policy.next_deadline_ms(), Some(1100));
    }
}
