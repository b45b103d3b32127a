//! The bank checker: clients `transfer` amounts between accounts and `read` all balances;
//! every successful read must sum to the constant total and show no negative balance.
//!
//! Ops: `read` whose ok completion `value` is a map account -> balance (JSON object or EDN
//! map); `transfer` ops (`value` = `{"from":..,"to":..,"amount":..}`) are not interpreted.
//! The total is given by the caller, or else taken from the first ok read (reported as
//! `total-inferred`). A read that lacks an account seen in another read, or holds a `null`
//! balance, is flagged too. Limits: only reads are checked (Jepsen's bank checker does the
//! same); without an ok read the result is `unknown`.

use crate::history::{History, OpType};
use crate::value::Value;
use crate::verdict::{Validity, Verdict};
use serde_json::json;
use std::collections::BTreeSet;
use thiserror::Error;

/// Malformed bank operations.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BankError {
    /// An op the checker does not understand.
    #[error("line {line}: {message}")]
    Op {
        /// 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
}

struct Read<'a> {
    index: i64,
    balances: &'a [(Value, Value)],
}

/// Checks a bank history; `total` is the expected sum of all balances.
pub fn check(history: &History, total: Option<i64>) -> Result<Verdict, BankError> {
    let mut reads = Vec::new();
    for p in history.pairs() {
        let inv = p.invoke.map(|i| history.op(i));
        let comp = p.completion.map(|i| history.op(i));
        let first = inv.or(comp).expect("a pair has an event");
        match first.f.as_deref() {
            Some("read") => {
                if let Some(c) = comp.filter(|c| c.kind == OpType::Ok) {
                    let Value::Map(balances) = &c.value else {
                        return Err(BankError::Op {
                            line: c.line,
                            message: format!("a bank read must return a map, got {}", c.value),
                        });
                    };
                    reads.push(Read { index: c.index, balances });
                }
            }
            Some(_) => {}
            None => return Err(BankError::Op { line: first.line, message: "operation without :f".into() }),
        }
    }
    let Some(first) = reads.first() else {
        return Ok(Verdict::new("bank", Validity::Unknown, json!({"error": "no successful read"})));
    };
    let sum = |r: &Read| -> Option<i64> { r.balances.iter().map(|(_, b)| b.as_int()).sum() };
    let (total, inferred) = match total {
        Some(t) => (Some(t), false),
        None => (sum(first), true),
    };
    let accounts: BTreeSet<&Value> = reads.iter().flat_map(|r| r.balances.iter().map(|(a, _)| a)).collect();
    let mut errors = Vec::new();
    for r in &reads {
        let present: BTreeSet<&Value> = r.balances.iter().map(|(a, _)| a).collect();
        let missing: Vec<_> = accounts.difference(&present).map(|a| a.to_json()).collect();
        if !missing.is_empty() {
            errors.push(json!({"type": "missing-accounts", "index": r.index, "accounts": missing}));
        }
        for (a, b) in r.balances {
            match b.as_int() {
                None => errors.push(
                    json!({"type": "nil-balance", "index": r.index, "account": a.to_json(), "balance": b.to_json()}),
                ),
                Some(x) if x < 0 => errors
                    .push(json!({"type": "negative-value", "index": r.index, "account": a.to_json(), "balance": x})),
                _ => {}
            }
        }
        if let (Some(s), Some(t)) = (sum(r), total) {
            if s != t {
                errors.push(json!({"type": "wrong-total", "index": r.index, "total": s, "expected": t}));
            }
        }
    }
    let validity = if errors.is_empty() { Validity::Valid } else { Validity::Invalid };
    let mut types: Vec<String> = errors.iter().filter_map(|e| e["type"].as_str().map(str::to_string)).collect();
    types.sort();
    types.dedup();
    Ok(Verdict::new(
        "bank",
        validity,
        json!({
            "read-count": reads.len(),
            "total": total,
            "total-inferred": inferred,
            "error-types": types,
            "errors": errors,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    fn run(reads: &[&str], total: Option<i64>) -> Verdict {
        let mut lines = vec![
            r#"{"type":"invoke","process":0,"f":"transfer","value":{"from":"a","to":"b","amount":3}}"#.to_string(),
            r#"{"type":"ok","process":0,"f":"transfer","value":{"from":"a","to":"b","amount":3}}"#.to_string(),
        ];
        for (i, r) in reads.iter().enumerate() {
            lines.push(format!(r#"{{"type":"invoke","process":{},"f":"read","value":null}}"#, i + 1));
            lines.push(format!(r#"{{"type":"ok","process":{},"f":"read","value":{r}}}"#, i + 1));
        }
        check(&parse(&lines.join("\n"), Format::Jsonl).unwrap(), total).unwrap()
    }

    #[test]
    fn constant_totals_are_valid() {
        let v = run(&[r#"{"a":10,"b":10}"#, r#"{"a":7,"b":13}"#], Some(20));
        assert_eq!(v.validity, Validity::Valid);
        assert_eq!(v.details["read-count"], json!(2));
    }

    #[test]
    fn wrong_totals_negatives_and_missing_accounts_are_flagged() {
        let v = run(&[r#"{"a":10,"b":10}"#, r#"{"a":-3,"b":13}"#, r#"{"a":20}"#], None);
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["total-inferred"], json!(true));
        assert_eq!(v.details["error-types"], json!(["missing-accounts", "negative-value", "wrong-total"]));
    }

    #[test]
    fn no_read_is_unknown() {
        assert_eq!(run(&[], Some(1)).validity, Validity::Unknown);
    }
}
