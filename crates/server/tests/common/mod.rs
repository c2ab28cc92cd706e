//! Shared by the engine tests that run under paused tokio time with S2 as a stub (s2-lite
//! cannot answer in virtual time): an in-memory stream, the paused runtime and an engine on it.

// Each test binary compiles this module and uses only a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use s2sink_client::{AppendAck, AppendInput, S2Error, SequencedRecord, StreamPosition};
use s2sink_queue::Queue;
use s2sink_server::engine::{Engine, EngineOptions, SinkSettings, StreamIo};

/// An in-memory stream: an append applies when its `match_seq_num` (if any) is the tail.
#[derive(Default)]
pub struct MemStream {
    records: Mutex<Vec<SequencedRecord>>,
}

impl MemStream {
    /// Applies an append as S2 would, or refuses it with S2's 412.
    pub fn apply(&self, input: &AppendInput) -> Result<AppendAck, S2Error> {
        let mut records = self.records.lock().unwrap();
        let tail = records.len() as u64;
        if input.match_seq_num.is_some_and(|m| m != tail) {
            return Err(S2Error::SeqNumMismatch {
                context: "append".into(),
                expected: input.match_seq_num,
                actual: tail,
                body: String::new(),
            });
        }
        for r in &input.records {
            let seq_num = records.len() as u64;
            records.push(SequencedRecord {
                seq_num,
                timestamp: 0,
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: r.body.to_string(),
            });
        }
        let pos = |seq_num| StreamPosition {
            seq_num,
            timestamp: 0,
        };
        let end = records.len() as u64;
        Ok(AppendAck {
            start: pos(tail),
            end: pos(end),
            tail: pos(end),
        })
    }

    /// Up to `count` records from `start`.
    pub fn read(&self, start: u64, count: usize) -> Vec<SequencedRecord> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .skip(start as usize)
            .take(count)
            .cloned()
            .collect()
    }

    /// The tail (number of records).
    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// Every record's body, in stream order.
    pub fn bodies(&self) -> Vec<String> {
        let records = self.records.lock().unwrap();
        records.iter().map(|r| r.body.clone()).collect()
    }
}

/// Streams in memory by name, each a [`MemStream`] made on first use (a stream never
/// appended to reads as empty, with tail 0).
#[derive(Default)]
pub struct MemStreams {
    streams: Mutex<HashMap<String, Arc<MemStream>>>,
}

impl MemStreams {
    /// The stream named `name`.
    pub fn stream(&self, name: &str) -> Arc<MemStream> {
        self.streams
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

/// Runs `f` on an actix system whose tokio runtime starts with time paused.
pub fn paused<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    });
    system.block_on(f)
}

/// An engine for `sinks` over `queue`, with S2 as `io`, on the calling runtime only (paused
/// time is per runtime, so it starts no thread of its own).
pub fn engine_on_this_runtime(
    queue: &Queue,
    sinks: Vec<SinkSettings>,
    io: Arc<dyn StreamIo>,
) -> Engine {
    Engine::start(
        queue.clone(),
        sinks,
        EngineOptions {
            io: Some(io),
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
}
