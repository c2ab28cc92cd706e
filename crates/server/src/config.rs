//! Loading the server config: a TOML file plus `S2SINK_*` environment overrides.
//!
//! Secrets can come from the environment only: `S2SINK_SERVER__API_TOKEN` for the API
//! token, and per sink `access_token_env = "VAR"` or `S2SINK_SINK_<NAME>_ACCESS_TOKEN`
//! (name upper-cased, other characters as `_`). Every error names the key and the problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s2sink_client::{BatchLimits, Endpoint, S2Config};
use s2sink_core::{validate_basin, validate_stream, BackoffPolicy, GroupColumns, Route};
use s2sink_transform::{FunctionSource, FunctionsConfig, SandboxLimits, TransformSpec};
use serde::Deserialize;

use s2sink_source_postgres::PostgresSourceConfig;

use crate::engine::{BatchSettings, SinkSettings, MAX_APPENDS_IN_FLIGHT};
use crate::ServerError;

/// Where S2 is when a sink names neither an endpoint nor an access token: a local s2-lite.
pub const DEFAULT_LOCAL_ENDPOINT: &str = "http://127.0.0.1:8080";

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub sinks: Vec<SinkSection>,
    /// `[[sources]]`, kept as raw values until [`source_config`] checks `kind` and the fields.
    #[serde(default)]
    pub sources: Vec<serde_json::Value>,
}

/// `[server]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub data_dir: PathBuf,
    /// When set, every `/api` route needs `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// Past this many pending messages, ingest answers 429 with `Retry-After`.
    pub max_pending: Option<u64>,
    /// Largest ingest request body (bytes); larger requests get 413.
    pub max_body_bytes: usize,
    /// One info line per HTTP request (target `s2sink::access`: method, route, status,
    /// duration; never tokens or bodies). Applies on reload.
    pub access_log: bool,
    /// How long a graceful stop waits for in-flight appends.
    pub shutdown_timeout_ms: u64,
    /// Host names (besides the listen address, IP literals and `localhost`) that requests may
    /// name in their `Host` header, e.g. the name of a reverse proxy. Guards DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://admin.example`) allowed to call the API from a browser (CORS).
    /// Empty (default): no CORS headers, and cross-site writes are refused.
    pub cors_allowed_origins: Vec<String>,
    /// Longest time to receive a request body (ms); slower bodies get 408.
    pub body_timeout_ms: u64,
    /// Ingest requests processed at once; more wait up to `ingest_queue_timeout_ms`, then 503.
    pub max_concurrent_ingest: usize,
    /// How long an ingest request waits for a free slot before 503 + `Retry-After`.
    pub ingest_queue_timeout_ms: u64,
    /// Idempotency keys each sink remembers at most (memory bound; oldest forgotten first).
    pub idempotency_max_keys: usize,
    /// Bytes of appends in flight at once across every sink and stream (default 64 MiB); a
    /// stream writer waits for room before sending, so pipelined appends bound memory.
    pub max_in_flight_bytes: u64,
    /// Payload bytes group actors hold at once across every sink (default 16 MiB): read
    /// from the queue and not yet delivered. Bounds what delivery holds whatever the backlog.
    pub max_held_bytes: u64,
    /// Bytes of pending payloads the queue keeps in memory per sink (default 64 MiB): its
    /// read-ahead fills it with the oldest chunk bodies, so delivery rarely reads sled. More
    /// holds a larger backlog window in memory; less bounds memory tighter (sled keeps what
    /// it read of the same window too, so each MiB here costs about two).
    pub payload_cache_bytes: u64,
    /// Engine threads: group actors and stream writers are spread over this many (each with
    /// a supervisor shard per sink); unset = the number of cores.
    pub engine_threads: Option<usize>,
    /// How the `s2-sink` binary's allocator trades memory for CPU: `fast` (default) or
    /// `lean`. Applies at start (a reload that changes it is refused).
    pub memory: MemoryMode,
}

/// `server.memory`: what the `s2-sink` binary's allocator optimises for. Programs that embed
/// the engine keep their own allocator and ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum MemoryMode {
    /// Freed memory is kept for reuse and the kernel may use transparent huge pages: the
    /// least CPU per message; the process stays near its peak.
    #[default]
    Fast,
    /// Transparent huge pages off, and memory unused for [`LEAN_PURGE_DELAY_MS`] handed back
    /// to the OS: a 1M-message restart peaks ~50–75 MB lower for ~10–50% more CPU per message
    /// (docs/BENCHMARKS.md, session 24).
    Lean,
}

