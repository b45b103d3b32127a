//! An Elle-style checker for list-append transactions.
//!
//! Pipeline: read transactions ([`txn`]); find the anomalies visible without a graph
//! ([`anomalies`]); infer each key's version order from reads ([`versions`]); build the
//! ww / wr / rw dependency graph plus process or realtime order when the requested models
//! need them ([`graph`]); search cycles per strongly connected component and classify them
//! ([`cycles`]); decide validity from what the consistency models prohibit ([`models`]).
//!
//! The result mirrors Elle's `elle.list-append/check`: `valid?` is false if a prohibited
//! anomaly was found, `unknown` if only `empty-transaction-graph` / `cycle-search-timeout`
//! was, else true; `anomaly-types` lists the reportable anomalies found (prohibited ones
//! plus the two "unknown" ones); `not` / `also-not` give the weakest models ruled out by
//! *everything* found. Options follow Elle: explicit consistency models, and/or a list of
//! anomalies to search for (alone, it means "no model"); neither means
//! strict-serializable. Limits: no predicate anomalies, no `cyclic-versions` (list-append
//! reads give a total prefix order per key); a history appending one element twice to a
//! key is rejected as `unknown`, like Elle.

pub mod anomalies;
pub mod cycles;
pub mod graph;
pub mod models;
pub mod txn;
pub mod versions;

