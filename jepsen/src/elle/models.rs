//! Consistency models and anomaly names, following Elle's taxonomy (Adya's PL-levels, Cerone
//! et al., Bailis et al.): which anomaly implies which, which model implies which, and which
//! anomalies each model proscribes directly. From these: the anomalies a set of models
//! prohibits, and the weakest models a set of anomalies rules out (Elle's `:not`).
//!
//! Model names are accepted in friendly (`serializable`) or canonical (`PL-3`) form and
//! reported in friendly form. Limits: predicate anomalies (G-single/G2 without `-item`)
//! are never *found* here (list-append has no predicates) but still take part in the
//! implications.

use std::collections::{BTreeSet, VecDeque};

/// anomaly -> anomalies it implies.
const IMPLIED: &[(&str, &[&str])] = &[
    ("G0", &["G1c", "G0-process"]),
    ("G0-process", &["G1c-process", "G0-realtime"]),
    ("G0-realtime", &["G1c-realtime"]),
    ("G1a", &["G1"]),
    ("G1b", &["G1"]),
    ("G1c", &["G1", "G1c-process"]),
    ("G1c-process", &["G1c-realtime", "G1-process"]),
    ("G1c-realtime", &["G1-realtime"]),
    ("G1", &["G1-process"]),
    ("G1-process", &["G1-realtime"]),
    ("G-single-item", &["G-single", "G-single-item-process", "G-nonadjacent-item"]),
    ("G-single-item-process", &["G-single-process", "G-single-item-realtime", "G-nonadjacent-item-process"]),
    ("G-single-item-realtime", &["G-single-realtime", "G-nonadjacent-item-realtime"]),
    ("G-single", &["G-nonadjacent", "GSIb", "G-single-process"]),
    ("G-single-process", &["G-nonadjacent-process", "G-single-realtime"]),
    ("G-single-realtime", &["G-nonadjacent-realtime"]),
    ("G-nonadjacent-item", &["G-nonadjacent", "G2-item", "G-nonadjacent-item-process"]),
    ("G-nonadjacent-item-process", &["G-nonadjacent-process", "G2-item-process", "G-nonadjacent-item-realtime"]),
    ("G-nonadjacent-item-realtime", &["G2-item-realtime", "G-nonadjacent-realtime"]),
    ("G-nonadjacent", &["G2", "G-nonadjacent-process"]),
    ("G-nonadjacent-process", &["G2-process", "G-nonadjacent-realtime"]),
    ("G-nonadjacent-realtime", &["G2-realtime"]),
    ("G2", &["G2-process"]),
    ("G2-item", &["G2", "G2-item-process"]),
    ("G2-item-process", &["G2-process", "G2-item-realtime"]),
    ("G2-item-realtime", &["G2-realtime"]),
    ("G2-process", &["G2-realtime"]),
    ("GSIa", &["GSI"]),
    ("GSIb", &["GSI"]),
    ("incompatible-order", &["G1a"]),
    ("future-read", &["G1c"]),
    ("dirty-update", &["G1a"]),
    ("lost-update", &["write-skew", "G2-item"]),
    ("write-skew", &["G2"]),
];

