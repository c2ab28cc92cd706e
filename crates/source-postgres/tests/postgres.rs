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
    let snap = r.status.snapshot();
    assert_eq!(snap.state, SourceState::Streaming);
    assert_eq!(snap.changes_stored, 6);
    assert_eq!(snap.last_stored, Some(changes[5].position));
    assert!(
        snap.server_wal_lsn.is_some() && snap.lag_bytes.is_some(),
        "{snap:?}"
    );
    assert!(snap.lag_seconds >= 0.0);
    let status = r.status.clone();
    r.stop().await.unwrap();
    assert_eq!(status.snapshot().state, SourceState::Stopped);
}

#[tokio::test]
async fn a_large_transaction_arrives_complete_and_in_order() {
    let pg = TempPostgres::start().await;
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await;
    let sink = MemSink::new();
    let r = start(config(&pg, "big", &["big"]), sink.clone());
    wait_streaming(&r).await;
    pg.execute("INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 5000) g")
        .await;
    wait_for("5000 changes", 30, || sink.len() >= 5000).await;
    let changes = sink.changes();
    assert_eq!(changes.len(), 5000);
    let lsn = changes[0].position.commit_lsn;
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(
            c.position,
            Position {
                commit_lsn: lsn,
                commit_idx: i as u64
            }
        );
        assert_eq!(c.envelope["record"]["id"], json!(i + 1));
        assert_eq!(c.envelope["metadata"]["commit_idx"], json!(i));
    }
    r.stop().await.unwrap();
}

#[tokio::test]
async fn alter_table_mid_stream() {
    let pg = TempPostgres::start().await;
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    let sink = MemSink::new();
    let r = start(config(&pg, "alter", &["t"]), sink.clone());
    wait_streaming(&r).await;
    for sql in [
        "INSERT INTO t VALUES (1, 10)",
        "ALTER TABLE t ADD COLUMN c text DEFAULT 'x'",
        "INSERT INTO t VALUES (2, 20, 'y')",
        "UPDATE t SET v = 11 WHERE id = 1",
        "ALTER TABLE t DROP COLUMN v",
        "INSERT INTO t VALUES (3, 'z')",
    ] {
        pg.execute(sql).await;
    }
    wait_for("4 changes", 20, || sink.len() >= 4).await;
    let records: Vec<Value> = sink
        .changes()
        .iter()
        .map(|c| c.envelope["record"].clone())
        .collect();
    assert_eq!(
        records,
        vec![
            json!({"id": 1, "v": 10}),
            json!({"id": 2, "v": 20, "c": "y"}),
            json!({"id": 1, "v": 11, "c": "x"}),
            json!({"id": 3, "c": "z"}),
        ]
    );
    r.stop().await.unwrap();
}

