//! The concurrent hand-offs of the scheduler, small enough to model-check
//! with loom (`RUSTFLAGS="--cfg loom" cargo test --lib scheduler::sync`):
//!
//! - [`BoundedQueue`]: the per-vshard channel. `push` blocks while full
//!   (back-pressure onto the apply thread, never loss); `close` ends the
//!   consumer once drained.
//! - [`Rendezvous`]: a transaction touching k vshards is executed exactly
//!   once, by the last of its k vshards to reach it; the others wait until
//!   it is released, so no vshard moves past a transaction before its effects
//!   are in place.
//! - [`Latch`]: counts the epoch's transactions down; the apply thread waits
//!   on it before committing the epoch (the completion notification).
//! - [`Watermark`]: a per-vshard progress counter that only moves forward.

use std::collections::VecDeque;

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Condvar, Mutex,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Condvar, Mutex,
};

#[cfg(not(loom))]
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(loom)]
fn lock<T>(m: &Mutex<T>) -> loom::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// A bounded multi-producer single-consumer queue.
pub struct BoundedQueue<T> {
    state: Mutex<QueueState<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a queue needs room for one item");
        Self {
            state: Mutex::new(QueueState { items: VecDeque::new(), closed: false }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
        }
    }

    /// Appends `item`, waiting while the queue is full.
    pub fn push(&self, item: T) {
        let mut s = lock(&self.state);
        while s.items.len() >= self.capacity {
            s = self.not_full.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.items.push_back(item);
        drop(s);
        self.not_empty.notify_one();
    }

    /// The next item, waiting while empty; `None` once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut s = lock(&self.state);
        loop {
            if let Some(item) = s.items.pop_front() {
                drop(s);
                self.not_full.notify_all();
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.not_empty.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.not_empty.notify_all();
    }
}

/// What [`Rendezvous::arrive`] tells a vshard to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Every involved vshard is here: execute, then [`Rendezvous::release`].
    Execute,
    /// Others are still coming: [`Rendezvous::wait`].
    Wait,
}

/// The meeting point of the vshards a transaction touches.
pub struct Rendezvous {
    state: Mutex<(usize, bool)>,
    released: Condvar,
    parties: usize,
}

impl Rendezvous {
    pub fn new(parties: usize) -> Self {
        assert!(parties > 0);
        Self { state: Mutex::new((0, false)), released: Condvar::new(), parties }
    }

    pub fn arrive(&self) -> Arrival {
        let mut s = lock(&self.state);
        s.0 += 1;
        assert!(s.0 <= self.parties, "more vshards arrived than the transaction touches");
        if s.0 == self.parties {
            Arrival::Execute
        } else {
            Arrival::Wait
        }
    }

    pub fn release(&self) {
        lock(&self.state).1 = true;
        self.released.notify_all();
    }

    pub fn wait(&self) {
        let mut s = lock(&self.state);
        while !s.1 {
            s = self.released.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A countdown the epoch's committer waits on.
pub struct Latch {
    remaining: Mutex<usize>,
    zero: Condvar,
}

impl Latch {
    pub fn new(count: usize) -> Self {
        Self { remaining: Mutex::new(count), zero: Condvar::new() }
    }

    pub fn count_down(&self) {
        let mut r = lock(&self.remaining);
        *r = r.checked_sub(1).expect("latch counted below zero");
        if *r == 0 {
            drop(r);
            self.zero.notify_all();
        }
    }

    pub fn wait(&self) {
        let mut r = lock(&self.remaining);
        while *r > 0 {
            r = self.zero.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A vshard's progress: `(log index << 20) | position` of the last
/// transaction it passed. Only moves forward.
#[derive(Default)]
pub struct Watermark(AtomicU64);

impl Watermark {
    pub fn position(index: u64, pos: usize) -> u64 {
        (index << 20) | pos as u64
    }

    /// Advances to `to`; panics if that would move backwards (a scheduling
    /// bug that must stop the replica, never be papered over).
    pub fn advance(&self, to: u64) {
        let prev = self.0.fetch_max(to, Ordering::AcqRel);
        assert!(prev <= to, "vshard watermark moved backwards: {prev} -> {to}");
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Run with `RUSTFLAGS="--cfg loom" cargo test --lib scheduler::sync`.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two vshards, capacity-1 queues, transactions [A, AB, B, AB]: every
    /// transaction runs exactly once, in each vshard's order, nothing
    /// deadlocks although the fan-out blocks on full queues, and the
    /// committer is woken only after all ran.
    #[test]
    fn fan_out_rendezvous_and_completion() {
        loom::model(|| {
            let plan: Vec<Vec<usize>> = vec![vec![0], vec![0, 1], vec![1], vec![0, 1]];
            let queues: Arc<Vec<BoundedQueue<(usize, Arc<Rendezvous>)>>> =
                Arc::new((0..2).map(|_| BoundedQueue::new(1)).collect());
            let runs = Arc::new(Mutex::new(Vec::new()));
            let latch = Arc::new(Latch::new(plan.len()));
            let marks: Arc<Vec<Watermark>> = Arc::new((0..2).map(|_| Watermark::default()).collect());
            let workers: Vec<_> = (0..2)
                .map(|v| {
                    let (queues, runs, latch, marks) = (queues.clone(), runs.clone(), latch.clone(), marks.clone());
                    thread::spawn(move || {
                        while let Some((pos, gate)) = queues[v].pop() {
                            match gate.arrive() {
                                Arrival::Execute => {
                                    runs.lock().unwrap().push(pos);
                                    gate.release();
                                    latch.count_down();
                                }
                                Arrival::Wait => gate.wait(),
                            }
                            marks[v].advance(Watermark::position(1, pos));
                        }
                    })
                })
                .collect();
            for (pos, vshards) in plan.iter().enumerate() {
                let gate = Arc::new(Rendezvous::new(vshards.len()));
                for &v in vshards {
                    queues[v].push((pos, gate.clone()));
                }
            }
            latch.wait();
            let ran = runs.lock().unwrap().clone();
            let mut sorted = ran.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3], "each transaction exactly once");
            let p = |x| ran.iter().position(|&r| r == x).unwrap();
            assert!(p(0) < p(1) && p(1) < p(3) && p(2) < p(3), "conflicting transactions keep log order");
            for q in queues.iter() {
                q.close();
            }
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(marks[0].get(), Watermark::position(1, 3));
            assert_eq!(marks[1].get(), Watermark::position(1, 3));
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn queue_blocks_when_full_and_drains_after_close() {
        let q = Arc::new(BoundedQueue::new(2));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    q.push(i);
                }
                q.close();
            })
        };
        let got: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn rendezvous_executes_on_the_last_arrival() {
        let r = Rendezvous::new(3);
        assert_eq!(r.arrive(), Arrival::Wait);
        assert_eq!(r.arrive(), Arrival::Wait);
        assert_eq!(r.arrive(), Arrival::Execute);
        r.release();
        r.wait();
    }

    #[test]
    #[should_panic(expected = "watermark moved backwards")]
    fn watermark_never_moves_back() {
        let w = Watermark::default();
        w.advance(Watermark::position(2, 0));
        w.advance(Watermark::position(1, 5));
    }
}
