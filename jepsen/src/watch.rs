//! The watch checker: writers change a few keys under a prefix, several watchers stream
//! every change of that prefix, and all of them must have seen the same thing.
//!
//! Ops (JSONL, see `README.md`, "Input formats"):
//! - `put` (`key`, `value`: unique per key): `ok` = written, `fail` = definitely not,
//!   `info` = unknown.
//! - `delete` (`key`, `value` = X): "delete `key` if it holds X" — `ok` = deleted, `fail` =
//!   not (the compare failed, or the request was rejected), `info` = unknown. Because put
//!   values are unique, a watched deletion is identified by the value the key held just
//!   before it in the watcher's own stream: a DELETE after X is the delete guarded on X.
//! - `watch`: one chunk of a watcher's stream; a watcher is a client process that only
//!   watches, its chunks in history order make up its stream. The `ok` completion's value is
//!   `{"watcher": name, "events": [[key, value, stamp], ...], "progress": P}` (`value` null
//!   for a DELETE; `P`: every change at or below it was delivered). A chunk that did not end
//!   `ok` leaves a hole: that watcher is not judged (`unknown`).
//! - `read`: the final linearizable read after the run, `{"stamp": B, "kvs": [[key, value],
//!   ...]}`; `B` is the **barrier**: every write acknowledged before the read has a stamp at
//!   or below it. The last `ok` read counts.
//!
//! Anomalies (each with a minimal witness naming the ops, the watcher and the key):
//! - `divergent`: two watchers' per-key sequences of (change, stamp) differ below the
//!   stamp both reached (order, a change one has and the other lacks, or its stamp);
//! - `lost`: an `ok` write a watcher that reached the barrier did not see at or below it;
//! - `unexpected`: a change no op could have made (a value never put on that key, a
//!   deletion of a value no delete was guarded on, a deletion of a key that held nothing);
//! - `failed-but-present`: a change made by a write that `fail`ed;
//! - `duplicated`: one watcher saw the same change twice;
//! - `realtime-order`: on one key, write A completed before write B was invoked, yet a
//!   watcher saw B before A (history order is real time, as in every checker here);
//! - `stamp-order`: a key's stamps go back in a watcher's stream;
//! - `final-read-mismatch`: the final read disagrees with the state the reference
//!   watcher's changes up to the barrier produce.
//!
//! `info` writes may or may not appear, but consistently across watchers (else
//! `divergent`). The verdict is `unknown`, if no anomaly was found, when there is no final
//! read, no watcher, a watcher with a hole, a watcher that never reached the barrier
//! (`lagging-watchers`: compared only up to where it got), or two writes of the same
//! change (`ambiguous-writes`: the checker relies on unique values).

