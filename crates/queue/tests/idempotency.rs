//! Idempotent enqueue: request keys replay their answer, message keys are stored once, the
//! records survive a reopen, expire after their window, are capped, and concurrent enqueues of
//! one key store one message.

use std::time::Duration;

use s2sink_core::{now_millis, GroupKey};
use s2sink_queue::{
    Accepted, Idempotency, MessageId, NewMessage, Queue, QueueError, QueueOptions, RequestKey,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn msg(key: Option<&str>, payload: &str) -> NewMessage {
    let m = NewMessage::new(Some(GroupKey("g".into())), payload.as_bytes().to_vec());
    match key {
        Some(k) => m.with_idempotency_key(k),
        None => m,
    }
}

fn request(key: &str, fingerprint: u128) -> Idempotency {
    Idempotency {
        request: Some(RequestKey {
            key: key.into(),
            fingerprint,
        }),
        window: DAY,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ids(accepted: &[Accepted]) -> Vec<u64> {
    accepted.iter().map(|a| a.id.0).collect()
}

/// Every payload the sink holds, in id order.
fn payloads(q: &Queue, sink: &str) -> Vec<String> {
    let filter = s2sink_queue::ListFilter {
        limit: 10_000,
        ..Default::default()
    };
    q.list(sink, &filter)
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect()
}

#[test]
fn a_request_key_replays_the_answer_and_refuses_another_request() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    rt().block_on(async {
        let batch = || vec![msg(None, "a"), msg(None, "b"), msg(None, "c")];
        let first = q
            .enqueue_idempotent("s", batch(), request("r1", 7))
            .await
            .unwrap();
        assert!(!first.replayed);
        assert_eq!(ids(&first.accepted), [1, 2, 3]);
        assert_eq!(first.stored.len(), 3);

        let again = q
            .enqueue_idempotent("s", batch(), request("r1", 7))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.accepted, first.accepted);
        assert!(again.stored.is_empty());
        assert_eq!(payloads(&q, "s"), ["a", "b", "c"]);

        let e = q
            .enqueue_idempotent("s", vec![msg(None, "x")], request("r1", 8))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, QueueError::IdempotencyConflict { key, .. } if key == "r1"),
            "{e}"
        );
        assert!(!e.is_fatal());
        // Another sink has its own keys; the queue keeps working after a conflict.
        let other = q
            .enqueue_idempotent("t", vec![msg(None, "x")], request("r1", 8))
            .await
            .unwrap();
        assert!(!other.replayed);
        assert_eq!(payloads(&q, "s"), ["a", "b", "c"]);
        assert_eq!(payloads(&q, "t"), ["x"]);
    });
}

#[test]
fn message_keys_store_a_message_once_across_calls_and_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    rt().block_on(async {
        let one = q
            .enqueue_idempotent(
                "s",
                vec![
                    msg(Some("k1"), "1"),
                    msg(None, "n"),
                    msg(Some("k1"), "1 again"),
                ],
                Idempotency::messages(DAY),
            )
            .await
            .unwrap();
        assert_eq!(ids(&one.accepted), [1, 2, 1]);
        assert_eq!(
            one.accepted.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(one.duplicates(), 1);
        let two = q
            .enqueue_idempotent(
                "s",
                vec![msg(Some("k2"), "2"), msg(Some("k1"), "1 retried")],
                Idempotency::messages(DAY),
            )
            .await
            .unwrap();
        assert_eq!(ids(&two.accepted), [3, 1]);
        assert_eq!(two.duplicates(), 1);
        assert_eq!(two.stored.len(), 1);
        // Only duplicates: nothing stored, the original ids returned.
        let three = q
            .enqueue_idempotent(
                "s",
                vec![msg(Some("k2"), "2"), msg(Some("k1"), "1")],
                Idempotency::messages(DAY),
            )
            .await
            .unwrap();
        assert_eq!(ids(&three.accepted), [3, 1]);
        assert!(three.stored.is_empty());
        assert_eq!(payloads(&q, "s"), ["1", "n", "2"]);
        // The plain enqueue ignores keys.
        q.enqueue("s", vec![msg(Some("k1"), "plain")])
            .await
            .unwrap();
        assert_eq!(payloads(&q, "s"), ["1", "n", "2", "plain"]);
        assert_eq!(q.idempotency_keys("s"), 2);
    });
}

