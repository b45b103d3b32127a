//! The operation model shared by every checker, and the parsers that produce it.
//!
//! A [`History`] is a list of [`Op`]s in history order (the order of the file): invocations
//! and completions (`ok`, `fail`, `info`) of client processes, plus nemesis events. Three
//! input formats are understood (see `README.md` for the grammars):
//! - [`Format::Jsonl`]: Arbor's own harness format, one JSON object per line;
//! - [`Format::Edn`]: Jepsen / Elle EDN op maps (any layout: one per line, or a vector);
//! - [`Format::JepsenLog`]: the old Jepsen console log (`INFO  jepsen.util - 3 :invoke :read nil`).
//!
//! [`detect_format`] picks one from the first meaningful line. [`History::pairs`] matches each
//! invocation with the next completion of the same process (Jepsen's rule); an invocation
//! with no completion is *pending*. Limits: ordering is by position in the file only
//! (`:time` is carried but not used for ordering); ops without a `:process` are treated as
//! one anonymous client process.

mod edn_ops;
mod jepsen_log;
mod jsonl;

use crate::value::Value;
use std::collections::HashMap;
use thiserror::Error;

/// Errors raised while reading a history.
#[derive(Debug, Error)]
pub enum HistoryError {
    /// A line or form that does not parse.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// EDN syntax error.
    #[error(transparent)]
    Edn(#[from] crate::edn::EdnError),
}

impl HistoryError {
    pub(crate) fn parse(line: usize, message: impl Into<String>) -> Self {
        HistoryError::Parse { line, message: message.into() }
    }
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Arbor harness JSON lines.
    Jsonl,
    /// Jepsen EDN op maps.
    Edn,
    /// Old Jepsen console log lines.
    JepsenLog,
}

impl Format {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Edn => "edn",
            Format::JepsenLog => "jepsen-log",
        }
    }
}

/// `:type` of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpType {
    /// The client started the operation.
    Invoke,
    /// The operation took effect.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Indeterminate: the operation may or may not have taken effect, now or later.
    Info,
}

impl OpType {
    /// Parses `invoke|ok|fail|info`.
    pub fn parse(name: &str) -> Option<OpType> {
        Some(match name {
            "invoke" => OpType::Invoke,
            "ok" => OpType::Ok,
            "fail" => OpType::Fail,
            "info" => OpType::Info,
            _ => return None,
        })
    }

    /// The textual name.
    pub fn name(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }
}

/// The `:process` of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client worker (an integer).
    Client(i64),
    /// A named non-client actor, e.g. `nemesis`.
    Named(String),
    /// No `:process` field: treated as one single client process.
    Anonymous,
}

impl Process {
    /// Client processes are the integer ones and the anonymous one.
    pub fn is_client(&self) -> bool {
        !matches!(self, Process::Named(_))
    }

    /// JSON rendering (`3`, `"nemesis"`, `null`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Process::Client(p) => serde_json::Value::from(*p),
            Process::Named(n) => serde_json::Value::from(n.clone()),
            Process::Anonymous => serde_json::Value::Null,
        }
    }
}

/// One history event.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// `:index` if the input gave one, else the position in the file.
    pub index: i64,
    /// 1-based line of the event in the input.
    pub line: usize,
    /// `:time` (nanoseconds), if present.
    pub time: Option<i64>,
    /// `:type`.
    pub kind: OpType,
    /// `:process`.
    pub process: Process,
    /// `:f`, if present (`read`, `write`, `cas`, `txn`, ...).
    pub f: Option<String>,
    /// `:key`, if present.
    pub key: Option<Value>,
    /// `:value` (`Nil` when absent).
    pub value: Value,
    /// `:error`, if present.
    pub error: Option<Value>,
}

/// An invocation matched with its completion. Indices point into [`History::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The `:invoke` event, if any (Elle-style histories may hold completions only).
    pub invoke: Option<usize>,
    /// The completion event; `None` for a pending operation that never returned.
    pub completion: Option<usize>,
}

impl Pair {
    /// Position of the first event of this pair (invoke, else completion).
    pub fn start(&self) -> usize {
        self.invoke.or(self.completion).unwrap_or(0)
    }
}

/// A parsed history.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// All events, in file order.
    pub ops: Vec<Op>,
}

impl History {
    /// The pairs of client operations, ordered by their first event. Nemesis (named
    /// process) events are skipped. A second invocation by a process that still has one
    /// pending closes the earlier one as pending (never completed).
    pub fn pairs(&self) -> Vec<Pair> {
        let mut out: Vec<Pair> = Vec::new();
        let mut pending: HashMap<&Process, usize> = HashMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            if !op.process.is_client() {
                continue;
            }
            match op.kind {
                OpType::Invoke => {
                    out.push(Pair { invoke: Some(i), completion: None });
                    pending.insert(&op.process, out.len() - 1);
                }
                _ => match pending.remove(&op.process) {
                    Some(p) => out[p].completion = Some(i),
                    None => out.push(Pair { invoke: None, completion: Some(i) }),
                },
            }
        }
        out
    }

    /// The op at `i`.
    pub fn op(&self, i: usize) -> &Op {
        &self.ops[i]
    }
}

