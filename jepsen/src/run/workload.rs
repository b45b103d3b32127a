//! Workloads: what the clients of a run do, as pure generators.
//!
//! A [`Generator`] hands each worker its next [`Op`] and, after the faults are healed, the
//! list of final operations (reads that make lost writes visible). Generators are plain state
//! machines over a seeded RNG: no clock, no IO. [`super::client`] executes the ops against
//! Arbor and [`super::recorder`] writes them into the history, in the JSONL encoding the
//! checkers read (`jepsen/README.md`, "Input formats").
//!
//! - **register** (Knossos style): independent keys, each worked on by a group of
//!   `threads_per_key` workers for at most `ops_per_key` operations (read / write / cas over
//!   the values 0..5), then the group moves to a fresh key. Bounded ops per key keep the
//!   per-key linearizability searches small.
//! - **list-append** (Elle style): transactions of 1..=`max_txn_len` micro-ops, each an
//!   append of a per-key unique value or a read, over `key_count` active keys; a key that
//!   has received `max_writes_per_key` appends is replaced by a fresh one, so lists stay short.
//! - **set**: unique adds; the final op reads the whole set.
//! - **bank**: transfers of 1..=5 between `accounts` accounts, and reads of every balance.
//! - **watch**: puts of globally unique values to `key_count` keys under one prefix, and
//!   one in [`WATCH_DELETE_ONE_IN`] ops a guarded delete ("delete the key if it holds X",
//!   X the last value issued for it), so that every change a watcher sees names the op that
//!   made it; the final op is one linearizable read of the prefix (the watchers' barrier).
//!   The watchers themselves are tasks of their own (`super::watchers`), not generator ops.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

/// The workloads of `arbor-jepsen run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Linearizable read/write/cas registers, checked per key with `cas-register`.
    Register,
    /// Elle list-append transactions, checked for strict serializability.
    ListAppend,
    /// Unique adds and a final read: nothing lost, nothing duplicated.
    Set,
    /// Transfers between accounts; every read sums to the total.
    Bank,
    /// Puts and guarded deletes under a prefix, streamed by several watchers that must agree.
    Watch,
}

impl WorkloadKind {
    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<WorkloadKind> {
        Some(match name {
            "register" => WorkloadKind::Register,
            "list-append" => WorkloadKind::ListAppend,
            "set" => WorkloadKind::Set,
            "bank" => WorkloadKind::Bank,
            "watch" => WorkloadKind::Watch,
            _ => return None,
        })
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::ListAppend => "list-append",
            WorkloadKind::Set => "set",
            WorkloadKind::Bank => "bank",
            WorkloadKind::Watch => "watch",
        }
    }

    /// The checker that judges this workload's history.
    pub fn checker(self) -> crate::Workload {
        match self {
            WorkloadKind::Register => crate::Workload::CasRegister,
            WorkloadKind::ListAppend => crate::Workload::ListAppend,
            WorkloadKind::Set => crate::Workload::Set,
            WorkloadKind::Bank => crate::Workload::Bank,
            WorkloadKind::Watch => crate::Workload::Watch,
        }
    }
}

/// A list-append micro-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Append `value` to the list at `key`.
    Append {
        /// The list's key number.
        key: u64,
        /// Unique per key.
        value: u64,
    },
    /// Read the list at `key`.
    Read {
        /// The list's key number.
        key: u64,
    },
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// register: read a key.
    Read {
        /// Register key number.
        key: u64,
    },
    /// register: write a value.
    Write {
        /// Register key number.
        key: u64,
        /// The value (0..5).
        value: u64,
    },
    /// register: if the value is `from`, set it to `to`.
    Cas {
        /// Register key number.
        key: u64,
        /// Expected value.
        from: u64,
        /// New value.
        to: u64,
    },
    /// list-append: one transaction.
    Txn(Vec<Mop>),
    /// set: add an element.
    Add(u64),
    /// set: read every element.
    SetRead,
    /// bank: move `amount` from one account to another.
    Transfer {
        /// Source account.
        from: u32,
        /// Destination account.
        to: u32,
        /// Amount moved.
        amount: i64,
    },
    /// bank: read every balance.
    BankRead,
    /// watch: put a unique value.
    WatchPut {
        /// Key number (under the watch prefix).
        key: u64,
        /// Unique across the run.
        value: u64,
    },
    /// watch: delete the key if it holds `value`.
    WatchDelete {
        /// Key number.
        key: u64,
        /// The value the key must hold.
        value: u64,
    },
    /// watch: one chunk of a watcher's stream, recorded by the watcher task (never executed
    /// by a worker).
    WatchChunk {
        /// The watcher's name (`n1`, `roaming`, ...).
        watcher: String,
        /// The stamp the chunk starts after.
        after: u64,
    },
    /// watch: the final read of the whole prefix.
    WatchRead,
}

