//! Anomalies visible without cycle search (Elle's names):
//! - `G1a` aborted read: an ok txn read an element appended by a failed txn;
//! - `G1b` intermediate read: an ok txn's read ends with an element that another txn
//!   overwrote with a later append to the same key;
//! - `internal`: a read disagrees with the txn's own earlier reads and appends;
//! - `future-read`: a read shows an element the same txn appends later;
//! - `dirty-update`: in a key's version order, a committed append follows a failed one;
//! - `duplicate-elements`: a read holds one element twice;
//! - `incompatible-order`: two reads of a key are not prefix-compatible;
//! - `lost-update`: two committed txns read the same version of a key and both append to it.
//!
//! Each returns a list of JSON cases. Limits: a read of nil and a read of `[]` are both
//! "empty"; elements with no known writer are treated like an indeterminate writer.

use super::txn::{Elem, Key, Mop, TxnHistory};
use super::versions::{is_prefix, sorted_values, AppendIndex};
use crate::hash::{FxHashMap, FxHashSet};
use crate::history::OpType;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// All non-cycle anomalies found, by name.
pub fn find(h: &TxnHistory) -> BTreeMap<String, Vec<Json>> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, cases: Vec<Json>| {
        if !cases.is_empty() {
            out.insert(name.to_string(), cases);
        }
    };
    add("G1a", g1a(h));
    add("G1b", g1b(h));
    let (internal, future) = internal_and_future(h);
    add("internal", internal);
    add("future-read", future);
    add("dirty-update", dirty_update(h));
    add("duplicate-elements", duplicates(h));
    add("incompatible-order", incompatible_orders(h));
    add("lost-update", lost_updates(h));
    out
}

fn ok_txns(h: &TxnHistory) -> impl Iterator<Item = &super::txn::Txn> {
    h.txns.iter().filter(|t| t.kind == OpType::Ok)
}

/// Reads of elements written by failed transactions.
pub fn g1a(h: &TxnHistory) -> Vec<Json> {
    let mut failed: FxHashMap<(Key, Elem), usize> = FxHashMap::default();
    for (i, t) in h.txns.iter().enumerate() {
        if t.kind == OpType::Fail {
            for m in &t.mops {
                if let Mop::Append(k, e) = m {
                    failed.insert((*k, *e), i);
                }
            }
        }
    }
    let mut cases = Vec::new();
    for t in ok_txns(h) {
        for m in &t.mops {
            if let Mop::Read(k, Some(v)) = m {
                for e in v {
                    if let Some(&w) = failed.get(&(*k, *e)) {
                        cases.push(json!({
                            "op": h.txn_json(t),
                            "mop": h.mop_json(m),
                            "writer": h.txn_json(&h.txns[w]),
                            "element": h.elem_json(*e),
                        }));
                    }
                }
            }
        }
    }
    cases
}

/// Reads ending in another transaction's intermediate (overwritten) append.
pub fn g1b(h: &TxnHistory) -> Vec<Json> {
    let mut intermediate: FxHashMap<(Key, Elem), usize> = FxHashMap::default();
    for (i, t) in h.txns.iter().enumerate() {
        let mut last: FxHashMap<Key, Elem> = FxHashMap::default();
        for m in &t.mops {
            if let Mop::Append(k, e) = m {
                if let Some(prev) = last.insert(*k, *e) {
                    intermediate.insert((*k, prev), i);
                }
            }
        }
    }
    let mut cases = Vec::new();
    for (i, t) in h.txns.iter().enumerate().filter(|(_, t)| t.kind == OpType::Ok) {
        for m in &t.mops {
            if let Mop::Read(k, Some(v)) = m {
                if let Some(&w) = v.last().and_then(|e| intermediate.get(&(*k, *e))) {
                    if w != i {
                        cases.push(json!({
                            "op": h.txn_json(t),
                            "mop": h.mop_json(m),
                            "writer": h.txn_json(&h.txns[w]),
                            "element": h.elem_json(*v.last().expect("non-empty")),
                        }));
                    }
                }
            }
        }
    }
    cases
}

enum Expected {
    Known(Vec<Elem>),
    Suffix(Vec<Elem>),
}

/// Internal inconsistencies and future reads, one case per transaction at most.
pub fn internal_and_future(h: &TxnHistory) -> (Vec<Json>, Vec<Json>) {
    let mut internal = Vec::new();
    let mut future = Vec::new();
    for t in ok_txns(h) {
        let mut state: FxHashMap<Key, Expected> = FxHashMap::default();
        for m in &t.mops {
            match m {
                Mop::Append(k, e) => match state.get_mut(k) {
                    Some(Expected::Known(v) | Expected::Suffix(v)) => v.push(*e),
                    None => {
                        state.insert(*k, Expected::Suffix(vec![*e]));
                    }
                },
                Mop::Read(k, v) => {
                    let read: &[Elem] = v.as_deref().unwrap_or(&[]);
                    let bad = match state.get(k) {
                        None => None,
                        Some(Expected::Known(s)) => (s.as_slice() != read).then(|| h.list_json(s)),
                        Some(Expected::Suffix(s)) => {
                            let ok = read.len() >= s.len() && read[read.len() - s.len()..] == s[..];
                            (!ok).then(|| {
                                let mut j = vec![json!("...")];
                                j.extend(s.iter().map(|e| h.elem_json(*e)));
                                Json::Array(j)
                            })
                        }
                    };
                    if let Some(expected) = bad {
                        internal.push(json!({"op": h.txn_json(t), "mop": h.mop_json(m), "expected": expected}));
                        break;
                    }
                    state.insert(*k, Expected::Known(read.to_vec()));
                }
            }
        }
        let mut read_at: FxHashMap<(Key, Elem), usize> = FxHashMap::default();
        for (i, m) in t.mops.iter().enumerate() {
            match m {
                Mop::Read(k, Some(v)) => {
                    for e in v {
                        read_at.entry((*k, *e)).or_insert(i);
                    }
                }
                Mop::Read(_, None) => {}
                Mop::Append(k, e) => {
                    if let Some(&r) = read_at.get(&(*k, *e)) {
                        future.push(
                            json!({"op": h.txn_json(t), "mop": h.mop_json(&t.mops[r]), "element": h.elem_json(*e)}),
                        );
                        break;
                    }
                }
            }
        }
    }
    (internal, future)
}

