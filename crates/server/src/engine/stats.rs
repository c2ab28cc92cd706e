//! Per-sink counters and histograms, read by `/metrics` and by tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use s2sink_core::{ErrorClass, Route};

/// Most streams per sink counted one by one in [`SinkStats::appended`]; appends to streams
/// past these are added up under [`OTHER_STREAMS`] so a routing function writing to very
/// many streams cannot grow the map (and the metrics) without bound.
pub const MAX_COUNTED_STREAMS: usize = 1000;
/// The basin and stream name the streams past [`MAX_COUNTED_STREAMS`] are counted under (not
/// a valid basin name, so never a real stream).
pub const OTHER_STREAMS: &str = "*";

/// Records and metered bytes S2 acknowledged on one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub records: u64,
    pub bytes: u64,
}

/// Counters of one sink. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub ingested: AtomicU64,
    pub delivered: AtomicU64,
    pub filtered: AtomicU64,
    pub discarded: AtomicU64,
    /// Appends that S2 acknowledged.
    pub appends: AtomicU64,
    /// Appends that failed, by class.
    pub failed_retryable: AtomicU64,
    pub failed_outcome_unknown: AtomicU64,
    pub failed_needs_attention: AtomicU64,
    /// Stream reconciliations (reads of a stream after an unknown outcome or a restart).
    pub reconciles: AtomicU64,
    /// Messages found already in S2 by a reconciliation and not sent again.
    pub deduplicated: AtomicU64,
    /// Ingested messages not stored because their `metadata.idempotency_key` was accepted
    /// before (producer retries absorbed at ingest).
    pub ingest_duplicates: AtomicU64,
    /// Requests answered from an earlier request with the same `Idempotency-Key`.
    pub replayed: AtomicU64,
    /// Most appends seen in flight at once on one stream (a high-water mark; proves the
    /// pipelining works, see `max_appends_in_flight`).
    pub max_appends_in_flight: AtomicU64,
    /// Messages sent back to their group uncharged because an earlier append in flight
    /// failed (their own append was kept out of the stream by `match_seq_num`).
    pub requeued: AtomicU64,
    /// 412s on an append sent while an earlier one was in flight and succeeded: the two
    /// overtook each other on the wire (see the writer's module doc). Costs a reconciliation.
    pub pipeline_reorders: AtomicU64,
    /// Gauge: group actors alive now.
    pub live_groups: AtomicU64,
    /// Streams found reset (tail below the stored position: deleted and recreated, or an
    /// in-memory S2 restarted); delivery resumed from the new tail.
    pub stream_resets: AtomicU64,
    /// What the last stream reset was, for the sink's health view.
    pub last_reset: std::sync::Mutex<Option<String>>,
    /// Records per acknowledged append.
    pub batch_size: Histogram,
    /// Append round-trip latency in milliseconds.
    pub append_latency_ms: Histogram,
    /// Failed attempts by (class, HTTP status or 0 for local/transport failures).
    pub failures_by_status: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// Records and metered bytes acknowledged, by basin then stream (see [`Self::count_append`]).
    appended: Mutex<HashMap<String, HashMap<String, Appended>>>,
}

impl SinkStats {
    /// Counts one failed delivery attempt under its class.
    pub fn count_failure(&self, class: ErrorClass, status: Option<u16>) {
        *self
            .failures_by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((class.as_str(), status.unwrap_or(0)))
            .or_insert(0) += 1;
        match class {
            ErrorClass::Retryable => &self.failed_retryable,
            ErrorClass::OutcomeUnknown => &self.failed_outcome_unknown,
            ErrorClass::NeedsAttention => &self.failed_needs_attention,
        }
        .fetch_add(1, Relaxed);
    }