impl Op {
    /// The history's `f`.
    pub fn f(&self) -> &'static str {
        match self {
            Op::Read { .. } | Op::SetRead | Op::BankRead | Op::WatchRead => "read",
            Op::Write { .. } => "write",
            Op::WatchPut { .. } => "put",
            Op::WatchDelete { .. } => "delete",
            Op::WatchChunk { .. } => "watch",
            Op::Cas { .. } => "cas",
            Op::Txn(_) => "txn",
            Op::Add(_) => "add",
            Op::Transfer { .. } => "transfer",
        }
    }

    /// The history's `key` (register ops: independent keys; watch writes).
    pub fn key(&self) -> Option<u64> {
        match self {
            Op::Read { key }
            | Op::Write { key, .. }
            | Op::Cas { key, .. }
            | Op::WatchPut { key, .. }
            | Op::WatchDelete { key, .. } => Some(*key),
            _ => None,
        }
    }

    /// The invocation's `value`.
    pub fn invoke_value(&self) -> Json {
        match self {
            Op::Read { .. } | Op::SetRead | Op::BankRead | Op::WatchRead => Json::Null,
            Op::Write { value, .. } | Op::WatchPut { value, .. } | Op::WatchDelete { value, .. } => json!(value),
            Op::WatchChunk { watcher, after } => json!({"watcher": watcher, "after": after}),
            Op::Cas { from, to, .. } => json!([from, to]),
            Op::Txn(mops) => Json::Array(
                mops.iter()
                    .map(|m| match m {
                        Mop::Append { key, value } => json!(["append", key, value]),
                        Mop::Read { key } => json!(["r", key, null]),
                    })
                    .collect(),
            ),
            Op::Add(e) => json!(e),
            Op::Transfer { from, to, amount } => json!({"from": from, "to": to, "amount": amount}),
        }
    }

    /// Whether the op changes nothing: a read that errs is a definite failure.
    pub fn is_read_only(&self) -> bool {
        match self {
            Op::Read { .. } | Op::SetRead | Op::BankRead | Op::WatchRead | Op::WatchChunk { .. } => true,
            Op::Txn(mops) => mops.iter().all(|m| matches!(m, Mop::Read { .. })),
            _ => false,
        }
    }
}

/// Hands out operations; one per workload, shared by every worker.
pub trait Generator: Send {
    /// The next operation for `worker` (0-based).
    fn next(&mut self, worker: usize) -> Op;
    /// The final operations, run once the faults are healed and the cluster recovered.
    fn final_ops(&self) -> Vec<Op>;
}

/// Workload parameters (see the module docs).
#[derive(Debug, Clone)]
pub struct WorkloadParams {
    /// register: workers sharing one key.
    pub threads_per_key: usize,
    /// register: operations per key before its group moves on.
    pub ops_per_key: u64,
    /// list-append: active keys; watch: keys written.
    pub key_count: usize,
    /// list-append: appends per key before it is retired.
    pub max_writes_per_key: u64,
    /// list-append: micro-ops per transaction, at most.
    pub max_txn_len: usize,
    /// bank: number of accounts.
    pub accounts: u32,
    /// bank: sum of all balances.
    pub total: i64,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            threads_per_key: 3,
            ops_per_key: 200,
            key_count: 8,
            max_writes_per_key: 32,
            max_txn_len: 4,
            accounts: 5,
            total: 100,
        }
    }
}

