//! `GET /metrics` (Prometheus text 0.0.4, or OpenMetrics 1.0.0 when the `Accept` header asks
//! for it) and `GET /healthz`.
//!
//! The engine keeps plain atomics ([`SinkStats`], the queue's in-memory counts) and never
//! touches the metrics library. A scrape reads them once into a [`Snapshot`], which
//! `prometheus-client` encodes as a [`Collector`] of a fresh `Registry`: the library does the
//! exposition format (names, `_total`, escaping, histogram buckets, `# EOF`), nothing more.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, text, DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::views::Health;
use super::AppState;
use crate::engine::{Histogram, SinkStats};

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format (the default).
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Prometheus,
    /// OpenMetrics 1.0.0 text (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) with a weight at least that
    /// of `text/plain`; the Prometheus text format otherwise (no header, `*/*`, anything else).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut plain) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f64, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
                {
                    openmetrics = openmetrics.max(q)
                }
                "text/plain" => plain = plain.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// A per-sink counter or gauge read from [`SinkStats`]. Counter names are given without
/// `_total`: the encoder appends it (so the samples keep their `…_total` names).
struct Scalar {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    get: fn(&SinkStats) -> u64,
}

const SCALARS: &[Scalar] = &[
    Scalar {
        name: "s2sink_messages_ingested",
        help: "Messages accepted (durable).",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.ingested),
    },
    Scalar {
        name: "s2sink_messages_delivered",
        help: "Messages appended to S2.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.delivered),
    },
    Scalar {
        name: "s2sink_messages_filtered",
        help: "Messages dropped by the filter.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.filtered),
    },
    Scalar {
        name: "s2sink_messages_discarded",
        help: "Messages discarded.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.discarded),
    },
    Scalar {
        name: "s2sink_appends",
        help: "Appends acknowledged by S2.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.appends),
    },
    Scalar {
        name: "s2sink_reconciles",
        help: "Stream reconciliations.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.reconciles),
    },
    Scalar {
        name: "s2sink_deduplicated",
        help: "Messages found already in S2 and not resent.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.deduplicated),
    },
    Scalar {
        name: "s2sink_ingest_duplicates",
        help: "Ingested messages not stored again: their metadata.idempotency_key was accepted before.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.ingest_duplicates),
    },
    Scalar {
        name: "s2sink_ingest_replayed",
        help: "Ingest requests answered from an earlier request with the same Idempotency-Key.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.replayed),
    },
    Scalar {
        name: "s2sink_requeued",
        help: "Messages sent back to their group uncharged: an earlier append in flight failed.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.requeued),
    },
    Scalar {
        name: "s2sink_pipeline_reorders",
        help: "412s from pipelined appends overtaking each other on the wire.",
        kind: MetricType::Counter,
        get: |s| SinkStats::get(&s.pipeline_reorders),
    },
    Scalar {
        name: "s2sink_max_appends_in_flight",
        help: "Most appends seen in flight at once on one stream.",
        kind: MetricType::Gauge,
        get: |s| SinkStats::get(&s.max_appends_in_flight),
    },
    Scalar {
        name: "s2sink_live_groups",
        help: "Group actors alive.",
        kind: MetricType::Gauge,
        get: |s| SinkStats::get(&s.live_groups),
    },
];

