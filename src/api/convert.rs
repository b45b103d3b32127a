//! Validation of protobuf requests into the transaction model, and results
//! back into protobuf. Every rule names its limit; nothing is sequenced
//! until the whole request passed.

use arbor_proto as pb;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::server::ReadMode;
use crate::tree::{CmpOp, CmpTarget, Compare, KeyRange, KeyValue, Op, OpResult, RangeSpec, Txn};

fn invalid<T>(msg: String) -> Result<T> {
    Err(Error::InvalidArgument(msg))
}

/// Checks a key: a non-empty UTF-8 path starting with `/`, within the limit.
pub fn check_key(key: &[u8], limits: &Limits, what: &str) -> Result<()> {
    if key.is_empty() {
        return invalid(format!("{what} is empty; keys are paths such as /users/alice"));
    }
    if key.len() > limits.max_key_bytes {
        return invalid(format!(
            "{what} is {} bytes; the limit is {} bytes (limits.max_key_bytes)",
            key.len(),
            limits.max_key_bytes
        ));
    }
    if std::str::from_utf8(key).is_err() {
        return invalid(format!("{what} is not valid UTF-8; keys are paths"));
    }
    if key[0] != b'/' {
        return invalid(format!("{what} {:?} must start with '/'", String::from_utf8_lossy(key)));
    }
    Ok(())
}

fn check_value(value: &[u8], limits: &Limits) -> Result<()> {
    if value.len() > limits.max_value_bytes {
        return invalid(format!(
            "value is {} bytes; the limit is {} bytes (limits.max_value_bytes)",
            value.len(),
            limits.max_value_bytes
        ));
    }
    Ok(())
}

/// A key range from `prefix` or `[start, end)`.
fn key_range(prefix: &[u8], start: &[u8], end: &[u8], limits: &Limits) -> Result<KeyRange> {
    match (prefix.is_empty(), start.is_empty()) {
        (false, true) if end.is_empty() => {
            check_key(prefix, limits, "prefix")?;
            Ok(KeyRange::prefix(prefix))
        }
        (true, false) => {
            check_key(start, limits, "range start")?;
            if !end.is_empty() && end <= start {
                return invalid("range end must be after range start (or empty for no end)".to_string());
            }
            if end.len() > limits.max_key_bytes {
                return invalid(format!(
                    "range end is {} bytes; the limit is {} bytes (limits.max_key_bytes)",
                    end.len(),
                    limits.max_key_bytes
                ));
            }
            Ok(KeyRange { start: start.to_vec(), end: end.to_vec() })
        }
        (true, true) => invalid("a range needs a prefix or a start key".to_string()),
        _ => invalid("give either a prefix or start/end, not both".to_string()),
    }
}

pub fn range_spec(r: &pb::RangeRequest, limits: &Limits) -> Result<RangeSpec> {
    let range = key_range(&r.prefix, &r.start, &r.end, limits)?;
    let limit = match r.limit {
        0 => limits.max_range_results,
        n if n > limits.max_range_results => {
            return invalid(format!("range limit {n} exceeds {} (limits.max_range_results)", limits.max_range_results))
        }
        n => n,
    };
    let delimiter = match r.delimiter.as_bytes() {
        [] => None,
        [d] if !r.prefix.is_empty() => Some(*d),
        [_] => return invalid("a delimiter needs a prefix (it lists the children of that prefix)".to_string()),
        _ => return invalid(format!("delimiter must be one byte, got {:?}", r.delimiter)),
    };
    Ok(RangeSpec { range, limit, delimiter, keys_only: r.keys_only })
}

/// The longest wait a read may ask for.
pub const MAX_READ_TIMEOUT_MS: u32 = 60_000;

