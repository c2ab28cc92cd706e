//! JSON views of sinks and messages for the API and the console. Tokens are never included.
//!
//! Each view is a typed struct: what the handlers serialize is what the OpenAPI document
//! (`GET /api/openapi.json`, [`super::openapi`]) describes, both derived from these types.

use s2sink_client::Endpoint;
use s2sink_core::UnixMillis;
use s2sink_queue::StoredMessage;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::ToSchema;

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

/// The last failed delivery attempt of a message, with S2's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastErrorView {
    /// `retryable`, `outcome_unknown` or `needs_attention`.
    #[schema(example = "needs_attention")]
    pub class: String,
    /// HTTP status of S2's (or a proxy's) response; null for local or transport errors.
    pub status: Option<u16>,
    /// S2 error code (`stream_not_found`, …) or a local code (`record_too_large`, `transform`).
    pub code: Option<String>,
    pub message: String,
    /// The response body as received (truncated).
    pub body: Option<String>,
    /// When the attempt failed (Unix milliseconds).
    pub at_ms: UnixMillis,
}

impl From<&s2sink_core::LastError> for LastErrorView {
    fn from(e: &s2sink_core::LastError) -> LastErrorView {
        let class = serde_json::to_value(e.class)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        LastErrorView {
            class,
            status: e.status,
            code: e.code.clone(),
            message: e.message.clone(),
            body: e.body.clone(),
            at_ms: e.at_ms,
        }
    }
}

/// A message in the queue, without its payload (listings).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageSummary {
    /// The message id (per sink, increasing in ingest order).
    pub id: u64,
    /// The group whose order it keeps; null when ungrouped.
    pub group: Option<String>,
    /// `pending`, `backing_off` or `failed` (`discarded` in the discarded list).
    #[schema(example = "pending")]
    pub state: &'static str,
    /// Failed delivery attempts so far.
    pub deliver_count: u32,
    /// When it was accepted (Unix milliseconds).
    pub enqueued_at: UnixMillis,
    pub last_attempt_at: Option<UnixMillis>,
    /// Not attempted before this time (backoff), Unix milliseconds.
    pub not_visible_until: Option<UnixMillis>,
    pub last_error: Option<LastErrorView>,
}

/// A message summary for listings (no payload).
pub fn message_summary(msg: &StoredMessage, now: UnixMillis) -> MessageSummary {
    MessageSummary {
        id: msg.id.0,
        group: msg.group.key().map(str::to_string),
        state: state_name(msg, now),
        deliver_count: msg.state.deliver_count,
        enqueued_at: msg.enqueued_at,
        last_attempt_at: msg.state.last_attempt_at,
        not_visible_until: msg.state.not_visible_until,
        last_error: msg.state.last_error.as_ref().map(LastErrorView::from),
    }
}

/// A message with its payload and what the sink's current functions make of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    /// The payload as stored (the producer's exact JSON).
    #[schema(value_type = Object)]
    pub message: Value,
    /// What delivery would do with it now: `{"filtered": true}`,
    /// `{"filtered": false, "body": …, "route": …}`, or `{"error": "…"}`.
    #[schema(value_type = Object)]
    pub delivery: Value,
}

/// A message with its payload and what the current functions make of it.
pub fn message_detail(shared: &SinkShared, msg: &StoredMessage, now: UnixMillis) -> MessageDetail {
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
    MessageDetail {
        summary: message_summary(msg, now),
        message: payload,
        delivery: preview,
    }
}

/// A discarded message, with its payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscardedMessage {
    /// As in listings, with `state` = `discarded`.
    #[serde(flatten)]
    pub summary: MessageSummary,
    /// When it was discarded (Unix milliseconds).
    pub discarded_at: UnixMillis,
    /// The payload as stored.
    #[schema(value_type = Object)]
    pub message: Value,
}

fn endpoint_name(e: &Endpoint) -> String {
    match e {
        Endpoint::Cloud => "cloud".into(),
        Endpoint::Direct(url) => url.clone(),
    }
}

/// Message counts of a sink.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkCounts {
    /// Messages in the queue, whatever their state.
    pub pending: u64,
    /// Messages in the queue that failed at least once.
    pub failing: u64,
    /// Messages removed as delivered (acked or manually acknowledged), ever.
    pub delivered: u64,
    /// Messages discarded, ever.
    pub discarded: u64,
}

/// Engine counters of a sink since the server started.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkStatsView {
    pub appends: u64,
    pub live_groups: u64,
    pub reconciles: u64,
    pub deduplicated: u64,
    pub ingest_duplicates: u64,
    pub ingest_replayed: u64,
    pub max_appends_in_flight: u64,
    pub requeued: u64,
    pub pipeline_reorders: u64,
}

