//! Backfill: the tables' rows as `read` changes, in the slot's exported snapshot, once.

use super::*;

impl Session<'_> {
    /// Reads every configured table (in the slot's exported snapshot when there is one, so
    /// backfill and stream neither overlap nor leave a gap) and stores its rows as `read`
    /// changes at positions `(0, base..)`. Returns the last stored position.
    pub(super) async fn backfill(
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

    pub(super) async fn store_backfill(&mut self, batch: Vec<Change>) -> Result<(), SourceError> {
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
}
