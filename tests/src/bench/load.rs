//! Offering load over the ingest API: the message format, closed-loop producers and the
//! open-loop schedule.
//!
//! Each producer ("lane") sends one request at a time, so the order in which its messages are
//! accepted is the order of their `seq` field; loss, duplicate and order checks use the
//! payload fields (`p` producer, `seq`, `id` group), never the sink's id header.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use s2sink_tests::process::http_client;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Appends one change message of about `size` bytes to `out`: group `group` (in
/// `record.id` and `metadata.record_pks`), producer `p`, per-producer sequence `seq`
/// (from 1) and `t_us`, the time latency is measured from (intended send time in open loop,
/// creation time in closed loop).
pub fn message(out: &mut String, p: u64, group: u64, seq: u64, t_us: u64, size: usize) {
    use std::fmt::Write;
    let start = out.len();
    let _ = write!(
        out,
        r#"{{"action":"insert","record":{{"id":{group},"p":{p},"seq":{seq},"t_us":{t_us},"pad":""#
    );
    let tail_len = TAIL_FIXED + digits(group);
    let pad = size.saturating_sub(out.len() - start + tail_len);
    out.extend(std::iter::repeat_n('x', pad));
    let _ = write!(
        out,
        r#""}},"changes":null,"metadata":{{"table_schema":"public","table_name":"bench","record_pks":["{group}"]}}}}"#
    );
}

/// Length of the message tail without the group digits.
const TAIL_FIXED: usize =
    r#""},"changes":null,"metadata":{"table_schema":"public","table_name":"bench","record_pks":[""]}}"#
        .len();

fn digits(n: u64) -> usize {
    n.checked_ilog10().unwrap_or(0) as usize + 1
}

/// What all lanes of one offering did.
#[derive(Debug, Default)]
pub struct Offered {
    /// Messages accepted (202).
    pub accepted: u64,
    /// 429 answers, and the messages in them (every rejected batch is retried, with its
    /// original `t_us`, after 100 ms; a batch still rejected when a closed-loop run ends is
    /// dropped and its messages are not expected).
    pub rejected_requests: u64,
    pub rejected_msgs: u64,
    /// Per producer id: the last accepted `seq` (messages 1..=last are expected exactly once).
    pub last_seq: Vec<(u64, u64)>,
    /// Open loop: the largest delay between a batch's intended send time and its first send.
    pub max_send_lag_ms: f64,
    /// Open loop: batches sent more than 10 ms after their intended time.
    pub late_batches: u64,
    /// Wall-clock span of the offering (first send to last answer), µs since the epoch.
    pub start_us: u64,
    pub end_us: u64,
}

impl Offered {
    /// Seconds the offering lasted.
    pub fn secs(&self) -> f64 {
        (self.end_us.saturating_sub(self.start_us)) as f64 / 1e6
    }
}

/// How the lanes send.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Back to back until `duration` has passed.
    Closed { duration: Duration },
    /// `rate` messages/s for `duration`, in batches of `batch` on a fixed schedule.
    Open { rate: u64, duration: Duration },
    /// Back to back until each lane has had `per_lane` messages accepted.
    Count { per_lane: u64 },
}

/// Load parameters shared by every mode.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub url: String,
    pub sink: String,
    pub groups: u64,
    pub size: usize,
    pub batch: usize,
    pub lanes: usize,
    /// Producer ids of this offering are `first_producer..first_producer + lanes`.
    pub first_producer: u64,
    pub seed: u64,
}

impl LoadSpec {
    /// Messages per request in open loop at `rate` (100 requests/s, at most `batch`).
    pub fn open_batch(&self, rate: u64) -> usize {
        (rate.div_ceil(100) as usize).clamp(1, self.batch)
    }
}

struct Shared {
    accepted: AtomicU64,
    rejected_requests: AtomicU64,
    rejected_msgs: AtomicU64,
    late: AtomicU64,
    max_lag_us: AtomicU64,
    next_batch: AtomicU64,
}

