//! The HTTP API (actix-web): ingest, management, metrics, health and the web console.

mod auth;
mod console;
mod error;
mod ingest;
mod manage;
mod metrics;
mod views;

use std::path::PathBuf;

use actix_web::middleware::from_fn;
use actix_web::web;

pub use error::ApiError;
pub use ingest::parse_messages;
pub use metrics::render as render_metrics;

use crate::engine::{Clock, Engine};

/// What every handler can reach.
pub struct AppState {
    pub engine: Engine,
    /// Bearer token guarding `/api`; `None` = open.
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// The config file, for `POST /api/reload`.
    pub config_path: Option<PathBuf>,
    pub clock: Clock,
}

/// Registers every route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(metrics::healthz))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/", web::get().to(console::index))
        .service(
            web::scope("/api")
                .wrap(from_fn(auth::require_token))
                .route("/sinks", web::get().to(manage::list_sinks))
                .route("/sinks/{sink}", web::get().to(manage::get_sink))
                .route("/sinks/{sink}/messages", web::post().to(ingest::ingest))
                .route(
                    "/sinks/{sink}/messages",
                    web::get().to(manage::list_messages),
                )
                .route(
                    "/sinks/{sink}/messages/{id}",
                    web::get().to(manage::get_message),
                )
                .route(
                    "/sinks/{sink}/messages/{id}/{action}",
                    web::post().to(manage::message_action),
                )
                .route(
                    "/sinks/{sink}/redeliver",
                    web::post().to(manage::redeliver_all),
                )
                .route("/sinks/{sink}/discarded", web::get().to(manage::discarded))
                .route("/reload", web::post().to(manage::reload))
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::not_found("no such API route"))
                })),
        );
}
