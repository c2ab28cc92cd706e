//! Readers for storage v1 (one sled key per message), used only to convert an old data
//! directory on open (see [`crate::upgrade`]).
//!
//! v1 layout of a sink's tree: `#` meta, `m` id(8) → record, `g` len(4) group id(8) → index
//! entry, `d` seq(8) → discarded entry.

use s2sink_core::{LastError, UnixMillis};

use crate::codec::Reader;
use crate::{DeliveryState, GroupRef};

const RECORD_V1: u8 = 1;
const META_V1: u8 = 1;
const HAS_NVU: u8 = 1;
const HAS_ATTEMPT: u8 = 2;
const HAS_ERROR: u8 = 4;

/// Prefix of v1 message records.
pub const MESSAGE: u8 = b'm';
/// Prefix of v1 discarded entries.
pub const DISCARDED: u8 = b'd';

/// A v1 message record without its id (the id is the key).
#[derive(Debug, Clone)]
pub struct Record {
    pub group: GroupRef,
    pub enqueued_at: UnixMillis,
    pub state: DeliveryState,
    pub payload: Vec<u8>,
}

/// Decodes a v1 record; `None` if the bytes are not one.
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

/// The v1 meta record: (next id, delivered, discarded) — the other counters are rebuilt.
pub fn decode_meta(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let mut r = Reader(bytes);
    if r.u8()? != META_V1 {
        return None;
    }
    let next_id = r.u64()?;
    let _pending = r.u64()?;
    let _failing = r.u64()?;
    let delivered = r.u64()?;
    let discarded = r.u64()?;
    Some((next_id, delivered, discarded))
}

/// Decodes a v1 discarded entry into (when, id, record).
pub fn decode_discarded(bytes: &[u8]) -> Option<(UnixMillis, u64, Record)> {
    let mut r = Reader(bytes);
    let at = r.u64()?;
    let id = r.u64()?;
    Some((at, id, decode_record(r.0)?))
}