use crate::history::{History, OpType, Process};
use crate::value::Value;
use crate::verdict::{Validity, Verdict};
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Malformed watch operations.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WatchError {
    /// An op the checker does not understand.
    #[error("line {line}: {message}")]
    Op {
        /// 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
}

/// Witnesses listed per anomaly type (every one is counted).
const MAX_WITNESSES: usize = 8;
/// Changes shown on each side of a divergence.
const CONTEXT: usize = 3;

/// Anomaly types, in the order they are reported.
const ANOMALY_TYPES: [&str; 8] = [
    "divergent",
    "lost",
    "unexpected",
    "failed-but-present",
    "duplicated",
    "realtime-order",
    "stamp-order",
    "final-read-mismatch",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WriteKind {
    Put,
    Delete,
}

impl WriteKind {
    fn name(self) -> &'static str {
        match self {
            WriteKind::Put => "put",
            WriteKind::Delete => "delete",
        }
    }
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// A put or guarded delete of the history.
struct Write {
    kind: WriteKind,
    key: Value,
    value: Value,
    outcome: Outcome,
    process: Process,
    /// Positions in `History::ops`.
    invoke: Option<usize>,
    completion: Option<usize>,
}

/// A change as a watcher saw it: the put of a value, or the deletion of the value the key
/// held just before in the same stream (`None`: it held nothing).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Change {
    Put(Value),
    Delete(Option<Value>),
}

struct Seen {
    key: Value,
    change: Change,
    stamp: i64,
    /// Index into the watcher's chunks.
    chunk: usize,
}

/// A watch op: positions of its events in `History::ops`.
struct Chunk {
    invoke: Option<usize>,
    completion: Option<usize>,
}

struct Watcher {
    process: Process,
    name: String,
    chunks: Vec<Chunk>,
    seen: Vec<Seen>,
    /// The highest progress stamp it reported (-1: none).
    progress: i64,
    /// A chunk that did not end ok: the stream has a hole.
    broken: bool,
    resumes: i64,
}

impl Watcher {
    /// Indices into `seen`, per key, of the changes at or below `horizon`.
    fn per_key(&self, horizon: i64) -> BTreeMap<&Value, Vec<usize>> {
        let mut out: BTreeMap<&Value, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.seen.iter().enumerate() {
            if s.stamp <= horizon {
                out.entry(&s.key).or_default().push(i);
            }
        }
        out
    }
}

/// The final read: its barrier stamp and the state it read.
struct FinalRead {
    stamp: i64,
    kvs: BTreeMap<Value, Value>,
}

/// Everything read from the history.
struct Parsed {
    writes: Vec<Write>,
    watchers: Vec<Watcher>,
    final_read: Option<FinalRead>,
}

fn parse(history: &History) -> Result<Parsed, WatchError> {
    let mut writes = Vec::new();
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut by_process: HashMap<Process, usize> = HashMap::new();
    let mut final_read = None;
    for p in history.pairs() {
        let inv = p.invoke.map(|i| history.op(i));
        let comp = p.completion.map(|i| history.op(i));
        let first = inv.or(comp).expect("a pair has an event");
        let bad = |message: String| WatchError::Op { line: first.line, message };
        match first.f.as_deref() {
            Some(f @ ("put" | "delete")) => {
                let key = first.key.clone().ok_or_else(|| bad(format!("a {f} needs a key")))?;
                writes.push(Write {
                    kind: if f == "put" { WriteKind::Put } else { WriteKind::Delete },
                    key,
                    value: first.value.clone(),
                    outcome: match comp.map(|c| c.kind) {
                        Some(OpType::Ok) => Outcome::Ok,
                        Some(OpType::Fail) => Outcome::Fail,
                        _ => Outcome::Unknown,
                    },
                    process: first.process.clone(),
                    invoke: p.invoke,
                    completion: p.completion,
                });
            }
            Some("watch") => {
                let w = *by_process.entry(first.process.clone()).or_insert_with(|| {
                    watchers.push(Watcher {
                        process: first.process.clone(),
                        name: String::new(),
                        chunks: Vec::new(),
                        seen: Vec::new(),
                        progress: -1,
                        broken: false,
                        resumes: 0,
                    });
                    watchers.len() - 1
                });
                let w = &mut watchers[w];
                if w.name.is_empty() {
                    let named = [inv, comp].into_iter().flatten().find_map(|o| o.value.get("watcher"));
                    w.name = match named.and_then(Value::as_name) {
                        Some(n) => n.to_string(),
                        None => format!("process {}", first.process.to_json()),
                    };
                }
                w.chunks.push(Chunk { invoke: p.invoke, completion: p.completion });
                let chunk = w.chunks.len() - 1;
                let Some(c) = comp.filter(|c| c.kind == OpType::Ok) else {
                    w.broken = true;
                    continue;
                };
                let events = match c.value.get("events") {
                    None | Some(Value::Nil) => &[][..],
                    Some(v) => v.as_vec().ok_or_else(|| bad(format!("watch events must be a list, got {v}")))?,
                };
                for e in events {
                    let parts = e.as_vec().filter(|p| p.len() == 3);
                    let Some([key, value, Value::Int(stamp)]) = parts.map(|p| [&p[0], &p[1], &p[2]]) else {
                        return Err(bad(format!("a watch event must be [key, value or null, stamp], got {e}")));
                    };
                    let change = if value.is_nil() { Change::Delete(None) } else { Change::Put(value.clone()) };
                    w.seen.push(Seen { key: key.clone(), change, stamp: *stamp, chunk });
                }
                if let Some(progress) = c.value.get("progress").and_then(Value::as_int) {
                    w.progress = w.progress.max(progress);
                }
                w.resumes += c.value.get("resumes").and_then(Value::as_int).unwrap_or(0);
            }
            Some("read") => {
                let Some(c) = comp.filter(|c| c.kind == OpType::Ok) else { continue };
                let stamp = c.value.get("stamp").and_then(Value::as_int);
                let stamp = stamp.ok_or_else(|| bad(format!("a final read needs a stamp, got {}", c.value)))?;
                let mut kvs = BTreeMap::new();
                for kv in c.value.get("kvs").and_then(Value::as_vec).unwrap_or(&[]) {
                    match kv.as_vec() {
                        Some([k, v]) => {
                            kvs.insert(k.clone(), v.clone());
                        }
                        _ => return Err(bad(format!("a final read's kvs are [key, value] pairs, got {kv}"))),
                    }
                }
                final_read = Some(FinalRead { stamp, kvs });
            }
            Some(f) => return Err(bad(format!("unsupported :f {f} for the watch checker"))),
            None => return Err(bad("operation without :f".into())),
        }
    }
    // A deletion's identity is the value the key held before it, in the watcher's stream.
    for w in &mut watchers {
        let mut held: HashMap<Value, Value> = HashMap::new();
        for s in &mut w.seen {
            match &s.change {
                Change::Put(v) => {
                    held.insert(s.key.clone(), v.clone());
                }
                Change::Delete(_) => s.change = Change::Delete(held.remove(&s.key)),
            }
        }
    }
    Ok(Parsed { writes, watchers, final_read })
}

/// Collects anomalies: every one counted, the first few kept as witnesses.
#[derive(Default)]
struct Anomalies {
    found: BTreeMap<&'static str, (usize, Vec<Json>)>,
}

impl Anomalies {
    fn add(&mut self, kind: &'static str, witness: impl FnOnce() -> Json) {
        let e = self.found.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < MAX_WITNESSES {
            e.1.push(witness());
        }
    }
}

/// What the checks share: the history, which write made each change, the barrier.
struct Ctx<'h> {
    history: &'h History,
    writes: &'h [Write],
    /// (kind, key, value) → index into `writes`.
    by_change: HashMap<(WriteKind, &'h Value, &'h Value), usize>,
    barrier: Option<i64>,
}

