//! The access log: one info line per HTTP request, so an operator can see who called what
//! and how it went without a proxy in front.
//!
//! Target `s2sink::access` (filter it with `RUST_LOG`, or switch it off with
//! `server.access_log = false`, applied on reload). Fields: method, the matched route pattern
//! (`/api/sinks/{sink}/messages`, so ids and names in paths do not explode log cardinality;
//! the raw path only for unmatched requests), status, duration in ms. Never headers, query
//! strings or bodies: tokens and payloads stay out of logs.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::AppState;

/// Middleware: calls the rest of the app, then logs the request when enabled.
pub async fn log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let enabled = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.live().access_log);
    if !enabled {
        return next.call(req).await;
    }
    let started = Instant::now();
    let method = req.method().clone();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| res.request().path().to_string());
    tracing::info!(
        target: "s2sink::access",
        method = %method,
        route = %route,
        status = res.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(res)
}
