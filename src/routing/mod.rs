//! The range catalog: the key space is split into ranges `[start, end)`,
//! each served by one Raft group. Pure: route keys and spans to groups.
//!
//! Invariants: ranges are sorted, contiguous and cover the whole key space
//! (the first starts at the empty key, the last has no end).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One range and the group that serves it. An empty `end` means "to the end
/// of the key space".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDesc {
    pub group: u64,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl RangeDesc {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// Whether `[start, end)` (empty `end` = unbounded) overlaps this range.
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        let below_our_end = self.end.is_empty() || start < self.end.as_slice();
        let above_our_start = end.is_empty() || end > self.start.as_slice();
        below_our_end && above_our_start
    }

    pub fn display(&self) -> String {
        let end =
            if self.end.is_empty() { "∞".to_string() } else { format!("{:?}", String::from_utf8_lossy(&self.end)) };
        format!("group {} [{:?}, {})", self.group, String::from_utf8_lossy(&self.start), end)
    }
}

/// A span of keys a request touches: one key, or `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span<'a> {
    Key(&'a [u8]),
    Range(&'a [u8], &'a [u8]),
}

/// The ranges of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    ranges: Vec<RangeDesc>,
}

impl Catalog {
    /// Ranges split at `splits` (sorted, distinct, non-empty), numbered from
    /// group 1.
    pub fn from_splits(splits: &[Vec<u8>]) -> Result<Self> {
        let mut sorted = splits.to_vec();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != splits.len() || sorted.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidArgument(
                "initial range split points must be distinct and non-empty".to_string(),
            ));
        }
        let mut bounds = vec![Vec::new()];
        bounds.extend(sorted);
        bounds.push(Vec::new());
        let ranges = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| RangeDesc { group: i as u64 + 1, start: w[0].clone(), end: w[1].clone() })
            .collect();
        Ok(Self { ranges })
    }

    pub fn ranges(&self) -> &[RangeDesc] {
        &self.ranges
    }

    pub fn range_of_group(&self, group: u64) -> Option<&RangeDesc> {
        self.ranges.iter().find(|r| r.group == group)
    }

    /// The range holding `key`.
    pub fn route(&self, key: &[u8]) -> Result<&RangeDesc> {
        self.ranges
            .iter()
            .find(|r| r.contains(key))
            .ok_or_else(|| Error::NoRange { key: String::from_utf8_lossy(key).into_owned() })
    }

    /// The one range holding every span, or `CrossRange` naming them all.
    pub fn route_spans(&self, spans: &[Span<'_>]) -> Result<&RangeDesc> {
        let mut hit: Vec<&RangeDesc> = Vec::new();
        for span in spans {
            let found: Vec<&RangeDesc> = match span {
                Span::Key(k) => vec![self.route(k)?],
                Span::Range(s, e) => self.ranges.iter().filter(|r| r.overlaps(s, e)).collect(),
            };
            for r in found {
                if !hit.iter().any(|h| h.group == r.group) {
                    hit.push(r);
                }
            }
        }
        match hit.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::InvalidArgument("the request touches no key".to_string())),
            many => Err(Error::CrossRange {
                count: many.len(),
                ranges: many.iter().map(|r| r.display()).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::from_splits(&[b"/m".to_vec(), b"/t".to_vec()]).unwrap()
    }

    #[test]
    fn splits_cover_the_key_space() {
        let c = catalog();
        let groups: Vec<_> = c.ranges().iter().map(|r| (r.group, r.start.clone(), r.end.clone())).collect();
        assert_eq!(
            groups,
            [(1, b"".to_vec(), b"/m".to_vec()), (2, b"/m".to_vec(), b"/t".to_vec()), (3, b"/t".to_vec(), vec![])]
        );
        assert_eq!(c.route(b"/a").unwrap().group, 1);
        assert_eq!(c.route(b"/m").unwrap().group, 2);
        assert_eq!(c.route(b"/zzz").unwrap().group, 3);
    }

    #[test]
    fn spans_within_one_range_route_there() {
        let c = catalog();
        let g = c.route_spans(&[Span::Key(b"/n/1"), Span::Range(b"/n/", b"/n0")]).unwrap();
        assert_eq!(g.group, 2);
    }

    #[test]
    fn spans_over_several_ranges_are_refused_with_names() {
        let c = catalog();
        let err = c.route_spans(&[Span::Key(b"/a"), Span::Key(b"/u")]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::CrossRange { count: 2, .. }), "{msg}");
        assert!(msg.contains("group 1") && msg.contains("group 3"), "{msg}");
        let err = c.route_spans(&[Span::Range(b"/a", b"")]).unwrap_err();
        assert!(matches!(err, Error::CrossRange { count: 3, .. }));
    }

    #[test]
    fn bad_splits_are_rejected() {
        assert!(Catalog::from_splits(&[b"/m".to_vec(), b"/m".to_vec()]).is_err());
        assert!(Catalog::from_splits(&[Vec::new()]).is_err());
        assert_eq!(Catalog::from_splits(&[]).unwrap().ranges().len(), 1);
    }
}
