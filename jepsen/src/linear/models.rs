//! Sequential models for the linearizability checker, and the conversion of a history into
//! per-partition operation lists.
//!
//! - `register` / `cas-register`: one register per key (a single one when ops carry no
//!   `key`), initial value nil, ops `read`, `write` and (cas-register only) `cas [from to]`.
//!   Values are interned to integers so states are `Option<u32>`.
//! - `kv`: one string per key, initial `""`; `get` returns the string, `put v` sets it,
//!   `append v` concatenates (Porcupine's kv model). Strings are interned per partition and
//!   transitions memoised.
//!
//! How outcomes are read: `ok` = took effect with that output; `info` or no completion =
//! pending (may take effect any time after the invocation, or never); `fail` = did not take
//! effect, the op is dropped — except a `cas` that fails *without* an `error` field, which
//! means "the compare failed" (the op ran and saw a value other than `from`; Jepsen's etcd
//! client and Porcupine's etcd model use this). Reads with no known output are dropped.
//! Limits: register values are compared structurally; kv values must be strings (numbers
//! are accepted and stringified).

use super::wgl::{LinOp, Model};
use super::LinError;
use crate::hash::{FxHashMap, FxHashSet};
use crate::history::{History, Op, OpType};
use crate::value::Value;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// What a model can say about its states and ops, for witnesses.
pub trait Explain: Model {
    /// JSON rendering of a state.
    fn state_json(&self, state: Self::State) -> Json;
}

/// Outcome of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Returned ok: the register held `from` and now holds `to`.
    Applied,
    /// Returned "compare failed": the register did not hold `from`.
    Failed,
    /// Unknown (pending): applied iff the register held `from`.
    Unknown,
}

/// A register operation; `None` values stand for nil.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// A read that returned this value.
    Read(Option<u32>),
    /// A write of this value.
    Write(Option<u32>),
    /// A compare-and-set.
    Cas {
        /// Expected value.
        from: Option<u32>,
        /// New value.
        to: Option<u32>,
        /// What the client learnt.
        outcome: CasOutcome,
    },
}

/// The register / cas-register model; `values` maps interned ids back to values.
#[derive(Debug, Clone, Default)]
pub struct RegisterModel {
    /// Interned values (id = position).
    pub values: Vec<Value>,
}

impl Model for RegisterModel {
    type Op = RegOp;
    type State = Option<u32>;

    fn init(&mut self) -> Option<u32> {
        None
    }

    fn step(&mut self, state: Option<u32>, _id: usize, op: &RegOp) -> Option<Option<u32>> {
        match *op {
            RegOp::Read(v) => (state == v).then_some(state),
            RegOp::Write(v) => Some(v),
            RegOp::Cas { from, to, outcome } => match outcome {
                CasOutcome::Applied => (state == from).then_some(to),
                CasOutcome::Failed => (state != from).then_some(state),
                CasOutcome::Unknown => Some(if state == from { to } else { state }),
            },
        }
    }

    fn read_only(&self, op: &RegOp) -> bool {
        matches!(op, RegOp::Read(_) | RegOp::Cas { outcome: CasOutcome::Failed, .. })
    }
}

impl Explain for RegisterModel {
    fn state_json(&self, state: Option<u32>) -> Json {
        state.map_or(Json::Null, |id| self.values[id as usize].to_json())
    }
}

/// A kv operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// A get that returned this string.
    Get(String),
    /// Set the string.
    Put(String),
    /// Append to the string.
    Append(String),
}

/// The kv model for one key: interned strings plus a transition cache.
#[derive(Debug, Clone, Default)]
pub struct KvModel {
    strings: Vec<String>,
    ids: FxHashMap<String, u32>,
    transitions: FxHashMap<(u32, u32), Option<u32>>,
}

impl KvModel {
    fn intern(&mut self, s: String) -> u32 {
        if let Some(&id) = self.ids.get(&s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.clone());
        self.ids.insert(s, id);
        id
    }
}

impl Model for KvModel {
    type Op = KvOp;
    type State = u32;

    fn init(&mut self) -> u32 {
        self.intern(String::new())
    }

    fn step(&mut self, state: u32, id: usize, op: &KvOp) -> Option<u32> {
        if let Some(&r) = self.transitions.get(&(state, id as u32)) {
            return r;
        }
        let r = match op {
            KvOp::Get(v) => (self.strings[state as usize] == *v).then_some(state),
            KvOp::Put(v) => Some(self.intern(v.clone())),
            KvOp::Append(v) => {
                let s = format!("{}{}", self.strings[state as usize], v);
                Some(self.intern(s))
            }
        };
        self.transitions.insert((state, id as u32), r);
        r
    }