/// A histogram as the encoder takes it: per-bucket (not cumulative) counts ending with `+Inf`.
#[derive(Debug)]
struct HistogramValues {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl HistogramValues {
    fn of(h: &Histogram) -> HistogramValues {
        let (cumulative, count, sum) = h.snapshot();
        let mut buckets = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for (le, c) in cumulative {
            buckets.push((le, c.saturating_sub(below)));
            below = below.max(c);
        }
        // An observation racing the snapshot may be in a bucket but not yet in the count:
        // keep `_count` equal to the `+Inf` bucket and never below the finite ones.
        let count = count.max(below);
        buckets.push((f64::INFINITY, count - below));
        HistogramValues {
            buckets,
            count,
            sum: sum as f64,
        }
    }
}

/// What one sink reports.
#[derive(Debug)]
struct SinkValues {
    name: String,
    scalars: Vec<u64>,
    failures: Vec<((&'static str, u16), u64)>,
    /// `(basin, stream, records, bytes)`.
    appended: Vec<(String, String, u64, u64)>,
    pending: u64,
    failing: u64,
    lag_seconds: f64,
    latency_ms: HistogramValues,
    batch_records: HistogramValues,
}

/// Everything one scrape reports, read once from the engine's atomics and the queue.
#[derive(Debug)]
struct Snapshot {
    sinks: Vec<SinkValues>,
    sources: Vec<super::sources::SourceView>,
    queue_disk_bytes: Option<u64>,
    /// Payload bytes group actors hold now, and the budget (`server.max_held_bytes`).
    held_bytes: (u64, u64),
    process: ProcessValues,
}

impl Snapshot {
    fn take(state: &AppState) -> Snapshot {
        let queue = state.engine.queue();
        let now = state.clock.now_millis();
        let sinks = state
            .engine
            .sinks()
            .map(|s| {
                let st = &s.stats;
                let counts = queue.counts(&s.name);
                SinkValues {
                    name: s.name.clone(),
                    scalars: SCALARS.iter().map(|m| (m.get)(st)).collect(),
                    failures: st
                        .failures_by_status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .map(|(k, n)| (*k, *n))
                        .collect(),
                    appended: st
                        .appended_by_stream()
                        .into_iter()
                        .map(|(basin, stream, a)| (basin, stream, a.records, a.bytes))
                        .collect(),
                    pending: counts.pending,
                    failing: counts.failing,
                    lag_seconds: queue
                        .oldest_pending_at(&s.name)
                        .map(|at| now.saturating_sub(at) as f64 / 1000.0)
                        .unwrap_or(0.0),
                    latency_ms: HistogramValues::of(&st.append_latency_ms),
                    batch_records: HistogramValues::of(&st.batch_size),
                }
            })
            .collect();
        Snapshot {
            sinks,
            sources: state.source_views(),
            queue_disk_bytes: queue.size_on_disk().ok(),
            held_bytes: {
                let b = state.engine.held_budget();
                (b.held() as u64, b.capacity() as u64)
            },
            process: ProcessValues::read(),
        }
    }
}

impl Collector for Snapshot {
    /// One descriptor per family, then that family's samples for every sink: each family's
    /// samples stay together, as both text formats require.
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (i, m) in SCALARS.iter().enumerate() {
            let mut family = enc.encode_descriptor(m.name, m.help, None, m.kind)?;
            for s in &self.sinks {
                let labels = [("sink", s.name.as_str())];
                let mut sample = family.encode_family(&labels)?;
                match m.kind {
                    MetricType::Counter => {
                        sample.encode_counter::<NoLabelSet, _, u64>(&s.scalars[i], None)?
                    }
                    _ => sample.encode_gauge(&s.scalars[i])?,
                }
            }
        }

        let mut family = enc.encode_descriptor(
            "s2sink_failed_attempts",
            "Failed delivery attempts by class and HTTP status (0 = no response).",
            None,
            MetricType::Counter,
        )?;
        for s in &self.sinks {
            for ((class, status), n) in &s.failures {
                let status = status.to_string();
                let labels = [
                    ("sink", s.name.as_str()),
                    ("class", class),
                    ("status", status.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }

        type PerStream = (
            &'static str,
            &'static str,
            fn(&(String, String, u64, u64)) -> u64,
        );
        let per_stream: [PerStream; 2] = [
            (
                "s2sink_appended_records",
                "Records S2 acknowledged, by stream (basin and stream \"*\": streams past the first 1000).",
                |a| a.2,
            ),
            (
                "s2sink_appended_bytes",
                "Metered bytes S2 acknowledged, by stream (basin and stream \"*\": streams past the first 1000).",
                |a| a.3,
            ),
        ];
        for (name, help, get) in per_stream {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &self.sinks {
                for a in &s.appended {
                    let labels = [
                        ("sink", s.name.as_str()),
                        ("basin", a.0.as_str()),
                        ("stream", a.1.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&get(a), None)?;
                }
            }
        }

        type QueueGauge = (&'static str, &'static str, fn(&SinkValues) -> u64);
        let counts: [QueueGauge; 2] = [
            (
                "s2sink_pending_messages",
                "Messages waiting for delivery.",
                |s| s.pending,
            ),
            (
                "s2sink_failing_messages",
                "Pending messages that failed at least once.",
                |s| s.failing,
            ),
        ];
        for (name, help, get) in counts {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &self.sinks {
                let labels = [("sink", s.name.as_str())];
                family.encode_family(&labels)?.encode_gauge(&get(s))?;
            }
        }
        let mut family = enc.encode_descriptor(
            "s2sink_oldest_pending_age_seconds",
            "Age of the oldest pending message (the sink's lag; 0 when nothing is pending).",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.sinks {
            let labels = [("sink", s.name.as_str())];
            family
                .encode_family(&labels)?
                .encode_gauge(&s.lag_seconds)?;
        }

        type Hist = (
            &'static str,
            &'static str,
            fn(&SinkValues) -> &HistogramValues,
        );
        let histograms: [Hist; 2] = [
            (
                "s2sink_append_latency_ms",
                "Append round trip in milliseconds.",
                |s| &s.latency_ms,
            ),
            (
                "s2sink_batch_records",
                "Records per acknowledged append.",
                |s| &s.batch_records,
            ),
        ];
        for (name, help, get) in histograms {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for s in &self.sinks {
                let h = get(s);
                let labels = [("sink", s.name.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
            }
        }

        if !self.sources.is_empty() {
            let mut family = enc.encode_descriptor(
                "s2sink_source_changes_stored",
                "Changes a source stored in its sink's queue since the server started (backfill rows included).",
                None,
                MetricType::Counter,
            )?;
            for src in &self.sources {
                family
                    .encode_family(&[("source", src.name.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&src.changes_stored, None)?;
            }
            let mut family = enc.encode_descriptor(
                "s2sink_source_up",
                "1 while a source is backfilling or streaming, 0 while it starts, retries or has stopped.",
                None,
                MetricType::Gauge,
            )?;
            for src in &self.sources {
                let up = src.up as u64;
                family
                    .encode_family(&[("source", src.name.as_str())])?
                    .encode_gauge(&up)?;
            }
            let mut family = enc.encode_descriptor(
                "s2sink_source_lag_bytes",
                "WAL the source's replication slot retains (the database's WAL position minus the slot's confirmed flush position).",
                None,
                MetricType::Gauge,
            )?;
            for src in &self.sources {
                if let Some(lag) = src.lag_bytes {
                    family
                        .encode_family(&[("source", src.name.as_str())])?
                        .encode_gauge(&lag)?;
                }
            }
            let mut family = enc.encode_descriptor(
                "s2sink_source_lag_seconds",
                "Age of the commit of the last change a source stored, while changes flow; 0 when caught up.",
                None,
                MetricType::Gauge,
            )?;
            for src in &self.sources {
                family
                    .encode_family(&[("source", src.name.as_str())])?
                    .encode_gauge(&src.lag_seconds)?;
            }
        }
        if let Some(bytes) = self.queue_disk_bytes {
            enc.encode_descriptor(
                "s2sink_queue_disk_bytes",
                "Bytes the queue (sled) uses on disk, all sinks together.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&bytes)?;
        }
        let (held, budget) = self.held_bytes;
        enc.encode_descriptor(
            "s2sink_held_bytes",
            "Message bytes group actors hold now (read from the queue, not yet in S2), all sinks together.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&held)?;
        enc.encode_descriptor(
            "s2sink_held_bytes_budget",
            "The most message bytes group actors may hold at once (server.max_held_bytes); at the budget, groups wait for room before reading.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&budget)?;
        if let Some(rss) = self.process.resident_memory_bytes {
            enc.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&rss)?;
        }
        if let Some(cpu) = self.process.cpu_seconds {
            enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&cpu, None)?;
        }
        Ok(())
    }
}

/// The process's own resource use, named as the Prometheus client libraries name it
/// (`process_resident_memory_bytes`, `process_cpu_seconds_total`). Linux only (from `/proc`).
#[derive(Debug, Default)]
struct ProcessValues {
    resident_memory_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
}

impl ProcessValues {
    #[cfg(target_os = "linux")]
    fn read() -> ProcessValues {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        ProcessValues {
            resident_memory_bytes: status.as_deref().and_then(parse_vm_rss),
            cpu_seconds: stat.as_deref().and_then(parse_cpu_seconds),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> ProcessValues {
        ProcessValues::default()
    }
}

/// `VmRSS:   1234 kB` of `/proc/self/status`, in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 on every Linux the
/// kernel ABI fixes it for (Prometheus' own procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// `utime + stime` (fields 14 and 15) of `/proc/self/stat`, in seconds. The command name
/// (field 2, in parentheses) may hold spaces and parentheses, so fields count from the last
/// `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Renders every metric in `format`.
pub fn render_as(state: &AppState, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::take(state)));
    let mut out = String::new();
    match format {
        Format::Prometheus => prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => text::encode(&mut out, &registry),
    }
    .expect("writing to a String does not fail");
    out
}

/// Renders every metric in the Prometheus text format.
pub fn render(state: &AppState) -> String {
    render_as(state, Format::Prometheus)
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics when `Accept` asks for it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    summary = "Prometheus metrics",
    description = "Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when `Accept` asks for `application/openmetrics-text` (see docs/METRICS.md). No token needed.",
    responses(
        (status = 200, description = "The metrics",
            content((String = "text/plain"), (String = "application/openmetrics-text"))),
    )
)]
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((header::VARY, "Accept"))
        .body(render_as(&state, format))
}

/// `GET /healthz`: 200 while the engine takes work, 503 while shutting down.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    summary = "Liveness: 200 while the engine takes work, 503 while shutting down",
    responses(
        (status = 200, description = "`{\"status\":\"ok\"}`", body = Health),
        (status = 503, description = "`{\"status\":\"stopping\"}`", body = Health),
    )
)]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_stopping() {
        HttpResponse::ServiceUnavailable().json(Health { status: "stopping" })
    } else {
        HttpResponse::Ok().json(Health { status: "ok" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_openmetrics_only_when_asked() {
        use Format::*;
        assert_eq!(Format::from_accept(None), Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Prometheus);
        assert_eq!(Format::from_accept(Some("text/plain")), Prometheus);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; version=1.0.0")),
            OpenMetrics
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text")),
            OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OpenMetrics
        );
        assert_eq!(
            Format::from_accept(Some(
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
            )),
            Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=0")),
            Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;version=2.0.0")),
            Prometheus
        );
    }

    #[test]
    fn histogram_buckets_become_per_bucket_counts_with_inf() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [1, 5, 5, 50] {
            h.observe(v);
        }
        let v = HistogramValues::of(&h);
        assert_eq!(v.buckets, vec![(1.0, 1), (10.0, 2), (f64::INFINITY, 1)]);
        assert_eq!((v.count, v.sum), (4, 61.0));
    }

    #[test]
    fn proc_files_parse() {
        let status = "Name:\ts2-sink\nVmPeak:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let stat = "42 (s2 sink (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_rss_and_cpu_time() {
        let p = ProcessValues::read();
        assert!(p.resident_memory_bytes.unwrap() > 0);
        assert!(p.cpu_seconds.unwrap() >= 0.0);
    }
}
