//! Sequin-style transform, filter and routing functions for s2-sink, written in Rhai and run
//! in a sandbox.
//!
//! - A *transform* makes the S2 record body: a path (`record`, `metadata.table_name`, …) or
//!   `fn transform(action, record, changes, metadata)` returning any JSON-able value.
//! - A *filter* `fn filter(action, record, changes, metadata)` returns a bool; `false` means
//!   the message is acknowledged without delivery.
//! - A *route* `fn route(action, record, changes, metadata)` returns
//!   `#{basin: "...", stream: "..."}`, validated by S2's naming rules.
//!
//! Functions are compiled once ([`Functions::compile`]), where syntax errors, missing functions
//! and wrong arities are reported with file (or `inline <kind>`), line and column. Calls are
//! sandboxed (see [`SandboxLimits`]): no I/O, bounded operations, recursion, data sizes and
//! wall-clock time. JSON is converted exactly (see [`convert`]).
//!
//! In scripts, `record`, `changes` and `metadata` are object maps (`record.id` and
//! `record["id"]` both work; a missing key reads as `()`); a field missing from the message is
//! passed as `()`. Only the function is run: top-level statements of a script are ignored.

pub mod convert;
mod error;
mod functions;
mod path;
mod route;
mod sandbox;
mod script;

pub use convert::BigU64;
pub use error::{FunctionKind, Limit, Location, TransformError};
pub use functions::{Applied, Functions, FunctionsConfig, TransformSpec};
pub use path::{PathTransform, MAX_PATH_LEN};
pub use sandbox::SandboxLimits;
pub use script::{FunctionSource, PARAMS};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
