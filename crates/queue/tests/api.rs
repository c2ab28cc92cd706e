//! Behaviour of the public API beyond the model test: group commit, ungrouped messages,
//! run limits, markers, ids across restarts, error classes.

use s2sink_core::GroupKey;
use s2sink_queue::{
    GroupRef, ListFilter, MessageId, NewMessage, Paced, Queue, QueueError, QueueOptions,
    SourcePosition,
};

fn msg(group: Option<&str>, payload: &[u8]) -> NewMessage {
    NewMessage::new(group.map(|g| GroupKey(g.into())), payload.to_vec())
}

/// Enqueues `msgs` to sink "s" and returns their ids.
fn enqueue_ids(q: &Queue, msgs: Vec<NewMessage>) -> Vec<MessageId> {
    rt().block_on(q.enqueue("s", msgs))
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn queue_is_clone_send_sync() {
    fn assert<T: Clone + Send + Sync + 'static>() {}
    assert::<Queue>();
}

#[test]
fn concurrent_enqueues_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let before = q.flush_count();
    let calls = 256;
    rt.block_on(async {
        let tasks: Vec<_> = (0..calls)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move {
                    q.enqueue("s", vec![msg(Some(&format!("g{i}")), b"x")])
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let flushes = q.flush_count() - before;
    assert!(flushes >= 1);
    assert!(
        flushes < calls,
        "{flushes} flushes for {calls} concurrent enqueues: no group commit"
    );
    assert_eq!(q.counts("s").pending, calls);
}

#[test]
fn ungrouped_messages_are_groups_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let out = rt()
        .block_on(q.enqueue(
            "s",
            vec![msg(None, b"a"), msg(None, b"b"), msg(Some("k"), b"c")],
        ))
        .unwrap();
    assert_ne!(out[0].group, out[1].group);
    assert_eq!(out[0].group.key(), None);
    assert_eq!(out[0].group.solo(), Some(out[0].id));
    assert_eq!(out[2].group, GroupRef::from(GroupKey("k".into())));
    assert_eq!(q.pending_groups("s").unwrap().len(), 3);
    let run = q.head_run("s", &out[0].group, 10, usize::MAX).unwrap();
    assert_eq!(
        run.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![out[0].id]
    );
    assert_eq!(
        out[1].group.to_string(),
        format!("(ungrouped #{})", out[1].id)
    );
}

#[test]
fn run_after_reads_behind_messages_still_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let out = rt()
        .block_on(q.enqueue(
            "s",
            vec![
                msg(Some("g"), b"1"),
                msg(Some("h"), b"x"),
                msg(Some("g"), b"2"),
                msg(Some("g"), b"3"),
                msg(None, b"solo"),
            ],
        ))
        .unwrap();
    let ids = |run: Vec<s2sink_queue::StoredMessage>| run.iter().map(|m| m.id).collect::<Vec<_>>();
    let g = &out[0].group;
    // Not acked yet, so `head_run` still starts at the first; `run_after` goes on behind it.
    assert_eq!(
        ids(q.run_after("s", g, out[0].id, 10, usize::MAX).unwrap()),
        vec![out[2].id, out[3].id]
    );
    assert_eq!(
        ids(q.run_after("s", g, out[2].id, 1, usize::MAX).unwrap()),
        vec![out[3].id]
    );
    assert!(q
        .run_after("s", g, out[3].id, 10, usize::MAX)
        .unwrap()
        .is_empty());
    // An id between the group's own (another group's) works the same.
    assert_eq!(
        ids(q.run_after("s", g, out[1].id, 10, usize::MAX).unwrap()),
        vec![out[2].id, out[3].id]
    );
    let solo = &out[4].group;
    assert_eq!(
        ids(q.run_after("s", solo, out[3].id, 10, usize::MAX).unwrap()),
        vec![out[4].id]
    );
    assert!(q
        .run_after("s", solo, out[4].id, 10, usize::MAX)
        .unwrap()
        .is_empty());
}

#[test]
fn head_run_respects_limits_but_always_returns_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let out = rt()
        .block_on(q.enqueue(
            "s",
            vec![
                msg(Some("g"), &[0; 10]),
                msg(Some("g"), &[0; 10]),
                msg(Some("g"), &[0; 10]),
            ],
        ))
        .unwrap();
    let g = &out[0].group;
    assert_eq!(
        q.head_run("s", g, 10, 5).unwrap().len(),
        1,
        "head alone, even if too large"
    );
    assert_eq!(q.head_run("s", g, 10, 20).unwrap().len(), 2);
    assert_eq!(q.head_run("s", g, 2, usize::MAX).unwrap().len(), 2);
    assert_eq!(q.head_run("s", g, 0, usize::MAX).unwrap().len(), 1);
    assert!(q.head_run("other", g, 10, 10).unwrap().is_empty());
}

