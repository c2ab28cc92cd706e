//! `POST /api/sinks/{sink}/messages`: a JSON object, a JSON array, or NDJSON.
//!
//! All or nothing: any invalid message → 400 naming its index and the reason, and nothing of
//! the request is stored. The producer's bytes of each message are stored verbatim, so numbers
//! beyond i64/u64/f64 reach S2 exactly as sent.
//!
//! Idempotent: a request with an `Idempotency-Key` header that repeats an accepted request
//! (same key, same body and parameters) within the sink's `idempotency_window_secs` gets the
//! original answer with `Idempotent-Replayed: true` and stores nothing; the same key with
//! another request is 422 `idempotency_conflict`. A message whose `metadata.idempotency_key`
//! was accepted before is not stored again (its original id is in `ids`, counted in
//! `duplicates`). So a producer that lost a 202 can simply send the request again.

use std::io::Read;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use s2sink_client::Text;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::ApiError;
use super::params::Params;
use super::views::{ErrorBody, IngestAccepted};
use super::AppState;
use crate::engine::IngestItem;
use crate::ServerError;

/// The request header naming a request's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Reads the `Idempotency-Key` header: absent, or 1–255 printable ASCII characters (space to
/// `~`) given once; anything else is 400 naming the header, since a key the server silently
/// ignored or altered would defeat the producer's retries.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "header Idempotency-Key is given more than once; send one key per request",
        ));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "header Idempotency-Key must be 1-255 characters, got {}",
            bytes.len()
        )));
    }
    if let Some(pos) = bytes.iter().position(|b| !(0x20..=0x7e).contains(b)) {
        return Err(ApiError::bad_request(format!(
            "header Idempotency-Key must be printable ASCII; byte {pos} is 0x{:02x}",
            bytes[pos]
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A stable 128-bit digest of what a request asks for (framing, `group`, decoded body), to
/// tell a retry from a different request reusing an `Idempotency-Key`. Two SipHash-2-4 runs
/// with fixed keys: stable across restarts and versions (std's `DefaultHasher` is not), and
/// a body hashed once per keyed request.
pub fn fingerprint(kind: BodyKind, group: Option<&str>, body: &[u8]) -> u128 {
    use std::hash::Hasher;
    #[allow(deprecated)] // SipHasher: the one stable, specified keyed hash in std.
    let run = |k0: u64, k1: u64| {
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write_u8(kind as u8);
        match group {
            Some(g) => {
                h.write_u8(1);
                h.write(&(g.len() as u64).to_le_bytes()); // not write_u64: native endian
                h.write(g.as_bytes());
            }
            None => h.write_u8(0),
        }
        h.write(body);
        h.finish()
    };
    let a = run(0x7332_7369_6e6b_2d69, 0x6465_6d70_6f74_656e);
    let b = run(0x6964_656d_2d66_7032, 0x0123_4567_89ab_cdef);
    ((a as u128) << 64) | b as u128
}

/// How the body is framed, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`: an object or an array of objects.
    Json,
    /// `application/x-ndjson`: one object per line.
    Ndjson,
}

/// `Content-Type` → body kind; anything but JSON or NDJSON (case-insensitive, parameters
/// allowed) is 415. Refusing `text/plain` and forms also means a browser cannot send an ingest
/// request cross-site without a CORS preflight.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let unsupported = |what: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "{what}; send Content-Type: application/json (an object or an array) or application/x-ndjson (one object per line)"
            ),
        )
    };
    let Some(ct) = content_type else {
        return Err(unsupported("the request has no Content-Type".into()));
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-ndjson" => Ok(BodyKind::Ndjson),
        _ => Err(unsupported(format!(
            "Content-Type `{}` is not accepted",
            ct.chars().take(100).collect::<String>()
        ))),
    }
}

/// A request body encoding (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// `Content-Encoding` → encoding; anything but identity, gzip or zstd is 415.
pub fn body_encoding(value: Option<&str>) -> Result<Encoding, ApiError> {
    let Some(v) = value else {
        return Ok(Encoding::Identity);
    };
    let codings: Vec<String> = v
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(Encoding::Identity),
        [one] if one == "gzip" || one == "x-gzip" => Ok(Encoding::Gzip),
        [one] if one == "zstd" => Ok(Encoding::Zstd),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Encoding `{}` is not supported; send gzip, zstd or an unencoded body",
                v.chars().take(100).collect::<String>()
            ),
        )),
    }
}

