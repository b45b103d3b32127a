//! The Wing–Gong–Lowe linearizability search for one partition.
//!
//! Call and return events are kept in a doubly linked list in history order. The search
//! repeatedly takes a call that precedes the first remaining return (a *minimal* operation),
//! applies it to the model and, if legal and the pair (set of linearized operations, model
//! state) was not seen before, "lifts" the operation out of the list and goes on; reaching a
//! return whose call was not linearized means backtracking. The memo of seen pairs is
//! Lowe's improvement (as in Porcupine): the set is a bitset hashed incrementally with
//! Zobrist keys, combined with the state's hash, and stored in an arena as the window of
//! the set above its fully-linearized prefix (see `Memo`).
//!
//! One pruning beyond Porcupine: an operation that never changes the state (a read) and is
//! legal now can be linearized now without loss of generality, so when that choice fails
//! (or was already explored) the current configuration fails as a whole.
//!
//! Pending operations (no return) get their return after every other event, so they may
//! be linearized anywhere after their invocation, or last, which is "not at all".
//! Limits: the search is exponential in the worst case; it is bounded by a deadline, a
//! shared memory budget for the memo and a cancellation flag, and then reports
//! [`Outcome::Aborted`].

use crate::hash::fxhash;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// A sequential specification with small, copyable (usually interned) states.
pub trait Model {
    /// The operation type (input and observed output).
    type Op;
    /// A model state.
    type State: Copy + Eq + Hash;
    /// The initial state.
    fn init(&mut self) -> Self::State;
    /// Applies `op` (whose index in the partition is `id`) to `state`; `None` if the
    /// operation's observed output is impossible in that state.
    fn step(&mut self, state: Self::State, id: usize, op: &Self::Op) -> Option<Self::State>;
    /// `true` if `op` never changes the state when legal (a read, a failed cas, a get).
    /// Such an op, when legal, can be linearized at once without loss of generality: the
    /// search then never tries alternatives to it.
    fn read_only(&self, _op: &Self::Op) -> bool {
        false
    }
}

/// One operation of a partition: its model op, and the positions of its call and return
/// in the history (`ret == None` for a pending operation).
#[derive(Debug, Clone)]
pub struct LinOp<O> {
    /// The model operation.
    pub op: O,
    /// Position of the invocation.
    pub call: usize,
    /// Position of the completion, `None` if it never returned (or returned `info`).
    pub ret: Option<usize>,
}

/// Why a search stopped without a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The deadline passed.
    Timeout,
    /// The shared memo budget ran out.
    Memory,
    /// Another partition was found non-linearizable.
    Cancelled,
}

impl AbortReason {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::Timeout => "timeout",
            AbortReason::Memory => "memory-limit",
            AbortReason::Cancelled => "cancelled",
        }
    }
}

/// Result of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists; `prefix` is the longest linearizable prefix met (partition
    /// op indices in linearization order).
    Illegal {
        /// Longest prefix found.
        prefix: Vec<usize>,
    },
    /// Gave up; `prefix` as above, so far.
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Longest prefix found so far.
        prefix: Vec<usize>,
    },
}

/// Shared limits for all partitions of one check.
#[derive(Debug)]
pub struct Budget {
    /// Stop when this instant passes.
    pub deadline: Option<Instant>,
    /// Set by any partition that finds a violation; the others stop.
    pub cancel: AtomicBool,
    /// Bytes of memo still available to all partitions together.
    pub memory_left: AtomicUsize,
}

impl Budget {
    /// A budget with the given deadline and memo memory.
    pub fn new(deadline: Option<Instant>, memory_bytes: usize) -> Budget {
        Budget { deadline, cancel: AtomicBool::new(false), memory_left: AtomicUsize::new(memory_bytes) }
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.memory_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes)).is_ok()
    }
}

/// Hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const NONE: u32 = u32::MAX;

/// Memo of visited (linearized set, state) pairs, stored in flat arenas.
///
/// Operations are ranked by invocation, and a linearized set is stored as `(low, high,
/// window)`: every op ranked below `low` is linearized, `low` itself is not, none above
/// `high` is, and `window` holds the bitset words covering `low..=high`. Since WGL only
/// linearizes minimal operations, the window stays about as wide as the concurrency, so
/// entries stay small even for very long histories.
struct Memo<S> {
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    chain: Vec<u32>,
    /// (low, high, offset into `words`) per entry.
    spans: Vec<(u32, u32, u32)>,
    words: Vec<u64>,
    states: Vec<S>,
}

