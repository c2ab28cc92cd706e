//! Dead-lettering: a message that used up `max_retry_count` attempts is appended to the sink's
//! `dead_letter_stream` exactly once, then discarded.
//!
//! **Where:** the dead-letter stream lives in the basin of the message's own route — the static
//! route, or what the routing function returned for it — so routed sinks dead-letter too. A
//! message whose route could not be computed (the routing function failed) goes to the static
//! route's basin when there is one; otherwise it is discarded without a dead-letter record
//! (it stays in the discarded list, and the log says so).
//!
//! **What:** the original payload as the body, cut at a character boundary when the record
//! would exceed S2's record limit (then `s2sink-truncated` carries the original size in bytes),
//! and headers `s2sink-sink`, `s2sink-id` (the delivery id), `s2sink-error-class`,
//! `s2sink-error-message`, plus `s2sink-error-status` / `s2sink-error-code` when known.
//!
//! **Exactly once,** as the stream writers do it: a durable low-water mark per dead-letter
//! stream (`dlq/<sink>/<basin>/<stream>`) stays at or below every dead-letter record whose
//! message is not yet discarded. Each attempt first reads the stream from the mark to the tail;
//! a record of this sink carrying the message's delivery id means an earlier attempt landed
//! (its answer was lost, or the process died before the discard) and the message is only
//! discarded. Other messages of this sink found there are discarded too. Otherwise the mark
//! moves to the tail and the append carries `match_seq_num` = that tail, so an earlier attempt
//! that lands late turns into a 412 (and a re-read next time) instead of a second copy. One
//! dead-letter operation per stream runs at a time ([`DeadLetters::lock`]), so the mark never
//! passes a record whose message is still queued.

use std::collections::HashMap;

use s2sink_client::{AppendInput, AppendRecord, BatchLimits, RecordCost, S2Error, Text};
use s2sink_core::{LastError, Route};
use s2sink_queue::{Queue, StoredMessage};

use super::io::StreamIo;
use super::scan::{self, HEADER_ID, HEADER_SINK};

/// Header carrying the payload's original size when the dead-letter body was cut.
pub const HEADER_TRUNCATED: &str = "s2sink-truncated";

/// Why a dead-letter attempt did not complete; the message keeps backing off and retries.
#[derive(Debug)]
pub enum DeadLetterError {
    /// S2 refused or did not answer (the append may have landed: the next attempt re-reads).
    S2(S2Error),
    /// The queue failed (the engine stops the process on these).
    Queue(s2sink_queue::QueueError),
    /// The stored mark is not 8 bytes: refuse rather than re-read from a wrong place.
    CorruptMark { key: String, len: usize },
}

impl std::fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterError::S2(e) => write!(f, "dead-letter append: {e}"),
            DeadLetterError::Queue(e) => write!(f, "dead-letter bookkeeping: {e}"),
            DeadLetterError::CorruptMark { key, len } => write!(
                f,
                "the stored dead-letter mark `{key}` is corrupt ({len} bytes, expected 8): \
                 dead-lettering to this stream is stopped (the data directory is damaged)"
            ),
        }
    }
}

/// One lock per dead-letter stream of a sink (see the module doc).
#[derive(Default)]
pub struct DeadLetters {
    /// Shared by every engine thread: groups of one sink dead-letter from several threads.
    locks: std::sync::Mutex<HashMap<Route, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl DeadLetters {
    /// The lock serialising dead-letter operations on `dlq`.
    pub fn lock(&self, dlq: &Route) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dlq.clone())
            .or_default()
            .clone()
    }
}

/// The dead-letter record of `msg`: its payload (cut to fit `limits`) and the error.
pub fn record(
    sink: &str,
    msg: &StoredMessage,
    e: &LastError,
    limits: &BatchLimits,
) -> AppendRecord {
    let mut headers: Vec<(Text, Text)> = vec![
        (Text::from_static(HEADER_SINK), sink.into()),
        (
            Text::from_static(HEADER_ID),
            msg.delivery_id().to_string().into(),
        ),
        (
            Text::from_static("s2sink-error-class"),
            Text::from_static(e.class.as_str()),
        ),
        (
            Text::from_static("s2sink-error-message"),
            e.message.as_str().into(),
        ),
    ];
    if let Some(s) = e.status {
        headers.push((
            Text::from_static("s2sink-error-status"),
            s.to_string().into(),
        ));
    }
    if let Some(c) = &e.code {
        headers.push((Text::from_static("s2sink-error-code"), c.as_str().into()));
    }
    let text = Text::from_utf8_lossy(msg.payload.clone());
    let mut rec = AppendRecord {
        headers,
        body: text.clone(),
        timestamp: None,
    };
    if limits.check_record(0, RecordCost::of(&rec)).is_ok() {
        return rec;
    }
    rec.headers.push((
        Text::from_static(HEADER_TRUNCATED),
        msg.payload.len().to_string().into(),
    ));
    rec.body = Text::default();
    let overhead = rec.metered_size();
    let mut budget = limits.max_metered_bytes.saturating_sub(overhead) as usize;
    loop {
        rec.body = text
            .prefix(floor_char_boundary(&text, budget))
            .expect("a character boundary");
        if budget == 0 || limits.check_record(0, RecordCost::of(&rec)).is_ok() {
            return rec;
        }
        // Over the JSON size limit (escaping): shrink until it fits.
        budget = budget * 9 / 10;
    }
}

