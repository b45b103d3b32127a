//! The one conformance suite every [`Engine`] must pass. Each engine's tests
//! call [`run`] with a constructor of empty engines.

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use crate::engine::{Direction, Durability, Engine, ReadView, WriteBatch};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn collect(view: &dyn ReadView, start: Bound<&[u8]>, end: Bound<&[u8]>, direction: Direction) -> Pairs {
    let own = |b: Bound<&[u8]>| b.map(|s| s.to_vec());
    view.scan(own(start), own(end), direction).collect::<Result<_, _>>().expect("scan")
}

fn keys(pairs: &Pairs) -> Vec<&[u8]> {
    pairs.iter().map(|(k, _)| k.as_slice()).collect()
}

fn put_all<E: Engine>(engine: &E, pairs: &[(&[u8], &[u8])]) {
    let mut batch = WriteBatch::new();
    for (k, v) in pairs {
        batch.put(k.to_vec(), v.to_vec());
    }
    engine.write(batch, Durability::Sync).expect("write");
}

/// Runs every conformance check, each on a fresh engine from `new`.
pub fn run<E: Engine, F: Fn() -> E>(new: F) {
    point_ops(&new());
    batch_is_ordered(&new());
    scans_respect_bounds(&new());
    reverse_scans(&new());
    prefix_scans(&new());
    delete_range(&new());
    snapshots_are_isolated(&new());
    binary_keys_sort_bytewise(&new());
    approximate_sizes(&new());
}

fn point_ops<E: Engine>(e: &E) {
    assert_eq!(e.get(b"a").unwrap(), None);
    put_all(e, &[(b"a", b"1"), (b"empty", b"")]);
    assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(e.get(b"empty").unwrap(), Some(Vec::new()), "an empty value is a value");
    put_all(e, &[(b"a", b"2")]);
    assert_eq!(e.get(b"a").unwrap(), Some(b"2".to_vec()), "put overwrites");
    let mut b = WriteBatch::new();
    b.delete(b"a".to_vec());
    b.delete(b"missing".to_vec());
    e.write(b, Durability::Buffered).unwrap();
    assert_eq!(e.get(b"a").unwrap(), None);
    let mut b = WriteBatch::new();
    b.put(b"volatile".to_vec(), b"v".to_vec());
    e.write(b, Durability::Unlogged).unwrap();
    assert_eq!(e.get(b"volatile").unwrap(), Some(b"v".to_vec()), "volatile writes are visible at once");
    e.flush().unwrap();
}

fn batch_is_ordered<E: Engine>(e: &E) {
    let mut b = WriteBatch::new();
    b.put(b"k".to_vec(), b"1".to_vec());
    b.delete(b"k".to_vec());
    b.put(b"k".to_vec(), b"3".to_vec());
    b.put(b"j".to_vec(), b"x".to_vec());
    b.delete(b"j".to_vec());
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(e.get(b"k").unwrap(), Some(b"3".to_vec()), "the last op on a key wins");
    assert_eq!(e.get(b"j").unwrap(), None);
}

fn scans_respect_bounds<E: Engine>(e: &E) {
    put_all(e, &[(b"a", b""), (b"b", b""), (b"c", b""), (b"d", b"")]);
    let f = Direction::Forward;
    assert_eq!(keys(&collect(e, Unbounded, Unbounded, f)), [b"a", b"b", b"c", b"d"]);
    assert_eq!(keys(&collect(e, Included(b"b"), Excluded(b"d"), f)), [b"b", b"c"]);
    assert_eq!(keys(&collect(e, Excluded(b"b"), Included(b"d"), f)), [b"c", b"d"]);
    assert_eq!(keys(&collect(e, Included(b"bb"), Unbounded, f)), [b"c", b"d"]);
    assert!(collect(e, Included(b"c"), Excluded(b"c"), f).is_empty(), "empty range");
    assert!(collect(e, Included(b"d"), Excluded(b"a"), f).is_empty(), "inverted range");
}

