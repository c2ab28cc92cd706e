//! `POST /api/sinks/{sink}/messages`: a JSON object, a JSON array, or NDJSON.
//!
//! All or nothing: any invalid message → 400 naming its index and the reason, and nothing of
//! the request is stored. The producer's bytes of each message are stored verbatim, so numbers
//! beyond i64/u64/f64 reach S2 exactly as sent.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::engine::IngestItem;

/// Query parameters of the ingest route.
#[derive(Debug, Deserialize)]
pub struct IngestQuery {
    /// Explicit group for every message of the request (non-CDC producers).
    pub group: Option<String>,
}

/// Reads the body up to the configured limit; 413 past it.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large = |n: usize| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body of {n}+ bytes exceeds the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large(len));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Splits a body into messages: raw JSON text of each plus its parsed value.
pub fn parse_messages(body: &[u8], ndjson: bool) -> Result<Vec<(String, Value)>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let raws: Vec<(usize, &str)> = if ndjson {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i, l.trim()))
            .collect()
    } else {
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(ApiError::bad_request(
                "request body is empty; send a JSON object, a JSON array or NDJSON",
            ));
        }
        if trimmed.starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("request body is not valid JSON: {e}"))
            })?;
            items.into_iter().map(|r| r.get()).enumerate().collect()
        } else {
            vec![(0, text.trim())]
        }
    };
    let mut out = Vec::with_capacity(raws.len());
    for (index, raw) in raws {
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
        out.push((raw.to_string(), value));
    }
    Ok(out)
}

/// The ingest handler.
pub async fn ingest(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<IngestQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let sink = path.into_inner();
    state.engine.sink(&sink)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson"));
    let messages = parse_messages(&body, ndjson)?;
    let items: Vec<IngestItem> = messages
        .into_iter()
        .map(|(raw, message)| IngestItem {
            message,
            raw: Some(raw),
            group: query.group.clone(),
        })
        .collect();
    let ids = state.engine.ingest(&sink, items).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "accepted": ids.len(),
        "ids": ids.iter().map(|id| id.0).collect::<Vec<_>>(),
    })))
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
    fn errors_name_the_message() {
        let e = parse_messages(br#"[{"a":1}, 5]"#, false).unwrap_err();
        assert!(
            e.message.contains("message 1") && e.message.contains("a number"),
            "{}",
            e.message
        );
        let e = parse_messages(b"{\"a\":1}\n{oops", true).unwrap_err();
        assert!(e.message.contains("line 1"), "{}", e.message);
        let e = parse_messages(b"\xff\xfe", false).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = parse_messages(b"[", false).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_messages(b"", false).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
    }
}
