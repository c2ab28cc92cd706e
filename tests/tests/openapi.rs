//! The OpenAPI document (`GET /api/openapi.json`) against the live `s2-sink` binary:
//! Schemathesis generates requests for every documented operation from the document and
//! checks the answers (no 5xx, status codes / content types / headers / bodies as documented,
//! invalid data rejected, valid data accepted, ...). Afterwards nothing the run got a 202 for
//! is lost: each accepted id is in the S2 stream, still in the queue, in the discarded list,
//! or was acknowledged by the run itself.
//!
//! Needs Schemathesis: `scripts/test.sh` installs the pinned version into `target/py-venv`
//! and sets `S2SINK_PYTHON` to that venv's python; the `st` command next to it is used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use s2sink_tests::client::{Api, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::{eventually, ids_in, read_all, LiteServer};
use serde_json::Value;

const SINK: &str = "fuzz";
/// A sink whose stream does not exist: its messages stay queued (failing, then discarded
/// after `max_retry_count`), so the message routes and actions meet real messages.
const STUCK: &str = "stuck";
const API_TOKEN: &str = "api-tok-openapi-5e1d";

/// The Schemathesis CLI (`st`) of the venv whose python is `S2SINK_PYTHON`.
fn schemathesis() -> PathBuf {
    let python = std::env::var_os("S2SINK_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python");
            venv.exists().then_some(venv)
        });
    let st = python
        .as_deref()
        .and_then(Path::parent)
        .map(|bin| bin.join("st"));
    match st {
        Some(st) if st.exists() => st,
        _ => panic!(
            "no Schemathesis to test the OpenAPI document with: run scripts/test.sh (it installs \
             the pinned schemathesis into target/py-venv and exports S2SINK_PYTHON), or set \
             S2SINK_PYTHON to a venv python whose bin/ has `st` (pip install schemathesis)"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_served_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .api_token(API_TOKEN)
        .sink(SinkConfig::new(
            SINK,
            "http://127.0.0.1:9",
            "test-basin",
            "events",
        ))
        .render();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let anon = Api::new(&server, None);
    let a = anon.get("/api/openapi.json").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.body);
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(a.body["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        a.body.to_string(),
        serde_json::from_str::<Value>(s2sink_server::http::openapi_document())
            .unwrap()
            .to_string(),
        "the server serves the document the library builds"
    );
    // Everything else under /api still needs the token.
    anon.get("/api/sinks")
        .await
        .assert_error(401, "unauthorized", "Authorization");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_and_nothing_accepted_is_lost() {
    let st = schemathesis();
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    lite.client()
        .ensure_stream(&basin, "events", None)
        .await
        .expect("create the stream");
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .api_token(API_TOKEN)
        .sink(SinkConfig::new(SINK, &lite.endpoint(), &basin, "events").backoff(50, 200))
        .sink(
            SinkConfig::new(STUCK, &lite.endpoint(), &basin, "does-not-exist")
                .set("max_retry_count", "3")
                .backoff(200, 1000),
        )
        .render();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;

    // `{sink}` is one of the configured sinks (otherwise nearly every request would be a 404
    // `unknown_sink` and ingest would never be exercised); `{basin}` is theirs.
    //
    // positive_data_acceptance on ingest also accepts 422: a generated `Idempotency-Key`
    // that an earlier request with another body already used is correctly answered 422
    // `idempotency_conflict` (the key is state the schema cannot express); every other 4xx
    // for schema-valid data still fails the check.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[dictionaries.sinks]
values = ["{SINK}", "{STUCK}"]

[parameters]
"path.sink" = {{ dictionary = "sinks" }}
"path.basin" = "{basin}"

[[operations]]
include-path = "/api/sinks/{{sink}}/messages"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
"#
        ),
    )
    .unwrap();
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis_hooks.py");
    let har = dir.path().join("run.har");
    let mut cmd = tokio::process::Command::new(&st);
    // Run in the temp dir: Schemathesis keeps a cache (`.schemathesis/`) in its working
    // directory, which must not land in the source tree.
    cmd.current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {API_TOKEN}")])
        // Every check Schemathesis has: no 5xx, status codes, content types, headers and
        // bodies as documented, invalid data rejected, valid data accepted, auth enforced,
        // 405 + Allow for undocumented methods, ...
        .args(["--checks", "all"])
        .args(["--max-examples", "15"])
        .args(["--seed", "16005"])
        // Health checks judge Hypothesis's own generation (how many drawn examples it had to
        // throw away, how slow drawing was), not the API. On a loaded 2-core CI machine
        // `filter_too_much` and `too_slow` fired on routes whose every case passed; the checks
        // above still run on every request.
        .args(["--suppress-health-check", "filter_too_much,too_slow"])
        // Bounded: the stateful phase would go on until this budget is spent.
        .args(["--max-time", "90"])
        .args(["--request-timeout", "10"])
        // One worker: with several threads, Hypothesis (through CPython 3.11's parser, whose
        // recursion bookkeeping is not thread-safe) fails with "AST constructor recursion depth
        // mismatch" while describing its own strategies; an error of the tool, not the API.
        .args(["--workers", "1"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .args(["--no-color"])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(170), cmd.output())
        .await
        .expect("schemathesis finishes within 170 s")
        .unwrap_or_else(|e| panic!("run {}: {e}", st.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The server's own warnings and errors (its access log would drown the report).
        let log: String = server
            .log()
            .lines()
            .filter(|l| !l.contains("s2sink::access"))
            .map(|l| format!("{l}\n"))
            .collect();
        panic!("schemathesis found problems:\n{stdout}\n{stderr}\n--- server log:\n{log}");
    }
    println!("{stdout}");

    // What the run was told was accepted, and what it acknowledged itself, per sink.
    let har: Value = serde_json::from_slice(&std::fs::read(&har).expect("the HAR report"))
        .expect("the HAR report is JSON");
    let mut accepted: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for entry in har["log"]["entries"].as_array().expect("HAR entries") {
        let (req, resp) = (&entry["request"], &entry["response"]);
        let url = req["url"].as_str().unwrap_or("");
        let path = url
            .strip_prefix(&server.url)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("");
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let status = resp["status"].as_u64().unwrap_or(0);
        if req["method"] != "POST" || !(200..300).contains(&status) {
            continue;
        }
        let body: Value = serde_json::from_str(resp["content"]["text"].as_str().unwrap_or("null"))
            .unwrap_or(Value::Null);
        match segments.as_slice() {
            ["api", "sinks", sink, "messages"] => {
                let ids = body["ids"]
                    .as_array()
                    .unwrap_or_else(|| panic!("202 without ids in the report: {entry}"));
                accepted
                    .entry(sink.to_string())
                    .or_default()
                    .extend(ids.iter().map(|v| v.as_u64().unwrap()));
            }
            ["api", "sinks", sink, "messages", _, "acknowledge"] => {
                acknowledged
                    .entry(sink.to_string())
                    .or_default()
                    .insert(body["id"].as_u64().unwrap());
            }
            _ => {}
        }
    }
    assert!(
        accepted.get(SINK).is_some_and(|a| !a.is_empty()),
        "the run never got a 202 from ingest into {SINK}; output:\n{stdout}"
    );

    let api = Api::new(&server, Some(API_TOKEN));
    // Let deliveries finish (messages the run made fail or back off stay in the queue, and
    // are counted there).
    eventually(Duration::from_secs(30), || async {
        let a = api.get(&format!("/api/sinks/{SINK}")).await;
        a.body["counts"]["pending"] == a.body["counts"]["failing"]
    })
    .await;
    let in_stream: BTreeSet<u64> = ids_in(&read_all(&lite.client(), &basin, "events").await, SINK)
        .into_iter()
        .collect();
    let mut lost = BTreeMap::new();
    for (sink, ids) in &accepted {
        let discarded = discarded_ids(&api, sink).await;
        let acked = acknowledged.get(sink).cloned().unwrap_or_default();
        let (mut streamed, mut dropped, mut queued) = (0, 0, 0);
        let mut missing = Vec::new();
        for id in ids {
            if sink == SINK && in_stream.contains(id) {
                streamed += 1;
                continue;
            }
            if discarded.contains(id) || acked.contains(id) {
                dropped += 1;
                continue;
            }
            let a = api.get(&format!("/api/sinks/{sink}/messages/{id}")).await;
            if a.status.as_u16() == 200 {
                queued += 1;
            } else {
                missing.push((*id, a.body));
            }
        }
        // A failing message can use up its last retry between the discarded list's read and
        // its own lookup (the settle condition above waits for deliveries, not for retries):
        // it is then in a second read of the list, which only grows.
        if !missing.is_empty() {
            let discarded = discarded_ids(&api, sink).await;
            for (id, body) in missing {
                if discarded.contains(&id) {
                    dropped += 1;
                } else {
                    lost.insert(format!("{sink}/{id}"), body);
                }
            }
        }
        println!(
            "{sink}: {} accepted ids: {streamed} in the stream, {queued} queued, {dropped} \
             discarded or acknowledged by the run",
            ids.len()
        );
    }
    assert!(
        lost.is_empty(),
        "{} accepted messages are neither in the stream, nor queued, discarded or \
         acknowledged: {lost:#?}\n--- server log:\n{}",
        lost.len(),
        server.log()
    );
}

/// Every id in `sink`'s discarded list (all pages).
async fn discarded_ids(api: &Api, sink: &str) -> BTreeSet<u64> {
    let mut discarded = BTreeSet::new();
    let mut before = String::new();
    loop {
        let a = api
            .get(&format!("/api/sinks/{sink}/discarded?limit=100{before}"))
            .await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.body);
        discarded.extend(
            a.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_u64().unwrap()),
        );
        match a.body["next_before"].as_u64() {
            Some(b) => before = format!("&before={b}"),
            None => break,
        }
    }
    discarded
}