/// The generator for `kind`.
pub fn generator(kind: WorkloadKind, params: &WorkloadParams, seed: u64) -> Box<dyn Generator> {
    let rng = StdRng::seed_from_u64(seed);
    match kind {
        WorkloadKind::Register => Box::new(RegisterGen::new(params, rng)),
        WorkloadKind::ListAppend => Box::new(ListAppendGen::new(params, rng)),
        WorkloadKind::Set => Box::new(SetGen { next: 0 }),
        WorkloadKind::Bank => Box::new(BankGen { rng, accounts: params.accounts.max(2) }),
        WorkloadKind::Watch => Box::new(WatchGen::new(params, rng)),
    }
}

/// Number of distinct register values (Knossos uses 5).
const REGISTER_VALUES: u64 = 5;
/// Final list-append reads: keys read per transaction.
const FINAL_READ_KEYS_PER_TXN: usize = 8;

/// register: independent keys, one per group of workers.
pub struct RegisterGen {
    rng: StdRng,
    threads_per_key: usize,
    ops_per_key: u64,
    /// Per group: (current key, ops issued on it).
    groups: Vec<Option<(u64, u64)>>,
    next_key: u64,
}

impl RegisterGen {
    fn new(p: &WorkloadParams, rng: StdRng) -> Self {
        RegisterGen {
            rng,
            threads_per_key: p.threads_per_key.max(1),
            ops_per_key: p.ops_per_key.max(1),
            groups: Vec::new(),
            next_key: 0,
        }
    }
}

impl Generator for RegisterGen {
    fn next(&mut self, worker: usize) -> Op {
        let g = worker / self.threads_per_key;
        if self.groups.len() <= g {
            self.groups.resize(g + 1, None);
        }
        let (key, issued) = match self.groups[g] {
            Some((k, n)) if n < self.ops_per_key => (k, n),
            _ => {
                self.next_key += 1;
                (self.next_key - 1, 0)
            }
        };
        self.groups[g] = Some((key, issued + 1));
        match self.rng.gen_range(0..3) {
            0 => Op::Read { key },
            1 => Op::Write { key, value: self.rng.gen_range(0..REGISTER_VALUES) },
            _ => Op::Cas {
                key,
                from: self.rng.gen_range(0..REGISTER_VALUES),
                to: self.rng.gen_range(0..REGISTER_VALUES),
            },
        }
    }

    fn final_ops(&self) -> Vec<Op> {
        (0..self.next_key).map(|key| Op::Read { key }).collect()
    }
}

/// list-append: Elle's append generator.
pub struct ListAppendGen {
    rng: StdRng,
    key_count: usize,
    max_writes_per_key: u64,
    max_txn_len: usize,
    /// The keys transactions pick from.
    active: Vec<u64>,
    /// Appends issued per key so far (index = key); the next value is this + 1.
    writes: Vec<u64>,
}

impl ListAppendGen {
    fn new(p: &WorkloadParams, rng: StdRng) -> Self {
        let key_count = p.key_count.max(1);
        ListAppendGen {
            rng,
            key_count,
            max_writes_per_key: p.max_writes_per_key.max(1),
            max_txn_len: p.max_txn_len.max(1),
            active: (0..key_count as u64).collect(),
            writes: vec![0; key_count],
        }
    }
}

impl Generator for ListAppendGen {
    fn next(&mut self, _worker: usize) -> Op {
        let len = self.rng.gen_range(1..=self.max_txn_len);
        let mut mops = Vec::with_capacity(len);
        for _ in 0..len {
            let slot = self.rng.gen_range(0..self.key_count);
            let key = self.active[slot];
            if self.rng.gen_bool(0.5) {
                mops.push(Mop::Read { key });
            } else {
                let w = &mut self.writes[key as usize];
                *w += 1;
                mops.push(Mop::Append { key, value: *w });
                if *w >= self.max_writes_per_key {
                    self.active[slot] = self.writes.len() as u64;
                    self.writes.push(0);
                }
            }
        }
        Op::Txn(mops)
    }

