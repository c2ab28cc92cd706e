//! `s2-sink serve`: config → queue → engine → HTTP server, with graceful stop and reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use s2sink_queue::{Queue, QueueOptions};

use crate::config::{self, Config};
use crate::engine::{Clock, Engine, EngineOptions};
use crate::http::{self, AppState};
use crate::ServerError;

/// Runs the server until SIGTERM/SIGINT; SIGHUP reloads functions and sink settings.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let server_cfg = config.server.clone();
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
            ..Default::default()
        },
    )?;
    let state = web::Data::new(AppState {
        engine: engine.clone(),
        api_token: server_cfg.api_token.clone(),
        max_body_bytes: server_cfg.max_body_bytes,
        config_path: config_path.clone(),
        clock: Clock::new(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(http::configure)
    })
    .workers(2)
    .disable_signals()
    .bind(&server_cfg.listen)
    .map_err(|e| ServerError::Config {
        key: "server.listen".into(),
        reason: format!("cannot listen on {}: {e}", server_cfg.listen),
    })?
    .run();
    tracing::info!(listen = %server_cfg.listen, "s2-sink listening");
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
                    match &config_path {
                        Some(path) => {
                            let env: HashMap<String, String> = std::env::vars().collect();
                            let res = match config::load(path, &env) {
                                Ok(c) => engine.reload(c.sinks).await,
                                Err(e) => Err(e),
                            };
                            match res {
                                Ok(()) => tracing::info!("config reloaded"),
                                Err(e) => tracing::error!(error = %e, "reload failed; keeping the running config"),
                            }
                        }
                        None => tracing::warn!("SIGHUP ignored: no config file"),
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