#[test]
fn records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let q = Queue::open(dir.path()).unwrap();
        let out = rt()
            .block_on(q.enqueue_idempotent(
                "s",
                vec![msg(Some("m1"), "1"), msg(Some("m2"), "2")],
                request("r", 1),
            ))
            .unwrap();
        // Acked messages keep their keys: a retry after delivery is still a duplicate.
        q.ack("s", &[MessageId(1)]).unwrap();
        rt().block_on(q.flush()).unwrap();
        out
    };
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.idempotency_keys("s"), 3);
    rt().block_on(async {
        let replay = q
            .enqueue_idempotent(
                "s",
                vec![msg(Some("m1"), "1"), msg(Some("m2"), "2")],
                request("r", 1),
            )
            .await
            .unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.accepted, first.accepted);
        let retry = q
            .enqueue_idempotent(
                "s",
                vec![
                    msg(Some("m2"), "2"),
                    msg(Some("m1"), "1"),
                    msg(Some("m3"), "3"),
                ],
                Idempotency::messages(DAY),
            )
            .await
            .unwrap();
        assert_eq!(ids(&retry.accepted), [2, 1, 3]);
        assert_eq!(retry.duplicates(), 2);
    });
    assert_eq!(payloads(&q, "s"), ["2", "3"]);
}

