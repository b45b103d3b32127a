//! List-append transactions, read out of a history.
//!
//! A transaction is a client op with `:f :txn` (or no `:f`) whose value is a vector of
//! micro-ops `[:append k e]` / `[:r k v]` (`v` a list, or nil). Each invocation is merged
//! with its completion: the completion's value when it has one (it carries the reads),
//! else the invocation's. Keys and elements are interned to `u32`.
//! Limits: only `append` and `r` micro-ops (`read` is accepted as `r`); an invocation that
//! never completed is treated like an `info` completion.

use super::ElleError;
use crate::hash::FxHashMap;
use crate::history::{History, OpType, Process};
use crate::value::Value;
use serde_json::{json, Value as Json};

/// Interned key.
pub type Key = u32;
/// Interned appended element.
pub type Elem = u32;

/// A micro-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Append element to key.
    Append(Key, Elem),
    /// Read of key; `None` for nil (never written, or unknown in an invocation).
    Read(Key, Option<Vec<Elem>>),
}

/// One transaction (an invocation merged with its completion).
#[derive(Debug, Clone)]
pub struct Txn {
    /// `Ok`, `Fail` or `Info` (also for never-completed invocations).
    pub kind: OpType,
    /// Client process.
    pub process: Process,
    /// History position of the invocation, if any.
    pub invoke: Option<usize>,
    /// History position of the completion, if any.
    pub completion: Option<usize>,
    /// `:index` of the completion (of the invocation if it never completed).
    pub index: i64,
    /// `:index` of the invocation, if any.
    pub invoke_index: Option<i64>,
    /// Micro-ops.
    pub mops: Vec<Mop>,
}

impl Txn {
    /// `ok` or `info`: may have taken effect.
    pub fn possible(&self) -> bool {
        matches!(self.kind, OpType::Ok | OpType::Info)
    }
}

/// The transactions of a history with their interning tables.
#[derive(Debug, Clone, Default)]
pub struct TxnHistory {
    /// Transactions ordered by their first event.
    pub txns: Vec<Txn>,
    /// Key values, by id.
    pub keys: Vec<Value>,
    /// Element values, by id.
    pub elems: Vec<Value>,
}

impl TxnHistory {
    /// JSON of an element.
    pub fn elem_json(&self, e: Elem) -> Json {
        self.elems[e as usize].to_json()
    }

    /// JSON of a key.
    pub fn key_json(&self, k: Key) -> Json {
        self.keys[k as usize].to_json()
    }

    /// JSON of a list of elements.
    pub fn list_json(&self, v: &[Elem]) -> Json {
        Json::Array(v.iter().map(|e| self.elem_json(*e)).collect())
    }

    /// JSON of a transaction for reports: `{"index", "process", "type", "value"}`.
    pub fn txn_json(&self, t: &Txn) -> Json {
        json!({
            "index": t.index,
            "process": t.process.to_json(),
            "type": t.kind.name(),
            "value": t.mops.iter().map(|m| self.mop_json(m)).collect::<Vec<_>>(),
        })
    }

    /// JSON of a micro-op, as `["append", k, e]` / `["r", k, [...]]`.
    pub fn mop_json(&self, m: &Mop) -> Json {
        match m {
            Mop::Append(k, e) => json!(["append", self.key_json(*k), self.elem_json(*e)]),
            Mop::Read(k, v) => json!(["r", self.key_json(*k), v.as_ref().map(|v| self.list_json(v))]),
        }
    }
}

#[derive(Default)]
struct Interner {
    ids: FxHashMap<Value, u32>,
    values: Vec<Value>,
}

impl Interner {
    fn get(&mut self, v: &Value) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.ids.insert(v.clone(), id);
        id
    }
}