fn reverse_scans<E: Engine>(e: &E) {
    put_all(e, &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]);
    let r = Direction::Reverse;
    assert_eq!(keys(&collect(e, Unbounded, Unbounded, r)), [b"c", b"b", b"a"]);
    assert_eq!(keys(&collect(e, Included(b"a"), Excluded(b"c"), r)), [b"b", b"a"]);
    assert_eq!(keys(&collect(e, Excluded(b"a"), Included(b"c"), r)), [b"c", b"b"]);
    let last = collect(e, Unbounded, Excluded(b"bz"), r);
    assert_eq!(last.first(), Some(&(b"b".to_vec(), b"2".to_vec())), "seek to last below a bound");
}

fn prefix_scans<E: Engine>(e: &E) {
    put_all(e, &[(b"/u", b""), (b"/u/", b""), (b"/u/a", b""), (b"/u/b/c", b""), (b"/v", b""), (b"\xff\xff", b"")]);
    let got: Pairs = e.scan_prefix(b"/u/").collect::<Result<_, _>>().unwrap();
    assert_eq!(keys(&got), [&b"/u/"[..], b"/u/a", b"/u/b/c"]);
    let got: Pairs = e.scan_prefix(b"\xff").collect::<Result<_, _>>().unwrap();
    assert_eq!(keys(&got), [b"\xff\xff"], "a prefix of 0xff bytes scans to the end");
}

fn delete_range<E: Engine>(e: &E) {
    put_all(e, &[(b"a", b""), (b"b", b""), (b"ba", b""), (b"c", b"")]);
    let mut b = WriteBatch::new();
    b.delete_range(b"b".to_vec(), b"c".to_vec());
    b.delete_range(b"z".to_vec(), b"a".to_vec()); // inverted: a no-op
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(keys(&collect(e, Unbounded, Unbounded, Direction::Forward)), [b"a", b"c"]);
    let mut b = WriteBatch::new();
    b.delete_range(b"a".to_vec(), b"b".to_vec());
    b.put(b"a".to_vec(), b"again".to_vec());
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(e.get(b"a").unwrap(), Some(b"again".to_vec()), "a put after a delete_range in one batch wins");
}

fn snapshots_are_isolated<E: Engine>(e: &E) {
    put_all(e, &[(b"a", b"old"), (b"b", b"old")]);
    let snap = e.snapshot();
    let mut b = WriteBatch::new();
    b.put(b"a".to_vec(), b"new".to_vec());
    b.delete(b"b".to_vec());
    b.put(b"c".to_vec(), b"new".to_vec());
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(snap.get(b"a").unwrap(), Some(b"old".to_vec()));
    assert_eq!(snap.get(b"b").unwrap(), Some(b"old".to_vec()));
    assert_eq!(snap.get(b"c").unwrap(), None);
    assert_eq!(keys(&collect(snap.as_ref(), Unbounded, Unbounded, Direction::Forward)), [b"a", b"b"]);
    assert_eq!(e.get(b"a").unwrap(), Some(b"new".to_vec()));
}

fn binary_keys_sort_bytewise<E: Engine>(e: &E) {
    put_all(e, &[(b"\x00", b""), (b"\x00\x00", b""), (b"\x01", b""), (b"\xff", b""), (b"", b"empty key")]);
    let got = collect(e, Unbounded, Unbounded, Direction::Forward);
    assert_eq!(keys(&got), [&b""[..], b"\x00", b"\x00\x00", b"\x01", b"\xff"]);
}

fn approximate_sizes<E: Engine>(e: &E) {
    // Incompressible values, so that an estimate from compressed files is
    // still of the order of the logical size.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut b = WriteBatch::new();
    let mut logical = 0u64;
    for i in 0..2000u32 {
        let key = format!("s/{i:04}").into_bytes();
        let value: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        logical += (key.len() + value.len()) as u64;
        b.put(key, value);
    }
    e.write(b, Durability::Sync).unwrap();
    e.flush().unwrap();
    let all = e.approximate_size(b"s/", b"s0").unwrap();
    assert!(all > logical / 4, "2000 keys of {logical} bytes in all are estimated at {all} bytes");
    assert!(e.approximate_size(b"s/0000", b"s/1000").unwrap() <= all, "a sub-range is no larger than the range");
    assert_eq!(e.approximate_size(b"t", b"u").unwrap(), 0, "a range without keys");
    assert_eq!(e.approximate_size(b"s0", b"s/").unwrap(), 0, "an inverted range");
    assert_eq!(e.approximate_size(b"s/", b"s/").unwrap(), 0, "an empty range");
}
