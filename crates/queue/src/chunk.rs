//! Writing a chunk and a failed message's keys: shared by enqueue, failure and the v1 upgrade.

use sled::Batch;

use crate::codec::{self, Record};
use crate::keys::{self, PART};
use crate::parts;

/// Most messages in one chunk (bounds the bitmap an ack rewrites).
pub const MAX_MESSAGES: usize = 2048;

/// The end of the longest run of messages from `start` that fits one chunk: at most
/// [`MAX_MESSAGES`] and at most [`PART`] bytes of payload, but always at least one message.
pub fn end(len: impl Fn(usize) -> usize, start: usize, n: usize) -> usize {
    let mut end = start;
    let mut body = 0usize;
    while end < n && end - start < MAX_MESSAGES && (end == start || body + len(end) <= PART) {
        body += len(end);
        end += 1;
    }
    end
}

/// Adds chunk `first` (header and body) to `batch`; `entries` are (encoded group, payload)
/// in id order. Returns the header's and body's part counts and the body.
pub fn put(
    batch: &mut Batch,
    first: u64,
    epoch: u64,
    enqueued_at: u64,
    entries: &[(&[u8], &[u8])],
) -> (u16, u16, bytes::Bytes) {
    let head = codec::encode_head(
        epoch,
        enqueued_at,
        entries.iter().map(|(g, p)| (*g, p.len() as u32)),
    );
    let mut body = Vec::with_capacity(entries.iter().map(|(_, p)| p.len()).sum());
    for (_, p) in entries {
        body.extend_from_slice(p);
    }
    (
        parts::put(batch, &keys::base(keys::HEAD, first), &head, 0),
        parts::put(batch, &keys::base(keys::BODY, first), &body, 0),
        bytes::Bytes::from(body),
    )
}

/// Adds a failed message's payload and state keys to `batch`; returns the state's part count.
pub fn put_failed(batch: &mut Batch, id: u64, record: &Record, payload: &[u8]) -> u16 {
    parts::put(batch, &keys::base(keys::FAILED, id), payload, 0);
    parts::put(
        batch,
        &keys::base(keys::STATE, id),
        &codec::encode_record(record, b""),
        0,
    )
}
