//! API errors as `{"error":{"code","message"}}` with the right status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use super::views::{ErrorBody, ErrorDetail};

use crate::ServerError;

/// An API error: status, machine code, human message, optional `Retry-After` seconds.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// The methods a path takes, sent as `Allow` with a 405.
    pub allow: Option<String>,
}

impl ApiError {
    /// An error with a status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The machine code of an error the HTTP layer produces for a bare status (protocol and
/// extractor errors, unmatched routes).
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        421 => "host_not_allowed",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(allow) = &self.allow {
            resp.insert_header((header::ALLOW, allow.clone()));
        }
        resp.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        })
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        let message = e.to_string();
        match e {
            ServerError::UnknownSink { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_sink", message)
            }
            ServerError::UnknownMessage { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_message", message)
            }
            ServerError::InvalidMessage { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_message", message)
            }
            ServerError::InvalidRequest { .. } => ApiError::bad_request(message),
            ServerError::IdempotencyConflict { key, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                format!(
                    "Idempotency-Key `{key}` was already used for a different request (another body, Content-Type or `group`) within the sink's idempotency window; nothing was stored. Send a new request with a new key"
                ),
            ),
            ServerError::Backpressure { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "backpressure", message)
            },
            ServerError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            ServerError::Config { .. }
            | ServerError::Functions { .. }
            | ServerError::Settings { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
            }
            ServerError::Queue(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", message)
            }
            ServerError::Listen { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listen", message)
            }
            ServerError::S2(_) | ServerError::Delivery(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "s2", message)
            }
        }
    }
}
