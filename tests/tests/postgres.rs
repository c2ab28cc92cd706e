//! Postgres → S2 end to end: a throwaway PostgreSQL (wal_level=logical), s2-lite and the
//! `s2-sink` binary with a `[[sources]]` entry. Every committed change lands in the stream once,
//! in commit order per row, with Sequin's envelope; also across SIGKILLs of s2-sink and a
//! restart of Postgres.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_client::SequencedRecord;
use s2sink_source_postgres::testing::TempPostgres;
use s2sink_tests::client::{toml_str, SinkConfig, TestConfig};
use s2sink_tests::process::{http_client, ServerProcess};
use s2sink_tests::{eventually, read_all, LiteServer};
use serde_json::Value;

/// A server config with one sink and one Postgres source feeding it.
fn config(
    lite: &LiteServer,
    basin: &str,
    stream: &str,
    pg: &TempPostgres,
    tables: &[&str],
) -> String {
    let mut text = TestConfig::new()
        .sink(SinkConfig::new("app", &lite.endpoint(), basin, stream).backoff(20, 200))
        .render();
    let tables: Vec<String> = tables.iter().map(|t| toml_str(t)).collect();
    text.push_str(&format!(
        "\n[[sources]]\nname = \"app-db\"\nkind = \"postgres\"\nurl = {}\npublication = \"s2sink_pub\"\nslot = \"s2sink_slot\"\ntables = [{}]\nsink = \"app\"\nbackfill = true\n",
        toml_str(&pg.url()),
        tables.join(", ")
    ));
    text
}

/// The JSON bodies of the stream's records, in stream order.
fn bodies(records: &[SequencedRecord]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_str(&r.body).expect("record body is JSON"))
        .collect()
}

async fn stream_bodies(lite: &LiteServer, basin: &str, stream: &str) -> Vec<Value> {
    bodies(&read_all(&lite.client(), basin, stream).await)
}

/// Polls until the stream holds at least `n` records (deadline 60 s).
async fn wait_for_records(
    lite: &LiteServer,
    basin: &str,
    stream: &str,
    n: usize,
    log: impl Fn() -> String,
) -> Vec<Value> {
    let client = lite.client();
    let ok = eventually(Duration::from_secs(60), || async {
        client
            .check_tail(basin, stream)
            .await
            .map(|t| t.seq_num as usize >= n)
            .unwrap_or(false)
    })
    .await;
    let got = stream_bodies(lite, basin, stream).await;
    assert!(
        ok,
        "expected {n} records, the stream has {}; server log:\n{}",
        got.len(),
        log()
    );
    got
}

/// The source's status from `GET /api/sources`.
async fn source_status(url: &str) -> Value {
    let v: Value = http_client()
        .get(format!("{url}/api/sources"))
        .send()
        .await
        .expect("GET /api/sources")
        .json()
        .await
        .expect("JSON");
    v["sources"][0].clone()
}

/// (table, first PK) of an envelope: the group the sink orders by.
fn row_of(b: &Value) -> (String, String) {
    (
        b["metadata"]["table_name"].as_str().unwrap().to_string(),
        b["metadata"]["record_pks"][0].as_str().unwrap().to_string(),
    )
}

