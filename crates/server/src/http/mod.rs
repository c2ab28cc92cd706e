//! The HTTP API (actix-web): ingest, management, metrics, health and the web console.
//!
//! Every request passes [`guard::guard`] first: `Host` must name this server (DNS rebinding),
//! state-changing requests from another site are refused (CSRF), CORS headers only for
//! configured origins, and every error the server produces leaves as
//! `{"error":{"code","message"}}`.

mod access;
mod auth;
mod codec_errors;
mod console;
mod error;
mod guard;
mod ingest;
mod manage;
mod metrics;
mod openapi;
mod params;
mod schema;
pub mod sources;
mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::web;

pub use codec_errors::JsonCodecErrors;
pub use error::ApiError;
pub use ingest::parse_messages;
pub use metrics::render as render_metrics;

use s2sink_source_postgres::PostgresSourceConfig;

use crate::config::ServerSection;
use crate::engine::{Clock, Engine};
use crate::sources::Sources;
use crate::ServerError;

/// `[server]` settings that a reload applies without a restart.
#[derive(Clone)]
pub struct LiveSettings {
    /// Bearer token guarding `/api`; `None` = open.
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Log one line per request (`server.access_log`).
    pub access_log: bool,
    /// Longest time to receive an ingest body.
    pub body_timeout: Duration,
    /// How long an ingest request waits for a free slot before 503.
    pub ingest_queue_timeout: Duration,
    /// Extra names accepted in `Host`.
    pub allowed_hosts: Vec<String>,
    /// Origins that get CORS headers and may write cross-site.
    pub cors_allowed_origins: Vec<String>,
}

impl LiveSettings {
    fn from_section(s: &ServerSection) -> LiveSettings {
        LiveSettings {
            api_token: s.api_token.clone(),
            max_body_bytes: s.max_body_bytes,
            access_log: s.access_log,
            body_timeout: Duration::from_millis(s.body_timeout_ms),
            ingest_queue_timeout: Duration::from_millis(s.ingest_queue_timeout_ms),
            allowed_hosts: s.allowed_hosts.clone(),
            cors_allowed_origins: s
                .cors_allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }
}

/// What every handler can reach.
pub struct AppState {
    pub engine: Engine,
    /// The address the server listens on (what `Host` may name).
    pub listen: SocketAddr,
    /// The config file, for `POST /api/reload` and SIGHUP.
    pub config_path: Option<PathBuf>,
    pub clock: Clock,
    live: RwLock<Arc<LiveSettings>>,
    /// The `[server]` section currently in force (reloads compare against it).
    running: Mutex<ServerSection>,
    /// Ingest requests being processed (bounded: `server.max_concurrent_ingest`).
    ingest_slots: Arc<tokio::sync::Semaphore>,
    /// The built-in sources (`[[sources]]`) and the config they started with.
    pub sources: Sources,
    running_sources: Vec<PostgresSourceConfig>,
}

impl AppState {
    /// State for a server listening on `listen` with `server`'s settings.
    pub fn new(
        engine: Engine,
        server: &ServerSection,
        listen: SocketAddr,
        config_path: Option<PathBuf>,
        sources: (Sources, Vec<PostgresSourceConfig>),
    ) -> AppState {
        AppState {
            sources: sources.0,
            running_sources: sources.1,
            engine,
            listen,
            config_path,
            clock: Clock::new(),
            live: RwLock::new(Arc::new(LiveSettings::from_section(server))),
            running: Mutex::new(server.clone()),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(server.max_concurrent_ingest)),
        }
    }

    /// Every source's status as the API shows it (`GET /api/sources`, the console, metrics).
    pub fn source_views(&self) -> Vec<sources::SourceView> {
        self.sources
            .statuses()
            .iter()
            .zip(&self.running_sources)
            .map(|(s, c)| sources::SourceView::of(s.snapshot(), &c.sink))
            .collect()
    }

    fn running_max_concurrent_ingest(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_concurrent_ingest
    }

    /// The live settings right now.
    pub fn live(&self) -> Arc<LiveSettings> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the config file: sink settings and functions, plus the `[server]` keys that can
    /// change live (`api_token`, `max_body_bytes`, `body_timeout_ms`, `ingest_queue_timeout_ms`,
    /// `allowed_hosts`, `cors_allowed_origins`). A change to any other `[server]` key refuses
    /// the whole reload, naming the keys that need a restart; nothing is applied then.
    /// Returns the `[server]` keys that changed.
    pub async fn reload(&self) -> Result<Vec<&'static str>, ServerError> {
        let Some(path) = &self.config_path else {
            return Err(ServerError::InvalidRequest {
                reason: "the server was not started from a config file".into(),
            });
        };
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let config = crate::config::load(path, &env)?;
        let new = config.server;
        let sources_changed = !crate::sources::same_configs(&self.running_sources, &config.sources);
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let restart: Vec<&str> = [
            ("server.listen", old.listen != new.listen),
            ("server.data_dir", old.data_dir != new.data_dir),
            ("server.max_pending", old.max_pending != new.max_pending),
            (
                "server.max_concurrent_ingest",
                old.max_concurrent_ingest != new.max_concurrent_ingest,
            ),
            (
                "server.shutdown_timeout_ms",
                old.shutdown_timeout_ms != new.shutdown_timeout_ms,
            ),
            (
                "server.idempotency_max_keys",
                old.idempotency_max_keys != new.idempotency_max_keys,
            ),
            (
                "server.max_in_flight_bytes",
                old.max_in_flight_bytes != new.max_in_flight_bytes,
            ),
            (
                "server.max_held_bytes",
                old.max_held_bytes != new.max_held_bytes,
            ),
            (
                "server.payload_cache_bytes",
                old.payload_cache_bytes != new.payload_cache_bytes,
            ),
            (
                "server.engine_threads",
                old.engine_threads != new.engine_threads,
            ),
            ("server.memory", old.memory != new.memory),
            ("sources", sources_changed),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        if !restart.is_empty() {
            return Err(ServerError::Config {
                key: restart.join(", "),
                reason: "changed, and only a restart applies this; nothing was reloaded \
                         (restart the server, or put the old value back and reload)"
                    .into(),
            });
        }
        self.engine.reload(config.sinks).await?;
        let changed: Vec<&'static str> = [
            ("server.api_token", old.api_token != new.api_token),
            (
                "server.max_body_bytes",
                old.max_body_bytes != new.max_body_bytes,
            ),
            ("server.access_log", old.access_log != new.access_log),
            (
                "server.body_timeout_ms",
                old.body_timeout_ms != new.body_timeout_ms,
            ),
            (
                "server.ingest_queue_timeout_ms",
                old.ingest_queue_timeout_ms != new.ingest_queue_timeout_ms,
            ),
            (
                "server.allowed_hosts",
                old.allowed_hosts != new.allowed_hosts,
            ),
            (
                "server.cors_allowed_origins",
                old.cors_allowed_origins != new.cors_allowed_origins,
            ),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        *self.live.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(LiveSettings::from_section(&new));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(changed)
    }
}