    /// Counts one append S2 acknowledged on `route`: once per append, not per message. The
    /// lookup allocates only the first time a stream is seen.
    pub fn count_append(&self, route: &Route, records: u64, bytes: u64) {
        let mut map = self.appended.lock().unwrap_or_else(|e| e.into_inner());
        let streams: usize = map.values().map(HashMap::len).sum();
        let known = map
            .get(&route.basin)
            .is_some_and(|s| s.contains_key(&route.stream));
        let (basin, stream) = if known || streams < MAX_COUNTED_STREAMS {
            (route.basin.as_str(), route.stream.as_str())
        } else {
            (OTHER_STREAMS, OTHER_STREAMS)
        };
        if !map.contains_key(basin) {
            map.insert(basin.to_owned(), HashMap::new());
        }
        let by_stream = map.get_mut(basin).expect("inserted above");
        if !by_stream.contains_key(stream) {
            by_stream.insert(stream.to_owned(), Appended::default());
        }
        let a = by_stream.get_mut(stream).expect("inserted above");
        a.records += records;
        a.bytes += bytes;
    }

    /// What [`Self::count_append`] counted: `(basin, stream, counts)` sorted by basin and stream.
    pub fn appended_by_stream(&self) -> Vec<(String, String, Appended)> {
        let map = self.appended.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(b, streams)| streams.iter().map(move |(s, a)| (b.clone(), s.clone(), *a)))
            .collect();
        out.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        out
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// A fixed-bucket histogram (Prometheus style: cumulative on export).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

/// Buckets for batch sizes (records).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
/// Buckets for latencies (milliseconds).
pub const LATENCY_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

impl Histogram {
    /// A histogram with the given upper bounds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v as f64 <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// `(upper bound, cumulative count)` pairs, then total count and sum.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, u64) {
        let mut acc = 0;
        let cumulative = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                acc += c.load(Relaxed);
                (*b, acc)
            })
            .collect();
        (cumulative, self.count.load(Relaxed), self.sum.load(Relaxed))
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl SinkStats {
    /// Fresh stats with the right histogram buckets.
    pub fn new() -> SinkStats {
        SinkStats {
            batch_size: Histogram::new(BATCH_BUCKETS),
            append_latency_ms: Histogram::new(LATENCY_BUCKETS),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(BATCH_BUCKETS);
        for v in [1, 5, 5, 700, 5000] {
            h.observe(v);
        }
        let (b, count, sum) = h.snapshot();
        assert_eq!(b[0], (1.0, 1));
        assert_eq!(b[1], (10.0, 3));
        assert_eq!(b.last().unwrap(), &(1000.0, 4));
        assert_eq!((count, sum), (5, 5711));
    }

    #[test]
    fn appends_add_up_per_stream_and_streams_past_the_cap_share_one_entry() {
        let stats = SinkStats::new();
        let a = Route::new("basin-aaa", "one").unwrap();
        let b = Route::new("basin-aaa", "two").unwrap();
        stats.count_append(&a, 3, 300);
        stats.count_append(&b, 1, 50);
        stats.count_append(&a, 2, 20);
        assert_eq!(
            stats.appended_by_stream(),
            vec![
                (
                    "basin-aaa".into(),
                    "one".into(),
                    Appended {
                        records: 5,
                        bytes: 320
                    }
                ),
                (
                    "basin-aaa".into(),
                    "two".into(),
                    Appended {
                        records: 1,
                        bytes: 50
                    }
                ),
            ]
        );
        for i in 2..MAX_COUNTED_STREAMS {
            stats.count_append(&Route::new("basin-bbb", format!("s{i}")).unwrap(), 1, 1);
        }
        stats.count_append(&Route::new("basin-ccc", "late").unwrap(), 4, 40);
        stats.count_append(&Route::new("basin-ccc", "later").unwrap(), 1, 10);
        stats.count_append(&a, 1, 1);
        let all = stats.appended_by_stream();
        assert_eq!(all.len(), MAX_COUNTED_STREAMS + 1);
        let of = |basin: &str, stream: &str| {
            all.iter()
                .find(|(b, s, _)| b == basin && s == stream)
                .map(|x| x.2)
        };
        assert_eq!(
            of(OTHER_STREAMS, OTHER_STREAMS),
            Some(Appended {
                records: 5,
                bytes: 50
            })
        );
        assert_eq!(
            of("basin-aaa", "one"),
            Some(Appended {
                records: 6,
                bytes: 321
            })
        );
        assert_eq!(of("basin-ccc", "late"), None);
    }
}
