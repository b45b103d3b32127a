//! Linearizability checking: Wing–Gong–Lowe search with memoisation ([`wgl`]) over the
//! models of [`models`], P-compositional (one partition per key), partitions checked in
//! parallel on scoped threads (smallest first) with cancellation on the first violation,
//! under a shared time and memory budget that yields `unknown` instead of hanging.
//!
//! On a violation the report carries a witness for the smallest failing partition: its
//! key, the longest linearizable prefix the search reached (with the state after each op),
//! the state after it, and the *illegal window*: the operations that could have been
//! linearized next there, each with the model's answer (illegal, or legal but leading
//! only to dead ends / already-explored configurations).
//! Limits: ordering is by position in the history (an op's call and return are events);
//! witness prefixes are trimmed to their last [`PREFIX_SHOWN`] ops in the JSON.

pub mod models;
pub mod wgl;

use crate::history::History;
use crate::verdict::{Validity, Verdict};
use models::{Explain, Partition};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;
use wgl::{AbortReason, Budget, Outcome};

/// How many ops of the longest prefix the witness shows.
pub const PREFIX_SHOWN: usize = 20;

/// Errors converting a history for a model.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinError {
    /// An operation the model cannot interpret.
    #[error("line {line}: {message}")]
    Op {
        /// 1-based line of the offending op.
        line: usize,
        /// Why.
        message: String,
    },
}

/// The models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinModel {
    /// read / write register, initial nil.
    Register,
    /// read / write / cas register, initial nil.
    CasRegister,
    /// per-key get / put / append on strings, initial "".
    Kv,
}

impl LinModel {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            LinModel::Register => "register",
            LinModel::CasRegister => "cas-register",
            LinModel::Kv => "kv",
        }
    }
}

/// Limits for a check.
#[derive(Debug, Clone)]
pub struct LinOptions {
    /// Wall-clock budget for the whole check (`None`: unlimited).
    pub time_limit: Option<Duration>,
    /// Memory budget for the memo tables of all partitions together, in bytes.
    pub memory_limit: usize,
    /// Worker threads (0 = available parallelism).
    pub threads: usize,
}

impl Default for LinOptions {
    fn default() -> Self {
        LinOptions { time_limit: None, memory_limit: 2 << 30, threads: 0 }
    }
}

/// Checks `history` against `model`.
pub fn check(model: LinModel, history: &History, opts: &LinOptions) -> Result<Verdict, LinError> {
    let started = Instant::now();
    let budget = Budget::new(opts.time_limit.map(|d| started + d), opts.memory_limit);
    let report = match model {
        LinModel::Register | LinModel::CasRegister => {
            let (parts, values) = models::register_partitions(history, model == LinModel::CasRegister)?;
            let make = || models::RegisterModel { values: values.clone() };
            run(history, &parts, make, &budget, opts.threads)
        }
        LinModel::Kv => {
            let parts = models::kv_partitions(history)?;
            run(history, &parts, models::KvModel::default, &budget, opts.threads)
        }
    };
    let mut details = report.details;
    details["model"] = json!(model.name());
    details["elapsed-ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
    Ok(Verdict::new("linearizability", report.validity, details))
}

struct Report {
    validity: Validity,
    details: Json,
}

fn run<M, F>(history: &History, parts: &[Partition<M::Op>], make: F, budget: &Budget, threads: usize) -> Report
where
    M: Explain,
    M::Op: Sync,
    F: Fn() -> M + Sync,
{
    // Smallest partitions first: violations are usually found fastest there.
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| parts[i].ops.len());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; parts.len()]);
    let next = AtomicUsize::new(0);
    let workers = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, parts.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let outcome = if budget.cancel.load(Ordering::Relaxed) {
                    Outcome::Aborted { reason: AbortReason::Cancelled, prefix: Vec::new() }
                } else {
                    wgl::search(&mut make(), &parts[i].ops, budget)
                };
                if matches!(outcome, Outcome::Illegal { .. }) {
                    budget.cancel.store(true, Ordering::Relaxed);
                }
                results.lock().expect("no worker panics")[i] = Some(outcome);
            });
        }
    });
    let results: Vec<Outcome> = results
        .into_inner()
        .expect("no worker panics")
        .into_iter()
        .map(|o| o.expect("every partition was run"))
        .collect();

    let mut counts = json!({"linearizable": 0, "illegal": 0, "timeout": 0, "memory-limit": 0, "cancelled": 0});
    let mut validity = Validity::Valid;
    let mut unknown = Vec::new();
    let mut failing: Option<usize> = None;
    for (i, r) in results.iter().enumerate() {
        let name = match r {
            Outcome::Linearizable => "linearizable",
            Outcome::Illegal { .. } => {
                validity = Validity::Invalid;
                if failing.is_none_or(|f| parts[i].ops.len() < parts[f].ops.len()) {
                    failing = Some(i);
                }
                "illegal"
            }
            Outcome::Aborted { reason, .. } => {
                if *reason != AbortReason::Cancelled {
                    validity = validity.and(Validity::Unknown);
                    unknown.push(json!({
                        "key": parts[i].key.as_ref().map(|k| k.to_json()),
                        "reason": reason.name(),
                        "ops": parts[i].ops.len(),
                    }));
                }
                reason.name()
            }
        };
        counts[name] = json!(counts[name].as_u64().unwrap_or(0) + 1);
    }
    let mut details = json!({
        "ops": parts.iter().map(|p| p.ops.len()).sum::<usize>(),
        "unobserved-pending-dropped": parts.iter().map(|p| p.dropped).sum::<usize>(),
        "partitions": parts.len(),
        "partition-results": counts,
    });
    if validity == Validity::Invalid {
        // Cancelled partitions may hide unknown ones; only the violation matters.
        let f = failing.expect("an illegal partition");
        if let Outcome::Illegal { prefix } = &results[f] {
            details["witness"] = witness(history, &parts[f], prefix, make());
        }
    } else if !unknown.is_empty() {
        details["unknown-partitions"] = Json::Array(unknown);
    }
    Report { validity, details }
}

