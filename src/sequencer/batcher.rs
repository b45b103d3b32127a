//! The epoch batcher: the pure core deciding when the leader closes an
//! epoch. Time is passed in (milliseconds on any monotonic clock).
//!
//! An open epoch closes when
//! - the pipeline is idle (no epoch in flight): at once, so a lone client
//!   never waits for a timer;
//! - it reached `max_txns` or `max_bytes`;
//! - its window (`window_ms` since it opened) has passed;
//!
//! but never while `max_inflight` epochs are already proposed and not yet
//! committed: then it keeps filling until one commits, and [`Batcher::full`]
//! tells the driver to stop taking new transactions (back-pressure).
//!
//! An idle leader also closes an *empty* epoch once no epoch has closed for
//! a while ([`Batcher::poll_idle`]): applied stamps are the replicas'
//! closed timestamp, and this keeps it moving with the clock.

#[derive(Clone, Debug)]
pub struct BatcherConfig {
    pub max_txns: usize,
    pub max_bytes: usize,
    pub window_ms: u64,
    pub max_inflight: usize,
}

#[derive(Debug)]
pub struct Batcher<T> {
    cfg: BatcherConfig,
    open: Vec<T>,
    open_bytes: usize,
    opened_at: u64,
    inflight: usize,
    last_closed: u64,
}

impl<T> Batcher<T> {
    pub fn new(cfg: BatcherConfig) -> Self {
        Self { cfg, open: Vec::new(), open_bytes: 0, opened_at: 0, inflight: 0, last_closed: 0 }
    }

    /// Adds a transaction of `bytes` to the open epoch.
    pub fn push(&mut self, item: T, bytes: usize, now: u64) {
        if self.open.is_empty() {
            self.opened_at = now;
        }
        self.open.push(item);
        self.open_bytes += bytes;
    }

    /// True when the open epoch is at a size limit.
    pub fn full(&self) -> bool {
        self.open.len() >= self.cfg.max_txns || self.open_bytes >= self.cfg.max_bytes
    }

    /// The closed epoch, if it should close now. The caller proposes it and
    /// later reports [`Batcher::committed`].
    pub fn poll(&mut self, now: u64) -> Option<Vec<T>> {
        if self.open.is_empty() || self.inflight >= self.cfg.max_inflight {
            return None;
        }
        let idle = self.inflight == 0;
        let expired = now >= self.opened_at + self.cfg.window_ms;
        if idle || self.full() || expired {
            self.inflight += 1;
            self.open_bytes = 0;
            self.last_closed = now;
            return Some(std::mem::take(&mut self.open));
        }
        None
    }

    /// True when an empty epoch should be proposed now: nothing is open or
    /// in flight and no epoch closed in the last `interval_ms` (0 = never).
    /// The empty epoch then counts as in flight.
    pub fn poll_idle(&mut self, now: u64, interval_ms: u64) -> bool {
        let due = interval_ms > 0
            && self.open.is_empty()
            && self.inflight == 0
            && now >= self.last_closed.saturating_add(interval_ms);
        if due {
            self.inflight += 1;
            self.last_closed = now;
        }
        due
    }

    /// When to poll again if nothing else happens.
    pub fn deadline(&self) -> Option<u64> {
        (!self.open.is_empty() && self.inflight < self.cfg.max_inflight).then(|| self.opened_at + self.cfg.window_ms)
    }

    /// A proposed epoch finished (committed or failed).
    pub fn committed(&mut self) {
        self.inflight = self.inflight.checked_sub(1).expect("committed more epochs than proposed");
    }

    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Drops the open epoch's transactions (leadership lost), returning them.
    pub fn drain(&mut self) -> Vec<T> {
        self.open_bytes = 0;
        std::mem::take(&mut self.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher() -> Batcher<u32> {
        Batcher::new(BatcherConfig { max_txns: 3, max_bytes: 1000, window_ms: 5, max_inflight: 2 })
    }

    #[test]
    fn idle_pipeline_closes_at_once() {
        let mut b = batcher();
        assert_eq!(b.poll(0), None, "nothing to close");
        b.push(1, 10, 100);
        assert_eq!(b.poll(100), Some(vec![1]), "a lone client does not wait for the window");
    }

    #[test]
    fn busy_pipeline_waits_for_window_or_size() {
        let mut b = batcher();
        b.push(1, 10, 0);
        assert_eq!(b.poll(0), Some(vec![1]));
        b.push(2, 10, 1);
        assert_eq!(b.poll(2), None, "one epoch in flight: keep collecting");
        assert_eq!(b.deadline(), Some(6));
        assert_eq!(b.poll(6), Some(vec![2]), "window passed");
        b.push(3, 10, 7);
        assert_eq!(b.poll(100), None, "max_inflight reached: wait for a commit");
        assert_eq!(b.deadline(), None);
        b.committed();
        assert_eq!(b.poll(8), None);
        b.push(4, 10, 8);
        b.push(5, 10, 8);
        assert!(b.full());
        assert_eq!(b.poll(8), Some(vec![3, 4, 5]), "size limit closes before the window");
    }

    #[test]
    fn an_idle_pipeline_closes_empty_epochs_at_the_interval() {
        let mut b = batcher();
        assert!(!b.poll_idle(50, 0), "0 disables empty epochs");
        assert!(b.poll_idle(100, 100));
        assert!(!b.poll_idle(150, 100), "one in flight");
        b.committed();
        assert!(!b.poll_idle(150, 100), "too soon after the last one");
        b.push(1, 10, 160);
        assert_eq!(b.poll(160), Some(vec![1]));
        b.committed();
        assert!(!b.poll_idle(200, 100), "a real epoch closed at 160");
        assert!(b.poll_idle(260, 100));
        b.committed();
        b.push(2, 10, 400);
        assert!(!b.poll_idle(400, 100), "something is open");
    }

    #[test]
    fn byte_limit_closes() {
        let mut b = batcher();
        b.push(0, 1, 0);
        b.poll(0);
        b.push(1, 999, 0);
        assert_eq!(b.poll(0), None);
        b.push(2, 1, 0);
        assert_eq!(b.poll(0), Some(vec![1, 2]));
    }
}
