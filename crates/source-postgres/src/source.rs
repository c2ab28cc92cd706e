//! The run loop: connect, check, create what is missing, backfill once, stream, reconnect.

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
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| self.conn_err("connect", describe(&e)))?;
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

    async fn check_server(&self, client: &Client) -> Result<(), SourceError> {
        let cfg = self.config;
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), \
                 (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .await
            .map_err(|e| self.query_err("checking the server", e))?;
        let wal_level: String = row.get(0);
        if wal_level != "logical" {
            return Err(SourceError::WalLevel {
                source_name: cfg.name.clone(),
                actual: wal_level,
            });
        }
        let may_replicate: Option<bool> = row.get(1);
        if may_replicate != Some(true) {
            return Err(SourceError::Privileges {
                source_name: cfg.name.clone(),
                message: format!(
                    "user `{}` has neither the REPLICATION attribute nor superuser \
                     (ALTER ROLE {} WITH REPLICATION)",
                    self.params.user,
                    quote_ident(&self.params.user)
                ),
            });
        }
        Ok(())
    }

    /// The table's OID, after checking it exists and has a primary key.
    async fn check_table(&self, client: &Client, t: &TableName) -> Result<u32, SourceError> {
        let row = client
            .query_opt(
                "SELECT c.oid, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| self.query_err(&format!("looking up table {t}"), e))?;
        let Some(row) = row else {
            return Err(SourceError::MissingTable {
                source_name: self.config.name.clone(),
                table: t.to_string(),
            });
        };
        if !row.get::<_, bool>(1) {
            return Err(SourceError::NoPrimaryKey {
                source_name: self.config.name.clone(),
                table: t.to_string(),
            });
        }
        Ok(row.get(0))
    }

    async fn ensure_publication(
        &self,
        client: &Client,
        tables: &[TableName],
    ) -> Result<(), SourceError> {
        let cfg = self.config;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&cfg.publication],
            )
            .await
            .map_err(|e| self.query_err("looking up the publication", e))?
            .is_some();
        if !exists {
            let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&cfg.publication),
                list.join(", ")
            );
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(source = %cfg.name, publication = %cfg.publication, "created publication");
                    return Ok(());
                }
                // Created concurrently: check it like an existing one.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => return Err(self.query_err("creating the publication", e)),
            }
        }
        let rows = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&cfg.publication],
            )
            .await
            .map_err(|e| self.query_err("reading the publication's tables", e))?;
        let published: HashSet<TableName> = rows
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .collect();
        for t in tables {
            if !published.contains(t) {
                return Err(SourceError::PublicationMismatch {
                    source_name: cfg.name.clone(),
                    publication: cfg.publication.clone(),
                    table: t.to_string(),
                });
            }
        }
        Ok(())
    }

    async fn slot_info(&self, client: &Client) -> Result<Option<SlotInfo>, SourceError> {
        let row = client
            .query_opt(
                "SELECT plugin::text, database::text, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(|e| self.query_err("looking up the replication slot", e))?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active_pid: r.get(2),
        }))
    }

    async fn check_slot(&self, client: &Client, slot: &SlotInfo) -> Result<(), SourceError> {
        let cfg = self.config;
        let mismatch = |message: String| SourceError::SlotMismatch {
            source_name: cfg.name.clone(),
            slot: cfg.slot.clone(),
            message,
        };
        if slot.plugin.as_deref() != Some("pgoutput") {
            return Err(mismatch(format!(
                "uses plugin {:?}, not pgoutput (a physical slot, or another decoder)",
                slot.plugin
            )));
        }
        if slot.database.as_deref() != Some(self.params.dbname.as_str()) {
            return Err(mismatch(format!(
                "belongs to database {:?}, not `{}`",
                slot.database, self.params.dbname
            )));
        }
        let mut pid = slot.active_pid;
        let deadline = Instant::now() + SLOT_BUSY_WAIT;
        while let Some(p) = pid {
            if Instant::now() >= deadline {
                return Err(SourceError::SlotActive {
                    source_name: cfg.name.clone(),
                    slot: cfg.slot.clone(),
                    pid: p.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            pid = self.slot_info(client).await?.and_then(|s| s.active_pid);
        }
        Ok(())
    }

    /// The columns (name, type) and primary key of a table, from the catalog.
    async fn describe_table(
        &self,
        client: &Client,
        oid: u32,
        schema: &str,
        name: &str,
    ) -> Result<Relation, SourceError> {
        let cols = client
            .query(
                "SELECT attname::text, atttypid FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(|e| self.query_err(&format!("reading the columns of {schema}.{name}"), e))?;
        Ok(Relation {
            id: oid,
            schema: schema.to_string(),
            name: name.to_string(),
            columns: cols
                .iter()
                .map(|r| Column {
                    name: r.get(0),
                    type_oid: r.get(1),
                })
                .collect(),
            pk: self.primary_key(client, oid).await?,
        })
    }

    async fn primary_key(&self, client: &Client, oid: u32) -> Result<Vec<String>, SourceError> {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1 AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&oid],
            )
            .await
            .map_err(|e| self.query_err("reading a primary key", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn sink_err(&self, e: String) -> SourceError {
        SourceError::Sink {
            source_name: self.config.name.clone(),
            sink: self.config.sink.clone(),
            message: e,
        }
    }

    /// Reads every configured table (in the slot's exported snapshot when there is one, so
    /// backfill and stream neither overlap nor leave a gap) and stores its rows as `read`
    /// changes at positions `(0, base..)`. Returns the last stored position.
    async fn backfill(
        &mut self,
        client: &Client,
        tables: &[TableName],
        oids: &[u32],
        snapshot: Option<(String, String)>,
        base: u64,
    ) -> Result<Option<Position>, SourceError> {
        let cfg = self.config;
        self.status.set_state(SourceState::Backfilling);
        self.status.update_backfill(|b| {
            b.tables_total = tables.len();
            b.tables_done = 0;
            b.done = false;
        });
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| self.query_err("starting the backfill transaction", e))?;
        let backfill_id = match &snapshot {
            Some((name, consistent_point)) => {
                client
                    .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
                    .await
                    .map_err(|e| self.query_err("importing the slot's snapshot", e))?;
                format!("{}@{consistent_point}", cfg.slot)
            }
            None => {
                let row = client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .map_err(|e| self.query_err("starting the backfill", e))?;
                format!("{}@{}", cfg.slot, row.get::<_, String>(0))
            }
        };
        tracing::info!(source = %cfg.name, %backfill_id, exported_snapshot = snapshot.is_some(), "backfill starts");
        let read_time = format!("{}Z", format_unix_micros(now_unix_micros()));
        let mut next = base;
        let mut batch: Vec<Change> = Vec::new();
        let mut last = None;
        for (t, &oid) in tables.iter().zip(oids) {
            self.status
                .update_backfill(|b| b.current_table = Some(t.to_string()));
            let rel = self.describe_table(client, oid, &t.schema, &t.name).await?;
            let select: Vec<String> = rel
                .columns
                .iter()
                .map(|c| format!("{}::text", quote_ident(&c.name)))
                .collect();
            let order: Vec<String> = rel.pk.iter().map(|k| quote_ident(k)).collect();
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                select.join(", "),
                t.quoted(),
                order.join(", ")
            );
            let rows = client
                .query_raw(&sql, std::iter::empty::<i32>())
                .await
                .map_err(|e| self.query_err(&format!("reading {t}"), e))?;
            futures_util::pin_mut!(rows);
            while let Some(row) = rows.next().await {
                let row = row.map_err(|e| self.query_err(&format!("reading {t}"), e))?;
                let cells: Vec<Cell> = (0..rel.columns.len())
                    .map(|i| match row.get::<_, Option<String>>(i) {
                        Some(s) => Cell::Text(s),
                        None => Cell::Null,
                    })
                    .collect();
                if batch.len() >= cfg.max_batch {
                    self.store_backfill(std::mem::take(&mut batch)).await?;
                }
                batch.push(Change {
                    envelope: pgoutput::read_envelope(
                        &rel,
                        &cells,
                        &read_time,
                        &backfill_id,
                        &self.params.dbname,
                    ),
                    position: Position {
                        commit_lsn: 0,
                        commit_idx: next,
                    },
                });
                next += 1;
            }
            self.status.update_backfill(|b| b.tables_done += 1);
        }
        if let Some(change) = batch.last_mut() {
            change.position.commit_idx |= Position::BACKFILL_DONE;
            last = Some(change.position);
            self.store_backfill(batch).await?;
        }
        let _ = client.batch_execute("COMMIT").await;
        self.status.update_backfill(|b| {
            b.done = true;
            b.current_table = None;
        });
        tracing::info!(source = %cfg.name, rows = next - base, "backfill done");
        Ok(last)
    }

    async fn store_backfill(&mut self, batch: Vec<Change>) -> Result<(), SourceError> {
        let Some(last) = batch.last().map(|c| c.position) else {
            return Ok(());
        };
        let n = batch.len();
        self.sink
            .store(batch, last)
            .await
            .map_err(|e| self.sink_err(e))?;
        self.progressed = true;
        self.status.stored(n, last, None);
        self.status.update_backfill(|b| b.rows_stored += n as u64);
        Ok(())
    }

    async fn poll_lag(&self, client: &Client) {
        let row = client
            .query_opt(
                "SELECT pg_current_wal_lsn()::text, \
                 (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.config.slot],
            )
            .await;
        if let Ok(Some(row)) = row {
            let server: Option<String> = row.get(0);
            let confirmed: Option<String> = row.get(1);
            self.status.set_server_lsns(
                server.as_deref().and_then(parse_lsn),
                confirmed.as_deref().and_then(parse_lsn),
            );
        }
    }

    /// Consumes the slot until the stream fails. See the crate docs for the exactly-once
    /// rules; in short: skip positions <= `stored`, store in batches, confirm a commit's
    /// `end_lsn` only once all its changes are stored, confirm keepalives only when idle.
    async fn stream(
        &mut self,
        client: &Client,
        repl: &mut ReplicationClient,
        mut stored: Option<Position>,
        wanted: &HashSet<TableName>,
    ) -> Result<(), SourceError> {
        let cfg = self.config;
        let mut relations: Relations = Relations::new();
        // Relation ids of tables this source does not publish (extra tables in a shared
        // publication).
        let mut ignored: HashSet<u32> = HashSet::new();
        // (commit_lsn, commit time, next index) of the open transaction.
        let mut tx: Option<(u64, i64, u64)> = None;
        let mut batch: Vec<Change> = Vec::new();
        let mut batch_commit_micros: Option<i64> = None;
        // When the current batch must be stored (set by its first change).
        let mut batch_deadline: Option<tokio::time::Instant> = None;
        // End LSN of the last commit whose changes are all in `batch` or stored.
        let mut pending_ack: Option<u64> = None;
        let mut acked: u64 = 0;
        let mut last_poll = Instant::now() - LAG_POLL;
        let proto = |m: String| SourceError::Protocol {
            source_name: cfg.name.clone(),
            message: m,
        };

        loop {
            if last_poll.elapsed() >= LAG_POLL {
                self.poll_lag(client).await;
                last_poll = Instant::now();
            }
            let event = if batch.is_empty() {
                tokio::select! {
                    ev = repl.recv() => Some(ev),
                    _ = tokio::time::sleep_until((last_poll + LAG_POLL).into()) => None,
                }
            } else {
                let deadline = batch_deadline.unwrap_or_else(tokio::time::Instant::now);
                tokio::time::timeout_at(deadline, repl.recv()).await.ok()
            };
            let full = batch.len() >= cfg.max_batch;
            let event = match event {
                None if !batch.is_empty() => None,
                None => continue,
                Some(ev) => Some(ev.map_err(|e| self.repl_err("replication stream", e))?),
            };
            if event.is_none() || full {
                // Nothing more right now (or the batch is full): store what we have.
                let Some(last) = batch.last().map(|c| c.position) else {
                    continue;
                };
                let n = batch.len();
                batch_deadline = None;
                self.sink
                    .store(std::mem::take(&mut batch), last)
                    .await
                    .map_err(|e| self.sink_err(e))?;
                self.progressed = true;
                stored = Some(last);
                let commit_unix = batch_commit_micros.take().map(|m| m + 946_684_800_000_000);
                self.status.stored(n, last, commit_unix);
                if let Some(end) = pending_ack.take() {
                    if end > acked {
                        acked = end;
                        repl.update_applied_lsn(Lsn::from_u64(end));
                        self.status.set_confirmed(end);
                    }
                }
                if event.is_none() {
                    continue;
                }
            }
            let Some(event) = event else { continue };
            match event {
                None => {
                    return Err(self.conn_err("replication stream", "ended by the server"));
                }
                Some(ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                }) => {
                    tx = Some((final_lsn.as_u64(), commit_time_micros, 0));
                }
                Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                    tx = None;
                    let end = end_lsn.as_u64();
                    if batch.is_empty() {
                        if end > acked {
                            acked = end;
                            repl.update_applied_lsn(end_lsn);
                            self.status.set_confirmed(end);
                        }
                    } else {
                        pending_ack = Some(end);
                    }
                }
                Some(ReplicationEvent::KeepAlive { wal_end, .. }) => {
                    if tx.is_none() && batch.is_empty() {
                        self.status.set_caught_up();
                        let end = wal_end.as_u64();
                        if end > acked {
                            acked = end;
                            repl.update_applied_lsn(wal_end);
                            self.status.set_confirmed(end);
                        }
                    }
                }
                Some(ReplicationEvent::XLogData { data, .. }) => {
                    let msg = pgoutput::parse(&data).map_err(proto)?;
                    let (rel_id, envelope_of): (u32, EnvelopeOf) = match msg {
                        Message::Relation {
                            id,
                            schema,
                            name,
                            columns,
                        } => {
                            let t = TableName { schema, name };
                            if !wanted.contains(&t) {
                                ignored.insert(id);
                                relations.remove(&id);
                                continue;
                            }
                            ignored.remove(&id);
                            let pk = self.primary_key(client, id).await?;
                            relations.insert(
                                id,
                                Relation {
                                    id,
                                    schema: t.schema,
                                    name: t.name,
                                    columns,
                                    pk,
                                },
                            );
                            continue;
                        }
                        Message::Insert { rel, new } => (rel, EnvelopeOf::Insert(new)),
                        Message::Update { rel, old, new } => (rel, EnvelopeOf::Update(old, new)),
                        Message::Delete { rel, old } => (rel, EnvelopeOf::Delete(old.1)),
                        Message::Other(_) => continue,
                    };
                    let Some((commit_lsn, commit_time, idx)) = tx.as_mut() else {
                        return Err(proto("row change outside a transaction".into()));
                    };
                    let position = Position {
                        commit_lsn: *commit_lsn,
                        commit_idx: *idx,
                    };
                    // The index counts every change of the transaction, published table or
                    // not, so positions never depend on this source's table list.
                    *idx += 1;
                    if ignored.contains(&rel_id) || stored.is_some_and(|s| position <= s) {
                        continue;
                    }
                    let Some(rel) = relations.get(&rel_id) else {
                        return Err(proto(format!(
                            "change for relation {rel_id} before its Relation message"
                        )));
                    };
                    let ctx = TxContext {
                        commit_lsn: position.commit_lsn,
                        commit_idx: position.commit_idx,
                        commit_time_micros: *commit_time,
                        database: &self.params.dbname,
                    };
                    let envelope = match &envelope_of {
                        EnvelopeOf::Insert(new) => pgoutput::insert_envelope(rel, new, &ctx),
                        EnvelopeOf::Update(old, new) => {
                            pgoutput::update_envelope(rel, old.as_ref(), new, &ctx)
                        }
                        EnvelopeOf::Delete(old) => pgoutput::delete_envelope(rel, old, &ctx),
                    };
                    batch_commit_micros = Some(*commit_time);
                    if batch.is_empty() {
                        batch_deadline = Some(tokio::time::Instant::now() + BATCH_LINGER);
                    }
                    batch.push(Change { envelope, position });
                }
                Some(_) => {}
            }
        }
    }
}

enum EnvelopeOf {
    Insert(Vec<Cell>),
    Update(Option<(bool, Vec<Cell>)>, Vec<Cell>),
    Delete(Vec<Cell>),
}
