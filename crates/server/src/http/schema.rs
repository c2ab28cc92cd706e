//! Shapes the OpenAPI document describes that the handlers do not otherwise name as Rust
//! types: path parameters, query enums, the ingest request body. The handlers' `#[utoipa::path]`
//! annotations refer to them, and `openapi.rs` lists them as components; keeping them here
//! lets the document depend on the handlers without the handlers depending on the document.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// The `{sink}` path parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SinkParam {
    /// The sink's name, as in the config.
    #[allow(dead_code)]
    sink: String,
}

/// The `{id}` path parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdParam {
    /// The message id (from the 202 of the ingest request, or a listing).
    #[allow(dead_code)]
    #[param(minimum = 0)]
    id: i64,
}

/// What `POST /api/sinks/{sink}/messages/{id}/{action}` does.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Action {
    /// Remove it from the queue as if delivered.
    Acknowledge,
    /// Make it ready now (clears its backoff).
    Redeliver,
    /// Move it to the discarded list (and the dead-letter stream, when configured).
    Discard,
}

/// `state` of `GET /api/sinks/{sink}/messages`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum StateFilter {
    All,
    Pending,
    Delivering,
    BackingOff,
    Failed,
    Failing,
}

/// `order` of `GET /api/sinks/{sink}/messages`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Order {
    Oldest,
    Newest,
}

/// One message: any JSON object. The Sequin change-message fields are checked when present
/// (a wrong type is 400 `invalid_message`); every other field is kept and delivered verbatim.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct IngestMessage {
    /// `insert`, `update`, `delete` or `read` for CDC messages; free-form otherwise.
    action: Option<String>,
    /// The row (for a delete: the old row); any JSON value.
    record: Option<Value>,
    /// Old values of changed columns for an update; any JSON value.
    changes: Option<Value>,
    metadata: Option<IngestMetadata>,
    /// Any other field, kept verbatim.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// Sequin's `metadata`. Every field is optional; unknown fields are kept.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct IngestMetadata {
    table_schema: Option<String>,
    table_name: Option<String>,
    commit_timestamp: Option<String>,
    /// Deduplicates: a message whose key was accepted before (within the sink's idempotency
    /// window) is not stored again.
    idempotency_key: Option<String>,
    /// Primary-key values in key-column order: the default group.
    record_pks: Option<Vec<Value>>,
    database_name: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// An ingest body: one message or an array of messages (for `application/x-ndjson`: a
/// one-line body, or the array of its lines).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum IngestBody {
    One(Box<IngestMessage>),
    Many(Vec<IngestMessage>),
}