impl Ctx<'_> {
    /// The write that made a watched change, if any could have.
    fn write_of(&self, s: &Seen) -> Option<usize> {
        match &s.change {
            Change::Put(v) => self.by_change.get(&(WriteKind::Put, &s.key, v)).copied(),
            Change::Delete(Some(v)) => self.by_change.get(&(WriteKind::Delete, &s.key, v)).copied(),
            Change::Delete(None) => None,
        }
    }

    fn caught_up(&self, w: &Watcher) -> bool {
        self.barrier.is_some_and(|b| w.progress >= b)
    }

    fn index(&self, pos: Option<usize>) -> Option<i64> {
        pos.map(|i| self.history.op(i).index)
    }

    /// A write for a witness: its op fields and history indices.
    fn write_json(&self, wi: usize) -> Json {
        let w = &self.writes[wi];
        let mut m = Map::new();
        m.insert("process".into(), w.process.to_json());
        m.insert("f".into(), json!(w.kind.name()));
        m.insert("key".into(), w.key.to_json());
        m.insert("value".into(), w.value.to_json());
        let outcome = w.completion.map_or("pending", |c| self.history.op(c).kind.name());
        m.insert("type".into(), json!(outcome));
        if let Some(i) = self.index(w.invoke) {
            m.insert("index".into(), json!(i));
        }
        if let Some(c) = self.index(w.completion) {
            m.insert("completion-index".into(), json!(c));
        }
        Json::Object(m)
    }

    /// The watch op (chunk) that delivered a change.
    fn chunk_json(&self, w: &Watcher, chunk: usize) -> Json {
        let c = &w.chunks[chunk];
        json!({
            "process": w.process.to_json(),
            "f": "watch",
            "index": self.index(c.invoke),
            "completion-index": self.index(c.completion),
        })
    }
}

fn change_json(s: &Seen) -> Json {
    match &s.change {
        Change::Put(v) => json!({"put": v.to_json(), "stamp": s.stamp}),
        Change::Delete(v) => json!({"delete": v.as_ref().map_or(Json::Null, Value::to_json), "stamp": s.stamp}),
    }
}

