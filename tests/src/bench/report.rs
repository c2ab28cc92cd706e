//! The report: a markdown table of figures on stdout, and with `--json` one JSON object as the
//! last line.

use serde_json::{json, Map, Value};

/// Keys every JSON report carries (null when a mode has no such figure).
const REQUIRED: [&str; 14] = [
    "delivered_per_s",
    "ceiling_per_s",
    "ceiling_1_per_s",
    "ceiling_session_per_s",
    "ratio",
    "server_cpu_us_per_msg",
    "s2lite_cpu_us_per_msg",
    "loadgen_cpu_us_per_msg",
    "p50_ms",
    "p99_ms",
    "max_rss_mb",
    "lost",
    "duplicated",
    "order_violations",
];

/// Rows and JSON fields of one run.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    /// Adds a table row.
    pub fn row(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push((metric.into(), value.into()));
    }

    /// Sets a JSON field (numbers are rounded to 3 decimals).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let mut v = value.into();
        if let Some(f) = v.as_f64().filter(|_| v.is_f64()) {
            v = json!((f * 1000.0).round() / 1000.0);
        }
        self.json.insert(key.to_string(), v);
    }

    /// The lost / duplicated / order-violation row (with `extra` appended) and its JSON fields.
    pub fn verdict(&mut self, label: &str, v: &super::verify::Check, extra: String) {
        self.row(
            label,
            format!(
                "{} / {} / {}{extra}",
                v.lost, v.duplicated, v.order_violations
            ),
        );
        self.set("lost", v.lost);
        self.set("duplicated", v.duplicated);
        self.set("order_violations", v.order_violations);
    }

    /// Prints the table, then (with `json`) the JSON object as the last line.
    pub fn print(&mut self, json: bool) {
        println!("| metric | value |");
        println!("|---|---|");
        for (k, v) in &self.rows {
            println!("| {k} | {v} |");
        }
        if json {
            for k in REQUIRED {
                self.json.entry(k.to_string()).or_insert(Value::Null);
            }
            println!("{}", Value::Object(self.json.clone()));
        }
    }
}

/// `n` with thousands separators: 12345 → "12,345".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