    fn read_only(&self, op: &KvOp) -> bool {
        matches!(op, KvOp::Get(_))
    }
}

impl Explain for KvModel {
    fn state_json(&self, state: u32) -> Json {
        Json::String(self.strings[state as usize].clone())
    }
}

/// Where an operation came from in the history (positions into `History::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpMeta {
    /// The invocation event.
    pub invoke: Option<usize>,
    /// The completion event (`None` if it never completed).
    pub completion: Option<usize>,
}

/// The operations on one key.
#[derive(Debug, Clone)]
pub struct Partition<O> {
    /// The key (`None`: ops without a key).
    pub key: Option<Value>,
    /// Operations, with their history positions.
    pub ops: Vec<LinOp<O>>,
    /// Provenance of each op, parallel to `ops`.
    pub meta: Vec<OpMeta>,
    /// Pending ops left out because no output could have observed them (see [`Partition::retain`]).
    pub dropped: usize,
}

impl<O> Partition<O> {
    /// Keeps the ops satisfying `keep` (with their provenance), counting the others as
    /// dropped. Used to drop *unobserved pending* ops: a pending write whose value no read
    /// returned (register), or a pending put / append whose value no get output starts with
    /// / contains (kv). With only reads (gets) as observers and unconditional writes, such an
    /// op can always be linearized last instead, so dropping it preserves the verdict while
    /// sparing the search its many possible positions. (Not done for cas-register, where a
    /// failed or pending cas can observe a write indirectly.)
    pub fn retain(&mut self, keep: impl Fn(&LinOp<O>) -> bool) {
        let mut i = 0;
        while i < self.ops.len() {
            if keep(&self.ops[i]) {
                i += 1;
            } else {
                self.ops.remove(i);
                self.meta.remove(i);
                self.dropped += 1;
            }
        }
    }
}

/// How a pair ended, as far as the models care.
enum End<'a> {
    Ok(&'a Op),
    Fail(&'a Op),
    Pending,
}

struct PairView<'a> {
    f: &'a str,
    key: Option<&'a Value>,
    input: &'a Value,
    end: End<'a>,
    call: usize,
    ret: Option<usize>,
    meta: OpMeta,
    line: usize,
}

fn pair_views(history: &History) -> Result<Vec<PairView<'_>>, LinError> {
    let mut out = Vec::new();
    for p in history.pairs() {
        let inv = p.invoke.map(|i| history.op(i));
        let comp = p.completion.map(|i| history.op(i));
        let first = inv.or(comp).expect("a pair has at least one event");
        let Some(f) = first.f.as_deref().or(comp.and_then(|c| c.f.as_deref())) else {
            return Err(LinError::Op { line: first.line, message: "operation without :f".into() });
        };
        let end = match comp {
            Some(c) if c.kind == OpType::Ok => End::Ok(c),
            Some(c) if c.kind == OpType::Fail => End::Fail(c),
            _ => End::Pending,
        };
        let ret = match end {
            End::Pending => None,
            _ => p.completion,
        };
        out.push(PairView {
            f,
            key: first.key.as_ref().or(comp.and_then(|c| c.key.as_ref())),
            input: &first.value,
            end,
            call: p.invoke.unwrap_or(0),
            ret,
            meta: OpMeta { invoke: p.invoke, completion: p.completion },
            line: first.line,
        });
    }
    Ok(out)
}

fn push<O>(parts: &mut BTreeMap<Option<Value>, Partition<O>>, v: &PairView<'_>, op: O) {
    let key = v.key.cloned();
    let part =
        parts.entry(key.clone()).or_insert_with(|| Partition { key, ops: Vec::new(), meta: Vec::new(), dropped: 0 });
    part.ops.push(LinOp { op, call: v.call, ret: v.ret });
    part.meta.push(v.meta);
}

