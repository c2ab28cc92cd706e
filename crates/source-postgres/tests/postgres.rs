//! End-to-end tests against a real PostgreSQL (see `testing::TempPostgres`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s2sink_source_postgres::testing::TempPostgres;
use s2sink_source_postgres::{
    run, BoxFuture, Change, ChangeSink, Position, PostgresSourceConfig, SourceError, SourceState,
    SourceStatus,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An in-memory sink; `fail_after(n)` makes every store after the next `n` fail.
#[derive(Default)]
struct MemSink {
    state: Mutex<(Vec<Change>, Option<Position>)>,
    /// Stores left before failures start (usize::MAX = never fail).
    budget: AtomicUsize,
}

impl MemSink {
    fn new() -> Arc<MemSink> {
        Arc::new(MemSink {
            state: Mutex::default(),
            budget: AtomicUsize::new(usize::MAX),
        })
    }
    fn fail_after(&self, n: usize) {
        self.budget.store(n, Ordering::SeqCst);
    }
    fn heal(&self) {
        self.budget.store(usize::MAX, Ordering::SeqCst);
    }
    fn changes(&self) -> Vec<Change> {
        self.state.lock().unwrap().0.clone()
    }
    fn len(&self) -> usize {
        self.state.lock().unwrap().0.len()
    }
}

impl ChangeSink for MemSink {
    fn store(&self, changes: Vec<Change>, position: Position) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Err("injected failure".into());
            }
            if left != usize::MAX {
                self.budget.store(left - 1, Ordering::SeqCst);
            }
            let mut state = self.state.lock().unwrap();
            assert_eq!(changes.last().map(|c| c.position), Some(position));
            state.0.extend(changes);
            state.1 = Some(position);
            Ok(())
        })
    }
    fn stored_position(&self) -> Result<Option<Position>, String> {
        Ok(self.state.lock().unwrap().1)
    }
}

fn config(pg: &TempPostgres, name: &str, tables: &[&str]) -> PostgresSourceConfig {
    PostgresSourceConfig {
        name: name.into(),
        url: Some(pg.url()),
        url_env: None,
        publication: format!("{name}_pub"),
        slot: format!("{name}_slot"),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        sink: "mem".into(),
        backfill: false,
        max_batch: 1000,
    }
}

struct Running {
    handle: JoinHandle<Result<(), SourceError>>,
    status: Arc<SourceStatus>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn stop(mut self) -> Result<(), SourceError> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap()
    }
}

