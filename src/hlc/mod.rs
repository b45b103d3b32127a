//! The hybrid logical clock. A stamp packs 48 bits of physical milliseconds
//! and a 16-bit logical counter into a `u64`, so stamps compare as integers.
//!
//! The HLC stamps epochs (the leader's stamp in every `EpochBatch`) and
//! reads; it never orders writes, the Raft log does. Time is injected through
//! [`Clock`]: the [`SystemClock`] in production, a [`ManualClock`] in tests
//! and an [`OffsetClock`] whose skew can be changed at run time.
//!
//! Invariant: [`Hlc::now`] is strictly increasing, whatever the clock does.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A packed HLC stamp.
pub type Stamp = u64;

/// Packs physical milliseconds and a logical counter.
pub fn pack(physical_ms: u64, logical: u16) -> Stamp {
    (physical_ms << LOGICAL_BITS) | logical as u64
}

/// The physical milliseconds of a stamp.
pub fn physical(stamp: Stamp) -> u64 {
    stamp >> LOGICAL_BITS
}

/// The logical counter of a stamp.
pub fn logical(stamp: Stamp) -> u16 {
    (stamp & LOGICAL_MASK) as u16
}

/// A source of physical time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst)
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Another clock plus an adjustable skew, so tests and the Jepsen harness can
/// skew a node's time without touching the machine's clock.
pub struct OffsetClock<C> {
    inner: C,
    offset_ms: AtomicI64,
}

impl<C: Clock> OffsetClock<C> {
    pub fn new(inner: C) -> Self {
        Self { inner, offset_ms: AtomicI64::new(0) }
    }
    /// Sets the skew; returns the previous one.
    pub fn set_offset_ms(&self, offset: i64) -> i64 {
        self.offset_ms.swap(offset, Ordering::SeqCst)
    }
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for OffsetClock<C> {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms().saturating_add_signed(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A remote stamp was too far ahead of our clock to be adopted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("remote HLC stamp is {ahead_ms} ms ahead of the local clock (max offset {max_offset_ms} ms)")]
pub struct OffsetExceeded {
    pub ahead_ms: u64,
    pub max_offset_ms: u64,
}

/// The pure HLC state transition: given the last stamp and the physical
/// time, the next stamp.
pub fn tick(last: Stamp, now_ms: u64) -> Stamp {
    let wall = pack(now_ms, 0);
    if wall > last {
        wall
    } else {
        // Same or earlier millisecond: bump the logical part; on overflow
        // borrow from the physical part (still strictly increasing).
        last + 1
    }
}

/// A hybrid logical clock.
pub struct Hlc {
    clock: Arc<dyn Clock>,
    max_offset_ms: u64,
    last: Mutex<Stamp>,
}

impl Hlc {
    pub fn new(clock: Arc<dyn Clock>, max_offset_ms: u64) -> Self {
        Self { clock, max_offset_ms, last: Mutex::new(0) }
    }

    /// A stamp greater than every stamp this clock returned or observed.
    pub fn now(&self) -> Stamp {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = tick(*last, self.clock.now_ms());
        *last
    }

    /// Observes a remote stamp (e.g. an applied epoch's): later local stamps
    /// are above it. Rejects stamps more than `max_offset_ms` ahead of the
    /// local clock rather than adopting them.
    pub fn update(&self, remote: Stamp) -> Result<Stamp, OffsetExceeded> {
        let now_ms = self.clock.now_ms();
        let ahead_ms = physical(remote).saturating_sub(now_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(OffsetExceeded { ahead_ms, max_offset_ms: self.max_offset_ms });
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = tick((*last).max(remote), now_ms);
        Ok(*last)
    }

    /// Raises the clock to at least `floor` without the offset check: used
    /// for stamps this node has already accepted through the Raft log.
    pub fn observe(&self, floor: Stamp) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(ms: u64) -> (Arc<ManualClock>, Hlc) {
        let clock = Arc::new(ManualClock::new(ms));
        (clock.clone(), Hlc::new(clock, 500))
    }

    #[test]
    fn packs_and_unpacks() {
        let s = pack(1_700_000_000_000, 7);
        assert_eq!(physical(s), 1_700_000_000_000);
        assert_eq!(logical(s), 7);
        assert!(pack(2, 0) > pack(1, u16::MAX));
    }

    #[test]
    fn monotonic_when_the_clock_stalls_or_jumps_back() {
        let (clock, h) = hlc(1000);
        let a = h.now();
        let b = h.now();
        assert!(b > a && physical(b) == 1000 && logical(b) == 1);
        clock.set(10);
        let c = h.now();
        assert!(c > b, "a clock going back must not move stamps back");
        clock.set(2000);
        assert_eq!(h.now(), pack(2000, 0));
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        assert_eq!(tick(pack(5, u16::MAX), 5), pack(6, 0));
    }

    #[test]
    fn update_adopts_remote_within_offset_and_rejects_beyond() {
        let (_clock, h) = hlc(1000);
        let remote = pack(1400, 3);
        let s = h.update(remote).unwrap();
        assert!(s > remote);
        assert!(h.now() > s);
        let err = h.update(pack(1501, 0)).unwrap_err();
        assert_eq!(err, OffsetExceeded { ahead_ms: 501, max_offset_ms: 500 });
        assert!(h.now() < pack(1501, 0), "a rejected stamp is never adopted");
    }

    #[test]
    fn monotonic_under_random_interleavings() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (clock, h) = hlc(10_000);
        let mut last = 0;
        for _ in 0..10_000 {
            match rng.gen_range(0..4) {
                0 => clock.set(rng.gen_range(0..20_000)),
                1 => {
                    let _ = h.update(pack(rng.gen_range(0..20_000), rng.gen()));
                }
                _ => {}
            }
            let s = h.now();
            assert!(s > last);
            last = s;
        }
    }

    #[test]
    fn offset_clock_skews() {
        let c = OffsetClock::new(ManualClock::new(1000));
        c.set_offset_ms(-300);
        assert_eq!(c.now_ms(), 700);
        c.set_offset_ms(10_000);
        assert_eq!(c.now_ms(), 11_000);
    }
}