/// One watcher's whole stream: `unexpected`, `duplicated`, `stamp-order` and
/// `realtime-order`; the failed writes it saw are collected in `failed_seen`.
fn check_stream<'w>(cx: &Ctx, w: &'w Watcher, failed_seen: &mut BTreeMap<usize, Vec<&'w str>>, out: &mut Anomalies) {
    let mut first_seen: HashMap<(&Value, &Change), usize> = HashMap::new();
    for (i, s) in w.seen.iter().enumerate() {
        match cx.write_of(s) {
            None => out.add("unexpected", || {
                json!({
                    "watcher": w.name,
                    "key": s.key.to_json(),
                    "change": change_json(s),
                    "chunk": cx.chunk_json(w, s.chunk),
                })
            }),
            Some(wi) if cx.writes[wi].outcome == Outcome::Fail => {
                let names = failed_seen.entry(wi).or_default();
                if names.last() != Some(&w.name.as_str()) {
                    names.push(&w.name);
                }
            }
            Some(_) => {}
        }
        match first_seen.get(&(&s.key, &s.change)) {
            Some(&j) => out.add("duplicated", || {
                json!({
                    "watcher": w.name,
                    "key": s.key.to_json(),
                    "change": change_json(s),
                    "first": change_json(&w.seen[j]),
                    "chunks": [cx.chunk_json(w, w.seen[j].chunk), cx.chunk_json(w, s.chunk)],
                })
            }),
            None => {
                first_seen.insert((&s.key, &s.change), i);
            }
        }
    }
    for (key, seq) in w.per_key(i64::MAX) {
        if let Some(p) = seq.windows(2).position(|ab| w.seen[ab[1]].stamp < w.seen[ab[0]].stamp) {
            let (x, y) = (&w.seen[seq[p]], &w.seen[seq[p + 1]]);
            out.add("stamp-order", || {
                json!({
                    "watcher": w.name,
                    "key": key.to_json(),
                    "position": p + 1,
                    "changes": [change_json(x), change_json(y)],
                    "chunks": [cx.chunk_json(w, x.chunk), cx.chunk_json(w, y.chunk)],
                })
            });
        }
        check_realtime(cx, w, key, &seq, out);
    }
}

/// `realtime-order` on one key's sequence (indices into `w.seen`): no write watched after
/// one whose invocation followed its `ok` completion. Scanning backwards, it keeps the
/// earliest-completed `ok` write watched later; reports the first violation.
fn check_realtime(cx: &Ctx, w: &Watcher, key: &Value, seq: &[usize], out: &mut Anomalies) {
    // (completion position in the history, position in `seq`)
    let mut earliest_later: Option<(usize, usize)> = None;
    for (pos, &i) in seq.iter().enumerate().rev() {
        let b = cx.write_of(&w.seen[i]);
        if let (Some(b), Some((done, later))) = (b, earliest_later) {
            if cx.writes[b].invoke.is_some_and(|invoked| done < invoked) {
                let a = cx.write_of(&w.seen[seq[later]]).expect("a matched write");
                out.add("realtime-order", || {
                    json!({
                        "watcher": w.name,
                        "key": key.to_json(),
                        "completed-first": cx.write_json(a),
                        "invoked-after": cx.write_json(b),
                        "watched": [
                            {"position": pos, "change": change_json(&w.seen[i])},
                            {"position": later, "change": change_json(&w.seen[seq[later]])},
                        ],
                    })
                });
                return;
            }
        }
        let done = b.map(|b| &cx.writes[b]).filter(|b| b.outcome == Outcome::Ok).and_then(|b| b.completion);
        if let Some(done) = done {
            if earliest_later.is_none_or(|(d, _)| done < d) {
                earliest_later = Some((done, pos));
            }
        }
    }
}

/// `lost`: every `ok` write at or below the barrier of every watcher that reached it.
fn check_lost(cx: &Ctx, judged: &[&Watcher], out: &mut Anomalies) {
    let Some(barrier) = cx.barrier else { return };
    let mut missing: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for w in judged.iter().filter(|w| cx.caught_up(w)) {
        let mut seen = vec![false; cx.writes.len()];
        for s in w.seen.iter().filter(|s| s.stamp <= barrier) {
            if let Some(wi) = cx.write_of(s) {
                seen[wi] = true;
            }
        }
        for (wi, write) in cx.writes.iter().enumerate() {
            if write.outcome == Outcome::Ok && !seen[wi] {
                missing.entry(wi).or_default().push(&w.name);
            }
        }
    }
    for (wi, names) in missing {
        out.add("lost", || json!({"write": cx.write_json(wi), "barrier": barrier, "missing-from": names}));
    }
}

/// `divergent`: `w`'s per-key sequences equal the reference `r`'s up to `horizon`.
fn check_divergence(r: &Watcher, w: &Watcher, horizon: i64, cx: &Ctx, out: &mut Anomalies) {
    let (rs, ws) = (r.per_key(horizon), w.per_key(horizon));
    let mut keys: Vec<&Value> = rs.keys().chain(ws.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (a, b) = (rs.get(key).map_or(&[][..], |v| v), ws.get(key).map_or(&[][..], |v| v));
        let same = |i: usize| {
            let (x, y) = (&r.seen[a[i]], &w.seen[b[i]]);
            x.change == y.change && x.stamp == y.stamp
        };
        let n = a.len().min(b.len());
        let Some(d) = (0..n).find(|&i| !same(i)).or((a.len() != b.len()).then_some(n)) else { continue };
        let context = |v: &Watcher, seq: &[usize]| -> Vec<Json> {
            let (lo, hi) = (d.saturating_sub(CONTEXT), (d + CONTEXT + 1).min(seq.len()));
            seq.get(lo..hi).unwrap_or(&[]).iter().map(|&i| change_json(&v.seen[i])).collect()
        };
        let chunk_at = |v: &Watcher, seq: &[usize]| seq.get(d).map(|&i| cx.chunk_json(v, v.seen[i].chunk));
        out.add("divergent", || {
            json!({
                "key": key.to_json(),
                "watchers": [r.name, w.name],
                "up-to-stamp": horizon,
                "lengths": [a.len(), b.len()],
                "position": d,
                "context-from": d.saturating_sub(CONTEXT),
                "reference": context(r, a),
                "other": context(w, b),
                "chunks": [chunk_at(r, a), chunk_at(w, b)],
            })
        });
    }
}

