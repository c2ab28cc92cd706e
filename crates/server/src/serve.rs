//! `s2-sink serve`: config → queue → engine → HTTP server, with graceful stop and reload.

use std::path::PathBuf;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use s2sink_queue::{Queue, QueueOptions};

use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::http::{self, AppState};
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
    let engine = Engine::start(
        queue,
        config.sinks,
        EngineOptions {
            max_pending: server_cfg.max_pending,
            max_in_flight_bytes: Some(server_cfg.max_in_flight_bytes),
            ..Default::default()
        },
    )?;
    let state = web::Data::new(AppState::new(
        engine.clone(),
        &server_cfg,
        listen,
        config_path,
    ));
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(from_fn(http::middleware))
            .configure(http::configure)
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
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
        engine.shutdown(timeout).await;
        handle.stop(true).await;
    });
    server.await.map_err(|e| ServerError::Config {
        key: "server".into(),
        reason: e.to_string(),
    })
}
