//! Groups paced to the queue's read-ahead: a group whose head lies in a chunk the payload cache
//! would not keep (it holds older ones) and the read-ahead has not reached waits for it — but
//! for 200 ms at most, then reads its head itself. The read-ahead's frontier only moves as the
//! oldest chunks end, so without that limit one group whose message pins the oldest chunk (its
//! append never answered) would hold every other group back for as long. Paused tokio time,
//! S2 as a stub with one stream whose appends never answer (s2-lite cannot hang on demand).

use std::sync::Arc;
use std::time::Duration;

use s2sink_client::{AppendAck, AppendInput, S2Config, S2Error, SequencedRecord};
use s2sink_core::GroupKey;
use s2sink_queue::{NewMessage, Queue, QueueOptions};
use s2sink_server::engine::{BoxFuture, SinkSettings, StreamIo};
use s2sink_transform::{FunctionSource, FunctionsConfig};

mod common;
use common::{paused, MemStreams};

/// Far beyond any schedule here (virtual time).
const POLL_DEADLINE: Duration = Duration::from_secs(600);
/// Payload of each message: the cache below holds one, not two.
const PAYLOAD_PAD: usize = 2000;

/// Stream `stuck` never answers an append (so it stays empty); the others are in memory.
#[derive(Default)]
struct SplitStreams {
    streams: MemStreams,
}

impl StreamIo for SplitStreams {
    fn append<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        Box::pin(async move {
            if stream == "stuck" {
                std::future::pending::<()>().await;
            }
            self.streams.stream(stream).apply(input)
        })
    }

    fn check_tail<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<u64, S2Error>> {
        let tail = self.streams.stream(stream).len() as u64;
        Box::pin(async move { Ok(tail) })
    }

    fn read<'a>(
        &'a self,
        _: &'a str,
        stream: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        let records = self.streams.stream(stream).read(start, count);
        Box::pin(async move { Ok(records) })
    }
}

fn message(group: &str) -> NewMessage {
    let body = serde_json::json!({
        "record": {"id": group, "pad": "x".repeat(PAYLOAD_PAD)},
        "metadata": {"table_schema": "public", "table_name": "t"},
    });
    NewMessage::new(Some(GroupKey(group.into())), body.to_string().into_bytes())
}

/// Group `a` to the stream that never answers, every other group to `events`.
fn settings() -> SinkSettings {
    let mut s = SinkSettings::new("s", None, S2Config::direct("http://127.0.0.1:9"));
    s.functions = FunctionsConfig {
        route: Some(FunctionSource::Inline(
            r#"fn route(action, record, changes, metadata) {
                #{basin: "test-basin", stream: if record.id == "a" { "stuck" } else { "events" }}
            }"#
            .into(),
        )),
        ..Default::default()
    };
    s
}

#[test]
fn a_paced_group_reads_its_head_itself_when_the_read_ahead_is_pinned() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open_with(
            dir.path(),
            QueueOptions {
                payload_cache_bytes: PAYLOAD_PAD * 3 / 2,
                ..Default::default()
            },
        )
        .unwrap();
        // Two enqueues, two chunks: `a`'s (the oldest) and `b`'s.
        let a = queue.enqueue("s", vec![message("a")]).await.unwrap()[0].id;
        let b = queue.enqueue("s", vec![message("b")]).await.unwrap()[0].id;
        // The cache holds `a`'s chunk and cannot take `b`'s without dropping an older one:
        // `b` must wait for the read-ahead, which cannot move while `a`'s chunk is live.
        assert_eq!(queue.cached_chunks("s"), vec![a]);
        assert!(queue.read_ahead_frontier("s") <= b.0);

        let stub = Arc::new(SplitStreams::default());
        let engine = common::engine_on_this_runtime(&queue, vec![settings()], stub.clone());

        let events = stub.streams.stream("events");
        let delivered = tokio::time::timeout(POLL_DEADLINE, async {
            while events.len() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            delivered.is_ok(),
            "group b never delivered while a's chunk is pinned (cached chunks {:?}, frontier {})",
            queue.cached_chunks("s"),
            queue.read_ahead_frontier("s")
        );
        // It was paced first, then let go: `b`'s actor ended waiting and was started again
        // (unpaced), besides `a`'s one start. Not timed: virtual time also jumps while the
        // runtime waits for the queue's flush thread.
        let starts: u64 = engine
            .shards("s")
            .await
            .unwrap()
            .iter()
            .map(|s| s.groups_started)
            .sum();
        assert_eq!(starts, 3, "group starts: a once, b paced then unpaced");
        assert!(events.bodies()[0].contains(r#""id":"b""#));
        // `a` is still pending (its append never answered): nothing was lost or skipped.
        assert_eq!(queue.cached_chunks("s"), vec![a]);
    });
}