fn too_large(n: usize, limit: usize, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("{what} of {n}+ bytes exceeds the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// Decodes a gzip or zstd body, stopping as soon as the output passes `limit` (413): a small
/// body that inflates to gigabytes costs at most `limit` bytes of memory.
pub fn decode_body(
    encoding: Encoding,
    body: web::Bytes,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let reader: Box<dyn Read> = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(&body[..]).map_err(|e| {
            ApiError::bad_request(format!("Content-Encoding zstd: cannot start decoding: {e}"))
        })?),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "request body is not valid {}: {e}",
                if encoding == Encoding::Gzip {
                    "gzip"
                } else {
                    "zstd"
                }
            ))
        })?;
    if out.len() > limit {
        return Err(too_large(out.len(), limit, "decoded request body"));
    }
    Ok(out.into())
}

/// Reads the body up to `limit` bytes (413 past it) within `timeout` (408 past it).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared {
        if len > limit {
            return Err(too_large(len, limit, "request body"));
        }
    }
    let read = async {
        // Sized from Content-Length (already checked against the limit): a 500 KB body read
        // into a growing buffer is copied ~10 times and asks for fresh pages each time.
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(body.len() + chunk.len(), limit, "request body"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms (server.body_timeout_ms)",
                timeout.as_millis()
            ),
        )
    })?
}

/// Splits a body into messages: raw JSON text of each plus its parsed value. Errors name the
/// message by its index in a JSON array (from 0) or by its NDJSON line number (from 1).
pub fn parse_messages(body: &[u8], ndjson: bool) -> Result<Vec<(String, Value)>, ApiError> {
    Ok(parse_numbered(body, ndjson)?
        .into_iter()
        .map(|(_, raw, value)| (raw, value))
        .collect())
}

/// Splits a body into messages as text, each with its index / line, without checking each
/// message: the engine reads what it needs from the text in one pass that also checks it as a
/// tree parse would (see [`crate::engine::IngestItem::message`]) and refuses the request when
/// one is not a JSON object; [`first_invalid`] then names the message exactly as
/// [`parse_messages`] would. Each text shares `body` (no copy per message).
fn split_shared(body: &web::Bytes, ndjson: bool) -> Result<Vec<(usize, Text)>, ApiError> {
    Ok(split(body, ndjson)?
        .into_iter()
        .map(|(index, raw)| (index, Text::shared_in(body, raw)))
        .collect())
}

/// The error [`parse_messages`] gives for `body`, if any: the first message that is not a JSON
/// object, named by its index / line. Run only when the engine refused a request, so that a
/// body with an invalid message gets the same 400 (and the same text) whatever else is wrong.
fn first_invalid(body: &[u8], ndjson: bool) -> Result<(), ApiError> {
    for (index, raw) in split(body, ndjson)? {
        // Checked as a tree parse checks, without building the tree; the full parse names
        // what is wrong.
        if !(raw.starts_with('{') && crate::engine::valid_json(raw)) {
            check_message(index, raw, ndjson)?;
        }
    }
    Ok(())
}

/// An engine error as the producer sees it. The engine counts items from 0; NDJSON
/// producers count lines from 1 (`numbers`: each item's line).
fn engine_error(e: ServerError, ndjson: bool, numbers: &[usize]) -> ApiError {
    match e {
        ServerError::InvalidMessage { index, reason } if ndjson => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!(
                "line {}: {reason}",
                numbers.get(index).copied().unwrap_or(index + 1)
            ),
        ),
        other => other.into(),
    }
}

/// Each message's text with its index (array, from 0) or line (NDJSON, from 1).
type Texts<'a> = Vec<(usize, &'a str)>;

/// The messages' texts (array items are checked to be JSON by the split, nothing more).
fn split(body: &[u8], ndjson: bool) -> Result<Texts<'_>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if ndjson {
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.trim()))
            .collect();
        return Ok(lines);
    }
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; send a JSON object, a JSON array or NDJSON",
        ));
    }
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        Ok(items.into_iter().map(|r| r.get()).enumerate().collect())
    } else {
        Ok(vec![(0, text.trim())])
    }
}

/// Parses one message, which must be a JSON object; the error names it.
fn check_message(index: usize, raw: &str, ndjson: bool) -> Result<Value, ApiError> {
    let what = if ndjson { "line" } else { "message" };
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!("{what} {index}: not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!(
                "{what} {index}: expected a JSON object, got {}",
                s2sink_core::envelope::json_type(&value)
            ),
        ));
    }
    Ok(value)
}

