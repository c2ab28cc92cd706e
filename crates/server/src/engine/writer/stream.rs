//! A stream's exactly-once bookkeeping: the durable low-water mark, where the next append
//! must start, and reconciliation (reading the stream back to ack what already landed).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use s2sink_core::{ErrorClass, Route};
use s2sink_queue::{DeliveryId, QueueError};
use tokio::time::Instant;

use super::{Failure, WriterCtx};
use crate::engine::scan;

/// The marker key of a stream's low-water mark.
pub(crate) fn marker_key(sink: &str, route: &Route) -> String {
    scan::lwm_key(sink, route)
}

/// What a writer knows about its stream.
pub(super) struct State {
    /// Durable low-water mark (`None` until loaded).
    pub marker: Option<u64>,
    pub last_persist: Instant,
    pub needs_reconcile: bool,
    /// Where the next append must start (`match_seq_num`); `None` while unknown.
    pub next_seq: Option<u64>,
}

impl State {
    pub fn new() -> State {
        State {
            marker: None,
            last_persist: Instant::now(),
            needs_reconcile: false,
            next_seq: None,
        }
    }
}

/// Loads or initialises the low-water mark and reconciles when needed.
pub(super) async fn prepare(ctx: &WriterCtx, state: &mut State) -> Result<(), Failure> {
    if state.marker.is_none() {
        let key = marker_key(&ctx.sink, &ctx.route);
        match ctx.queue.get_marker(&key) {
            Ok(Some(bytes)) => {
                state.marker = Some(decode_marker(ctx, &bytes)?);
                state.needs_reconcile = true;
            }
            Ok(None) => {
                let tail = tail(ctx).await?;
                persist_marker(ctx, state, tail).await?;
                state.next_seq = Some(tail);
            }
            Err(e) => return Err(queue_failure(ctx, &e)),
        }
    }
    if state.needs_reconcile {
        let started = std::time::Instant::now();
        reconcile(ctx, state).await?;
        tracing::debug!(sink = %ctx.sink, stream = %ctx.route, mark = ?state.marker, tail = ?state.next_seq, ms = started.elapsed().as_millis() as u64, "reconciled");
    }
    Ok(())
}

/// The stream's tail. A stream that does not exist yet has tail 0: with a basin that creates
/// streams on append, the first append (with `match_seq_num` 0) creates it; otherwise that
/// append fails with S2's own 404, which is what the user should see.
async fn tail(ctx: &WriterCtx) -> Result<u64, Failure> {
    scan::tail_or_zero(&*ctx.io, &ctx.route)
        .await
        .map_err(|e| Failure::from_s2(&e))
}

/// A queue error stops the process (unknown disk state); the run fails meanwhile.
pub(super) fn queue_failure(ctx: &WriterCtx, e: &QueueError) -> Failure {
    (ctx.on_fatal)(e);
    Failure::local("queue", e.to_string(), ctx.clock.now_millis())
}

/// A stored mark is exactly 8 bytes; anything else is refused (reconciling from a wrong
/// place could miss records and duplicate them).
fn decode_marker(ctx: &WriterCtx, bytes: &[u8]) -> Result<u64, Failure> {
    match scan::decode_mark(bytes) {
        Some(mark) => Ok(mark),
        None => {
            let message = format!(
                "the stored low-water mark of stream {} is corrupt ({} bytes, expected 8): \
                 delivery to this stream is stopped rather than reconciled from a wrong place \
                 (the data directory is damaged)",
                ctx.route,
                bytes.len()
            );
            tracing::error!(sink = %ctx.sink, stream = %ctx.route, len = bytes.len(), "corrupt low-water mark");
            let mut f = Failure::local("corrupt_marker", message, ctx.clock.now_millis());
            f.error.class = ErrorClass::NeedsAttention;
            Err(f)
        }
    }
}

pub(super) async fn persist_marker(
    ctx: &WriterCtx,
    state: &mut State,
    at: u64,
) -> Result<(), Failure> {
    let key = marker_key(&ctx.sink, &ctx.route);
    if let Err(e) = ctx.queue.put_marker(&key, &at.to_be_bytes()).await {
        return Err(queue_failure(ctx, &e));
    }
    state.marker = Some(at);
    state.last_persist = Instant::now();
    Ok(())
}

/// Reads the stream from the mark to the tail; acks every message of this sink found there
/// (matching the full delivery id, epoch included) and returns the delivery ids found.
///
/// A tail *below* the mark means the stream was deleted and recreated (or an in-memory S2
/// restarted): nothing of ours is in it any more, so the mark and the next append start at
/// the new tail — delivery resumes, re-sending what is queued, and the reset is reported.
pub(super) async fn reconcile(
    ctx: &WriterCtx,
    state: &mut State,
) -> Result<HashSet<DeliveryId>, Failure> {
    let tail = tail(ctx).await?;
    let mark = state.marker.unwrap_or(0);
    if tail < mark {
        tracing::warn!(
            sink = %ctx.sink, stream = %ctx.route, mark, tail,
            "stream tail is below the stored position: the stream was reset (deleted and recreated, or S2 lost it); resuming from its tail"
        );
        ctx.stats.stream_resets.fetch_add(1, Ordering::Relaxed);
        *ctx.stats.last_reset.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
            "stream {} was reset: tail {tail} is below the stored position {mark}; queued messages are sent again from the new tail",
            ctx.route
        ));
        persist_marker(ctx, state, tail).await?;
    }
    let from = state.marker.unwrap_or(0);
    let (ids, pos) = scan::ours_between(&*ctx.io, &ctx.sink, &ctx.route, from, tail)
        .await
        .map_err(|e| Failure::from_s2(&e))?;
    let found: HashSet<DeliveryId> = ids.into_iter().collect();
    if !found.is_empty() {
        let ids: Vec<DeliveryId> = found.iter().copied().collect();
        if let Err(e) = ctx.queue.ack_delivered(&ctx.sink, &ids) {
            return Err(queue_failure(ctx, &e));
        }
    }
    // Counted after the acks: a run read from the queue before this point carries a lower
    // epoch and is checked against the queue before it is sent (see `process`).
    ctx.stats.reconciles.fetch_add(1, Ordering::Release);
    state.needs_reconcile = false;
    state.next_seq = Some(pos.max(tail));
    Ok(found)
}