/// Paths with the methods each takes and their handlers.
type Routes = Vec<(&'static str, Vec<(&'static str, actix_web::Route)>)>;

/// The routes outside `/api` (no token), plus the OpenAPI document.
fn open_routes() -> Routes {
    vec![
        ("/healthz", vec![("GET", web::get().to(metrics::healthz))]),
        ("/metrics", vec![("GET", web::get().to(metrics::metrics))]),
        ("/", vec![("GET", web::get().to(console::index))]),
        ("/console.js", vec![("GET", web::get().to(console::script))]),
        // Registered before the `/api` scope, so it needs no token.
        (
            "/api/openapi.json",
            vec![("GET", web::get().to(openapi::openapi_json))],
        ),
    ]
}

/// The routes under `/api` (bearer token when `server.api_token` is set).
fn api_routes() -> Routes {
    vec![
        ("/sinks", vec![("GET", web::get().to(manage::list_sinks))]),
        (
            "/sinks/{sink}",
            vec![("GET", web::get().to(manage::get_sink))],
        ),
        (
            "/sinks/{sink}/messages",
            vec![
                ("GET", web::get().to(manage::list_messages)),
                ("POST", web::post().to(ingest::ingest)),
            ],
        ),
        (
            "/sinks/{sink}/messages/{id}",
            vec![("GET", web::get().to(manage::get_message))],
        ),
        (
            "/sinks/{sink}/messages/{id}/{action}",
            vec![("POST", web::post().to(manage::message_action))],
        ),
        (
            "/sinks/{sink}/redeliver",
            vec![("POST", web::post().to(manage::redeliver_all))],
        ),
        (
            "/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start",
            vec![("POST", web::post().to(manage::reconcile_from_start))],
        ),
        (
            "/sinks/{sink}/discarded",
            vec![("GET", web::get().to(manage::discarded))],
        ),
        ("/reload", vec![("POST", web::post().to(manage::reload))]),
        (
            "/sources",
            vec![("GET", web::get().to(sources::list_sources))],
        ),
    ]
}

/// Every registered route as (full path, methods), for checking the OpenAPI document.
pub fn route_table() -> Vec<(String, Vec<&'static str>)> {
    let methods = |routes: &Vec<(&'static str, actix_web::Route)>| {
        routes.iter().map(|(m, _)| *m).collect::<Vec<_>>()
    };
    open_routes()
        .iter()
        .map(|(p, r)| (p.to_string(), methods(r)))
        .chain(
            api_routes()
                .iter()
                .map(|(p, r)| (format!("/api{p}"), methods(r))),
        )
        .collect()
}

/// The OpenAPI document served at `GET /api/openapi.json`.
pub fn openapi_document() -> &'static str {
    openapi::document()
}

/// Registers every route on an actix-web app (wrap the app with [`middleware`]). A known path
/// asked with a method it does not take answers `405 method_not_allowed` with `Allow`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(params::query_config())
        .app_data(params::path_config())
        .app_data(params::json_config());
    for (path, routes) in open_routes() {
        cfg.service(resource(path, routes));
    }
    let mut api = web::scope("/api").wrap(from_fn(auth::require_token));
    for (path, routes) in api_routes() {
        api = api.service(resource(path, routes));
    }
    cfg.service(api.default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::not_found("no such API route"))
    })))
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::not_found("no such route"))
    }));
}

/// One path with the routes it takes; any other method gets 405 naming the allowed ones.
fn resource(path: &str, routes: Vec<(&'static str, actix_web::Route)>) -> actix_web::Resource {
    let allowed: Vec<&'static str> = routes.iter().map(|(m, _)| *m).collect();
    let mut r = web::resource(path);
    for (_, route) in routes {
        r = r.route(route);
    }
    let allow = allowed.join(", ");
    r.default_service(web::to(move |req: actix_web::HttpRequest| {
        let allow = allow.clone();
        async move {
            let mut e = ApiError::new(
                actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} is not allowed on {}; use {allow}",
                    req.method(),
                    req.path()
                ),
            );
            e.allow = Some(allow);
            Err::<actix_web::HttpResponse, _>(e)
        }
    }))
}

/// The request guard (Host, cross-site writes, CORS, JSON errors); wrap the whole app with it.
pub use guard::guard as middleware;

/// The access log (one line per request); wrap it outside [`middleware`].
pub use access::log as access_log;