/// A read's mode and its optional wait timeout.
pub fn read_mode(r: Option<&pb::ReadOptions>) -> Result<(ReadMode, Option<std::time::Duration>)> {
    let Some(r) = r else { return Ok((ReadMode::Linearizable, None)) };
    use pb::read_options::Mode;
    let mode = match Mode::try_from(r.mode) {
        Ok(Mode::Linearizable) => ReadMode::Linearizable,
        Ok(Mode::SnapshotAt) if r.stamp == 0 => {
            return invalid("a SNAPSHOT_AT read needs a stamp (an HLC stamp from an earlier response)".to_string())
        }
        Ok(Mode::SnapshotAt) => ReadMode::SnapshotAt(r.stamp),
        Ok(Mode::BoundedStaleness) => ReadMode::BoundedStaleness { max_ms: r.max_staleness_ms },
        Err(_) => return invalid(format!("unknown read mode {}", r.mode)),
    };
    let timeout = match r.timeout_ms {
        0 => None,
        ms if ms > MAX_READ_TIMEOUT_MS => {
            return invalid(format!("read timeout_ms {ms} exceeds the maximum {MAX_READ_TIMEOUT_MS}"))
        }
        ms => Some(std::time::Duration::from_millis(ms as u64)),
    };
    Ok((mode, timeout))
}

fn no_read_options(read: &Option<pb::ReadOptions>) -> Result<()> {
    match read {
        Some(_) => invalid("read options are not allowed on a read inside a transaction (it reads the state the transaction executes on)".to_string()),
        None => Ok(()),
    }
}

fn compare(c: pb::Compare, limits: &Limits) -> Result<Compare> {
    check_key(&c.key, limits, "compare key")?;
    let op = match pb::compare::Op::try_from(c.op) {
        Ok(pb::compare::Op::Equal) => CmpOp::Equal,
        Ok(pb::compare::Op::NotEqual) => CmpOp::NotEqual,
        Ok(pb::compare::Op::Less) => CmpOp::Less,
        Ok(pb::compare::Op::Greater) => CmpOp::Greater,
        Err(_) => return invalid(format!("unknown compare op {}", c.op)),
    };
    let target = match pb::compare::Target::try_from(c.target) {
        Ok(pb::compare::Target::Value) => {
            check_value(&c.value, limits)?;
            CmpTarget::Value(c.value)
        }
        Ok(pb::compare::Target::Version) => CmpTarget::Version(c.version),
        Ok(pb::compare::Target::Exists) => {
            if matches!(op, CmpOp::Less | CmpOp::Greater) {
                return invalid("an EXISTS compare takes only EQUAL or NOT_EQUAL".to_string());
            }
            CmpTarget::Exists(c.exists)
        }
        Err(_) => return invalid(format!("unknown compare target {}", c.target)),
    };
    Ok(Compare { key: c.key, op, target })
}

fn op(o: pb::Op, limits: &Limits) -> Result<Op> {
    use pb::op::Op as P;
    Ok(match o.op {
        None => return invalid("an op has no operation set".to_string()),
        Some(P::Get(g)) => {
            check_key(&g.key, limits, "key")?;
            no_read_options(&g.read)?;
            Op::Get { key: g.key }
        }
        Some(P::Range(r)) => {
            no_read_options(&r.read)?;
            Op::Range(range_spec(&r, limits)?)
        }
        Some(P::Put(p)) => {
            check_key(&p.key, limits, "key")?;
            check_value(&p.value, limits)?;
            Op::Put { key: p.key, value: p.value.into(), prev_kv: p.prev_kv }
        }
        Some(P::Delete(d)) => {
            check_key(&d.key, limits, "key")?;
            Op::Delete { key: d.key }
        }
        Some(P::DeleteRange(d)) => Op::DeleteRange(key_range(&d.prefix, &d.start, &d.end, limits)?),
        Some(P::Increment(i)) => {
            check_key(&i.key, limits, "key")?;
            Op::Increment { key: i.key, delta: i.delta }
        }
        Some(P::Append(a)) => {
            check_key(&a.key, limits, "key")?;
            check_value(&a.value, limits)?;
            Op::Append { key: a.key, value: a.value, prev_kv: a.prev_kv }
        }
    })
}

fn check_request_id(id: &str) -> Result<()> {
    if id.len() > 256 {
        return invalid(format!("request_id is {} bytes; the limit is 256", id.len()));
    }
    Ok(())
}

