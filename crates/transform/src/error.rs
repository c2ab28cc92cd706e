//! The one error enum of this crate, with enough context to act on it.

use std::fmt;

/// Which user function an error or a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    /// `fn transform(action, record, changes, metadata)` or a path transform.
    Transform,
    /// `fn filter(action, record, changes, metadata) -> bool`.
    Filter,
    /// `fn route(action, record, changes, metadata) -> #{basin, stream}`.
    Route,
}

impl FunctionKind {
    /// The Rhai function name the script must define for this kind.
    pub fn fn_name(self) -> &'static str {
        match self {
            FunctionKind::Transform => "transform",
            FunctionKind::Filter => "filter",
            FunctionKind::Route => "route",
        }
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fn_name())
    }
}

/// Where in a function's source something happened: the file path or `inline <kind>`,
/// plus the 1-based line and column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path, or `inline transform` / `inline filter` / `inline route`.
    pub source: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl Location {
    pub(crate) fn at(source: &str, pos: rhai::Position) -> Location {
        Location {
            source: source.to_string(),
            line: pos.line(),
            column: pos.position(),
        }
    }

    pub(crate) fn whole(source: &str) -> Location {
        Location {
            source: source.to_string(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, ", line {l}, column {c}"),
            (Some(l), None) => write!(f, ", line {l}"),
            _ => Ok(()),
        }
    }
}

/// A sandbox limit that stopped a call (see [`crate::SandboxLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_operations` was exceeded (for example an endless loop).
    Operations,
    /// `max_call_levels` was exceeded (for example unbounded recursion).
    CallDepth,
    /// The per-call wall-clock `deadline` passed.
    Deadline,
    /// `max_string_size` was exceeded.
    StringSize,
    /// `max_array_size` was exceeded.
    ArraySize,
    /// `max_map_size` was exceeded.
    MapSize,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Operations => "operation limit (max_operations) exceeded",
            Limit::CallDepth => "call depth limit (max_call_levels) exceeded",
            Limit::Deadline => "deadline per call exceeded",
            Limit::StringSize => "string size limit (max_string_size) exceeded",
            Limit::ArraySize => "array size limit (max_array_size) exceeded",
            Limit::MapSize => "map size limit (max_map_size) exceeded",
        })
    }
}

/// Renders an optional message id as ` (message <id>)`.
pub(crate) struct MsgId<'a>(pub &'a Option<String>);

impl fmt::Display for MsgId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (message {id})"),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong when loading or calling functions.
///
/// Load errors ([`TransformError::Load`]) mean the config must be refused; the others are
/// scoped to one message, which the caller fails (and may retry or park) on its own.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// The function could not be loaded: unreadable file, syntax error, missing function or
    /// wrong arity, invalid path, source too large.
    #[error("cannot load {kind} function at {location}: {message}")]
    Load {
        kind: FunctionKind,
        location: Location,
        message: String,
    },
    /// The script raised an error while running (type error, unknown function, `throw` …).
    #[error("{kind} function failed{} at {location}: {message}", MsgId(msg_id))]
    Runtime {
        kind: FunctionKind,
        msg_id: Option<String>,
        location: Location,
        message: String,
    },
    /// The script hit a sandbox limit and was stopped.
    #[error("{kind} function stopped{} at {location}: {limit}", MsgId(msg_id))]
    Limit {
        kind: FunctionKind,
        msg_id: Option<String>,
        location: Location,
        limit: Limit,
    },
    /// The function returned a value of the wrong shape (a filter returning a non-bool, a
    /// transform returning a value that has no JSON form, …).
    #[error("{kind} function returned an invalid value{}: {reason}", MsgId(msg_id))]
    InvalidOutput {
        kind: FunctionKind,
        msg_id: Option<String>,
        reason: String,
    },
    /// The route function's result broke the routing contract; every violation is listed.
    #[error("invalid route{}: {}", MsgId(msg_id), violations.join("; "))]
    InvalidRoute {
        msg_id: Option<String>,
        violations: Vec<String>,
    },
}

impl TransformError {
    /// The sandbox limit behind this error, if it is one.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            TransformError::Limit { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// True for errors raised while loading the config (the server should refuse to start).
    pub fn is_load_error(&self) -> bool {
        matches!(self, TransformError::Load { .. })
    }
}