impl TryFrom<String> for MemoryMode {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "fast" => Ok(MemoryMode::Fast),
            "lean" => Ok(MemoryMode::Lean),
            other => Err(format!(
                "`{other}` is not a memory mode: use \"fast\" or \"lean\""
            )),
        }
    }
}

/// How long memory freed in `lean` mode stays unused before it is returned to the OS (ms):
/// long enough that a buffer freed and allocated again at once (sled's log buffers, a
/// delivery's run) is reused, not faulted in again.
pub const LEAN_PURGE_DELAY_MS: u32 = 250;

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:7376".into(),
            data_dir: "data".into(),
            api_token: None,
            max_pending: Some(1_000_000),
            max_body_bytes: 16 * 1024 * 1024,
            access_log: true,
            shutdown_timeout_ms: 10_000,
            allowed_hosts: Vec::new(),
            cors_allowed_origins: Vec::new(),
            body_timeout_ms: 30_000,
            max_concurrent_ingest: 32,
            ingest_queue_timeout_ms: 2_000,
            idempotency_max_keys: 1_000_000,
            max_in_flight_bytes: crate::engine::DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_held_bytes: crate::engine::DEFAULT_MAX_HELD_BYTES,
            payload_cache_bytes: s2sink_queue::QueueOptions::default().payload_cache_bytes as u64,
            engine_threads: None,
            memory: MemoryMode::Fast,
        }
    }
}

impl std::fmt::Debug for ServerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSection")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("api_token", &self.api_token.as_ref().map(|_| "[redacted]"))
            .field("max_pending", &self.max_pending)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("access_log", &self.access_log)
            .field("shutdown_timeout_ms", &self.shutdown_timeout_ms)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("body_timeout_ms", &self.body_timeout_ms)
            .field("max_concurrent_ingest", &self.max_concurrent_ingest)
            .field("ingest_queue_timeout_ms", &self.ingest_queue_timeout_ms)
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("max_held_bytes", &self.max_held_bytes)
            .field("payload_cache_bytes", &self.payload_cache_bytes)
            .field("engine_threads", &self.engine_threads)
            .field("memory", &self.memory)
            .finish()
    }
}

/// One `[[sinks]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    pub name: String,
    pub basin: Option<String>,
    pub stream: Option<String>,
    pub access_token: Option<String>,
    /// Name of an environment variable holding the access token.
    pub access_token_env: Option<String>,
    /// `"cloud"` or a direct URL such as `http://127.0.0.1:8080`.
    pub endpoint: Option<String>,
    #[serde(default)]
    pub group_columns: HashMap<String, Vec<String>>,
    /// A path transform (`record.id`), inline Rhai, or a `.rhai` file.
    pub transform: Option<String>,
    pub filter: Option<String>,
    pub routing: Option<String>,
    pub max_retry_count: Option<u32>,
    pub dead_letter_stream: Option<String>,
    #[serde(default)]
    pub batch: BatchSection,
    #[serde(default)]
    pub backoff: BackoffPolicy,
    pub max_live_groups: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    /// `false`: pipelined appends go as unary requests instead of on S2's append session
    /// (HTTP/2); only for an HTTP/1.1-only proxy in between. Default `true`.
    pub append_session: Option<bool>,
    /// Per-call wall-clock limit of functions.
    pub function_timeout_ms: Option<u64>,
    /// How long an accepted `Idempotency-Key` / `metadata.idempotency_key` makes a repeat a
    /// duplicate (default a day).
    pub idempotency_window_secs: Option<u64>,
    /// `false`: messages repeating an accepted `metadata.idempotency_key` are stored again
    /// (for producers whose keys are not unique per change). Default `true`.
    pub dedup_message_keys: Option<bool>,
}

