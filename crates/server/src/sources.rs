//! Built-in sources (`[[sources]]`): producers inside the server that feed a sink's queue,
//! today a Postgres logical replication slot ([`s2sink_source_postgres`]).
//!
//! A source hands batches of change envelopes to [`QueueChangeSink`], which stores them with
//! [`Engine::ingest_at`]: the envelopes and the source's position go into one atomic queue
//! batch, so after a crash the source resumes right after what was stored and the slot never
//! moves past it. That is what makes Postgres → S2 exactly once end to end.

use std::sync::Arc;
use std::time::Duration;

use s2sink_queue::SourcePosition;
use s2sink_source_postgres::{
    BoxFuture, Change, ChangeSink, Position, PostgresSourceConfig, SourceStatus,
};
use tokio::sync::watch;

use crate::engine::{Engine, IngestItem};
use crate::ServerError;

/// How long a source waits before retrying a store the engine refused for a passing reason
/// (back-pressure); the source itself retries with its own backoff.
const BUSY_PAUSE: Duration = Duration::from_millis(200);

/// Stores a source's changes in its sink's queue, with the source's position.
pub struct QueueChangeSink {
    engine: Engine,
    sink: String,
    source: String,
}

impl QueueChangeSink {
    /// The sink `source` delivers to.
    pub fn new(engine: Engine, sink: &str, source: &str) -> QueueChangeSink {
        QueueChangeSink {
            engine,
            sink: sink.to_string(),
            source: source.to_string(),
        }
    }
}

impl ChangeSink for QueueChangeSink {
    fn store(&self, changes: Vec<Change>, position: Position) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let items = changes
                .into_iter()
                .map(|c| IngestItem::new(c.envelope))
                .collect();
            let value = position.to_bytes();
            let at = SourcePosition {
                source: &self.source,
                value: &value,
            };
            match self.engine.ingest_at(&self.sink, items, at).await {
                Ok(_) => Ok(()),
                Err(e @ ServerError::Backpressure { .. }) => {
                    tokio::time::sleep(BUSY_PAUSE).await;
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn stored_position(&self) -> Result<Option<Position>, String> {
        let bytes = self
            .engine
            .queue()
            .source_position(&self.sink, &self.source)
            .map_err(|e| e.to_string())?;
        match bytes {
            None => Ok(None),
            Some(b) => Position::from_bytes(&b).map(Some).ok_or_else(|| {
                format!(
                    "source `{}`: the stored position of sink `{}` is not 16 bytes",
                    self.source, self.sink
                )
            }),
        }
    }
}

/// The running sources: their status for the API and metrics, and a stop switch.
pub struct Sources {
    statuses: Vec<Arc<SourceStatus>>,
    stop: watch::Sender<bool>,
}

impl Sources {
    /// No sources (the engine-only embedding, tests).
    pub fn none() -> Sources {
        Sources {
            statuses: Vec::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Starts every configured source on the current actix arbiter. A source that stops with
    /// an error retrying cannot fix (wal_level, privileges, a missing table…) logs it and keeps
    /// it in its status (`GET /api/sources`); the rest of the server goes on.
    pub fn start(engine: &Engine, configs: Vec<PostgresSourceConfig>) -> Sources {
        let (stop, _) = watch::channel(false);
        let mut statuses = Vec::with_capacity(configs.len());
        for config in configs {
            let status = Arc::new(SourceStatus::new(&config.name));
            statuses.push(status.clone());
            let sink = Arc::new(QueueChangeSink::new(
                engine.clone(),
                &config.sink,
                &config.name,
            ));
            let mut stopped = stop.subscribe();
            let name = config.name.clone();
            tracing::info!(source = %name, sink = %config.sink, "postgres source starting");
            actix_rt::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                match s2sink_source_postgres::run(config, sink, status, shutdown).await {
                    Ok(()) => tracing::info!(source = %name, "source stopped"),
                    Err(e) => {
                        tracing::error!(source = %name, error = %e, "source stopped; fix the problem and restart the server")
                    }
                }
            });
        }
        Sources { statuses, stop }
    }

    /// Every source's status, in config order.
    pub fn statuses(&self) -> &[Arc<SourceStatus>] {
        &self.statuses
    }

    /// Asks every source to stop (they confirm nothing further to the database).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Whether two source lists are the same config (a reload that changes sources needs a
/// restart: a slot reader is not moved between databases live).
pub fn same_configs(a: &[PostgresSourceConfig], b: &[PostgresSourceConfig]) -> bool {
    let key = |c: &PostgresSourceConfig| {
        (
            c.name.clone(),
            c.url.clone(),
            c.url_env.clone(),
            c.publication.clone(),
            c.slot.clone(),
            c.tables.clone(),
            c.sink.clone(),
            c.backfill,
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}
