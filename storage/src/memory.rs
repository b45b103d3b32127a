//! [`Memory`]: an in-memory [`Engine`] over a `BTreeMap`, for tests and for
//! running the protocol cores without disk. Durability flags are accepted
//! and ignored (nothing survives the process).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use crate::engine::{BatchOp, Cursor, Direction, Durability, Engine, ReadView, Result, ScanIter, WriteBatch};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine. Snapshots are copy-on-write: a snapshot shares the
/// map until the next write clones it.
#[derive(Default)]
pub struct Memory {
    data: RwLock<Arc<Map>>,
}

impl Memory {
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Map> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn scan_map(map: Arc<Map>, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'static> {
    if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) = (&start, &end) {
        if s > e {
            return Box::new(std::iter::empty());
        }
    }
    let items: Vec<_> = map.range((start, end)).map(|(k, v)| Ok((k.clone(), v.clone()))).collect();
    match direction {
        Direction::Forward => Box::new(items.into_iter()),
        Direction::Reverse => Box::new(items.into_iter().rev()),
    }
}

/// A cursor over a map as it was when the cursor was made.
struct MapCursor {
    map: Arc<Map>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    at: Option<(Vec<u8>, Vec<u8>)>,
}

impl MapCursor {
    fn first_from(&mut self, from: Bound<&[u8]>) {
        let end = self.end.as_deref();
        self.at = self
            .map
            .range::<[u8], _>((from, Bound::Unbounded))
            .next()
            .filter(|(k, _)| end.is_none_or(|end| k.as_slice() < end))
            .map(|(k, v)| (k.clone(), v.clone()));
    }
}

impl Cursor for MapCursor {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let from = if target < self.start.as_slice() { self.start.clone() } else { target.to_vec() };
        self.first_from(Bound::Included(&from));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        if let Some((key, _)) = self.at.take() {
            self.first_from(Bound::Excluded(&key));
        }
        Ok(())
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.at.as_ref().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

fn map_cursor(map: Arc<Map>, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor> {
    Box::new(MapCursor { map, start, end, at: None })
}

impl ReadView for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.current().get(key).cloned())
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        scan_map(self.current(), start, end, direction)
    }

    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
        map_cursor(self.current(), start, end)
    }
}

impl Engine for Memory {
    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        let mut guard = self.data.write().unwrap_or_else(|e| e.into_inner());
        let map = Arc::make_mut(&mut guard);
        for op in batch.ops() {
            match op {
                BatchOp::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                BatchOp::Delete(k) => {
                    map.remove(k);
                }
                BatchOp::DeleteRange(start, end) => {
                    if start < end {
                        let doomed: Vec<_> = map.range(start.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        Box::new(MemorySnapshot(self.current()))
    }

    fn locate(&self, _key: &[u8]) -> String {
        "the in-memory engine".to_string()
    }

    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<u64> {
        if start >= end {
            return Ok(0);
        }
        let map = self.current();
        Ok(map.range(start.to_vec()..end.to_vec()).map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }
}

struct MemorySnapshot(Arc<Map>);

impl ReadView for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        scan_map(self.0.clone(), start, end, direction)
    }

    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
        map_cursor(self.0.clone(), start, end)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::conformance::run(super::Memory::new);
    }
}
