//! Executing workload ops against Arbor with `arbor::client::Client`, and classifying
//! what came back.
//!
//! Keys: register `k` is `/jepsen/register/<k>`; list `k` is `/jepsen/la/<k, 8 digits>`;
//! set elements are appended (`"e,"`) to shard keys `/jepsen/set/<e / 256>`, so that a
//! duplicated add would show; bank account `a` is `/jepsen/bank/<a>`, a decimal counter;
//! watch key `k` is `/jepsen/watch/<k>`, holding the decimal value last put.
//!
//! | op | Arbor calls |
//! |---|---|
//! | register read / write | `get` (read index) / `put` |
//! | register cas | txn `if value = from then put to`; compare failed = `fail` without error |
//! | list-append txn | one txn of `append "v,"` / `get`; a read-only txn is one `range` (read index) over the keys' span, or a `get` for one key |
//! | set add / read | txn `append`; paginated `range` of `/jepsen/set/` |
//! | bank transfer | `get` of the source, then txn `if version = seen then increment -n, increment +n` |
//! | bank read | one `range` of `/jepsen/bank/` |
//! | watch put | `put` |
//! | watch delete of X | txn `if value = X then delete`; compare failed = `fail` without error |
//! | watch final read | one `range` of `/jepsen/watch/` (read index); its header's stamp is the barrier |
//! | watch chunk | `Client::watch` of the prefix, driven by `super::watchers` |
//!
//! [`classify`] maps errors to outcomes: a read-only op that errs did not happen (`fail`);
//! a write rejected with `FAILED_PRECONDITION` / `INVALID_ARGUMENT` (or refused by the
//! client before sending) did not happen (`fail`); anything else — timeouts, unreachable
//! nodes, `UNKNOWN`, `UNAVAILABLE` after retries — is indeterminate (`info`).

use super::recorder::Outcome;
use super::workload::{Mop, Op};
use arbor::client::{op, pb, Client, ClientError, Txn};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

/// Key of register `k`.
pub fn register_key(k: u64) -> String {
    format!("/jepsen/register/{k}")
}

/// Key of list `k` (fixed width, so key order is number order).
pub fn list_key(k: u64) -> String {
    format!("/jepsen/la/{k:08}")
}

/// Prefix of the set's shard keys.
pub const SET_PREFIX: &str = "/jepsen/set/";
/// Elements per set shard key.
pub const SET_SHARD: u64 = 256;

/// Key holding set element `e`.
pub fn set_key(e: u64) -> String {
    format!("{SET_PREFIX}{:08}", e / SET_SHARD)
}

/// Prefix of the bank accounts.
pub const BANK_PREFIX: &str = "/jepsen/bank/";

/// Key of bank account `a`.
pub fn account_key(a: u32) -> String {
    format!("{BANK_PREFIX}{a}")
}

/// Prefix of the watch workload's keys.
pub const WATCH_PREFIX: &str = "/jepsen/watch/";

/// Key of watch key `k`.
pub fn watch_key(k: u64) -> String {
    format!("{WATCH_PREFIX}{k}")
}

/// A watch key or value as the history holds it: the number, else the raw text.
fn watch_json(b: &[u8]) -> Json {
    let t = text(b);
    t.parse::<u64>().map(Json::from).unwrap_or(Json::String(t))
}

/// The key number of a watched key (the text after the prefix; the whole key if it is
/// outside the prefix, which the checker then reports).
fn watch_key_json(key: &[u8]) -> Json {
    match key.strip_prefix(WATCH_PREFIX.as_bytes()) {
        Some(rest) => watch_json(rest),
        None => Json::String(text(key)),
    }
}

/// A watch response's events as the history holds them: `[key, value or null, stamp]`.
pub fn watch_events(resp: &pb::WatchResponse) -> Vec<Json> {
    resp.events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref();
            let key = watch_key_json(kv.map_or(&[][..], |kv| &kv.key));
            let value = match (e.r#type(), kv) {
                (pb::watch_event::Type::Put, Some(kv)) => watch_json(&kv.value),
                _ => Json::Null,
            };
            json!([key, value, e.stamp])
        })
        .collect()
}

/// A read-only list-append txn spanning more keys than this is run as a txn, not a range.
const MAX_READ_SPAN: u64 = 64;

