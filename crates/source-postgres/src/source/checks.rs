//! Checks before streaming (wal_level, privileges, tables, publication, slot) and catalog reads.

use super::*;

impl Session<'_> {
    pub(super) async fn check_server(&self, client: &Client) -> Result<(), SourceError> {
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
    pub(super) async fn check_table(
        &self,
        client: &Client,
        t: &TableName,
    ) -> Result<u32, SourceError> {
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

    pub(super) async fn ensure_publication(
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

    pub(super) async fn slot_info(&self, client: &Client) -> Result<Option<SlotInfo>, SourceError> {
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

    pub(super) async fn check_slot(
        &self,
        client: &Client,
        slot: &SlotInfo,
    ) -> Result<(), SourceError> {
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
    pub(super) async fn describe_table(
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

    pub(super) async fn primary_key(
        &self,
        client: &Client,
        oid: u32,
    ) -> Result<Vec<String>, SourceError> {
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
}