/// Word range of the window `low..=high` (empty when `low > high`).
fn window(low: u32, high: u32) -> std::ops::Range<usize> {
    if low > high {
        0..0
    } else {
        (low / 64) as usize..(high / 64) as usize + 1
    }
}

impl<S: Copy + Eq> Memo<S> {
    fn new() -> Memo<S> {
        Memo { heads: HashMap::default(), chain: Vec::new(), spans: Vec::new(), words: Vec::new(), states: Vec::new() }
    }

    /// Bytes an entry with `w` window words costs, roughly (arenas, hash slot, slack).
    fn entry_bytes(w: usize) -> usize {
        w * 8 + 12 + 4 + std::mem::size_of::<S>() + 32
    }

    fn same(&self, at: usize, low: u32, high: u32, bits: &[u64], state: S) -> bool {
        let (l, h, off) = self.spans[at];
        if l != low || h != high || self.states[at] != state {
            return false;
        }
        let r = window(low, high);
        let off = off as usize;
        self.words[off..off + r.len()] == bits[r]
    }

    /// Inserts; `false` if already present.
    fn insert(&mut self, hash: u64, low: u32, high: u32, bits: &[u64], state: S) -> bool {
        let new = self.states.len() as u32;
        let mut head = NONE;
        if let Some(&first) = self.heads.get(&hash) {
            let mut i = first;
            while i != NONE {
                if self.same(i as usize, low, high, bits, state) {
                    return false;
                }
                i = self.chain[i as usize];
            }
            head = first;
        }
        self.heads.insert(hash, new);
        self.chain.push(head);
        self.spans.push((low, high, self.words.len() as u32));
        self.words.extend_from_slice(&bits[window(low, high)]);
        self.states.push(state);
        true
    }
}

/// splitmix64, for Zobrist keys.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The longest linearized prefix seen, maintained in amortised O(1) per step: `valid` is
/// how much of `ops` still agrees with the search stack.
#[derive(Default)]
struct Best {
    ops: Vec<usize>,
    valid: usize,
}

impl Best {
    fn popped_to(&mut self, depth: usize) {
        self.valid = self.valid.min(depth);
    }

    fn pushed(&mut self, stack: &[usize]) {
        if stack.len() > self.ops.len() {
            self.ops.truncate(self.valid);
            self.ops.extend_from_slice(&stack[self.valid..]);
            self.valid = stack.len();
        }
    }
}