/// The largest index ≤ `at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

/// The mark's key for a sink's dead-letter stream.
fn mark_key(sink: &str, dlq: &Route) -> String {
    format!("dlq/{sink}/{}/{}", dlq.basin, dlq.stream)
}

/// Makes sure `msg`'s dead-letter record is in `dlq` exactly once: finds it there from an
/// earlier attempt, or appends it. The caller holds [`DeadLetters::lock`] for `dlq` and
/// discards the message after `Ok`. Messages of this sink found in the stream from earlier
/// attempts whose discard was lost are discarded here.
pub async fn append_once(
    io: &dyn StreamIo,
    queue: &Queue,
    sink: &str,
    dlq: &Route,
    msg: &StoredMessage,
    record: AppendRecord,
) -> Result<(), DeadLetterError> {
    let key = mark_key(sink, dlq);
    let mark = match queue.get_marker(&key).map_err(DeadLetterError::Queue)? {
        None => None,
        Some(b) => Some(scan::decode_mark(&b).ok_or(DeadLetterError::CorruptMark {
            key: key.clone(),
            len: b.len(),
        })?),
    };
    let tail = scan::tail_or_zero(io, dlq)
        .await
        .map_err(DeadLetterError::S2)?;
    // A tail below the mark: the stream was reset, nothing of ours is left in it.
    let from = mark.filter(|m| *m <= tail).unwrap_or(tail);
    let (found, _) = scan::ours_between(io, sink, dlq, from, tail)
        .await
        .map_err(DeadLetterError::S2)?;
    let mine = msg.delivery_id();
    for id in found.iter().filter(|id| **id != mine) {
        // Dead-lettered before, its discard lost: finish it (only if it is that message).
        if let Some(m) = queue.get(sink, id.id).map_err(DeadLetterError::Queue)? {
            if m.delivery_id() == *id {
                queue
                    .discard(sink, id.id)
                    .await
                    .map_err(DeadLetterError::Queue)?;
                tracing::info!(sink, id = %id, "found in the dead-letter stream from an earlier attempt; discarded");
            }
        }
    }
    if found.contains(&mine) {
        return Ok(());
    }
    if mark != Some(tail) {
        queue
            .put_marker(&key, &tail.to_be_bytes())
            .await
            .map_err(DeadLetterError::Queue)?;
    }
    let input = AppendInput {
        records: vec![record],
        match_seq_num: Some(tail),
        fencing_token: None,
    };
    io.append(&dlq.basin, &dlq.stream, &input)
        .await
        .map(|_| ())
        .map_err(DeadLetterError::S2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_core::ErrorClass;
    use s2sink_queue::{GroupRef, MessageId};

    fn msg(payload: Vec<u8>) -> StoredMessage {
        StoredMessage {
            id: MessageId(7),
            epoch: 0xabc,
            group: GroupRef::of(None, MessageId(7)),
            payload: payload.into(),
            enqueued_at: 0,
            state: Default::default(),
        }
    }

    fn err() -> LastError {
        LastError {
            class: ErrorClass::NeedsAttention,
            status: Some(422),
            code: Some("record_too_large".into()),
            message: "too big".into(),
            body: None,
            at_ms: 0,
        }
    }

    #[test]
    fn small_payloads_go_whole_with_the_error() {
        let m = msg(br#"{"a":1}"#.to_vec());
        let r = record("s", &m, &err(), &BatchLimits::default());
        assert_eq!(r.body, r#"{"a":1}"#);
        let h: HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h[HEADER_SINK], "s");
        assert_eq!(h[HEADER_ID], m.delivery_id().to_string());
        assert_eq!(h["s2sink-error-status"], "422");
        assert_eq!(h["s2sink-error-code"], "record_too_large");
        assert!(!h.contains_key(HEADER_TRUNCATED));
    }

    #[test]
    fn oversized_payloads_are_cut_to_fit_and_marked() {
        // Multi-byte characters: the cut must land on a character boundary.
        let payload = "é\"".repeat(600_000).into_bytes();
        let limits = BatchLimits::default();
        let r = record("s", &msg(payload.clone()), &err(), &limits);
        assert!(limits.check_record(0, RecordCost::of(&r)).is_ok());
        assert!(r.body.len() > 100_000, "cut far too much: {}", r.body.len());
        assert!(payload.starts_with(r.body.as_bytes()));
        let h: HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h[HEADER_TRUNCATED], payload.len().to_string());
    }
}
