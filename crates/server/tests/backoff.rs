//! Backoff scheduling of the engine under paused tokio time: 1, 2, 4 … s, the cap, and
//! S2's Retry-After as a floor. S2 is a stub here (s2-lite cannot fail on demand, and paused
//! time needs a stream that answers without real I/O).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2sink_client::{AppendAck, AppendInput, S2Config, S2Error, SequencedRecord};
use s2sink_core::{BackoffPolicy, Route};
use s2sink_queue::Queue;
use s2sink_server::engine::{BoxFuture, IngestItem, SinkSettings, StreamIo};
use tokio::time::Instant;

mod common;

/// A stream that fails every append (503, or 429 with Retry-After when told) and records
/// when each attempt happened.
struct FailingStream {
    attempts: Mutex<Vec<Instant>>,
    retry_after_on: Option<(usize, Duration)>,
}

impl StreamIo for FailingStream {
    fn append<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        let n = {
            let mut a = self.attempts.lock().unwrap();
            a.push(Instant::now());
            a.len()
        };
        let throttled = self.retry_after_on.filter(|(at, _)| *at == n);
        Box::pin(async move {
            Err(match throttled {
                Some((_, after)) => S2Error::Api {
                    context: "append".into(),
                    status: 429,
                    code: "rate_limited".into(),
                    message: "slow down".into(),
                    body: String::new(),
                    retry_after: Some(after),
                },
                None => S2Error::Api {
                    context: "append".into(),
                    status: 503,
                    code: "server_draining".into(),
                    message: "draining".into(),
                    body: String::new(),
                    retry_after: None,
                },
            })
        })
    }

    fn check_tail<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<u64, S2Error>> {
        Box::pin(async { Ok(0) })
    }

    fn read<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u64,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Far beyond any schedule tested here (the longest needs ≈75 s of virtual time).
const POLL_DEADLINE: Duration = Duration::from_secs(600);

fn gaps(attempts: &[Instant]) -> Vec<u64> {
    attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect()
}

fn run_paused(retry_after_on: Option<(usize, Duration)>, attempts_wanted: usize) -> Vec<u64> {
    common::paused(async move {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let stub = Arc::new(FailingStream {
            attempts: Mutex::new(Vec::new()),
            retry_after_on,
        });
        let mut s = SinkSettings::new(
            "s",
            Some(Route::new("test-basin", "events").unwrap()),
            S2Config::direct("http://127.0.0.1:9"),
        );
        s.backoff = BackoffPolicy {
            base_ms: 1_000,
            max_ms: 20_000,
            jitter: 0.0,
        };
        s.batch.linger = Duration::ZERO;
        let engine = common::engine_on_this_runtime(&queue, vec![s], stub.clone());
        engine
            .ingest("s", vec![IngestItem::new(serde_json::json!({"a": 1}))])
            .await
            .unwrap();
        // The first attempt waits on real disk I/O (the stream's low-water mark is flushed by
        // the queue's own thread). Paused time would run on meanwhile and could use up the
        // virtual deadline below before anything was sent, so wait for it in real time,
        // without letting the virtual clock move (yielding keeps the runtime busy).
        let real_deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while stub.attempts.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < real_deadline,
                "no first attempt within 30 s (real time)"
            );
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Paused time: the runtime jumps to the next timer, so a regression that stops
        // retrying reaches this (virtual) deadline at once and fails instead of hanging.
        let reached = tokio::time::timeout(POLL_DEADLINE, async {
            while stub.attempts.lock().unwrap().len() < attempts_wanted {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let g = gaps(&stub.attempts.lock().unwrap());
        assert!(
            reached.is_ok(),
            "{} of {attempts_wanted} attempts within {POLL_DEADLINE:?} (paused time); gaps {g:?}",
            stub.attempts.lock().unwrap().len()
        );
        g
    })
}

fn assert_close(actual: &[u64], expected_ms: &[u64]) {
    assert_eq!(actual.len(), expected_ms.len(), "{actual:?}");
    for (a, e) in actual.iter().zip(expected_ms) {
        assert!(
            *a >= *e && *a <= e + 50,
            "gap {a} ms, expected {e} ms: {actual:?}"
        );
    }
}

#[test]
fn doubles_from_one_second_up_to_the_cap() {
    // Sequin's rule: once the doubling count reaches floor(log2(max/base)) + 1 (here 5), the
    // delay is exactly the cap, so 16 s is skipped for a 20 s cap.
    let g = run_paused(None, 8);
    assert_close(&g, &[1_000, 2_000, 4_000, 8_000, 20_000, 20_000, 20_000]);
}

#[test]
fn retry_after_is_a_floor() {
    // The 3rd attempt gets 429 with Retry-After 30 s: the next gap is 30 s, not 4 s.
    let g = run_paused(Some((3, Duration::from_secs(30))), 5);
    assert_close(&g, &[1_000, 2_000, 30_000, 8_000]);
}
