//! Per-sink counters and histograms, read by `/metrics` and by tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use s2sink_core::ErrorClass;

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
}