/// Polls the clock (no fixed sleep) until `at` has passed.
async fn until_past(at: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while now_millis() <= at {
        assert!(tokio::time::Instant::now() < deadline, "clock stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn records_expire_after_their_window_and_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(300);
    {
        let q = Queue::open(dir.path()).unwrap();
        rt().block_on(async {
            let accepted_at = now_millis();
            let a = q
                .enqueue_idempotent(
                    "s",
                    vec![msg(Some("x"), "1")],
                    Idempotency::messages(window),
                )
                .await
                .unwrap();
            assert_eq!(a.duplicates(), 0);
            let b = q
                .enqueue_idempotent(
                    "s",
                    vec![msg(Some("x"), "1")],
                    Idempotency::messages(window),
                )
                .await
                .unwrap();
            if now_millis() < accepted_at + window.as_millis() as u64 {
                assert_eq!(
                    b.duplicates(),
                    1,
                    "a retry within the window is a duplicate"
                );
            }
            until_past(accepted_at + window.as_millis() as u64).await;
            // Expired: accepted as new (its old record is replaced), and later batches prune
            // other expired records.
            let c = q
                .enqueue_idempotent("s", vec![msg(Some("x"), "1")], Idempotency::messages(DAY))
                .await
                .unwrap();
            assert_eq!(c.duplicates(), 0);
            assert_eq!(q.idempotency_keys("s"), 1);
            let d = q
                .enqueue_idempotent(
                    "s",
                    vec![msg(Some("y"), "2")],
                    Idempotency::messages(window),
                )
                .await
                .unwrap();
            assert_eq!(d.duplicates(), 0);
            assert_eq!(q.idempotency_keys("s"), 2);
            until_past(now_millis() + window.as_millis() as u64).await;
            q.enqueue_idempotent("s", vec![msg(Some("z"), "3")], Idempotency::messages(DAY))
                .await
                .unwrap();
            // `y` expired and was pruned by that batch; `x` (a day) stays.
            assert_eq!(q.idempotency_keys("s"), 2);
            q.enqueue_idempotent(
                "s",
                vec![msg(Some("w"), "4")],
                Idempotency::messages(window),
            )
            .await
            .unwrap();
            until_past(now_millis() + window.as_millis() as u64).await;
        });
        assert_eq!(q.idempotency_keys("s"), 3);
    }
    // Open prunes what expired meanwhile (`w`).
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.idempotency_keys("s"), 2);
    let again = rt()
        .block_on(q.enqueue_idempotent(
            "s",
            vec![
                msg(Some("x"), "1"),
                msg(Some("z"), "3"),
                msg(Some("y"), "2"),
            ],
            Idempotency::messages(DAY),
        ))
        .unwrap();
    assert_eq!(
        again
            .accepted
            .iter()
            .map(|a| a.duplicate)
            .collect::<Vec<_>>(),
        [true, true, false]
    );
}

#[test]
fn the_cap_forgets_the_oldest_keys_first() {
    let dir = tempfile::tempdir().unwrap();
    let options = |cap| QueueOptions {
        idempotency_max_keys: cap,
        ..QueueOptions::default()
    };
    {
        let q = Queue::open_with(dir.path(), options(5)).unwrap();
        rt().block_on(async {
            for i in 0..8 {
                let key = format!("k{i}");
                q.enqueue_idempotent("s", vec![msg(Some(&key), &key)], Idempotency::messages(DAY))
                    .await
                    .unwrap();
                assert!(q.idempotency_keys("s") <= 5);
            }
            assert_eq!(q.idempotency_keys("s"), 5);
            // k7..k3 remembered, k0..k2 forgotten. One call with more keys than the cap keeps
            // the cap too.
            let out = q
                .enqueue_idempotent(
                    "s",
                    vec![msg(Some("k7"), "k7"), msg(Some("k3"), "k3")],
                    Idempotency::messages(DAY),
                )
                .await
                .unwrap();
            assert_eq!(out.duplicates(), 2);
            let out = q
                .enqueue_idempotent("s", vec![msg(Some("k0"), "k0")], Idempotency::messages(DAY))
                .await
                .unwrap();
            assert_eq!(out.duplicates(), 0, "k0 was evicted");
            assert_eq!(q.idempotency_keys("s"), 5);
            // One call with more new keys than the cap: the cap holds, the newest are kept.
            let many: Vec<NewMessage> = (0..8).map(|i| msg(Some(&format!("m{i}")), "m")).collect();
            let out = q
                .enqueue_idempotent("s", many, request("big", 1))
                .await
                .unwrap();
            assert_eq!(out.stored.len(), 8);
            assert_eq!(q.idempotency_keys("s"), 5);
            let again: Vec<NewMessage> = (4..8).map(|i| msg(Some(&format!("m{i}")), "m")).collect();
            let out = q
                .enqueue_idempotent("s", again, Idempotency::messages(DAY))
                .await
                .unwrap();
            assert_eq!(out.duplicates(), 4, "m4..m7 remembered");
            let replay = q
                .enqueue_idempotent("s", Vec::new(), request("big", 1))
                .await
                .unwrap();
            assert!(replay.replayed, "the request's own record is kept");
            assert_eq!(replay.accepted.len(), 8);
            // Back to single keys for the reopen below.
            for key in ["k7", "k0"] {
                q.enqueue_idempotent("s", vec![msg(Some(key), key)], Idempotency::messages(DAY))
                    .await
                    .unwrap();
            }
        });
    }
    // A lower cap at open evicts the oldest down to it.
    let q = Queue::open_with(dir.path(), options(2)).unwrap();
    assert_eq!(q.idempotency_keys("s"), 2);
    let out = rt()
        .block_on(q.enqueue_idempotent(
            "s",
            vec![msg(Some("k0"), "k0"), msg(Some("k7"), "k7")],
            Idempotency::messages(DAY),
        ))
        .unwrap();
    assert_eq!(
        out.accepted.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
        [true, true],
        "the newest keys (k7, then k0 accepted again) are kept"
    );
}

#[test]
fn concurrent_enqueues_of_one_key_store_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move {
                    let m = q
                        .enqueue_idempotent(
                            "s",
                            vec![msg(Some("same"), &format!("copy {i}"))],
                            Idempotency::messages(DAY),
                        )
                        .await
                        .unwrap();
                    let r = q
                        .enqueue_idempotent("s", vec![msg(None, "req")], request("same-req", 9))
                        .await
                        .unwrap();
                    (m.accepted[0], r.accepted[0].id)
                })
            })
            .collect();
        let mut message_ids = Vec::new();
        let mut request_ids = Vec::new();
        for t in tasks {
            let (m, r) = t.await.unwrap();
            message_ids.push(m);
            request_ids.push(r);
        }
        let new: Vec<_> = message_ids.iter().filter(|a| !a.duplicate).collect();
        assert_eq!(new.len(), 1, "exactly one call stored the message");
        assert!(message_ids.iter().all(|a| a.id == new[0].id));
        assert!(request_ids.iter().all(|id| *id == request_ids[0]));
    });
    assert_eq!(q.counts("s").pending, 2, "{:?}", payloads(&q, "s"));
}

