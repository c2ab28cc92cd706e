//! Binary encoding of the records stored in a sink's tree.
//!
//! Hand-written (not JSON) because every enqueue writes one record per message and every ack
//! reads one: the fixed header is cheap to encode and the payload is stored as is.

use s2sink_core::{LastError, UnixMillis};

use crate::{DeliveryState, GroupRef, MessageId, StoredMessage};

const RECORD_V1: u8 = 1;
const META_V1: u8 = 1;
const HAS_NVU: u8 = 1;
const HAS_ATTEMPT: u8 = 2;
const HAS_ERROR: u8 = 4;

/// A message record without its id (the id is the key).
#[derive(Debug, Clone)]
pub struct Record {
    pub group: GroupRef,
    pub enqueued_at: UnixMillis,
    pub state: DeliveryState,
    pub payload: Vec<u8>,
}

impl Record {
    /// Attaches the id taken from the key.
    pub fn into_message(self, id: MessageId) -> StoredMessage {
        StoredMessage {
            id,
            group: self.group,
            payload: self.payload,
            enqueued_at: self.enqueued_at,
            state: self.state,
        }
    }
}

/// Encodes a record; `group` is the already-encoded group (the caller also needs it for keys).
pub fn encode_record(
    group: &[u8],
    enqueued_at: UnixMillis,
    state: &DeliveryState,
    payload: &[u8],
) -> Vec<u8> {
    let error = state
        .last_error
        .as_ref()
        .map(|e| serde_json::to_vec(e).expect("LastError serializes"));
    let mut out = Vec::with_capacity(
        1 + 1
            + 8
            + 4
            + 16
            + 4
            + group.len()
            + error.as_ref().map_or(0, |e| 4 + e.len())
            + payload.len(),
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
    out.extend_from_slice(&enqueued_at.to_be_bytes());
    out.extend_from_slice(&state.deliver_count.to_be_bytes());
    if let Some(t) = state.not_visible_until {
        out.extend_from_slice(&t.to_be_bytes());
    }
    if let Some(t) = state.last_attempt_at {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out.extend_from_slice(&(group.len() as u32).to_be_bytes());
    out.extend_from_slice(group);
    if let Some(e) = &error {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out.extend_from_slice(payload);
    out
}

/// A cursor over a byte slice that fails softly on truncation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes a record; `None` if the bytes are not a valid record.
pub fn decode_record(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_V1 {
        return None;
    }
    let flags = r.u8()?;
    let enqueued_at = r.u64()?;
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
    Some(Record {
        group,
        enqueued_at,
        state: DeliveryState {
            deliver_count,
            last_error,
            not_visible_until,
            last_attempt_at,
        },
        payload: r.0.to_vec(),
    })
}

/// Reads only the group bytes and deliver count of a record (acks need no more).
pub fn peek_group(bytes: &[u8]) -> Option<(&[u8], u32)> {
    let mut r = Reader(bytes);
    if r.u8()? != RECORD_V1 {
        return None;
    }
    let flags = r.u8()?;
    r.u64()?;
    let deliver_count = r.u32()?;
    if flags & HAS_NVU != 0 {
        r.u64()?;
    }
    if flags & HAS_ATTEMPT != 0 {
        r.u64()?;
    }
    let glen = r.u32()? as usize;
    Some((r.take(glen)?, deliver_count))
}

/// The sink's persistent counters, rewritten in every batch that changes them so they are
/// always consistent with the records after a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// The next id to hand out (ids below it are never reused).
    pub next_id: u64,
    /// Messages in the queue.
    pub pending: u64,
    /// Of those, messages with `deliver_count > 0`.
    pub failing: u64,
    /// Removed as delivered, ever.
    pub delivered: u64,
    /// Discarded, ever; also the sequence number of the next discarded entry.
    pub discarded: u64,
    /// Entries in the discarded list.
    pub discarded_len: u64,
}

impl Meta {
    /// A new sink's meta: ids start at 1.
    pub fn new() -> Meta {
        Meta {
            next_id: 1,
            ..Meta::default()
        }
    }

    pub fn encode(&self) -> [u8; 49] {
        let mut out = [0u8; 49];
        out[0] = META_V1;
        for (i, v) in [
            self.next_id,
            self.pending,
            self.failing,
            self.delivered,
            self.discarded,
            self.discarded_len,
        ]
        .into_iter()
        .enumerate()
        {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Meta> {
        let mut r = Reader(bytes);
        if r.u8()? != META_V1 {
            return None;
        }
        Some(Meta {
            next_id: r.u64()?,
            pending: r.u64()?,
            failing: r.u64()?,
            delivered: r.u64()?,
            discarded: r.u64()?,
            discarded_len: r.u64()?,
        })
    }
}

/// Encodes a discarded entry: when, which id, then the record.
pub fn encode_discarded(at: UnixMillis, id: MessageId, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + record.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// Decodes a discarded entry into (when, id, record).
pub fn decode_discarded(bytes: &[u8]) -> Option<(UnixMillis, MessageId, Record)> {
    let mut r = Reader(bytes);
    let at = r.u64()?;
    let id = MessageId(r.u64()?);
    Some((at, id, decode_record(r.0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_core::{ErrorClass, GroupKey};

    #[test]
    fn record_round_trips_with_and_without_state() {
        let g = GroupRef::from(GroupKey("public.t/1".into()));
        let plain = DeliveryState::default();
        let bytes = encode_record(&g.encode(), 5, &plain, b"{}");
        let r = decode_record(&bytes).unwrap();
        assert_eq!(
            (
                r.group.clone(),
                r.enqueued_at,
                r.state.clone(),
                r.payload.clone()
            ),
            (g.clone(), 5, plain, b"{}".to_vec())
        );
        let failed = DeliveryState {
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
        };
        let bytes = encode_record(&g.encode(), 5, &failed, b"xyz");
        let r = decode_record(&bytes).unwrap();
        assert_eq!(r.state, failed);
        assert_eq!(r.payload, b"xyz");
        assert_eq!(peek_group(&bytes), Some((&g.encode()[..], 3)));
        assert!(decode_record(&bytes[..10]).is_none());
        let m = Meta {
            next_id: 9,
            pending: 1,
            failing: 2,
            delivered: 3,
            discarded: 4,
            discarded_len: 5,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
    }
}
