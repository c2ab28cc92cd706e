//! The one error type of this crate, with the classification the delivery engine acts on.

use std::time::Duration;

use s2sink_core::{classify_status, ErrorClass, LastError};

use crate::types::StreamPosition;

/// Most bytes of a response body kept in an error (so a console can show S2's exact answer
/// without storing arbitrarily large proxy pages).
pub const MAX_ERROR_BODY_BYTES: usize = 4096;

/// Everything that can go wrong talking to S2 or preparing an append.
///
/// `context` names the operation and target (e.g. ``append to stream `x` in basin `y` ``).
/// No variant ever holds the access token.
#[derive(Debug, thiserror::Error)]
pub enum S2Error {
    /// S2 answered with its standard `{"code","message"}` error body.
    #[error("{context}: S2 returned HTTP {status} `{code}`: {message}")]
    Api {
        context: String,
        status: u16,
        code: String,
        message: String,
        /// The body as received (truncated to [`MAX_ERROR_BODY_BYTES`]).
        body: String,
        retry_after: Option<Duration>,
    },
    /// 412: the stream's next seq num was not the `match_seq_num` sent.
    #[error("{context}: seq num mismatch (HTTP 412): expected {}, stream tail is {actual}", fmt_opt(.expected))]
    SeqNumMismatch {
        context: String,
        /// The `match_seq_num` that was sent.
        expected: Option<u64>,
        /// The stream's actual next seq num.
        actual: u64,
        body: String,
    },
    /// 412: the stream's fencing token differs from the one sent.
    #[error("{context}: fencing token mismatch (HTTP 412): stream token is {actual:?}")]
    FencingTokenMismatch {
        context: String,
        /// The stream's actual fencing token.
        actual: String,
        body: String,
    },
    /// 416: a read started beyond the tail (reads map this to an empty result).
    #[error("{context}: read start beyond the tail (HTTP 416), tail is {}", .tail.seq_num)]
    RangeNotSatisfiable {
        context: String,
        tail: StreamPosition,
        body: String,
    },
    /// An HTTP error whose body is not an S2 error (e.g. a proxy page); kept verbatim.
    #[error("{context}: HTTP {status} with a non-S2 body: {body}")]
    Http {
        context: String,
        status: u16,
        /// The body as received (truncated to [`MAX_ERROR_BODY_BYTES`]).
        body: String,
        retry_after: Option<Duration>,
    },
    /// A success response S2 should not have sent (unparseable JSON).
    #[error("{context}: unexpected HTTP {status} response body: {reason}: {body}")]
    Decode {
        context: String,
        status: u16,
        reason: String,
        body: String,
    },
    /// Could not connect (refused, DNS, TLS handshake, connect timeout): nothing was sent.
    #[error("{context}: could not connect: {source}")]
    Connect {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// The request timed out after it may have been sent.
    #[error("{context}: request timed out: {source}")]
    Timeout {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed mid-request (reset, closed early) after it may have been sent.
    #[error("{context}: connection failed: {source}")]
    Transport {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// An append session ended before S2 acknowledged this append (S2 ended it, an earlier
    /// append in it failed, or the ack did not come within the request timeout).
    #[error("{context}: the append was not acknowledged: {reason}")]
    SessionEnded {
        context: String,
        reason: String,
        /// False when the append certainly never reached S2 (it was queued behind the end,
        /// or S2 refused the whole session), so resending cannot duplicate it.
        may_have_applied: bool,
    },
    /// One record's metered size exceeds the per-record/per-batch limit; refused locally.
    #[error("record {index} is too large: metered size {metered} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        index: usize,
        metered: u64,
        limit: u64,
    },
    /// One record's serialized JSON (with the request envelope) exceeds the JSON body cap.
    #[error("record {index} is too large: serialized JSON of {json_bytes} bytes exceeds the request body limit of {limit} bytes")]
    RecordJsonTooLarge {
        index: usize,
        json_bytes: usize,
        limit: usize,
    },
    /// A group of records that must share one append cannot fit in any single append.
    #[error(
        "group of {records} records starting at record {index} cannot fit in one append: {reason}"
    )]
    GroupTooLarge {
        index: usize,
        records: usize,
        reason: String,
    },
    /// The client configuration is unusable (bad URL, invalid limits, …).
    #[error("invalid S2 client configuration: {0}")]
    InvalidConfig(String),
}

