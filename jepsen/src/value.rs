//! A small dynamic value shared by every input format (EDN, JSON, the old Jepsen log).
//!
//! `Value` is what an operation's `:value`, `:key` or `:error` holds once parsed. It is
//! hashable and totally ordered so that checkers can use values as map keys and list
//! elements. Limits: EDN lists and vectors are both read as [`Value::Vec`] (Clojure compares
//! them equal anyway); sets keep their written order; maps are association lists (the
//! histories only hold tiny maps); tagged literals (`#inst ...`) keep only their value.

use std::fmt;

/// A float with total equality, hashing and ordering (by bit pattern / `total_cmp`).
#[derive(Clone, Copy, Debug)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A parsed EDN / JSON datum.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// `nil` / `null`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating point number.
    Float(F64),
    /// A string.
    Str(String),
    /// An EDN keyword, stored without its leading colon (`:ok` -> `ok`).
    Keyword(String),
    /// An EDN symbol other than `nil`, `true`, `false`.
    Symbol(String),
    /// A vector or a list.
    Vec(Vec<Value>),
    /// A set, in written order.
    Set(Vec<Value>),
    /// A map, as an association list in written order.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The "name" of a keyword, string or symbol (`:ok`, `"ok"` and `ok` all give `ok`).
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Value::Keyword(s) | Value::Str(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of a vector / list, if this is one.
    pub fn as_vec(&self) -> Option<&[Value]> {
        match self {
            Value::Vec(v) => Some(v),
            _ => None,
        }
    }

    /// `true` for `nil`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// Looks up `key` in a map whose keys are keywords or strings (`:f` or `"f"`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_name() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to JSON for verdict output. Keywords become their bare name; maps with
    /// non-string keys become objects keyed by the key's EDN text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(f.0).map_or(J::Null, J::Number),
            Value::Str(s) | Value::Keyword(s) | Value::Symbol(s) => J::String(s.clone()),
            Value::Vec(v) | Value::Set(v) => J::Array(v.iter().map(Value::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match k.as_name() {
                            Some(n) => n.to_string(),
                            None => k.to_string(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }

    /// Converts a JSON value (integral numbers become [`Value::Int`]).
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Nil,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(F64(n.as_f64().unwrap_or(f64::NAN))),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::Vec(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Map(o.iter().map(|(k, v)| (Value::Str(k.clone()), Value::from_json(v))).collect()),
        }
    }
}

fn write_seq(f: &mut fmt::Formatter<'_>, open: &str, items: &[Value], close: &str) -> fmt::Result {
    f.write_str(open)?;
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{v}")?;
    }
    f.write_str(close)
}

/// EDN-like rendering, used in messages and witnesses.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{}", x.0),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Keyword(s) => write!(f, ":{s}"),
            Value::Symbol(s) => f.write_str(s),
            Value::Vec(v) => write_seq(f, "[", v, "]"),
            Value::Set(v) => write_seq(f, "#{", v, "}"),
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_ints_and_names() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"f":"txn","value":[["append","x",1],["r","x",null]]}"#).unwrap();
        let v = Value::from_json(&j);
        assert_eq!(v.get("f").and_then(Value::as_name), Some("txn"));
        let mops = v.get("value").and_then(Value::as_vec).unwrap();
        assert_eq!(mops[0].as_vec().unwrap()[2], Value::Int(1));
        assert!(mops[1].as_vec().unwrap()[2].is_nil());
        assert_eq!(v.to_json(), j);
    }

    #[test]
    fn display_is_edn_like() {
        let v = Value::Vec(vec![Value::Keyword("append".into()), Value::Str("k".into()), Value::Int(3)]);
        assert_eq!(v.to_string(), r#"[:append "k" 3]"#);
    }
}
