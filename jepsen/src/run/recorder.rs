//! Building the history of a run.
//!
//! [`HistoryLog`] is pure: it appends events with the time the caller gives and renders them
//! as the JSONL the checkers read (`jepsen/README.md`). [`Recorder`] wraps it for concurrent
//! workers: a mutex, a monotonic start instant, and running counts for the progress line.
//!
//! Event shapes: a client op is an `invoke` then exactly one of `ok` (it happened, with its
//! observed value), `fail` (it definitely did not happen) or `info` (unknown); a nemesis
//! action is one `info` event of process `"nemesis"` once the action is done.

use super::workload::Op;
use crate::history::OpType;
use serde_json::{json, Map, Value as Json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `Ok`, `Fail` or `Info`.
    pub kind: OpType,
    /// The completion's value (reads filled in).
    pub value: Json,
    /// Why it failed or is unknown.
    pub error: Option<String>,
}

impl Outcome {
    /// It happened, observing `value`.
    pub fn ok(value: Json) -> Outcome {
        Outcome { kind: OpType::Ok, value, error: None }
    }

    /// It definitely did not happen.
    pub fn fail(value: Json, error: Option<String>) -> Outcome {
        Outcome { kind: OpType::Fail, value, error }
    }

    /// It may or may not have happened.
    pub fn info(value: Json, error: String) -> Outcome {
        Outcome { kind: OpType::Info, value, error: Some(error) }
    }
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A client process.
    Client(u64),
    /// The fault injector.
    Nemesis,
}

/// One history line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the history.
    pub index: u64,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    /// invoke / ok / fail / info.
    pub kind: OpType,
    /// Client process or nemesis.
    pub actor: Actor,
    /// `read`, `write`, `cas`, `txn`, `start-partition`, ...
    pub f: String,
    /// Register key.
    pub key: Option<u64>,
    /// Op value.
    pub value: Json,
    /// Error text of a `fail` / `info`.
    pub error: Option<String>,
}

impl Event {
    /// The JSONL object of this event.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("index".into(), json!(self.index));
        m.insert("time".into(), json!(self.time));
        m.insert("type".into(), json!(self.kind.name()));
        m.insert(
            "process".into(),
            match self.actor {
                Actor::Client(p) => json!(p),
                Actor::Nemesis => json!("nemesis"),
            },
        );
        m.insert("f".into(), json!(self.f));
        if let Some(k) = self.key {
            m.insert("key".into(), json!(k));
        }
        m.insert("value".into(), self.value.clone());
        if let Some(e) = &self.error {
            m.insert("error".into(), json!(e));
        }
        Json::Object(m)
    }

    /// The client process, if this is a client event.
    pub fn process(&self) -> Option<u64> {
        match self.actor {
            Actor::Client(p) => Some(p),
            Actor::Nemesis => None,
        }
    }
}

/// The history under construction (pure: the caller supplies the times).
#[derive(Debug, Default, Clone)]
pub struct HistoryLog {
    /// Events in history order.
    pub events: Vec<Event>,
}

impl HistoryLog {
    fn push(&mut self, mut e: Event) -> u64 {
        e.index = self.events.len() as u64;
        let i = e.index;
        self.events.push(e);
        i
    }

    /// Records the invocation of `op` by `process`; returns its index.
    pub fn invoke(&mut self, time: u64, process: u64, op: &Op) -> u64 {
        self.push(Event {
            index: 0,
            time,
            kind: OpType::Invoke,
            actor: Actor::Client(process),
            f: op.f().into(),
            key: op.key(),
            value: op.invoke_value(),
            error: None,
        })
    }

    /// Records how `process`'s pending `op` ended.
    pub fn complete(&mut self, time: u64, process: u64, op: &Op, outcome: &Outcome) -> u64 {
        self.push(Event {
            index: 0,
            time,
            kind: outcome.kind,
            actor: Actor::Client(process),
            f: op.f().into(),
            key: op.key(),
            value: outcome.value.clone(),
            error: outcome.error.clone(),
        })
    }

    /// Records a nemesis action (`start-partition`, `stop-kill`, ...).
    pub fn nemesis(&mut self, time: u64, f: &str, value: Json) -> u64 {
        self.push(Event {
            index: 0,
            time,
            kind: OpType::Info,
            actor: Actor::Nemesis,
            f: f.into(),
            key: None,
            value,
            error: None,
        })
    }