use crate::history::History;
use crate::verdict::{Validity, Verdict};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of the list-append checker.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElleError {
    /// A transaction that cannot be read.
    #[error("line {line}: {message}")]
    BadTxn {
        /// 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
    /// A consistency model name Elle does not know.
    #[error("unknown consistency model {0:?}")]
    UnknownModel(String),
    /// An anomaly name Elle does not know.
    #[error("unknown anomaly {0:?}")]
    UnknownAnomaly(String),
}

/// What to check for.
#[derive(Debug, Clone)]
pub struct ElleOptions {
    /// Consistency models the history must satisfy.
    pub consistency_models: Vec<String>,
    /// Additional anomalies to flag (with everything that implies them).
    pub anomalies: Vec<String>,
    /// Wall-clock budget for the cycle searches.
    pub time_limit: Option<Duration>,
    /// Edge relaxations allowed per (component, anomaly type) search.
    pub search_work: u64,
}

impl Default for ElleOptions {
    fn default() -> Self {
        ElleOptions {
            consistency_models: vec!["strict-serializable".into()],
            anomalies: Vec::new(),
            time_limit: None,
            search_work: 50_000_000,
        }
    }
}

impl ElleOptions {
    /// Elle's defaulting: given models win; else given anomalies with no model; else
    /// strict-serializable.
    pub fn new(models: Vec<String>, anomalies: Vec<String>) -> ElleOptions {
        let consistency_models =
            if models.is_empty() && anomalies.is_empty() { vec!["strict-serializable".into()] } else { models };
        ElleOptions { consistency_models, anomalies, ..ElleOptions::default() }
    }

    /// Anomalies that make the history invalid.
    pub fn prohibited(&self) -> BTreeSet<String> {
        let mut p = models::all_anomalies_implying(&self.anomalies);
        p.extend(models::anomalies_prohibited_by(&self.consistency_models));
        p
    }
}

const UNKNOWN_TYPES: [&str; 2] = ["empty-transaction-graph", "cycle-search-timeout"];

fn is_cycle_type(name: &str, suffix: &str) -> bool {
    let base = ["G0", "G1c", "G-single-item", "G-single", "G-nonadjacent-item", "G-nonadjacent", "G2-item", "G2"];
    name.strip_suffix(suffix).is_some_and(|b| base.contains(&b))
}

/// Checks a list-append history.
pub fn check(history: &History, opts: &ElleOptions) -> Result<Verdict, ElleError> {
    let started = Instant::now();
    for m in &opts.consistency_models {
        if !models::is_known_model(m) {
            return Err(ElleError::UnknownModel(m.clone()));
        }
    }
    for a in &opts.anomalies {
        if !models::is_known_anomaly(a) {
            return Err(ElleError::UnknownAnomaly(a.clone()));
        }
    }
    let header = json!({
        "consistency-models": opts.consistency_models,
        "anomalies-searched": opts.anomalies,
    });
    if let Some((k, v, line)) = txn::duplicate_append(history) {
        let mut d = header;
        d["error"] = json!("duplicate-appends");
        d["message"] = json!(format!("value {v} appended to key {k} more than once (line {line})"));
        return Ok(Verdict::new("elle-list-append", Validity::Unknown, d));
    }
    let txns = txn::parse(history)?;
    let prohibited = opts.prohibited();
    let mut reportable = prohibited.clone();
    reportable.extend(UNKNOWN_TYPES.iter().map(|s| s.to_string()));
    let extra = if reportable.iter().any(|a| is_cycle_type(a, "-realtime")) {
        graph::Extra::Realtime
    } else if reportable.iter().any(|a| is_cycle_type(a, "-process")) {
        graph::Extra::Process
    } else {
        graph::Extra::None
    };
    let g = graph::build(&txns, extra);
    let limits = cycles::Limits { deadline: opts.time_limit.map(|d| started + d), work: opts.search_work };
    let (cycle_anomalies, scc_count) = cycles::find(&txns, &g, &limits);
    let mut found: BTreeMap<String, Json> = BTreeMap::new();
    for (k, v) in anomalies::find(&txns).into_iter().chain(cycle_anomalies) {
        found.insert(k, Json::Array(v));
    }
    if g.edge_count() == 0 {
        found.insert("empty-transaction-graph".into(), Json::Bool(true));
    }
    cycles::remove_redundant_cycle_exists(&mut found);

    let reported: BTreeMap<&String, &Json> = found.iter().filter(|(k, _)| reportable.contains(*k)).collect();
    let bad = found.keys().any(|k| prohibited.contains(k));
    let validity = if bad {
        Validity::Invalid
    } else if reported.is_empty() {
        Validity::Valid
    } else {
        Validity::Unknown
    };
    let mut d = header;
    d["anomaly-types"] = json!(reported.keys().collect::<Vec<_>>());
    d["anomalies"] = json!(reported);
    if !reported.is_empty() {
        let all: Vec<&String> = found.keys().collect();
        let (not, also_not) = models::boundary(&all);
        d["not"] = json!(not);
        d["also-not"] = json!(also_not);
    }
    let unreported: Vec<&String> = found.keys().filter(|k| !reportable.contains(*k)).collect();
    d["unreported-anomaly-types"] = json!(unreported);
    d["stats"] = json!({
        "transactions": txns.txns.len(),
        "edges": g.edge_count(),
        "sccs": scc_count,
        "extra-order": match extra {
            graph::Extra::None => "none",
            graph::Extra::Process => "process",
            graph::Extra::Realtime => "realtime",
        },
        "elapsed-ms": started.elapsed().as_secs_f64() * 1e3,
    });
    Ok(Verdict::new("elle-list-append", validity, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format};

    fn run(edn: &str, models: &[&str], anomalies: &[&str]) -> Verdict {
        let h = parse(edn, Format::Edn).unwrap();
        let opts = ElleOptions::new(
            models.iter().map(|s| s.to_string()).collect(),
            anomalies.iter().map(|s| s.to_string()).collect(),
        );
        check(&h, &opts).unwrap()
    }

    fn types(v: &Verdict) -> Vec<String> {
        v.details["anomaly-types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
    }

    const G1C: &str = "{:index 0, :type :ok, :process 0, :f :txn, :value [[:append :x 1] [:r :y [1]]]}\n\
                       {:index 1, :type :ok, :process 0, :f :txn, :value [[:append :x 2] [:append :y 1]]}\n\
                       {:index 2, :type :ok, :process 0, :f :txn, :value [[:r :x [1 2]] [:r :y [1]]]}";

    #[test]
    fn g1c_cycle_with_witness() {
        let v = run(G1C, &[], &["G1"]);
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(types(&v), vec!["G1c"]);
        let case = &v.details["anomalies"]["G1c"][0];
        assert_eq!(case["cycle"].as_array().unwrap().len(), 2);
        let steps: Vec<&str> = case["steps"].as_array().unwrap().iter().map(|s| s["type"].as_str().unwrap()).collect();
        assert!(steps.contains(&"wr") && steps.contains(&"ww"), "{steps:?}");
        assert_eq!(v.details["not"], json!(["read-committed"]));
        // G0 alone is not there.
        assert_eq!(run(G1C, &[], &["G0"]).validity, Validity::Valid);
    }

    #[test]
    fn unknown_names_are_errors() {
        let h = parse(G1C, Format::Edn).unwrap();
        let o = ElleOptions::new(vec!["webscale".into()], vec![]);
        assert_eq!(check(&h, &o).unwrap_err(), ElleError::UnknownModel("webscale".into()));
        let o = ElleOptions::new(vec![], vec!["G42".into()]);
        assert!(check(&h, &o).is_err());
    }

    #[test]
    fn duplicate_appends_are_unknown() {
        let v = run(
            "{:type :invoke, :process 0, :value [[:append :x 1]]}\n{:type :ok, :process 0, :value [[:append :x 1]]}\n\
             {:type :invoke, :process 1, :value [[:append :x 1]]}\n{:type :ok, :process 1, :value [[:append :x 1]]}",
            &["serializable"],
            &[],
        );
        assert_eq!(v.validity, Validity::Unknown);
        assert_eq!(v.details["error"], json!("duplicate-appends"));
    }
}
