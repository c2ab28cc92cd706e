//! Data directories written by older versions (committed as fixtures in `tests/fixtures`, see
//! its README) open with this one and lose nothing: a v1 queue (one sled key per message) is
//! converted to storage v2; a v2 one from before session 7 (8 MiB segments, 60 KiB parts)
//! opens as it is; so does one from before span leaves split by a log fragment.

use std::path::Path;

use s2sink_core::{ErrorClass, GroupKey, LastError};
use s2sink_queue::testing::copy_dir;
use s2sink_queue::{GroupRef, ListFilter, MessageId, NewMessage, Queue};

fn fixture() -> tempfile::TempDir {
    fixture_named("v1-data")
}

fn fixture_named(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    copy_dir(&src, dir.path());
    dir
}

/// The segment size sled persisted for the data dir's database.
fn segment_size(dir: &Path) -> String {
    let conf = std::fs::read(dir.join("queue-v2").join("conf")).unwrap();
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: ").map(str::to_owned))
        .unwrap()
}

/// The payloads the v2 fixture's generator wrote: `n` bytes cycling through the alphabet.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect()
}

fn retryable() -> LastError {
    LastError {
        class: ErrorClass::Retryable,
        status: Some(503),
        code: Some("unavailable".into()),
        message: "try later".into(),
        body: None,
        at_ms: 1_700_000_000_000,
    }
}

