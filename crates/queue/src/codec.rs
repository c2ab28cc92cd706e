//! Binary encoding of storage v2's values (see [`crate::keys`]). Hand-written, not JSON:
//! enqueue writes a chunk header per ~60 KiB of messages and acks write small bitmaps, so the
//! formats are fixed little headers and payloads stored as they are.

use s2sink_core::{LastError, UnixMillis};

use crate::{DeliveryState, GroupRef};

const META_V2: u8 = 2;
const HEAD_V1: u8 = 1;
const RECORD_V1: u8 = 1;
const HAS_NVU: u8 = 1;
const HAS_ATTEMPT: u8 = 2;
const HAS_ERROR: u8 = 4;

/// A cursor over a byte slice that fails softly on truncation.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The sink's persistent counters and id source, rewritten in every batch that changes them.
/// Pending and failing counts are not stored: they are rebuilt from the chunks on open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// The next id to hand out (ids below it are never reused by this data directory).
    pub next_id: u64,
    /// The epoch of the queue currently open (see [`DeliveryId`](crate::DeliveryId)).
    pub epoch: u64,
    /// Removed as delivered, ever.
    pub delivered: u64,
    /// Discarded, ever; also the sequence number of the next discarded entry.
    pub discarded: u64,
}

impl Meta {
    /// A new sink's meta: ids start at 1.
    pub fn new(epoch: u64) -> Meta {
        Meta {
            next_id: 1,
            epoch,
            ..Meta::default()
        }
    }

    /// The id part (`#`): written by enqueues.
    pub fn encode_ids(&self) -> [u8; 17] {
        encode_pair(self.next_id, self.epoch)
    }

    /// The totals part (`$`): written by removals. Kept apart from the ids so that an enqueue
    /// and an ack applied concurrently never overwrite each other's figures.
    pub fn encode_totals(&self) -> [u8; 17] {
        encode_pair(self.delivered, self.discarded)
    }

    /// Reads both parts (either may be missing in a new sink).
    pub fn decode(ids: Option<&[u8]>, totals: Option<&[u8]>) -> Option<Meta> {
        let (next_id, epoch) = match ids {
            Some(b) => decode_pair(b)?,
            None => (1, 0),
        };
        let (delivered, discarded) = match totals {
            Some(b) => decode_pair(b)?,
            None => (0, 0),
        };
        Some(Meta {
            next_id,
            epoch,
            delivered,
            discarded,
        })
    }
}

fn encode_pair(a: u64, b: u64) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = META_V2;
    out[1..9].copy_from_slice(&a.to_be_bytes());
    out[9..17].copy_from_slice(&b.to_be_bytes());
    out
}

fn decode_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader(bytes);
    if r.u8()? != META_V2 || bytes.len() != 17 {
        return None;
    }
    Some((r.u64()?, r.u64()?))
}

/// A chunk's header: who accepted it, when, and each message's group and payload size (the
/// payloads themselves are the body, in the same order).
/// Borrows the groups from the encoded bytes: rebuilding the index of 1M messages would
/// otherwise allocate 1M group copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHead<'a> {
    pub epoch: u64,
    pub enqueued_at: UnixMillis,
    /// Per message: encoded group ([`GroupRef::encode`]) and payload length.
    pub entries: Vec<(&'a [u8], u32)>,
}

/// Encodes a chunk header from its messages' encoded groups and payload lengths.
pub fn encode_head<'a>(
    epoch: u64,
    enqueued_at: UnixMillis,
    entries: impl ExactSizeIterator<Item = (&'a [u8], u32)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + entries.len() * 40);
    out.push(HEAD_V1);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&enqueued_at.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (group, len) in entries {
        out.extend_from_slice(&(group.len() as u32).to_be_bytes());
        out.extend_from_slice(group);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

/// Decodes a chunk header; `None` if the bytes are not one.
pub fn decode_head(bytes: &[u8]) -> Option<ChunkHead<'_>> {
    let mut r = Reader(bytes);
    if r.u8()? != HEAD_V1 {
        return None;
    }
    let epoch = r.u64()?;
    let enqueued_at = r.u64()?;
    let n = r.u32()? as usize;
    let mut entries = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let glen = r.u32()? as usize;
        let group = r.take(glen)?;
        entries.push((group, r.u32()?));
    }
    r.0.is_empty().then_some(ChunkHead {
        epoch,
        enqueued_at,
        entries,
    })
}

/// A message outside a chunk (failed or discarded): everything but its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub epoch: u64,
    pub enqueued_at: UnixMillis,
    pub group: GroupRef,
    pub state: DeliveryState,
    /// The payload's length (the payload is stored beside or after the record).
    pub payload_len: u32,
}

