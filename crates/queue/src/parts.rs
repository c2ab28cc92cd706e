//! Values split into parts of at most [`PART`](crate::keys::PART) bytes, so that no sled node
//! ever becomes a blob file (see [`keys::PART`](crate::keys::PART)).

use bytes::Bytes;
use sled::{Batch, Tree};

use crate::keys::{self, PART};

/// How many parts a value of `len` bytes takes (at least one).
pub fn count(len: usize) -> u16 {
    len.div_ceil(PART).max(1) as u16
}

/// Adds the parts of `value` under `base` to `batch`; removes parts beyond them that an older,
/// longer value under the same base had (`old_parts`). Returns the number of parts.
pub fn put(batch: &mut Batch, base: &[u8; 9], value: &[u8], old_parts: u16) -> u16 {
    let n = count(value.len());
    if value.is_empty() {
        batch.insert(&keys::part(base, 0), &[][..]);
    }
    for (i, piece) in value.chunks(PART).enumerate() {
        batch.insert(&keys::part(base, i as u16), piece);
    }
    for i in n..old_parts {
        batch.remove(&keys::part(base, i));
    }
    n
}

/// Removes the `parts` parts under `base`.
pub fn remove(batch: &mut Batch, base: &[u8; 9], parts: u16) {
    for i in 0..parts.max(1) {
        batch.remove(&keys::part(base, i));
    }
}

/// Reads the value under `base` (`None` if absent): one get per part; a one-part value is
/// shared with sled's page, not copied.
pub fn get(tree: &Tree, base: &[u8; 9], parts: u16) -> sled::Result<Option<Bytes>> {
    let first = match tree.get(keys::part(base, 0))? {
        Some(v) => v,
        None => return Ok(None),
    };
    if parts <= 1 {
        return Ok(Some(Bytes::from_owner(first)));
    }
    let mut out = Vec::with_capacity(parts as usize * PART);
    out.extend_from_slice(&first);
    for i in 1..parts {
        match tree.get(keys::part(base, i))? {
            Some(v) => out.extend_from_slice(&v),
            None => break,
        }
    }
    Ok(Some(Bytes::from(out)))
}

/// Walks every parted value with `prefix`, in id order, joining its parts: `(id, parts, value)`.
pub fn scan(
    tree: &Tree,
    prefix: u8,
) -> impl Iterator<Item = Result<(u64, u16, Vec<u8>), ScanError>> + '_ {
    let mut iter = tree.scan_prefix([prefix]).peekable();
    std::iter::from_fn(move || {
        let (key, value) = match iter.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(ScanError::Storage(e))),
        };
        let Some((_, id, 0)) = keys::parse_part(&key) else {
            return Some(Err(ScanError::Corrupt));
        };
        let mut out = value.to_vec();
        let mut parts = 1u16;
        while let Some(Ok((next, _))) = iter.peek() {
            match keys::parse_part(next) {
                Some((_, nid, p)) if nid == id && p == parts => {}
                _ => break,
            }
            let (_, v) = iter.next().expect("peeked").expect("peeked ok");
            out.extend_from_slice(&v);
            parts += 1;
        }
        Some(Ok((id, parts, out)))
    })
}

/// Why a scan stopped.
pub enum ScanError {
    Storage(sled::Error),
    Corrupt,
}

/// Every parted value with `prefix` as `(id, parts)`, without joining values.
pub fn ids(tree: &Tree, prefix: u8) -> sled::Result<Vec<(u64, u16)>> {
    let mut out: Vec<(u64, u16)> = Vec::new();
    for kv in tree.scan_prefix([prefix]) {
        let (key, _) = kv?;
        if let Some((_, id, _)) = keys::parse_part(&key) {
            match out.last_mut() {
                Some((last, n)) if *last == id => *n += 1,
                _ => out.push((id, 1)),
            }
        }
    }
    Ok(out)
}
