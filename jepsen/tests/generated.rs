//! Generated histories: an in-memory reference store executes random concurrent operations,
//! each taking effect atomically at some instant between its invocation and completion
//! (some processes crash: their ops complete `info` and may take effect later or never;
//! some ops never complete). Such histories are linearizable / strict-serializable by
//! construction and must be accepted. The same histories with one fault injected (a stale
//! read, a lost write, a lost update, a G1c cycle) must be rejected.

use arbor_jepsen::elle::ElleOptions;
use arbor_jepsen::history::{parse, Format};
use arbor_jepsen::verdict::Validity;
use arbor_jepsen::{check, CheckOptions, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// One history event (becomes a JSONL line).
#[derive(Clone, Debug)]
struct Ev {
    process: i64,
    kind: &'static str,
    f: &'static str,
    key: Option<Json>,
    value: Json,
}

fn to_jsonl(evs: &[Ev]) -> String {
    evs.iter()
        .enumerate()
        .map(|(i, e)| {
            let mut j = json!({"index": i, "type": e.kind, "process": e.process, "f": e.f, "value": e.value});
            if let Some(k) = &e.key {
                j["key"] = k.clone();
            }
            j.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the scheduler knows about one operation.
#[derive(Clone, Debug)]
struct Rec<I, O> {
    input: I,
    process: i64,
    invoke: usize,
    completion: Option<usize>,
    /// Global order in which operations took effect.
    applied: Option<usize>,
    output: Option<O>,
    /// Whether the op took effect as requested (completes `ok`, else `fail`).
    effect_ok: bool,
    crashed: bool,
}

/// A reference store: applies an input atomically, returning the output and whether the
/// completion is `ok` (else `fail`).
trait Store {
    type In: Clone;
    type Out: Clone;
    fn gen(&mut self, rng: &mut StdRng) -> Self::In;
    fn apply(&mut self, input: &Self::In) -> (Self::Out, bool);
    fn invoke_ev(&self, input: &Self::In) -> (&'static str, Option<Json>, Json);
    fn complete_value(&self, input: &Self::In, out: &Self::Out) -> Json;
}

/// A generated history and what the scheduler knows about each of its operations.
type Run<S> = (Vec<Ev>, Vec<Rec<<S as Store>::In, <S as Store>::Out>>);

/// Runs `n` operations on `procs` concurrent processes.
fn simulate<S: Store>(store: &mut S, rng: &mut StdRng, procs: usize, n: usize) -> Run<S> {
    let mut evs: Vec<Ev> = Vec::new();
    let mut recs: Vec<Rec<S::In, S::Out>> = Vec::new();
    let mut slots: Vec<(i64, Option<usize>)> = (0..procs).map(|p| (p as i64, None)).collect();
    let mut zombies: Vec<usize> = Vec::new();
    let mut order = 0usize;
    let mut invoked = 0usize;
    loop {
        let busy: Vec<usize> = (0..procs).filter(|&s| slots[s].1.is_some()).collect();
        if invoked >= n && busy.is_empty() {
            break;
        }
        // Occasionally stop with ops still in flight: they stay pending.
        if invoked >= n && rng.gen_bool(0.05) {
            break;
        }
        let roll = rng.gen_range(0..100);
        if roll < 40 && invoked < n {
            let idle: Vec<usize> = (0..procs).filter(|&s| slots[s].1.is_none()).collect();
            if idle.is_empty() {
                continue;
            }
            let s = idle[rng.gen_range(0..idle.len())];
            let input = store.gen(rng);
            let (f, key, value) = store.invoke_ev(&input);
            evs.push(Ev { process: slots[s].0, kind: "invoke", f, key, value });
            recs.push(Rec {
                input,
                process: slots[s].0,
                invoke: evs.len() - 1,
                completion: None,
                applied: None,
                output: None,
                effect_ok: false,
                crashed: false,
            });
            slots[s].1 = Some(recs.len() - 1);
            invoked += 1;
        } else if roll < 70 {
            // Apply an in-flight op (or, rarely, a crashed one).
            let mut cands: Vec<usize> =
                busy.iter().filter_map(|&s| slots[s].1).filter(|&r| recs[r].applied.is_none()).collect();
            if rng.gen_bool(0.2) {
                cands.extend(zombies.iter().copied().filter(|&r| recs[r].applied.is_none()));
            }
            if cands.is_empty() {
                continue;
            }
            let r = cands[rng.gen_range(0..cands.len())];
            let (out, effect_ok) = store.apply(&recs[r].input);
            recs[r].output = Some(out);
            recs[r].effect_ok = effect_ok;
            recs[r].applied = Some(order);
            order += 1;
        } else if roll < 98 {
            // Complete an applied op.
            let cands: Vec<usize> =
                busy.iter().copied().filter(|&s| recs[slots[s].1.unwrap()].applied.is_some()).collect();
            if cands.is_empty() {
                continue;
            }
            let s = cands[rng.gen_range(0..cands.len())];
            let r = slots[s].1.take().unwrap();
            let input = recs[r].input.clone();
            let out = recs[r].output.clone().unwrap();
            let ok = recs[r].effect_ok;
            let (f, key, _) = store.invoke_ev(&input);
            evs.push(Ev {
                process: recs[r].process,
                kind: if ok { "ok" } else { "fail" },
                f,
                key,
                value: store.complete_value(&input, &out),
            });
            recs[r].completion = Some(evs.len() - 1);
        } else {
            // Crash an in-flight op: info completion, new process number.
            if busy.is_empty() {
                continue;
            }
            let s = busy[rng.gen_range(0..busy.len())];
            let r = slots[s].1.take().unwrap();
            let (f, key, value) = store.invoke_ev(&recs[r].input);
            evs.push(Ev { process: recs[r].process, kind: "info", f, key, value });
            recs[r].completion = Some(evs.len() - 1);
            recs[r].crashed = true;
            zombies.push(r);
            slots[s].0 += procs as i64;
        }
    }
    (evs, recs)
}

// ---------------------------------------------------------------- registers

#[derive(Clone, Debug)]
enum RegIn {
    Read,
    Write(i64),
    Cas(i64, i64),
}

/// (value seen, whether the op took effect as requested)
type RegOut = (Option<i64>, bool);

struct Register {
    state: Option<i64>,
    next: i64,
    cas: bool,
}

impl Store for Register {
    type In = RegIn;
    type Out = RegOut;
    fn gen(&mut self, rng: &mut StdRng) -> RegIn {
        self.next += 1;
        match rng.gen_range(0..10) {
            0..=3 => RegIn::Read,
            4..=6 if self.cas => RegIn::Cas(rng.gen_range((self.next - 4).max(1)..=self.next), self.next),
            _ => RegIn::Write(self.next),
        }
    }
    fn apply(&mut self, input: &RegIn) -> (RegOut, bool) {
        match input {
            RegIn::Read => ((self.state, true), true),
            RegIn::Write(v) => {
                self.state = Some(*v);
                ((self.state, true), true)
            }
            RegIn::Cas(from, to) => {
                let hit = self.state == Some(*from);
                if hit {
                    self.state = Some(*to);
                }
                ((self.state, hit), hit)
            }
        }
    }
    fn invoke_ev(&self, input: &RegIn) -> (&'static str, Option<Json>, Json) {
        match input {
            RegIn::Read => ("read", None, Json::Null),
            RegIn::Write(v) => ("write", None, json!(v)),
            RegIn::Cas(a, b) => ("cas", None, json!([a, b])),
        }
    }
    fn complete_value(&self, input: &RegIn, out: &RegOut) -> Json {
        match input {
            RegIn::Read => json!(out.0),
            other => self.invoke_ev(other).2,
        }
    }
}

fn lin_check(workload: Workload, evs: &[Ev]) -> Validity {
    let h = parse(&to_jsonl(evs), Format::Jsonl).expect("generated JSONL parses");
    check(workload, &h, &CheckOptions::default()).expect("checkable").validity
}

/// Ops that completed ok (not crashed).
fn ok<I, O>(r: &Rec<I, O>) -> bool {
    r.completion.is_some() && !r.crashed
}

/// Makes one ok read return a value overwritten before the read began: W_old completed
/// before W_new was invoked, W_new completed before R was invoked.
fn inject_stale_register_read(evs: &mut [Ev], recs: &[Rec<RegIn, RegOut>]) -> bool {
    let writes: Vec<&Rec<RegIn, RegOut>> =
        recs.iter().filter(|r| matches!(r.input, RegIn::Write(_)) && ok(r) && r.applied.is_some()).collect();
    for r in recs.iter().filter(|r| matches!(r.input, RegIn::Read) && ok(r)) {
        for new in &writes {
            if new.completion.unwrap() >= r.invoke {
                continue;
            }
            for old in &writes {
                if old.completion.unwrap() < new.invoke {
                    let RegIn::Write(v) = old.input else { unreachable!() };
                    if evs[r.completion.unwrap()].value == json!(v) {
                        continue;
                    }
                    evs[r.completion.unwrap()].value = json!(v);
                    return true;
                }
            }
        }
    }
    false
}

/// Makes an acknowledged write invisible: reads of its value that began after it
/// completed return the previous value instead.
fn inject_lost_register_write(evs: &mut [Ev], recs: &[Rec<RegIn, RegOut>]) -> bool {
    // State-setting ops in effect order.
    let mut setters: Vec<&Rec<RegIn, RegOut>> = recs
        .iter()
        .filter(|r| match r.input {
            RegIn::Write(_) => r.applied.is_some(),
            RegIn::Cas(..) => r.output.as_ref().is_some_and(|o| o.1),
            RegIn::Read => false,
        })
        .collect();
    setters.sort_by_key(|r| r.applied);
    for w in setters.windows(2) {
        let (prev, lost) = (w[0], w[1]);
        if !ok(prev) || !ok(lost) || prev.completion.unwrap() > lost.invoke || !matches!(lost.input, RegIn::Write(_)) {
            continue;
        }
        let (Some((Some(old), _)), Some((Some(new), _))) = (&prev.output, &lost.output) else { continue };
        let witnesses: Vec<usize> = recs
            .iter()
            .filter(|r| matches!(r.input, RegIn::Read) && ok(r) && r.invoke > lost.completion.unwrap())
            .filter(|r| r.output.as_ref().is_some_and(|o| o.0 == Some(*new)))
            .map(|r| r.completion.unwrap())
            .collect();
        if witnesses.is_empty() {
            continue;
        }
        for c in witnesses {
            evs[c].value = json!(old);
        }
        return true;
    }
    false
}

fn register_run(seed: u64, cas: bool) -> (Vec<Ev>, Vec<Rec<RegIn, RegOut>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = Register { state: None, next: 0, cas };
    simulate(&mut store, &mut rng, 5, 120)
}

#[test]
fn generated_register_histories_are_accepted_and_faults_rejected() {
    let (mut stale, mut lost, mut pending) = (0, 0, 0);
    for seed in 0..40 {
        for (cas, workload) in [(false, Workload::Register), (true, Workload::CasRegister)] {
            let (evs, recs) = register_run(seed, cas);
            pending += recs.iter().filter(|r| r.completion.is_none() || r.crashed).count();
            assert_eq!(lin_check(workload, &evs), Validity::Valid, "seed {seed} cas {cas}:\n{}", to_jsonl(&evs));
            let mut bad = evs.clone();
            if inject_stale_register_read(&mut bad, &recs) {
                stale += 1;
                assert_eq!(lin_check(workload, &bad), Validity::Invalid, "stale read, seed {seed} cas {cas}");
            }
            let mut bad = evs.clone();
            if inject_lost_register_write(&mut bad, &recs) {
                lost += 1;
                assert_eq!(lin_check(workload, &bad), Validity::Invalid, "lost write, seed {seed} cas {cas}");
            }
        }
    }
    assert!(stale >= 40 && lost >= 20, "enough injections: stale {stale}, lost {lost}");
    assert!(pending >= 40, "histories exercise info / never-completed ops ({pending})");
}

// ---------------------------------------------------------------- kv

#[derive(Clone, Debug)]
enum KvIn {
    Get(u8),
    Put(u8, String),
    Append(u8, String),
}

struct Kv {
    state: BTreeMap<u8, String>,
    next: u64,
}

impl Store for Kv {
    type In = KvIn;
    /// The key's string after the op.
    type Out = String;
    fn gen(&mut self, rng: &mut StdRng) -> KvIn {
        self.next += 1;
        let k = rng.gen_range(0..3);
        match rng.gen_range(0..10) {
            0..=3 => KvIn::Get(k),
            4 => KvIn::Put(k, format!("p{};", self.next)),
            _ => KvIn::Append(k, format!("a{};", self.next)),
        }
    }
    fn apply(&mut self, input: &KvIn) -> (String, bool) {
        let s = match input {
            KvIn::Get(k) => self.state.get(k).cloned().unwrap_or_default(),
            KvIn::Put(k, v) => {
                self.state.insert(*k, v.clone());
                v.clone()
            }
            KvIn::Append(k, v) => {
                let e = self.state.entry(*k).or_default();
                e.push_str(v);
                e.clone()
            }
        };
        (s, true)
    }
    fn invoke_ev(&self, input: &KvIn) -> (&'static str, Option<Json>, Json) {
        match input {
            KvIn::Get(k) => ("get", Some(json!(k.to_string())), Json::Null),
            KvIn::Put(k, v) => ("put", Some(json!(k.to_string())), json!(v)),
            KvIn::Append(k, v) => ("append", Some(json!(k.to_string())), json!(v)),
        }
    }
    fn complete_value(&self, input: &KvIn, out: &String) -> Json {
        match input {
            KvIn::Get(_) => json!(out),
            other => self.invoke_ev(other).2,
        }
    }
}

fn kv_key(i: &KvIn) -> u8 {
    match i {
        KvIn::Get(k) | KvIn::Put(k, _) | KvIn::Append(k, _) => *k,
    }
}

fn inject_stale_kv_read(evs: &mut [Ev], recs: &[Rec<KvIn, String>]) -> bool {
    let writes: Vec<&Rec<KvIn, String>> =
        recs.iter().filter(|r| !matches!(r.input, KvIn::Get(_)) && ok(r) && r.applied.is_some()).collect();
    for r in recs.iter().filter(|r| matches!(r.input, KvIn::Get(_)) && ok(r)) {
        let k = kv_key(&r.input);
        for new in writes.iter().filter(|w| kv_key(&w.input) == k && w.completion.unwrap() < r.invoke) {
            if let Some(old) = writes.iter().find(|w| kv_key(&w.input) == k && w.completion.unwrap() < new.invoke) {
                evs[r.completion.unwrap()].value = json!(old.output.clone().unwrap());
                return true;
            }
        }
    }
    false
}

#[test]
fn generated_kv_histories_are_accepted_and_stale_reads_rejected() {
    let mut stale = 0;
    for seed in 0..30 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut store = Kv { state: BTreeMap::new(), next: 0 };
        let (evs, recs) = simulate(&mut store, &mut rng, 6, 150);
        assert_eq!(lin_check(Workload::Kv, &evs), Validity::Valid, "seed {seed}:\n{}", to_jsonl(&evs));
        let mut bad = evs.clone();
        if inject_stale_kv_read(&mut bad, &recs) {
            stale += 1;
            let h = parse(&to_jsonl(&bad), Format::Jsonl).unwrap();
            let v = check(Workload::Kv, &h, &CheckOptions::default()).unwrap();
            assert_eq!(v.validity, Validity::Invalid, "seed {seed}");
            assert!(v.to_json()["witness"]["key"].is_string());
        }
    }
    assert!(stale >= 25, "stale reads injected: {stale}");
}

/// Many appends that time out but took effect, all concurrent: the search space explodes,
/// and the time budget must turn that into `unknown` promptly instead of hanging.
#[test]
fn pathological_kv_history_hits_the_time_limit() {
    let mut evs = Vec::new();
    for p in 0..40 {
        let v = format!("t{p};");
        evs.push(Ev { process: p, kind: "invoke", f: "append", key: Some(json!("k")), value: json!(v) });
    }
    for p in 0..40 {
        let v = format!("t{p};");
        evs.push(Ev { process: p, kind: "info", f: "append", key: Some(json!("k")), value: json!(v) });
    }
    // A read that saw every append in an order the search will not guess early.
    let all: String = (0..40).rev().map(|p| format!("t{p};")).collect();
    evs.push(Ev { process: 100, kind: "invoke", f: "get", key: Some(json!("k")), value: Json::Null });
    evs.push(Ev { process: 100, kind: "ok", f: "get", key: Some(json!("k")), value: json!(all.clone() + "x;") });
    let h = parse(&to_jsonl(&evs), Format::Jsonl).unwrap();
    let opts = CheckOptions { time_limit: Some(std::time::Duration::from_millis(300)), ..CheckOptions::default() };
    let started = std::time::Instant::now();
    let v = check(Workload::Kv, &h, &opts).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(v.validity, Validity::Unknown, "{}", v.to_json());
    assert_eq!(v.to_json()["unknown-partitions"][0]["reason"], json!("timeout"));
}

// ---------------------------------------------------------------- list-append

#[derive(Clone, Debug)]
enum Mop {
    Read(u8),
    Append(u8, i64),
}

#[derive(Clone, Debug)]
struct TxnIn {
    mops: Vec<Mop>,
    abort: bool,
}

/// Read results (per read mop) and the state of every key right after the txn.
type TxnOut = (Vec<Vec<i64>>, BTreeMap<u8, Vec<i64>>);

struct Lists {
    state: BTreeMap<u8, Vec<i64>>,
    next: i64,
}

impl Store for Lists {
    type In = TxnIn;
    type Out = TxnOut;
    fn gen(&mut self, rng: &mut StdRng) -> TxnIn {
        let mut mops = Vec::new();
        if rng.gen_bool(0.3) {
            // read-then-append on one key: the lost-update pattern when done concurrently.
            let k = rng.gen_range(0..4);
            self.next += 1;
            mops.push(Mop::Read(k));
            mops.push(Mop::Append(k, self.next));
        } else {
            for _ in 0..rng.gen_range(1..=4) {
                let k = rng.gen_range(0..4);
                if rng.gen_bool(0.5) {
                    mops.push(Mop::Read(k));
                } else {
                    self.next += 1;
                    mops.push(Mop::Append(k, self.next));
                }
            }
        }
        TxnIn { mops, abort: rng.gen_bool(0.05) }
    }
    fn apply(&mut self, input: &TxnIn) -> (TxnOut, bool) {
        if input.abort {
            return ((Vec::new(), self.state.clone()), false);
        }
        let mut reads = Vec::new();
        for m in &input.mops {
            match m {
                Mop::Read(k) => reads.push(self.state.get(k).cloned().unwrap_or_default()),
                Mop::Append(k, e) => self.state.entry(*k).or_default().push(*e),
            }
        }
        ((reads, self.state.clone()), true)
    }
    fn invoke_ev(&self, input: &TxnIn) -> (&'static str, Option<Json>, Json) {
        let v: Vec<Json> = input
            .mops
            .iter()
            .map(|m| match m {
                Mop::Read(k) => json!(["r", k, null]),
                Mop::Append(k, e) => json!(["append", k, e]),
            })
            .collect();
        ("txn", None, Json::Array(v))
    }
    fn complete_value(&self, input: &TxnIn, out: &TxnOut) -> Json {
        if input.abort {
            return self.invoke_ev(input).2;
        }
        let mut reads = out.0.iter();
        let v: Vec<Json> = input
            .mops
            .iter()
            .map(|m| match m {
                Mop::Read(k) => json!(["r", k, reads.next().unwrap()]),
                Mop::Append(k, e) => json!(["append", k, e]),
            })
            .collect();
        Json::Array(v)
    }
}

fn elle_check(evs: &[Ev], models: &[&str]) -> (Validity, Vec<String>) {
    let h = parse(&to_jsonl(evs), Format::Jsonl).expect("generated JSONL parses");
    let opts = CheckOptions {
        elle: ElleOptions::new(models.iter().map(|s| s.to_string()).collect(), Vec::new()),
        ..CheckOptions::default()
    };
    let v = check(Workload::ListAppend, &h, &opts).expect("checkable");
    let types =
        v.to_json()["anomaly-types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    (v.validity, types)
}

type TxnRec = Rec<TxnIn, TxnOut>;

fn committed(r: &TxnRec) -> bool {
    ok(r) && !r.input.abort
}

/// The position of mop `i`'s read among the txn's reads.
fn read_slot(t: &TxnIn, i: usize) -> usize {
    t.mops[..i].iter().filter(|m| matches!(m, Mop::Read(_))).count()
}

fn set_read(evs: &mut [Ev], r: &TxnRec, mop: usize, value: Json) {
    let c = r.completion.unwrap();
    evs[c].value[mop][2] = value;
}

/// A committed txn reads a key without an append by a txn that completed before it began.
fn inject_stale_txn_read(evs: &mut [Ev], recs: &[TxnRec]) -> bool {
    for t in recs.iter().filter(|r| committed(r)) {
        for (i, m) in t.input.mops.iter().enumerate() {
            let Mop::Read(k) = m else { continue };
            if t.input.mops.iter().filter(|m| matches!(m, Mop::Read(x) | Mop::Append(x, _) if x == k)).count() != 1 {
                continue;
            }
            let read = &t.output.as_ref().unwrap().0[read_slot(&t.input, i)];
            for (pos, e) in read.iter().enumerate() {
                let writer = recs
                    .iter()
                    .find(|w| w.input.mops.iter().any(|m| matches!(m, Mop::Append(x, y) if x == k && y == e)));
                if writer.is_some_and(|w| committed(w) && w.completion.unwrap() < t.invoke) {
                    set_read(evs, t, i, json!(read[..pos]));
                    return true;
                }
            }
        }
    }
    false
}

/// Two committed txns both read key k at the same version and append to it.
fn inject_lost_update(evs: &mut [Ev], recs: &[TxnRec]) -> bool {
    let pattern = |r: &TxnRec| match r.input.mops.as_slice() {
        [Mop::Read(k), Mop::Append(k2, _)] if k == k2 && committed(r) => Some(*k),
        _ => None,
    };
    let mut by_order: Vec<&TxnRec> = recs.iter().filter(|r| pattern(r).is_some()).collect();
    by_order.sort_by_key(|r| r.applied);
    for (i, t1) in by_order.iter().enumerate() {
        for t2 in &by_order[i + 1..] {
            if pattern(t1) == pattern(t2) {
                let seen = &t1.output.as_ref().unwrap().0[0];
                set_read(evs, t2, 0, json!(seen));
                return true;
            }
        }
    }
    false
}

/// Ta -wr-> Tb (Tb read Ta's append), then Ta is made to read Tb's append too.
fn inject_g1c(evs: &mut [Ev], recs: &[TxnRec]) -> bool {
    for tb in recs.iter().filter(|r| committed(r)) {
        let reads = &tb.output.as_ref().unwrap().0;
        for (i, m) in tb.input.mops.iter().enumerate() {
            let Mop::Read(x) = m else { continue };
            let Some(last) = reads[read_slot(&tb.input, i)].last() else { continue };
            let Some(ta) = recs.iter().find(|w| {
                committed(w) && w.input.mops.iter().any(|m| matches!(m, Mop::Append(k, e) if k == x && e == last))
            }) else {
                continue;
            };
            // A key y Tb appends and Ta never touches.
            let Some(y) = tb.input.mops.iter().find_map(|m| match m {
                Mop::Append(y, _)
                    if !ta.input.mops.iter().any(|n| matches!(n, Mop::Read(z) | Mop::Append(z, _) if z == y)) =>
                {
                    Some(*y)
                }
                _ => None,
            }) else {
                continue;
            };
            let after_tb = tb.output.as_ref().unwrap().1.get(&y).cloned().unwrap_or_default();
            let c = ta.completion.unwrap();
            evs[c].value.as_array_mut().unwrap().push(json!(["r", y, after_tb]));
            return true;
        }
    }
    false
}

#[test]
fn generated_list_append_histories_are_accepted_and_anomalies_caught() {
    let (mut stale, mut lost, mut g1c) = (0, 0, 0);
    for seed in 0..30 {
        let mut rng = StdRng::seed_from_u64(7000 + seed);
        let mut store = Lists { state: BTreeMap::new(), next: 0 };
        let (evs, recs) = simulate(&mut store, &mut rng, 5, 80);
        let (v, types) = elle_check(&evs, &["strict-serializable"]);
        assert_eq!(v, Validity::Valid, "seed {seed}: {types:?}\n{}", to_jsonl(&evs));

        let mut bad = evs.clone();
        if inject_stale_txn_read(&mut bad, &recs) {
            stale += 1;
            let (v, types) = elle_check(&bad, &["strict-serializable"]);
            assert_eq!(v, Validity::Invalid, "stale read, seed {seed}");
            assert!(!types.is_empty(), "seed {seed}");
        }
        let mut bad = evs.clone();
        if inject_lost_update(&mut bad, &recs) {
            lost += 1;
            let (v, types) = elle_check(&bad, &["serializable"]);
            assert_eq!(v, Validity::Invalid, "lost update, seed {seed}");
            assert!(types.contains(&"lost-update".to_string()), "seed {seed}: {types:?}");
        }
        let mut bad = evs.clone();
        if inject_g1c(&mut bad, &recs) {
            g1c += 1;
            let (v, types) = elle_check(&bad, &["read-committed"]);
            assert_eq!(v, Validity::Invalid, "G1c, seed {seed}");
            assert!(types.contains(&"G1c".to_string()), "seed {seed}: {types:?}");
        }
    }
    assert!(stale >= 20 && lost >= 20 && g1c >= 20, "injections: stale {stale}, lost {lost}, g1c {g1c}");
}