/// Guesses the format from the first line that is neither blank nor a `;` comment.
/// An empty input is reported as JSONL (it holds no ops in any format).
pub fn detect_format(text: &str) -> Format {
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() {
            continue;
        }
        if t.starts_with(';') || t.starts_with('[') || t.starts_with('(') || t.starts_with('#') {
            return Format::Edn;
        }
        if let Some(rest) = t.strip_prefix('{') {
            let rest = rest.trim_start();
            return if rest.starts_with('"') || rest.starts_with('}') { Format::Jsonl } else { Format::Edn };
        }
        if jepsen_log::looks_like_log_line(t) {
            return Format::JepsenLog;
        }
        return Format::Edn;
    }
    Format::Jsonl
}

/// Parses `text` in the given format.
pub fn parse(text: &str, format: Format) -> Result<History, HistoryError> {
    let ops = match format {
        Format::Jsonl => jsonl::parse(text)?,
        Format::Edn => edn_ops::parse(text)?,
        Format::JepsenLog => jepsen_log::parse(text)?,
    };
    Ok(History { ops })
}

/// Detects the format and parses.
pub fn parse_auto(text: &str) -> Result<(History, Format), HistoryError> {
    let format = detect_format(text);
    Ok((parse(text, format)?, format))
}

/// Builds an [`Op`] from a map-shaped datum (EDN map or JSON object); shared by the EDN
/// and JSONL readers. `position` is the op's 0-based position in the file.
pub(crate) fn op_from_map(map: &Value, line: usize, position: usize) -> Result<Op, HistoryError> {
    if !matches!(map, Value::Map(_)) {
        return Err(HistoryError::parse(line, format!("expected an op map, found {map}")));
    }
    let kind = map
        .get("type")
        .and_then(Value::as_name)
        .and_then(OpType::parse)
        .ok_or_else(|| HistoryError::parse(line, "missing or bad :type (invoke|ok|fail|info)"))?;
    let process = match map.get("process") {
        None | Some(Value::Nil) => Process::Anonymous,
        Some(Value::Int(p)) => Process::Client(*p),
        Some(v) => match v.as_name() {
            Some(n) => Process::Named(n.to_string()),
            None => return Err(HistoryError::parse(line, format!("bad :process {v}"))),
        },
    };
    let index = match map.get("index") {
        None | Some(Value::Nil) => position as i64,
        Some(Value::Int(i)) => *i,
        Some(v) => return Err(HistoryError::parse(line, format!("bad :index {v}"))),
    };
    let time = map.get("time").and_then(Value::as_int);
    let f = match map.get("f") {
        None | Some(Value::Nil) => None,
        Some(v) => match v.as_name() {
            Some(n) => Some(n.to_string()),
            None => return Err(HistoryError::parse(line, format!("bad :f {v}"))),
        },
    };
    Ok(Op {
        index,
        line,
        time,
        kind,
        process,
        f,
        key: map.get("key").cloned(),
        value: map.get("value").cloned().unwrap_or(Value::Nil),
        error: map.get("error").filter(|e| !e.is_nil()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_format() {
        assert_eq!(detect_format("{\"type\":\"ok\"}\n"), Format::Jsonl);
        assert_eq!(detect_format("\n{:type :ok}\n"), Format::Edn);
        assert_eq!(detect_format("; comment\n{:type :ok}"), Format::Edn);
        assert_eq!(detect_format("INFO  jepsen.util - 0\t:invoke\t:read\tnil\n"), Format::JepsenLog);
        assert_eq!(detect_format(""), Format::Jsonl);
    }

    #[test]
    fn pairs_match_by_process_and_keep_pending() {
        let text = r#"{"type":"invoke","process":0,"f":"write","value":1}
{"type":"invoke","process":1,"f":"read","value":null}
{"type":"ok","process":1,"f":"read","value":1}
{"type":"info","process":"nemesis","f":"kill","value":null}
{"type":"ok","process":2,"f":"read","value":1}
"#;
        let (h, f) = parse_auto(text).unwrap();
        assert_eq!(f, Format::Jsonl);
        let pairs = h.pairs();
        assert_eq!(
            pairs,
            vec![
                Pair { invoke: Some(0), completion: None },
                Pair { invoke: Some(1), completion: Some(2) },
                Pair { invoke: None, completion: Some(4) },
            ]
        );
    }

    #[test]
    fn op_fields_are_read_from_edn() {
        let (h, f) = parse_auto(
            "{:index 7, :time 12, :type :fail, :process :nemesis, :f :cas, :key \"k\", :value [1 2], :error :timeout}",
        )
        .unwrap();
        assert_eq!(f, Format::Edn);
        let op = &h.ops[0];
        assert_eq!(op.index, 7);
        assert_eq!(op.time, Some(12));
        assert_eq!(op.kind, OpType::Fail);
        assert_eq!(op.process, Process::Named("nemesis".into()));
        assert_eq!(op.f.as_deref(), Some("cas"));
        assert_eq!(op.key, Some(Value::Str("k".into())));
        assert_eq!(op.error, Some(Value::Keyword("timeout".into())));
    }
}
