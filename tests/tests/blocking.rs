//! A message that cannot be delivered blocks only its own group, with a clear stored error,
//! until someone fixes the cause (reload a transform, acknowledge, create the stream).

use std::collections::HashMap;
use std::time::Duration;

use s2sink_queue::{ListFilter, MessageId, Queue, StateFilter, StoredMessage};
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings};
use s2sink_tests::{change, eventually, ids_in, read_all, sink_settings, LiteServer};
use s2sink_transform::{FunctionSource, TransformSpec};

const FAILING: &str = r#"fn transform(action, record, changes, metadata) {
    if record.id == 1 { throw "cannot transform row 1"; }
    record
}"#;
const FIXED: &str = "fn transform(action, record, changes, metadata) { record }";

fn with_transform(mut s: SinkSettings, code: &str) -> SinkSettings {
    s.functions.transform = Some(TransformSpec::Function(FunctionSource::Inline(code.into())));
    s
}

fn failed(queue: &Queue, sink: &str) -> Vec<StoredMessage> {
    queue
        .list(
            sink,
            &ListFilter {
                state: StateFilter::Failed,
                ..Default::default()
            },
        )
        .unwrap()
}

#[actix_rt::test]
async fn failures_block_only_their_group_until_fixed() {
    let lite = LiteServer::start().await;
    let (basin, stream) = lite.fresh_stream("events").await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let main = with_transform(
        sink_settings("main", &lite.endpoint(), &basin, &stream),
        FAILING,
    );
    // A sink whose stream does not exist (S2 answers 404 stream_not_found).
    let missing = sink_settings("missing", &lite.endpoint(), &basin, "no-such-stream");
    let engine = Engine::start(
        queue.clone(),
        vec![main.clone(), missing],
        EngineOptions::default(),
    )
    .unwrap();

    // Group 1: transform error on its head; group 2: an oversized head; groups 3..=20 fine.
    let mut items = vec![
        IngestItem::new(change(1, 1, 10)),
        IngestItem::new(change(2, 2, 1_100_000)),
    ];
    for pk in 3..=20 {
        items.push(IngestItem::new(change(pk, pk, 10)));
    }
    items.push(IngestItem::new(change(1, 100, 10)));
    items.push(IngestItem::new(change(2, 200, 10)));
    let ids = engine.ingest("main", items).await.unwrap();
    let missing_ids = engine
        .ingest("missing", vec![IngestItem::new(change(9, 9, 10))])
        .await
        .unwrap();
    let client = lite.client();

    // Healthy groups flow while the two bad groups wait.
    let flowed = eventually(Duration::from_secs(30), || async {
        ids_in(&read_all(&client, &basin, &stream).await, "main").len() == 18
    })
    .await;
    assert!(flowed, "healthy groups did not flow");
    let stuck = eventually(Duration::from_secs(30), || async {
        failed(&queue, "main").len() == 2 && failed(&queue, "missing").len() == 1
    })
    .await;
    assert!(stuck, "failures not recorded: {:?}", failed(&queue, "main"));
    let by_id: HashMap<MessageId, StoredMessage> = failed(&queue, "main")
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let transform_err = by_id[&ids[0]].state.last_error.clone().unwrap();
    assert_eq!(transform_err.code.as_deref(), Some("transform"));
    assert!(
        transform_err.message.contains("cannot transform row 1"),
        "{transform_err:?}"
    );
    let size_err = by_id[&ids[1]].state.last_error.clone().unwrap();
    assert_eq!(size_err.code.as_deref(), Some("record_too_large"));
    assert!(size_err.message.contains("1048576"), "{size_err:?}");
    let nf = failed(&queue, "missing")[0]
        .state
        .last_error
        .clone()
        .unwrap();
    assert_eq!(nf.status, Some(404));
    assert_eq!(nf.code.as_deref(), Some("stream_not_found"));
    // Nothing behind a failing head was delivered.
    let delivered = ids_in(&read_all(&client, &basin, &stream).await, "main");
    for behind in [ids[20], ids[21]] {
        assert!(
            !delivered.contains(&behind.0),
            "{behind} overtook its failing head"
        );
    }
    assert_eq!(
        queue
            .get("main", ids[20])
            .unwrap()
            .unwrap()
            .state
            .deliver_count,
        0
    );

    // Fix the transform and reload: group 1 drains in order.
    engine
        .reload(vec![
            with_transform(main.clone(), FIXED),
            sink_settings("missing", &lite.endpoint(), &basin, "no-such-stream"),
        ])
        .await
        .unwrap();
    // Acknowledge the oversized message: group 2 continues with its next message.
    engine.acknowledge("main", ids[1]).await.unwrap();
    // Create the missing stream and redeliver now.
    client
        .ensure_stream(&basin, "no-such-stream", None)
        .await
        .unwrap();
    engine.redeliver("missing", None).await.unwrap();

    let drained = eventually(Duration::from_secs(30), || async {
        queue.counts("main").pending == 0 && queue.counts("missing").pending == 0
    })
    .await;
    assert!(
        drained,
        "groups did not drain: {:?}",
        failed(&queue, "main")
    );
    let delivered = ids_in(&read_all(&client, &basin, &stream).await, "main");
    let pos = |id: MessageId| delivered.iter().position(|d| *d == id.0);
    assert!(
        pos(ids[0]).unwrap() < pos(ids[20]).unwrap(),
        "group 1 out of order"
    );
    assert!(
        pos(ids[1]).is_none(),
        "acknowledged message must not be sent"
    );
    assert!(pos(ids[21]).is_some());
    let other = ids_in(
        &read_all(&client, &basin, "no-such-stream").await,
        "missing",
    );
    assert_eq!(other, vec![missing_ids[0].0]);
    engine.shutdown(Duration::from_secs(5)).await;
}
