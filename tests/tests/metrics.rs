//! `/metrics` of the `s2-sink` binary, read by an independent parser: Python's
//! `prometheus_client` parses the real output in both formats (Prometheus text 0.0.4 by
//! default, OpenMetrics 1.0.0 when `Accept` asks for it) through `tests/metrics_parse.py`.
//! The test checks that both parse with every family's samples together, that the expected
//! families are there with the right types, that both formats carry the same series, and that
//! the values match what was sent: the records and metered bytes appended per stream are what
//! the streams hold when read back.
//!
//! Needs a Python with `prometheus_client`: `scripts/test.sh` creates `target/py-venv` and
//! sets `S2SINK_PYTHON` to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use s2sink_tests::client::{Api, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::{ids_in, read_all, LiteServer};
use serde::Deserialize;
use serde_json::json;

const SINK: &str = "orders";
const IDLE: &str = "idle";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

#[derive(Debug, Deserialize)]
struct Parsed {
    prometheus: Vec<Family>,
    openmetrics: Vec<Family>,
}

#[derive(Debug, Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The Python that has `prometheus_client`: `S2SINK_PYTHON` (set by scripts/test.sh), else
/// the venv scripts/test.sh leaves in `target/py-venv`, else a `python3` that can import it.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("S2SINK_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    let system = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(std::process::Stdio::null())
        .status();
    if system.is_ok_and(|s| s.success()) {
        return "python3".into();
    }
    panic!(
        "no Python with prometheus_client to parse /metrics: run scripts/test.sh (it creates \
         target/py-venv with the pinned prometheus_client and exports S2SINK_PYTHON), or set \
         S2SINK_PYTHON to a python that can `import prometheus_client`"
    );
}

/// Runs tests/metrics_parse.py on both expositions.
async fn parse(dir: &Path, prometheus: &str, openmetrics: &str) -> Parsed {
    let (p, o) = (dir.join("metrics.prom"), dir.join("metrics.om"));
    std::fs::write(&p, prometheus).unwrap();
    std::fs::write(&o, openmetrics).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics_parse.py");
    let py = python();
    let out = tokio::process::Command::new(&py)
        .arg(&script)
        .arg(&p)
        .arg(&o)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} {}: {e}", py.display(), script.display()));
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics: {}\n--- prometheus text:\n{prometheus}\n--- openmetrics:\n{openmetrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metrics_parse.py prints JSON")
}