/// Offers load with `spec.lanes` concurrent lanes until the pace says stop. Open loop: batch k
/// is due at t0 + k·interval and is sent by whichever lane is free (at once if it is late), its
/// messages stamped with the due time, so queueing in the generator counts as latency.
pub async fn offer(spec: &LoadSpec, pace: Pace) -> Result<Offered, String> {
    let shared = Arc::new(Shared {
        accepted: AtomicU64::new(0),
        rejected_requests: AtomicU64::new(0),
        rejected_msgs: AtomicU64::new(0),
        late: AtomicU64::new(0),
        max_lag_us: AtomicU64::new(0),
        next_batch: AtomicU64::new(0),
    });
    let t0 = Instant::now();
    let t0_us = now_us();
    let mut tasks = Vec::new();
    for lane in 0..spec.lanes {
        let (spec, shared) = (spec.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            run_lane(&spec, lane, pace, t0, t0_us, &shared).await
        }));
    }
    let mut last_seq = Vec::new();
    let mut error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => last_seq.push(l),
            Ok(Err(e)) => error = error.or(Some(e)),
            Err(e) => error = error.or(Some(format!("producer task: {e}"))),
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(Offered {
        accepted: shared.accepted.load(Relaxed),
        rejected_requests: shared.rejected_requests.load(Relaxed),
        rejected_msgs: shared.rejected_msgs.load(Relaxed),
        last_seq,
        max_send_lag_ms: shared.max_lag_us.load(Relaxed) as f64 / 1000.0,
        late_batches: shared.late.load(Relaxed),
        start_us: t0_us,
        end_us: now_us(),
    })
}

/// One lane: returns (producer id, last accepted seq).
async fn run_lane(
    spec: &LoadSpec,
    lane: usize,
    pace: Pace,
    t0: Instant,
    t0_us: u64,
    shared: &Shared,
) -> Result<(u64, u64), String> {
    let http = http_client();
    let producer = spec.first_producer + lane as u64;
    let mut rng = fastrand::Rng::with_seed(spec.seed ^ (producer.wrapping_mul(0x9E37_79B9)));
    let url = format!("{}/api/sinks/{}/messages", spec.url, spec.sink);
    let mut seq = 0u64;
    loop {
        // Which batch, how many messages, stamped with which time.
        let (n, t_us, deadline) = match pace {
            Pace::Closed { duration } => {
                if t0.elapsed() >= duration {
                    break;
                }
                (spec.batch, now_us(), Some(t0 + duration))
            }
            Pace::Count { per_lane } => {
                if seq >= per_lane {
                    break;
                }
                (spec.batch.min((per_lane - seq) as usize), now_us(), None)
            }
            Pace::Open { rate, duration } => {
                let n = spec.open_batch(rate);
                let interval_us = n as f64 * 1e6 / rate as f64;
                let total = (duration.as_secs_f64() * 1e6 / interval_us).ceil() as u64;
                let k = shared.next_batch.fetch_add(1, Relaxed);
                if k >= total {
                    break;
                }
                let due_off = Duration::from_micros((k as f64 * interval_us) as u64);
                let due = t0 + due_off;
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    let lag = now.duration_since(due).as_micros() as u64;
                    shared.max_lag_us.fetch_max(lag, Relaxed);
                    if lag > 10_000 {
                        shared.late.fetch_add(1, Relaxed);
                    }
                }
                (n, t0_us + due_off.as_micros() as u64, None)
            }
        };
        let mut body = String::with_capacity(n * (spec.size + 1));
        for i in 0..n as u64 {
            let group = rng.u64(0..spec.groups);
            message(&mut body, producer, group, seq + 1 + i, t_us, spec.size);
            body.push('\n');
        }
        // Send, retrying 429s with the same messages (and the same intended time).
        let payload = bytes::Bytes::from(body);
        loop {
            let r = http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(payload.clone())
                .send()
                .await
                .map_err(|e| format!("ingest request of producer {producer} failed: {e}"))?;
            match r.status().as_u16() {
                202 => {
                    seq += n as u64;
                    shared.accepted.fetch_add(n as u64, Relaxed);
                    break;
                }
                429 => {
                    shared.rejected_requests.fetch_add(1, Relaxed);
                    shared.rejected_msgs.fetch_add(n as u64, Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        // Closed loop over: the batch is dropped, never accepted.
                        return Ok((producer, seq));
                    }
                }
                s => {
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!("ingest answered {s}: {text}"));
                }
            }
        }
    }
    Ok((producer, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_requested_size_and_fields() {
        for (size, group) in [(256, 0), (1024, 9999), (1024, 123_456_789)] {
            let mut s = String::new();
            message(&mut s, 3, group, 42, 1_700_000_000_000_000, size);
            assert_eq!(s.len(), size, "{s}");
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["record"]["id"], group);
            assert_eq!(v["record"]["p"], 3);
            assert_eq!(v["record"]["seq"], 42);
            assert_eq!(v["metadata"]["record_pks"][0], group.to_string());
        }
    }
}
