//! Version orders inferred from reads. Appended elements are unique, so a read `[1 2 3]` of
//! a key reveals the first three versions of that key. All distinct non-empty reads of a key,
//! sorted by length, must each be a prefix of the next; the longest read (without
//! duplicates) is taken as the key's version order.
//! Limits: appends that were never read have no known position (callers place them after
//! the longest read, as Elle does).

use super::txn::{Elem, Key, Mop, Txn};
use crate::hash::{FxHashMap, FxHashSet};

/// Distinct non-empty reads per key, sorted by length (stable).
pub fn sorted_values<'a>(txns: impl Iterator<Item = &'a Txn>) -> FxHashMap<Key, Vec<Vec<Elem>>> {
    let mut seen: FxHashMap<Key, FxHashSet<&'a [Elem]>> = FxHashMap::default();
    let mut out: FxHashMap<Key, Vec<Vec<Elem>>> = FxHashMap::default();
    for t in txns {
        for m in &t.mops {
            if let Mop::Read(k, Some(v)) = m {
                if !v.is_empty() && seen.entry(*k).or_default().insert(v.as_slice()) {
                    out.entry(*k).or_default().push(v.clone());
                }
            }
        }
    }
    for values in out.values_mut() {
        values.sort_by_key(Vec::len);
    }
    out
}

/// `true` if `a` is a prefix of `b`.
pub fn is_prefix(a: &[Elem], b: &[Elem]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// The inferred version order of each key: elements in order, and their positions.
#[derive(Debug, Default, Clone)]
pub struct AppendIndex {
    /// key -> elements in version order.
    pub values: FxHashMap<Key, Vec<Elem>>,
    /// (key, element) -> position in `values[key]`.
    pub position: FxHashMap<(Key, Elem), usize>,
}

/// What came just before an append in a key's version order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prev {
    /// The initial, empty state.
    Init,
    /// The version ending with this element.
    Elem(Elem),
}

impl AppendIndex {
    /// Builds the index from [`sorted_values`] (longest read of each key, deduplicated).
    pub fn new(sorted: &FxHashMap<Key, Vec<Vec<Elem>>>) -> AppendIndex {
        let mut idx = AppendIndex::default();
        for (k, values) in sorted {
            let Some(longest) = values.last() else { continue };
            let mut seen = FxHashSet::default();
            let order: Vec<Elem> = longest.iter().copied().filter(|e| seen.insert(*e)).collect();
            for (i, e) in order.iter().enumerate() {
                idx.position.insert((*k, *e), i);
            }
            idx.values.insert(*k, order);
        }
        idx
    }

    /// The version an append of `e` to `k` was applied to: its predecessor in the order,
    /// or (for an append never read) the last known version.
    pub fn previous(&self, k: Key, e: Elem) -> Prev {
        let values = self.values.get(&k);
        match self.position.get(&(k, e)) {
            Some(0) => Prev::Init,
            Some(&i) => Prev::Elem(values.expect("indexed key")[i - 1]),
            None => values.and_then(|v| v.last()).map_or(Prev::Init, |e| Prev::Elem(*e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpType, Process};

    fn txn(mops: Vec<Mop>) -> Txn {
        Txn {
            kind: OpType::Ok,
            process: Process::Client(0),
            invoke: None,
            completion: None,
            index: 0,
            invoke_index: None,
            mops,
        }
    }

    #[test]
    fn orders_and_predecessors() {
        let txns = [
            txn(vec![Mop::Read(0, Some(vec![5, 6, 7])), Mop::Read(1, Some(vec![]))]),
            txn(vec![Mop::Read(0, Some(vec![5])), Mop::Read(0, Some(vec![5, 6, 7]))]),
        ];
        let sorted = sorted_values(txns.iter());
        assert_eq!(sorted[&0], vec![vec![5], vec![5, 6, 7]]);
        assert!(!sorted.contains_key(&1));
        let idx = AppendIndex::new(&sorted);
        assert_eq!(idx.previous(0, 5), Prev::Init);
        assert_eq!(idx.previous(0, 7), Prev::Elem(6));
        assert_eq!(idx.previous(0, 99), Prev::Elem(7), "unread appends come last");
        assert_eq!(idx.previous(3, 1), Prev::Init);
        assert!(is_prefix(&[1, 2], &[1, 2, 3]) && !is_prefix(&[1, 3], &[1, 2, 3]));
    }
}