    fn final_ops(&self) -> Vec<Op> {
        let keys: Vec<u64> = (0..self.writes.len() as u64).collect();
        keys.chunks(FINAL_READ_KEYS_PER_TXN)
            .map(|c| Op::Txn(c.iter().map(|&key| Mop::Read { key }).collect()))
            .collect()
    }
}

/// set: unique adds.
pub struct SetGen {
    next: u64,
}

impl Generator for SetGen {
    fn next(&mut self, _worker: usize) -> Op {
        self.next += 1;
        Op::Add(self.next - 1)
    }

    fn final_ops(&self) -> Vec<Op> {
        vec![Op::SetRead]
    }
}

/// bank: two transfers for every read.
pub struct BankGen {
    rng: StdRng,
    accounts: u32,
}

impl Generator for BankGen {
    fn next(&mut self, _worker: usize) -> Op {
        if self.rng.gen_range(0..3) == 0 {
            return Op::BankRead;
        }
        let from = self.rng.gen_range(0..self.accounts);
        let to = (from + self.rng.gen_range(1..self.accounts)) % self.accounts;
        Op::Transfer { from, to, amount: self.rng.gen_range(1..=5) }
    }

    fn final_ops(&self) -> Vec<Op> {
        vec![Op::BankRead]
    }
}

/// watch: one op in this many is a guarded delete (when the key was written before).
pub const WATCH_DELETE_ONE_IN: u32 = 5;

/// watch: unique puts and guarded deletes over a few keys.
pub struct WatchGen {
    rng: StdRng,
    /// Values issued so far; the next one is this + 1.
    issued: u64,
    /// Per key: the last value put on it since its last delete was issued.
    last: Vec<Option<u64>>,
}

impl WatchGen {
    fn new(p: &WorkloadParams, rng: StdRng) -> Self {
        WatchGen { rng, issued: 0, last: vec![None; p.key_count.max(1)] }
    }
}

impl Generator for WatchGen {
    fn next(&mut self, _worker: usize) -> Op {
        let key = self.rng.gen_range(0..self.last.len());
        if self.last[key].is_some() && self.rng.gen_range(0..WATCH_DELETE_ONE_IN) == 0 {
            // Taken, so that no two deletes are guarded on the same value: each watched
            // deletion then names exactly one op.
            let value = self.last[key].take().expect("checked");
            return Op::WatchDelete { key: key as u64, value };
        }
        self.issued += 1;
        self.last[key] = Some(self.issued);
        Op::WatchPut { key: key as u64, value: self.issued }
    }