/// `GET /metrics` with an optional `Accept`; returns `(content type, body)`.
async fn scrape(api: &Api, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let a = api
        .send(Method::GET, "/metrics", None, &headers, None)
        .await
        .expect("the server answers");
    assert_eq!(a.status.as_u16(), 200, "{}", a.body);
    let ct = a.headers["content-type"].to_str().unwrap().to_string();
    let body = a.body.as_str().expect("a text body").to_string();
    (ct, body)
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

/// The value of the sample `sample` of `family` with exactly `labels`.
fn value(families: &[Family], family_name: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let f = family(families, family_name);
    f.samples
        .iter()
        .find(|s| s.name == sample && s.labels == want)
        .unwrap_or_else(|| panic!("no {sample}{want:?} in {f:#?}"))
        .value
}

/// Every series as `family/sample{labels}`, `le` normalized (`1` and `1.0` are one bound).
fn series(families: &[Family]) -> BTreeSet<String> {
    families
        .iter()
        .flat_map(|f| {
            f.samples.iter().map(move |s| {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| match k.as_str() {
                        "le" => format!("le={:?}", v.parse::<f64>().expect("le is a float")),
                        _ => format!("{k}={v}"),
                    })
                    .collect();
                format!("{}:{}/{}{{{}}}", f.name, f.kind, s.name, labels.join(","))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_openmetrics_and_count_what_was_appended() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    for stream in ["even", "odd", "quiet"] {
        lite.client()
            .ensure_stream(&basin, stream, None)
            .await
            .unwrap_or_else(|e| panic!("create {stream}: {e}"));
    }
    let routing = format!(
        r#"'''fn route(action, record, changes, metadata) {{
    if record.n % 2 == 0 {{ #{{ basin: "{basin}", stream: "even" }} }} else {{ #{{ basin: "{basin}", stream: "odd" }} }}
}}'''"#
    );
    let cfg = TestConfig::new()
        .sink(SinkConfig::routed(SINK, &lite.endpoint()).set("routing", &routing))
        .sink(SinkConfig::new(IDLE, &lite.endpoint(), &basin, "quiet"))
        .render();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);

    let n = 7;
    let body: String = (1..=n)
        .map(|i| format!("{}\n", json!({"action": "insert", "record": {"n": i}})))
        .collect();
    let a = api.ingest(SINK, "application/x-ndjson", body).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.body);
    assert!(
        api.wait_drained(SINK, Duration::from_secs(60)).await,
        "not drained; log:\n{}",
        server.log()
    );
    let mut records_in = BTreeMap::new();
    let mut bytes_in = BTreeMap::new();
    for stream in ["even", "odd"] {
        let records = read_all(&lite.client(), &basin, stream).await;
        assert_eq!(ids_in(&records, SINK).len(), records.len());
        records_in.insert(stream, records.len() as f64);
        let bytes: u64 = records
            .iter()
            .map(|r| s2sink_core::metered_size(&r.headers, r.body.len()))
            .sum();
        bytes_in.insert(stream, bytes as f64);
    }
    assert_eq!(records_in["even"], 3.0);
    assert_eq!(records_in["odd"], 4.0);

    let (ct_text, text) = scrape(&api, None).await;
    assert!(
        ct_text.starts_with("text/plain; version=0.0.4"),
        "{ct_text}"
    );
    let (ct_om, om) = scrape(&api, Some(OPENMETRICS)).await;
    assert!(
        ct_om.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct_om}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(!text.contains("# EOF"), "{text}");
    // Names the tests and dashboards use, as the text format spells them.
    assert!(text.contains("# TYPE s2sink_messages_delivered_total counter"));
    assert!(text.contains(&format!(
        "s2sink_messages_delivered_total{{sink=\"{SINK}\"}} {n}"
    )));
    assert!(om.contains("# TYPE s2sink_messages_delivered counter"));

    let parsed = parse(dir.path(), &text, &om).await;
    for (format, fams) in [
        ("prometheus", &parsed.prometheus),
        ("openmetrics", &parsed.openmetrics),
    ] {
        // Both parsers name a counter family without `_total` and its samples with it.
        let expected = [
            ("s2sink_messages_ingested", "counter"),
            ("s2sink_messages_delivered", "counter"),
            ("s2sink_messages_filtered", "counter"),
            ("s2sink_messages_discarded", "counter"),
            ("s2sink_appends", "counter"),
            ("s2sink_reconciles", "counter"),
            ("s2sink_deduplicated", "counter"),
            ("s2sink_ingest_duplicates", "counter"),
            ("s2sink_ingest_replayed", "counter"),
            ("s2sink_requeued", "counter"),
            ("s2sink_pipeline_reorders", "counter"),
            ("s2sink_failed_attempts", "counter"),
            ("s2sink_appended_records", "counter"),
            ("s2sink_appended_bytes", "counter"),
            ("s2sink_max_appends_in_flight", "gauge"),
            ("s2sink_live_groups", "gauge"),
            ("s2sink_pending_messages", "gauge"),
            ("s2sink_failing_messages", "gauge"),
            ("s2sink_oldest_pending_age_seconds", "gauge"),
            ("s2sink_append_latency_ms", "histogram"),
            ("s2sink_batch_records", "histogram"),
            ("s2sink_queue_disk_bytes", "gauge"),
            ("s2sink_held_bytes", "gauge"),
            ("s2sink_held_bytes_budget", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_cpu_seconds", "counter"),
        ];
        for (name, kind) in expected {
            assert_eq!(family(fams, name).kind, kind, "{format}: type of {name}");
        }
        assert_eq!(fams.len(), expected.len(), "{format}: {fams:#?}");

        let v = |fam: &str, sample: &str, labels: &[(&str, &str)]| value(fams, fam, sample, labels);
        let sink = [("sink", SINK)];
        let idle = [("sink", IDLE)];
        assert_eq!(
            v(
                "s2sink_messages_ingested",
                "s2sink_messages_ingested_total",
                &sink
            ),
            n as f64
        );
        let delivered = v(
            "s2sink_messages_delivered",
            "s2sink_messages_delivered_total",
            &sink,
        );
        assert_eq!(delivered, n as f64, "{format}");
        assert_eq!(
            v(
                "s2sink_messages_delivered",
                "s2sink_messages_delivered_total",
                &idle
            ),
            0.0
        );
        let mut appended = 0.0;
        for stream in ["even", "odd"] {
            let labels = [
                ("sink", SINK),
                ("basin", basin.as_str()),
                ("stream", stream),
            ];
            let records = v(
                "s2sink_appended_records",
                "s2sink_appended_records_total",
                &labels,
            );
            assert_eq!(records, records_in[stream], "{format}: records in {stream}");
            appended += records;
            assert_eq!(
                v(
                    "s2sink_appended_bytes",
                    "s2sink_appended_bytes_total",
                    &labels
                ),
                bytes_in[stream],
                "{format}: metered bytes in {stream}"
            );
        }
        assert_eq!(
            appended, delivered,
            "{format}: appended records = messages delivered"
        );
        assert_eq!(
            family(fams, "s2sink_appended_records").samples.len(),
            2,
            "{format}: only the streams written to"
        );
        let appends = v("s2sink_appends", "s2sink_appends_total", &sink);
        assert!(
            appends >= 2.0,
            "{format}: two streams, at least two appends"
        );
        assert_eq!(
            v("s2sink_batch_records", "s2sink_batch_records_count", &sink),
            appends
        );
        assert_eq!(
            v("s2sink_batch_records", "s2sink_batch_records_sum", &sink),
            n as f64
        );
        assert_eq!(
            v(
                "s2sink_append_latency_ms",
                "s2sink_append_latency_ms_count",
                &sink
            ),
            appends
        );
        for labels in [&sink, &idle] {
            assert_eq!(
                v("s2sink_pending_messages", "s2sink_pending_messages", labels),
                0.0
            );
            assert_eq!(
                v(
                    "s2sink_oldest_pending_age_seconds",
                    "s2sink_oldest_pending_age_seconds",
                    labels
                ),
                0.0
            );
        }
        assert!(v("s2sink_queue_disk_bytes", "s2sink_queue_disk_bytes", &[]) > 0.0);
        // The default budget; what is held stays within it.
        let budget = v("s2sink_held_bytes_budget", "s2sink_held_bytes_budget", &[]);
        assert_eq!(budget, 16.0 * 1024.0 * 1024.0);
        assert!(v("s2sink_held_bytes", "s2sink_held_bytes", &[]) <= budget);
        assert!(
            v(
                "process_resident_memory_bytes",
                "process_resident_memory_bytes",
                &[]
            ) > 1e6
        );
        assert!(v("process_cpu_seconds", "process_cpu_seconds_total", &[]) > 0.0);
    }
    // The same series in both formats (values may move between the two scrapes).
    assert_eq!(series(&parsed.prometheus), series(&parsed.openmetrics));
}

/// A sink whose stream does not exist: its failures, pending count and lag show up, the lag
/// grows, and the output still parses in both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_reports_failures_and_a_growing_lag_in_both_formats() {
    let lite = LiteServer::start().await;
    let basin = lite.fresh_basin().await;
    let cfg = TestConfig::new()
        .sink(SinkConfig::new(SINK, &lite.endpoint(), &basin, "missing").backoff(20, 100))
        .render();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);
    let a = api
        .ingest(
            SINK,
            "application/json",
            json!({"action": "insert", "record": {"n": 1}}).to_string(),
        )
        .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.body);
    let failed = s2sink_tests::eventually(Duration::from_secs(30), || async {
        scrape(&api, None).await.1.contains(&format!(
            "s2sink_failed_attempts_total{{sink=\"{SINK}\",class=\"needs_attention\",status=\"404\"}}"
        ))
    })
    .await;
    assert!(failed, "no 404 counted; log:\n{}", server.log());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, text) = scrape(&api, None).await;
    let (_, om) = scrape(&api, Some(OPENMETRICS)).await;
    let parsed = parse(dir.path(), &text, &om).await;
    for fams in [&parsed.prometheus, &parsed.openmetrics] {
        let sink = [("sink", SINK)];
        let fails = value(
            fams,
            "s2sink_failed_attempts",
            "s2sink_failed_attempts_total",
            &[
                ("sink", SINK),
                ("class", "needs_attention"),
                ("status", "404"),
            ],
        );
        assert!(fails >= 1.0);
        assert_eq!(
            value(
                fams,
                "s2sink_pending_messages",
                "s2sink_pending_messages",
                &sink
            ),
            1.0
        );
        let lag = value(
            fams,
            "s2sink_oldest_pending_age_seconds",
            "s2sink_oldest_pending_age_seconds",
            &sink,
        );
        assert!(lag >= 1.0, "lag {lag}");
        assert!(family(fams, "s2sink_appended_records").samples.is_empty());
    }
}