/// [`parse_messages`] plus each message's index / line number.
fn parse_numbered(body: &[u8], ndjson: bool) -> Result<Vec<(usize, String, Value)>, ApiError> {
    let raws = split(body, ndjson)?;
    let mut out = Vec::with_capacity(raws.len());
    for (index, raw) in raws {
        let value = check_message(index, raw, ndjson)?;
        out.push((index, raw.to_string(), value));
    }
    Ok(out)
}

/// Waits for one of `server.max_concurrent_ingest` slots, at most `wait`; then 503 `busy`
/// with `Retry-After`, instead of letting requests pile up until they time out.
async fn acquire_slot(
    state: &AppState,
    wait: std::time::Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let busy = || {
        ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "all {} ingest slots stayed busy for {} ms (server.max_concurrent_ingest); retry later",
                state.running_max_concurrent_ingest(),
                wait.as_millis()
            ),
        )
    }
    };
    match tokio::time::timeout(wait, state.ingest_slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(busy()),
    }
}

/// Decoding, parsing, validation and the durable enqueue of one request; runs on a blocking
/// thread so HTTP workers stay free. Returns the 202 body.
struct Job {
    engine: crate::engine::Engine,
    handle: tokio::runtime::Handle,
    sink: String,
    group: Option<String>,
    kind: BodyKind,
    encoding: Encoding,
    body: web::Bytes,
    limit: usize,
    idempotency_key: Option<String>,
}

/// The 202 body, and whether it is a replayed answer.
struct Answer {
    body: Vec<u8>,
    replayed: bool,
}

