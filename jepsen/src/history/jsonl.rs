//! Reader for Arbor's harness format: one JSON object per line (blank lines ignored).
//!
//! Field names are those of Jepsen op maps without the colon (`type`, `process`, `f`,
//! `key`, `value`, `index`, `time`, `error`); string values stand for keywords. Limits:
//! one object per line (no pretty-printed JSON).

use super::{op_from_map, HistoryError, Op};
use crate::value::Value;

pub(super) fn parse(text: &str) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(t).map_err(|e| HistoryError::parse(i + 1, format!("invalid JSON: {e}")))?;
        let position = ops.len();
        ops.push(op_from_map(&Value::from_json(&json), i + 1, position)?);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpType, Process};

    #[test]
    fn parses_lines_and_reports_bad_ones() {
        let ops = parse(
            "{\"index\":0,\"time\":5,\"type\":\"invoke\",\"process\":3,\"f\":\"put\",\"key\":\"a\",\"value\":\"x\"}\n\n",
        )
        .unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind, OpType::Invoke);
        assert_eq!(ops[0].process, Process::Client(3));
        assert_eq!(ops[0].value, Value::Str("x".into()));
        let err = parse("{\"type\":\"ok\"}\n{\"type\":\"later\"}\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        assert!(parse("not json").is_err());
    }
}
