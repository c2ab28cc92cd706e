//! The message-key dedup switch: by default a repeated `metadata.idempotency_key` is taken as
//! a producer's retry and stored once; with `dedup_message_keys = false` (producers whose keys
//! are not unique per change) every message is stored.

use s2sink_client::S2Config;
use s2sink_core::Route;
use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings};

/// A sink whose S2 is a closed port: accepted messages stay in the queue.
fn settings(dedup: bool) -> SinkSettings {
    let s2 = S2Config::direct("http://127.0.0.1:1");
    let mut s = SinkSettings::new(
        "keys",
        Some(Route::new("message-keys-basin", "events").unwrap()),
        s2,
    );
    s.dedup_message_keys = dedup;
    s
}

#[actix_rt::test]
async fn repeated_message_keys_are_stored_once_unless_switched_off() {
    for (dedup, stored) in [(true, 1), (false, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let engine = Engine::start(
            queue.clone(),
            vec![settings(dedup)],
            EngineOptions::default(),
        )
        .unwrap();
        let msg = serde_json::json!({
            "action": "insert",
            "record": {"id": 1},
            "metadata": {"table_schema": "public", "table_name": "t", "idempotency_key": "k-1"}
        });
        let first = engine
            .ingest("keys", vec![IngestItem::new(msg.clone())])
            .await
            .unwrap();
        let again = engine
            .ingest("keys", vec![IngestItem::new(msg)])
            .await
            .unwrap();
        assert_eq!(
            first[0] == again[0],
            dedup,
            "dedup {dedup}: {first:?} {again:?}"
        );
        assert_eq!(queue.counts("keys").pending, stored, "dedup {dedup}");
    }
}

/// The README's demo sends `examples/changes.ndjson`: with the dedup on, two changes sharing
/// an idempotency key would reach S2 as one. Its keys are `<commit_lsn>:<commit_idx>` and unique.
#[test]
fn the_example_changes_have_unique_idempotency_keys() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/changes.ndjson");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(key) = v["metadata"]["idempotency_key"].as_str() else {
            continue;
        };
        let m = &v["metadata"];
        assert_eq!(
            key,
            format!("{}:{}", m["commit_lsn"], m["commit_idx"]),
            "line {}",
            i + 1
        );
        assert!(
            seen.insert(key.to_string()),
            "line {}: key {key} repeats",
            i + 1
        );
    }
    assert!(seen.len() > 10);
}