/// Encodes a record, then `payload` (empty when the payload is stored under its own key).
pub fn encode_record(r: &Record, payload: &[u8]) -> Vec<u8> {
    let state = &r.state;
    let error = state
        .last_error
        .as_ref()
        .map(|e| serde_json::to_vec(e).expect("LastError serializes"));
    let group = r.group.encode();
    let mut out = Vec::with_capacity(
        48 + group.len() + error.as_ref().map_or(0, |e| e.len() + 4) + payload.len(),
    );
    let mut flags = 0;
    if state.not_visible_until.is_some() {
        flags |= HAS_NVU;
    }
    if state.last_attempt_at.is_some() {
        flags |= HAS_ATTEMPT;
    }
    if error.is_some() {
        flags |= HAS_ERROR;
    }
    out.push(RECORD_V1);
    out.push(flags);
    out.extend_from_slice(&r.epoch.to_be_bytes());
    out.extend_from_slice(&r.enqueued_at.to_be_bytes());
    out.extend_from_slice(&state.deliver_count.to_be_bytes());
    if let Some(t) = state.not_visible_until {
        out.extend_from_slice(&t.to_be_bytes());
    }
    if let Some(t) = state.last_attempt_at {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out.extend_from_slice(&(group.len() as u32).to_be_bytes());
    out.extend_from_slice(&group);
    if let Some(e) = &error {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&r.payload_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads what v1 and v2 records share after the acceptance time: deliver count, optional
/// backoff end and attempt time (by `flags`), group, optional last error.
pub fn read_state(r: &mut Reader<'_>, flags: u8) -> Option<(DeliveryState, GroupRef)> {
    let deliver_count = r.u32()?;
    let not_visible_until = if flags & HAS_NVU != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let last_attempt_at = if flags & HAS_ATTEMPT != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let glen = r.u32()? as usize;
    let group = GroupRef::decode(r.take(glen)?)?;
    let last_error: Option<LastError> = if flags & HAS_ERROR != 0 {
        let elen = r.u32()? as usize;
        Some(serde_json::from_slice(r.take(elen)?).ok()?)
    } else {
        None
    };
    Some((
        DeliveryState {
            deliver_count,
            last_error,
            not_visible_until,
            last_attempt_at,
        },
        group,
    ))
}

/// Decodes a record and returns it with the bytes after it (the payload, or nothing).
pub fn decode_record(bytes: &[u8]) -> Option<(Record, &[u8])> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_V1 {
        return None;
    }
    let flags = r.u8()?;
    let epoch = r.u64()?;
    let enqueued_at = r.u64()?;
    let (state, group) = read_state(&mut r, flags)?;
    let payload_len = r.u32()?;
    Some((
        Record {
            epoch,
            enqueued_at,
            group,
            state,
            payload_len,
        },
        r.0,
    ))
}

/// Encodes a discarded entry: when, which id, then the record with its payload.
pub fn encode_discarded(at: UnixMillis, id: u64, record: &Record, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 64 + payload.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&encode_record(record, payload));
    out
}

/// Decodes a discarded entry into (when, id, record, payload).
pub fn decode_discarded(bytes: &[u8]) -> Option<(UnixMillis, u64, Record, &[u8])> {
    let mut r = Reader(bytes);
    let at = r.u64()?;
    let id = r.u64()?;
    let (record, payload) = decode_record(r.0)?;
    Some((at, id, record, payload))
}

/// Encodes a done bitmap.
pub fn encode_bitmap(bits: &[u64]) -> Vec<u8> {
    bits.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Decodes a done bitmap of a chunk with `count` messages.
pub fn decode_bitmap(bytes: &[u8], count: usize) -> Option<Vec<u64>> {
    let words = count.div_ceil(64);
    if bytes.len() != words * 8 {
        return None;
    }
    Some(
        bytes
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_core::{ErrorClass, GroupKey};

    #[test]
    fn values_round_trip() {
        let g = GroupRef::from(GroupKey("public.t/1".into()));
        let head = encode_head(
            7,
            9,
            [(&g.encode()[..], 3u32), (&b"s\0\0\0\0\0\0\0\x05"[..], 0)].into_iter(),
        );
        let h = decode_head(&head).unwrap();
        assert_eq!((h.epoch, h.enqueued_at, h.entries.len()), (7, 9, 2));
        assert_eq!(h.entries[0], (&g.encode()[..], 3));
        assert!(decode_head(&head[..head.len() - 1]).is_none());
        let rec = Record {
            epoch: 3,
            enqueued_at: 5,
            group: g.clone(),
            state: DeliveryState {
                deliver_count: 3,
                last_error: Some(LastError {
                    class: ErrorClass::NeedsAttention,
                    status: Some(404),
                    code: Some("stream_not_found".into()),
                    message: "nope".into(),
                    body: None,
                    at_ms: 9,
                }),
                not_visible_until: Some(100),
                last_attempt_at: Some(9),
            },
            payload_len: 3,
        };
        let bytes = encode_record(&rec, b"");
        assert_eq!(decode_record(&bytes), Some((rec.clone(), &b""[..])));
        let d = encode_discarded(11, 4, &rec, b"xyz");
        assert_eq!(decode_discarded(&d), Some((11, 4, rec, &b"xyz"[..])));
        let m = Meta {
            next_id: 9,
            epoch: 1,
            delivered: 3,
            discarded: 4,
        };
        assert_eq!(
            Meta::decode(Some(&m.encode_ids()), Some(&m.encode_totals())),
            Some(m)
        );
        assert_eq!(decode_bitmap(&encode_bitmap(&[5, 1]), 70), Some(vec![5, 1]));
    }
}
