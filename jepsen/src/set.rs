//! The set checker: clients `add` unique elements, then a final `read` returns the whole
//! set. Every acknowledged add must be present (nothing lost), no element may appear twice
//! (nothing duplicated), every element read must have been attempted (nothing unexpected),
//! and no element whose add definitely failed may appear.
//!
//! Ops: `add` with `value` = the element; `read` with completion `value` = a list (or set)
//! of elements. The last `ok` read is the final read; earlier reads are ignored. Adds that
//! ended `info` (or never) and are present are "recovered", absent ones are fine.
//! Limits: no per-element timeline (Jepsen's set-full stability analysis is not done);
//! without an ok read the result is `unknown`.

use crate::history::{History, OpType};
use crate::value::Value;
use crate::verdict::{Validity, Verdict};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Malformed set operations.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SetError {
    /// An op the checker does not understand.
    #[error("line {line}: {message}")]
    Op {
        /// 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
}

/// Checks a set history.
pub fn check(history: &History) -> Result<Verdict, SetError> {
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut final_read: Option<(i64, Vec<Value>)> = None;
    for p in history.pairs() {
        let inv = p.invoke.map(|i| history.op(i));
        let comp = p.completion.map(|i| history.op(i));
        let first = inv.or(comp).expect("a pair has an event");
        let bad = |message: String| SetError::Op { line: first.line, message };
        match first.f.as_deref() {
            Some("add") => {
                let e = first.value.clone();
                attempted.insert(e.clone());
                match comp.map(|c| c.kind) {
                    Some(OpType::Ok) => {
                        acknowledged.insert(e);
                    }
                    Some(OpType::Fail) => {
                        failed.insert(e);
                    }
                    _ => {}
                }
            }
            Some("read") => {
                if let Some(c) = comp.filter(|c| c.kind == OpType::Ok) {
                    let elems = match &c.value {
                        Value::Vec(v) | Value::Set(v) => v.clone(),
                        Value::Nil => Vec::new(),
                        other => return Err(bad(format!("a set read must return a list, got {other}"))),
                    };
                    final_read = Some((c.index, elems));
                }
            }
            Some(f) => return Err(bad(format!("unsupported :f {f} for the set checker"))),
            None => return Err(bad("operation without :f".into())),
        }
    }
    let Some((read_index, elems)) = final_read else {
        return Ok(Verdict::new(
            "set",
            Validity::Unknown,
            json!({"error": "no successful read", "attempt-count": attempted.len()}),
        ));
    };
    let mut counts: BTreeMap<&Value, usize> = BTreeMap::new();
    for e in &elems {
        *counts.entry(e).or_default() += 1;
    }
    let present: BTreeSet<&Value> = counts.keys().copied().collect();
    let js = |it: &mut dyn Iterator<Item = &Value>| it.map(Value::to_json).collect::<Vec<_>>();
    let lost = js(&mut acknowledged.iter().filter(|e| !present.contains(e)));
    let unexpected = js(&mut present.iter().copied().filter(|e| !attempted.contains(*e)));
    let failed_present = js(&mut present.iter().copied().filter(|e| failed.contains(*e)));
    let recovered = js(&mut present
        .iter()
        .copied()
        .filter(|e| attempted.contains(*e) && !acknowledged.contains(*e) && !failed.contains(*e)));
    let duplicated: Vec<_> =
        counts.iter().filter(|(_, n)| **n > 1).map(|(e, n)| json!({"element": e.to_json(), "count": n})).collect();
    let ok = lost.is_empty() && unexpected.is_empty() && failed_present.is_empty() && duplicated.is_empty();
    Ok(Verdict::new(
        "set",
        if ok { Validity::Valid } else { Validity::Invalid },
        json!({
            "final-read-index": read_index,
            "attempt-count": attempted.len(),
            "acknowledged-count": acknowledged.len(),
            "read-count": elems.len(),
            "lost": lost,
            "unexpected": unexpected,
            "failed-but-present": failed_present,
            "duplicated": duplicated,
            "recovered": recovered,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    fn run(lines: &[&str]) -> Verdict {
        check(&parse(&lines.join("\n"), Format::Jsonl).unwrap()).unwrap()
    }

    const ADDS: [&str; 8] = [
        r#"{"type":"invoke","process":0,"f":"add","value":1}"#,
        r#"{"type":"ok","process":0,"f":"add","value":1}"#,
        r#"{"type":"invoke","process":1,"f":"add","value":2}"#,
        r#"{"type":"info","process":1,"f":"add","value":2}"#,
        r#"{"type":"invoke","process":2,"f":"add","value":3}"#,
        r#"{"type":"fail","process":2,"f":"add","value":3}"#,
        r#"{"type":"invoke","process":0,"f":"add","value":4}"#,
        r#"{"type":"ok","process":0,"f":"add","value":4}"#,
    ];

    fn with_read(read: &str) -> Vec<&str> {
        let mut v = ADDS.to_vec();
        v.push(r#"{"type":"invoke","process":5,"f":"read","value":null}"#);
        v.push(read);
        v
    }

    #[test]
    fn complete_read_is_valid_and_counts_recovered() {
        let v = run(&with_read(r#"{"type":"ok","process":5,"f":"read","value":[1,2,4]}"#));
        assert_eq!(v.validity, Validity::Valid);
        assert_eq!(v.details["recovered"], json!([2]));
    }

    #[test]
    fn lost_duplicated_unexpected_and_failed_are_flagged() {
        let v = run(&with_read(r#"{"type":"ok","process":5,"f":"read","value":[1,1,3,9]}"#));
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["lost"], json!([4]));
        assert_eq!(v.details["unexpected"], json!([9]));
        assert_eq!(v.details["failed-but-present"], json!([3]));
        assert_eq!(v.details["duplicated"], json!([{"element": 1, "count": 2}]));
    }

    #[test]
    fn no_read_is_unknown() {
        assert_eq!(run(&ADDS).validity, Validity::Unknown);
    }
}
