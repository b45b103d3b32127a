//! [`Merged`]: a sorted base stream with a sorted overlay of pending writes
//! on top (`None` = deleted), yielding the combined live records in order.

use std::iter::Peekable;

use crate::error::Result;
use crate::tree::Record;

pub struct Merged<B, O>
where
    B: Iterator<Item = Result<(Vec<u8>, Record)>>,
    O: Iterator<Item = (Vec<u8>, Option<Record>)>,
{
    base: Peekable<B>,
    overlay: Peekable<O>,
}

impl<B, O> Merged<B, O>
where
    B: Iterator<Item = Result<(Vec<u8>, Record)>>,
    O: Iterator<Item = (Vec<u8>, Option<Record>)>,
{
    pub fn new(base: B, overlay: O) -> Self {
        Self { base: base.peekable(), overlay: overlay.peekable() }
    }
}

impl<B, O> Iterator for Merged<B, O>
where
    B: Iterator<Item = Result<(Vec<u8>, Record)>>,
    O: Iterator<Item = (Vec<u8>, Option<Record>)>,
{
    type Item = Result<(Vec<u8>, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Which stream holds the smallest key (the overlay wins ties)?
            let from_overlay = match (self.base.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(_), None) | (Some(Err(_)), _) => false,
                (None, Some(_)) => true,
                (Some(Ok((bk, _))), Some((ok, _))) => {
                    if ok == bk {
                        // The base record is shadowed by the overlay's.
                        self.base.next();
                        true
                    } else {
                        ok < bk
                    }
                }
            };
            if !from_overlay {
                return self.base.next();
            }
            if let Some((k, Some(r))) = self.overlay.next() {
                return Some(Ok((k, r)));
            }
            // A deletion: skip it and look again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str) -> Record {
        Record { value: v.as_bytes().to_vec().into(), version: 1, create_stamp: 0, mod_stamp: 0 }
    }

    #[test]
    fn overlay_shadows_inserts_and_deletes() {
        let base =
            vec![("a", "1"), ("b", "1"), ("d", "1")].into_iter().map(|(k, v)| Ok((k.as_bytes().to_vec(), rec(v))));
        let overlay = vec![("a", None), ("b", Some("2")), ("c", Some("2")), ("e", None)]
            .into_iter()
            .map(|(k, v): (&str, Option<&str>)| (k.as_bytes().to_vec(), v.map(rec)));
        let got: Vec<_> = Merged::new(base, overlay)
            .map(|r| r.map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v.value.to_vec()).unwrap())))
            .collect::<Result<_>>()
            .unwrap();
        let want: Vec<_> =
            [("b", "2"), ("c", "2"), ("d", "1")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }
}