#[test]
fn ids_are_never_reused_after_the_queue_empties_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let last = {
        let q = Queue::open(dir.path()).unwrap();
        let out = rt
            .block_on(q.enqueue("s", vec![msg(None, b"a"), msg(None, b"b")]))
            .unwrap();
        let ids: Vec<MessageId> = out.iter().map(|e| e.id).collect();
        assert_eq!(q.ack("s", &ids).unwrap(), 2);
        rt.block_on(q.flush()).unwrap();
        ids[1]
    };
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.counts("s").delivered, 2);
    assert_eq!(q.sinks(), vec!["s".to_string()]);
    let out = rt.block_on(q.enqueue("s", vec![msg(None, b"c")])).unwrap();
    assert!(out[0].id > last, "{} reused after {}", out[0].id, last);
    // Ids are per sink.
    let other = rt.block_on(q.enqueue("t", vec![msg(None, b"c")])).unwrap();
    assert_eq!(other[0].id, MessageId(1));
    assert_eq!(q.total_pending(), 2);
}

#[test]
fn markers_are_durable_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.get_marker("low-water/basin/stream").unwrap(), None);
        rt.block_on(q.put_marker("low-water/basin/stream", b"42"))
            .unwrap();
        rt.block_on(q.put_marker("low-water/basin/stream", b"43"))
            .unwrap();
    }
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(
        q.get_marker("low-water/basin/stream").unwrap(),
        Some(b"43".to_vec())
    );
    assert!(q.sinks().is_empty(), "markers are not a sink");
}

#[test]
fn source_positions_are_stored_with_their_messages_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let at = |value: &'static [u8]| SourcePosition {
        source: "db",
        value,
    };
    {
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.source_position("s", "db").unwrap(), None);
        let stored = rt
            .block_on(q.enqueue_at(
                "s",
                vec![msg(Some("g"), b"1"), msg(Some("g"), b"2")],
                at(b"p1"),
            ))
            .unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(q.source_position("s", "db").unwrap(), Some(b"p1".to_vec()));
        // Visible to delivery once stored, like a plain enqueue.
        let run = q.head_run("s", &stored[0].group, 10, usize::MAX).unwrap();
        assert_eq!(run.len(), 2);
        // Only the position moves.
        assert!(rt
            .block_on(q.enqueue_at("s", Vec::new(), at(b"p2")))
            .unwrap()
            .is_empty());
        // Positions are per sink and per source.
        assert_eq!(q.source_position("other", "db").unwrap(), None);
        assert_eq!(q.source_position("s", "db2").unwrap(), None);
    }
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.source_position("s", "db").unwrap(), Some(b"p2".to_vec()));
    assert_eq!(
        q.counts("s").pending,
        2,
        "the messages came back with the position"
    );
}

#[test]
fn list_by_group_key_and_unknown_sinks_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    rt().block_on(q.enqueue(
        "s",
        vec![
            msg(Some("a"), b"1"),
            msg(Some("b"), b"2"),
            msg(Some("a"), b"3"),
        ],
    ))
    .unwrap();
    let f = ListFilter {
        group: Some(GroupKey("a".into()).into()),
        ..Default::default()
    };
    let got: Vec<Vec<u8>> = q
        .list("s", &f)
        .unwrap()
        .into_iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(got, vec![b"1".to_vec(), b"3".to_vec()]);
    assert!(q.list("nope", &f).unwrap().is_empty());
    assert_eq!(q.get("nope", MessageId(1)).unwrap(), None);
    assert!(!rt().block_on(q.discard("nope", MessageId(1))).unwrap());
    assert_eq!(q.counts("nope"), Default::default());
}