/// Takes the request apart: keys and values move into the transaction.
pub fn txn(t: pb::TxnRequest, limits: &Limits) -> Result<Txn> {
    let count = t.compare.len() + t.success.len() + t.failure.len();
    if count > limits.max_ops_per_txn {
        return invalid(format!(
            "transaction has {count} compares and ops; the limit is {} (limits.max_ops_per_txn)",
            limits.max_ops_per_txn
        ));
    }
    if t.success.is_empty() && t.failure.is_empty() {
        return invalid("transaction has no ops".to_string());
    }
    check_request_id(&t.request_id)?;
    Ok(Txn {
        request_id: t.request_id,
        compares: t.compare.into_iter().map(|c| compare(c, limits)).collect::<Result<_>>()?,
        success: t.success.into_iter().map(|o| op(o, limits)).collect::<Result<_>>()?,
        failure: t.failure.into_iter().map(|o| op(o, limits)).collect::<Result<_>>()?,
    })
}

/// The key range of a watch: one key, or a prefix.
pub fn watch_range(w: &pb::WatchRequest, limits: &Limits) -> Result<KeyRange> {
    match (w.key.is_empty(), w.prefix.is_empty()) {
        (false, true) => {
            check_key(&w.key, limits, "key")?;
            let mut end = w.key.clone();
            end.push(0);
            Ok(KeyRange { start: w.key.clone(), end })
        }
        (true, false) => key_range(&w.prefix, &[], &[], limits),
        _ => invalid("a watch needs exactly one of key and prefix".to_string()),
    }
}

pub fn watch_response(group: u64, batch: crate::watch::Batch) -> pb::WatchResponse {
    use pb::watch_event::Type;
    let events = batch
        .events
        .into_iter()
        .map(|e| match e.record {
            Some(record) => pb::WatchEvent {
                r#type: Type::Put as i32,
                kv: Some(kv(KeyValue { key: e.key, record })),
                stamp: e.stamp,
            },
            None => pb::WatchEvent {
                r#type: Type::Delete as i32,
                kv: Some(pb::KeyValue { key: e.key, mod_stamp: e.stamp, ..Default::default() }),
                stamp: e.stamp,
            },
        })
        .collect();
    pb::WatchResponse { group_id: group, events, progress_stamp: batch.progress }
}

pub fn kv(k: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: k.key,
        value: Vec::from(k.record.value),
        version: k.record.version,
        create_stamp: k.record.create_stamp,
        mod_stamp: k.record.mod_stamp,
    }
}

pub fn range_response(result: OpResult, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    match result {
        OpResult::Range { kvs, common_prefixes, more } => {
            pb::RangeResponse { header, kvs: kvs.into_iter().map(kv).collect(), common_prefixes, more }
        }
        other => unreachable!("range read returned {other:?}"),
    }
}

