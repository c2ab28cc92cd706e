//! s2-lite's append ceiling, measured in the same run with records shaped like the sink's:
//! the same headers (`s2sink-sink`, `s2sink-id` with ids of the engine's format), bodies of the
//! same size, batches as full as S2's limits allow (as the sink packs them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s2sink_client::{AppendInput, AppendRecord, BatchLimits, S2Client};

use super::load::{message, now_us};
use super::procstat::{CpuDelta, CpuSnapshot};

/// One ceiling measurement.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Appends in flight at once (concurrent append loops on one stream, no `match_seq_num`).
    pub in_flight: usize,
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
            "{:.0} records/s ({} in flight, {}-record appends; s2-lite {:.1} µs CPU/record; {})",
            self.records_per_s,
            self.in_flight,
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

/// Appends `batch` back to back to `stream` from `in_flight` concurrent loops for `secs`.
pub async fn measure(
    client: &S2Client,
    basin: &str,
    stream: &str,
    batch: &[AppendRecord],
    in_flight: usize,
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
    for _ in 0..in_flight {
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
        records_per_s: n as f64 / elapsed,
        records: n,
        batch_records: batch.len(),
        cpu,
    })
}
