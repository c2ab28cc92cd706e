//! Domain types shared by every s2-sink crate.
//!
//! Pure and I/O-free on purpose: the policy that decides what a message is, which group it
//! belongs to, what S2 accepts and how long to wait after a failure is written once here and
//! configured by the callers, never copied into them.

pub mod backoff;
pub mod envelope;
pub mod error;
pub mod failure;
pub mod group;
pub mod limits;
pub mod names;
pub mod route;

pub use backoff::BackoffPolicy;
pub use envelope::{Envelope, Metadata};
pub use error::CoreError;
pub use failure::{classify_status, ErrorClass, LastError};
pub use group::{GroupColumns, GroupKey, GroupSource};
pub use limits::{
    metered_size, MAX_BATCH_METERED_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_METERED_BYTES,
};
pub use names::{validate_basin, validate_stream};
pub use route::Route;

/// Milliseconds since the Unix epoch, the time unit of every persisted timestamp.
pub type UnixMillis = u64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