#[tokio::test]
async fn backfill_reads_existing_rows_once_before_streaming() {
    let pg = TempPostgres::start().await;
    pg.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (2, 'b'), (1, 'a'), (3, NULL);",
    )
    .await;
    let sink = MemSink::new();
    let mut cfg = config(&pg, "bf", &["t"]);
    cfg.backfill = true;
    cfg.max_batch = 2;
    let r = start(cfg.clone(), sink.clone());
    wait_streaming(&r).await;
    pg.execute("INSERT INTO t VALUES (4, 'd')").await;
    wait_for("4 changes", 20, || sink.len() >= 4).await;
    let changes = sink.changes();
    let actions: Vec<&str> = changes
        .iter()
        .map(|c| c.envelope["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["read", "read", "read", "insert"]);
    let ids: Vec<Value> = changes
        .iter()
        .map(|c| c.envelope["record"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3), json!(4)]);
    assert_eq!(changes[2].envelope["record"], json!({"id": 3, "v": null}));
    for (i, c) in changes[..3].iter().enumerate() {
        let meta = &c.envelope["metadata"];
        assert_eq!(meta["commit_lsn"], Value::Null);
        assert_eq!(meta["commit_idx"], Value::Null);
        assert_eq!(meta["record_pks"], json!([(i + 1).to_string()]));
        assert_eq!(c.position.commit_lsn, 0);
        assert_eq!(c.position.commit_idx & !Position::BACKFILL_DONE, i as u64);
        assert!(meta["commit_timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(meta["idempotency_key"].as_str().is_some());
    }
    assert_ne!(changes[2].position.commit_idx & Position::BACKFILL_DONE, 0);
    assert!(changes[3].position.commit_lsn > 0);
    let snap = r.status.snapshot();
    assert!(snap.backfill.as_ref().unwrap().done);
    assert_eq!(snap.backfill.unwrap().rows_stored, 3);
    r.stop().await.unwrap();

    // A restart does not backfill again.
    let r = start(cfg, sink.clone());
    wait_streaming(&r).await;
    pg.execute("INSERT INTO t VALUES (5, 'e')").await;
    wait_for("5 changes", 20, || sink.len() >= 5).await;
    r.stop().await.unwrap();
    let changes = sink.changes();
    assert_eq!(changes.len(), 5);
    assert_eq!(changes[4].envelope["action"], json!("insert"));
}

/// 10 transactions of 10 rows: ids `round * 100 + 1 ..= round * 100 + 100`.
async fn insert_round(pg: &TempPostgres, round: i64) {
    for tx in 0..10 {
        let first = round * 100 + tx * 10 + 1;
        pg.execute(&format!(
            "INSERT INTO t SELECT g, g FROM generate_series({first}, {}) g",
            first + 9
        ))
        .await;
    }
}

/// Every inserted id exactly once, positions strictly increasing.
fn assert_exactly_once(changes: &[Change], expected: usize) {
    let positions: Vec<Position> = changes.iter().map(|c| c.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions not strictly increasing"
    );
    let mut ids: Vec<i64> = changes
        .iter()
        .map(|c| c.envelope["record"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=expected as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn exactly_once_across_sink_failures_source_drops_and_postgres_restarts() {
    let mut pg = TempPostgres::start().await;
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    let sink = MemSink::new();
    let mut cfg = config(&pg, "eo", &["t"]);
    cfg.max_batch = 7;

    // 1. The sink fails after 3 stores: the source retries until it heals.
    sink.fail_after(3);
    let r = start(cfg.clone(), sink.clone());
    wait_streaming(&r).await;
    insert_round(&pg, 0).await;
    let status = r.status.clone();
    wait_for("a failed store", 20, || {
        status
            .snapshot()
            .last_error
            .is_some_and(|e| e.contains("injected"))
    })
    .await;
    assert!(sink.len() < 100, "stored past the injected failure");
    sink.heal();
    wait_for("round 0", 20, || sink.len() >= 100).await;
    assert_exactly_once(&sink.changes(), 100);

    // 2. The source is dropped mid-stream (like a crash) and started again.
    insert_round(&pg, 1).await;
    wait_for("some of round 1", 20, || sink.len() > 100).await;
    r.handle.abort();
    let _ = r.handle.await;
    let r = start(cfg.clone(), sink.clone());
    wait_for("round 1", 30, || sink.len() >= 200).await;
    assert_exactly_once(&sink.changes(), 200);

    // 3. PostgreSQL restarts (immediate shutdown, like a crash) mid-stream.
    insert_round(&pg, 2).await;
    pg.restart(true).await;
    insert_round(&pg, 3).await;
    wait_for("rounds 2 and 3", 30, || sink.len() >= 400).await;
    // Give a duplicate a chance to show up before checking.
    let status = r.status.clone();
    wait_for("streaming again", 20, || {
        status.snapshot().state == SourceState::Streaming
    })
    .await;
    pg.execute("INSERT INTO t VALUES (401, 0)").await;
    wait_for("the last row", 20, || sink.len() >= 401).await;
    r.stop().await.unwrap();
    assert_exactly_once(&sink.changes(), 401);
}

#[tokio::test]
async fn clear_errors() {
    let pg = TempPostgres::start().await;
    pg.execute(
        "CREATE TABLE nopk (x int);
         CREATE TABLE ok (id int PRIMARY KEY);",
    )
    .await;
    let err = start(config(&pg, "e1", &["nopk"]), MemSink::new())
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SourceError::NoPrimaryKey { .. }), "{err}");
    assert!(err.to_string().contains("public.nopk"), "{err}");
    assert!(err.to_string().contains("`e1`"), "{err}");

    let err = start(config(&pg, "e2", &["missing"]), MemSink::new())
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("public.missing") && err.to_string().contains("does not exist"),
        "{err}"
    );

    let mut cfg = config(&pg, "e3", &["ok"]);
    cfg.url = None;
    cfg.url_env = Some("S2SINK_TEST_UNSET_URL_VAR".into());
    let err = start(cfg, MemSink::new())
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("S2SINK_TEST_UNSET_URL_VAR"),
        "{err}"
    );

    // The server refuses the login (unknown role, unknown database): not retried forever.
    for (url, needle) in [
        (pg.url().replace("postgres@", "nobody@"), "nobody"),
        (
            format!("{}_missing", pg.url().trim_end_matches('/')),
            "postgres_missing",
        ),
    ] {
        let mut cfg = config(&pg, "e4", &["ok"]);
        cfg.url = Some(url);
        let err = start(cfg, MemSink::new())
            .handle
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, SourceError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }

    // The slot is held by a running source: a second consumer is refused.
    let holder = start(config(&pg, "held", &["ok"]), MemSink::new());
    wait_streaming(&holder).await;
    let mut cfg = config(&pg, "other", &["ok"]);
    cfg.slot = "held_slot".into();
    cfg.publication = "held_pub".into();
    let err = start(cfg, MemSink::new())
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SourceError::SlotActive { .. }), "{err}");
    assert!(err.to_string().contains("held_slot"), "{err}");
    holder.stop().await.unwrap();

    // A user without REPLICATION (trust auth lets it log in).
    pg.execute("CREATE ROLE norep LOGIN; GRANT SELECT ON ok TO norep;")
        .await;
    let mut cfg = config(&pg, "e5", &["ok"]);
    cfg.url = Some(pg.url().replace("postgres@", "norep@"));
    let err = start(cfg, MemSink::new())
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SourceError::Privileges { .. }), "{err}");
    assert!(err.to_string().contains("REPLICATION"), "{err}");

    let replica = TempPostgres::start_with(&[("wal_level", "replica")]).await;
    replica
        .execute("CREATE TABLE ok (id int PRIMARY KEY)")
        .await;
    let r = start(config(&replica, "e4", &["ok"]), MemSink::new());
    let status = r.status.clone();
    let err = r.handle.await.unwrap().unwrap_err();
    assert!(matches!(err, SourceError::WalLevel { .. }), "{err}");
    assert!(err.to_string().contains("wal_level"), "{err}");
    let snap = status.snapshot();
    assert_eq!(snap.state, SourceState::Error);
    assert!(snap.last_error.unwrap().contains("wal_level"));
}