/// (commit_lsn, commit_idx) of a streamed (not backfilled) change.
fn cursor(b: &Value) -> (u64, u64) {
    (
        b["metadata"]["commit_lsn"].as_u64().expect("commit_lsn"),
        b["metadata"]["commit_idx"].as_u64().expect("commit_idx"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_changes_reach_s2_once_in_commit_order_with_the_envelope() {
    let pg = TempPostgres::start().await;
    pg.execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, total numeric(10,2),
                              tags text[], placed_at timestamptz, meta jsonb);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace'), (3, 'Edsger');",
    )
    .await;
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("pg").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &lite,
        &basin,
        &stream,
        &pg,
        &["public.customers", "public.orders"],
    );
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let streaming = eventually(Duration::from_secs(30), || async {
        source_status(&server.url).await["state"] == "streaming"
    })
    .await;
    assert!(
        streaming,
        "source not streaming: {}; log:\n{}",
        source_status(&server.url).await,
        server.log()
    );

    // A transaction of many rows, updates, a delete, a schema change mid-stream.
    let mut sql = String::from("BEGIN;");
    for i in 0..300 {
        sql.push_str(&format!(
            "INSERT INTO orders VALUES ({i}, {}, {i}.50, ARRAY['a','b{i}'], '2024-10-28 21:37:01.12747+00', '{{\"n\": {i}}}');",
            1 + i % 3
        ));
    }
    sql.push_str("COMMIT;");
    pg.execute(&sql).await;
    pg.execute("UPDATE orders SET total = 9.99 WHERE id < 10; DELETE FROM orders WHERE id = 299;")
        .await;
    pg.execute("ALTER TABLE orders ADD COLUMN priority int; UPDATE orders SET priority = 1 WHERE id = 5; INSERT INTO orders (id, customer_id, priority) VALUES (1000, 2, 7);")
        .await;
    pg.execute("UPDATE customers SET name = 'Ada Lovelace' WHERE id = 1;")
        .await;
    // 3 backfilled + 300 inserts + 10 updates + 1 delete + 1 update + 1 insert + 1 update.
    let want = 3 + 300 + 10 + 1 + 1 + 1 + 1;
    let got = wait_for_records(&lite, &basin, &stream, want, || server.log()).await;
    assert_eq!(got.len(), want, "no more records than changes");

    // Backfill first, as `read`, with null commit position.
    let reads: Vec<&Value> = got.iter().filter(|b| b["action"] == "read").collect();
    assert_eq!(reads.len(), 3);
    assert!(
        got[..3].iter().all(|b| b["action"] == "read"),
        "backfill comes before the stream"
    );
    assert!(reads.iter().all(|b| b["metadata"]["commit_lsn"].is_null()));

    // Streamed changes: each (commit_lsn, commit_idx) once, rows in commit order.
    let streamed: Vec<&Value> = got.iter().filter(|b| b["action"] != "read").collect();
    let cursors: HashSet<(u64, u64)> = streamed.iter().map(|b| cursor(b)).collect();
    assert_eq!(cursors.len(), streamed.len(), "a change appears twice");
    let mut last: HashMap<(String, String), (u64, u64)> = HashMap::new();
    for b in &streamed {
        let c = cursor(b);
        if let Some(prev) = last.insert(row_of(b), c) {
            assert!(
                prev < c,
                "row {:?} out of commit order: {prev:?} then {c:?}",
                row_of(b)
            );
        }
    }
    // The big transaction: one commit_lsn, commit_idx 0..300 in order.
    // (Rows are groups of their own: their records interleave in any order across groups.)
    let mut big: Vec<u64> = streamed
        .iter()
        .filter(|b| b["action"] == "insert" && b["record"]["id"].as_i64().unwrap() < 300)
        .map(|b| cursor(b).1)
        .collect();
    big.sort_unstable();
    assert_eq!(big, (0..300).collect::<Vec<u64>>());

    // The envelope (Sequin's), values encoded as Sequin does.
    let first = streamed
        .iter()
        .find(|b| b["action"] == "insert" && b["record"]["id"] == 0)
        .unwrap();
    assert_eq!(first["record"]["total"], "0.50", "numeric as string");
    assert_eq!(first["record"]["tags"], serde_json::json!(["a", "b0"]));
    assert_eq!(first["record"]["placed_at"], "2024-10-28T21:37:01.127470Z");
    assert_eq!(first["record"]["meta"], serde_json::json!({"n": 0}));
    assert!(first["changes"].is_null());
    let m = &first["metadata"];
    assert_eq!(
        (m["table_schema"].as_str(), m["table_name"].as_str()),
        (Some("public"), Some("orders"))
    );
    assert_eq!(m["record_pks"], serde_json::json!(["0"]));
    assert_eq!(m["database_name"], "postgres");
    assert!(m["commit_timestamp"].as_str().unwrap().ends_with('Z'));
    let update = streamed
        .iter()
        .find(|b| b["action"] == "update" && b["record"]["id"] == 3)
        .unwrap();
    assert_eq!(update["record"]["total"], "9.99");
    assert_eq!(
        update["changes"],
        serde_json::json!({"total": "3.50"}),
        "old values of changed columns (REPLICA IDENTITY FULL)"
    );
    let delete = streamed.iter().find(|b| b["action"] == "delete").unwrap();
    assert_eq!(delete["record"]["id"], 299);
    // After ALTER TABLE ADD COLUMN the new column is there.
    let late = streamed.iter().find(|b| b["record"]["id"] == 1000).unwrap();
    assert_eq!(late["record"]["priority"], 7);
    let customers_update = streamed
        .iter()
        .find(|b| b["metadata"]["table_name"] == "customers")
        .unwrap();
    assert_eq!(
        customers_update["changes"],
        serde_json::json!({}),
        "no old tuple without REPLICA IDENTITY FULL"
    );

    // The source's status and metrics say where it is.
    let status = source_status(&server.url).await;
    assert_eq!(status["state"], "streaming");
    assert_eq!(status["up"], true);
    assert_eq!(status["sink"], "app");
    assert_eq!(status["changes_stored"], want as u64);
    assert!(
        status["confirmed_flush_lsn"]
            .as_str()
            .is_some_and(|l| l.contains('/')),
        "{status}"
    );
    let metrics = http_client()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("s2sink_source_up{source=\"app-db\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "s2sink_source_changes_stored_total{{source=\"app-db\"}} {want}"
        )),
        "{metrics}"
    );
}

