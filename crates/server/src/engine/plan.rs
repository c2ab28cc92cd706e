//! Turning the head of a group into the next run: filter → transform → route, size checks,
//! and the longest prefix that shares one route and fits in one append.

use std::borrow::Cow;

use s2sink_client::{AppendRecord, BatchLimits, RecordCost, Text, BATCH_JSON_OVERHEAD};
use s2sink_core::{ErrorClass, LastError, Route, UnixMillis};
use s2sink_queue::{MessageId, StoredMessage};
use s2sink_transform::{Applied, Functions, TransformError};

use super::writer::{Failure, Run, HEADER_ID, HEADER_IDEMPOTENCY_KEY, HEADER_SINK};

/// What to do next with a group.
#[derive(Debug)]
pub enum Next {
    /// Everything read was filtered out; read again.
    Nothing,
    /// Message `index` of the read messages can't be sent; it fails without a network call.
    /// `route` is where it would have gone, when the functions got that far (the basin of its
    /// dead-letter stream).
    Fail {
        index: usize,
        failure: Failure,
        route: Option<Route>,
    },
    /// Send this run; `index` is the read position of its first message.
    Send {
        index: usize,
        route: Route,
        run: Run,
    },
}

/// The plan for one step of a group.
#[derive(Debug)]
pub struct Plan {
    /// Messages the filter rejected before the run: acked without delivery.
    pub filtered: Vec<MessageId>,
    pub next: Next,
}

/// Plans the next run from a group's visible head messages.
pub fn plan_run(
    sink: &Text,
    default_route: Option<&Route>,
    functions: &Functions,
    limits: &BatchLimits,
    msgs: &[StoredMessage],
    now: UnixMillis,
    read_epoch: u64,
) -> Plan {
    let mut filtered = Vec::new();
    let mut run: Option<(usize, Route, Run)> = None;
    for (index, msg) in msgs.iter().enumerate() {
        if index > 0 && msg.state.not_visible_until.is_some_and(|t| t > now) {
            break;
        }
        let fail = |code: &str, message: String| Failure {
            error: LastError {
                class: ErrorClass::NeedsAttention,
                status: None,
                code: Some(code.to_string()),
                message,
                body: None,
                at_ms: now,
            },
            retry_after: None,
        };
        let prepared = prepare(sink, default_route, functions, msg).map_err(|(c, m)| fail(c, m));
        let (route, record) = match prepared {
            Ok(Some(x)) => x,
            Ok(None) => {
                if run.is_some() {
                    break;
                }
                filtered.push(msg.id);
                continue;
            }
            Err(failure) => {
                if run.is_some() {
                    break;
                }
                return Plan {
                    filtered,
                    next: Next::Fail {
                        index,
                        failure,
                        route: None,
                    },
                };
            }
        };
        let cost = RecordCost::of(&record);
        // One separator byte per record keeps the sum an upper bound of the JSON body.
        let json_cost = cost.json_bytes + 1;
        match &mut run {
            None => {
                if let Err(e) = limits.check_record(0, cost) {
                    return Plan {
                        filtered,
                        next: Next::Fail {
                            index,
                            route: Some(route.into_owned()),
                            failure: fail(
                                "record_too_large",
                                format!(
                                    "message {}: {}",
                                    msg.id,
                                    e.to_string().replacen("record 0 ", "record ", 1)
                                ),
                            ),
                        },
                    };
                }
                // Sized once for every message that could join (no regrowing per message).
                let room = (msgs.len() - index).min(limits.max_records.max(1));
                let mut ids = Vec::with_capacity(room);
                ids.push(msg.delivery_id());
                let mut records = Vec::with_capacity(room);
                records.push(record);
                run = Some((
                    index,
                    route.into_owned(),
                    Run {
                        ids,
                        records,
                        metered: cost.metered,
                        json_bytes: json_cost,
                        read_epoch,
                        chain: None,
                    },
                ));
            }
            Some((_, run_route, r)) => {
                let fits = r.records.len() < limits.max_records
                    && r.metered + cost.metered <= limits.max_metered_bytes
                    && r.json_bytes + json_cost + BATCH_JSON_OVERHEAD <= limits.max_json_bytes;
                if *run_route != *route || !fits {
                    break;
                }
                r.ids.push(msg.delivery_id());
                r.records.push(record);
                r.metered += cost.metered;
                r.json_bytes += json_cost;
            }
        }
    }
    let next = match run {
        Some((index, route, run)) => Next::Send { index, route, run },
        None => Next::Nothing,
    };
    Plan { filtered, next }
}

/// A message made ready: its route (the sink's default borrowed) and its record.
type Prepared<'r> = (Cow<'r, Route>, AppendRecord);