#[test]
fn errors_say_whether_they_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let e = q
        .fail(
            "s",
            MessageId(9),
            s2sink_core::LastError {
                class: s2sink_core::ErrorClass::Retryable,
                status: None,
                code: None,
                message: "x".into(),
                body: None,
                at_ms: 0,
            },
            0,
        )
        .unwrap_err();
    assert!(
        matches!(
            &e,
            QueueError::NotFound {
                id: MessageId(9),
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_fatal());
    let storage = QueueError::Storage {
        op: "enqueue",
        sink: Some("s".into()),
        source: sled::Error::Unsupported("test".into()),
    };
    assert!(storage.is_fatal());
    assert!(storage.to_string().contains("enqueue"));
    // A second open of the same directory is refused with a fatal storage error.
    let again = Queue::open(dir.path())
        .err()
        .expect("sled locks its directory");
    assert!(again.is_fatal(), "{again}");
}

#[test]
fn contains_tells_which_ids_are_still_queued() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let ids = enqueue_ids(
        &q,
        vec![msg(Some("g"), b"a"), msg(Some("g"), b"b"), msg(None, b"c")],
    );
    q.ack("s", &ids[..1]).unwrap();
    rt().block_on(q.discard("s", ids[2])).unwrap();
    assert_eq!(q.contains("s", &ids).unwrap(), vec![false, true, false]);
    assert_eq!(q.contains("other", &ids).unwrap(), vec![false; 3]);
}