fn process(job: Job) -> Result<Answer, ApiError> {
    let Job {
        engine,
        handle,
        sink,
        group,
        kind,
        encoding,
        body,
        limit,
        idempotency_key,
    } = job;
    let body = decode_body(encoding, body, limit)?;
    let request = idempotency_key.map(|key| s2sink_queue::RequestKey {
        key,
        fingerprint: fingerprint(kind, group.as_deref(), &body),
    });
    let ndjson = kind == BodyKind::Ndjson;
    let messages = split_shared(&body, ndjson)?;
    let numbers: Vec<usize> = messages.iter().map(|(n, _)| *n).collect();
    let items: Vec<IngestItem> = messages
        .into_iter()
        .map(|(_, raw)| IngestItem {
            message: Value::Null,
            raw: Some(raw),
            group: group.clone(),
        })
        .collect();
    let outcome = handle
        .block_on(engine.ingest_idempotent(&sink, items, request))
        .map_err(|e| match first_invalid(&body, ndjson) {
            // Invalid JSON comes first, whatever else the engine found.
            Err(invalid) => invalid,
            Ok(()) => engine_error(e, ndjson, &numbers),
        })?;
    drop(body);
    let body = serde_json::to_vec(&IngestAccepted {
        accepted: outcome.ids.len(),
        ids: outcome.ids.iter().map(|id| id.0).collect(),
        duplicates: outcome.duplicates,
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Answer {
        body,
        replayed: outcome.replayed,
    })
}

/// The ingest handler: checks what can be checked from the head (sink, query, Content-Type,
/// Content-Encoding), takes an ingest slot, reads the body within the timeout, then decodes,
/// parses and enqueues on the blocking pool.
#[utoipa::path(
    post,
    path = "/api/sinks/{sink}/messages",
    tag = "messages",
    summary = "Ingest messages (a JSON object, a JSON array of objects, or NDJSON)",
    description = "All or nothing: any invalid message is a 400 naming its index (JSON array, from 0) or line (NDJSON, from 1), and nothing of the request is stored. A 202 means every message is durably queued. The body may be compressed: `Content-Encoding: gzip` or `zstd` (anything else is 415; an undecodable body is 400). With an `Idempotency-Key`, a retry of an accepted request gets the original answer (`Idempotent-Replayed: true`) and stores nothing.",
    params(
        super::schema::SinkParam,
        ("group" = Option<String>, Query, min_length = 1, description = "Put every message of the request in this group (default: each message's own `metadata.record_pks` / table)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1-255 printable ASCII characters, once: a retry with the same key and request within the sink's idempotency window is answered with the original 202 and stores nothing"),
    ),
    request_body(
        description = "One message (an object), an array of messages, or NDJSON (one object per line)",
        content(
            (super::schema::IngestBody = "application/json"),
            // An NDJSON body, one JSON object per line, described like a JSON body (OpenAPI has
            // no line-framing schema): one line's object, or the array of its lines' objects.
            // A single object is a valid one-line body, so the schema must allow it.
            (super::schema::IngestBody = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 202, description = "Every message is durably queued", body = IngestAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the original answer to an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "`bad_request` (bad query, header, encoding or JSON) or `invalid_message` (naming the message or line); nothing stored", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 403, description = "`cross_site`: a browser request from another site", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `server.body_timeout_ms`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body (or decoded body) exceeds `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: Content-Type is not JSON or NDJSON, or Content-Encoding is not gzip/zstd", body = ErrorBody),
        (status = 422, description = "`idempotency_conflict`: the Idempotency-Key was used for a different request; nothing stored", body = ErrorBody),
        (status = 429, description = "`backpressure`: the queue is full (`server.max_pending`); retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`busy` (no free ingest slot within `server.ingest_queue_timeout_ms`; with `Retry-After`), `shutting_down` or `storage`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (with `busy`)"))),
    ),
    security(("api_token" = []))
)]
pub async fn ingest(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let sink = path.into_inner();
    state.engine.sink(&sink)?;
    let params = Params::parse(&req, &["group"])?;
    let group = params.str("group").map(str::to_string);
    // An empty `group=` would silently make the messages ungrouped (their order lost).
    if group.as_deref() == Some("") {
        return Err(ApiError::bad_request(
            "query parameter `group` is empty: give a group name, or leave `group` out to \
             group messages by their own metadata",
        ));
    }
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let kind = body_kind(header(header::CONTENT_TYPE))?;
    let encoding = body_encoding(header(header::CONTENT_ENCODING))?;
    let idempotency_key = idempotency_key(&req)?;
    let live = state.live();
    let _slot = acquire_slot(&state, live.ingest_queue_timeout).await?;
    let limit = live.max_body_bytes;
    let body = read_body(&req, payload, limit, live.body_timeout).await?;
    let job = Job {
        engine: state.engine.clone(),
        handle: tokio::runtime::Handle::current(),
        sink,
        group,
        kind,
        encoding,
        body,
        limit,
        idempotency_key,
    };
    let answer = web::block(move || process(job)).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("ingest worker failed: {e}"),
        )
    })??;
    let mut resp = HttpResponse::Accepted();
    resp.content_type("application/json");
    if answer.replayed {
        resp.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(resp.body(answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(parse_messages(br#"{"a":1}"#, false).unwrap().len(), 1);
        let arr = parse_messages(br#"[{"a":1}, {"b":18446744073709551616}]"#, false).unwrap();
        assert_eq!(arr.len(), 2);
        // Exact bytes kept even for numbers serde_json would round.
        assert_eq!(arr[1].0, r#"{"b":18446744073709551616}"#);
        let nd = parse_messages(b"{\"a\":1}\n\n{\"a\":2}\n", true).unwrap();
        assert_eq!(nd.len(), 2);
    }

    #[test]
    fn the_text_split_checks_and_answers_like_the_full_parse() {
        let bodies: [(&[u8], bool); 12] = [
            (br#"{"a":1}"#, false),
            (br#"  {"a":1}  "#, false),
            (br#"[{"a":1}, {"b":18446744073709551616}]"#, false),
            (b"{\"a\":1}\n\n{\"a\":2}\n", true),
            (br#"[{"a":1}, 5]"#, false),
            (b"{\"a\":1}\n{oops", true),
            (b"{\"a\":1} x\n", true),
            (b"5\n", true),
            (b"{\"a\":1}{", false),
            (b"\xff\xfe", false),
            (b"[", false),
            (b"", false),
        ];
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_array = format!("[{deep}]");
        let more: [(&[u8], bool); 6] = [
            (deep.as_bytes(), false),
            (deep.as_bytes(), true),
            (deep_array.as_bytes(), false),
            (br#"{"n": 1e400}"#, false),
            (br#"[{"n": 1e400}]"#, false),
            (br#"{"s": "\ud800"}"#, true),
        ];
        for (body, ndjson) in bodies.into_iter().chain(more) {
            let full = parse_numbered(body, ndjson)
                .map(|v| {
                    v.into_iter()
                        .map(|(i, raw, _)| (i, raw))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| (e.status, e.code, e.message));
            // What ingest answers: the split, and for a body the engine refuses, the first
            // invalid message.
            let split = split_shared(&web::Bytes::copy_from_slice(body), ndjson)
                .map(|texts| {
                    texts
                        .into_iter()
                        .map(|(i, t)| (i, t.to_string()))
                        .collect::<Vec<_>>()
                })
                .and_then(|texts| first_invalid(body, ndjson).map(|()| texts))
                .map_err(|e| (e.status, e.code, e.message));
            assert_eq!(split, full, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn errors_name_the_message() {
        let e = parse_messages(br#"[{"a":1}, 5]"#, false).unwrap_err();
        assert!(
            e.message.contains("message 1") && e.message.contains("a number"),
            "{}",
            e.message
        );
        let e = parse_messages(b"{\"a\":1}\n{oops", true).unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = parse_messages(b"5\n", true).unwrap_err();
        assert!(e.message.contains("line 1:"), "{}", e.message);
        let e = parse_messages(b"\xff\xfe", false).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = parse_messages(b"[", false).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_messages(b"", false).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
    }

    #[test]
    fn idempotency_key_header_is_checked_and_fingerprints_tell_requests_apart() {
        use actix_web::test::TestRequest;
        let key = |v: &[u8]| {
            let req = TestRequest::default()
                .insert_header((IDEMPOTENCY_KEY, header::HeaderValue::from_bytes(v).unwrap()))
                .to_http_request();
            idempotency_key(&req)
        };
        assert_eq!(
            key(b"order-42 retry").unwrap().as_deref(),
            Some("order-42 retry")
        );
        assert_eq!(
            idempotency_key(&TestRequest::default().to_http_request()).unwrap(),
            None
        );
        for bad in [
            &b""[..],
            &[b'k'; 256][..],
            &b"caf\xc3\xa9"[..],
            &b"a\tb"[..],
        ] {
            let e = key(bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains("Idempotency-Key"), "{}", e.message);
        }
        let twice = TestRequest::default()
            .append_header((IDEMPOTENCY_KEY, "a"))
            .append_header((IDEMPOTENCY_KEY, "b"))
            .to_http_request();
        assert!(idempotency_key(&twice)
            .unwrap_err()
            .message
            .contains("more than once"));
        let f = fingerprint(BodyKind::Json, None, b"{}");
        assert_eq!(f, fingerprint(BodyKind::Json, None, b"{}"), "stable");
        assert_ne!(f, fingerprint(BodyKind::Ndjson, None, b"{}"));
        assert_ne!(f, fingerprint(BodyKind::Json, Some(""), b"{}"));
        assert_ne!(f, fingerprint(BodyKind::Json, None, b"{ }"));
        // Pinned: a changed digest would turn retries across an upgrade into 422s.
        assert_eq!(f, 256524437527599085750329162941499085577);
    }

    #[test]
    fn content_type_is_json_or_ndjson_case_insensitive() {
        assert_eq!(body_kind(Some("application/json")).unwrap(), BodyKind::Json);
        assert_eq!(
            body_kind(Some("Application/JSON; charset=utf-8")).unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(Some("Application/X-NDJSON")).unwrap(),
            BodyKind::Ndjson
        );
        for bad in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            assert_eq!(body_kind(bad).unwrap_err().status, 415, "{bad:?}");
        }
    }

    #[test]
    fn encodings_decode_within_the_limit() {
        use std::io::Write;
        assert_eq!(body_encoding(Some("GZIP")).unwrap(), Encoding::Gzip);
        assert_eq!(body_encoding(Some("zstd")).unwrap(), Encoding::Zstd);
        assert_eq!(body_encoding(Some("identity")).unwrap(), Encoding::Identity);
        assert_eq!(body_encoding(Some("br")).unwrap_err().status, 415);
        assert_eq!(body_encoding(Some("gzip, br")).unwrap_err().status, 415);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b' '; 1 << 20]).unwrap();
        let gz = web::Bytes::from(gz.finish().unwrap());
        assert_eq!(
            decode_body(Encoding::Gzip, gz.clone(), 1 << 20)
                .unwrap()
                .len(),
            1 << 20
        );
        let e = decode_body(Encoding::Gzip, gz, (1 << 20) - 1).unwrap_err();
        assert_eq!(e.status, 413, "{}", e.message);
        let zs = web::Bytes::from(zstd::encode_all(&vec![b'x'; 4096][..], 3).unwrap());
        assert_eq!(decode_body(Encoding::Zstd, zs, 4096).unwrap().len(), 4096);
        let e = decode_body(Encoding::Gzip, web::Bytes::from_static(b"not gzip"), 10).unwrap_err();
        assert_eq!(e.status, 400, "{}", e.message);
    }
}
