//! `s2-sink serve`: config → queue → engine → HTTP server, with graceful stop and reload.

use std::path::PathBuf;
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_server::ServerBuilder;
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::middleware::from_fn;
use actix_web::{web, App};
use s2sink_queue::{Queue, QueueOptions};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::http::{self, AppState, JsonCodecErrors};
use crate::sources::Sources;
use crate::ServerError;

/// Opens the listening socket, or [`ServerError::Listen`] naming the address and the cause.
pub fn bind(listen: &str) -> Result<std::net::TcpListener, ServerError> {
    std::net::TcpListener::bind(listen).map_err(|e| ServerError::Listen {
        addr: listen.to_string(),
        reason: match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("{e}: another process holds this port; stop it or change server.listen")
            }
            _ => e.to_string(),
        },
    })
}

/// How long a client has to send a request's line and headers (actix answers 408 after it).
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP server on `listener`: actix-web's app on actix-http's HTTP/1 service, built by hand
/// (rather than with `HttpServer`) so that each connection is wrapped in [`JsonCodecErrors`]
/// and the errors actix's codec sends by itself carry the JSON error body too.
fn http_server(
    state: web::Data<AppState>,
    listener: std::net::TcpListener,
    listen: std::net::SocketAddr,
) -> std::io::Result<ServerBuilder> {
    let builder = ServerBuilder::default();
    let shutdown = builder.graceful_shutdown_signal();
    builder
        .workers(2)
        .disable_signals()
        .listen("s2-sink-http", listener, move || {
            let state = state.clone();
            let shutdown = shutdown.clone();
            let app = App::new()
                .app_data(state)
                .wrap(from_fn(http::middleware))
                .wrap(from_fn(http::access_log))
                .configure(http::configure);
            let http = HttpService::build()
                .client_request_timeout(REQUEST_HEAD_TIMEOUT)
                .client_disconnect_timeout(Duration::from_secs(1))
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .local_addr(listen)
                .finish(map_config(
                    actix_service::IntoServiceFactory::into_factory(app)
                        .map_err(|e: actix_web::Error| e.error_response()),
                    |_| AppConfig::default(),
                ));
            fn_service(|io: TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    JsonCodecErrors::new(io),
                    Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })
}

/// Runs the server until SIGTERM/SIGINT; SIGHUP reloads functions, sink settings and the
/// `[server]` keys that apply live. The port is taken before the data dir is opened, so a port
/// in use fails fast ([`ServerError::Listen`]) without touching the queue.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let server_cfg = config.server.clone();
    let listener = bind(&server_cfg.listen)?;
    let listen = listener.local_addr().map_err(|e| ServerError::Listen {
        addr: server_cfg.listen.clone(),
        reason: e.to_string(),
    })?;
    let queue = Queue::open_with(
        &server_cfg.data_dir,
        QueueOptions {
            cache_capacity: 64 * 1024 * 1024,
            idempotency_max_keys: server_cfg.idempotency_max_keys,
            payload_cache_bytes: usize::try_from(server_cfg.payload_cache_bytes)
                .unwrap_or(usize::MAX),
            ..Default::default()
        },
    )?;
    for s in &config.sinks {
        tracing::info!(
            sink = %s.name,
            route = %s.route.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "(routing function)".into()),
            endpoint = ?s.s2.endpoint,
            "sink configured"
        );
    }
    let sinks = config.sinks.clone();
    actix_rt::spawn(async move {
        for row in crate::check::check_sinks(&sinks).await {
            if row.outcome == crate::check::Outcome::Fail {
                tracing::warn!(sink = %row.sink, check = %row.what, problem = %row.detail, "S2 check at start failed; messages for this sink will fail until it is fixed (see `s2-sink check`)");
            }
        }
    });
    let engine = Engine::start(
        queue,
        config.sinks,
        EngineOptions {
            max_pending: server_cfg.max_pending,
            max_in_flight_bytes: Some(server_cfg.max_in_flight_bytes),
            max_held_bytes: Some(server_cfg.max_held_bytes),
            threads: server_cfg.engine_threads,
            ..Default::default()
        },
    )?;
    for s in &config.sources {
        tracing::info!(source = %s.name, sink = %s.sink, tables = ?s.tables, "source configured");
    }
    let sources = Sources::start(&engine, config.sources.clone());
    let state = web::Data::new(AppState::new(
        engine.clone(),
        &server_cfg,
        listen,
        config_path,
        (sources, config.sources),
    ));
    let server = http_server(state.clone(), listener, listen)
        .map_err(|e| ServerError::Listen {
            addr: server_cfg.listen.clone(),
            reason: e.to_string(),
        })?
        .run();
    tracing::info!(listen = %listen, "s2-sink listening");
    let handle = server.handle();
    let timeout = Duration::from_millis(server_cfg.shutdown_timeout_ms);
    actix_rt::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    match state.reload().await {
                        Ok(keys) => tracing::info!(server_keys = ?keys, "config reloaded"),
                        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running config"),
                    }
                }
            }
        }
        tracing::info!("stopping: intake closed, waiting for in-flight appends");
        handle.pause().await;
        state.sources.stop();
        engine.shutdown(timeout).await;
        handle.stop(true).await;
    });
    server.await.map_err(|e| ServerError::Config {
        key: "server".into(),
        reason: e.to_string(),
    })
}