impl std::fmt::Debug for SinkSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSection")
            .field("name", &self.name)
            .field("basin", &self.basin)
            .field("stream", &self.stream)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// `[sinks.batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    pub max_records: usize,
    pub max_bytes: u64,
    pub max_json_bytes: usize,
    pub linger_ms: u64,
    /// A partial append waits `linger_ms` also when no append is in flight (default false:
    /// it goes at once).
    pub linger_when_idle: bool,
    /// Appends in flight at once per stream, 1..=16 (default 2).
    pub max_appends_in_flight: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        let l = BatchLimits::default();
        BatchSection {
            max_records: l.max_records,
            max_bytes: l.max_metered_bytes,
            max_json_bytes: l.max_json_bytes,
            linger_ms: 5,
            linger_when_idle: false,
            max_appends_in_flight: BatchSettings::default().max_appends_in_flight,
        }
    }
}

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSection,
    pub sinks: Vec<SinkSettings>,
    /// Built-in sources; each `url_env` is already resolved into `url`.
    pub sources: Vec<PostgresSourceConfig>,
}

fn cfg_err(key: impl Into<String>, reason: impl Into<String>) -> ServerError {
    ServerError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Environment variable that may hold a sink's access token.
pub fn token_env_var(sink: &str) -> String {
    let upper: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("S2SINK_SINK_{upper}_ACCESS_TOKEN")
}

/// Loads `path` (TOML) with `S2SINK_SERVER__*` environment overrides from `env`.
pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        cfg_err(
            path.display().to_string(),
            format!("cannot read config file: {e}"),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_toml(&text, base, env)
}

/// Parses config text; relative function files resolve against `base`.
pub fn from_toml(
    text: &str,
    base: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ServerError> {
    let server_env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("S2SINK_SERVER__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("S2SINK")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(server_env.into_iter().collect())),
        )
        .build()
        .map_err(|e| cfg_err("(file)", e.to_string()))?;
    let file: FileConfig = raw
        .try_deserialize()
        .map_err(|e| cfg_err(error_key(&e), e.to_string()))?;
    validate(file, base, env)
}

fn error_key(e: &config::ConfigError) -> String {
    let text = e.to_string();
    // config reports "… for key `a.b`"; keep that key when present.
    match text.rsplit_once("for key `") {
        Some((_, rest)) => rest.trim_end_matches('`').to_string(),
        None => "(file)".into(),
    }
}

fn validate(
    file: FileConfig,
    base: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ServerError> {
    let server = file.server;
    if server.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(cfg_err(
            "server.listen",
            format!("`{}` is not an address like 127.0.0.1:7376", server.listen),
        ));
    }
    if server.api_token.as_deref() == Some("") {
        return Err(cfg_err("server.api_token", "must not be empty when set"));
    }
    validate_server_limits(&server)?;
    if file.sinks.is_empty() {
        return Err(cfg_err("sinks", "at least one [[sinks]] entry is required"));
    }
    let mut names = std::collections::HashSet::new();
    let mut sinks = Vec::new();
    for s in file.sinks {
        if !names.insert(s.name.clone()) {
            return Err(cfg_err(
                format!("sinks.{}.name", s.name),
                "sink names must be unique",
            ));
        }
        sinks.push(sink_settings(s, base, env)?);
    }
    let mut sources: Vec<PostgresSourceConfig> = Vec::new();
    for (i, raw) in file.sources.into_iter().enumerate() {
        let source = source_config(i, raw, env)?;
        let key = |k: &str| format!("sources.{}.{k}", source.name);
        if sources.iter().any(|s| s.name == source.name) {
            return Err(cfg_err(key("name"), "source names must be unique"));
        }
        if !names.contains(&source.sink) {
            return Err(cfg_err(
                key("sink"),
                format!("`{}` is not the name of a [[sinks]] entry", source.sink),
            ));
        }
        sources.push(source);
    }
    Ok(Config {
        server,
        sinks,
        sources,
    })
}

/// One `[[sources]]` entry: `kind` must be `"postgres"` (the only kind so far); the rest is a
/// [`PostgresSourceConfig`], validated by its crate. `url_env` is resolved here from `env`, so
/// a missing variable fails at load, naming it (never the url's value).
fn source_config(
    index: usize,
    mut raw: serde_json::Value,
    env: &HashMap<String, String>,
) -> Result<PostgresSourceConfig, ServerError> {
    let label = raw
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| index.to_string());
    let key = |k: &str| format!("sources.{label}.{k}");
    let Some(obj) = raw.as_object_mut() else {
        return Err(cfg_err(format!("sources.{index}"), "must be a table"));
    };
    match obj.remove("kind") {
        Some(serde_json::Value::String(k)) if k == "postgres" => {}
        Some(other) => {
            return Err(cfg_err(
                key("kind"),
                format!("unknown source kind {other}; the only kind is \"postgres\""),
            ))
        }
        None => return Err(cfg_err(key("kind"), "missing (kind = \"postgres\")")),
    }
    let mut source: PostgresSourceConfig = serde_json::from_value(raw)
        .map_err(|e| cfg_err(format!("sources.{label}"), e.to_string()))?;
    if let Some(var) = source.url_env.clone() {
        if source.url.is_some() {
            return Err(cfg_err(
                key("url_env"),
                "give either url or url_env, not both",
            ));
        }
        let url = env.get(&var).ok_or_else(|| {
            cfg_err(
                key("url_env"),
                format!("the environment variable `{var}` is not set"),
            )
        })?;
        source.url = Some(url.clone());
        source.url_env = None;
    }
    source
        .validate()
        .map_err(|e| cfg_err(format!("sources.{label}"), e.to_string()))?;
    Ok(source)
}

/// Smallest `server.payload_cache_bytes`: room for several chunk bodies.
pub const MIN_PAYLOAD_CACHE_BYTES: u64 = 1 << 20;

/// Limits that make no sense at zero are refused (zero would refuse every request or hang).
fn validate_server_limits(server: &ServerSection) -> Result<(), ServerError> {
    let positive: [(&str, u64); 10] = [
        ("server.max_pending", server.max_pending.unwrap_or(1)),
        ("server.max_body_bytes", server.max_body_bytes as u64),
        ("server.body_timeout_ms", server.body_timeout_ms),
        (
            "server.max_concurrent_ingest",
            server.max_concurrent_ingest as u64,
        ),
        (
            "server.ingest_queue_timeout_ms",
            server.ingest_queue_timeout_ms,
        ),
        ("server.shutdown_timeout_ms", server.shutdown_timeout_ms),
        (
            "server.idempotency_max_keys",
            server.idempotency_max_keys as u64,
        ),
        ("server.max_in_flight_bytes", server.max_in_flight_bytes),
        ("server.max_held_bytes", server.max_held_bytes),
        (
            "server.engine_threads",
            server.engine_threads.unwrap_or(1) as u64,
        ),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(cfg_err(key, "must be greater than 0"));
        }
    }
    // Smaller, and a chunk body (up to ~64 KiB) may not fit: paced groups would wait for a
    // read-ahead that can never cache it.
    if server.payload_cache_bytes < MIN_PAYLOAD_CACHE_BYTES {
        return Err(cfg_err(
            "server.payload_cache_bytes",
            format!(
                "must be at least {MIN_PAYLOAD_CACHE_BYTES} (1 MiB), got {}",
                server.payload_cache_bytes
            ),
        ));
    }
    for (i, origin) in server.cors_allowed_origins.iter().enumerate() {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin
                .trim_end_matches('/')
                .contains(|c: char| c.is_whitespace())
            && origin
                .split("://")
                .nth(1)
                .is_some_and(|rest| !rest.is_empty() && !rest.trim_end_matches('/').contains('/'));
        if !ok {
            return Err(cfg_err(
                format!("server.cors_allowed_origins[{i}]"),
                format!("`{origin}` is not an origin like https://admin.example"),
            ));
        }
    }
    for (i, host) in server.allowed_hosts.iter().enumerate() {
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(cfg_err(
                format!("server.allowed_hosts[{i}]"),
                format!("`{host}` is not a host name like sink.internal"),
            ));
        }
    }
    Ok(())
}

