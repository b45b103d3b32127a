//! Deterministic execution of one transaction. See the module docs of
//! [`crate::tree`].

use bytes::Bytes;

use crate::error::Result;
use crate::tree::{
    CmpOp, CmpTarget, Compare, KeyRange, KeyValue, Layered, Op, OpResult, Overlay, RangeSpec, Record, TreeRead, Txn,
    TxnOutcome,
};

/// The writes of a transaction: key → new record, `None` = deleted.
pub type WriteSet = Overlay;

/// Why an op failed deterministically; aborts the transaction.
type Abort = String;

/// Runs `txn` against `view` as the epoch stamped `stamp` would.
pub fn execute(txn: &Txn, view: &dyn TreeRead, stamp: u64) -> Result<(TxnOutcome, WriteSet)> {
    let mut succeeded = true;
    for cmp in &txn.compares {
        if !compare_holds(cmp, view.get(&cmp.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut writes = WriteSet::new();
    let mut results = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let layered = Layered { base: view, overlay: &writes };
        match apply_op(op, &layered, stamp)? {
            Ok((result, op_writes)) => {
                results.push(result);
                writes.extend(op_writes);
            }
            Err(reason) => {
                let reason = format!("op {i} ({}): {reason}", describe(op));
                return Ok((TxnOutcome::Aborted { reason }, WriteSet::new()));
            }
        }
    }
    Ok((TxnOutcome::Done { succeeded, results }, writes))
}

fn describe(op: &Op) -> String {
    let name = match op {
        Op::Get { .. } => "get",
        Op::Range(_) => "range",
        Op::Put { .. } => "put",
        Op::Delete { .. } => "delete",
        Op::DeleteRange(_) => "delete_range",
        Op::Increment { .. } => "increment",
        Op::Append { .. } => "append",
    };
    match op.footprint() {
        crate::tree::Footprint::Key(k) => format!("{name} {}", String::from_utf8_lossy(k)),
        crate::tree::Footprint::Range(r) => {
            format!("{name} [{}, {})", String::from_utf8_lossy(&r.start), String::from_utf8_lossy(&r.end))
        }
    }
}

pub(crate) fn compare_holds(cmp: &Compare, current: Option<&Record>) -> bool {
    use std::cmp::Ordering;
    let ordering = match (&cmp.target, current) {
        (CmpTarget::Value(want), Some(r)) => r.value[..].cmp(want.as_slice()),
        (CmpTarget::Value(_), None) => return false,
        (CmpTarget::Version(want), r) => r.map_or(0, |r| r.version).cmp(want),
        (CmpTarget::Exists(want), r) => {
            let equal = r.is_some() == *want;
            return match cmp.op {
                CmpOp::Equal => equal,
                CmpOp::NotEqual => !equal,
                // Rejected by validation; never true.
                CmpOp::Less | CmpOp::Greater => false,
            };
        }
    };
    match cmp.op {
        CmpOp::Equal => ordering == Ordering::Equal,
        CmpOp::NotEqual => ordering != Ordering::Equal,
        CmpOp::Less => ordering == Ordering::Less,
        CmpOp::Greater => ordering == Ordering::Greater,
    }
}

fn kv(key: &[u8], record: Record) -> KeyValue {
    KeyValue { key: key.to_vec(), record }
}

/// The record written over `prev` with `value`.
fn next_record(prev: Option<&Record>, value: impl Into<Bytes>, stamp: u64) -> Record {
    Record {
        value: value.into(),
        version: prev.map_or(1, |p| p.version + 1),
        create_stamp: prev.map_or(stamp, |p| p.create_stamp),
        mod_stamp: stamp,
    }
}

type OpOutput = (OpResult, Vec<(Vec<u8>, Option<Record>)>);

fn apply_op(op: &Op, view: &dyn TreeRead, stamp: u64) -> Result<Result<OpOutput, Abort>> {
    Ok(Ok(match op {
        Op::Get { key } => (OpResult::Get(view.get(key)?.map(|r| kv(key, r))), vec![]),
        Op::Range(spec) => (range(view, spec)?, vec![]),
        Op::Put { key, value, prev_kv } => {
            let prev = view.get(key)?;
            let next = next_record(prev.as_ref(), value.clone(), stamp);
            let version = next.version;
            let prev = prev.filter(|_| *prev_kv).map(|r| kv(key, r));
            (OpResult::Put { prev, version }, vec![(key.clone(), Some(next))])
        }
        Op::Delete { key } => match view.get(key)? {
            Some(_) => (OpResult::Delete { deleted: 1 }, vec![(key.clone(), None)]),
            None => (OpResult::Delete { deleted: 0 }, vec![]),
        },
        Op::DeleteRange(range) => {
            let doomed: Vec<_> = view.scan(range).map(|r| r.map(|(k, _)| (k, None))).collect::<Result<_>>()?;
            (OpResult::DeleteRange { deleted: doomed.len() as u64 }, doomed)
        }
        Op::Increment { key, delta } => {
            let prev = view.get(key)?;
            let current = match &prev {
                None => 0,
                Some(r) => match std::str::from_utf8(&r.value).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(n) => n,
                    None => return Ok(Err("the current value is not a signed 64-bit integer".to_string())),
                },
            };
            let Some(value) = current.checked_add(*delta) else {
                return Ok(Err(format!("{current} + {delta} overflows a signed 64-bit integer")));
            };
            let next = next_record(prev.as_ref(), value.to_string().into_bytes(), stamp);
            let version = next.version;
            (OpResult::Increment { value, version }, vec![(key.clone(), Some(next))])
        }
        Op::Append { key, value, prev_kv } => {
            let mut prev = view.get(key)?;
            // The old value is moved into the new one unless it is returned.
            let mut joined = match &mut prev {
                Some(r) if *prev_kv => r.value.to_vec(),
                // No copy unless the bytes are shared (a cached record).
                Some(r) => Vec::from(std::mem::take(&mut r.value)),
                None => Vec::new(),
            };
            joined.extend_from_slice(value);
            let next = next_record(prev.as_ref(), joined, stamp);
            let version = next.version;
            let prev = prev.filter(|_| *prev_kv).map(|r| kv(key, r));
            (OpResult::Append { prev, version }, vec![(key.clone(), Some(next))])
        }
    }))
}

/// A range read, folding keys below a delimiter into common prefixes.
pub(crate) fn range(view: &dyn TreeRead, spec: &RangeSpec) -> Result<OpResult> {
    let limit = spec.limit.max(1) as usize;
    let mut kvs = Vec::new();
    let mut common_prefixes: Vec<Vec<u8>> = Vec::new();
    let mut more = false;
    let base = spec.range.start.len();
    for item in view.scan(&spec.range) {
        let (key, mut record) = item?;
        let folded = spec
            .delimiter
            .and_then(|d| key.get(base..).and_then(|rest| rest.iter().position(|&b| b == d)))
            .map(|pos| key[..base + pos + 1].to_vec());
        if let Some(prefix) = &folded {
            if common_prefixes.last() == Some(prefix) {
                continue;
            }
        }
        if kvs.len() + common_prefixes.len() == limit {
            more = true;
            break;
        }
        match folded {
            Some(prefix) => common_prefixes.push(prefix),
            None => {
                if spec.keys_only {
                    record.value.clear();
                }
                kvs.push(KeyValue { key, record });
            }
        }
    }
    Ok(OpResult::Range { kvs, common_prefixes, more })
}

/// Convenience for read-only callers: a range read outside a transaction.
pub fn read_range(view: &dyn TreeRead, spec: &RangeSpec) -> Result<OpResult> {
    range(view, spec)
}

impl KeyRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Overlay, VersionedTree};
    use arbor_storage::Memory;

    fn run(view: &Overlay, txn: Txn) -> (TxnOutcome, WriteSet) {
        let mem = Memory::new();
        let stored = VersionedTree::latest(&mem);
        let layered = Layered { base: &stored, overlay: view };
        execute(&txn, &layered, 100).unwrap()
    }

    fn txn(compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Txn {
        Txn { request_id: String::new(), compares, success, failure }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put { key: k.into(), value: Bytes::copy_from_slice(v.as_bytes()), prev_kv: false }
    }

    fn state(pairs: &[(&str, &str)]) -> Overlay {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.as_bytes().to_vec(),
                    Some(Record { value: v.as_bytes().to_vec().into(), version: 1, create_stamp: 1, mod_stamp: 1 }),
                )
            })
            .collect()
    }

    #[test]
    fn compare_picks_the_branch() {
        let s = state(&[("/a", "1")]);
        let cmp = |v: &str| Compare { key: b"/a".to_vec(), op: CmpOp::Equal, target: CmpTarget::Value(v.into()) };
        let (out, ws) = run(&s, txn(vec![cmp("1")], vec![put("/b", "yes")], vec![put("/b", "no")]));
        assert!(matches!(out, TxnOutcome::Done { succeeded: true, .. }));
        assert_eq!(ws[&b"/b".to_vec()].as_ref().unwrap().value, &b"yes"[..]);
        let (out, ws) = run(&s, txn(vec![cmp("2")], vec![put("/b", "yes")], vec![put("/b", "no")]));
        assert!(matches!(out, TxnOutcome::Done { succeeded: false, .. }));
        assert_eq!(ws[&b"/b".to_vec()].as_ref().unwrap().value, &b"no"[..]);
    }

    #[test]
    fn compare_semantics_on_missing_keys() {
        let missing = |target, op| compare_holds(&Compare { key: b"/x".to_vec(), op, target }, None);
        assert!(!missing(CmpTarget::Value(vec![]), CmpOp::Equal));
        assert!(!missing(CmpTarget::Value(vec![]), CmpOp::NotEqual));
        assert!(missing(CmpTarget::Version(0), CmpOp::Equal));
        assert!(missing(CmpTarget::Version(1), CmpOp::Less));
        assert!(missing(CmpTarget::Exists(false), CmpOp::Equal));
        assert!(missing(CmpTarget::Exists(true), CmpOp::NotEqual));
    }

    #[test]
    fn ops_see_earlier_writes_of_the_same_txn_and_versions_advance() {
        let s = state(&[("/c", "5")]);
        let ops = vec![
            put("/a", "x"),
            Op::Append { key: b"/a".to_vec(), value: b"y".to_vec(), prev_kv: true },
            Op::Get { key: b"/a".to_vec() },
            Op::Increment { key: b"/c".to_vec(), delta: -7 },
            Op::Delete { key: b"/c".to_vec() },
            Op::Get { key: b"/c".to_vec() },
        ];
        let (out, ws) = run(&s, txn(vec![], ops, vec![]));
        let TxnOutcome::Done { results, .. } = out else { panic!("aborted") };
        assert_eq!(
            results[1],
            OpResult::Append {
                prev: Some(KeyValue {
                    key: b"/a".to_vec(),
                    record: Record { value: b"x".to_vec().into(), version: 1, create_stamp: 100, mod_stamp: 100 }
                }),
                version: 2
            }
        );
        let OpResult::Get(Some(got)) = &results[2] else { panic!() };
        assert_eq!(got.record.value, &b"xy"[..]);
        assert_eq!(results[3], OpResult::Increment { value: -2, version: 2 });
        assert_eq!(results[4], OpResult::Delete { deleted: 1 });
        assert_eq!(results[5], OpResult::Get(None));
        assert_eq!(ws[&b"/c".to_vec()], None);
    }

    #[test]
    fn the_replaced_record_is_returned_only_when_asked_for() {
        let s = state(&[("/a", "x"), ("/b", "y")]);
        for prev_kv in [false, true] {
            let ops = vec![
                Op::Put { key: b"/a".to_vec(), value: b"x2".to_vec().into(), prev_kv },
                Op::Append { key: b"/b".to_vec(), value: b"z".to_vec(), prev_kv },
            ];
            let (out, ws) = run(&s, txn(vec![], ops, vec![]));
            let TxnOutcome::Done { results, .. } = out else { panic!("aborted") };
            let old = |key: &[u8], value: &[u8]| {
                let record = Record { value: value.to_vec().into(), version: 1, create_stamp: 1, mod_stamp: 1 };
                Some(KeyValue { key: key.to_vec(), record }).filter(|_| prev_kv)
            };
            assert_eq!(results[0], OpResult::Put { prev: old(b"/a", b"x"), version: 2 });
            assert_eq!(results[1], OpResult::Append { prev: old(b"/b", b"y"), version: 2 });
            // The writes are the same either way.
            assert_eq!(ws[&b"/a".to_vec()].as_ref().unwrap().value, &b"x2"[..]);
            assert_eq!(ws[&b"/b".to_vec()].as_ref().unwrap().value, &b"yz"[..]);
        }
    }

    #[test]
    fn a_failing_op_aborts_the_whole_transaction() {
        let s = state(&[("/n", "not a number")]);
        let (out, ws) =
            run(&s, txn(vec![], vec![put("/a", "1"), Op::Increment { key: b"/n".to_vec(), delta: 1 }], vec![]));
        let TxnOutcome::Aborted { reason } = out else { panic!("expected abort") };
        assert!(reason.contains("op 1 (increment /n)"), "{reason}");
        assert!(ws.is_empty(), "nothing of an aborted transaction is written");
        let s = state(&[("/n", &i64::MAX.to_string())]);
        let (out, _) = run(&s, txn(vec![], vec![Op::Increment { key: b"/n".to_vec(), delta: 1 }], vec![]));
        assert!(matches!(out, TxnOutcome::Aborted { .. }));
    }

    #[test]
    fn range_lists_children_with_a_delimiter() {
        let s = state(&[("/u/a", ""), ("/u/b/1", ""), ("/u/b/2", ""), ("/u/c", ""), ("/v", "")]);
        let spec = |delimiter, limit| RangeSpec { range: KeyRange::prefix(b"/u/"), limit, delimiter, keys_only: true };
        let (out, _) = run(&s, txn(vec![], vec![Op::Range(spec(Some(b'/'), 100))], vec![]));
        let TxnOutcome::Done { results, .. } = out else { panic!() };
        let OpResult::Range { kvs, common_prefixes, more } = &results[0] else { panic!() };
        assert_eq!(kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [&b"/u/a"[..], b"/u/c"]);
        assert_eq!(common_prefixes, &[b"/u/b/".to_vec()]);
        assert!(!more);
        let (out, _) =
            run(&s, txn(vec![], vec![Op::Range(spec(None, 2)), Op::DeleteRange(KeyRange::prefix(b"/u/"))], vec![]));
        let TxnOutcome::Done { results, .. } = out else { panic!() };
        let OpResult::Range { kvs, more, .. } = &results[0] else { panic!() };
        assert_eq!(kvs.len(), 2);
        assert!(more);
        assert_eq!(results[1], OpResult::DeleteRange { deleted: 4 });
    }
}
