//! Reader for Jepsen EDN histories: a sequence of op maps (usually one per line, `;`
//! comments allowed), or vectors/lists of op maps, which are flattened one level.
//!
//! Limits: every top-level form must be an op map or a collection of op maps.

use super::{op_from_map, HistoryError, Op};
use crate::edn;
use crate::value::Value;

pub(super) fn parse(text: &str) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for form in edn::parse_all(text)? {
        match &form.value {
            Value::Vec(items) | Value::Set(items) => {
                for item in items {
                    let position = ops.len();
                    ops.push(op_from_map(item, form.line, position)?);
                }
            }
            other => {
                let position = ops.len();
                ops.push(op_from_map(other, form.line, position)?);
            }
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_vectors_and_keeps_lines() {
        let ops =
            parse("; c\n{:type :invoke, :process 0, :value nil}\n[{:type :ok :process 0} {:type :info :process 1}]")
                .unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].line, 2);
        assert_eq!(ops[2].index, 2);
        assert!(parse("{:process 0}").is_err());
        assert!(parse("42").is_err());
    }
}