    /// The history as JSON lines.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::with_capacity(self.events.len() * 96);
        for e in &self.events {
            out.push_str(&e.to_json().to_string());
            out.push('\n');
        }
        out
    }
}

/// Completed client ops by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Invocations.
    pub invoked: u64,
    /// `ok` completions.
    pub ok: u64,
    /// `fail` completions.
    pub fail: u64,
    /// `info` completions.
    pub info: u64,
}

/// A [`HistoryLog`] shared by concurrent workers, timed from `start`.
pub struct Recorder {
    start: Instant,
    log: Mutex<HistoryLog>,
    invoked: AtomicU64,
    ok: AtomicU64,
    fail: AtomicU64,
    info: AtomicU64,
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            log: Mutex::new(HistoryLog::default()),
            invoked: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn log(&self) -> std::sync::MutexGuard<'_, HistoryLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`HistoryLog::invoke`].
    pub fn invoke(&self, process: u64, op: &Op) {
        self.invoked.fetch_add(1, Ordering::Relaxed);
        let t = self.now();
        self.log().invoke(t, process, op);
    }

    /// See [`HistoryLog::complete`].
    pub fn complete(&self, process: u64, op: &Op, outcome: &Outcome) {
        let counter = match outcome.kind {
            OpType::Ok => &self.ok,
            OpType::Fail => &self.fail,
            _ => &self.info,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let t = self.now();
        self.log().complete(t, process, op, outcome);
    }

    /// See [`HistoryLog::nemesis`].
    pub fn nemesis(&self, f: &str, value: Json) {
        let t = self.now();
        self.log().nemesis(t, f, value);
    }

    /// Running counts.
    pub fn counts(&self) -> Counts {
        Counts {
            invoked: self.invoked.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            fail: self.fail.load(Ordering::Relaxed),
            info: self.info.load(Ordering::Relaxed),
        }
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> HistoryLog {
        self.log().clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse, Format, Process};
    use crate::verdict::Validity;

    #[test]
    fn the_jsonl_is_what_the_checkers_read() {
        let mut h = HistoryLog::default();
        let w = Op::Write { key: 3, value: 1 };
        let r = Op::Read { key: 3 };
        h.invoke(10, 0, &w);
        h.complete(20, 0, &w, &Outcome::ok(json!(1)));
        h.nemesis(25, "start-partition", json!({"cut": [["n1", "n2"]]}));
        h.invoke(30, 1, &r);
        h.complete(40, 1, &r, &Outcome::ok(json!(1)));
        h.invoke(50, 2, &w);
        h.complete(60, 2, &w, &Outcome::info(json!(1), "timeout".into()));
        let text = h.to_jsonl();
        let parsed = parse(&text, Format::Jsonl).unwrap();
        assert_eq!(parsed.ops.len(), 7);
        assert_eq!(parsed.ops[2].process, Process::Named("nemesis".into()));
        assert_eq!(parsed.ops[6].error, Some(crate::value::Value::Str("timeout".into())));
        assert_eq!(parsed.ops[1].time, Some(20));
        let v = crate::check(crate::Workload::CasRegister, &parsed, &Default::default()).unwrap();
        assert_eq!(v.validity, Validity::Valid);
        // A read of a value never written must be caught once recorded.
        h.invoke(70, 3, &r);
        h.complete(80, 3, &r, &Outcome::ok(json!(4)));
        let parsed = parse(&h.to_jsonl(), Format::Jsonl).unwrap();
        let v = crate::check(crate::Workload::CasRegister, &parsed, &Default::default()).unwrap();
        assert_eq!(v.validity, Validity::Invalid);
    }

    #[test]
    fn the_recorder_counts_outcomes() {
        let r = Recorder::new();
        let op = Op::Add(1);
        r.invoke(0, &op);
        r.complete(0, &op, &Outcome::ok(json!(1)));
        r.invoke(1, &op);
        r.complete(1, &op, &Outcome::fail(json!(1), None));
        r.nemesis("start-kill", json!(["n1"]));
        assert_eq!(r.counts(), Counts { invoked: 2, ok: 1, fail: 1, info: 0 });
        let h = r.snapshot();
        assert_eq!(h.events.len(), 5);
        assert!(h.events.windows(2).all(|w| w[0].time <= w[1].time && w[0].index + 1 == w[1].index));
    }
}
