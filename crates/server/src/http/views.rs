//! JSON views of sinks and messages for the API and the console. Tokens are never included.

use s2sink_client::Endpoint;
use s2sink_core::UnixMillis;
use s2sink_queue::StoredMessage;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::engine::{SinkShared, SinkStats};

/// A message's display state, derived from its bookkeeping (as Sequin's Messages tab does).
pub fn state_name(msg: &StoredMessage, now: UnixMillis) -> &'static str {
    match msg.state.not_visible_until {
        Some(t) if t > now => "backing_off",
        _ if msg.state.deliver_count > 0 => "failed",
        _ => "pending",
    }
}

/// The stored payload as JSON (exact bytes), or a string if it somehow is not JSON.
pub fn payload_json(msg: &StoredMessage) -> Value {
    let text = String::from_utf8_lossy(&msg.payload).into_owned();
    match RawValue::from_string(text.clone()) {
        Ok(raw) => serde_json::to_value(&raw).unwrap_or(Value::String(text)),
        Err(_) => Value::String(text),
    }
}

/// A message summary for listings (no payload).
pub fn message_summary(msg: &StoredMessage, now: UnixMillis) -> Value {
    json!({
        "id": msg.id.0,
        "group": msg.group.key().map(|k| k.as_str()),
        "state": state_name(msg, now),
        "deliver_count": msg.state.deliver_count,
        "enqueued_at": msg.enqueued_at,
        "last_attempt_at": msg.state.last_attempt_at,
        "not_visible_until": msg.state.not_visible_until,
        "last_error": msg.state.last_error,
    })
}

/// A message with its payload and what the current functions make of it.
pub fn message_detail(shared: &SinkShared, msg: &StoredMessage, now: UnixMillis) -> Value {
    let mut v = message_summary(msg, now);
    let payload = payload_json(msg);
    let settings = shared.settings();
    let functions = shared.functions();
    let id = msg.id.to_string();
    let preview = match serde_json::from_slice::<Value>(&msg.payload) {
        Ok(value) => match functions.apply(&value, Some(&id)) {
            Ok(s2sink_transform::Applied::Filtered) => json!({"filtered": true}),
            Ok(s2sink_transform::Applied::Deliver { body, route }) => {
                let route = route.or_else(|| settings.route.clone());
                json!({"filtered": false, "body": body.into_owned(), "route": route})
            }
            Err(e) => json!({"error": e.to_string()}),
        },
        Err(e) => json!({"error": format!("stored payload is not JSON: {e}")}),
    };
    v["message"] = payload;
    v["delivery"] = preview;
    v
}

fn endpoint_name(e: &Endpoint) -> String {
    match e {
        Endpoint::Cloud => "cloud".into(),
        Endpoint::Direct(url) => url.clone(),
    }
}

/// A sink with its config (token redacted), counts, health and last error.
pub fn sink_view(shared: &SinkShared, now: UnixMillis) -> Value {
    let settings = shared.settings();
    let counts = shared.queue.counts(&shared.name);
    // Cheap: the engine remembers its latest failure; shown while anything is failing.
    let last = (counts.failing > 0)
        .then(|| shared.last_failure())
        .flatten();
    let health = if counts.failing > 0 { "failing" } else { "ok" };
    let stats = &shared.stats;
    json!({
        "name": shared.name,
        "basin": settings.route.as_ref().map(|r| r.basin.clone()),
        "stream": settings.route.as_ref().map(|r| r.stream.clone()),
        "routed": settings.route.is_none(),
        "endpoint": endpoint_name(&settings.s2.endpoint),
        "access_token": settings.s2.access_token.as_ref().map(|_| "[redacted]"),
        "max_retry_count": settings.max_retry_count,
        "dead_letter_stream": settings.dead_letter_stream,
        "counts": {
            "pending": counts.pending,
            "failing": counts.failing,
            "delivered": counts.delivered,
            "discarded": counts.discarded,
        },
        "health": health,
        "last_error": last.as_ref().map(|(_, e)| e.clone()),
        "last_error_message_id": last.map(|(id, _)| id.0),
        "stats": {
            "appends": SinkStats::get(&stats.appends),
            "live_groups": SinkStats::get(&stats.live_groups),
            "reconciles": SinkStats::get(&stats.reconciles),
            "deduplicated": SinkStats::get(&stats.deduplicated),
            "ingest_duplicates": SinkStats::get(&stats.ingest_duplicates),
            "ingest_replayed": SinkStats::get(&stats.replayed),
            "max_appends_in_flight": SinkStats::get(&stats.max_appends_in_flight),
            "requeued": SinkStats::get(&stats.requeued),
            "pipeline_reorders": SinkStats::get(&stats.pipeline_reorders),
        },
        "now": now,
    })
}
