//! A chunk body in memory as the sled values it is stored in, shared with sled, not copied.
//!
//! Why: the payload cache used to hold a contiguous copy of each body, while sled held the
//! same bytes as the values of the leaves it had just written or pulled (sled 0.34 keeps what
//! it pulled until its LRU gets round to it). Every cached body was in memory twice, and each
//! read copied ~60 KiB. A sled value ([`sled::IVec`]) is an allocation of its own, exactly its
//! bytes, so holding one pins nothing else: the cache's byte count stays true.

use bytes::Bytes;
use sled::IVec;

/// A body as its values, in order; every value but the last is full.
#[derive(Debug)]
pub struct SharedBody {
    values: Vec<IVec>,
    len: usize,
}

impl SharedBody {
    /// The body made of `values`, in order.
    pub fn new(values: Vec<IVec>) -> SharedBody {
        let len = values.iter().map(|v| v.len()).sum();
        SharedBody { values, len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Its values, in order.
    pub fn values(&self) -> &[IVec] {
        &self.values
    }

    /// A copy of bytes `off .. off + len` (a message's payload: a copy, so that delivery
    /// holding it pins no part of the body); `None` when the body is shorter.
    pub fn copy(&self, off: usize, len: usize) -> Option<Bytes> {
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        let mut at = 0; // body offset of the value in hand
        for v in &self.values {
            if at >= end {
                break;
            }
            at = copy_part(&mut out, v, at, off, end);
        }
        Some(Bytes::from(out))
    }

    /// The whole body in one buffer.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for v in &self.values {
            out.extend_from_slice(v);
        }
        out
    }
}

/// Appends to `out` what `value`, which starts at body offset `at`, holds of body bytes
/// `off .. end`; returns the body offset after `value`. The one slicing rule of every read
/// that walks a body's values (the cache's copies, `Bodies::read_range`).
pub fn copy_part(out: &mut Vec<u8>, value: &[u8], at: usize, off: usize, end: usize) -> usize {
    let next = at + value.len();
    let (from, to) = (off.max(at), end.min(next));
    if from < to {
        out.extend_from_slice(&value[from - at..to - at]);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_copied_across_values_and_out_of_range_is_none() {
        let body = SharedBody::new(vec![
            IVec::from(&b"abcd"[..]),
            IVec::from(&b"efgh"[..]),
            IVec::from(&b"ij"[..]),
        ]);
        assert_eq!(body.len(), 10);
        assert_eq!(body.copy(0, 4).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(body.copy(3, 6).as_deref(), Some(&b"defghi"[..]));
        assert_eq!(body.copy(8, 2).as_deref(), Some(&b"ij"[..]));
        assert_eq!(body.copy(10, 0).as_deref(), Some(&b""[..]));
        assert_eq!(body.copy(9, 2), None);
        assert_eq!(body.copy(4, 4).as_deref(), Some(&b"efgh"[..]));
        assert_eq!(body.copy(7, 3).as_deref(), Some(&b"hij"[..]));
        assert_eq!(body.copy(usize::MAX, 2), None);
        assert_eq!(body.to_vec(), b"abcdefghij");
    }

    #[test]
    fn every_range_of_every_layout_is_its_bytes() {
        let layouts: [&[usize]; 6] = [&[], &[5], &[4, 4, 2], &[4, 4, 6], &[3, 3, 3], &[2, 4, 1]];
        for sizes in layouts {
            let mut next = 0u8;
            let values: Vec<IVec> = sizes
                .iter()
                .map(|&n| {
                    let v: Vec<u8> = (0..n)
                        .map(|_| {
                            next += 1;
                            next
                        })
                        .collect();
                    IVec::from(v)
                })
                .collect();
            let body = SharedBody::new(values);
            let whole = body.to_vec();
            for off in 0..=whole.len() + 1 {
                for len in 0..=whole.len() + 1 {
                    let expected = whole.get(off..off + len).map(<[u8]>::to_vec);
                    assert_eq!(
                        body.copy(off, len).map(|b| b.to_vec()),
                        expected,
                        "{sizes:?} {off} {len}"
                    );
                }
            }
        }
    }
}
