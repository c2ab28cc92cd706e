//! The one error enum of the server crate (engine, config, HTTP).

use s2sink_core::{CoreError, LastError};
use s2sink_queue::QueueError;
use s2sink_transform::TransformError;

/// What went wrong, with the sink / message / key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No sink of that name is configured.
    #[error("unknown sink `{sink}`")]
    UnknownSink { sink: String },
    /// Message `index` of a request is invalid; nothing of the request was stored.
    #[error("message {index}: {reason}")]
    InvalidMessage { index: usize, reason: String },
    /// The request body is not what the endpoint takes.
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    /// The backlog is over `max_pending`; retry later.
    #[error("backlog of {pending} pending messages is over the limit of {limit}; retry later")]
    Backpressure { pending: u64, limit: u64 },
    /// A request key (`Idempotency-Key`) was already used, within the sink's idempotency
    /// window, for a request with another body or parameters; nothing was stored.
    #[error("idempotency key `{key}` of sink `{sink}` was already used for a different request (another body or parameters)")]
    IdempotencyConflict { sink: String, key: String },
    /// No message with that id is pending in the sink.
    #[error("no pending message {id} in sink `{sink}`")]
    UnknownMessage { sink: String, id: u64 },
    /// The durable queue failed; fatal ones stop the process.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// A sink's functions failed to load.
    #[error("sink `{sink}`: {source}")]
    Functions {
        sink: String,
        #[source]
        source: Box<TransformError>,
    },
    /// A sink's settings are invalid.
    #[error("sink `{sink}`: {source}")]
    Settings {
        sink: String,
        #[source]
        source: CoreError,
    },
    /// A config file or environment value is invalid.
    #[error("config: `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// The HTTP listener could not be opened (address in use, no permission, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// An S2 call made by the server itself failed.
    #[error("S2: {0}")]
    S2(#[from] s2sink_client::S2Error),
    /// The engine is shutting down and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A delivery failed (used for the dead-letter path).
    #[error("delivery failed: {}", .0.message)]
    Delivery(LastError),
}

impl ServerError {
    /// True when the process must stop: the disk state is unknown.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ServerError::Queue(q) if q.is_fatal())
    }
}