/// model -> weaker models it implies (canonical names).
const MODELS: &[(&str, &[&str])] = &[
    ("causal-cerone", &["read-atomic"]),
    ("PL-2+", &["PL-CS", "PL-2L"]),
    ("PL-3", &["view-serializable", "PL-2.99", "PL-3U", "PL-SI"]),
    ("PL-CS", &["PL-2"]),
    ("PL-FCV", &["PL-2+"]),
    ("PL-2", &["PL-1"]),
    ("PL-3U", &["PL-FCV"]),
    ("monotonic-atomic-view", &["PL-2"]),
    ("PL-2L", &["PL-2"]),
    ("PL-MSR", &["PL-2"]),
    ("parallel-snapshot-isolation", &["causal-cerone", "update-atomic"]),
    ("prefix", &["causal-cerone"]),
    ("read-atomic", &["monotonic-atomic-view"]),
    ("PL-2.99", &["PL-CS", "monotonic-atomic-view"]),
    ("update-atomic", &["read-atomic"]),
    ("session-serializable", &["1SR"]),
    ("PL-SI", &["PL-FCV", "monotonic-atomic-view", "PL-MSR", "parallel-snapshot-isolation", "prefix"]),
    (
        "PL-SS",
        &[
            "PL-3",
            "linearizable",
            "PL-SI",
            "strong-snapshot-isolation",
            "strong-session-serializable",
            "session-serializable",
        ],
    ),
    ("strong-session-PL-1", &["PL-1"]),
    ("strong-session-PL-2", &["PL-2", "strong-session-PL-1"]),
    ("strong-PL-1", &["strong-session-PL-1"]),
    ("strong-PL-2", &["strong-session-PL-2", "strong-PL-1"]),
    ("strong-session-serializable", &["PL-3", "strong-session-snapshot-isolation"]),
    ("strong-session-snapshot-isolation", &["PL-SI", "strong-session-PL-2"]),
    ("strong-snapshot-isolation", &["strong-session-snapshot-isolation", "strong-PL-2"]),
    ("linearizable", &["sequential"]),
    ("sequential", &["causal"]),
    ("causal", &["writes-follow-reads", "PRAM"]),
    ("PRAM", &["monotonic-reads", "monotonic-writes", "read-your-writes"]),
];

/// model -> anomalies it proscribes directly (canonical names).
const PROSCRIBED: &[(&str, &[&str])] = &[
    ("causal-cerone", &["internal", "G1a"]),
    ("PL-CS", &["G1", "G-cursor", "lost-update"]),
    ("PL-2L", &["G1", "G-monotonic"]),
    ("PL-MSR", &["G1", "G-MSR"]),
    ("PL-2+", &["G1", "G-single"]),
    ("PL-FCV", &["G1", "G-SIb"]),
    ("parallel-snapshot-isolation", &["internal", "G1a"]),
    ("PL-3", &["G1", "G2", "predicate-read-miss", "PL-3-cycle-exists", "internal"]),
    ("PL-2", &["G1", "PL-2-cycle-exists"]),
    ("PL-1", &["G0", "duplicate-elements", "cyclic-versions", "PL-1-cycle-exists"]),
    ("prefix", &["internal", "G1a"]),
    ("PL-SI", &["internal", "G1", "G-SI", "G-nonadjacent", "PL-SI-cycle-exists"]),
    ("read-atomic", &["internal", "G1a", "future-read"]),
    ("PL-2.99", &["G1", "G2-item", "PL-2.99-cycle-exists", "lost-update"]),
    ("update-atomic", &["lost-update"]),
    ("PL-SS", &["G1", "G1c-realtime", "G2-realtime", "PL-SS-cycle-exists"]),
    ("strong-session-PL-1", &["strong-session-PL-1-cycle-exists", "G0-process"]),
    ("strong-session-PL-2", &["strong-session-PL-2-cycle-exists", "G1c-process"]),
    ("strong-PL-1", &["strong-PL-1-cycle-exists", "G0-realtime"]),
    ("strong-PL-2", &["strong-PL-2-cycle-exists", "G1c-realtime"]),
    (
        "strong-session-snapshot-isolation",
        &["internal", "G1-process", "G-nonadjacent-process", "strong-session-snapshot-isolation-cycle-exists"],
    ),
    (
        "strong-snapshot-isolation",
        &["internal", "G1-realtime", "G-nonadjacent-realtime", "strong-snapshot-isolation-cycle-exists"],
    ),
    ("strong-session-serializable", &["G1-process", "G2-process", "strong-session-serializable-cycle-exists"]),
    ("PL-3U", &["G1", "G-update"]),
];