/// Committed appends following failed ones in a key's version order.
pub fn dirty_update(h: &TxnHistory) -> Vec<Json> {
    let sorted = sorted_values(h.txns.iter());
    let index = AppendIndex::new(&sorted);
    let mut writer: FxHashMap<(Key, Elem), usize> = FxHashMap::default();
    for (i, t) in h.txns.iter().enumerate() {
        for m in &t.mops {
            if let Mop::Append(k, e) = m {
                writer.insert((*k, *e), i);
            }
        }
    }
    let mut keys: Vec<&Key> = index.values.keys().collect();
    keys.sort();
    let mut cases = Vec::new();
    for k in keys {
        // (kind of the last writer that matters, its txn, values since then)
        let mut t1: (OpType, Option<usize>) = (OpType::Ok, None);
        let mut vs: Vec<Elem> = Vec::new();
        for &v in &index.values[k] {
            vs.push(v);
            let w = writer.get(&(*k, v)).copied();
            let kind2 = w.map_or(OpType::Info, |w| h.txns[w].kind);
            match (t1.0, kind2) {
                (OpType::Fail, OpType::Ok) => {
                    let first = t1.1.map(|w| h.txn_json(&h.txns[w]));
                    cases.push(json!({
                        "key": h.key_json(*k),
                        "values": h.list_json(&vs),
                        "txns": [first, "...", w.map(|w| h.txn_json(&h.txns[w]))],
                    }));
                    t1 = (kind2, w);
                    vs = vec![v];
                }
                (_, OpType::Info) => {}
                (OpType::Fail, OpType::Fail) => {}
                _ => {
                    t1 = (kind2, w);
                    vs = vec![v];
                }
            }
        }
    }
    cases
}

/// Reads with a repeated element (ok and info transactions).
pub fn duplicates(h: &TxnHistory) -> Vec<Json> {
    let mut cases = Vec::new();
    let mut seen: FxHashSet<Elem> = FxHashSet::default();
    for t in h.txns.iter().filter(|t| t.possible()) {
        for m in &t.mops {
            if let Mop::Read(_, Some(v)) = m {
                seen.clear();
                if v.iter().all(|e| seen.insert(*e)) {
                    continue;
                }
                let mut counts: BTreeMap<Elem, usize> = BTreeMap::new();
                for e in v {
                    *counts.entry(*e).or_default() += 1;
                }
                let dups: serde_json::Map<String, Json> = counts
                    .iter()
                    .filter(|(_, n)| **n > 1)
                    .map(|(e, n)| (h.elems[*e as usize].to_string(), json!(n)))
                    .collect();
                if !dups.is_empty() {
                    cases.push(json!({"op": h.txn_json(t), "mop": h.mop_json(m), "duplicates": dups}));
                }
            }
        }
    }
    cases
}

/// Keys whose reads are not prefix-compatible (first offending pair per key).
pub fn incompatible_orders(h: &TxnHistory) -> Vec<Json> {
    let sorted = sorted_values(h.txns.iter().filter(|t| t.possible()));
    let mut keys: Vec<&Key> = sorted.keys().collect();
    keys.sort();
    let mut cases = Vec::new();
    for k in keys {
        if let Some(w) = sorted[k].windows(2).find(|w| !is_prefix(&w[0], &w[1])) {
            cases.push(json!({"key": h.key_json(*k), "values": [h.list_json(&w[0]), h.list_json(&w[1])]}));
        }
    }
    cases
}

/// Pairs (or more) of committed transactions that read the same version of a key and
/// then appended to it.
pub fn lost_updates(h: &TxnHistory) -> Vec<Json> {
    let mut groups: BTreeMap<(Key, Vec<Elem>), Vec<usize>> = BTreeMap::new();
    for (i, t) in h.txns.iter().enumerate().filter(|(_, t)| t.kind == OpType::Ok) {
        let mut reads: FxHashMap<Key, Vec<Elem>> = FxHashMap::default();
        let mut written: Vec<Key> = Vec::new();
        for m in &t.mops {
            match m {
                Mop::Read(k, v) => {
                    reads.entry(*k).or_insert_with(|| v.clone().unwrap_or_default());
                }
                Mop::Append(k, _) => {
                    if let Some(r) = reads.get(k) {
                        if !written.contains(k) {
                            written.push(*k);
                            groups.entry((*k, r.clone())).or_default().push(i);
                        }
                    }
                }
            }
        }
    }
    groups
        .into_iter()
        .filter(|(_, txns)| txns.len() > 1)
        .map(|((k, v), txns)| {
            json!({
                "key": h.key_json(k),
                "value": h.list_json(&v),
                "txns": txns.iter().map(|i| h.txn_json(&h.txns[*i])).collect::<Vec<_>>(),
            })
        })
        .collect()
}