/// Runs the search over `ops` with `model`.
pub fn search<M: Model>(model: &mut M, ops: &[LinOp<M::Op>], budget: &Budget) -> Outcome {
    let n = ops.len();
    if n == 0 {
        return Outcome::Linearizable;
    }
    // Rank operations by invocation; bitsets and Zobrist keys are indexed by rank.
    let mut by_rank: Vec<usize> = (0..n).collect();
    by_rank.sort_by_key(|&i| (ops[i].call, ops[i].ret.unwrap_or(usize::MAX), i));
    // Events: (position, 0 = call / 1 = return, rank). Pending returns go last.
    let mut events: Vec<(usize, u8, u32)> = Vec::with_capacity(2 * n);
    for (r, &i) in by_rank.iter().enumerate() {
        events.push((ops[i].call, 0, r as u32));
        events.push((ops[i].ret.unwrap_or(usize::MAX), 1, r as u32));
    }
    events.sort_unstable();

    // Linked list over entries 1..=2n; 0 is the head, 2n+1 the tail sentinel.
    let tail = (2 * n + 1) as u32;
    let mut next: Vec<u32> = (1..=tail + 1).collect();
    let mut prev: Vec<u32> = (0..=tail).map(|i| i.wrapping_sub(1)).collect();
    next[tail as usize] = NONE;
    prev[0] = NONE;
    let mut entry_rank = vec![0u32; 2 * n + 2];
    let mut is_call = vec![false; 2 * n + 2];
    let mut matching = vec![NONE; 2 * n + 2];
    let mut return_of = vec![NONE; n];
    for (k, &(_, kind, r)) in events.iter().enumerate().rev() {
        let e = k + 1;
        entry_rank[e] = r;
        if kind == 0 {
            is_call[e] = true;
            matching[e] = return_of[r as usize];
        } else {
            return_of[r as usize] = e as u32;
        }
    }

    let zobrist: Vec<u64> = (0..n).map(|i| splitmix(i as u64 ^ 0x5eed)).collect();
    let mut bits = vec![0u64; n.div_ceil(64) + 1];
    let is_set = |bits: &[u64], r: u32| bits[(r / 64) as usize] & (1u64 << (r % 64)) != 0;
    let mut zhash = 0u64;
    // low: lowest rank not linearized; highs: the highest linearized rank after each push.
    let mut low = 0u32;
    let mut highs: Vec<u32> = Vec::new();
    let mut memo: Memo<M::State> = Memo::new();
    let chunk = 1usize << 20;
    let (mut used, mut reserved) = (0usize, 0usize);

    let mut state = model.init();
    // (entry, previous state, previous low, linearized a legal read-only op)
    let mut stack: Vec<(u32, M::State, u32, bool)> = Vec::new();
    // Set when the current configuration is known to be dead: backtrack without trying
    // further candidates.
    let mut dead = false;
    let mut prefix: Vec<usize> = Vec::new();
    let mut best = Best::default();
    let mut entry = next[0];
    let mut iterations: u64 = 0;

    let lift = |next: &mut Vec<u32>, prev: &mut Vec<u32>, e: u32, m: u32| {
        let (pe, ne) = (prev[e as usize], next[e as usize]);
        next[pe as usize] = ne;
        prev[ne as usize] = pe;
        let (pm, nm) = (prev[m as usize], next[m as usize]);
        next[pm as usize] = nm;
        prev[nm as usize] = pm;
    };
    let unlift = |next: &mut Vec<u32>, prev: &mut Vec<u32>, e: u32, m: u32| {
        let (pm, nm) = (prev[m as usize], next[m as usize]);
        next[pm as usize] = m;
        prev[nm as usize] = m;
        let (pe, ne) = (prev[e as usize], next[e as usize]);
        next[pe as usize] = e;
        prev[ne as usize] = e;
    };

    loop {
        if next[0] == tail {
            return Outcome::Linearizable;
        }
        iterations += 1;
        if iterations & 0x3fff == 0 {
            if budget.cancel.load(Ordering::Relaxed) {
                return Outcome::Aborted { reason: AbortReason::Cancelled, prefix: best.ops };
            }
            if budget.deadline.is_some_and(|d| Instant::now() >= d) {
                return Outcome::Aborted { reason: AbortReason::Timeout, prefix: best.ops };
            }
        }
        let e = entry as usize;
        if is_call[e] && !dead {
            let r = entry_rank[e];
            let id = by_rank[r as usize];
            if let Some(new_state) = model.step(state, id, &ops[id].op) {
                let dominant = model.read_only(&ops[id].op);
                let (w, mask) = ((r / 64) as usize, 1u64 << (r % 64));
                bits[w] |= mask;
                let mut new_low = low;
                while (new_low as usize) < n && is_set(&bits, new_low) {
                    new_low += 1;
                }
                let high = highs.last().map_or(r, |&h| h.max(r));
                let h = zhash ^ zobrist[r as usize];
                let key = h ^ fxhash(&new_state).rotate_left(17);
                if memo.insert(key, new_low, high, &bits, new_state) {
                    used += Memo::<M::State>::entry_bytes(window(new_low, high).len());
                    if used > reserved {
                        if !budget.reserve(chunk) {
                            return Outcome::Aborted { reason: AbortReason::Memory, prefix: best.ops };
                        }
                        reserved += chunk;
                    }
                    stack.push((entry, state, low, dominant));
                    highs.push(high);
                    prefix.push(id);
                    best.pushed(&prefix);
                    state = new_state;
                    zhash = h;
                    low = new_low;
                    lift(&mut next, &mut prev, entry, matching[e]);
                    entry = next[0];
                    continue;
                }
                bits[w] &= !mask;
                if dominant {
                    // Linearizing this read-only op here was already explored and failed,
                    // so this whole configuration fails.
                    dead = true;
                    continue;
                }
            }
            entry = next[e];
        } else {
            // A return whose call is not linearized, or a dead configuration: backtrack.
            let Some((top, old_state, old_low, dominant)) = stack.pop() else {
                return Outcome::Illegal { prefix: best.ops };
            };
            highs.pop();
            prefix.pop();
            best.popped_to(prefix.len());
            let r = entry_rank[top as usize];
            bits[(r / 64) as usize] &= !(1u64 << (r % 64));
            zhash ^= zobrist[r as usize];
            state = old_state;
            low = old_low;
            unlift(&mut next, &mut prev, top, matching[top as usize]);
            entry = next[top as usize];
            // A failed read-only choice dooms its parent configuration too.
            dead = dominant;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of small ints: `(is_write, value)`.
    struct Reg;
    impl Model for Reg {
        type Op = (bool, u8);
        type State = u8;
        fn init(&mut self) -> u8 {
            0
        }
        fn step(&mut self, s: u8, _: usize, op: &(bool, u8)) -> Option<u8> {
            match op {
                (true, v) => Some(*v),
                (false, v) => (s == *v).then_some(s),
            }
        }
    }

    fn op(op: (bool, u8), call: usize, ret: Option<usize>) -> LinOp<(bool, u8)> {
        LinOp { op, call, ret }
    }

    fn budget() -> Budget {
        Budget::new(None, usize::MAX)
    }

    #[test]
    fn concurrent_write_and_read_linearize() {
        // w(1) overlaps r -> 1, which overlaps r -> 0: order r0, w1, r1.
        let ops = vec![op((true, 1), 0, Some(3)), op((false, 1), 1, Some(4)), op((false, 0), 2, Some(5))];
        assert_eq!(search(&mut Reg, &ops, &budget()), Outcome::Linearizable);
    }

    /// The register of `Reg`, with reads marked read-only so the pruning applies.
    struct PrunedReg;
    impl Model for PrunedReg {
        type Op = (bool, u8);
        type State = u8;
        fn init(&mut self) -> u8 {
            0
        }
        fn step(&mut self, s: u8, id: usize, op: &(bool, u8)) -> Option<u8> {
            Reg.step(s, id, op)
        }
        fn read_only(&self, op: &(bool, u8)) -> bool {
            !op.0
        }
    }

    #[test]
    fn read_only_pruning_keeps_valid_orders_and_rejects_invalid_ones() {
        // w1 || w2, then r -> 2, then r -> 1: only w2 r2 w1 r1 works, and the greedy
        // first choice (w1) must be undone through a pruned read.
        let ops = vec![
            op((true, 1), 0, Some(10)),
            op((true, 2), 1, Some(11)),
            op((false, 2), 2, Some(3)),
            op((false, 1), 4, Some(5)),
        ];
        assert_eq!(search(&mut PrunedReg, &ops, &budget()), Outcome::Linearizable);
        // ... but r -> 1 then r -> 2 then r -> 1 is not linearizable.
        let mut bad = ops.clone();
        bad.push(op((false, 2), 6, Some(7)));
        bad.push(op((false, 1), 12, Some(13)));
        assert!(matches!(search(&mut PrunedReg, &bad, &budget()), Outcome::Illegal { .. }));
        assert!(matches!(search(&mut Reg, &bad, &budget()), Outcome::Illegal { .. }));
    }

    #[test]
    fn stale_read_after_completed_write_is_illegal() {
        let ops = vec![op((true, 1), 0, Some(1)), op((false, 0), 2, Some(3))];
        match search(&mut Reg, &ops, &budget()) {
            Outcome::Illegal { prefix } => assert_eq!(prefix, vec![0]),
            other => panic!("expected illegal, got {other:?}"),
        }
    }

    #[test]
    fn pending_write_may_apply_late_or_never() {
        // w(2) never returns; reads 0 then 2 then 2 are fine; w(3) pending is ignored.
        let ops = vec![
            op((true, 2), 0, None),
            op((false, 0), 1, Some(2)),
            op((false, 2), 3, Some(4)),
            op((true, 3), 5, None),
            op((false, 2), 6, Some(7)),
        ];
        assert_eq!(search(&mut Reg, &ops, &budget()), Outcome::Linearizable);
    }

    #[test]
    fn cancellation_and_memory_limits_abort() {
        let ops: Vec<_> = (0..40).map(|i| op((true, (i % 7) as u8), i, Some(100 + i))).collect();
        let b = Budget::new(None, 0);
        assert!(matches!(search(&mut Reg, &ops, &b), Outcome::Aborted { reason: AbortReason::Memory, .. }));
        let b = Budget::new(None, usize::MAX);
        b.cancel.store(true, Ordering::Relaxed);
        // A search long enough to reach a cancellation check: all-concurrent reads of a
        // value never written force exhaustive backtracking.
        let mut ops: Vec<_> = (0..200).map(|i| op((true, (i % 5) as u8), i, Some(1000 + i))).collect();
        ops.push(op((false, 9), 0, Some(2000)));
        assert!(matches!(
            search(&mut Reg, &ops, &b),
            Outcome::Aborted { reason: AbortReason::Cancelled, .. } | Outcome::Illegal { .. }
        ));
    }
}
