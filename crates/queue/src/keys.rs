//! Key layout of a sink's sled tree. Integers are big-endian so ranges iterate in id order.
//!
//! | key | value |
//! |---|---|
//! | `#` | the sink's [`Meta`](crate::codec::Meta) (next id and counters) |
//! | `d` id-seq(8) | a discarded message |
//! | `g` len(4) group id(8) | empty: the group index, one entry per queued message |
//! | `m` id(8) | the message record (group, state, payload) |

use crate::MessageId;

/// The key of the sink's meta record.
pub const META: &[u8] = b"#";
/// Prefix of discarded entries.
pub const DISCARDED: u8 = b'd';
/// Prefix of the group index.
pub const GROUP: u8 = b'g';
/// Prefix of message records.
pub const MESSAGE: u8 = b'm';

/// The key of message `id`.
pub fn message(id: MessageId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = MESSAGE;
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// The id of a message key, if it is one.
pub fn message_id(key: &[u8]) -> Option<MessageId> {
    match key {
        [MESSAGE, rest @ ..] => Some(MessageId(u64::from_be_bytes(rest.try_into().ok()?))),
        _ => None,
    }
}

/// The prefix shared by every index entry of one group (length-prefixed, so no group's prefix
/// is a prefix of another's).
pub fn group_prefix(group: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 4 + group.len() + 8);
    k.push(GROUP);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k
}

/// The index entry of message `id` in `group`.
pub fn group_entry(group: &[u8], id: MessageId) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// Splits an index entry into (group bytes, id).
pub fn parse_group_entry(key: &[u8]) -> Option<(&[u8], MessageId)> {
    let rest = key.strip_prefix(&[GROUP])?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let group = rest.get(4..4 + len)?;
    let id = rest.get(4 + len..)?;
    Some((group, MessageId(u64::from_be_bytes(id.try_into().ok()?))))
}

/// A key above every index entry of the group with this prefix and below the next group's.
pub fn after_group(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&[0xFF; 9]);
    k
}

/// The key of discarded entry number `seq`.
pub fn discarded(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = DISCARDED;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_entries_round_trip_and_sort_by_id() {
        let a = group_entry(b"ka", MessageId(2));
        let b = group_entry(b"ka", MessageId(256));
        assert!(a < b);
        assert_eq!(parse_group_entry(&b), Some((&b"ka"[..], MessageId(256))));
        // A longer group sharing a textual prefix is not inside the shorter group's range.
        let longer = group_entry(b"kab", MessageId(1));
        assert!(!longer.starts_with(&group_prefix(b"ka")));
        assert!(after_group(&group_prefix(b"ka")) > b);
        assert_eq!(message_id(&message(MessageId(7))), Some(MessageId(7)));
        assert!(message(MessageId(255)) < message(MessageId(256)));
    }
}
