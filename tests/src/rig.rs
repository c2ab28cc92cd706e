//! An engine with one sink on s2-lite, for tests that drive the engine directly: start it
//! with settings pointed at any endpoint (s2-lite itself, the fault proxy, the TCP cutter),
//! ingest `(group, seq)` changes, wait until nothing is pending, read back what landed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, IngestItem, SinkSettings, SinkShared};

use crate::{change, eventually, ids_in, read_all, LiteServer};

/// One sink `name` on a fresh stream of s2-lite, its queue in a temporary directory.
pub struct EngineRig {
    pub lite: LiteServer,
    pub basin: String,
    pub stream: String,
    pub queue: Queue,
    pub engine: Engine,
    pub name: &'static str,
    _dir: tempfile::TempDir,
}

impl EngineRig {
    /// Starts the engine with the settings `settings(basin, stream)` returns.
    pub async fn start(
        lite: LiteServer,
        name: &'static str,
        settings: impl FnOnce(&str, &str) -> SinkSettings,
    ) -> EngineRig {
        let (basin, stream) = lite.fresh_stream(name).await;
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let settings = settings(&basin, &stream);
        // A failing test drops the data dir under the running actors: report, do not exit.
        let options = EngineOptions {
            on_fatal: Some(Arc::new(|e| eprintln!("fatal queue error: {e}"))),
            ..EngineOptions::default()
        };
        let engine = Engine::start(queue.clone(), vec![settings], options).unwrap();
        EngineRig {
            lite,
            basin,
            stream,
            queue,
            engine,
            name,
            _dir: dir,
        }
    }

    pub fn sink(&self) -> &SinkShared {
        self.engine.sink(self.name).unwrap()
    }

    /// Ingests `(group, seq)` changes padded by `pad` bytes in one request; returns
    /// id → group name.
    pub async fn ingest(&self, items: &[(u64, u64)], pad: usize) -> HashMap<u64, String> {
        let batch: Vec<IngestItem> = items
            .iter()
            .map(|(pk, seq)| IngestItem::new(change(*pk, *seq, pad)))
            .collect();
        let ids = self.engine.ingest(self.name, batch).await.unwrap();
        ids.iter()
            .zip(items)
            .map(|(id, (pk, _))| (id.0, format!("public.t/{pk}")))
            .collect()
    }

    /// Waits (bounded) until nothing is pending and `settled` holds (e.g. a proxy holds no
    /// request), then returns the ids of this sink in the stream, in stream order.
    pub async fn drain<F, Fut>(&self, deadline: Duration, settled: F, what: &str) -> Vec<u64>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let done = eventually(deadline, || async {
            self.queue.counts(self.name).pending == 0 && settled().await
        })
        .await;
        assert!(
            done,
            "not delivered within {deadline:?}: {:?}; {what}",
            self.queue.counts(self.name)
        );
        ids_in(
            &read_all(&self.lite.client(), &self.basin, &self.stream).await,
            self.name,
        )
    }

    /// The engine's counters for this sink, on one line.
    pub fn stats_line(&self) -> String {
        let s = &self.sink().stats;
        format!(
            "appends {} max in flight {} requeued {} reorders {} reconciles {} discarded {} \
             failures {:?}",
            s.appends.load(Relaxed),
            s.max_appends_in_flight.load(Relaxed),
            s.requeued.load(Relaxed),
            s.pipeline_reorders.load(Relaxed),
            s.reconciles.load(Relaxed),
            s.discarded.load(Relaxed),
            s.failures_by_status.lock().unwrap(),
        )
    }
}