/// Applies the functions to one message: `Ok(None)` when filtered out.
fn prepare<'r>(
    sink: &Text,
    default_route: Option<&'r Route>,
    functions: &Functions,
    msg: &StoredMessage,
) -> Result<Option<Prepared<'r>>, (&'static str, String)> {
    if functions.is_noop() {
        // Nothing to run: send the stored bytes (shared, not copied), reading only the
        // idempotency key. Borrowed: cloned once per run, not per message.
        let route = Cow::Borrowed(default_route.ok_or_else(no_route(msg.id))?);
        // Ingest stored valid UTF-8 (the producer's JSON text): checked, not copied; the
        // lossy conversion is only a fallback.
        let body = Text::from_utf8_lossy(msg.payload.clone());
        let key = if may_have_idempotency_key(&msg.payload) {
            serde_json::from_slice::<Peek>(&msg.payload)
                .ok()
                .and_then(|p| p.metadata)
                .and_then(|m| m.idempotency_key)
                .map(|k| k.into_owned())
        } else {
            None
        };
        return Ok(Some((route, record(sink, msg, key, body))));
    }
    let value: serde_json::Value = serde_json::from_slice(&msg.payload).map_err(|e| {
        (
            "invalid_payload",
            format!("message {}: stored payload is not JSON: {e}", msg.id),
        )
    })?;
    let id = msg.id.to_string();
    let applied = functions
        .apply(&value, Some(&id))
        .map_err(|e| (error_code(&e), e.to_string()))?;
    let (body, route) = match applied {
        Applied::Filtered => return Ok(None),
        Applied::Deliver { body, route } => (body, route),
    };
    let route = route
        .map(Cow::Owned)
        .or_else(|| default_route.map(Cow::Borrowed))
        .ok_or_else(no_route(msg.id))?;
    let body = match body {
        // Untransformed: send the producer's bytes as they were stored.
        Cow::Borrowed(b) if std::ptr::eq(b, &value) => Text::from_utf8_lossy(msg.payload.clone()),
        other => Text::from(other.to_string()),
    };
    let key = value
        .pointer("/metadata/idempotency_key")
        .and_then(|k| k.as_str())
        .map(str::to_string);
    Ok(Some((route, record(sink, msg, key, body))))
}

/// Whether `payload` can hold a `metadata.idempotency_key` at all: the key's name appears
/// in it literally, or it has a `\u` escape (which could spell the name). Most messages
/// have neither, and skip the parse.
fn may_have_idempotency_key(payload: &[u8]) -> bool {
    use std::sync::LazyLock;
    static NAME: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"idempotency_key"));
    static ESCAPE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    NAME.find(payload).is_some() || ESCAPE.find(payload).is_some()
}

/// Only the field the headers need, read without building the whole JSON tree.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    metadata: Option<PeekMeta<'a>>,
}

#[derive(serde::Deserialize)]
struct PeekMeta<'a> {
    #[serde(borrow)]
    idempotency_key: Option<Cow<'a, str>>,
}

fn no_route(id: MessageId) -> impl FnOnce() -> (&'static str, String) {
    move || {
        (
            "route",
            format!("message {id}: the sink has no stream and no routing function chose one"),
        )
    }
}

/// The S2 record of a message: body plus the sink / delivery id / idempotency-key headers.
/// Only the delivery id is new text; names, the sink's name and the body are shared.
fn record(sink: &Text, msg: &StoredMessage, key: Option<String>, body: Text) -> AppendRecord {
    let mut headers = Vec::with_capacity(2 + usize::from(key.is_some()));
    headers.push((Text::from_static(HEADER_SINK), sink.clone()));
    headers.push((
        Text::from_static(HEADER_ID),
        Text::from(msg.delivery_id().to_string()),
    ));
    if let Some(key) = key {
        headers.push((Text::from_static(HEADER_IDEMPOTENCY_KEY), Text::from(key)));
    }
    AppendRecord {
        headers,
        body,
        timestamp: None,
    }
}

/// The stored error code of a function failure: which function failed.
fn error_code(e: &TransformError) -> &'static str {
    match e {
        TransformError::InvalidRoute { .. } => "route",
        TransformError::Load { kind, .. }
        | TransformError::Runtime { kind, .. }
        | TransformError::Limit { kind, .. }
        | TransformError::InvalidOutput { kind, .. } => kind.fn_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_queue::{DeliveryState, GroupRef};
    use s2sink_transform::FunctionsConfig;

    fn msg(id: u64, payload: &[u8]) -> StoredMessage {
        StoredMessage {
            id: MessageId(id),
            epoch: 7,
            group: GroupRef::of(None, MessageId(id)),
            payload: payload.to_vec().into(),
            enqueued_at: 0,
            state: DeliveryState::default(),
        }
    }

    fn key_header(payload: &[u8]) -> Option<String> {
        let functions = Functions::compile(&FunctionsConfig::default()).unwrap();
        assert!(functions.is_noop());
        let route = Route {
            basin: "b".into(),
            stream: "s".into(),
        };
        let plan = plan_run(
            &Text::from_static("sink"),
            Some(&route),
            &functions,
            &BatchLimits::default(),
            &[msg(1, payload)],
            0,
            0,
        );
        let Next::Send { run, .. } = plan.next else {
            panic!("expected a run, got {:?}", plan.next);
        };
        let record = &run.records[0];
        assert_eq!(
            record.body.as_bytes(),
            payload,
            "the stored bytes are the body"
        );
        record
            .headers
            .iter()
            .find(|(k, _)| k == HEADER_IDEMPOTENCY_KEY)
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn identity_runs_carry_the_idempotency_key_however_it_is_spelled() {
        assert_eq!(key_header(br#"{"record":{"id":1},"pad":"xx"}"#), None);
        assert_eq!(
            key_header(br#"{"metadata":{"idempotency_key":"k1"}}"#).as_deref(),
            Some("k1")
        );
        // The name spelled with a `\u` escape is the same JSON key: still found.
        assert_eq!(
            key_header(br#"{"metadata":{"idempotency\u005fkey":"k2"}}"#).as_deref(),
            Some("k2")
        );
        // The words elsewhere (a value) are no key.
        assert_eq!(
            key_header(br#"{"note":"idempotency_key","metadata":{}}"#),
            None
        );
    }
}
