//! Streaming: consume the slot, batch changes, store them, confirm what is stored.

use super::*;

impl Session<'_> {
    pub(super) async fn poll_lag(&self, client: &Client) {
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
    pub(super) async fn stream(
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