/// A sink: its config (S2 token redacted), counts, health and last error.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkView {
    pub name: String,
    /// The basin it writes to; null when a function routes each message.
    pub basin: Option<String>,
    /// The stream it writes to; null when a function routes each message.
    pub stream: Option<String>,
    /// Whether a function picks each message's stream.
    pub routed: bool,
    /// `cloud`, or the URL of a direct S2 endpoint.
    pub endpoint: String,
    /// `[redacted]` when an S2 access token is set, else null.
    #[schema(example = "[redacted]")]
    pub access_token: Option<&'static str>,
    pub max_retry_count: Option<u32>,
    pub dead_letter_stream: Option<String>,
    pub counts: SinkCounts,
    /// `ok`, or `failing` while any message has failed.
    #[schema(example = "ok")]
    pub health: &'static str,
    pub last_error: Option<LastErrorView>,
    pub last_error_message_id: Option<u64>,
    pub stats: SinkStatsView,
    /// The server's clock (Unix milliseconds), for the ages of the times above.
    pub now: UnixMillis,
}

/// A sink with its config (token redacted), counts, health and last error.
pub fn sink_view(shared: &SinkShared, now: UnixMillis) -> SinkView {
    let settings = shared.settings();
    let counts = shared.queue.counts(&shared.name);
    // Cheap: the engine remembers its latest failure; shown while anything is failing.
    let last = (counts.failing > 0)
        .then(|| shared.last_failure())
        .flatten();
    let health = if counts.failing > 0 { "failing" } else { "ok" };
    let stats = &shared.stats;
    SinkView {
        name: shared.name.clone(),
        basin: settings.route.as_ref().map(|r| r.basin.clone()),
        stream: settings.route.as_ref().map(|r| r.stream.clone()),
        routed: settings.route.is_none(),
        endpoint: endpoint_name(&settings.s2.endpoint),
        access_token: settings.s2.access_token.as_ref().map(|_| "[redacted]"),
        max_retry_count: settings.max_retry_count,
        dead_letter_stream: settings.dead_letter_stream.clone(),
        counts: SinkCounts {
            pending: counts.pending,
            failing: counts.failing,
            delivered: counts.delivered,
            discarded: counts.discarded,
        },
        health,
        last_error: last.as_ref().map(|(_, e)| LastErrorView::from(e)),
        last_error_message_id: last.map(|(id, _)| id.0),
        stats: SinkStatsView {
            appends: SinkStats::get(&stats.appends),
            live_groups: SinkStats::get(&stats.live_groups),
            reconciles: SinkStats::get(&stats.reconciles),
            deduplicated: SinkStats::get(&stats.deduplicated),
            ingest_duplicates: SinkStats::get(&stats.ingest_duplicates),
            ingest_replayed: SinkStats::get(&stats.replayed),
            max_appends_in_flight: SinkStats::get(&stats.max_appends_in_flight),
            requeued: SinkStats::get(&stats.requeued),
            pipeline_reorders: SinkStats::get(&stats.pipeline_reorders),
        },
        now,
    }
}

/// `GET /api/sinks`: a page of sinks by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkPage {
    pub sinks: Vec<SinkView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

/// `GET /api/sinks/{sink}/messages`: a page of queued messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<MessageSummary>,
    /// Pass as `after` for the next page; null when this page was not full.
    pub next_after: Option<u64>,
}

/// `GET /api/sinks/{sink}/discarded`: a page of discarded messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscardedPage {
    pub messages: Vec<DiscardedMessage>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<u64>,
}

/// 202 of `POST /api/sinks/{sink}/messages`: every message is stored durably.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestAccepted {
    /// How many messages the request held (stored now or before, as duplicates).
    pub accepted: usize,
    /// The id of each message, in request order (a duplicate's original id).
    pub ids: Vec<u64>,
    /// How many were duplicates of earlier messages (`metadata.idempotency_key`), not stored
    /// again.
    pub duplicates: usize,
}

/// 200 of `POST /api/sinks/{sink}/messages/{id}/{action}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionDone {
    pub id: u64,
    /// `acknowledge`, `redeliver` or `discard`.
    pub action: String,
    pub ok: bool,
}

/// 200 of `POST /api/sinks/{sink}/redeliver`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// How many failing or backing-off messages were made ready now.
    pub redelivered: u64,
}

/// 200 of `POST /api/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reconciling {
    /// `basin/stream`.
    pub stream: String,
    /// Always 0: the next reconcile reads the stream from its first record.
    pub reconcile_from: u64,
}

/// 200 of `POST /api/reload`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
    /// The `[server]` keys whose change was applied live.
    pub server_keys_applied: Vec<&'static str>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (200) or `stopping` (503).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Every error: `{"error":{"code","message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error's machine code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine code: `bad_request`, `invalid_message`, `unauthorized`, `not_found`,
    /// `unknown_sink`, `unknown_message`, `method_not_allowed`, `request_timeout`,
    /// `payload_too_large`, `unsupported_media_type`, `idempotency_conflict`,
    /// `invalid_config`, `backpressure`, `busy`, `shutting_down`, `storage`, …
    #[schema(example = "unknown_sink")]
    pub code: String,
    pub message: String,
}