/// Splits a register history into per-key partitions. `allow_cas` selects cas-register.
pub fn register_partitions(
    history: &History,
    allow_cas: bool,
) -> Result<(Vec<Partition<RegOp>>, Vec<Value>), LinError> {
    let mut ids: FxHashMap<Value, u32> = FxHashMap::default();
    let mut values: Vec<Value> = Vec::new();
    let mut intern = |v: &Value| -> Option<u32> {
        if v.is_nil() {
            return None;
        }
        Some(*ids.entry(v.clone()).or_insert_with(|| {
            values.push(v.clone());
            (values.len() - 1) as u32
        }))
    };
    let mut parts = BTreeMap::new();
    for v in pair_views(history)? {
        let bad = |message: String| LinError::Op { line: v.line, message };
        let op = match (v.f, &v.end) {
            ("read", End::Ok(c)) => RegOp::Read(intern(&c.value)),
            ("read", _) => continue,
            ("write", End::Fail(_)) => continue,
            ("write", _) => RegOp::Write(intern(v.input)),
            ("cas", end) if allow_cas => {
                let outcome = match end {
                    End::Ok(_) => CasOutcome::Applied,
                    End::Fail(c) if c.error.is_some() => continue,
                    End::Fail(_) => CasOutcome::Failed,
                    End::Pending => CasOutcome::Unknown,
                };
                let (from, to) = match v.input.as_vec() {
                    Some([a, b]) => (intern(a), intern(b)),
                    _ => return Err(bad(format!("cas value must be [from to], got {}", v.input))),
                };
                RegOp::Cas { from, to, outcome }
            }
            ("cas", _) => return Err(bad("cas is not allowed by the register model; use cas-register".into())),
            (f, _) => return Err(bad(format!("unsupported :f {f} for a register"))),
        };
        push(&mut parts, &v, op);
    }
    let mut parts: Vec<Partition<RegOp>> = parts.into_values().collect();
    if !allow_cas {
        for p in &mut parts {
            let seen: FxHashSet<Option<u32>> = p
                .ops
                .iter()
                .filter_map(|o| match o.op {
                    RegOp::Read(v) => Some(v),
                    _ => None,
                })
                .collect();
            p.retain(|o| !matches!(o.op, RegOp::Write(v) if o.ret.is_none() && !seen.contains(&v)));
        }
    }
    Ok((parts, values))
}

fn kv_string(v: &Value) -> Option<String> {
    match v {
        Value::Nil => Some(String::new()),
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Keyword(k) => Some(k.clone()),
        _ => None,
    }
}

