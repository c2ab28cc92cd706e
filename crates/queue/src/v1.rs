//! Readers for storage v1 (one sled key per message), used only to convert an old data
//! directory on open (see [`crate::upgrade`]).
//!
//! v1 layout of a sink's tree: `#` meta, `m` id(8) → record, `g` len(4) group id(8) → index
//! entry, `d` seq(8) → discarded entry.

use s2sink_core::UnixMillis;

use crate::codec::{read_state, Reader};
use crate::{DeliveryState, GroupRef};

const RECORD_V1: u8 = 1;
const META_V1: u8 = 1;

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
    let (state, group) = read_state(&mut r, flags)?;
    Some(Record {
        group,
        enqueued_at,
        state,
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