fn sink_settings(
    s: SinkSection,
    base: &Path,
    env: &HashMap<String, String>,
) -> Result<SinkSettings, ServerError> {
    let name = s.name.clone();
    let key = |k: &str| format!("sinks.{name}.{k}");
    if name.is_empty() || name.len() > 64 || name.contains('/') {
        return Err(cfg_err(
            "sinks.name",
            format!("`{name}` must be 1-64 characters without `/`"),
        ));
    }
    if let Some(b) = &s.basin {
        validate_basin(b).map_err(|e| cfg_err(key("basin"), e.to_string()))?;
    }
    if let Some(st) = &s.stream {
        validate_stream(st).map_err(|e| cfg_err(key("stream"), e.to_string()))?;
    }
    let route = match (&s.basin, &s.stream) {
        (Some(b), Some(st)) => Some(Route {
            basin: b.clone(),
            stream: st.clone(),
        }),
        (None, None) if s.routing.is_some() => None,
        (None, _) => {
            return Err(cfg_err(
                key("basin"),
                "missing (required unless `routing` is set)",
            ))
        }
        (_, None) => {
            return Err(cfg_err(
                key("stream"),
                "missing (required unless `routing` is set)",
            ))
        }
    };
    if let Some(dlq) = &s.dead_letter_stream {
        validate_stream(dlq).map_err(|e| cfg_err(key("dead_letter_stream"), e.to_string()))?;
    }
    let token = match (&s.access_token, &s.access_token_env) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(var)) => Some(env.get(var).cloned().ok_or_else(|| {
            cfg_err(
                key("access_token_env"),
                format!("environment variable `{var}` is not set"),
            )
        })?),
        (None, None) => env.get(&token_env_var(&name)).cloned(),
    };
    let endpoint = match s.endpoint.as_deref() {
        Some("cloud") => Endpoint::Cloud,
        Some(url) => {
            let ok = url.starts_with("http://") || url.starts_with("https://");
            if !ok {
                return Err(cfg_err(
                    key("endpoint"),
                    format!("`{url}` must be `cloud` or an http(s) URL"),
                ));
            }
            Endpoint::Direct(url.to_string())
        }
        None if token.is_some() => Endpoint::Cloud,
        None => Endpoint::Direct(DEFAULT_LOCAL_ENDPOINT.to_string()),
    };
    if endpoint == Endpoint::Cloud && token.is_none() {
        return Err(cfg_err(
            key("access_token"),
            format!(
                "missing: S2 cloud needs an access token (set `access_token`, `access_token_env`, or {})",
                token_env_var(&name)
            ),
        ));
    }
    let mut s2 = S2Config::new(endpoint);
    if let Some(t) = token {
        s2 = s2.with_access_token(t);
    }
    if let Some(ms) = s.connect_timeout_ms {
        s2 = s2.with_connect_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = s.request_timeout_ms {
        s2 = s2.with_request_timeout(Duration::from_millis(ms));
    }
    if let Some(on) = s.append_session {
        s2 = s2.with_append_session(on);
    }
    let limits = BatchLimits {
        max_records: s.batch.max_records,
        max_metered_bytes: s.batch.max_bytes,
        max_json_bytes: s.batch.max_json_bytes,
    };
    limits
        .validate()
        .map_err(|e| cfg_err(key("batch"), e.to_string()))?;
    if !(1..=MAX_APPENDS_IN_FLIGHT).contains(&s.batch.max_appends_in_flight) {
        return Err(cfg_err(
            key("batch.max_appends_in_flight"),
            format!("must be between 1 and {MAX_APPENDS_IN_FLIGHT}"),
        ));
    }
    s.backoff
        .validate()
        .map_err(|e| cfg_err(key("backoff"), e.to_string()))?;
    if s.max_retry_count == Some(0) {
        return Err(cfg_err(
            key("max_retry_count"),
            "must be at least 1 when set",
        ));
    }
    let mut sandbox = SandboxLimits::default();
    if let Some(ms) = s.function_timeout_ms {
        sandbox.deadline = Duration::from_millis(ms);
    }
    let functions = FunctionsConfig {
        transform: s.transform.as_deref().map(|t| transform_spec(t, base)),
        filter: s.filter.as_deref().map(|f| function_source(f, base)),
        route: s.routing.as_deref().map(|r| function_source(r, base)),
        limits: sandbox,
    };
    // Compile now so a bad function stops the process before it listens.
    s2sink_transform::Functions::compile(&functions)
        .map_err(|e| cfg_err(key(fn_key(&e)), e.to_string()))?;
    let mut settings = SinkSettings::new(name.clone(), route, s2);
    settings.functions = functions;
    settings.group_columns = GroupColumns::from_iter(s.group_columns);
    settings.batch = BatchSettings {
        limits,
        linger: Duration::from_millis(s.batch.linger_ms),
        linger_when_idle: s.batch.linger_when_idle,
        max_run_records: limits.max_records,
        max_appends_in_flight: s.batch.max_appends_in_flight,
    };
    settings.backoff = s.backoff;
    settings.max_retry_count = s.max_retry_count;
    settings.dead_letter_stream = s.dead_letter_stream;
    if let Some(n) = s.max_live_groups {
        settings.max_live_groups = n.max(1);
    }
    match s.idempotency_window_secs {
        Some(0) => {
            return Err(cfg_err(
                key("idempotency_window_secs"),
                "must be greater than 0",
            ))
        }
        Some(secs) if secs > 10 * 365 * 24 * 3600 => {
            return Err(cfg_err(
                key("idempotency_window_secs"),
                format!("{secs} is more than ten years"),
            ))
        }
        Some(secs) => settings.idempotency_window = Duration::from_secs(secs),
        None => {}
    }
    if let Some(on) = s.dedup_message_keys {
        settings.dedup_message_keys = on;
    }
    Ok(settings)
}

