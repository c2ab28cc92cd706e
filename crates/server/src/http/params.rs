//! Strict query parameters (unknown or repeated keys and bad numbers are 400 naming the key),
//! and extractor configs whose errors use the API's JSON error shape.

use std::collections::HashMap;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};

use super::error::ApiError;

/// The query parameters of one request, checked against the keys a route takes.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `req`'s query string; a key not in `allowed`, a key given twice, or a string that
    /// is not URL-encoding is a 400 naming the problem.
    pub fn parse(req: &HttpRequest, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|e| ApiError::bad_request(format!("query string: {e}")))?
            .into_inner();
        let mut out = HashMap::new();
        for (k, v) in pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`; this route takes {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            if out.insert(k.clone(), v).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{k}` is given more than once"
                )));
            }
        }
        Ok(Params(out))
    }

    /// A string parameter.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// An unsigned integer parameter within `min..=max`, or `default` when absent.
    pub fn int(&self, key: &str, min: u64, max: u64, default: u64) -> Result<u64, ApiError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter `{key}` must be an integer from {min} to {max}, got `{raw}`"
                ))),
            },
        }
    }

    /// An optional cursor parameter: an integer from 0 to `i64::MAX` (ids and sequence
    /// numbers are 63-bit: what the OpenAPI document promises as `int64`, and what every JSON
    /// client can send back).
    pub fn cursor(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if n <= i64::MAX as u64 => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter `{key}` must be an integer from 0 to {} (the cursor of the previous page), got `{raw}`",
                    i64::MAX
                ))),
            },
        }
    }
}

/// `web::Query` errors as JSON.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e: QueryPayloadError, _req| {
        ApiError::bad_request(format!("query string: {e}")).into()
    })
}

/// `web::Path` errors as JSON.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e: PathError, _req| ApiError::bad_request(format!("path: {e}")).into())
}

/// `web::Json` errors as JSON.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|e: JsonPayloadError, _req| {
        let status = match &e {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            JsonPayloadError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, super::error::code_for(status), e.to_string()).into()
    })
}
