//! `GET /metrics` (Prometheus text) and `GET /healthz`.

use std::fmt::Write;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::engine::{Histogram, SinkStats};

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, sink: &str, h: &Histogram) {
    let (buckets, count, sum) = h.snapshot();
    for (le, c) in buckets {
        let _ = writeln!(out, "{name}_bucket{{sink=\"{sink}\",le=\"{le}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{sink=\"{sink}\",le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{sink=\"{sink}\"}} {sum}");
    let _ = writeln!(out, "{name}_count{{sink=\"{sink}\"}} {count}");
}

/// Renders every sink's counters, gauges and histograms.
pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    type Counter = (&'static str, &'static str, fn(&SinkStats) -> u64);
    let counters: [Counter; 13] = [
        (
            "s2sink_messages_ingested_total",
            "Messages accepted (durable).",
            |s| SinkStats::get(&s.ingested),
        ),
        (
            "s2sink_messages_delivered_total",
            "Messages appended to S2.",
            |s| SinkStats::get(&s.delivered),
        ),
        (
            "s2sink_messages_filtered_total",
            "Messages dropped by the filter.",
            |s| SinkStats::get(&s.filtered),
        ),
        (
            "s2sink_messages_discarded_total",
            "Messages discarded.",
            |s| SinkStats::get(&s.discarded),
        ),
        ("s2sink_appends_total", "Appends acknowledged by S2.", |s| {
            SinkStats::get(&s.appends)
        }),
        ("s2sink_reconciles_total", "Stream reconciliations.", |s| {
            SinkStats::get(&s.reconciles)
        }),
        (
            "s2sink_deduplicated_total",
            "Messages found already in S2 and not resent.",
            |s| SinkStats::get(&s.deduplicated),
        ),
        (
            "s2sink_ingest_duplicates_total",
            "Ingested messages not stored again: their metadata.idempotency_key was accepted before.",
            |s| SinkStats::get(&s.ingest_duplicates),
        ),
        (
            "s2sink_ingest_replayed_total",
            "Ingest requests answered from an earlier request with the same Idempotency-Key.",
            |s| SinkStats::get(&s.replayed),
        ),
        (
            "s2sink_requeued_total",
            "Messages sent back to their group uncharged: an earlier append in flight failed.",
            |s| SinkStats::get(&s.requeued),
        ),
        (
            "s2sink_pipeline_reorders_total",
            "412s from pipelined appends overtaking each other on the wire.",
            |s| SinkStats::get(&s.pipeline_reorders),
        ),
        (
            "s2sink_max_appends_in_flight",
            "Most appends seen in flight at once on one stream.",
            |s| SinkStats::get(&s.max_appends_in_flight),
        ),
        ("s2sink_live_groups", "Group actors alive.", |s| {
            SinkStats::get(&s.live_groups)
        }),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in state.engine.sinks() {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\"}} {}",
                label(&s.name),
                get(&s.stats)
            );
        }
    }
    let _ = writeln!(out, "# HELP s2sink_failed_attempts_total Failed delivery attempts by class and HTTP status (0 = no response).\n# TYPE s2sink_failed_attempts_total counter");
    for s in state.engine.sinks() {
        let map = s
            .stats
            .failures_by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((class, status), n) in map {
            let _ = writeln!(out, "s2sink_failed_attempts_total{{sink=\"{}\",class=\"{class}\",status=\"{status}\"}} {n}", label(&s.name));
        }
    }
    // One family at a time: the text format wants a family's samples together.
    type QueueGauge = (&'static str, &'static str, fn(&AppState, &str) -> f64);
    let gauges: [QueueGauge; 3] = [
        (
            "s2sink_pending_messages",
            "Messages waiting for delivery.",
            |st, sink| st.engine.queue().counts(sink).pending as f64,
        ),
        (
            "s2sink_failing_messages",
            "Pending messages that failed at least once.",
            |st, sink| st.engine.queue().counts(sink).failing as f64,
        ),
        (
            "s2sink_oldest_pending_age_seconds",
            "Age of the oldest pending message (the sink's lag; 0 when nothing is pending).",
            |st, sink| {
                st.engine
                    .queue()
                    .oldest_pending_at(sink)
                    .map(|at| st.clock.now_millis().saturating_sub(at) as f64 / 1000.0)
                    .unwrap_or(0.0)
            },
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in state.engine.sinks() {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\"}} {}",
                label(&s.name),
                get(state, &s.name)
            );
        }
    }
    let _ = writeln!(out, "# HELP s2sink_append_latency_ms Append round trip in milliseconds.\n# TYPE s2sink_append_latency_ms histogram");
    for s in state.engine.sinks() {
        histogram(
            &mut out,
            "s2sink_append_latency_ms",
            &label(&s.name),
            &s.stats.append_latency_ms,
        );
    }
    let _ = writeln!(out, "# HELP s2sink_batch_records Records per acknowledged append.\n# TYPE s2sink_batch_records histogram");
    for s in state.engine.sinks() {
        histogram(
            &mut out,
            "s2sink_batch_records",
            &label(&s.name),
            &s.stats.batch_size,
        );
    }
    out
}

/// `GET /metrics`
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(render(&state))
}

/// `GET /healthz`: 200 while the engine takes work, 503 while shutting down.
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_stopping() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "stopping"}))
    } else {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
}
