//! Ingest idempotency of the `s2-sink` binary: a producer that retries after losing a 202
//! creates no duplicate in S2. A request repeated with its `Idempotency-Key` is answered with
//! the original ids (`Idempotent-Replayed: true`) and stores nothing, also after the server
//! was SIGKILLed and restarted; a message repeated with its `metadata.idempotency_key` in
//! another request is stored once. Each test reads the stream back and counts the records,
//! so it fails if any repeat was stored again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use s2sink_tests::client::{Answer, Api, SinkConfig, TestConfig};
use s2sink_tests::process::ServerProcess;
use s2sink_tests::{change, ids_in, read_all, LiteServer};
use serde_json::{json, Value};

const SINK: &str = "orders";
const NDJSON: &str = "application/x-ndjson";

fn config(endpoint: &str, basin: &str, stream: &str) -> String {
    TestConfig::new()
        .sink(SinkConfig::new(SINK, endpoint, basin, stream))
        .render()
}

/// POSTs `body` to the sink's ingest route with the given extra headers.
async fn ingest(api: &Api, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![("content-type", NDJSON)];
    all.extend_from_slice(headers);
    api.send(
        Method::POST,
        &format!("/api/sinks/{SINK}/messages"),
        None,
        &all,
        Some(body.as_bytes().to_vec()),
    )
    .await
    .expect("the server answers")
}

fn ids(a: &Answer) -> Vec<u64> {
    a.body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {}", a.body))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn replayed(a: &Answer) -> bool {
    a.headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// Messages without `metadata.idempotency_key` (only the request key can deduplicate them).
fn plain_batch(tag: &str, n: u64) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"action": "insert", "record": {"tag": tag, "n": i}})
            )
        })
        .collect()
}

fn ndjson(messages: &[Value]) -> String {
    messages.iter().map(|m| format!("{m}\n")).collect()
}

