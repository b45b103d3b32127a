//! Verdicts: the three-valued validity every checker returns, its JSON form and the
//! process exit code it maps to.
//!
//! A checker's report is a JSON object; [`Verdict`] wraps it with the common fields
//! (`checker`, `valid?`). Exit codes: 0 valid, 1 invalid, 2 unknown (3 is used by the
//! binary for usage / input errors).

use serde_json::{Map, Value as Json};

/// Result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// The history satisfies the property.
    Valid,
    /// The history violates the property.
    Invalid,
    /// The checker could not decide (time or memory budget exhausted, nothing to check...).
    Unknown,
}

impl Validity {
    /// Exit code of the binary for this validity.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }

    /// `true`, `false` or `"unknown"`, as Jepsen prints `:valid?`.
    pub fn to_json(self) -> Json {
        match self {
            Validity::Valid => Json::Bool(true),
            Validity::Invalid => Json::Bool(false),
            Validity::Unknown => Json::String("unknown".into()),
        }
    }

    /// Combines two results: invalid wins over unknown, which wins over valid.
    pub fn and(self, other: Validity) -> Validity {
        use Validity::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }
}

/// A checker's verdict: its validity plus a JSON report.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Which checker produced it (`linearizability`, `elle-list-append`, `set`, `bank`).
    pub checker: &'static str,
    /// The decision.
    pub validity: Validity,
    /// Checker-specific fields (merged into the output object).
    pub details: Map<String, Json>,
}

impl Verdict {
    /// Builds a verdict; `details` must be a JSON object (anything else is stored under
    /// `details`).
    pub fn new(checker: &'static str, validity: Validity, details: Json) -> Verdict {
        let details = match details {
            Json::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("details".into(), other);
                m
            }
        };
        Verdict { checker, validity, details }
    }

    /// The full JSON object: `{"checker": .., "valid?": .., ...details}`.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("checker".into(), Json::String(self.checker.into()));
        m.insert("valid?".into(), self.validity.to_json());
        for (k, v) in &self.details {
            m.insert(k.clone(), v.clone());
        }
        Json::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_and_json() {
        assert_eq!(Validity::Valid.exit_code(), 0);
        assert_eq!(Validity::Invalid.exit_code(), 1);
        assert_eq!(Validity::Unknown.exit_code(), 2);
        assert_eq!(Validity::Unknown.to_json(), json!("unknown"));
        assert_eq!(Validity::Valid.and(Validity::Unknown), Validity::Unknown);
        assert_eq!(Validity::Unknown.and(Validity::Invalid), Validity::Invalid);
        let v = Verdict::new("set", Validity::Invalid, json!({"lost": [1]}));
        assert_eq!(v.to_json(), json!({"checker": "set", "valid?": false, "lost": [1]}));
    }
}
