//! A data directory written by the v1 queue (one sled key per message, committed as a fixture
//! in `tests/fixtures/v1-data`, see its README) opens with storage v2 and loses nothing.

use std::path::Path;

use s2sink_core::{ErrorClass, GroupKey, LastError};
use s2sink_queue::testing::copy_dir;
use s2sink_queue::{GroupRef, ListFilter, MessageId, NewMessage, Queue};

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-data");
    copy_dir(&src, dir.path());
    dir
}

fn payloads(q: &Queue, sink: &str, group: &GroupRef) -> Vec<(u64, String)> {
    q.head_run(sink, group, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| (m.id.0, String::from_utf8(m.payload.to_vec()).unwrap()))
        .collect()
}

/// Checks the converted content; `new` are ids enqueued (ungrouped) since the conversion.
fn check_converted(q: &Queue, new: &[u64]) {
    let g = |s: &str| GroupRef::from(GroupKey(s.into()));
    // Pending: 1 (failed twice), 3, 6 in orders/1; 5 in orders/2; 7 ungrouped. 2 was acked,
    // 4 discarded.
    assert_eq!(
        payloads(q, "orders", &g("public.orders/1")),
        vec![
            (1, r#"{"n":1}"#.into()),
            (3, r#"{"n":3}"#.into()),
            (6, r#"{"n":6}"#.into())
        ]
    );
    assert_eq!(
        payloads(q, "orders", &g("public.orders/2")),
        vec![(5, r#"{"n":5}"#.into())]
    );
    let solo = GroupRef::of(None, MessageId(7));
    assert_eq!(payloads(q, "orders", &solo), vec![(7, r#"{"n":7}"#.into())]);
    let counts = q.counts("orders");
    assert_eq!(
        (
            counts.pending,
            counts.failing,
            counts.delivered,
            counts.discarded
        ),
        (5 + new.len() as u64, 1, 1, 1)
    );
    let head = q.get("orders", MessageId(1)).unwrap().unwrap();
    assert_eq!(head.state.deliver_count, 2);
    assert_eq!(head.state.not_visible_until, Some(1_700_000_002_000));
    assert_eq!(
        head.state.last_error,
        Some(LastError {
            class: ErrorClass::Retryable,
            status: Some(503),
            code: Some("unavailable".into()),
            message: "try later".into(),
            body: Some("{\"code\":\"unavailable\"}".into()),
            at_ms: 1_700_000_000_000,
        })
    );
    // Converted messages keep the header id v1 wrote, so reconciliation still finds them.
    assert_eq!(head.epoch, 0);
    assert_eq!(head.delivery_id().to_string(), "1");
    let all = q
        .list(
            "orders",
            &ListFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
    let mut want = vec![1, 3, 5, 6, 7];
    want.extend_from_slice(new);
    assert_eq!(all.iter().map(|m| m.id.0).collect::<Vec<_>>(), want);
    let discarded = q.discarded("orders", 10).unwrap();
    assert_eq!(discarded.len(), 1);
    assert_eq!(discarded[0].message.id, MessageId(4));
    assert_eq!(&discarded[0].message.payload[..], br#"{"n":4}"#);
    assert_eq!(q.counts("other").pending, 2);
    assert_eq!(
        q.get_marker("lwm/orders/my-basin/orders").unwrap(),
        Some(42u64.to_be_bytes().to_vec())
    );
}

#[tokio::test]
async fn a_v1_data_dir_opens_with_storage_v2_and_loses_nothing() {
    let dir = fixture();
    {
        let q = Queue::open(dir.path()).unwrap();
        check_converted(&q, &[]);
        // Ids continue after v1's; new messages carry this open's epoch.
        let new = q
            .enqueue("orders", vec![NewMessage::new(None, b"{}".to_vec())])
            .await
            .unwrap();
        assert_eq!(new[0].id, MessageId(8));
        let m = q.get("orders", new[0].id).unwrap().unwrap();
        assert_eq!(m.epoch, q.epoch());
        assert_ne!(m.epoch, 0);
    }
    // The v1 files are gone and the converted queue reopens as v2.
    assert!(!dir.path().join("conf").exists());
    assert!(dir.path().join("queue-v2").is_dir());
    let q = Queue::open(dir.path()).unwrap();
    check_converted(&q, &[8]);
    // Converted chunks keep their bodies in the sink's tree; the new message's is in a span.
    assert_eq!(q.body_spans("orders"), 1);
    let all: Vec<MessageId> = q
        .list(
            "orders",
            &ListFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(q.ack("orders", &all).unwrap(), 6);
    q.flush().await.unwrap();
    assert_eq!(q.body_spans("orders"), 0);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.counts("orders").pending, 0);
    assert_eq!(q.counts("orders").delivered, 7);
}

#[test]
fn an_interrupted_conversion_is_redone() {
    let dir = fixture();
    // A crash mid-conversion leaves a partial `queue-v2.converting` behind.
    let partial = dir.path().join("queue-v2.converting");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("garbage"), b"half a database").unwrap();
    let q = Queue::open(dir.path()).unwrap();
    check_converted(&q, &[]);
    assert!(!partial.exists());
}
