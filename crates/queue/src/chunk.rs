//! Writing a chunk and a failed message's keys: shared by enqueue, failure and the v1 upgrade.

use sled::Batch;

use crate::codec::{self, Record};
use crate::keys::{self, CHUNK_BYTES, SPAN_PART};
use crate::parts;
use crate::shared_body::SharedBody;

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

/// A chunk body built before the queue's lock is taken: the sled values of its parts (built
/// here, so the lock only moves them into the batch), which the cache then shares.
pub struct Body {
    pub shared: SharedBody,
}

/// Concatenates the payloads of one chunk, for its span tree: in parts of
/// [`SPAN_PART`] bytes.
pub fn body<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> Body {
    body_in_parts(payloads, SPAN_PART)
}

/// Concatenates the payloads of one chunk in parts of `part` bytes, each copied once into its
/// sled value through a buffer of one part.
pub fn body_in_parts<'a>(payloads: impl Iterator<Item = &'a [u8]>, part: usize) -> Body {
    let mut values = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(part);
    for mut p in payloads {
        while !p.is_empty() {
            let take = (part - buf.len()).min(p.len());
            buf.extend_from_slice(&p[..take]);
            p = &p[take..];
            if buf.len() == part {
                values.push(sled::IVec::from(&buf[..]));
                buf.clear();
            }
        }
    }
    if !buf.is_empty() || values.is_empty() {
        values.push(sled::IVec::from(&buf[..]));
    }
    Body {
        shared: SharedBody::new(values),
    }
}

impl Body {
    /// Adds this body, as chunk `first`'s, to `batch` (of the tree that holds it: a span, see
    /// [`crate::bodies`]). Returns its part count.
    pub fn put(&self, batch: &mut Batch, first: u64) -> u16 {
        let base = keys::base(keys::BODY, first);
        let values = self.shared.values();
        for (i, part) in values.iter().enumerate() {
            batch.insert(&keys::part(&base, i as u16), part.clone());
        }
        values.len() as u16
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
