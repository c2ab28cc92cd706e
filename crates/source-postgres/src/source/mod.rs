//! The run loop: connect, check, create what is missing, backfill once, stream, reconnect.
//! The checks and catalog reads, the backfill and the streaming loop are in the submodules;
//! they extend the same [`Session`].

mod backfill;
mod checks;
mod stream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio_postgres::{Client, NoTls};

use crate::config::{quote_ident, quote_literal, ConnParams, PostgresSourceConfig, TableName};
use crate::decode::format_unix_micros;
use crate::pgoutput::{self, Cell, Column, Message, Relation, Relations, TxContext};
use crate::status::{SourceState, SourceStatus};
use crate::{Change, ChangeSink, Position, SourceError};

/// Session settings for both connections, so values print the way `decode` parses them.
const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO,MDY -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres";
/// How long to wait for a slot held by another session to be released before giving up
/// (a previous session of ours may still be shutting down).
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a batch may wait, from its first change, for more before it is stored: what
/// batching adds to the commit → S2 latency at most. Changes already received are taken
/// without waiting, so under load batches still fill up to `max_batch`.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// How often the server's WAL position and the slot's confirmed flush LSN are polled.
const LAG_POLL: Duration = Duration::from_secs(2);

/// Runs the source until `shutdown` resolves: connects, checks, creates the publication and
/// slot if missing, optionally backfills, then streams. On connection loss it reconnects with
/// capped backoff (and updates `status`); it returns `Err` only for errors retrying cannot fix
/// (config, wal_level, privileges, missing table, table without primary key, slot active
/// elsewhere).
///
/// Works on a current-thread runtime (the replication client spawns one task).
pub async fn run(
    config: PostgresSourceConfig,
    sink: Arc<dyn ChangeSink>,
    status: Arc<SourceStatus>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SourceError> {
    let result = run_inner(&config, &sink, &status, shutdown).await;
    match &result {
        Ok(()) => status.set_state(SourceState::Stopped),
        Err(e) => {
            tracing::error!(source = %config.name, error = %e, "postgres source stopped");
            status.set_error(e.to_string());
        }
    }
    result
}

async fn run_inner(
    config: &PostgresSourceConfig,
    sink: &Arc<dyn ChangeSink>,
    status: &Arc<SourceStatus>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SourceError> {
    config.validate()?;
    let params = config.conn_params()?;
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        status.set_state(SourceState::Starting);
        let mut session = Session {
            config,
            params: &params,
            sink: sink.as_ref(),
            status,
            progressed: false,
        };
        let result = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = session.run() => r,
        };
        let progressed = session.progressed;
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // A slot held by an earlier session of ours is released once the server notices it
        // is gone: only the first attempt treats "active" as someone else's.
        let fatal = match err {
            SourceError::SlotActive { .. } => first,
            _ => err.is_fatal(),
        };
        if fatal {
            return Err(err);
        }
        if progressed {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(source = %config.name, error = %err, retry_in = ?backoff, "postgres source: retrying");
        status.set_error(err.to_string());
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        first = false;
    }
}

/// A failed query's message: the server's own text and SQLSTATE when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

fn now_unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The replication slot as `pg_replication_slots` shows it.
struct SlotInfo {
    plugin: Option<String>,
    database: Option<String>,
    active_pid: Option<i32>,
}

/// One connection attempt: everything from connecting to the stream ending.
struct Session<'a> {
    config: &'a PostgresSourceConfig,
    params: &'a ConnParams,
    sink: &'a dyn ChangeSink,
    status: &'a Arc<SourceStatus>,
    /// Stored or confirmed something (resets the backoff).
    progressed: bool,
}

