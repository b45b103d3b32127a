//! The one conformance suite every [`Engine`] must pass. Each engine's tests
//! call [`run`] with a constructor of empty engines.

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use crate::engine::{Cursor, Direction, Durability, Engine, ReadView, WriteBatch};

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
    cursors_seek_and_step(&new());
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

fn at(cursor: &dyn Cursor) -> Option<String> {
    cursor.current().map(|(k, v)| {
        assert_eq!(v, [b"v-", k].concat(), "the value of {}", String::from_utf8_lossy(k));
        String::from_utf8_lossy(k).into_owned()
    })
}

fn cursors_seek_and_step<E: Engine>(e: &E) {
    let names: Vec<String> = (0..20).map(|i| format!("s/{i:02}")).chain(["a", "b1", "z"].map(String::from)).collect();
    let mut b = WriteBatch::new();
    for k in &names {
        b.put(k.as_bytes().to_vec(), [b"v-", k.as_bytes()].concat());
    }
    e.write(b, Durability::Sync).unwrap();

    let mut c = e.cursor(b"s/03".to_vec(), Some(b"s/17".to_vec()));
    assert_eq!(at(c.as_ref()), None, "placed by its first seek");
    c.seek(b"").unwrap();
    assert_eq!(at(c.as_ref()).as_deref(), Some("s/03"), "a seek below the start lands on it");
    let mut stepped = Vec::new();
    while let Some(k) = at(c.as_ref()) {
        stepped.push(k);
        c.next().unwrap();
    }
    let want: Vec<String> = (3..17).map(|i| format!("s/{i:02}")).collect();
    assert_eq!(stepped, want, "next steps through every key of the range, in order");
    c.next().unwrap();
    assert_eq!(at(c.as_ref()), None, "past the end it stays there");
    c.seek(b"s/10").unwrap();
    assert_eq!(at(c.as_ref()).as_deref(), Some("s/10"), "a seek after the end");
    c.seek(b"s/045").unwrap();
    assert_eq!(at(c.as_ref()).as_deref(), Some("s/05"), "a seek backwards, between keys");
    c.seek(b"s/149").unwrap();
    assert_eq!(at(c.as_ref()).as_deref(), Some("s/15"));
    c.seek(b"s/17").unwrap();
    assert_eq!(at(c.as_ref()), None, "the end is excluded");

    let mut all = e.cursor(Vec::new(), None);
    all.seek(b"b").unwrap();
    assert_eq!(at(all.as_ref()).as_deref(), Some("b1"));
    all.next().unwrap();
    assert_eq!(at(all.as_ref()).as_deref(), Some("s/00"));
    all.seek(b"y").unwrap();
    assert_eq!(at(all.as_ref()).as_deref(), Some("z"));
    all.next().unwrap();
    assert_eq!(at(all.as_ref()), None);

    let mut empty = e.cursor(b"s/05".to_vec(), Some(b"s/05".to_vec()));
    empty.seek(b"s/05").unwrap();
    assert_eq!(at(empty.as_ref()), None, "an empty range has no keys");

    let snap = e.snapshot();
    let mut b = WriteBatch::new();
    b.put(b"s/045".to_vec(), b"v-s/045".to_vec());
    b.delete(b"s/05".to_vec());
    e.write(b, Durability::Sync).unwrap();
    let mut old = snap.cursor(b"s/".to_vec(), Some(b"s/99".to_vec()));
    old.seek(b"s/045").unwrap();
    assert_eq!(at(old.as_ref()).as_deref(), Some("s/05"), "a snapshot's cursor sees the keys of its time");
    let mut now = e.cursor(b"s/".to_vec(), Some(b"s/99".to_vec()));
    now.seek(b"s/04").unwrap();
    now.next().unwrap();
    assert_eq!(at(now.as_ref()).as_deref(), Some("s/045"));
    now.next().unwrap();
    assert_eq!(at(now.as_ref()).as_deref(), Some("s/06"), "a deleted key is gone");
}
