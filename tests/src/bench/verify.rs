//! Reading the delivered stream back and checking it from the payloads: every accepted message
//! exactly once, per (producer, group) in `seq` order; latency from each message's `t_us`.

use std::collections::HashMap;

use s2sink_client::types::ReadLimits;
use s2sink_client::S2Client;

/// What the checks need of a delivered record.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub producer: u64,
    pub group: u64,
    pub seq: u64,
    /// Intended send time (open loop) or creation time (closed loop), µs since the epoch.
    pub t_us: u64,
    /// S2's arrival timestamp, ms since the epoch.
    pub ts_ms: u64,
}

impl Delivered {
    /// Latency ingest→S2 in ms: arrival timestamp − `t_us` (ms resolution, S2's clock is the
    /// same machine's).
    pub fn latency_ms(&self) -> f64 {
        (self.ts_ms as f64 - self.t_us as f64 / 1000.0).max(0.0)
    }
}

/// Reads a stream from where it last stopped.
#[derive(Debug)]
pub struct StreamReader {
    basin: String,
    stream: String,
    pos: u64,
    /// Records whose body is not a bench message.
    pub foreign: u64,
}

impl StreamReader {
    /// A reader from the start of `basin/stream`.
    pub fn new(basin: &str, stream: &str) -> StreamReader {
        StreamReader {
            basin: basin.into(),
            stream: stream.into(),
            pos: 0,
            foreign: 0,
        }
    }

    /// Everything appended since the last call, up to the tail as of now.
    pub async fn read_new(&mut self, client: &S2Client) -> Result<Vec<Delivered>, String> {
        let tail = client
            .check_tail(&self.basin, &self.stream)
            .await
            .map_err(|e| format!("check tail: {e}"))?
            .seq_num;
        let mut out = Vec::with_capacity(tail.saturating_sub(self.pos) as usize);
        while self.pos < tail {
            let limits = ReadLimits {
                count: Some(1000),
                bytes: None,
            };
            let batch = client
                .read(&self.basin, &self.stream, self.pos, limits)
                .await
                .map_err(|e| format!("read back: {e}"))?;
            let Some(last) = batch.last() else { break };
            self.pos = last.seq_num + 1;
            for r in batch.iter().filter(|r| !r.is_command()) {
                match parse(&r.body) {
                    Some((producer, group, seq, t_us)) => out.push(Delivered {
                        producer,
                        group,
                        seq,
                        t_us,
                        ts_ms: r.timestamp,
                    }),
                    None => self.foreign += 1,
                }
            }
        }
        Ok(out)
    }
}

/// (producer, group, seq, t_us) of a bench message.
fn parse(body: &str) -> Option<(u64, u64, u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let r = &v["record"];
    Some((
        r["p"].as_u64()?,
        r["id"].as_u64()?,
        r["seq"].as_u64()?,
        r["t_us"].as_u64()?,
    ))
}

/// The outcome of the exactly-once and order checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Check {
    /// Distinct accepted messages found in the stream.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub order_violations: u64,
    /// Bench messages that were never acknowledged with a 202 (e.g. a batch dropped after a
    /// 429 at the end of a closed-loop run that was nevertheless delivered).
    pub unexpected: u64,
}

impl Check {
    /// True when nothing was lost, duplicated or reordered.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.order_violations == 0
    }
}

/// Checks `records` (in stream order) against the accepted messages: `last_seq` gives, per
/// producer, the last accepted `seq` (1..=last expected exactly once).
pub fn check(records: &[Delivered], last_seq: &[(u64, u64)]) -> Check {
    let mut counts: HashMap<u64, Vec<u8>> = last_seq
        .iter()
        .map(|&(p, last)| (p, vec![0u8; last as usize]))
        .collect();
    let mut last_in_group: HashMap<(u64, u64), u64> = HashMap::new();
    let mut c = Check::default();
    for r in records {
        match counts
            .get_mut(&r.producer)
            .and_then(|v| v.get_mut((r.seq as usize).wrapping_sub(1)))
        {
            Some(n) => *n = n.saturating_add(1),
            None => c.unexpected += 1,
        }
        if let Some(prev) = last_in_group.insert((r.producer, r.group), r.seq) {
            if prev > r.seq {
                c.order_violations += 1;
            }
        }
    }
    for v in counts.values() {
        for &n in v {
            match n {
                0 => c.lost += 1,
                1 => c.delivered += 1,
                n => {
                    c.delivered += 1;
                    c.duplicated += u64::from(n) - 1;
                }
            }
        }
    }
    c
}