fn fmt_opt(v: &Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

impl S2Error {
    /// How the delivery engine should treat this failure (S2's code table via sink-core).
    ///
    /// Connect failures are `Retryable` (nothing was sent); timeouts and mid-request transport
    /// failures are `OutcomeUnknown`; local refusals and config errors are `NeedsAttention`.
    pub fn class(&self) -> ErrorClass {
        match self {
            S2Error::Api { status, code, .. } => classify_status(*status, Some(code)),
            S2Error::SeqNumMismatch { .. } | S2Error::FencingTokenMismatch { .. } => {
                classify_status(412, None)
            }
            S2Error::RangeNotSatisfiable { .. } => classify_status(416, None),
            S2Error::Http { status, .. } => classify_status(*status, None),
            // A 2xx we cannot parse: S2 may well have applied the request.
            S2Error::Decode { .. } => ErrorClass::OutcomeUnknown,
            S2Error::Connect { .. } => ErrorClass::Retryable,
            S2Error::Timeout { .. } | S2Error::Transport { .. } => ErrorClass::OutcomeUnknown,
            S2Error::SessionEnded {
                may_have_applied, ..
            } => {
                if *may_have_applied {
                    ErrorClass::OutcomeUnknown
                } else {
                    ErrorClass::Retryable
                }
            }
            S2Error::RecordTooLarge { .. }
            | S2Error::RecordJsonTooLarge { .. }
            | S2Error::GroupTooLarge { .. }
            | S2Error::InvalidConfig(_) => ErrorClass::NeedsAttention,
        }
    }

    /// Whether the append may already be in the stream (reconcile before resending).
    pub fn may_have_applied(&self) -> bool {
        self.class() == ErrorClass::OutcomeUnknown
    }

    /// HTTP status of the response, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            S2Error::Api { status, .. }
            | S2Error::Http { status, .. }
            | S2Error::Decode { status, .. } => Some(*status),
            S2Error::SeqNumMismatch { .. } | S2Error::FencingTokenMismatch { .. } => Some(412),
            S2Error::RangeNotSatisfiable { .. } => Some(416),
            _ => None,
        }
    }

    /// A short machine-readable code: S2's error code (`stream_not_found`, …), the 412 kind
    /// (`seq_num_mismatch`, `fencing_token_mismatch`), or a local code (`record_too_large`,
    /// `connect`, `timeout`, `transport`, …). `None` for a non-S2 HTTP body.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            S2Error::Api { code, .. } => code,
            S2Error::SeqNumMismatch { .. } => "seq_num_mismatch",
            S2Error::FencingTokenMismatch { .. } => "fencing_token_mismatch",
            S2Error::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            S2Error::Http { .. } => return None,
            S2Error::Decode { .. } => "decode",
            S2Error::Connect { .. } => "connect",
            S2Error::Timeout { .. } => "timeout",
            S2Error::Transport { .. } => "transport",
            S2Error::SessionEnded { .. } => "session_ended",
            S2Error::RecordTooLarge { .. } | S2Error::RecordJsonTooLarge { .. } => {
                "record_too_large"
            }
            S2Error::GroupTooLarge { .. } => "group_too_large",
            S2Error::InvalidConfig(_) => "invalid_config",
        })
    }

    /// The response body as received (truncated), if there was one.
    pub fn body(&self) -> Option<&str> {
        match self {
            S2Error::Api { body, .. }
            | S2Error::SeqNumMismatch { body, .. }
            | S2Error::FencingTokenMismatch { body, .. }
            | S2Error::RangeNotSatisfiable { body, .. }
            | S2Error::Http { body, .. }
            | S2Error::Decode { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The server's requested wait (`Retry-After` as seconds or an HTTP-date, or `retry-after-ms`;
    /// the larger). A date already past is `Some(Duration::ZERO)`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            S2Error::Api { retry_after, .. } | S2Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The record to store with a failed message (class, status, code, message, body, now).
    pub fn to_last_error(&self) -> LastError {
        LastError {
            class: self.class(),
            status: self.status(),
            code: self.code().map(str::to_owned),
            message: self.to_string(),
            body: self.body().map(str::to_owned),
            at_ms: s2sink_core::now_millis(),
        }
    }
}

/// Truncates `body` to at most [`MAX_ERROR_BODY_BYTES`] on a char boundary, marking the cut.
pub(crate) fn truncate_body(body: &str) -> String {
    if body.len() <= MAX_ERROR_BODY_BYTES {
        return body.to_string();
    }
    let mut end = MAX_ERROR_BODY_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated, {} bytes total]", &body[..end], body.len())
}

/// Parses `Retry-After` and `retry-after-ms`, returning the larger.
///
/// `Retry-After` is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3; IMF-fixdate and the
/// obsolete RFC 850 / asctime forms); a date is turned into the wait from now, and a date in
/// the past means no wait (`Duration::ZERO`). An unparseable value is ignored.
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after_at(headers, std::time::SystemTime::now())
}