/// friendly -> canonical model names.
const CANONICAL: &[(&str, &str)] = &[
    ("consistent-view", "PL-2+"),
    ("conflict-serializable", "PL-3"),
    ("cursor-stability", "PL-CS"),
    ("forward-consistent-view", "PL-FCV"),
    ("monotonic-snapshot-read", "PL-MSR"),
    ("monotonic-view", "PL-2L"),
    ("read-committed", "PL-2"),
    ("read-uncommitted", "PL-1"),
    ("repeatable-read", "PL-2.99"),
    ("serializable", "PL-3"),
    ("snapshot-isolation", "PL-SI"),
    ("strict-serializable", "PL-SS"),
    ("strong-serializable", "PL-SS"),
    ("update-serializable", "PL-3U"),
    ("strong-session-read-uncommitted", "strong-session-PL-1"),
    ("strong-session-read-committed", "strong-session-PL-2"),
    ("strong-read-uncommitted", "strong-PL-1"),
    ("strong-read-committed", "strong-PL-2"),
];

fn edges<'a>(table: &'a [(&'a str, &'a [&'a str])], from: &str) -> impl Iterator<Item = &'a str> + 'a {
    let from = from.to_string();
    table.iter().filter(move |(k, _)| *k == from).flat_map(|(_, vs)| vs.iter().copied())
}

fn edges_in<'a>(table: &'a [(&'a str, &'a [&'a str])], to: &str) -> impl Iterator<Item = &'a str> + 'a {
    let to = to.to_string();
    table.iter().filter(move |(_, vs)| vs.contains(&to.as_str())).map(|(k, _)| *k)
}

/// Breadth-first closure of `start` under `next` (including `start` itself).
fn closure<'a, F, I>(start: impl IntoIterator<Item = String>, next: F) -> BTreeSet<String>
where
    F: Fn(&str) -> I,
    I: Iterator<Item = &'a str>,
{
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = start.into_iter().collect();
    while let Some(x) = queue.pop_front() {
        if seen.insert(x.clone()) {
            queue.extend(next(&x).map(str::to_string));
        }
    }
    seen
}

/// The canonical name of a model.
pub fn canonical(model: &str) -> String {
    CANONICAL.iter().find(|(f, _)| *f == model).map_or(model, |(_, c)| c).to_string()
}

/// The friendly name of a (canonical) model.
pub fn friendly(model: &str) -> String {
    match model {
        "PL-3" => "serializable".into(),
        "PL-SS" => "strict-serializable".into(),
        m => CANONICAL.iter().find(|(_, c)| *c == m).map_or(m, |(f, _)| f).to_string(),
    }
}

/// `true` if `model` (either form) is a known model.
pub fn is_known_model(model: &str) -> bool {
    let c = canonical(model);
    MODELS.iter().any(|(k, vs)| *k == c || vs.contains(&c.as_str()))
}

/// `true` if `name` is an anomaly this taxonomy knows (so `--anomalies` can be validated).
pub fn is_known_anomaly(name: &str) -> bool {
    let in_table = |t: &[(&str, &[&str])]| t.iter().any(|(k, vs)| *k == name || vs.contains(&name));
    in_table(IMPLIED) || in_table(PROSCRIBED) || ["empty-transaction-graph", "cycle-search-timeout"].contains(&name)
}

/// `anomalies` plus everything they imply.
pub fn all_implied_anomalies<S: AsRef<str>>(anomalies: &[S]) -> BTreeSet<String> {
    closure(anomalies.iter().map(|a| a.as_ref().to_string()), |a| edges(IMPLIED, a))
}

/// `anomalies` plus every anomaly that implies one of them.
pub fn all_anomalies_implying<S: AsRef<str>>(anomalies: &[S]) -> BTreeSet<String> {
    closure(anomalies.iter().map(|a| a.as_ref().to_string()), |a| edges_in(IMPLIED, a))
}

/// The anomalies that must be absent for all of `models` to hold.
pub fn anomalies_prohibited_by<S: AsRef<str>>(models: &[S]) -> BTreeSet<String> {
    let implied = closure(models.iter().map(|m| canonical(m.as_ref())), |m| edges(MODELS, m));
    let direct: Vec<String> = implied.iter().flat_map(|m| edges(PROSCRIBED, m).map(str::to_string)).collect();
    all_anomalies_implying(&direct)
}

/// Models (canonical) that cannot hold given `anomalies`, closed upwards.
pub fn impossible_models<S: AsRef<str>>(anomalies: &[S]) -> BTreeSet<String> {
    let implied: Vec<String> = all_implied_anomalies(anomalies).into_iter().collect();
    let direct: Vec<String> = implied.iter().flat_map(|a| edges_in(PROSCRIBED, a).map(str::to_string)).collect();
    all_impossible_models(&direct)
}

/// `models` plus every model implying one of them.
pub fn all_impossible_models<S: AsRef<str>>(models: &[S]) -> BTreeSet<String> {
    closure(models.iter().map(|m| canonical(m.as_ref())), |m| edges_in(MODELS, m))
}

/// The members of `models` that imply no other member (the weakest ones).
pub fn weakest(models: &BTreeSet<String>) -> BTreeSet<String> {
    models
        .iter()
        .filter(|m| {
            let below = closure(edges(MODELS, m).map(str::to_string), |x| edges(MODELS, x));
            !below.iter().any(|b| b != *m && models.contains(b))
        })
        .cloned()
        .collect()
}

/// Elle's boundary: (`not`, `also-not`) in friendly names, from all anomalies found.
pub fn boundary<S: AsRef<str>>(anomalies: &[S]) -> (BTreeSet<String>, BTreeSet<String>) {
    let impossible = impossible_models(anomalies);
    let not = weakest(&impossible);
    let also: BTreeSet<String> = impossible.difference(&not).map(|m| friendly(m)).collect();
    (not.iter().map(|m| friendly(m)).collect(), also)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names() {
        assert_eq!(canonical("serializable"), "PL-3");
        assert_eq!(friendly("PL-3"), "serializable");
        assert_eq!(friendly("strong-session-PL-2"), "strong-session-read-committed");
        assert!(is_known_model("strong-session-snapshot-isolation"));
        assert!(is_known_model("PL-2"));
        assert!(!is_known_model("webscale"));
        assert!(is_known_anomaly("G-single-item-realtime"));
        assert!(!is_known_anomaly("G9"));
    }

    #[test]
    fn boundaries_match_elle() {
        assert_eq!(boundary(&["G-single-item"]).0, set(&["consistent-view", "repeatable-read"]));
        assert_eq!(boundary(&["G2-item"]).0, set(&["repeatable-read"]));
        assert_eq!(boundary(&["lost-update"]).0, set(&["cursor-stability", "update-atomic"]));
        assert_eq!(boundary(&["G-nonadjacent-item"]).0, set(&["repeatable-read", "snapshot-isolation"]));
        assert_eq!(boundary(&["G-single-item-realtime"]).0, set(&["strong-snapshot-isolation"]));
        assert_eq!(boundary(&["G-single-item-process"]).0, set(&["strong-session-snapshot-isolation"]));
        assert_eq!(boundary(&["G1c-process"]).0, set(&["strong-session-read-committed"]));
        assert_eq!(boundary(&["G1a", "empty-transaction-graph"]).0, set(&["read-committed"]));
        assert_eq!(boundary(&["internal", "G0"]).0, set(&["read-uncommitted"]));
        assert_eq!(boundary(&["duplicate-elements", "G1c"]).0, set(&["read-uncommitted"]));
    }

    #[test]
    fn prohibitions() {
        let si = anomalies_prohibited_by(&["snapshot-isolation"]);
        assert!(si.contains("lost-update") && si.contains("G-single-item") && si.contains("internal"));
        assert!(!si.contains("G2-item"));
        let rc = anomalies_prohibited_by(&["read-committed"]);
        assert!(rc.contains("G1c") && rc.contains("incompatible-order") && rc.contains("dirty-update"));
        assert!(!rc.contains("G-single-item"));
        let ss = anomalies_prohibited_by(&["strict-serializable"]);
        assert!(ss.contains("G-single-item-realtime") && ss.contains("G2-item-realtime"));
        assert!(ss.contains("G1c-process") && ss.contains("G1c-realtime"));
        let g1 = all_anomalies_implying(&["G1"]);
        assert_eq!(g1, set(&["G0", "G1", "G1a", "G1b", "G1c", "dirty-update", "future-read", "incompatible-order"]));
    }
}