impl Session<'_> {
    fn conn_err(&self, context: impl Into<String>, message: impl Into<String>) -> SourceError {
        SourceError::Connection {
            source_name: self.config.name.clone(),
            context: context.into(),
            message: message.into(),
        }
    }

    fn query_err(&self, context: &str, e: tokio_postgres::Error) -> SourceError {
        let source_name = self.config.name.clone();
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            return SourceError::Privileges {
                source_name,
                message: format!("{context}: {}", describe(&e)),
            };
        }
        SourceError::Connection {
            source_name,
            context: context.to_string(),
            message: describe(&e),
        }
    }

    fn application_name(&self) -> String {
        format!("s2-sink/{}", self.config.name)
    }

    async fn connect_query(&self) -> Result<Client, SourceError> {
        let mut pg = self.params.pg.clone();
        pg.options(SESSION_OPTIONS)
            .application_name(self.application_name())
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = pg.connect(NoTls).await.map_err(|e| {
            use tokio_postgres::error::SqlState;
            let refused = [
                SqlState::INVALID_PASSWORD,
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                SqlState::INVALID_CATALOG_NAME,
            ];
            match e.code() {
                Some(code) if refused.contains(code) => SourceError::Rejected {
                    source_name: self.config.name.clone(),
                    message: describe(&e),
                },
                _ => self.conn_err("connect", describe(&e)),
            }
        })?;
        let name = self.config.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(source = %name, error = %describe(&e), "query connection ended");
            }
        });
        Ok(client)
    }

    async fn run(&mut self) -> Result<(), SourceError> {
        let cfg = self.config;
        let client = self.connect_query().await?;
        self.check_server(&client).await?;
        let tables = cfg.table_names();
        let mut table_oids = Vec::new();
        for t in &tables {
            table_oids.push(self.check_table(&client, t).await?);
        }
        self.ensure_publication(&client, &tables).await?;
        let slot = self.slot_info(&client).await?;
        if let Some(slot) = &slot {
            self.check_slot(&client, slot).await?;
        }
        let stored = self.sink.stored_position().map_err(|e| SourceError::Sink {
            source_name: cfg.name.clone(),
            sink: cfg.sink.clone(),
            message: format!("reading the stored position: {e}"),
        })?;

        let rcfg = ReplicationConfig::new(
            self.params.host.clone(),
            self.params.user.clone(),
            self.params.password.clone(),
            self.params.dbname.clone(),
            cfg.slot.clone(),
            cfg.publication.clone(),
        )
        .with_port(self.params.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::ZERO)
        .with_options(SESSION_OPTIONS)
        .with_application_name(self.application_name())
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(4 * cfg.max_batch.max(256));
        let mut repl = ReplicationClient::connect_gated(rcfg)
            .await
            .map_err(|e| self.conn_err("replication connect", e.to_string()))?;

        // Backfill when asked and not done yet: nothing stored, or an interrupted backfill
        // (a stored backfill position without the done bit).
        let want_backfill = cfg.backfill
            && match stored {
                None => true,
                Some(p) => p.is_backfill() && p.commit_idx & Position::BACKFILL_DONE == 0,
            };
        let mut snapshot = None;
        if slot.is_none() {
            let export = if want_backfill {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            };
            let rows = repl
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export}",
                    quote_ident(&cfg.slot)
                ))
                .await
                .map_err(|e| self.repl_err("create replication slot", e))?;
            let col = |i: usize| {
                rows.first()
                    .and_then(|r| r.get(i).cloned().flatten())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            tracing::info!(source = %cfg.name, slot = %cfg.slot, consistent_point = ?col(1), "created replication slot");
            snapshot = col(2).zip(col(1));
        }
        let mut stored = stored;
        if want_backfill {
            let base = match stored {
                Some(p) => p.commit_idx + 1,
                None => 0,
            };
            if let Some(last) = self
                .backfill(&client, &tables, &table_oids, snapshot, base)
                .await?
            {
                stored = Some(last);
            }
        }

        repl.start()
            .await
            .map_err(|e| self.repl_err("start replication", e))?;
        repl.wait_started()
            .await
            .map_err(|e| self.repl_err("start replication", e))?;
        self.status.set_state(SourceState::Streaming);
        tracing::info!(source = %cfg.name, slot = %cfg.slot, ?stored, "streaming");
        let wanted: HashSet<TableName> = tables.into_iter().collect();
        self.stream(&client, &mut repl, stored, &wanted).await
    }

    fn repl_err(&self, context: &str, e: pgwire_replication::PgWireError) -> SourceError {
        let msg = e.to_string();
        if let Some(i) = msg.find("is active for PID") {
            return SourceError::SlotActive {
                source_name: self.config.name.clone(),
                slot: self.config.slot.clone(),
                pid: msg[i + "is active for PID".len()..].trim().to_string(),
            };
        }
        if e.is_auth() || msg.contains("must be superuser or replication role") {
            return SourceError::Privileges {
                source_name: self.config.name.clone(),
                message: format!("{context}: {msg}"),
            };
        }
        self.conn_err(context, msg)
    }

    fn sink_err(&self, e: String) -> SourceError {
        SourceError::Sink {
            source_name: self.config.name.clone(),
            sink: self.config.sink.clone(),
            message: e,
        }
    }
}