    fn final_ops(&self) -> Vec<Op> {
        vec![Op::WatchRead]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn gen(kind: WorkloadKind, p: WorkloadParams) -> Box<dyn Generator> {
        generator(kind, &p, 7)
    }

    #[test]
    fn register_keys_are_bounded_and_owned_by_one_group() {
        let p = WorkloadParams { threads_per_key: 2, ops_per_key: 10, ..WorkloadParams::default() };
        let mut g = gen(WorkloadKind::Register, p);
        let mut per_key: HashMap<u64, (u64, HashSet<usize>)> = HashMap::new();
        for i in 0..420 {
            let worker = i % 6;
            let op = g.next(worker);
            let e = per_key.entry(op.key().unwrap()).or_default();
            e.0 += 1;
            e.1.insert(worker / 2);
        }
        assert!(per_key.values().all(|(n, groups)| *n <= 10 && groups.len() == 1), "{per_key:?}");
        assert_eq!(per_key.len(), 42, "3 groups x 140 ops / 10 per key");
        assert_eq!(g.final_ops().len(), 42, "one final read per key ever used");
    }

    #[test]
    fn list_append_values_are_unique_per_key_and_keys_rotate() {
        let p = WorkloadParams { key_count: 3, max_writes_per_key: 5, ..WorkloadParams::default() };
        let mut g = gen(WorkloadKind::ListAppend, p);
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut appends: HashMap<u64, u64> = HashMap::new();
        for _ in 0..300 {
            let Op::Txn(mops) = g.next(0) else { panic!("list-append makes txns") };
            assert!((1..=4).contains(&mops.len()));
            for m in mops {
                if let Mop::Append { key, value } = m {
                    assert!(seen.insert((key, value)), "duplicate append {key}/{value}");
                    *appends.entry(key).or_default() += 1;
                }
            }
        }
        assert!(appends.values().all(|&n| n <= 5));
        assert!(appends.len() > 10, "keys must rotate");
        let finals = g.final_ops();
        let read: HashSet<u64> = finals
            .iter()
            .flat_map(|op| match op {
                Op::Txn(m) => m.clone(),
                _ => vec![],
            })
            .map(|m| match m {
                Mop::Read { key } => key,
                Mop::Append { .. } => panic!("final ops only read"),
            })
            .collect();
        assert!(appends.keys().all(|k| read.contains(k)), "the final reads cover every key");
    }

    #[test]
    fn set_adds_are_unique_and_bank_transfers_are_between_two_accounts() {
        let mut s = gen(WorkloadKind::Set, WorkloadParams::default());
        assert_eq!((s.next(0), s.next(1)), (Op::Add(0), Op::Add(1)));
        assert_eq!(s.final_ops(), vec![Op::SetRead]);
        let mut b = gen(WorkloadKind::Bank, WorkloadParams::default());
        let mut reads = 0;
        for _ in 0..300 {
            match b.next(0) {
                Op::Transfer { from, to, amount } => assert!(from != to && from < 5 && to < 5 && amount > 0),
                Op::BankRead => reads += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(reads > 50 && reads < 150);
    }

    #[test]
    fn watch_values_are_unique_and_deletes_name_one_put() {
        let mut g = gen(WorkloadKind::Watch, WorkloadParams { key_count: 3, ..WorkloadParams::default() });
        let mut put: HashMap<u64, u64> = HashMap::new();
        let mut guarded: HashSet<u64> = HashSet::new();
        let mut deletes = 0;
        for _ in 0..500 {
            match g.next(0) {
                Op::WatchPut { key, value } => assert!(put.insert(value, key).is_none(), "value {value} put twice"),
                Op::WatchDelete { key, value } => {
                    assert_eq!(put.get(&value), Some(&key), "a delete is guarded on a value put on its key");
                    assert!(guarded.insert(value), "two deletes guarded on {value}");
                    deletes += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(deletes > 30 && deletes < 150, "{deletes} deletes");
        assert!(put.values().all(|&k| k < 3));
        assert_eq!(g.final_ops(), vec![Op::WatchRead]);
        assert!(Op::WatchRead.is_read_only() && !Op::WatchDelete { key: 0, value: 1 }.is_read_only());
        assert_eq!(Op::WatchDelete { key: 2, value: 7 }.key(), Some(2));
        let chunk = Op::WatchChunk { watcher: "n1".into(), after: 9 };
        assert_eq!((chunk.f(), chunk.invoke_value()), ("watch", json!({"watcher": "n1", "after": 9})));
    }

    #[test]
    fn history_encoding_matches_the_checkers_format() {
        let op = Op::Txn(vec![Mop::Append { key: 1, value: 2 }, Mop::Read { key: 1 }]);
        assert_eq!(op.invoke_value(), json!([["append", 1, 2], ["r", 1, null]]));
        assert!(!op.is_read_only());
        assert!(Op::Txn(vec![Mop::Read { key: 3 }]).is_read_only());
        assert_eq!(Op::Cas { key: 4, from: 1, to: 2 }.invoke_value(), json!([1, 2]));
        assert_eq!(Op::Cas { key: 4, from: 1, to: 2 }.key(), Some(4));
        assert_eq!(Op::BankRead.f(), "read");
    }
}