fn start(cfg: PostgresSourceConfig, sink: Arc<MemSink>) -> Running {
    let status = Arc::new(SourceStatus::new(cfg.name.clone()));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(run(cfg, sink, status.clone(), async move {
        let _ = rx.await;
    }));
    Running {
        handle,
        status,
        stop: Some(tx),
    }
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_streaming(r: &Running) {
    let status = r.status.clone();
    wait_for("streaming", 20, || {
        status.snapshot().state == SourceState::Streaming
    })
    .await;
}

fn b64(s: &str) -> String {
    s2sink_source_postgres::pgoutput::base64(s.as_bytes())
}

/// Checks the metadata that varies (timestamp, LSN) and returns the envelope with it removed.
fn strip_meta(change: &Change) -> Value {
    let mut env = change.envelope.clone();
    let meta = env["metadata"].as_object_mut().unwrap();
    let lsn = meta.remove("commit_lsn").unwrap();
    let idx = meta.remove("commit_idx").unwrap();
    let key = meta.remove("idempotency_key").unwrap();
    let ts = meta.remove("commit_timestamp").unwrap();
    assert_eq!(lsn, json!(change.position.commit_lsn));
    assert_eq!(idx, json!(change.position.commit_idx));
    assert!(change.position.commit_lsn > 0);
    assert_eq!(key, json!(b64(&format!("{lsn}:{idx}"))));
    let ts = ts.as_str().unwrap();
    assert_eq!(ts.len(), 27, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    env
}

#[tokio::test]
async fn envelopes_for_insert_update_delete() {
    let pg = TempPostgres::start().await;
    pg.execute(
        "CREATE TABLE items (id int PRIMARY KEY, big bigint, price numeric(10,2), name text, \
           active bool, doc jsonb, at timestamptz, local_at timestamp, day date, uid uuid, \
           nums int[], tags text[], raw bytea, note text, ratio float8);
         ALTER TABLE items REPLICA IDENTITY FULL;
         CREATE SCHEMA app;
         CREATE TABLE app.users (org text, id bigint, email text, PRIMARY KEY (org, id));",
    )
    .await;
    let sink = MemSink::new();
    let r = start(config(&pg, "env", &["items", "app.users"]), sink.clone());
    wait_streaming(&r).await;
    pg.execute(
        "INSERT INTO items VALUES (1, 9007199254740993, 199.99, 'widget', true, '{\"a\": [1, \"x\"]}', \
           '2024-10-28 21:37:01.12747+00', '2024-10-28 21:37:01.5', '2024-10-28', \
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2,NULL}', '{\"a b\",c,NULL}', '\\x0102ff', NULL, 'NaN');",
    )
    .await;
    // One statement list per transaction (a multi-statement simple query is one transaction).
    for sql in [
        "BEGIN; INSERT INTO app.users VALUES ('acme', 7, 'a@x.io'); \
         UPDATE items SET price = 5.00, note = 'n' WHERE id = 1; COMMIT;",
        "UPDATE app.users SET email = 'b@x.io' WHERE org = 'acme' AND id = 7",
        "DELETE FROM app.users WHERE id = 7",
        "DELETE FROM items WHERE id = 1",
    ] {
        pg.execute(sql).await;
    }
    wait_for("6 changes", 20, || sink.len() >= 6).await;
    let changes = sink.changes();
    assert_eq!(changes.len(), 6);
    let item = json!({
        "id": 1, "big": 9007199254740993i64, "price": "199.99", "name": "widget", "active": true,
        "doc": {"a": [1, "x"]}, "at": "2024-10-28T21:37:01.127470Z",
        "local_at": "2024-10-28T21:37:01.500000", "day": "2024-10-28",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "nums": [1, 2, null],
        "tags": ["a b", "c", null], "raw": "\\x0102ff", "note": null, "ratio": "NaN"
    });
    let meta = |schema: &str, table: &str, pks: Value| {
        json!({"table_schema": schema, "table_name": table, "record_pks": pks,
               "database_name": "postgres", "transaction_annotations": null, "enrichment": null})
    };
    assert_eq!(
        strip_meta(&changes[0]),
        json!({"action": "insert", "record": item, "changes": null,
               "metadata": meta("public", "items", json!(["1"]))})
    );
    assert_eq!(changes[0].position.commit_idx, 0);
    // One transaction: two changes with indexes 0 and 1 at the same commit LSN.
    assert_eq!(
        changes[1].position.commit_lsn,
        changes[2].position.commit_lsn
    );
    assert_eq!(
        (
            changes[1].position.commit_idx,
            changes[2].position.commit_idx
        ),
        (0, 1)
    );
    assert_eq!(
        strip_meta(&changes[1]),
        json!({"action": "insert", "record": {"org": "acme", "id": 7, "email": "a@x.io"},
               "changes": null, "metadata": meta("app", "users", json!(["acme", "7"]))})
    );
    let mut updated = item.clone();
    updated["price"] = json!("5.00");
    updated["note"] = json!("n");
    assert_eq!(
        strip_meta(&changes[2]),
        json!({"action": "update", "record": updated,
               "changes": {"price": "199.99", "note": null},
               "metadata": meta("public", "items", json!(["1"]))})
    );
    // Default replica identity: no old tuple, so `changes` is {}.
    assert_eq!(
        strip_meta(&changes[3]),
        json!({"action": "update", "record": {"org": "acme", "id": 7, "email": "b@x.io"},
               "changes": {}, "metadata": meta("app", "users", json!(["acme", "7"]))})
    );
    // Default replica identity: a delete carries the key columns only.
    assert_eq!(
        strip_meta(&changes[4]),
        json!({"action": "delete", "record": {"org": "acme", "id": 7, "email": null},
               "changes": null, "metadata": meta("app", "users", json!(["acme", "7"]))})
    );
    // REPLICA IDENTITY FULL: the whole old row.
    assert_eq!(
        strip_meta(&changes[5]),
        json!({"action": "delete", "record": updated, "changes": null,
               "metadata": meta("public", "items", json!(["1"]))})
    );
    let positions: Vec<Position> = changes.iter().map(|c| c.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    // Everything stored is eventually confirmed to the slot.
    let last_commit = changes[5].position.commit_lsn;
    let status = r.status.clone();
    wait_for("confirmed flush", 20, || {
        status.snapshot().confirmed_flush_lsn.unwrap_or(0) > last_commit
    })
    .await;
    r.stop().await.unwrap();
}