/// Latency percentiles in ms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of the records' latencies.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Delivered>) -> Latency {
        let mut l: Vec<f64> = records.into_iter().map(Delivered::latency_ms).collect();
        if l.is_empty() {
            return Latency::default();
        }
        l.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize];
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: l[l.len() - 1],
        }
    }
}

/// A window of intended send times whose messages took long to reach S2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowWindow {
    /// Start of the window, seconds after the load started.
    pub at_s: f64,
    /// The window's largest latency, ms.
    pub max_ms: f64,
    /// Messages in the window over the threshold.
    pub slow: usize,
}

/// Windows of `window_ms` (by intended send time) holding a latency above `over_ms`, worst
/// first: where a p99 comes from — a stall of a few hundred ms (one window) or a slow tail
/// spread over the run (many). `start_us` is the load's start.
pub fn slow_windows(
    records: &[Delivered],
    start_us: u64,
    window_ms: u64,
    over_ms: f64,
) -> Vec<SlowWindow> {
    let mut by: HashMap<u64, SlowWindow> = HashMap::new();
    for r in records {
        let lat = r.latency_ms();
        if lat <= over_ms {
            continue;
        }
        let w = r.t_us.saturating_sub(start_us) / 1000 / window_ms.max(1);
        let e = by.entry(w).or_insert(SlowWindow {
            at_s: (w * window_ms) as f64 / 1000.0,
            max_ms: 0.0,
            slow: 0,
        });
        e.max_ms = e.max_ms.max(lat);
        e.slow += 1;
    }
    let mut v: Vec<SlowWindow> = by.into_values().collect();
    v.sort_by(|a, b| b.max_ms.total_cmp(&a.max_ms));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(producer: u64, group: u64, seq: u64) -> Delivered {
        Delivered {
            producer,
            group,
            seq,
            t_us: 0,
            ts_ms: 0,
        }
    }

    #[test]
    fn slow_windows_are_the_windows_over_the_threshold_worst_first() {
        let at = |t_ms: u64, lat_ms: u64| Delivered {
            t_us: 1_000_000 + t_ms * 1000,
            ts_ms: 1_000 + t_ms + lat_ms,
            ..d(0, 0, 0)
        };
        let recs = [
            at(10, 5),
            at(120, 80),
            at(150, 300),
            at(900, 60),
            at(950, 10),
        ];
        let w = slow_windows(&recs, 1_000_000, 100, 50.0);
        assert_eq!(
            w,
            vec![
                SlowWindow {
                    at_s: 0.1,
                    max_ms: 300.0,
                    slow: 2
                },
                SlowWindow {
                    at_s: 0.9,
                    max_ms: 60.0,
                    slow: 1
                },
            ]
        );
    }

    #[test]
    fn finds_loss_duplicates_and_reordering() {
        let recs = [
            d(0, 1, 1),
            d(0, 2, 2),
            d(0, 1, 4),
            d(0, 1, 3),
            d(0, 2, 2),
            d(1, 5, 1),
        ];
        let c = check(&recs, &[(0, 5), (1, 1)]);
        assert_eq!(c.delivered, 5);
        assert_eq!(c.lost, 1); // producer 0 seq 5
        assert_eq!(c.duplicated, 1); // producer 0 seq 2
        assert_eq!(c.order_violations, 1); // group 1: 4 before 3
        assert!(!c.is_clean());
        assert!(check(&[d(0, 1, 1), d(0, 1, 2)], &[(0, 2)]).is_clean());
    }
}
