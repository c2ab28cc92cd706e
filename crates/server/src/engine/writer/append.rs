//! One append with its conflict handling: `match_seq_num` on every attempt, reconciliation
//! after a conflict or an outcome-unknown failure, and acks of what S2 took.

use std::sync::atomic::Ordering::Relaxed;

use s2sink_client::{AppendInput, AppendRecord, S2Error};
use s2sink_core::ErrorClass;
use s2sink_queue::{DeliveryId, MessageId};
use tokio::time::Instant;
use tracing::Instrument;

use super::stream::{marker_key, prepare, queue_failure, reconcile, State};
use super::{Failure, Submission, WriterCtx, MARKER_INTERVAL, MAX_CONFLICT_ROUNDS};

/// Appends the records of `subs` as one batch (in order) and acks them in the queue.
///
/// - A 412 conflict reconciles: ids found in the stream are delivered (acked), the rest are
///   appended again at once from the new tail, uncharged.
/// - An outcome-unknown failure (timeout, reset) reconciles at once: found ids are delivered;
///   if the rest are proven absent, the failure is returned as plain retryable (so a message
///   is never discarded while its append may have landed); if the stream cannot be read, it
///   stays outcome-unknown.
pub(super) async fn append_with_conflicts(
    ctx: &WriterCtx,
    state: &mut State,
    subs: &[Submission],
) -> Result<(), Failure> {
    let mut records: Vec<AppendRecord> = subs
        .iter()
        .flat_map(|s| s.run.records.iter().cloned())
        .collect();
    let mut dids: Vec<DeliveryId> = subs
        .iter()
        .flat_map(|s| s.run.ids.iter().copied())
        .collect();
    let mut round = 0;
    loop {
        // Never append without knowing where the stream ends (e.g. after a failed
        // reconciliation, when a 422 split sends runs one by one).
        prepare(ctx, state).await?;
        let input = AppendInput {
            records: records.clone(),
            match_seq_num: state.next_seq,
            fencing_token: None,
        };
        let started = Instant::now();
        // One span per append: sink, stream, records, outcome (never payloads or tokens).
        let span = tracing::info_span!(
            "append",
            sink = %ctx.sink,
            stream = %ctx.route,
            records = dids.len(),
            outcome = tracing::field::Empty,
        );
        let res = ctx
            .io
            .append(&ctx.route.basin, &ctx.route.stream, &input)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &res {
                Ok(_) => "ok",
                Err(e) => e.class().as_str(),
            },
        );
        let e = match res {
            Ok(ack) => {
                tracing::debug!(parent: &span, start = ack.start.seq_num, end = ack.end.seq_num, "appended");
                state.next_seq = Some(ack.end.seq_num);
                ctx.stats
                    .append_latency_ms
                    .observe(started.elapsed().as_millis() as u64);
                ctx.stats.batch_size.observe(dids.len() as u64);
                ctx.stats.appends.fetch_add(1, Relaxed);
                let bytes = records
                    .iter()
                    .map(|r| s2sink_core::metered_size(&r.headers, r.body.len()))
                    .sum();
                ctx.stats
                    .count_append(&ctx.route, records.len() as u64, bytes);
                let ids: Vec<MessageId> = dids.iter().map(|d| d.id).collect();
                if let Err(e) = ctx.queue.ack(&ctx.sink, &ids) {
                    return Err(queue_failure(ctx, &e));
                }
                ctx.stats.delivered.fetch_add(ids.len() as u64, Relaxed);
                if state.last_persist.elapsed() >= MARKER_INTERVAL {
                    persist_mark_behind(ctx, state, ack.end.seq_num);
                }
                return Ok(());
            }
            Err(e) => e,
        };
        ctx.stats.count_failure(e.class(), e.status());
        let conflict = matches!(e, S2Error::SeqNumMismatch { .. });
        let uncertain = e.may_have_applied();
        if uncertain || conflict {
            state.needs_reconcile = true;
            state.next_seq = None;
        }
        tracing::warn!(
            parent: &span,
            sink = %ctx.sink, stream = %ctx.route, records = dids.len(),
            class = e.class().as_str(), status = ?e.status(), error = %e,
            "append failed"
        );
        if !(conflict || uncertain) || round >= MAX_CONFLICT_ROUNDS {
            return Err(Failure::from_s2(&e));
        }
        round += 1;
        let found = match reconcile(ctx, state).await {
            Ok(found) => found,
            // Cannot read the stream: the outcome stays unknown.
            Err(f) if conflict => return Err(f),
            Err(_) => return Err(Failure::from_s2(&e)),
        };
        // Ids found are delivered (the reconciliation acked them); only the rest go again.
        let keep: Vec<bool> = dids.iter().map(|d| !found.contains(d)).collect();
        let mut k = keep.iter();
        records.retain(|_| *k.next().unwrap());
        let mut k = keep.iter();
        dids.retain(|_| *k.next().unwrap());
        if dids.is_empty() {
            return Ok(());
        }
        if !conflict {
            // Proven not in the stream: an ordinary retryable failure from here on.
            let mut f = Failure::from_s2(&e);
            f.error.class = ErrorClass::Retryable;
            f.error.message = format!("{} (reconciled: the append did not land)", f.error.message);
            return Err(f);
        }
    }
}

/// Moves the durable mark up to `at` beside the next appends instead of stalling them.
///
/// The acks just written are flushed with the marker, so the durable mark never passes a
/// message that would come back as pending after a crash; a lower mark in memory meanwhile
/// is always safe.
pub(super) fn persist_mark_behind(ctx: &WriterCtx, state: &mut State, at: u64) {
    state.marker = Some(at);
    state.last_persist = Instant::now();
    let (queue, key, on_fatal) = (
        ctx.queue.clone(),
        marker_key(&ctx.sink, &ctx.route),
        ctx.on_fatal.clone(),
    );
    actix_rt::spawn(async move {
        if let Err(e) = queue.put_marker(&key, &at.to_be_bytes()).await {
            on_fatal(&e);
        }
    });
}
