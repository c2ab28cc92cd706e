//! Delivery-failure classes and the last error kept on a failed message.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// How a failed delivery attempt is handled and shown.
///
/// All three retry with backoff (nothing is dropped silently); the class tells the operator
/// whether waiting will help and the writer whether the append may already be in S2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient and known not to have been applied (429, 502 `hot_server`, connect refused…).
    Retryable,
    /// Transient, and the append may have been applied (408, 500, 503 `unavailable`, 504,
    /// timeout or reset after the body was sent): the stream must be reconciled before resending.
    OutcomeUnknown,
    /// Will not succeed without a person (401, 403, 404, 412, 422, oversize, transform error).
    NeedsAttention,
}

impl ErrorClass {
    /// The snake_case name used in the API, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::OutcomeUnknown => "outcome_unknown",
            ErrorClass::NeedsAttention => "needs_attention",
        }
    }
}

/// Classifies an S2 HTTP error by status and (when the body had one) S2 error code.
///
/// Follows S2's code table: codes with possible side effects are `OutcomeUnknown`; codes that
/// guarantee none (`rate_limited`, `hot_server`, `server_draining`, `transaction_conflict`) are
/// `Retryable`; unknown codes fall back to the status like the official SDK does.
pub fn classify_status(status: u16, code: Option<&str>) -> ErrorClass {
    match code {
        Some("rate_limited" | "hot_server" | "server_draining" | "transaction_conflict") => {
            return ErrorClass::Retryable
        }
        Some("request_timeout" | "other" | "storage" | "unavailable" | "upstream_timeout") => {
            return ErrorClass::OutcomeUnknown
        }
        Some("client_hangup") => return ErrorClass::OutcomeUnknown,
        _ => {}
    }
    match status {
        429 | 409 => ErrorClass::Retryable,
        408 | 499 | 500 | 503 | 504 => ErrorClass::OutcomeUnknown,
        // A proxy's 502 never reached S2 unless S2 says so; S2's own 502 is `hot_server`.
        502 => ErrorClass::Retryable,
        s if s >= 500 => ErrorClass::OutcomeUnknown,
        _ => ErrorClass::NeedsAttention,
    }
}

/// The last failure of a message, stored with it and shown by the API and console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub class: ErrorClass,
    /// HTTP status of S2's (or a proxy's) response; `None` for local or transport errors.
    #[serde(default)]
    pub status: Option<u16>,
    /// S2 error code (`stream_not_found`, …) or a local code (`record_too_large`, `transform`).
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
    /// The response body as received (truncated), so the exact S2 answer can be inspected.
    #[serde(default)]
    pub body: Option<String>,
    /// When the attempt failed.
    pub at_ms: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn s2_code_table() {
        assert_eq!(classify_status(429, Some("rate_limited")), Retryable);
        assert_eq!(classify_status(502, Some("hot_server")), Retryable);
        assert_eq!(classify_status(503, Some("server_draining")), Retryable);
        assert_eq!(classify_status(503, Some("unavailable")), OutcomeUnknown);
        assert_eq!(classify_status(500, Some("storage")), OutcomeUnknown);
        assert_eq!(
            classify_status(408, Some("request_timeout")),
            OutcomeUnknown
        );
        assert_eq!(
            classify_status(504, Some("upstream_timeout")),
            OutcomeUnknown
        );
        assert_eq!(classify_status(401, Some("authn")), NeedsAttention);
        assert_eq!(
            classify_status(403, Some("permission_denied")),
            NeedsAttention
        );
        assert_eq!(
            classify_status(404, Some("stream_not_found")),
            NeedsAttention
        );
        assert_eq!(classify_status(412, None), NeedsAttention);
        assert_eq!(classify_status(422, Some("invalid")), NeedsAttention);
        assert_eq!(classify_status(413, None), NeedsAttention);
    }

    #[test]
    fn unknown_bodies_classified_by_status() {
        assert_eq!(classify_status(500, None), OutcomeUnknown);
        assert_eq!(classify_status(502, None), Retryable);
        assert_eq!(classify_status(503, None), OutcomeUnknown);
        assert_eq!(classify_status(429, None), Retryable);
        assert_eq!(classify_status(400, Some("bad_json")), NeedsAttention);
    }

    #[test]
    fn last_error_round_trips() {
        let e = LastError {
            class: NeedsAttention,
            status: Some(404),
            code: Some("stream_not_found".into()),
            message: "stream `x` not found".into(),
            body: Some("{}".into()),
            at_ms: 5,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["class"], "needs_attention");
        assert_eq!(serde_json::from_value::<LastError>(v).unwrap(), e);
    }
}