/// `final-read-mismatch`: the final read holds what `r`'s changes up to its stamp leave.
fn check_final_read(fr: &FinalRead, r: &Watcher, out: &mut Anomalies) {
    let mut state: BTreeMap<&Value, Option<&Value>> = BTreeMap::new();
    for s in r.seen.iter().filter(|s| s.stamp <= fr.stamp) {
        let value = match &s.change {
            Change::Put(v) => Some(v),
            Change::Delete(_) => None,
        };
        state.insert(&s.key, value);
    }
    let mut keys: Vec<&Value> = state.keys().copied().chain(fr.kvs.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (watched, read) = (state.get(key).copied().flatten(), fr.kvs.get(key));
        if watched != read {
            out.add("final-read-mismatch", || {
                json!({
                    "key": key.to_json(),
                    "final-read": read.map_or(Json::Null, Value::to_json),
                    "watched": watched.map_or(Json::Null, Value::to_json),
                    "watcher": r.name,
                    "barrier": fr.stamp,
                })
            });
        }
    }
}

/// Checks a watch history; see the module docs.
pub fn check(history: &History) -> Result<Verdict, WatchError> {
    let Parsed { writes, watchers, final_read } = parse(history)?;
    let mut cx =
        Ctx { history, writes: &writes, by_change: HashMap::new(), barrier: final_read.as_ref().map(|r| r.stamp) };
    // Which write made each change: (kind, key, value) must be unique.
    let mut ambiguous = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        match cx.by_change.get(&(w.kind, &w.key, &w.value)) {
            Some(&first) if ambiguous.len() < MAX_WITNESSES => {
                ambiguous.push(json!([cx.write_json(first), cx.write_json(i)]))
            }
            Some(_) => {}
            None => {
                cx.by_change.insert((w.kind, &w.key, &w.value), i);
            }
        }
    }
    if !ambiguous.is_empty() {
        return Ok(Verdict::new(
            "watch",
            Validity::Unknown,
            json!({"unknown-reasons": ["ambiguous-writes"], "ambiguous-writes": ambiguous}),
        ));
    }

    let mut out = Anomalies::default();
    let mut unknown = Vec::new();
    if final_read.is_none() {
        unknown.push("no-final-read");
    }
    if watchers.is_empty() {
        unknown.push("no-watchers");
    }
    let judged: Vec<&Watcher> = watchers.iter().filter(|w| !w.broken).collect();
    if judged.len() < watchers.len() {
        unknown.push("broken-watchers");
    }
    let mut failed_seen = BTreeMap::new();
    for w in &judged {
        check_stream(&cx, w, &mut failed_seen, &mut out);
    }
    for (wi, names) in failed_seen {
        out.add("failed-but-present", || json!({"write": cx.write_json(wi), "watchers": names}));
    }
    check_lost(&cx, &judged, &mut out);

    // The reference: the first watcher that reached the barrier, else the one that got
    // furthest. Every other one must agree with it up to where both got.
    let reference = judged
        .iter()
        .copied()
        .find(|w| cx.caught_up(w))
        .or_else(|| judged.iter().copied().max_by_key(|w| (w.progress, std::cmp::Reverse(w.seen.len()))));
    let lagging: Vec<Json> = judged
        .iter()
        .filter(|w| cx.barrier.is_some() && !cx.caught_up(w))
        .map(|w| json!({"watcher": w.name, "progress": w.progress}))
        .collect();
    if !lagging.is_empty() {
        unknown.push("lagging-watchers");
    }
    if let Some(r) = reference {
        let r_horizon = r.progress.min(cx.barrier.unwrap_or(i64::MAX));
        for w in judged.iter().filter(|w| !std::ptr::eq(**w, r)) {
            check_divergence(r, w, w.progress.min(r_horizon), &cx, &mut out);
        }
    }
    if let (Some(fr), Some(r)) = (&final_read, reference.filter(|r| cx.caught_up(r))) {
        check_final_read(fr, r, &mut out);
    }

    // Indeterminate writes the reference saw (recovered) or did not.
    let mut seen = vec![false; writes.len()];
    for s in reference.map_or(&[][..], |r| &r.seen) {
        if let Some(wi) = cx.write_of(s) {
            seen[wi] = true;
        }
    }
    let indeterminate =
        |saw: bool| (0..writes.len()).filter(|&i| writes[i].outcome == Outcome::Unknown && seen[i] == saw).count();
    let count = |kind: WriteKind, o: Outcome| writes.iter().filter(|w| w.kind == kind && w.outcome == o).count();
    let write_counts = |kind| json!({"ok": count(kind, Outcome::Ok), "fail": count(kind, Outcome::Fail), "info": count(kind, Outcome::Unknown)});
    let mut keys: Vec<&Value> = writes.iter().map(|w| &w.key).collect();
    keys.sort();
    keys.dedup();

    let types: Vec<&str> = ANOMALY_TYPES.iter().copied().filter(|t| out.found.contains_key(t)).collect();
    let validity = if !types.is_empty() {
        Validity::Invalid
    } else if !unknown.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let mut listed = Map::new();
    let mut counts = Map::new();
    for (kind, (n, witnesses)) in out.found {
        counts.insert(kind.into(), json!(n));
        listed.insert(kind.into(), Json::Array(witnesses));
    }
    let watcher_facts: Vec<Json> = watchers
        .iter()
        .map(|w| {
            json!({
                "watcher": w.name,
                "process": w.process.to_json(),
                "chunks": w.chunks.len(),
                "events": w.seen.len(),
                "progress": w.progress,
                "caught-up": cx.caught_up(w),
                "broken": w.broken,
                "resumes": w.resumes,
            })
        })
        .collect();
    Ok(Verdict::new(
        "watch",
        validity,
        json!({
            "anomaly-types": types,
            "anomalies": listed,
            "anomaly-counts": counts,
            "unknown-reasons": unknown,
            "lagging-watchers": lagging,
            "barrier-stamp": cx.barrier,
            "reference-watcher": reference.map(|r| r.name.clone()),
            "watchers": watcher_facts,
            "keys": keys.len(),
            "writes": {"put": write_counts(WriteKind::Put), "delete": write_counts(WriteKind::Delete)},
            "indeterminate-seen": indeterminate(true),
            "indeterminate-not-seen": indeterminate(false),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    /// A hand-made history: writes on keys 0 and 1, two watchers, a final read.
    struct H {
        lines: Vec<Json>,
    }

    impl H {
        fn op(&mut self, kind: &str, process: u64, f: &str, key: Option<u64>, value: Json) {
            let mut line = json!({"type": kind, "process": process, "f": f, "value": value});
            if let Some(k) = key {
                line["key"] = json!(k);
            }
            self.lines.push(line);
        }

        /// An op invoked and completed at once (`outcome` ok / fail / info).
        fn write(&mut self, process: u64, f: &str, key: u64, value: u64, outcome: &str) {
            self.op("invoke", process, f, Some(key), json!(value));
            self.op(outcome, process, f, Some(key), json!(value));
        }

        fn chunk(&mut self, process: u64, events: Json, progress: u64, outcome: &str) {
            let name = format!("w{process}");
            self.op("invoke", process, "watch", None, json!({"watcher": name, "after": 1}));
            self.op(outcome, process, "watch", None, json!({"watcher": name, "events": events, "progress": progress}));
        }

        fn check(&self) -> Verdict {
            let text: Vec<String> = self.lines.iter().map(Json::to_string).collect();
            check(&parse(&text.join("\n"), Format::Jsonl).unwrap()).unwrap()
        }
    }

    /// What a correct watcher of [`writes`] sees, up to stamp 13.
    fn stream() -> Json {
        json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, null, 12], [1, 6, 13]])
    }

    /// Key 0: 1 then 2 (sequential, both ok). Key 1: 3 (info, seen), 4 (info, never seen),
    /// 5 (failed), delete-if-3 (ok), 6 (ok), delete-if-6 (compare failed).
    fn writes() -> H {
        let mut h = H { lines: Vec::new() };
        h.write(0, "put", 0, 1, "ok");
        h.write(1, "put", 0, 2, "ok");
        h.write(2, "put", 1, 3, "info");
        h.write(3, "put", 1, 4, "info");
        h.write(1, "put", 1, 5, "fail");
        h.write(0, "delete", 1, 3, "ok");
        h.write(1, "put", 1, 6, "ok");
        h.write(4, "delete", 1, 6, "fail");
        h
    }

    /// Two watchers (the first in two chunks), then the final read at stamp 15.
    fn run(w1: Json, w2: Json, final_kvs: Json) -> Verdict {
        let mut h = writes();
        let w1 = w1.as_array().unwrap().clone();
        let (a, b) = w1.split_at(w1.len() / 2);
        h.chunk(10, json!(a), 11, "ok");
        h.chunk(10, json!(b), 20, "ok");
        h.chunk(11, w2, 20, "ok");
        h.op("invoke", 0, "read", None, Json::Null);
        h.op("ok", 0, "read", None, json!({"stamp": 15, "kvs": final_kvs}));
        h.check()
    }

    fn finals() -> Json {
        json!([[0, 2], [1, 6]])
    }

    fn only(v: &Verdict, kind: &str) {
        assert_eq!(v.validity, Validity::Invalid, "{:#}", v.to_json());
        assert_eq!(v.details["anomaly-types"], json!([kind]), "{:#}", v.to_json());
        assert!(!v.details["anomalies"][kind].as_array().unwrap().is_empty());
    }

    #[test]
    fn identical_complete_streams_are_valid() {
        let v = run(stream(), stream(), finals());
        assert_eq!(v.validity, Validity::Valid, "{:#}", v.to_json());
        assert_eq!(v.details["indeterminate-seen"], json!(1));
        assert_eq!(v.details["indeterminate-not-seen"], json!(1));
        assert_eq!(v.details["writes"]["put"], json!({"ok": 3, "fail": 1, "info": 2}));
        assert_eq!(v.details["watchers"][0]["events"], json!(5));
        assert_eq!(v.details["watchers"][0]["chunks"], json!(2));
        assert_eq!(v.details["reference-watcher"], json!("w10"));
    }

    #[test]
    fn an_indeterminate_write_seen_by_one_watcher_only_diverges() {
        let w2 = json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, null, 12], [1, 6, 13], [1, 4, 14]]);
        let v = run(stream(), w2, finals());
        only(&v, "divergent");
        let d = &v.details["anomalies"]["divergent"][0];
        assert_eq!((d["key"].clone(), d["position"].clone()), (json!(1), json!(3)));
        assert_eq!((d["watchers"].clone(), d["lengths"].clone()), (json!(["w10", "w11"]), json!([3, 4])));
        assert_eq!(d["other"][3], json!({"put": 4, "stamp": 14}));
        assert_eq!(d["reference"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn the_same_change_at_another_stamp_diverges() {
        let w2 = json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, null, 12], [1, 6, 14]]);
        only(&run(stream(), w2, finals()), "divergent");
    }

    #[test]
    fn an_acknowledged_write_nobody_saw_is_lost() {
        let s = json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, null, 12]]);
        let v = run(s.clone(), s, json!([[0, 2]]));
        only(&v, "lost");
        let lost = &v.details["anomalies"]["lost"][0];
        assert_eq!(lost["write"]["value"], json!(6));
        assert_eq!(lost["missing-from"], json!(["w10", "w11"]));
        assert!(lost["write"]["index"].is_i64(), "the witness names the op");
    }

    #[test]
    fn values_never_written_and_deletions_of_nothing_are_unexpected() {
        let mut s = stream().as_array().unwrap().clone();
        s.push(json!([7, 99, 14]));
        let v = run(json!(s), json!(s), json!([[0, 2], [1, 6], [7, 99]]));
        only(&v, "unexpected");
        assert_eq!(v.details["anomalies"]["unexpected"][0]["change"], json!({"put": 99, "stamp": 14}));
        let mut s = stream().as_array().unwrap().clone();
        s.push(json!([5, null, 14]));
        let v = run(json!(s), json!(s), finals());
        only(&v, "unexpected");
        assert_eq!(v.details["anomalies"]["unexpected"][0]["change"], json!({"delete": null, "stamp": 14}));
    }

    #[test]
    fn failed_puts_and_failed_deletes_must_not_appear() {
        let s = json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, null, 12], [1, 5, 13], [1, 6, 13]]);
        let v = run(s.clone(), s, finals());
        only(&v, "failed-but-present");
        assert_eq!(v.details["anomalies"]["failed-but-present"][0]["write"]["value"], json!(5));
        assert_eq!(v.details["anomalies"]["failed-but-present"][0]["watchers"], json!(["w10", "w11"]));
        let mut s = stream().as_array().unwrap().clone();
        s.push(json!([1, null, 14]));
        let v = run(json!(s), json!(s), json!([[0, 2]]));
        only(&v, "failed-but-present");
        assert_eq!(v.details["anomalies"]["failed-but-present"][0]["write"]["f"], json!("delete"));
    }

    #[test]
    fn a_change_seen_twice_is_duplicated() {
        let s = json!([[0, 1, 10], [0, 2, 11], [1, 3, 12], [1, 3, 12], [1, null, 12], [1, 6, 13]]);
        only(&run(s.clone(), s, finals()), "duplicated");
    }

    #[test]
    fn a_write_watched_before_one_that_completed_before_it_began_breaks_realtime() {
        let s = json!([[0, 2, 10], [0, 1, 11], [1, 3, 12], [1, null, 12], [1, 6, 13]]);
        let v = run(s.clone(), s, json!([[0, 1], [1, 6]]));
        only(&v, "realtime-order");
        let w = &v.details["anomalies"]["realtime-order"][0];
        assert_eq!(w["completed-first"]["value"], json!(1));
        assert_eq!(w["invoked-after"]["value"], json!(2));
    }

    #[test]
    fn stamps_going_back_on_a_key_are_flagged() {
        let s = json!([[0, 1, 11], [0, 2, 10], [1, 3, 12], [1, null, 12], [1, 6, 13]]);
        only(&run(s.clone(), s, finals()), "stamp-order");
    }

    #[test]
    fn the_final_read_must_match_the_watched_state() {
        let v = run(stream(), stream(), json!([[0, 2], [1, 3]]));
        only(&v, "final-read-mismatch");
        let w = &v.details["anomalies"]["final-read-mismatch"][0];
        assert_eq!((w["key"].clone(), w["final-read"].clone(), w["watched"].clone()), (json!(1), json!(3), json!(6)));
    }

    #[test]
    fn a_watcher_behind_the_barrier_is_unknown_but_still_compared() {
        let mut h = writes();
        h.chunk(10, stream(), 20, "ok");
        h.chunk(11, json!([[0, 1, 10], [0, 2, 11]]), 11, "ok");
        h.op("invoke", 0, "read", None, Json::Null);
        h.op("ok", 0, "read", None, json!({"stamp": 15, "kvs": finals()}));
        let v = h.check();
        assert_eq!(v.validity, Validity::Unknown, "{:#}", v.to_json());
        assert_eq!(v.details["unknown-reasons"], json!(["lagging-watchers"]));
        assert_eq!(v.details["lagging-watchers"], json!([{"watcher": "w11", "progress": 11}]));
        // Below the stamp it reached, it must agree.
        let mut h = writes();
        h.chunk(10, stream(), 20, "ok");
        h.chunk(11, json!([[0, 2, 11]]), 11, "ok");
        h.op("invoke", 0, "read", None, Json::Null);
        h.op("ok", 0, "read", None, json!({"stamp": 15, "kvs": finals()}));
        only(&h.check(), "divergent");
    }

    #[test]
    fn no_final_read_a_broken_watcher_or_repeated_values_are_unknown() {
        let mut h = writes();
        h.chunk(10, stream(), 20, "ok");
        let v = h.check();
        assert_eq!((v.validity, v.details["unknown-reasons"].clone()), (Validity::Unknown, json!(["no-final-read"])));
        let mut h = writes();
        h.chunk(10, stream(), 20, "ok");
        h.chunk(11, json!([[0, 1, 10]]), 10, "info");
        h.op("invoke", 0, "read", None, Json::Null);
        h.op("ok", 0, "read", None, json!({"stamp": 15, "kvs": finals()}));
        let v = h.check();
        assert_eq!((v.validity, v.details["unknown-reasons"].clone()), (Validity::Unknown, json!(["broken-watchers"])));
        let mut h = writes();
        h.write(5, "put", 0, 1, "ok");
        let v = h.check();
        assert_eq!(v.validity, Validity::Unknown);
        assert_eq!(v.details["unknown-reasons"], json!(["ambiguous-writes"]));
    }

    #[test]
    fn malformed_ops_are_errors() {
        let bad = |line: &str| check(&parse(line, Format::Jsonl).unwrap()).unwrap_err().to_string();
        assert!(bad(r#"{"type":"invoke","process":0,"f":"put","value":1}"#).contains("needs a key"));
        assert!(bad(r#"{"type":"ok","process":0,"f":"watch","value":{"events":[[1,2]]}}"#).contains("[key, value"));
        assert!(bad(r#"{"type":"ok","process":0,"f":"cas","value":1}"#).contains("unsupported"));
    }
}