/// Builds the witness for a failing partition from the longest prefix found.
fn witness<M: Explain>(history: &History, part: &Partition<M::Op>, prefix: &[usize], mut model: M) -> Json {
    let op_json = |i: usize| models::op_json(history, part.meta[i]);
    let mut state = model.init();
    let mut steps = Vec::with_capacity(prefix.len());
    for &i in prefix {
        state = model.step(state, i, &part.ops[i].op).expect("the prefix replays legally");
        steps.push(json!({"op": op_json(i), "state-after": model.state_json(state)}));
    }
    let mut done = vec![false; part.ops.len()];
    for &i in prefix {
        done[i] = true;
    }
    let first_return = part
        .ops
        .iter()
        .zip(&done)
        .filter(|(_, d)| !**d)
        .map(|(o, _)| o.ret.unwrap_or(usize::MAX))
        .min()
        .unwrap_or(usize::MAX);
    let mut window = Vec::new();
    for (i, o) in part.ops.iter().enumerate() {
        if done[i] || o.call > first_return {
            continue;
        }
        let mut entry = json!({"op": op_json(i)});
        match model.step(state, i, &o.op) {
            None => {
                entry["legal"] = json!(false);
            }
            Some(s) => {
                entry["legal"] = json!(true);
                entry["state-after"] = model.state_json(s);
                entry["note"] = json!("legal here, but every continuation from it failed");
            }
        }
        window.push(entry);
    }
    let shown = steps.len().saturating_sub(PREFIX_SHOWN);
    json!({
        "key": part.key.as_ref().map(|k| k.to_json()),
        "partition-ops": part.ops.len(),
        "linearized-prefix-length": prefix.len(),
        "linearized-prefix-omitted": shown,
        "linearized-prefix": steps[shown..].to_vec(),
        "state": model.state_json(state),
        "illegal-window": window,
        "explanation": format!(
            "after the longest linearizable prefix ({} of {} ops), no operation of the illegal window can be \
             linearized next in a way that lets the rest of the history linearize",
            prefix.len(),
            part.ops.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    fn jsonl(lines: &[&str]) -> History {
        parse(&lines.join("\n"), Format::Jsonl).unwrap()
    }

    #[test]
    fn stale_read_has_a_witness() {
        let h = jsonl(&[
            r#"{"type":"invoke","process":0,"f":"write","value":1}"#,
            r#"{"type":"ok","process":0,"f":"write","value":1}"#,
            r#"{"type":"invoke","process":1,"f":"read","value":null}"#,
            r#"{"type":"ok","process":1,"f":"read","value":null}"#,
        ]);
        let v = check(LinModel::Register, &h, &LinOptions::default()).unwrap();
        assert_eq!(v.validity, Validity::Invalid);
        let w = &v.details["witness"];
        assert_eq!(w["linearized-prefix-length"], json!(1));
        assert_eq!(w["state"], json!(1));
        assert_eq!(w["illegal-window"][0]["legal"], json!(false));
        assert_eq!(w["illegal-window"][0]["op"]["f"], json!("read"));
    }

    #[test]
    fn kv_partitions_independently() {
        let h = jsonl(&[
            r#"{"type":"invoke","process":0,"f":"append","key":"a","value":"x"}"#,
            r#"{"type":"invoke","process":1,"f":"append","key":"b","value":"y"}"#,
            r#"{"type":"ok","process":0,"f":"append","key":"a","value":"x"}"#,
            r#"{"type":"ok","process":1,"f":"append","key":"b","value":"y"}"#,
            r#"{"type":"invoke","process":0,"f":"get","key":"a","value":null}"#,
            r#"{"type":"ok","process":0,"f":"get","key":"a","value":"x"}"#,
            r#"{"type":"invoke","process":1,"f":"get","key":"b","value":null}"#,
            r#"{"type":"ok","process":1,"f":"get","key":"b","value":""}"#,
        ]);
        let v = check(LinModel::Kv, &h, &LinOptions::default()).unwrap();
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["partitions"], json!(2));
        assert_eq!(v.details["witness"]["key"], json!("b"));
    }

    #[test]
    fn exhausted_memory_budget_gives_unknown() {
        let h = jsonl(&[
            r#"{"type":"invoke","process":0,"f":"write","value":1}"#,
            r#"{"type":"ok","process":0,"f":"write","value":1}"#,
        ]);
        let opts = LinOptions { memory_limit: 0, ..LinOptions::default() };
        let v = check(LinModel::Register, &h, &opts).unwrap();
        assert_eq!(v.validity, Validity::Unknown);
        assert_eq!(v.details["unknown-partitions"][0]["reason"], json!("memory-limit"));
    }
}
