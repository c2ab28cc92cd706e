//! A sink's runtime settings, as the engine uses them (the config file maps onto these).

use std::time::Duration;

use s2sink_client::{BatchLimits, S2Config};
use s2sink_core::{BackoffPolicy, GroupColumns, Route};
use s2sink_transform::FunctionsConfig;

/// Everything the engine needs to deliver one sink's messages.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Unique sink name; written into every record's `s2sink-sink` header.
    pub name: String,
    /// Static destination; `None` when a routing function chooses it per message.
    pub route: Option<Route>,
    /// Endpoint, access token and timeouts of the S2 account.
    pub s2: S2Config,
    /// Optional filter / transform / routing functions.
    pub functions: FunctionsConfig,
    /// Per-table group columns (`schema.table` → columns).
    pub group_columns: GroupColumns,
    /// Append limits and linger of the stream writers.
    pub batch: BatchSettings,
    /// Backoff after failed attempts.
    pub backoff: BackoffPolicy,
    /// Discard (or dead-letter) a message after this many failed attempts; `None` = forever.
    pub max_retry_count: Option<u32>,
    /// Stream (in the message's basin) that receives discarded messages with their error.
    pub dead_letter_stream: Option<String>,
    /// Group actors alive at once; other ready groups wait their turn.
    pub max_live_groups: usize,
    /// How long accepted idempotency keys (request and message keys) make a repeat a
    /// duplicate. A change applies to keys accepted after it.
    pub idempotency_window: Duration,
    /// Whether a message whose `metadata.idempotency_key` was already accepted is stored
    /// again (`false`) or answered with the original id (`true`, the default). Turn it off for
    /// producers whose keys are not unique per change (Sequin's are: `<commit_lsn>:<commit_idx>`),
    /// or repeated keys would be taken as retries and stored once.
    pub dedup_message_keys: bool,
}

/// Default [`SinkSettings::idempotency_window`]: a day, longer than any producer's retries.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How stream writers form appends.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// S2's per-append limits (records, metered bytes, JSON body size).
    pub limits: BatchLimits,
    /// How long a writer waits for more runs before sending a non-full append while another
    /// append is in flight (with none in flight a partial append goes at once, unless
    /// `linger_when_idle`).
    pub linger: Duration,
    /// Whether a partial append also waits `linger` when no append is in flight: fewer,
    /// larger appends at low load, at the cost of that latency on every quiet message.
    pub linger_when_idle: bool,
    /// Most messages one group puts in one run.
    pub max_run_records: usize,
    /// Appends in flight at once per stream (1..=16), chained by `match_seq_num`: more hides
    /// the round trip of a hot stream; 1 waits for each append's answer before the next.
    pub max_appends_in_flight: usize,
}

/// Largest accepted `max_appends_in_flight`.
pub const MAX_APPENDS_IN_FLIGHT: usize = 16;

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            limits: BatchLimits::default(),
            linger: Duration::from_millis(5),
            linger_when_idle: false,
            max_run_records: 1000,
            max_appends_in_flight: 2,
        }
    }
}

impl SinkSettings {
    /// Settings with defaults for everything but the name, route and S2 account.
    pub fn new(name: impl Into<String>, route: Option<Route>, s2: S2Config) -> SinkSettings {
        SinkSettings {
            name: name.into(),
            route,
            s2,
            functions: FunctionsConfig::default(),
            group_columns: GroupColumns::new(),
            batch: BatchSettings::default(),
            backoff: BackoffPolicy::default(),
            max_retry_count: None,
            dead_letter_stream: None,
            max_live_groups: 10_000,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            dedup_message_keys: true,
        }
    }
}