/// Writes `(id, v)` upserts with v = 0, 1, 2… over 40 rows, one transaction each, until told
/// to stop; notes which commits were answered (`committed`) and which lost their answer to a
/// Postgres restart (`unknown`: committed or not).
async fn writer(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    committed: Arc<Mutex<Vec<(i32, i64)>>>,
    unknown: Arc<Mutex<HashSet<i64>>>,
) {
    let mut v: i64 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let id = (v % 40) as i32;
            let r = client
                .execute(
                    "INSERT INTO counters (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                    &[&id, &v],
                )
                .await;
            match r {
                Ok(_) => committed.lock().unwrap().push((id, v)),
                Err(_) => {
                    unknown.lock().unwrap().insert(v);
                    v += 1;
                    break;
                }
            }
            v += 1;
            if v % 20 == 0 {
                // Paces the writer so a run spans several kill cycles (not a wait for a condition).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_while_the_database_commits_loses_and_duplicates_nothing() {
    let cycles: usize = std::env::var("S2SINK_PG_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut pg = TempPostgres::start().await;
    pg.execute("CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);")
        .await;
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("pgcrash").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&lite, &basin, &stream, &pg, &["public.counters"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(HashSet::new()));
    // The slot exists once the source streams: changes committed before it would be seen
    // only by the backfill (as the rows' latest values), so the writer starts after.
    let mut server = Some(ServerProcess::start(dir.path(), &cfg, &[]).await);
    let url = server.as_ref().unwrap().url.clone();
    let streaming = eventually(Duration::from_secs(30), || async {
        source_status(&url).await["state"] == "streaming"
    })
    .await;
    assert!(streaming, "source not streaming");
    let writer = tokio::spawn(writer(
        pg.url(),
        stop.clone(),
        committed.clone(),
        unknown.clone(),
    ));
    let mut rng = fastrand::Rng::with_seed(7);
    for cycle in 0..cycles {
        let mut server = match server.take() {
            Some(s) => s,
            None => ServerProcess::start(dir.path(), &cfg, &[]).await,
        };
        // A random kill moment (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
        if cycle == cycles / 2 {
            // Postgres crashes and comes back while s2-sink streams.
            pg.restart(true).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
        }
        server.kill9();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let committed = committed.lock().unwrap().clone();
    let unknown = unknown.lock().unwrap().clone();
    assert!(
        committed.len() > 500,
        "the writer committed too little: {}",
        committed.len()
    );

    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let want: HashSet<i64> = committed.iter().map(|(_, v)| *v).collect();
    let client = lite.client();
    let all_there = eventually(Duration::from_secs(90), || async {
        let have: HashSet<i64> = bodies(&read_all(&client, &basin, &stream).await)
            .iter()
            .filter_map(|b| b["record"]["v"].as_i64())
            .collect();
        want.is_subset(&have)
    })
    .await;
    let got = stream_bodies(&lite, &basin, &stream).await;
    if !all_there {
        let have: HashSet<i64> = got
            .iter()
            .filter_map(|b| b["record"]["v"].as_i64())
            .collect();
        let mut missing: Vec<i64> = want.difference(&have).copied().collect();
        missing.sort_unstable();
        panic!(
            "{} of {} committed changes missing after {cycles} kills (first: {:?}); stream has {}; status {}; log:\n{}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(20)],
            got.len(),
            source_status(&server.url).await,
            server.log()
        );
    }

    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut last_v: HashMap<i64, i64> = HashMap::new();
    for b in got.iter().filter(|b| b["action"] != "read") {
        let v = b["record"]["v"].as_i64().expect("v");
        let id = b["record"]["id"].as_i64().expect("id");
        *seen.entry(v).or_default() += 1;
        if let Some(prev) = last_v.insert(id, v) {
            assert!(prev < v, "row {id} out of commit order: v {prev} then {v}");
        }
        assert!(
            want.contains(&v) || unknown.contains(&v),
            "v {v} was never committed"
        );
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated changes (v, times): {dups:?}");
    let status = source_status(&server.url).await;
    assert_eq!(status["state"], "streaming", "{status}");
}