fn fn_key(e: &s2sink_transform::TransformError) -> &'static str {
    match e {
        s2sink_transform::TransformError::Load { kind, .. } => match kind.fn_name() {
            "route" => "routing",
            other => other,
        },
        _ => "functions",
    }
}

/// A Sequin path (`record`, `record.id` …), inline Rhai, or a file.
fn transform_spec(value: &str, base: &Path) -> TransformSpec {
    let is_path = ["record", "changes", "action", "metadata"]
        .iter()
        .any(|p| value == *p || value.starts_with(&format!("{p}.")))
        && !value.contains(char::is_whitespace);
    if is_path {
        TransformSpec::Path(value.to_string())
    } else {
        TransformSpec::Function(function_source(value, base))
    }
}

/// Inline code when it contains `fn `, otherwise a file path (relative to the config file).
fn function_source(value: &str, base: &Path) -> FunctionSource {
    if value.contains("fn ") {
        FunctionSource::Inline(value.to_string())
    } else {
        FunctionSource::File(base.join(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ServerError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_toml(text, Path::new("."), &env)
    }

    const OK: &str = r#"
[server]
listen = "127.0.0.1:7376"

[[sinks]]
name = "orders"
basin = "my-basin-01"
stream = "orders"
endpoint = "http://127.0.0.1:8080"
"#;

    fn err(text: &str) -> String {
        load_str(text, &[]).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load_str(OK, &[]).unwrap();
        assert_eq!(
            c.sinks[0].route.as_ref().unwrap().to_string(),
            "my-basin-01/orders"
        );
        assert_eq!(c.server.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(c.sinks[0].backoff, BackoffPolicy::default());
    }

    #[test]
    fn payload_cache_bytes_defaults_to_the_queue_default_and_refuses_too_small() {
        let c = load_str(OK, &[]).unwrap();
        assert_eq!(c.server.payload_cache_bytes, 64 << 20);
        let c = load_str(
            &OK.replace("[server]", "[server]\npayload_cache_bytes = 33554432"),
            &[],
        )
        .unwrap();
        assert_eq!(c.server.payload_cache_bytes, 32 << 20);
        let e = err(&OK.replace("[server]", "[server]\npayload_cache_bytes = 65536"));
        assert!(
            e.contains("server.payload_cache_bytes") && e.contains("at least 1048576"),
            "{e}"
        );
    }

    #[test]
    fn memory_is_fast_by_default_lean_on_request_and_anything_else_is_named() {
        assert_eq!(load_str(OK, &[]).unwrap().server.memory, MemoryMode::Fast);
        let lean = OK.replace("[server]", "[server]\nmemory = \"lean\"");
        assert_eq!(
            load_str(&lean, &[]).unwrap().server.memory,
            MemoryMode::Lean
        );
        let from_env = load_str(OK, &[("S2SINK_SERVER__MEMORY", "lean")]).unwrap();
        assert_eq!(from_env.server.memory, MemoryMode::Lean);
        let e = err(&OK.replace("[server]", "[server]\nmemory = \"small\""));
        assert!(
            e.contains("memory") && e.contains("small") && e.contains("lean"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&OK.replace("stream = \"orders\"", "stream = \"orders\"\nstreem = 1"));
        assert!(e.contains("streem"), "{e}");
        let e = err(&format!("{OK}\n[server.extra]\nx = 1"));
        assert!(e.contains("extra") || e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_basin_name_is_named() {
        let e = err(&OK.replace("my-basin-01", "Bad_Basin"));
        assert!(
            e.contains("sinks.orders.basin") && e.contains("Bad_Basin"),
            "{e}"
        );
    }

    #[test]
    fn cloud_without_token_is_refused() {
        let e = err(&OK.replace("http://127.0.0.1:8080", "cloud"));
        assert!(
            e.contains("sinks.orders.access_token") && e.contains("missing"),
            "{e}"
        );
        // Token from the environment only.
        let ok = load_str(
            &OK.replace("http://127.0.0.1:8080", "cloud"),
            &[("S2SINK_SINK_ORDERS_ACCESS_TOKEN", "tok")],
        )
        .unwrap();
        assert!(ok.sinks[0].s2.access_token.is_some());
        let e = err(&OK.replace(
            "endpoint = \"http://127.0.0.1:8080\"",
            "access_token_env = \"NOPE\"",
        ));
        assert!(e.contains("access_token_env") && e.contains("NOPE"), "{e}");
    }

    #[test]
    fn default_endpoint_is_local_lite_without_token_and_cloud_with_one() {
        let no_endpoint = OK.replace("endpoint = \"http://127.0.0.1:8080\"\n", "");
        let c = load_str(&no_endpoint, &[]).unwrap();
        assert_eq!(
            c.sinks[0].s2.endpoint,
            Endpoint::Direct(DEFAULT_LOCAL_ENDPOINT.into())
        );
        let c = load_str(
            &no_endpoint.replace("[[sinks]]", "[[sinks]]\naccess_token = \"t\""),
            &[],
        )
        .unwrap();
        assert_eq!(c.sinks[0].s2.endpoint, Endpoint::Cloud);
    }

    #[test]
    fn bad_function_file_is_named() {
        let e = err(&format!("{OK}transform = \"functions/missing.rhai\"\n"));
        assert!(
            e.contains("sinks.orders.transform") && e.contains("missing.rhai"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.rhai"),
            "fn transform(action, record, changes, metadata) { record +* }",
        )
        .unwrap();
        let env = HashMap::new();
        let e = from_toml(&format!("{OK}transform = \"bad.rhai\"\n"), dir.path(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.rhai") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn other_errors_name_their_key() {
        let e = err(&OK.replace("127.0.0.1:7376", "nowhere"));
        assert!(e.contains("server.listen"), "{e}");
        let e = err(&OK.replace("stream = \"orders\"\n", ""));
        assert!(
            e.contains("sinks.orders.stream") && e.contains("missing"),
            "{e}"
        );
        let e = err(&format!("{OK}[sinks.batch]\nmax_records = 5000\n"));
        assert!(
            e.contains("sinks.orders.batch") && e.contains("max_records"),
            "{e}"
        );
        for bad in [0, 17] {
            let e = err(&format!(
                "{OK}[sinks.batch]\nmax_appends_in_flight = {bad}\n"
            ));
            assert!(
                e.contains("sinks.orders.batch.max_appends_in_flight") && e.contains("1 and 16"),
                "{e}"
            );
        }
        let ok = load_str(
            &format!("{OK}[sinks.batch]\nmax_appends_in_flight = 4\n"),
            &[],
        )
        .unwrap();
        assert_eq!(ok.sinks[0].batch.max_appends_in_flight, 4);
        let e = err(&format!("{OK}[sinks.backoff]\njitter = 2.0\n"));
        assert!(e.contains("backoff.jitter"), "{e}");
        let e = err(&format!("{OK}max_retry_count = \"ten\"\n"));
        assert!(e.contains("max_retry_count"), "{e}");
        let e = err(&format!(
            "{OK}{}",
            OK.split("[[sinks]]")
                .nth(1)
                .map(|s| format!("[[sinks]]{s}"))
                .unwrap()
        ));
        assert!(e.contains("unique"), "{e}");
        let e = err("[server]\n");
        assert!(e.contains("sinks"), "{e}");
    }

    #[test]
    fn env_overrides_server_settings_and_secrets_stay_out_of_debug() {
        let c = load_str(
            OK,
            &[
                ("S2SINK_SERVER__API_TOKEN", "sekret-api"),
                ("S2SINK_SERVER__MAX_PENDING", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.api_token.as_deref(), Some("sekret-api"));
        assert_eq!(c.server.max_pending, Some(5));
        let with_token = OK.replace("[[sinks]]", "[[sinks]]\naccess_token = \"sekret-s2\"");
        let c = load_str(&with_token, &[("S2SINK_SERVER__API_TOKEN", "sekret-api")]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sekret"), "{dbg}");
    }

    #[test]
    fn zero_limits_are_refused_naming_the_key() {
        for key in [
            "max_pending",
            "max_body_bytes",
            "body_timeout_ms",
            "max_concurrent_ingest",
            "ingest_queue_timeout_ms",
            "max_in_flight_bytes",
            "max_held_bytes",
            "engine_threads",
        ] {
            let e = err(&OK.replace("[server]", &format!("[server]\n{key} = 0")));
            assert!(
                e.contains(&format!("server.{key}")) && e.contains("greater than 0"),
                "{key}: {e}"
            );
        }
        let e = err(&OK.replace("[server]", "[server]\nidempotency_max_keys = 0"));
        assert!(e.contains("server.idempotency_max_keys"), "{e}");
        let e = err(&format!("{OK}idempotency_window_secs = 0\n"));
        assert!(
            e.contains("sinks.orders.idempotency_window_secs") && e.contains("greater than 0"),
            "{e}"
        );
        let c = load_str(&format!("{OK}idempotency_window_secs = 60\n"), &[]).unwrap();
        assert_eq!(c.sinks[0].idempotency_window, Duration::from_secs(60));
        let c = load_str(OK, &[]).unwrap();
        assert_eq!(
            c.sinks[0].idempotency_window,
            crate::engine::DEFAULT_IDEMPOTENCY_WINDOW
        );
        assert!(c.sinks[0].dedup_message_keys, "on by default");
        let c = load_str(&format!("{OK}dedup_message_keys = false\n"), &[]).unwrap();
        assert!(!c.sinks[0].dedup_message_keys);
        let e = err(&OK.replace("[server]", "[server]\ncors_allowed_origins = [\"*\"]"));
        assert!(e.contains("cors_allowed_origins"), "{e}");
        let ok = load_str(
            &OK.replace(
                "[server]",
                "[server]\ncors_allowed_origins = [\"https://admin.example\"]\nallowed_hosts = [\"sink.internal\"]",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(ok.server.allowed_hosts, ["sink.internal"]);
    }

    const SOURCE: &str = r#"
[[sources]]
name = "app-db"
kind = "postgres"
url_env = "APP_DB_URL"
publication = "pub"
slot = "slot"
tables = ["public.orders"]
sink = "orders"
"#;

    #[test]
    fn sources_are_checked_and_url_env_is_resolved_without_showing_the_password() {
        let url = "postgres://app:sekret-pg@127.0.0.1:5432/app";
        let c = load_str(&format!("{OK}{SOURCE}"), &[("APP_DB_URL", url)]).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].url.as_deref(), Some(url));
        assert_eq!(c.sources[0].sink, "orders");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sekret-pg"), "{dbg}");

        let e = load_str(&format!("{OK}{SOURCE}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sources.app-db.url_env") && e.contains("APP_DB_URL"),
            "{e}"
        );
        let e = err(&format!(
            "{OK}{}",
            SOURCE.replace("\"postgres\"", "\"mysql\"")
        ));
        assert!(
            e.contains("sources.app-db.kind") && e.contains("mysql"),
            "{e}"
        );
        let e = err(&format!(
            "{OK}{}",
            SOURCE.replace("kind = \"postgres\"\n", "")
        ));
        assert!(
            e.contains("sources.app-db.kind") && e.contains("missing"),
            "{e}"
        );
        let e = load_str(
            &format!(
                "{OK}{}",
                SOURCE.replace("sink = \"orders\"", "sink = \"nope\"")
            ),
            &[("APP_DB_URL", url)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sources.app-db.sink") && e.contains("nope"),
            "{e}"
        );
        let e = load_str(&format!("{OK}{SOURCE}{SOURCE}"), &[("APP_DB_URL", url)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sources.app-db.name") && e.contains("unique"),
            "{e}"
        );
        let e = load_str(
            &format!("{OK}{}", SOURCE.replace("slot = ", "slott = ")),
            &[("APP_DB_URL", url)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sources.app-db") && e.contains("slott"), "{e}");
        let e = load_str(
            &format!(
                "{OK}{}",
                SOURCE.replace(
                    "url_env = \"APP_DB_URL\"",
                    &format!("url = \"{url}\"\nurl_env = \"APP_DB_URL\"")
                )
            ),
            &[("APP_DB_URL", url)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("url") && !e.contains("sekret-pg"), "{e}");
    }
}
