//! Reader for the old Jepsen console log (the Porcupine / ahorn etcd histories):
//! `INFO  jepsen.util - <process> <:type> <:f> <value>`, fields separated by tabs or runs
//! of spaces, the value being EDN (`nil`, `3`, `[1 2]`, `:timed-out`).
//!
//! Lines that do not start with a log level followed by `jepsen.util -` are skipped (other
//! logger output); a matching line with a malformed payload is an error. The position in
//! the file is the only clock.

use super::{HistoryError, Op, OpType, Process};
use crate::edn;
use crate::value::Value;

const MARKER: &str = "jepsen.util - ";

/// `true` when `line` looks like `LEVEL  jepsen.util - ...`.
pub(super) fn looks_like_log_line(line: &str) -> bool {
    payload(line).is_some()
}

fn payload(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let level = words.next()?;
    if !level.chars().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let at = line.find(MARKER)?;
    line[..at].trim().strip_prefix(level).filter(|between| between.trim().is_empty())?;
    Some(&line[at + MARKER.len()..])
}

fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

pub(super) fn parse(text: &str) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let Some(rest) = payload(line) else {
            continue;
        };
        let bad = || HistoryError::parse(lineno, format!("malformed log line {line:?}"));
        let (process, rest) = next_token(rest).ok_or_else(bad)?;
        let (kind, rest) = next_token(rest).ok_or_else(bad)?;
        let (f, rest) = next_token(rest).ok_or_else(bad)?;
        let process = match process.parse::<i64>() {
            Ok(p) => Process::Client(p),
            Err(_) => Process::Named(process.trim_start_matches(':').to_string()),
        };
        let kind = kind.strip_prefix(':').and_then(OpType::parse).ok_or_else(bad)?;
        let f = f.strip_prefix(':').ok_or_else(bad)?.to_string();
        let value = match rest.trim() {
            "" => Value::Nil,
            v => edn::parse_one(v).map_err(|e| HistoryError::parse(lineno, e.message))?,
        };
        ops.push(Op {
            index: ops.len() as i64,
            line: lineno,
            time: None,
            kind,
            process,
            f: Some(f),
            key: None,
            value,
            error: None,
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_and_spaces() {
        let ops = parse(
            "INFO  jepsen.util - 2\t:invoke\t:cas\t[3 0]\nINFO  jepsen.util - 1   :ok :read  nil\nsome other output\nINFO  jepsen.util - 13\t:info\t:cas\t:timed-out\n",
        )
        .unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].value, Value::Vec(vec![Value::Int(3), Value::Int(0)]));
        assert_eq!(ops[0].process, Process::Client(2));
        assert_eq!(ops[1].kind, OpType::Ok);
        assert_eq!(ops[1].value, Value::Nil);
        assert_eq!(ops[2].line, 4);
        assert_eq!(ops[2].value, Value::Keyword("timed-out".into()));
        assert!(parse("INFO  jepsen.util - 2 :bogus :read nil").is_err());
    }
}
