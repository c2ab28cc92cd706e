//! s2-lite's append ceiling, measured in the same run with records shaped like the sink's:
//! the same headers (`s2sink-sink`, `s2sink-id` with ids of the engine's format), bodies of the
//! same size, batches as full as S2's limits allow (as the sink packs them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s2sink_client::{AppendInput, AppendRecord, BatchLimits, S2Client};

use super::load::{message, now_us};
use super::procstat::{CpuDelta, CpuSnapshot};

/// How the ceiling's appends travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Unary JSON requests, one loop per append in flight (HTTP/1.1 connections).
    Unary,
    /// S2's append session (protobuf over HTTP/2), as the sink sends by default: one session
    /// keeping this many appends unanswered.
    Session,
}

/// One ceiling measurement.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Appends in flight at once on one stream, no `match_seq_num`.
    pub in_flight: usize,
    pub transport: Transport,
    pub records_per_s: f64,
    pub records: u64,
    /// Records per append (the fullest batch within S2's limits).
    pub batch_records: usize,
    pub cpu: CpuDelta,
}

impl Ceiling {
    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{:.0} records/s ({} in flight, {}, {}-record appends; s2-lite {:.1} µs CPU/record; {})",
            self.records_per_s,
            self.in_flight,
            match self.transport {
                Transport::Unary => "unary JSON",
                Transport::Session => "append session",
            },
            self.batch_records,
            CpuDelta::us_per(self.cpu.lite_s, self.records),
            self.cpu.percents()
        )
    }
}

/// The fullest append the sink could send: `size`-byte messages over `groups` groups with the
/// sink's headers, packed within S2's default limits.
pub fn sink_shaped_batch(sink: &str, size: usize, groups: u64) -> Vec<AppendRecord> {
    let mut rng = fastrand::Rng::with_seed(7);
    // Engine v2 ids: "<epoch hex>-<counter>" (today's engine writes a decimal counter; the
    // header is a few bytes of a ~1 KB record either way).
    let epoch = now_us() / 1000;
    let records = (0..1000u64).map(|i| {
        let mut body = String::new();
        message(
            &mut body,
            0,
            rng.u64(0..groups.max(1)),
            i + 1,
            now_us(),
            size,
        );
        AppendRecord::new(body)
            .with_header("s2sink-sink", sink)
            .with_header("s2sink-id", format!("{epoch:x}-{}", 1_000_000 + i))
    });
    BatchLimits::default()
        .pack(records)
        .expect("a bench record fits S2's limits")
        .swap_remove(0)
}

/// Appends `batch` back to back to `stream` for `secs`, `in_flight` at once: from as many
/// concurrent unary loops, or on one append session.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    client: &S2Client,
    basin: &str,
    stream: &str,
    batch: &[AppendRecord],
    in_flight: usize,
    transport: Transport,
    secs: f64,
    pids: (Option<u32>, Option<u32>),
) -> Result<Ceiling, String> {
    client
        .ensure_stream(basin, stream, None)
        .await
        .map_err(|e| format!("ceiling stream: {e}"))?;
    let input = Arc::new(AppendInput::new(batch.to_vec()));
    let records = Arc::new(AtomicU64::new(0));
    let cpu0 = CpuSnapshot::take(pids.0, pids.1);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut loops = Vec::new();
    if transport == Transport::Session {
        let (client, input, records) = (client.clone(), input.clone(), records.clone());
        let (basin, stream) = (basin.to_string(), stream.to_string());
        loops.push(tokio::spawn(async move {
            let mut unanswered = std::collections::VecDeque::new();
            loop {
                while unanswered.len() < in_flight && Instant::now() < until {
                    unanswered.push_back(client.append_ordered(&basin, &stream, input.clone()));
                }
                let Some(next) = unanswered.pop_front() else {
                    return Ok::<(), String>(());
                };
                next.await.map_err(|e| format!("ceiling append: {e}"))?;
                records.fetch_add(input.records.len() as u64, Relaxed);
            }
        }));
    }
    for _ in 0..in_flight {
        if transport == Transport::Session {
            break;
        }
        let (client, input, records) = (client.clone(), input.clone(), records.clone());
        let (basin, stream) = (basin.to_string(), stream.to_string());
        loops.push(tokio::spawn(async move {
            while Instant::now() < until {
                client
                    .append(&basin, &stream, &input)
                    .await
                    .map_err(|e| format!("ceiling append: {e}"))?;
                records.fetch_add(input.records.len() as u64, Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for l in loops {
        l.await.map_err(|e| format!("ceiling task: {e}"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(pids.0, pids.1).since(&cpu0);
    let n = records.load(Relaxed);
    Ok(Ceiling {
        in_flight,
        transport,
        records_per_s: n as f64 / elapsed,
        records: n,
        batch_records: batch.len(),
        cpu,
    })
}