/// Sink `big` of the v2 fixture, plus the 100 000-byte message 4 failed since (if `with_4`).
fn check_big(q: &Queue, with_4: bool) {
    let g = GroupRef::from(GroupKey("g".into()));
    let run = q.head_run("big", &g, 10, usize::MAX).unwrap();
    let mut want = vec![(1, pattern(70_000, 1)), (3, br#"{"n":3}"#.to_vec())];
    if with_4 {
        want.push((4, pattern(100_000, 3)));
    }
    let got: Vec<(u64, Vec<u8>)> = run.iter().map(|m| (m.id.0, m.payload.to_vec())).collect();
    assert_eq!(got.len(), want.len());
    for ((id, p), (want_id, want_p)) in got.iter().zip(&want) {
        assert_eq!(id, want_id);
        assert!(p == want_p, "payload of message {id}: {} bytes", p.len());
    }
    // Failed once by the fixture's generator, once more since (with message 4).
    assert_eq!(run[0].state.deliver_count, if with_4 { 2 } else { 1 });
    let discarded = q.discarded("big", 10).unwrap();
    assert_eq!(discarded.len(), 1);
    assert_eq!(discarded[0].message.id, MessageId(2));
    assert!(discarded[0].message.payload[..] == pattern(130_000, 2)[..]);
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

/// A data dir written by storage v2 before session 7 keeps its 8 MiB sled segments (sled
/// refuses another size), reads the values it parted in 60 KiB pieces (a failed and a
/// discarded payload, converted v1 chunks), and goes on writing new values in today's
/// smaller parts.
#[tokio::test]
async fn a_v2_data_dir_with_8_mib_segments_opens_and_reads_its_60_kib_parts() {
    let dir = fixture_named("v2-8mib-data");
    assert_eq!(segment_size(dir.path()), "8388608");
    {
        let q = Queue::open(dir.path()).unwrap();
        check_converted(&q, &[]);
        check_big(&q, false);
        let e = q
            .enqueue(
                "big",
                vec![NewMessage::new(
                    Some(GroupKey("g".into())),
                    pattern(100_000, 3),
                )],
            )
            .await
            .unwrap();
        assert_eq!(e[0].id, MessageId(4));
        // Failing again rewrites message 1's keys; message 4 moves to its own keys.
        q.fail("big", MessageId(1), retryable(), 0).unwrap();
        q.fail("big", MessageId(4), retryable(), 0).unwrap();
        q.flush().await.unwrap();
    }
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(segment_size(dir.path()), "8388608");
    check_converted(&q, &[]);
    check_big(&q, true);
    assert_eq!(
        q.ack("big", &[MessageId(1), MessageId(3), MessageId(4)])
            .unwrap(),
        3
    );
    q.flush().await.unwrap();
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.counts("big").pending, 0);
    assert_eq!(q.counts("big").discarded, 1);
}

/// A new data dir gets 1 MiB segments, and even its largest values (1 MiB payloads, failed
/// and discarded) are parted small enough that no sled node reaches a quarter of a segment:
/// sled would write such a node to a blob file, which its flush does not fsync.
#[tokio::test]
async fn a_new_data_dir_keeps_large_payloads_out_of_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(segment_size(dir.path()), "1048576");
    let msgs = (0..24u8)
        .map(|i| NewMessage::new(Some(GroupKey(format!("g{}", i % 3))), pattern(1 << 20, i)))
        .collect();
    let ids: Vec<MessageId> = q
        .enqueue("s", msgs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    for id in &ids {
        q.fail("s", *id, retryable(), 0).unwrap();
    }
    for id in &ids[..12] {
        assert!(q.discard("s", *id).await.unwrap());
    }
    q.flush().await.unwrap();
    let blobs = dir.path().join("queue-v2").join("blobs");
    let files: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(files.is_empty(), "blob files: {files:?}");
    // And everything reads back whole.
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    let m = q.get("s", ids[20]).unwrap().unwrap();
    assert!(m.payload[..] == pattern(1 << 20, 20)[..]);
    let discarded = q.discarded("s", 100).unwrap();
    assert_eq!(discarded.len(), 12);
    let first = discarded.iter().find(|d| d.message.id == ids[0]).unwrap();
    assert!(first.message.payload[..] == pattern(1 << 20, 0)[..]);
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

/// The payload the `v2-before-split-link` fixture's generator wrote for message `seed`.
fn spans_payload(seed: u64) -> Vec<u8> {
    pattern(1000, (seed % 26) as u8)
}

/// Every message in `want` (id, payload seed) reads back whole, and each group's head run is
/// its messages in id order (group `g{seed % 10}`).
fn check_spans(q: &Queue, want: &[(u64, u64)]) {
    assert_eq!(q.counts("spans").pending, want.len() as u64);
    for &(id, seed) in want {
        let m = q
            .get("spans", MessageId(id))
            .unwrap()
            .unwrap_or_else(|| panic!("message {id} missing"));
        assert_eq!(m.payload.as_ref(), &spans_payload(seed)[..], "message {id}");
    }
    for g in 0..10 {
        let group = GroupRef::from(GroupKey(format!("g{g}")));
        let run = q.head_run("spans", &group, 1000, usize::MAX).unwrap();
        let got: Vec<u64> = run.iter().map(|m| m.id.0).collect();
        let expected: Vec<u64> = want
            .iter()
            .filter(|(_, seed)| seed % 10 == g)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(got, expected, "group g{g}");
    }
}

/// A data dir written before span leaves split by a log fragment (`Link::Split`, the patched
/// sled's) opens, reads back every pending message from leaves split the old way, takes new
/// messages into spans split the new way, and reads both back after a reopen, then drains.
#[tokio::test]
async fn a_v2_data_dir_from_before_split_links_reads_back_and_takes_new_messages() {
    let dir = fixture_named("v2-before-split-link");
    // The generator (README): messages 1-300 of 1,000 bytes, seed = id, acked 1-20.
    let mut want: Vec<(u64, u64)> = (21..=300).map(|id| (id, id)).collect();
    {
        let q = Queue::open(dir.path()).unwrap();
        check_spans(&q, &want);
        for seed in 301..=600u64 {
            let msg = NewMessage::new(
                Some(GroupKey(format!("g{}", seed % 10))),
                spans_payload(seed),
            );
            let e = q.enqueue("spans", vec![msg]).await.unwrap();
            want.push((e[0].id.0, seed));
        }
        q.flush().await.unwrap();
        check_spans(&q, &want);
    }
    let q = Queue::open(dir.path()).unwrap();
    check_spans(&q, &want);
    let ids: Vec<MessageId> = want.iter().map(|(id, _)| MessageId(*id)).collect();
    assert_eq!(q.ack("spans", &ids).unwrap(), want.len());
    q.flush().await.unwrap();
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.counts("spans").pending, 0);
}