/// Splits a kv history into per-key partitions.
pub fn kv_partitions(history: &History) -> Result<Vec<Partition<KvOp>>, LinError> {
    let mut parts = BTreeMap::new();
    for v in pair_views(history)? {
        let bad = |message: String| LinError::Op { line: v.line, message };
        if v.key.is_none() {
            return Err(bad("kv operations need a :key".into()));
        }
        let text = |x: &Value| kv_string(x).ok_or_else(|| bad(format!("kv values must be strings, got {x}")));
        let op = match (v.f, &v.end) {
            ("get" | "read", End::Ok(c)) => KvOp::Get(text(&c.value)?),
            ("get" | "read", _) => continue,
            ("put" | "write" | "append", End::Fail(_)) => continue,
            ("put" | "write", _) => KvOp::Put(text(v.input)?),
            ("append", _) => KvOp::Append(text(v.input)?),
            (f, _) => return Err(bad(format!("unsupported :f {f} for kv"))),
        };
        push(&mut parts, &v, op);
    }
    let mut parts: Vec<Partition<KvOp>> = parts.into_values().collect();
    for p in &mut parts {
        let outputs: Vec<String> = p
            .ops
            .iter()
            .filter_map(|o| match &o.op {
                KvOp::Get(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        p.retain(|o| match &o.op {
            KvOp::Put(v) if o.ret.is_none() => v.is_empty() || outputs.iter().any(|out| out.starts_with(v.as_str())),
            KvOp::Append(t) if o.ret.is_none() => !t.is_empty() && outputs.iter().any(|out| out.contains(t.as_str())),
            _ => true,
        });
    }
    Ok(parts)
}

/// JSON description of a history operation (invocation + completion).
pub fn op_json(history: &History, meta: OpMeta) -> Json {
    let inv = meta.invoke.map(|i| history.op(i));
    let comp = meta.completion.map(|i| history.op(i));
    let first = inv.or(comp).expect("a pair has at least one event");
    let mut j = json!({
        "index": first.index,
        "process": first.process.to_json(),
        "f": first.f,
        "value": first.value.to_json(),
        "type": comp.map_or("pending", |c| c.kind.name()),
    });
    if let Some(k) = &first.key {
        j["key"] = k.to_json();
    }
    if let Some(c) = comp {
        j["completion-index"] = json!(c.index);
        if c.kind == OpType::Ok {
            j["output"] = c.value.to_json();
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    #[test]
    fn register_semantics() {
        let mut m = RegisterModel::default();
        let s = m.init();
        assert_eq!(m.step(s, 0, &RegOp::Read(None)), Some(None));
        assert_eq!(m.step(s, 0, &RegOp::Read(Some(1))), None);
        let s = m.step(s, 0, &RegOp::Write(Some(1))).unwrap();
        let cas = |from, to, outcome| RegOp::Cas { from, to, outcome };
        assert_eq!(m.step(s, 0, &cas(Some(1), Some(2), CasOutcome::Applied)), Some(Some(2)));
        assert_eq!(m.step(s, 0, &cas(Some(3), Some(2), CasOutcome::Applied)), None);
        assert_eq!(m.step(s, 0, &cas(Some(1), Some(2), CasOutcome::Failed)), None);
        assert_eq!(m.step(s, 0, &cas(Some(3), Some(2), CasOutcome::Failed)), Some(Some(1)));
        assert_eq!(m.step(s, 0, &cas(Some(3), Some(2), CasOutcome::Unknown)), Some(Some(1)));
        assert_eq!(m.step(s, 0, &cas(Some(1), Some(2), CasOutcome::Unknown)), Some(Some(2)));
    }

    #[test]
    fn kv_semantics() {
        let mut m = KvModel::default();
        let s = m.init();
        assert_eq!(m.step(s, 0, &KvOp::Get(String::new())), Some(s));
        let s = m.step(s, 1, &KvOp::Append("ab".into())).unwrap();
        let s = m.step(s, 2, &KvOp::Append("c".into())).unwrap();
        assert_eq!(m.state_json(s), json!("abc"));
        assert!(m.step(s, 3, &KvOp::Get("ab".into())).is_none());
        let s2 = m.step(s, 4, &KvOp::Put("z".into())).unwrap();
        assert_eq!(m.state_json(s2), json!("z"));
    }

    #[test]
    fn unobserved_pending_ops_are_dropped() {
        let h = parse(
            r#"{"type":"invoke","process":0,"f":"append","key":"k","value":"a;"}
{"type":"invoke","process":1,"f":"append","key":"k","value":"b;"}
{"type":"invoke","process":2,"f":"put","key":"k","value":"c;"}
{"type":"invoke","process":3,"f":"get","key":"k","value":null}
{"type":"ok","process":3,"f":"get","key":"k","value":"a;"}
"#,
            Format::Jsonl,
        )
        .unwrap();
        let parts = kv_partitions(&h).unwrap();
        assert_eq!(parts[0].dropped, 2, "b; and c; are never observed");
        assert_eq!(parts[0].ops[0].op, KvOp::Append("a;".into()));
        assert_eq!(parts[0].meta[0].invoke, Some(0));
        let h = parse(
            r#"{"type":"invoke","process":0,"f":"write","value":1}
{"type":"invoke","process":1,"f":"write","value":2}
{"type":"invoke","process":2,"f":"read","value":null}
{"type":"ok","process":2,"f":"read","value":2}
"#,
            Format::Jsonl,
        )
        .unwrap();
        let (parts, _) = register_partitions(&h, false).unwrap();
        assert_eq!((parts[0].ops.len(), parts[0].dropped), (2, 1));
        let (parts, _) = register_partitions(&h, true).unwrap();
        assert_eq!(parts[0].dropped, 0, "cas-register keeps every pending write");
    }

    #[test]
    fn conversion_reads_outcomes() {
        let h = parse(
            r#"{"type":"invoke","process":0,"f":"write","value":1}
{"type":"invoke","process":1,"f":"cas","value":[1,2]}
{"type":"fail","process":1,"f":"cas","value":[1,2]}
{"type":"invoke","process":2,"f":"cas","value":[1,3]}
{"type":"fail","process":2,"f":"cas","value":[1,3],"error":"no-leader"}
{"type":"info","process":0,"f":"write","value":1}
{"type":"invoke","process":3,"f":"read","value":null}
{"type":"fail","process":3,"f":"read","value":null}
"#,
            Format::Jsonl,
        )
        .unwrap();
        let (parts, values) = register_partitions(&h, true).unwrap();
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!(p.ops.len(), 2, "failed-with-error cas and failed read are dropped");
        assert_eq!(p.ops[0].op, RegOp::Write(Some(0)));
        assert_eq!(p.ops[0].ret, None, "info write is pending");
        assert_eq!(p.ops[1].op, RegOp::Cas { from: Some(0), to: Some(1), outcome: CasOutcome::Failed });
        assert_eq!(p.ops[1].ret, Some(2));
        assert_eq!(values, vec![Value::Int(1), Value::Int(2)]);
        assert!(register_partitions(&h, false).is_err(), "register rejects cas");
    }
}