mod model {
    //! Random keyed enqueues and reopens against a model: what is stored, what each call
    //! answers (ids, duplicates, replays, conflicts) and the count of stored messages.

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Messages with keys from a small alphabet (so repeats are common), and maybe a
        /// request key with a fingerprint from a small set (so conflicts happen).
        Enqueue {
            keys: Vec<Option<u8>>,
            request: Option<(u8, u8)>,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (
                proptest::collection::vec(proptest::option::of(0u8..8), 0..6),
                proptest::option::of((0u8..3, 0u8..2)),
            )
                .prop_map(|(keys, request)| Op::Enqueue { keys, request }),
            1 => Just(Op::Reopen),
        ]
    }

    #[derive(Default)]
    struct Model {
        next_id: u64,
        messages: HashMap<u8, u64>,
        requests: HashMap<u8, (u8, Vec<Accepted>)>,
        stored: u64,
    }

    /// The model's answer: `Err(())` for a conflict.
    fn expect(
        m: &mut Model,
        keys: &[Option<u8>],
        request: Option<(u8, u8)>,
    ) -> Result<(Vec<Accepted>, bool), ()> {
        if let Some((k, fp)) = request {
            if let Some((old_fp, answer)) = m.requests.get(&k) {
                return if *old_fp == fp {
                    Ok((answer.clone(), true))
                } else {
                    Err(())
                };
            }
        }
        let mut answer = Vec::new();
        let mut fresh = HashMap::new();
        for key in keys {
            let known = key.and_then(|k| m.messages.get(&k).or(fresh.get(&k)).copied());
            match known {
                Some(id) => answer.push(Accepted {
                    id: MessageId(id),
                    duplicate: true,
                }),
                None => {
                    let id = m.next_id;
                    m.next_id += 1;
                    m.stored += 1;
                    if let Some(k) = key {
                        fresh.insert(*k, id);
                    }
                    answer.push(Accepted {
                        id: MessageId(id),
                        duplicate: false,
                    });
                }
            }
        }
        m.messages.extend(fresh);
        if let Some((k, fp)) = request {
            m.requests.insert(k, (fp, answer.clone()));
        }
        Ok((answer, false))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn keyed_enqueues_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut q = Queue::open(dir.path()).unwrap();
            let rt = rt();
            let mut m = Model { next_id: 1, ..Model::default() };
            for op in ops {
                match op {
                    Op::Reopen => {
                        drop(q);
                        q = Queue::open(dir.path()).unwrap();
                    }
                    Op::Enqueue { keys, request } => {
                        let msgs = keys
                            .iter()
                            .map(|k| msg(k.map(|k| format!("key-{k}")).as_deref(), "p"))
                            .collect();
                        let idem = Idempotency {
                            request: request.map(|(k, fp)| RequestKey {
                                key: format!("req-{k}"),
                                fingerprint: fp as u128,
                            }),
                            window: DAY,
                        };
                        let got = rt.block_on(q.enqueue_idempotent("s", msgs, idem));
                        match (expect(&mut m, &keys, request), got) {
                            (Ok((answer, replayed)), Ok(out)) => {
                                prop_assert_eq!(&out.accepted, &answer);
                                prop_assert_eq!(out.replayed, replayed);
                                let new = answer.iter().filter(|a| !a.duplicate).count();
                                prop_assert_eq!(out.stored.len(), if replayed { 0 } else { new });
                            }
                            (Err(()), Err(QueueError::IdempotencyConflict { .. })) => {}
                            (want, got) => prop_assert!(false, "model {:?}, queue {:?}", want.map(|a| a.0), got),
                        }
                    }
                }
                prop_assert_eq!(q.counts("s").pending, m.stored);
            }
        }
    }
}
