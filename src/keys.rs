//! Every RocksDB key Arbor writes is a variant of [`Key`], encoded with the
//! order-preserving [`arbor_storage::keycode`], so that each kind of key is a
//! contiguous, ordered part of the keyspace:
//!
//! | tag  | key                              | value                                   |
//! |------|----------------------------------|-----------------------------------------|
//! | 0x01 | `NodeMeta`                       | node identity, peers, range catalog     |
//! | 0x02 | `RaftVote(group)`                | the group's persisted vote              |
//! | 0x03 | `RaftCommitted(group)`           | the group's last known committed log id |
//! | 0x04 | `RaftPurged(group)`              | the last purged log id                  |
//! | 0x05 | `RaftLog(group, index)`          | one log entry                           |
//! | 0x06 | `RaftLogFiles(group)`            | present: the group's entries are in     |
//! |      |                                  | segment files (`raft.log_files`)        |
//! | 0x10 | `Applied(group)`                 | applied log id, membership, epoch       |
//! | 0x11 | `(group, vshard)`                | no longer written, never read: older    |
//! |      |                                  | data dirs (and images made there) hold  |
//! |      |                                  | each vshard's applied (index, epoch), a |
//! |      |                                  | copy of the applied state's             |
//! | 0x12 | `Dedup(group, request_id)`       | the first result of a request id        |
//! | 0x13 | `DedupExpiry(group, stamp, "")`  | the request ids recorded at `stamp`     |
//! |      |                                  | (a list), for GC; older data dirs also  |
//! |      |                                  | hold one entry per id, with no value    |
//! | 0x14 | `Snapshot(group)`                | the group's current Raft snapshot       |
//! | 0x15 | `VersionGc(group, stamp, b"")`   | the keys given versions at `stamp` (a   |
//! |      |                                  | list): GC index; older data dirs also   |
//! |      |                                  | hold one entry per key, with no value   |
//! | 0x20 | `Data(user_key)`                 | no longer written: older data dirs and  |
//! |      |                                  | images held each key's latest record    |
//! |      |                                  | here (converted: `tree::legacy`)        |
//! | 0x21 | `Version(user_key, stamp, pos)`  | no longer written: older data dirs and  |
//! |      |                                  | images held every version of a key here |
//! |      |                                  | (converted: `tree::legacy`)             |
//! | 0x22 | `Current(user_key)`              | the key's newest version: stamp, pos    |
//! |      |                                  | and record or tombstone                 |
//! | 0x23 | `History(group, stamp, pos, key)`| the version of `key` that the write of  |
//! |      |                                  | txn `pos` of the epoch `stamp`          |
//! |      |                                  | superseded (stamp, pos, record or       |
//! |      |                                  | tombstone), in a column family of its   |
//! |      |                                  | own                                     |
//!
//! `Current` keys are the user key as is (nothing follows it), so the
//! current records of a range of user keys are one range of the keyspace,
//! whatever group owns it. `History` keys sort by group, then by the stamp
//! at which the version stopped being current: a group's history is written
//! in time order, and the part no read can reach any more is one range at
//! its front (see "Version GC" in `sequencer::apply`).

use arbor_storage::keycode::{DecodeError, Decoder, Encoder};