/// How an error ends `op` (pure).
pub fn classify(op: &Op, err: &ClientError) -> Outcome {
    let value = op.invoke_value();
    let msg = err.to_string();
    if op.is_read_only() {
        return Outcome::fail(value, Some(msg));
    }
    match err {
        ClientError::InvalidArgument(_) => Outcome::fail(value, Some(msg)),
        ClientError::Status(s) if matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument) => {
            Outcome::fail(value, Some(msg))
        }
        _ => Outcome::info(value, msg),
    }
}

/// Runs `op` with `client`, giving up after `timeout` (an unknown outcome for writes).
pub async fn execute(client: &Client, op: &Op, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, run(client, op)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => classify(op, &e),
        Err(_) => {
            let value = op.invoke_value();
            let msg = format!("timeout after {timeout:?}");
            if op.is_read_only() {
                Outcome::fail(value, Some(msg))
            } else {
                Outcome::info(value, msg)
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A register value: the integer written, else the raw text (which no model accepts).
fn register_value(kv: Option<&pb::KeyValue>) -> Json {
    match kv {
        None => Json::Null,
        Some(kv) => {
            let t = text(&kv.value);
            t.parse::<u64>().map(Json::from).unwrap_or(Json::String(t))
        }
    }
}

/// `"1,5,7,"` → `[1, 5, 7]`; a missing key reads as `null` (never written).
fn list_value(value: Option<&[u8]>) -> Json {
    match value {
        None => Json::Null,
        Some(v) => Json::Array(
            text(v)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().map(Json::from).unwrap_or_else(|_| Json::String(s.into())))
                .collect(),
        ),
    }
}

fn unexpected(op: &Op, what: impl Into<String>) -> Outcome {
    // The server answered something we cannot read: the op may have happened.
    Outcome::info(op.invoke_value(), what.into())
}

async fn run(client: &Client, op: &Op) -> Result<Outcome, ClientError> {
    Ok(match op {
        Op::Read { key } => Outcome::ok(register_value(client.get(register_key(*key)).await?.as_ref())),
        Op::Write { key, value } => {
            client.put(register_key(*key), value.to_string()).await?;
            Outcome::ok(json!(value))
        }
        Op::Cas { key, from, to } => {
            let k = register_key(*key);
            let txn = Txn::new().if_value(&k, "=", from.to_string())?.then(op::put(&k, to.to_string()));
            if client.txn(txn).await?.succeeded {
                Outcome::ok(json!([from, to]))
            } else {
                Outcome::fail(json!([from, to]), None)
            }
        }
        Op::Txn(mops) => list_append(client, op, mops).await?,
        Op::Add(e) => {
            client.txn(Txn::new().then(op::append(set_key(*e), format!("{e},")))).await?;
            Outcome::ok(json!(e))
        }
        Op::SetRead => {
            let mut elements = Vec::new();
            for kv in scan_all(client, SET_PREFIX).await? {
                if let Json::Array(items) = list_value(Some(&kv.value)) {
                    elements.extend(items);
                }
            }
            Outcome::ok(Json::Array(elements))
        }
        Op::Transfer { from, to, amount } => {
            let value = op.invoke_value();
            let Some(src) = client.get(account_key(*from)).await? else {
                return Ok(Outcome::fail(value, Some("no such account".into())));
            };
            let balance: i64 = text(&src.value).parse().unwrap_or(0);
            if balance < *amount {
                return Ok(Outcome::fail(value, Some("insufficient funds".into())));
            }
            let txn = Txn::new()
                .if_version(account_key(*from), "=", src.version)?
                .then(op::increment(account_key(*from), -amount))
                .then(op::increment(account_key(*to), *amount));
            if client.txn(txn).await?.succeeded {
                Outcome::ok(value)
            } else {
                Outcome::fail(value, None)
            }
        }
        Op::BankRead => {
            let resp = client.scan(BANK_PREFIX, 0).await?;
            let mut balances = Map::new();
            for kv in resp.kvs {
                let name = text(&kv.key[BANK_PREFIX.len().min(kv.key.len())..]);
                let t = text(&kv.value);
                balances.insert(name, t.parse::<i64>().map(Json::from).unwrap_or(Json::String(t)));
            }
            Outcome::ok(Json::Object(balances))
        }
        Op::WatchPut { key, value } => {
            client.put(watch_key(*key), value.to_string()).await?;
            Outcome::ok(json!(value))
        }
        Op::WatchDelete { key, value } => {
            let k = watch_key(*key);
            let txn = Txn::new().if_value(&k, "=", value.to_string())?.then(op::delete(&k));
            if client.txn(txn).await?.succeeded {
                Outcome::ok(json!(value))
            } else {
                Outcome::fail(json!(value), None)
            }
        }
        Op::WatchRead => {
            let resp = client.scan(WATCH_PREFIX, 0).await?;
            let Some(stamp) = resp.header.as_ref().map(|h| h.read_stamp).filter(|s| *s > 0) else {
                return Ok(Outcome::fail(Json::Null, Some("the read carried no stamp".into())));
            };
            if resp.more {
                return Ok(Outcome::fail(Json::Null, Some("the read was cut short".into())));
            }
            let kvs: Vec<Json> =
                resp.kvs.iter().map(|kv| json!([watch_key_json(&kv.key), watch_json(&kv.value)])).collect();
            Outcome::ok(json!({"stamp": stamp, "kvs": kvs}))
        }
        Op::WatchChunk { .. } => {
            Outcome::fail(op.invoke_value(), Some("watch chunks are recorded by their watcher task".into()))
        }
    })
}

/// Every key under `prefix`, following `more` (several reads: use when nothing writes).
async fn scan_all(client: &Client, prefix: &str) -> Result<Vec<pb::KeyValue>, ClientError> {
    let mut out = Vec::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    loop {
        let resp =
            client.range(pb::RangeRequest { start: start.clone(), end: end.clone(), ..Default::default() }).await?;
        let more = resp.more;
        if let Some(last) = resp.kvs.last() {
            start = last.key.clone();
            start.push(0);
        }
        out.extend(resp.kvs);
        if !more {
            return Ok(out);
        }
    }
}

async fn list_append(client: &Client, op: &Op, mops: &[Mop]) -> Result<Outcome, ClientError> {
    let read_keys: Vec<u64> = mops
        .iter()
        .filter_map(|m| match m {
            Mop::Read { key } => Some(*key),
            Mop::Append { .. } => None,
        })
        .collect();
    if read_keys.len() == mops.len() {
        let (lo, hi) = (*read_keys.iter().min().expect("a mop"), *read_keys.iter().max().expect("a mop"));
        if lo == hi {
            let kv = client.get(list_key(lo)).await?;
            let v = list_value(kv.as_ref().map(|kv| kv.value.as_slice()));
            return Ok(Outcome::ok(fill_reads(mops, |_| v.clone())));
        }
        if hi - lo < MAX_READ_SPAN {
            // One linearizable range read: an atomic snapshot of every key read.
            let mut end = list_key(hi).into_bytes();
            end.push(0);
            let req = pb::RangeRequest { start: list_key(lo).into_bytes(), end, ..Default::default() };
            let resp = client.range(req).await?;
            if resp.more {
                return Ok(unexpected(op, "range read cut short"));
            }
            let values: BTreeMap<Vec<u8>, Vec<u8>> = resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
            return Ok(Outcome::ok(fill_reads(mops, |k| {
                list_value(values.get(list_key(k).as_bytes()).map(|v| v.as_slice()))
            })));
        }
    }
    let mut txn = Txn::new();
    for m in mops {
        txn = txn.then(match m {
            Mop::Append { key, value } => op::append(list_key(*key), format!("{value},")),
            Mop::Read { key } => op::get(list_key(*key)),
        });
    }
    let resp = client.txn(txn).await?;
    if resp.results.len() != mops.len() {
        return Ok(unexpected(op, format!("{} results for {} ops", resp.results.len(), mops.len())));
    }
    let mut reads = Vec::with_capacity(mops.len());
    for r in &resp.results {
        match &r.result {
            Some(pb::op_result::Result::Get(g)) => {
                reads.push(Some(list_value(g.kv.as_ref().map(|kv| kv.value.as_slice()))))
            }
            Some(pb::op_result::Result::Append(_)) => reads.push(None),
            Some(pb::op_result::Result::Error(e)) => {
                return Ok(Outcome::fail(op.invoke_value(), Some(format!("aborted: {e}"))));
            }
            other => return Ok(unexpected(op, format!("unexpected result {other:?}"))),
        }
    }
    let mut it = reads.into_iter();
    let value = Json::Array(
        mops.iter()
            .map(|m| {
                let read = it.next().flatten();
                match m {
                    Mop::Append { key, value } => json!(["append", key, value]),
                    Mop::Read { key } => json!(["r", key, read.unwrap_or(Json::Null)]),
                }
            })
            .collect(),
    );
    Ok(Outcome::ok(value))
}

/// The txn's completion value with every read filled by `read(key)`.
fn fill_reads(mops: &[Mop], read: impl Fn(u64) -> Json) -> Json {
    Json::Array(
        mops.iter()
            .map(|m| match m {
                Mop::Append { key, value } => json!(["append", key, value]),
                Mop::Read { key } => json!(["r", key, read(*key)]),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpType;
    use tonic::Status;

    #[test]
    fn errors_are_definite_only_when_nothing_can_have_happened() {
        let write = Op::Write { key: 1, value: 2 };
        let read = Op::Read { key: 1 };
        let status = |s: Status| ClientError::Status(s);
        let unreachable =
            ClientError::Unreachable { timeout: Duration::from_secs(1), endpoints: "x".into(), last: "y".into() };
        assert_eq!(classify(&write, &status(Status::failed_precondition("aborted"))).kind, OpType::Fail);
        assert_eq!(classify(&write, &status(Status::invalid_argument("too big"))).kind, OpType::Fail);
        assert_eq!(classify(&write, &status(Status::unknown("?"))).kind, OpType::Info);
        assert_eq!(classify(&write, &status(Status::unavailable("no leader"))).kind, OpType::Info);
        assert_eq!(classify(&write, &unreachable).kind, OpType::Info);
        assert_eq!(classify(&read, &unreachable).kind, OpType::Fail);
        let cas = Op::Cas { key: 1, from: 0, to: 1 };
        let o = classify(&cas, &status(Status::failed_precondition("aborted")));
        assert!(o.error.is_some(), "a cas that did not run carries an error (else: compare failed)");
        assert_eq!(classify(&Op::Txn(vec![Mop::Read { key: 1 }]), &unreachable).kind, OpType::Fail);
        assert_eq!(classify(&Op::Txn(vec![Mop::Append { key: 1, value: 1 }]), &unreachable).kind, OpType::Info);
    }

    #[test]
    fn values_are_parsed_back() {
        assert_eq!(list_value(Some(b"1,5,7,")), json!([1, 5, 7]));
        assert_eq!(list_value(Some(b"")), json!([]));
        assert_eq!(list_value(None), Json::Null);
        let kv = pb::KeyValue { value: b"3".to_vec(), ..Default::default() };
        assert_eq!(register_value(Some(&kv)), json!(3));
        assert_eq!(register_value(None), Json::Null);
        assert!(list_key(2) < list_key(10), "list keys sort numerically");
        assert_eq!(set_key(0), set_key(SET_SHARD - 1));
        assert_ne!(set_key(0), set_key(SET_SHARD));
        let mops = [Mop::Append { key: 1, value: 4 }, Mop::Read { key: 2 }];
        assert_eq!(fill_reads(&mops, |k| json!([k])), json!([["append", 1, 4], ["r", 2, [2]]]));
    }

    #[test]
    fn watch_events_are_recorded_as_key_value_stamp() {
        let kv = |k: &str, v: &str| Some(pb::KeyValue { key: k.into(), value: v.into(), ..Default::default() });
        let put =
            pb::WatchEvent { r#type: pb::watch_event::Type::Put as i32, kv: kv("/jepsen/watch/3", "17"), stamp: 9 };
        let del =
            pb::WatchEvent { r#type: pb::watch_event::Type::Delete as i32, kv: kv("/jepsen/watch/3", ""), stamp: 10 };
        let odd = pb::WatchEvent { r#type: pb::watch_event::Type::Put as i32, kv: kv("/elsewhere", "x"), stamp: 11 };
        let resp = pb::WatchResponse { group_id: 1, events: vec![put, del, odd], progress_stamp: 11 };
        assert_eq!(watch_events(&resp), vec![json!([3, 17, 9]), json!([3, null, 10]), json!(["/elsewhere", "x", 11])]);
        assert_eq!(watch_key(3), "/jepsen/watch/3");
    }
}