/// [`parse_retry_after`] with the current time given (for tests).
fn parse_retry_after_at(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let secs = get("retry-after").and_then(|v| match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v)
            .ok()
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
    });
    let ms = get("retry-after-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    secs.max(ms)
}

/// The error for a request reqwest could not complete: connect failures (nothing was sent)
/// apart from timeouts and mid-request failures (it may have been).
pub(crate) fn transport_error(context: &str, e: reqwest::Error) -> S2Error {
    // The URL holds no secret (the token travels in a header), but drop it anyway: the
    // context already names the target, and URLs may carry userinfo.
    let source = e.without_url();
    let context = context.to_string();
    if source.is_connect() {
        S2Error::Connect { context, source }
    } else if source.is_timeout() {
        S2Error::Timeout { context, source }
    } else {
        S2Error::Transport { context, source }
    }
}

/// Builds the error for a non-success response from its status, headers and body.
pub(crate) fn from_response(
    context: String,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    expected_seq_num: Option<u64>,
) -> S2Error {
    #[derive(serde::Deserialize)]
    struct ErrorInfo {
        code: String,
        message: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum ConditionFailed {
        SeqNumMismatch(u64),
        FencingTokenMismatch(String),
    }
    #[derive(serde::Deserialize)]
    struct Tail {
        tail: StreamPosition,
    }

    let kept = truncate_body(body);
    if status == 412 {
        match serde_json::from_str::<ConditionFailed>(body) {
            Ok(ConditionFailed::SeqNumMismatch(actual)) => {
                return S2Error::SeqNumMismatch {
                    context,
                    expected: expected_seq_num,
                    actual,
                    body: kept,
                }
            }
            Ok(ConditionFailed::FencingTokenMismatch(actual)) => {
                return S2Error::FencingTokenMismatch {
                    context,
                    actual,
                    body: kept,
                }
            }
            Err(_) => {}
        }
    }
    if status == 416 {
        if let Ok(Tail { tail }) = serde_json::from_str(body) {
            return S2Error::RangeNotSatisfiable {
                context,
                tail,
                body: kept,
            };
        }
    }
    match serde_json::from_str::<ErrorInfo>(body) {
        Ok(info) => S2Error::Api {
            context,
            status,
            code: info.code,
            message: info.message,
            body: kept,
            retry_after,
        },
        Err(_) => S2Error::Http {
            context,
            status,
            body: kept,
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn err(status: u16, body: &str) -> S2Error {
        from_response("append".into(), status, None, body, Some(5))
    }

    #[test]
    fn parses_s2_error_bodies() {
        let e = err(
            404,
            r#"{"code":"stream_not_found","message":"stream `x` not found"}"#,
        );
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code(), Some("stream_not_found"));
        assert_eq!(e.class(), ErrorClass::NeedsAttention);
        assert!(e.to_string().contains("stream `x` not found"), "{e}");

        let e = err(412, r#"{"seq_num_mismatch":7}"#);
        assert!(matches!(
            e,
            S2Error::SeqNumMismatch {
                expected: Some(5),
                actual: 7,
                ..
            }
        ));
        assert_eq!(e.code(), Some("seq_num_mismatch"));

        let e = err(412, r#"{"fencing_token_mismatch":"w1"}"#);
        assert!(matches!(&e, S2Error::FencingTokenMismatch { actual, .. } if actual == "w1"));

        let e = err(416, r#"{"tail":{"seq_num":8,"timestamp":9}}"#);
        assert!(matches!(&e, S2Error::RangeNotSatisfiable { tail, .. } if tail.seq_num == 8));
    }

    #[test]
    fn non_json_bodies_kept_verbatim_and_truncated() {
        let e = err(502, "<html>Bad Gateway</html>");
        assert!(matches!(e, S2Error::Http { status: 502, .. }));
        assert_eq!(e.body(), Some("<html>Bad Gateway</html>"));
        assert_eq!(e.code(), None);
        assert_eq!(e.class(), ErrorClass::Retryable);

        let big = "é".repeat(5000);
        let e = err(500, &big);
        let body = e.body().unwrap();
        assert!(body.len() < MAX_ERROR_BODY_BYTES + 64);
        assert!(body.contains("truncated, 10000 bytes total"), "{body}");
    }

    #[test]
    fn retry_after_takes_larger_header() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("2500"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(2500)));
        h.insert("retry-after-ms", HeaderValue::from_static("100"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        // A date in the past: no wait, so the larger is `retry-after-ms`.
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(100)));
        // Garbage is ignored.
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(100)));
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_wait_until_then() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let date = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let at = |h: &HeaderMap, before: Duration| parse_retry_after_at(h, date - before);
        assert_eq!(
            at(&h, Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at(&h, Duration::ZERO), Some(Duration::ZERO));
        // In the past: no wait (not "no header").
        assert_eq!(
            parse_retry_after_at(&h, date + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
        // The obsolete forms HTTP-date also allows.
        for old in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            h.insert("retry-after", HeaderValue::from_static(old));
            assert_eq!(
                at(&h, Duration::from_secs(7)),
                Some(Duration::from_secs(7)),
                "{old}"
            );
        }
        // Against the real clock: a date a minute ahead asks for about a minute.
        let ahead = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        h.insert("retry-after", HeaderValue::from_str(&ahead).unwrap());
        let wait = parse_retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
    }

    #[test]
    fn local_errors_need_attention_and_state_sizes() {
        let e = S2Error::RecordTooLarge {
            index: 3,
            metered: 1_048_577,
            limit: 1_048_576,
        };
        assert_eq!(e.class(), ErrorClass::NeedsAttention);
        assert!(!e.may_have_applied());
        let m = e.to_string();
        assert!(m.contains("1048577") && m.contains("1048576"), "{m}");
        let le = e.to_last_error();
        assert_eq!(le.code.as_deref(), Some("record_too_large"));
        assert_eq!(le.status, None);
    }

    #[test]
    fn last_error_carries_status_code_and_body() {
        let e = from_response(
            "append".into(),
            503,
            Some(Duration::from_secs(1)),
            r#"{"code":"unavailable","message":"m"}"#,
            None,
        );
        assert!(e.may_have_applied());
        let le = e.to_last_error();
        assert_eq!(le.class, ErrorClass::OutcomeUnknown);
        assert_eq!(le.status, Some(503));
        assert_eq!(le.code.as_deref(), Some("unavailable"));
        assert_eq!(
            le.body.as_deref(),
            Some(r#"{"code":"unavailable","message":"m"}"#)
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }
}