pub fn op_result(r: OpResult) -> pb::OpResult {
    use pb::op_result::Result as R;
    let result = match r {
        OpResult::Get(found) => R::Get(pb::GetResponse { header: None, kv: found.map(kv) }),
        r @ OpResult::Range { .. } => R::Range(range_response(r, None)),
        OpResult::Put { prev, version } => R::Put(pb::PutResponse { header: None, prev: prev.map(kv), version }),
        OpResult::Delete { deleted } => R::Delete(pb::DeleteResponse { header: None, deleted }),
        OpResult::DeleteRange { deleted } => R::DeleteRange(pb::DeleteResponse { header: None, deleted }),
        OpResult::Increment { value, version } => R::Increment(pb::IncrementResult { value, version }),
        OpResult::Append { prev, version } => R::Append(pb::PutResponse { header: None, prev: prev.map(kv), version }),
    };
    pb::OpResult { result: Some(result) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_key_bytes: 16, max_value_bytes: 8, max_ops_per_txn: 3, ..Limits::default() }
    }

    fn put(key: &[u8], value: &[u8]) -> pb::Op {
        pb::Op { op: Some(pb::op::Op::Put(pb::PutOp { key: key.to_vec(), value: value.to_vec(), prev_kv: false })) }
    }

    fn txn_of(ops: Vec<pb::Op>) -> pb::TxnRequest {
        pb::TxnRequest { success: ops, ..Default::default() }
    }

    fn err(t: pb::TxnRequest) -> String {
        txn(t, &limits()).unwrap_err().to_string()
    }

    #[test]
    fn each_limit_is_named() {
        assert!(err(txn_of(vec![put(b"/0123456789abcdefX", b"v")])).contains("limits.max_key_bytes"));
        assert!(err(txn_of(vec![put(b"/k", b"123456789")])).contains("limits.max_value_bytes"));
        assert!(err(txn_of(vec![put(b"/a", b""); 4])).contains("limits.max_ops_per_txn"));
        assert!(err(txn_of(vec![put(b"", b"")])).contains("empty"));
        assert!(err(txn_of(vec![put(b"/\xff", b"")])).contains("UTF-8"));
        assert!(err(txn_of(vec![put(b"k", b"")])).contains("start with '/'"));
        assert!(err(txn_of(vec![pb::Op { op: None }])).contains("no operation"));
        assert!(err(txn_of(vec![])).contains("no ops"));
    }

    #[test]
    fn read_modes() {
        use pb::read_options::Mode;
        let opts = |mode: Mode, stamp, timeout_ms| pb::ReadOptions {
            mode: mode as i32,
            stamp,
            max_staleness_ms: 50,
            timeout_ms,
        };
        assert_eq!(read_mode(None).unwrap(), (ReadMode::Linearizable, None));
        assert_eq!(read_mode(Some(&opts(Mode::SnapshotAt, 7, 0))).unwrap(), (ReadMode::SnapshotAt(7), None));
        assert_eq!(
            read_mode(Some(&opts(Mode::BoundedStaleness, 0, 10))).unwrap(),
            (ReadMode::BoundedStaleness { max_ms: 50 }, Some(std::time::Duration::from_millis(10)))
        );
        assert!(read_mode(Some(&opts(Mode::SnapshotAt, 0, 0))).unwrap_err().to_string().contains("needs a stamp"));
        assert!(read_mode(Some(&opts(Mode::Linearizable, 0, 60_001))).unwrap_err().to_string().contains("60000"));
        let bad = pb::ReadOptions { mode: 9, ..Default::default() };
        assert!(read_mode(Some(&bad)).unwrap_err().to_string().contains("unknown read mode"));
        let get = pb::Op {
            op: Some(pb::op::Op::Get(pb::GetRequest { key: b"/a".to_vec(), read: Some(opts(Mode::SnapshotAt, 1, 0)) })),
        };
        assert!(err(txn_of(vec![get])).contains("not allowed on a read inside a transaction"));
    }

    #[test]
    fn range_rules() {
        let l = limits();
        let r = |prefix: &[u8], start: &[u8], end: &[u8], delimiter: &str, limit| pb::RangeRequest {
            prefix: prefix.to_vec(),
            start: start.to_vec(),
            end: end.to_vec(),
            delimiter: delimiter.to_string(),
            limit,
            keys_only: false,
            read: None,
        };
        let ok = range_spec(&r(b"/u/", b"", b"", "/", 0), &l).unwrap();
        assert_eq!(ok.limit, l.max_range_results);
        assert_eq!(ok.range, KeyRange { start: b"/u/".to_vec(), end: b"/u0".to_vec() });
        assert!(range_spec(&r(b"/u/", b"/a", b"", "", 0), &l).is_err());
        assert!(range_spec(&r(b"", b"/b", b"/a", "", 0), &l).is_err());
        assert!(range_spec(&r(b"", b"/a", b"", "/", 0), &l).unwrap_err().to_string().contains("needs a prefix"));
        assert!(range_spec(&r(b"/u", b"", b"", "", l.max_range_results + 1), &l)
            .unwrap_err()
            .to_string()
            .contains("max_range_results"));
    }

    #[test]
    fn exists_compares_only_take_equality() {
        let c = pb::Compare {
            key: b"/a".to_vec(),
            target: pb::compare::Target::Exists as i32,
            op: pb::compare::Op::Less as i32,
            ..Default::default()
        };
        let t = pb::TxnRequest { compare: vec![c], success: vec![put(b"/a", b"")], ..Default::default() };
        assert!(err(t).contains("EXISTS"));
    }
}