/// A key in Arbor's RocksDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    NodeMeta,
    RaftVote(u64),
    RaftCommitted(u64),
    RaftPurged(u64),
    RaftLog(u64, u64),
    RaftLogFiles(u64),
    Applied(u64),
    Dedup(u64, &'a str),
    DedupExpiry(u64, u64, &'a str),
    Snapshot(u64),
    VersionGc(u64, u64, &'a [u8]),
    Data(&'a [u8]),
    Version(&'a [u8], u64, u64),
    Current(&'a [u8]),
    History(u64, u64, u64, &'a [u8]),
}

const NODE_META: u8 = 0x01;
const RAFT_VOTE: u8 = 0x02;
const RAFT_COMMITTED: u8 = 0x03;
const RAFT_PURGED: u8 = 0x04;
const RAFT_LOG: u8 = 0x05;
const RAFT_LOG_FILES: u8 = 0x06;
const APPLIED: u8 = 0x10;
const WATERMARK: u8 = 0x11;
const DEDUP: u8 = 0x12;
const DEDUP_EXPIRY: u8 = 0x13;
const SNAPSHOT: u8 = 0x14;
const VERSION_GC: u8 = 0x15;
const DATA: u8 = 0x20;
const VERSION: u8 = 0x21;
const CURRENT: u8 = 0x22;
const HISTORY: u8 = 0x23;

impl Key<'_> {
    pub fn encode(&self) -> Vec<u8> {
        // Tag, at most three u64s, and the variable part (escapes aside).
        let variable = match *self {
            Key::Dedup(_, id) | Key::DedupExpiry(_, _, id) => Encoder::bytes_len(id.as_bytes()),
            Key::VersionGc(_, _, k) | Key::Version(k, _, _) | Key::History(_, _, _, k) => Encoder::bytes_len(k),
            Key::Data(k) | Key::Current(k) => k.len(),
            _ => 0,
        };
        let e = Encoder::with_capacity(1 + 3 * 8 + variable);
        match *self {
            Key::NodeMeta => e.u8(NODE_META),
            Key::RaftVote(g) => e.u8(RAFT_VOTE).u64(g),
            Key::RaftCommitted(g) => e.u8(RAFT_COMMITTED).u64(g),
            Key::RaftPurged(g) => e.u8(RAFT_PURGED).u64(g),
            Key::RaftLog(g, i) => e.u8(RAFT_LOG).u64(g).u64(i),
            Key::RaftLogFiles(g) => e.u8(RAFT_LOG_FILES).u64(g),
            Key::Applied(g) => e.u8(APPLIED).u64(g),
            Key::Dedup(g, id) => e.u8(DEDUP).u64(g).bytes(id.as_bytes()),
            Key::DedupExpiry(g, stamp, id) => e.u8(DEDUP_EXPIRY).u64(g).u64(stamp).bytes(id.as_bytes()),
            Key::Snapshot(g) => e.u8(SNAPSHOT).u64(g),
            Key::VersionGc(g, stamp, k) => e.u8(VERSION_GC).u64(g).u64(stamp).bytes(k),
            Key::Data(k) => e.u8(DATA).raw(k),
            Key::Version(k, stamp, pos) => e.u8(VERSION).bytes(k).u64(!stamp).u64(!pos),
            Key::Current(k) => e.u8(CURRENT).raw(k),
            Key::History(g, stamp, pos, k) => e.u8(HISTORY).u64(g).u64(stamp).u64(pos).bytes(k),
        }
        .finish()
    }
}

/// The `History` keys of every group, which the node's RocksDB keeps in a
/// column family of their own (`RocksOptions::own_column_families`): they
/// are written in time order and collected from the front, so their files
/// never overlap the rest and compactions move them rather than rewrite
/// them with every current record.
pub fn history_keys() -> arbor_storage::KeyRange {
    arbor_storage::KeyRange { start: vec![HISTORY], end: vec![HISTORY + 1] }
}

/// The keys of every group's log, which the node's RocksDB keeps in a
/// column family of their own (`RocksOptions::own_column_families`): they
/// are written in order and purged from the front, and apart from the state
/// they are neither compressed again nor rewritten by its compactions.
pub fn raft_log_keys() -> arbor_storage::KeyRange {
    arbor_storage::KeyRange {
        start: Encoder::new().u8(RAFT_LOG).finish(),
        end: Encoder::new().u8(RAFT_LOG + 1).finish(),
    }
}

/// The encoded prefix of every key of a group's log.
pub fn raft_log_prefix(group: u64) -> Vec<u8> {
    Encoder::new().u8(RAFT_LOG).u64(group).finish()
}

/// The log index of an encoded `RaftLog` key.
pub fn decode_raft_log_index(key: &[u8]) -> Result<u64, DecodeError> {
    let mut d = tagged(key, RAFT_LOG, "not a raft log key")?;
    d.u64()?;
    let index = d.u64()?;
    d.finish()?;
    Ok(index)
}

/// A decoder of `key` past its tag, which must be `tag` (else the error
/// says it is `not_it`).
fn tagged<'k>(key: &'k [u8], tag: u8, not_it: &'static str) -> Result<Decoder<'k>, DecodeError> {
    let mut d = Decoder::new(key);
    if d.u8()? != tag {
        return Err(DecodeError(not_it));
    }
    Ok(d)
}

/// The encoded prefix of every dedup-expiry key of a group.
pub fn dedup_expiry_prefix(group: u64) -> Vec<u8> {
    Encoder::new().u8(DEDUP_EXPIRY).u64(group).finish()
}

/// `(stamp, request_id)` of an encoded `DedupExpiry` key.
pub fn decode_dedup_expiry(key: &[u8]) -> Result<(u64, String), DecodeError> {
    let mut d = tagged(key, DEDUP_EXPIRY, "not a dedup expiry key")?;
    d.u64()?;
    let stamp = d.u64()?;
    let id = String::from_utf8(d.bytes()?).map_err(|_| DecodeError("request id is not UTF-8"))?;
    d.finish()?;
    Ok((stamp, id))
}

/// The prefix of every `Data` key.
pub fn data_prefix() -> Vec<u8> {
    vec![DATA]
}

/// The user key of an encoded `Data` key.
pub fn decode_data(key: &[u8]) -> Result<&[u8], DecodeError> {
    match key.split_first() {
        Some((&DATA, user)) => Ok(user),
        _ => Err(DecodeError("not a data key")),
    }
}

/// `[start, end)` of the `Current` keys of every user key in `[start, end)`
/// (an empty `end` is unbounded).
pub fn current_bounds(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lo = Key::Current(start).encode();
    let hi = if end.is_empty() { vec![CURRENT + 1] } else { Key::Current(end).encode() };
    (lo, hi)
}

/// The user key of an encoded `Current` key.
pub fn decode_current(key: &[u8]) -> Result<&[u8], DecodeError> {
    match key.split_first() {
        Some((&CURRENT, user)) => Ok(user),
        _ => Err(DecodeError("not a current-record key")),
    }
}

/// The encoded prefix of every `History` key of a group.
pub fn history_prefix(group: u64) -> Vec<u8> {
    Encoder::new().u8(HISTORY).u64(group).finish()
}

/// The first `History` key of `group` that a version superseded after
/// `stamp` has: the group's versions superseded at or before `stamp` are
/// the keys from [`history_prefix`] up to it.
pub fn history_after(group: u64, stamp: u64) -> Vec<u8> {
    match stamp.checked_add(1) {
        Some(next) => Encoder::new().u8(HISTORY).u64(group).u64(next).finish(),
        None => history_prefix(group + 1),
    }
}

/// `(stamp, pos, user key)` of an encoded `History` key.
pub fn decode_history(key: &[u8]) -> Result<(u64, u64, Vec<u8>), DecodeError> {
    let mut d = tagged(key, HISTORY, "not a history key")?;
    d.u64()?;
    let stamp = d.u64()?;
    let pos = d.u64()?;
    let user = d.bytes()?;
    d.finish()?;
    Ok((stamp, pos, user))
}

/// `[start, end)` of the `Version` keys of every user key in `[start, end)`
/// (an empty `end` is unbounded).
pub fn version_bounds(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lo = Encoder::new().u8(VERSION).bytes(start).finish();
    let hi = if end.is_empty() { vec![VERSION + 1] } else { Encoder::new().u8(VERSION).bytes(end).finish() };
    (lo, hi)
}

/// The encoded prefix of every version of `key` (and of no other key's:
/// the user key is escaped and terminated), so `prefix_end` of it is where
/// the next user key's versions start.
pub fn version_prefix(key: &[u8]) -> Vec<u8> {
    Encoder::new().u8(VERSION).bytes(key).finish()
}

/// `(user key, stamp, pos)` of an encoded `Version` key.
pub fn decode_version(key: &[u8]) -> Result<(Vec<u8>, u64, u64), DecodeError> {
    let mut d = tagged(key, VERSION, "not a version key")?;
    let user = d.bytes()?;
    let stamp = !d.u64()?;
    let pos = !d.u64()?;
    d.finish()?;
    Ok((user, stamp, pos))
}

/// The encoded prefix of every version-GC index key of a group.
pub fn version_gc_prefix(group: u64) -> Vec<u8> {
    Encoder::new().u8(VERSION_GC).u64(group).finish()
}

/// `(stamp, user key)` of an encoded `VersionGc` key.
pub fn decode_version_gc(key: &[u8]) -> Result<(u64, Vec<u8>), DecodeError> {
    let mut d = tagged(key, VERSION_GC, "not a version GC key")?;
    d.u64()?;
    let stamp = d.u64()?;
    let user = d.bytes()?;
    d.finish()?;
    Ok((stamp, user))
}

/// The encoded keys of every per-group kind that moves with a snapshot
/// (applied state, dedup table, GC index, the group's history, and the
/// watermarks older data dirs hold), as `[start, end)`.
pub fn group_state_ranges(group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    [APPLIED, WATERMARK, DEDUP, DEDUP_EXPIRY, VERSION_GC, HISTORY]
        .iter()
        .map(|&tag| (Encoder::new().u8(tag).u64(group).finish(), Encoder::new().u8(tag).u64(group + 1).finish()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys = vec![Key::RaftLog(2, 1), Key::RaftLog(1, 300), Key::RaftLog(1, 2), Key::RaftVote(1)];
        keys.sort_by_key(|k| k.encode());
        assert_eq!(keys, [Key::RaftVote(1), Key::RaftLog(1, 2), Key::RaftLog(1, 300), Key::RaftLog(2, 1)]);
        assert_eq!(decode_raft_log_index(&Key::RaftLog(9, 77).encode()), Ok(77));
        assert!(Key::RaftLog(9, 77).encode().starts_with(&raft_log_prefix(9)));
    }

    #[test]
    fn data_keys_keep_user_order_and_prefixes() {
        let a = Key::Data(b"/users/a").encode();
        let b = Key::Data(b"/users/b").encode();
        assert!(a < b);
        assert!(a.starts_with(&Key::Data(b"/users/").encode()));
        assert_eq!(decode_data(&a), Ok(&b"/users/a"[..]));
    }

    #[test]
    fn versions_sort_by_key_then_newest_first() {
        let mut keys = vec![
            Key::Version(b"/a", 5, 0),
            Key::Version(b"/a", 9, 1),
            Key::Version(b"/a", 9, 3),
            Key::Version(b"/a\0", 1, 0),
            Key::Version(b"/b", 1, 0),
        ];
        keys.reverse();
        keys.sort_by_key(|k| k.encode());
        assert_eq!(
            keys,
            [
                Key::Version(b"/a", 9, 3),
                Key::Version(b"/a", 9, 1),
                Key::Version(b"/a", 5, 0),
                Key::Version(b"/a\0", 1, 0),
                Key::Version(b"/b", 1, 0),
            ]
        );
        assert_eq!(decode_version(&Key::Version(b"/a", 9, 3).encode()), Ok((b"/a".to_vec(), 9, 3)));
        let (lo, hi) = version_bounds(b"/a", b"/b");
        for k in &keys[..4] {
            assert!((lo.clone()..hi.clone()).contains(&k.encode()));
        }
        assert!(keys[4].encode() >= hi);
        for (k, prefixed) in [(&keys[0], true), (&keys[2], true), (&keys[3], false), (&keys[4], false)] {
            assert_eq!(k.encode().starts_with(&version_prefix(b"/a")), prefixed, "{k:?}");
        }
        let next = arbor_storage::prefix_end(&version_prefix(b"/a")).unwrap();
        assert!(keys[2].encode() < next && next <= keys[3].encode(), "the next user key's versions start after");
        assert!(Key::Data(b"\xff\xff").encode() < version_bounds(b"", b"").0, "data and versions do not overlap");
    }

    #[test]
    fn current_keys_keep_user_order_and_history_keys_sort_by_group_then_time() {
        let (lo, hi) = current_bounds(b"/a", b"/b");
        for user in [&b"/a"[..], b"/a/x", b"/a\xff"] {
            let key = Key::Current(user).encode();
            assert!(lo <= key && key < hi, "{user:?}");
            assert_eq!(decode_current(&key), Ok(user));
        }
        assert!(Key::Current(b"/b").encode() >= hi);
        assert!(Key::Current(b"\xff\xff").encode() < current_bounds(b"", b"").1);
        assert!(Key::Version(b"\xff", 0, 0).encode() < lo, "versions of older data dirs sort before");

        let mut keys = vec![
            Key::History(2, 1, 0, b"/a"),
            Key::History(1, 9, 0, b"/a"),
            Key::History(1, 5, 3, b"/z"),
            Key::History(1, 5, 7, b"/a"),
        ];
        keys.sort_by_key(|k| k.encode());
        let order = [
            Key::History(1, 5, 3, b"/z"),
            Key::History(1, 5, 7, b"/a"),
            Key::History(1, 9, 0, b"/a"),
            Key::History(2, 1, 0, b"/a"),
        ];
        assert_eq!(keys, order, "by group, stamp and position, whatever the key");
        assert_eq!(decode_history(&Key::History(1, 9, 4, b"/k").encode()), Ok((9, 4, b"/k".to_vec())));
        // Group 1's history up to stamp 5 is the range before `history_after`.
        let after = history_after(1, 5);
        assert!(history_prefix(1) <= keys[0].encode() && keys[1].encode() < after && after <= keys[2].encode());
        assert_eq!(history_after(1, u64::MAX), history_prefix(2));
        let family = history_keys();
        assert!(family.start <= keys[0].encode() && keys[3].encode() < family.end);
    }

    #[test]
    fn dedup_expiry_round_trips() {
        let k = Key::DedupExpiry(3, 99, "req-1").encode();
        assert!(k.starts_with(&dedup_expiry_prefix(3)));
        assert_eq!(decode_dedup_expiry(&k), Ok((99, "req-1".to_string())));
    }
}