#[test]
fn config_debug_and_errors_never_show_the_password() {
    let cfg: PostgresSourceConfig = serde_json::from_value(json!({
        "name": "s", "url": "postgres://app:hunter2@127.0.0.1:5432/app",
        "publication": "p", "slot": "s_slot", "tables": ["t"], "sink": "k"
    }))
    .unwrap();
    cfg.validate().unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("app:***@127.0.0.1"), "{debug}");
    assert_eq!(cfg.max_batch, 1000);

    let mut bad = cfg.clone();
    bad.url = Some("postgres://app:hunter2@127.0.0.1:notaport/app".into());
    let err = bad.validate().unwrap_err().to_string();
    assert!(!err.contains("hunter2") && err.contains("`url`"), "{err}");

    let mut both = cfg.clone();
    both.url_env = Some("X".into());
    assert!(both
        .validate()
        .unwrap_err()
        .to_string()
        .contains("exactly one"));
    let mut slot = cfg;
    slot.slot = "Bad-Slot".into();
    assert!(slot.validate().unwrap_err().to_string().contains("`slot`"));

    let unknown = serde_json::from_value::<PostgresSourceConfig>(json!({
        "name": "s", "url": "postgres://a@h/d", "publication": "p", "slot": "s",
        "tables": ["t"], "sink": "k", "colour": "red"
    }));
    assert!(unknown.is_err());
}