/// Waits until the sink delivered everything, then returns the stream's records of the sink
/// as (body, id) pairs.
async fn stream_contents(
    api: &Api,
    server: &ServerProcess,
    lite: &LiteServer,
    basin: &str,
    stream: &str,
) -> Vec<(Value, u64)> {
    assert!(
        api.wait_drained(SINK, Duration::from_secs(60)).await,
        "not drained; log:\n{}",
        server.log()
    );
    let records = read_all(&lite.client(), basin, stream).await;
    let ids = ids_in(&records, SINK);
    assert_eq!(
        ids.len(),
        records.len(),
        "records without the sink's id header"
    );
    records
        .iter()
        .zip(ids)
        .map(|(r, id)| (serde_json::from_str(&r.body).unwrap(), id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_with_its_idempotency_key_is_stored_once_also_after_a_restart() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("idem-req").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&lite.endpoint(), &basin, &stream);
    let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);

    let batch_a = plain_batch("a", 5);
    let first = ingest(&api, &[("idempotency-key", "order-batch-a")], &batch_a).await;
    assert_eq!(first.status.as_u16(), 202, "{}", first.body);
    assert!(!replayed(&first));
    assert_eq!(first.body["accepted"], 5);
    assert_eq!(first.body["duplicates"], 0);
    let original = ids(&first);

    // The producer lost the 202 and sends the same request again: the original answer.
    let retry = ingest(&api, &[("idempotency-key", "order-batch-a")], &batch_a).await;
    assert_eq!(retry.status.as_u16(), 202, "{}", retry.body);
    assert!(
        replayed(&retry),
        "no Idempotent-Replayed: {:?}",
        retry.headers
    );
    assert_eq!(retry.body, first.body);

    // The same key for another request: 422, nothing stored.
    let other = ingest(
        &api,
        &[("idempotency-key", "order-batch-a")],
        &plain_batch("b", 2),
    )
    .await;
    other.assert_error(422, "idempotency_conflict", "Idempotency-Key");
    // Another `group` is another request too.
    let grouped = api
        .send(
            Method::POST,
            &format!("/api/sinks/{SINK}/messages?group=g"),
            None,
            &[
                ("content-type", NDJSON),
                ("idempotency-key", "order-batch-a"),
            ],
            Some(batch_a.clone().into_bytes()),
        )
        .await
        .unwrap();
    grouped.assert_error(422, "idempotency_conflict", "Idempotency-Key");

    // Keys that are not 1-255 printable ASCII characters are refused, naming the header.
    let long = "k".repeat(256);
    for bad in ["", long.as_str()] {
        let a = ingest(&api, &[("idempotency-key", bad)], &batch_a).await;
        a.assert_error(400, "bad_request", "Idempotency-Key");
    }

    // A second keyed request is independent of the first.
    let batch_c = plain_batch("c", 3);
    let third = ingest(&api, &[("idempotency-key", "order-batch-c")], &batch_c).await;
    assert_eq!(third.status.as_u16(), 202, "{}", third.body);
    assert!(!replayed(&third));

    // The records are durable: after a SIGKILL and a restart the retry is still a replay.
    server.kill9();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);
    let after = ingest(&api, &[("idempotency-key", "order-batch-a")], &batch_a).await;
    assert_eq!(after.status.as_u16(), 202, "{}", after.body);
    assert!(replayed(&after));
    assert_eq!(ids(&after), original);
    let after_c = ingest(&api, &[("idempotency-key", "order-batch-c")], &batch_c).await;
    assert!(replayed(&after_c));
    assert_eq!(after_c.body, third.body);
    let conflict = ingest(&api, &[("idempotency-key", "order-batch-c")], &batch_a).await;
    conflict.assert_error(422, "idempotency_conflict", "Idempotency-Key");

    // S2 holds each message exactly once, under the ids the first answers gave.
    let records = stream_contents(&api, &server, &lite, &basin, &stream).await;
    let mut copies: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (body, _) in &records {
        let key = (
            body["record"]["tag"].as_str().unwrap().to_string(),
            body["record"]["n"].as_u64().unwrap(),
        );
        *copies.entry(key).or_default() += 1;
    }
    let expected: BTreeMap<(String, u64), usize> = (1..=5)
        .map(|n| (("a".to_string(), n), 1))
        .chain((1..=3).map(|n| (("c".to_string(), n), 1)))
        .collect();
    assert_eq!(
        copies, expected,
        "every message once, none of the refused ones"
    );
    let in_stream: BTreeSet<u64> = records.iter().map(|(_, id)| *id).collect();
    let answered: BTreeSet<u64> = original.iter().chain(&ids(&third)).copied().collect();
    assert_eq!(in_stream, answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_repeated_with_their_metadata_idempotency_key_are_stored_once() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("idem-msg").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&lite.endpoint(), &basin, &stream);
    let mut server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);
    // `change(pk, seq, _)` carries `metadata.idempotency_key = "<seq>:0"`.
    let msg = |seq: u64| change(seq % 3, seq, 10);

    let one = ingest(&api, &[], &ndjson(&[msg(1), msg(2), msg(3), msg(4)])).await;
    assert_eq!(one.status.as_u16(), 202, "{}", one.body);
    assert_eq!(one.body["duplicates"], 0);
    let first = ids(&one);

    // A producer resends 3 and 4 with new ones in another request (no Idempotency-Key).
    let two = ingest(&api, &[], &ndjson(&[msg(3), msg(4), msg(5), msg(6)])).await;
    assert_eq!(two.status.as_u16(), 202, "{}", two.body);
    assert!(!replayed(&two));
    assert_eq!(two.body["accepted"], 4);
    assert_eq!(two.body["duplicates"], 2);
    let second = ids(&two);
    assert_eq!(
        second[..2],
        first[2..],
        "duplicates answer with the original ids"
    );
    assert!(second[2] > first[3] && second[3] > second[2]);

    // After a SIGKILL and a restart the keys are still known; a key twice in one request is
    // stored once too.
    server.kill9();
    let server = ServerProcess::start(dir.path(), &cfg, &[]).await;
    let api = Api::new(&server, None);
    let three = ingest(
        &api,
        &[],
        &ndjson(&[msg(1), msg(6), msg(7), msg(8), msg(8)]),
    )
    .await;
    assert_eq!(three.status.as_u16(), 202, "{}", three.body);
    assert_eq!(three.body["duplicates"], 3);
    let third = ids(&three);
    assert_eq!(third[0], first[0]);
    assert_eq!(third[1], second[3]);
    assert_eq!(third[3], third[4]);
    // Only duplicates: 202 with the original ids, nothing stored.
    let four = ingest(&api, &[], &ndjson(&[msg(2), msg(7)])).await;
    assert_eq!(ids(&four), [first[1], third[2]]);
    assert_eq!(four.body["duplicates"], 2);

    let records = stream_contents(&api, &server, &lite, &basin, &stream).await;
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for (body, _) in &records {
        *copies
            .entry(body["record"]["seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    let expected: BTreeMap<u64, usize> = (1..=8).map(|seq| (seq, 1)).collect();
    assert_eq!(copies, expected, "each message key once in the stream");
    let in_stream: BTreeSet<u64> = records.iter().map(|(_, id)| *id).collect();
    let answered: BTreeSet<u64> = [&first, &second, &third, &ids(&four)]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        in_stream, answered,
        "the stream holds exactly the ids answered"
    );
}
