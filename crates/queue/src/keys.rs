//! Key layout of a sink's sled tree (storage v2). Integers are big-endian so ranges iterate in
//! id order. Values that can be large are split into parts of at most [`PART`] bytes under
//! `prefix id part(2)` keys (see [`crate::parts`]).
//!
//! | key | value |
//! |---|---|
//! | `#` | the sink's next id and epoch ([`Meta`](crate::codec::Meta), written by enqueues) |
//! | `$` | the sink's delivered / discarded totals (written by removals) |
//! | `%` | the first chunk id whose body is in a span tree (see [`crate::bodies`]); chunks below it keep theirs under `c` |
//! | `h` first-id(8) part(2) | a chunk's header: epoch, time, and per message its group and size |
//! | `c` first-id(8) part(2) | a chunk's body: the payloads of its messages, concatenated; in the chunk's span tree (`body/` start(8) sink), or here for chunks below `%` |
//! | `a` first-id(8) | a chunk's done bitmap (bit i = message first+i delivered, discarded or moved) |
//! | `s` id(8) part(2) | a failed message's state: group, epoch, time, deliver count, last error |
//! | `f` id(8) part(2) | a failed message's payload |
//! | `d` seq(8) part(2) | a discarded message, newest has the highest seq |
//! | `k` seq(8) part(2) | an idempotency record of one enqueue: its request key and answer, its message keys and their ids, expiry (see [`crate::idem`]) |
//! | `p` name | a source's position: how far a producer (e.g. a Postgres slot) has stored, written in the same batch as the messages it covers |

/// The key of the sink's next id and epoch.
pub const META: &[u8] = b"#";
/// The key of the sink's delivered / discarded totals.
pub const TOTALS: &[u8] = b"$";
/// The key of the first chunk id whose body is in a span tree.
pub const SPANS_FROM: &[u8] = b"%";
/// Chunk headers.
pub const HEAD: u8 = b'h';
/// Chunk bodies.
pub const BODY: u8 = b'c';
/// Chunk done bitmaps.
pub const DONE: u8 = b'a';
/// Failed messages' state.
pub const STATE: u8 = b's';
/// Failed messages' payloads.
pub const FAILED: u8 = b'f';
/// Discarded entries.
pub const DISCARDED: u8 = b'd';
/// Idempotency records, in acceptance order.
pub const IDEM: u8 = b'k';
/// Source positions, by source name.
pub const POSITION: u8 = b'p';

/// The key of the position of source `name`.
pub fn position(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(POSITION);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Largest value the queue writes. sled 0.34 writes a node larger than a quarter of its
/// segment to a separate blob file that its flush does not fsync. A leaf holds at most 17
/// entries, so with [`SEGMENT_SIZE`] (1 MiB: nodes up to 256 KiB stay in the log) values of
/// at most 12 KiB keep every node in the fsynced log. Data dirs created before session 7 use
/// 8 MiB segments and may hold 60 KiB parts; reads never assume a part size (a parted value
/// is read until its parts run out), so both layouts read the same.
pub const PART: usize = 12 * 1024;

/// Most payload bytes in one chunk (a chunk holds at least one message, whatever its size).
pub const CHUNK_BYTES: usize = 60 * 1024;

/// Bytes per sled value of a body in a span. sled 0.34 splits a leaf at 16 entries whatever
/// their size, rewrites a whole leaf when it consolidates or splits one, pulls a whole leaf
/// to read one entry, and keeps what it pulled until its LRU's queues of 64 accesses per
/// shard are applied. With 60 KiB parts a leaf was ~1 MiB; with 4 KiB parts it is 64 KiB:
/// 10k groups closed loop 19 µs of server CPU per message instead of 38–43, a 1M restart
/// drain 0.68 GB RSS instead of 1.36–1.42 (docs/BENCHMARKS.md, session 6). 8 KiB and
/// 16 KiB measured in between.
///
/// 8 bytes short of 4 KiB: sled keeps a value as one allocation of its bytes plus an 8-byte
/// reference count, so a 4,088-byte part is an allocation of exactly 4,096 bytes, which
/// mimalloc serves without padding; 4,096-byte parts ([`OLD_SPAN_PART`]) were allocations of
/// 4,104 bytes served from its 5,120-byte class, a fifth of every cached body wasted (a 1M
/// restart's peak RSS 352–380 MB in 7 of 8 runs instead of 384–422, docs/BENCHMARKS.md,
/// session 23).
pub const SPAN_PART: usize = 4 * 1024 - 8;

/// Part size of span trees written before session 23 (named with
/// [`crate::bodies::OLD_SPAN_PREFIX`]); they are read with it until they are dropped.
pub const OLD_SPAN_PART: usize = 4 * 1024;

/// sled segment size of a database created now (see [`PART`]); an existing one keeps the size
/// it was created with (sled refuses another). sled allocates one IO buffer of this size per
/// segment it writes: 8 MiB buffers held ~100 MB at peak under load and their page faults cost
/// ~15% of the queue's CPU (docs/BENCHMARKS.md, session 7).
pub const SEGMENT_SIZE: usize = 1024 * 1024;

/// The segment size of databases created before session 7.
pub const OLD_SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// `prefix` + the 8-byte id: the key of a bitmap, or the base of a parted value.
pub fn base(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The key of part `part` of the value stored under `base`.
pub fn part(base: &[u8; 9], part: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[..9].copy_from_slice(base);
    k[9..].copy_from_slice(&part.to_be_bytes());
    k
}

/// Splits a parted key into (prefix, id, part).
pub fn parse_part(key: &[u8]) -> Option<(u8, u64, u16)> {
    if key.len() != 11 {
        return None;
    }
    let id = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let part = u16::from_be_bytes(key[9..11].try_into().ok()?);
    Some((key[0], id, part))
}

/// The id of a 9-byte `prefix id` key.
pub fn parse_base(key: &[u8]) -> Option<u64> {
    (key.len() == 9).then(|| u64::from_be_bytes(key[1..9].try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parted_keys_sort_by_id_then_part_and_round_trip() {
        let a = part(&base(BODY, 255), 1);
        let b = part(&base(BODY, 256), 0);
        assert!(a < b);
        assert_eq!(parse_part(&a), Some((BODY, 255, 1)));
        assert_eq!(parse_base(&base(DONE, 7)), Some(7));
    }
}
