//! Writing a chunk and a failed message's keys: shared by enqueue, failure and the v1 upgrade.

use sled::Batch;

use crate::codec::{self, Record};
use crate::keys::{self, CHUNK_BYTES, SPAN_PART};
use crate::parts;

/// Most messages in one chunk (bounds the bitmap an ack rewrites).
pub const MAX_MESSAGES: usize = 2048;

/// The end of the longest run of messages from `start` that fits one chunk: at most
/// [`MAX_MESSAGES`] and at most [`CHUNK_BYTES`] bytes of payload, but always at least one message.
pub fn end(len: impl Fn(usize) -> usize, start: usize, n: usize) -> usize {
    let mut end = start;
    let mut body = 0usize;
    while end < n && end - start < MAX_MESSAGES && (end == start || body + len(end) <= CHUNK_BYTES)
    {
        body += len(end);
        end += 1;
    }
    end
}

/// A chunk body built before the queue's lock is taken: the bytes for the cache and the
/// sled values of its parts (built here, so the lock only moves them into the batch).
pub struct Body {
    pub bytes: bytes::Bytes,
    parts: Vec<sled::IVec>,
}

/// Concatenates the payloads of one chunk, for its span tree: in parts of
/// [`SPAN_PART`] bytes.
pub fn body<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> Body {
    body_in_parts(payloads, SPAN_PART)
}

/// Concatenates the payloads of one chunk in parts of `part` bytes.
pub fn body_in_parts<'a>(payloads: impl Iterator<Item = &'a [u8]>, part: usize) -> Body {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(p);
    }
    let parts = if out.is_empty() {
        vec![sled::IVec::from(&[][..])]
    } else {
        out.chunks(part).map(sled::IVec::from).collect()
    };
    Body {
        bytes: bytes::Bytes::from(out),
        parts,
    }
}

impl Body {
    /// Adds this body, as chunk `first`'s, to `batch` (of the tree that holds it: a span, see
    /// [`crate::bodies`]). Returns its part count.
    pub fn put(&self, batch: &mut Batch, first: u64) -> u16 {
        let base = keys::base(keys::BODY, first);
        for (i, part) in self.parts.iter().enumerate() {
            batch.insert(&keys::part(&base, i as u16), part.clone());
        }
        self.parts.len() as u16
    }
}

/// Adds chunk `first`'s header to `batch`; `entries` are (encoded group, payload length) in
/// id order. Returns the header's part count.
pub fn put_head(
    batch: &mut Batch,
    first: u64,
    epoch: u64,
    enqueued_at: u64,
    entries: &[(&[u8], u32)],
) -> u16 {
    let head = codec::encode_head(epoch, enqueued_at, entries.iter().copied());
    parts::put(batch, &keys::base(keys::HEAD, first), &head, 0)
}

/// Adds chunk `first`, header and body, to one `batch` of the sink's own tree: the layout
/// before spans, still written by the v1 conversion (its chunks are below the sink's
/// [`keys::SPANS_FROM`]). Returns the header's and body's part counts.
pub fn put(
    batch: &mut Batch,
    first: u64,
    epoch: u64,
    enqueued_at: u64,
    entries: &[(&[u8], u32)],
    body: &Body,
) -> (u16, u16) {
    (
        put_head(batch, first, epoch, enqueued_at, entries),
        body.put(batch, first),
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