fn parse_mops(raw: &Value, line: usize, keys: &mut Interner, elems: &mut Interner) -> Result<Vec<Mop>, ElleError> {
    let bad = |message: String| ElleError::BadTxn { line, message };
    let Some(items) = raw.as_vec() else {
        return Err(bad(format!("a transaction value must be a vector of micro-ops, got {raw}")));
    };
    let mut mops = Vec::with_capacity(items.len());
    for m in items {
        let Some([f, k, v]) = m.as_vec() else {
            return Err(bad(format!("micro-op must be [f k v], got {m}")));
        };
        let key = keys.get(k);
        match f.as_name() {
            Some("append") => mops.push(Mop::Append(key, elems.get(v))),
            Some("r" | "read") => {
                let read = match v {
                    Value::Nil => None,
                    Value::Vec(list) => Some(list.iter().map(|e| elems.get(e)).collect()),
                    other => return Err(bad(format!("a read must return a list or nil, got {other}"))),
                };
                mops.push(Mop::Read(key, read));
            }
            _ => return Err(bad(format!("unsupported micro-op {m} (only append and r)"))),
        }
    }
    Ok(mops)
}

/// Extracts the transactions of `history`.
pub fn parse(history: &History) -> Result<TxnHistory, ElleError> {
    let mut keys = Interner::default();
    let mut elems = Interner::default();
    let mut txns = Vec::new();
    for p in history.pairs() {
        let inv = p.invoke.map(|i| history.op(i));
        let comp = p.completion.map(|i| history.op(i));
        let first = inv.or(comp).expect("a pair has an event");
        if first.f.as_deref().is_some_and(|f| f != "txn") {
            continue;
        }
        let source = match comp {
            Some(c) if !c.value.is_nil() => c,
            _ => first,
        };
        let mops = parse_mops(&source.value, source.line, &mut keys, &mut elems)?;
        txns.push(Txn {
            kind: comp.map_or(OpType::Info, |c| c.kind),
            process: first.process.clone(),
            invoke: p.invoke,
            completion: p.completion,
            index: comp.unwrap_or(first).index,
            invoke_index: inv.map(|o| o.index),
            mops,
        });
    }
    Ok(TxnHistory { txns, keys: keys.values, elems: elems.values })
}

/// Elle refuses histories where one element is appended twice to a key by different
/// invocations (unique appends are what make version orders recoverable). Returns the
/// first duplicate `(key, element, line)`. Only invocations are checked, as Elle does.
pub fn duplicate_append(history: &History) -> Option<(Value, Value, usize)> {
    let mut seen = std::collections::HashSet::new();
    for op in &history.ops {
        if op.kind != OpType::Invoke || !op.process.is_client() || op.f.as_deref().is_some_and(|f| f != "txn") {
            continue;
        }
        for m in op.value.as_vec().unwrap_or(&[]) {
            if let Some([f, k, v]) = m.as_vec() {
                if f.as_name() == Some("append") && !seen.insert((k, v)) {
                    return Some((k.clone(), v.clone(), op.line));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse as parse_history, Format};

    #[test]
    fn merges_invocations_with_completions() {
        let h = parse_history(
            "{:type :invoke, :process 0, :f :txn, :value [[:append :x 1] [:r :y nil]]}\n\
             {:type :ok, :process 0, :f :txn, :value [[:append :x 1] [:r :y [2 3]]]}\n\
             {:type :invoke, :process 1, :f :txn, :value [[:append :y 9]]}\n\
             {:type :info, :process :nemesis, :f :kill}\n",
            Format::Edn,
        )
        .unwrap();
        let t = parse(&h).unwrap();
        assert_eq!(t.txns.len(), 2);
        assert_eq!(t.txns[0].kind, OpType::Ok);
        assert_eq!(t.txns[0].mops[1], Mop::Read(1, Some(vec![1, 2])));
        assert_eq!(t.txns[1].kind, OpType::Info, "never completed = info");
        assert_eq!(t.keys, vec![Value::Keyword("x".into()), Value::Keyword("y".into())]);
        assert_eq!(t.mop_json(&t.txns[0].mops[1]), json!(["r", "y", [2, 3]]));
    }

    #[test]
    fn rejects_bad_micro_ops_and_finds_duplicate_appends() {
        let h = parse_history("{:type :ok, :process 0, :value [[:w :x 1]]}", Format::Edn).unwrap();
        assert!(parse(&h).is_err());
        let h = parse_history(
            "{:type :invoke, :process 0, :value [[:append :x 1]]}\n{:type :invoke, :process 1, :value [[:append :x 1]]}",
            Format::Edn,
        )
        .unwrap();
        assert_eq!(duplicate_append(&h), Some((Value::Keyword("x".into()), Value::Int(1), 2)));
    }
}