#[test]
fn pending_groups_pages_cover_every_group_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let mut msgs = Vec::new();
    for i in 0..50 {
        for _ in 0..3 {
            msgs.push(msg(Some(&format!("g{i:02}")), b"x"));
        }
        msgs.push(msg(None, b"solo"));
    }
    rt().block_on(q.enqueue("s", msgs)).unwrap();
    let all = q.pending_groups("s").unwrap();
    assert_eq!(all.len(), 100);
    let mut paged = Vec::new();
    let mut after: Option<GroupRef> = None;
    // 100 groups in pages of 7: 15 pages; more means paging does not advance.
    for round in 0.. {
        assert!(
            round <= 15,
            "paging does not end: {} groups so far",
            paged.len()
        );
        let page = q.pending_groups_page("s", after.as_ref(), 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

#[test]
fn size_on_disk_reports_bytes_and_a_failed_read_does_not_stop_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    rt().block_on(q.enqueue("s", vec![msg(Some("g"), b"payload")]))
        .unwrap();
    assert!(q.size_on_disk().unwrap() > 0);
    // sled lists its blob directory to add up the sizes: without it the read fails …
    let blobs = dir.path().join("queue-v2").join("blobs");
    assert!(
        blobs.is_dir(),
        "sled keeps its blobs in {}",
        blobs.display()
    );
    std::fs::remove_dir_all(&blobs).unwrap();
    assert!(q.size_on_disk().is_err());
    // … and the queue goes on (it only failed to read a size).
    rt().block_on(q.enqueue("s", vec![msg(Some("g"), b"more")]))
        .unwrap();
    assert_eq!(q.counts("s").pending, 2);
}

/// A group spread over many chunks that are not cached (many interleaved groups, a backlog
/// larger than the payload cache) must not read a whole chunk body per message: a body the
/// cache will not keep is read only as far as the message needs (one 4 KiB value here), a
/// head run stops before reads of more than a few times what it returns and after at most 8
/// of them, and goes on with the next run. With the chunks cached, the whole group comes in
/// one run.
#[test]
fn head_runs_do_not_read_a_chunk_per_message_when_the_cache_is_full() {
    let dir = tempfile::tempdir().unwrap();
    // Without read-ahead: this is what delivery does when the cache misses.
    let options = s2sink_queue::QueueOptions {
        payload_cache_bytes: 100 * 1024,
        read_ahead: false,
        ..Default::default()
    };
    let q = Queue::open_with(dir.path(), options).unwrap();
    let rt = rt();
    fill_spread(&rt, &q);
    let g = GroupRef::from(GroupKey("g".into()));
    let mut seen = Vec::new();
    let mut runs = 0;
    while seen.len() < 20 {
        let run = q.head_run("s", &g, 1000, usize::MAX).unwrap();
        assert!(!run.is_empty(), "a run always serves its head");
        // At most 8 reads from sled, plus a head the cache held.
        assert!(run.len() <= 9, "{} messages in one run", run.len());
        q.ack("s", &run.iter().map(|m| m.id).collect::<Vec<_>>())
            .unwrap();
        for m in &run {
            assert!(
                m.payload[..] == spread_payload(seen.len())[..],
                "payload of message {}",
                m.id.0
            );
            seen.push(m.id);
        }
        runs += 1;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert!(runs >= 3);

    // Everything cached (a large cache): one run holds the whole group.
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    fill_spread(&rt, &q);
    assert_eq!(q.head_run("s", &g, 1000, usize::MAX).unwrap().len(), 20);
}

/// 20 requests of 60 messages of 1 KiB: each request is one chunk; group "g" has one message
/// in each (the fourth, [`spread_payload`]: it crosses a 4 KiB value of its body), the rest
/// belong to other groups.
fn fill_spread(rt: &tokio::runtime::Runtime, q: &Queue) {
    let pad = vec![b'x'; 1024];
    for r in 0..20 {
        let batch = (0..60)
            .map(|i| {
                if i == 3 {
                    msg(Some("g"), &spread_payload(r))
                } else {
                    msg(Some(&format!("o{r}-{i}")), &pad)
                }
            })
            .collect();
        rt.block_on(q.enqueue("s", batch)).unwrap();
    }
}

/// Group "g"'s message in request `r` of [`fill_spread`]: bytes 3072..4572 of its chunk.
fn spread_payload(r: usize) -> Vec<u8> {
    (0..1500).map(|k| (k * 7 + r) as u8).collect()
}

/// Right after a reopen nothing is cached: a group spread over 20 chunks would read all 20
/// bodies from sled in one head run (on an engine thread, delaying everything else there).
/// A run reads at most 8 chunk bodies; those stay cached, so the next run serves them from
/// memory and reads 8 more.
#[test]
fn a_head_run_reads_at_most_eight_chunk_bodies_from_sled() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let q = Queue::open(dir.path()).unwrap();
        fill_spread(&rt, &q);
        // Cached at enqueue: the whole group in one run.
        let g = GroupRef::from(GroupKey("g".into()));
        assert_eq!(q.head_run("s", &g, 1000, usize::MAX).unwrap().len(), 20);
    }
    // Without read-ahead, which would load the bodies before the run asks.
    let q = Queue::open_with(
        dir.path(),
        s2sink_queue::QueueOptions {
            read_ahead: false,
            ..Default::default()
        },
    )
    .unwrap();
    let g = GroupRef::from(GroupKey("g".into()));
    let first = q.head_run("s", &g, 1000, usize::MAX).unwrap();
    assert_eq!(first.len(), 8, "one cold run reads 8 chunk bodies");
    assert_eq!(
        first.capacity(),
        8,
        "a run that stopped early holds no room for the messages it did not read"
    );
    let second = q.head_run("s", &g, 1000, usize::MAX).unwrap();
    assert_eq!(second.len(), 16, "8 served from the cache, 8 more read");
    assert_eq!(
        second[..8].iter().map(|m| m.id).collect::<Vec<_>>(),
        first.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(q.head_run("s", &g, 1000, usize::MAX).unwrap().len(), 20);
}

/// Polls `cond` until it holds or 10 s pass.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Read-ahead keeps the cache filled with the **oldest** chunk bodies: after a reopen it loads
/// them in id order up to the budget, and when the oldest chunk ends it loads the next one, so
/// a group's head run finds its messages cached instead of reading sled itself.
#[test]
fn read_ahead_fills_the_cache_with_the_oldest_chunk_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let firsts: Vec<MessageId> = {
        let q = Queue::open(dir.path()).unwrap();
        fill_spread(&rt, &q);
        q.cached_chunks("s")
    };
    assert!(firsts.len() >= 20, "all cached at enqueue: {firsts:?}");
    // Room for about 5 of the ~60 KiB bodies.
    let options = || s2sink_queue::QueueOptions {
        payload_cache_bytes: 5 * 62 * 1024,
        ..Default::default()
    };
    // The oldest bodies, as many as fit: a prefix of the chunks, filled up to the budget.
    let prefix = |q: &Queue, from: usize| {
        let cached = q.cached_chunks("s");
        let full = q.cached_bytes() > 4 * 62 * 1024;
        (full && cached[..] == firsts[from..from + cached.len()]).then_some(cached.len())
    };
    let q = Queue::open_with(dir.path(), options()).unwrap();
    let mut loaded = 0;
    eventually("the oldest bodies loaded", || {
        prefix(&q, 0).map(|n| loaded = n).is_some()
    });
    assert!(loaded < firsts.len(), "not everything fits: {loaded}");
    // The group's first messages come from the cache, payloads intact.
    let g = GroupRef::from(GroupKey("g".into()));
    let run = q.head_run("s", &g, 1000, usize::MAX).unwrap();
    assert!(run.len() >= 3, "{} messages", run.len());
    for (r, m) in run.iter().enumerate() {
        assert_eq!(
            m.payload[..],
            spread_payload(r)[..],
            "payload of message {}",
            m.id.0
        );
    }
    // Paced, the same group's run ends where the read-ahead has not reached: its messages
    // in the cached chunks, none read from sled beyond them (unpaced, the run above did).
    let in_cached = run.iter().filter(|m| m.id < firsts[loaded]).count();
    assert!(
        run.len() > in_cached,
        "unpaced {} vs {in_cached}",
        run.len()
    );
    match q.head_run_paced("s", &g, 1000, usize::MAX, true).unwrap() {
        Paced::Run(paced) => {
            assert_eq!(paced.len(), in_cached, "a paced run stops at the frontier");
            assert_eq!(paced[..], run[..in_cached]);
        }
        Paced::Wait(chunk) => panic!("waits for chunk {chunk} with its head cached"),
    }
    // Paced: a group whose head lies in a chunk the read-ahead has not reached waits for
    // it; one inside the cached prefix gets its run; unpaced, a group reads its head itself.
    let last = GroupRef::from(GroupKey("o19-0".into()));
    match q
        .head_run_paced("s", &last, 1000, usize::MAX, true)
        .unwrap()
    {
        Paced::Wait(chunk) => {
            let cached = q.cached_chunks("s");
            assert!(chunk > cached.last().unwrap().0, "{chunk} vs {cached:?}");
            assert!(chunk >= q.read_ahead_frontier("s"));
        }
        Paced::Run(run) => panic!("read {} messages beyond the frontier", run.len()),
    }
    let oldest = GroupRef::from(GroupKey("o0-0".into()));
    match q
        .head_run_paced("s", &oldest, 1000, usize::MAX, true)
        .unwrap()
    {
        Paced::Run(run) => assert_eq!(run.len(), 1),
        Paced::Wait(chunk) => panic!("waits for cached chunk {chunk}"),
    }
    match q
        .head_run_paced("s", &last, 1000, usize::MAX, false)
        .unwrap()
    {
        Paced::Run(run) => assert_eq!(run.len(), 1),
        Paced::Wait(chunk) => panic!("unpaced, waits for chunk {chunk}"),
    }
    // The oldest chunk ends: newer bodies take its place.
    let chunk0: Vec<MessageId> = (firsts[0].0..firsts[1].0).map(MessageId).collect();
    q.ack("s", &chunk0).unwrap();
    eventually("the next bodies loaded once the oldest chunk ended", || {
        prefix(&q, 1).is_some_and(|n| 1 + n > loaded)
    });
    // Without read-ahead nothing is loaded before delivery asks.
    drop(q);
    let q = Queue::open_with(
        dir.path(),
        s2sink_queue::QueueOptions {
            read_ahead: false,
            ..options()
        },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(q.cached_chunks("s").is_empty());
    // Without read-ahead nothing would come to a waiting group: pacing is off.
    match q
        .head_run_paced("s", &last, 1000, usize::MAX, true)
        .unwrap()
    {
        Paced::Run(run) => assert_eq!(run.len(), 1),
        Paced::Wait(chunk) => panic!("waits for chunk {chunk} with no read-ahead"),
    }
}

/// Chunk bodies live in span trees that are dropped whole once all their chunks ended: a span
/// with one live message stays, reads across spans are exact, and a reopen finds them again.
#[test]
fn ended_spans_of_chunk_bodies_are_dropped_and_live_ones_kept() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    // 40 KiB messages, one chunk each; a span closes past 100 KiB: three chunks per span.
    let options = || QueueOptions {
        span_bytes: 100 * 1024,
        ..QueueOptions::default()
    };
    let payload = |i: usize| vec![b'a' + i as u8; 40 * 1024];
    let q = Queue::open_with(dir.path(), options()).unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        let g = format!("g{i}");
        let e = rt
            .block_on(q.enqueue("s", vec![msg(Some(&g), &payload(i))]))
            .unwrap();
        ids.push(e[0].id);
    }
    assert_eq!(q.body_spans("s"), 4);
    let read = |q: &Queue, i: usize| q.get("s", ids[i]).unwrap().unwrap().payload.to_vec();
    // Keep message 0 (first span) and 7 (third span); the rest is delivered.
    let done: Vec<MessageId> = (0..12)
        .filter(|i| ![0, 7].contains(i))
        .map(|i| ids[i])
        .collect();
    q.ack("s", &done).unwrap();
    assert_eq!(
        q.body_spans("s"),
        4,
        "deferred acks are not on disk: nothing dropped"
    );
    rt.block_on(q.flush()).unwrap();
    // The second span ended; the fourth takes new chunks, so it stays while open.
    assert_eq!(q.body_spans("s"), 3);
    assert_eq!(read(&q, 0), payload(0));
    assert_eq!(read(&q, 7), payload(7));
    drop(q);

    let q = Queue::open_with(dir.path(), options()).unwrap();
    assert_eq!(
        q.body_spans("s"),
        2,
        "the ended open span is dropped at open"
    );
    assert_eq!(read(&q, 0), payload(0));
    assert_eq!(read(&q, 7), payload(7));
    let group = q.get("s", ids[7]).unwrap().unwrap().group;
    assert_eq!(
        q.head_run("s", &group, 10, 1 << 20).unwrap()[0]
            .payload
            .to_vec(),
        payload(7)
    );
    q.ack("s", &[ids[0], ids[7]]).unwrap();
    rt.block_on(q.flush()).unwrap();
    assert_eq!(q.body_spans("s"), 0);
    let e = rt
        .block_on(q.enqueue("s", vec![msg(None, b"after")]))
        .unwrap();
    assert_eq!(q.body_spans("s"), 1);
    drop(q);

    let q = Queue::open_with(dir.path(), options()).unwrap();
    assert_eq!(
        q.get("s", e[0].id).unwrap().unwrap().payload.to_vec(),
        b"after"
    );
    assert_eq!(q.total_pending(), 1);
}

/// A restart resumes the groups holding the oldest messages first, ungrouped ones among them.
#[test]
fn pending_groups_oldest_first_orders_groups_by_their_oldest_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let ids = enqueue_ids(
        &q,
        vec![
            msg(Some("z"), b"1"),
            msg(None, b"2"),
            msg(Some("a"), b"3"),
            msg(Some("z"), b"4"),
            msg(Some("m"), b"5"),
        ],
    );
    let names = |q: &Queue| -> Vec<String> {
        q.pending_groups_oldest_first("s")
            .unwrap()
            .iter()
            .map(|g| match g.key() {
                Some(k) => k.to_owned(),
                None => format!("#{}", g.solo().unwrap().0),
            })
            .collect()
    };
    let solo = format!("#{}", ids[1].0);
    assert_eq!(names(&q), ["z", solo.as_str(), "a", "m"]);
    // Once z's oldest message is delivered, z's age is that of its next one.
    q.ack("s", &[ids[0]]).unwrap();
    assert_eq!(names(&q), [solo.as_str(), "a", "z", "m"]);
    assert!(q.pending_groups_oldest_first("nope").unwrap().is_empty());
}
