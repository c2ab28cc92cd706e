//! PostgreSQL source of s2-sink: consumes a logical replication slot (plugin `pgoutput`) and
//! hands one Sequin-style JSON envelope per row change to a [`ChangeSink`], exactly once.
//!
//! Exactly once rests on two rules: every change has a [`Position`] (commit LSN of its
//! transaction, index within it) that the sink stores atomically with the changes, and the
//! slot is only ever confirmed up to the end of a transaction whose changes are all stored.
//! After a crash the slot re-sends from its confirmed position and changes at or below the
//! sink's stored position are skipped.
//!
//! The value encoding is described in [`decode`]; the run loop in [`run`].

use std::future::Future;
use std::pin::Pin;

pub mod config;
pub mod decode;
pub mod error;
pub mod pgoutput;
mod source;
pub mod status;
#[cfg(feature = "test-util")]
pub mod testing;

pub use config::PostgresSourceConfig;
pub use error::SourceError;
pub use source::run;
pub use status::{BackfillProgress, SourceState, SourceStatus, StatusSnapshot};

/// Where a change sits in the WAL: (commit LSN of its transaction, index within the
/// transaction). Ordered like the WAL, so "skip everything <= the stored position" is the
/// whole deduplication rule.
///
/// Backfill (`read`) rows use `commit_lsn = 0` (no real commit has LSN 0, so they sort before
/// every streamed change); the last row of a completed backfill carries
/// [`Position::BACKFILL_DONE`] in `commit_idx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Position {
    pub commit_lsn: u64,
    pub commit_idx: u64,
}

impl Position {
    /// Bit set in `commit_idx` of the last row of a completed backfill, so a restart can tell
    /// a finished backfill from an interrupted one by the stored position alone.
    pub const BACKFILL_DONE: u64 = 1 << 63;

    /// 16 bytes, big-endian `commit_lsn` then `commit_idx` (byte order = position order).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.commit_lsn.to_be_bytes());
        out[8..].copy_from_slice(&self.commit_idx.to_be_bytes());
        out
    }

    /// The inverse of [`Position::to_bytes`]; `None` unless exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Position> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Position {
            commit_lsn: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            commit_idx: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }

    /// True for a backfill row's position (`commit_lsn == 0`).
    pub fn is_backfill(&self) -> bool {
        self.commit_lsn == 0
    }
}

/// A boxed future, so [`ChangeSink`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One row change: its Sequin envelope and where it sits in the WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub envelope: serde_json::Value,
    pub position: Position,
}

/// What the source hands its changes to. Implemented by the server on top of its durable
/// queue.
pub trait ChangeSink: Send + Sync + 'static {
    /// Durably stores `changes` (JSON envelopes, in commit order) together with `position`,
    /// atomically (both or neither survive a crash). Returns once on disk.
    fn store(&self, changes: Vec<Change>, position: Position) -> BoxFuture<'_, Result<(), String>>;
    /// The position of the last stored change (None if never stored).
    fn stored_position(&self) -> Result<Option<Position>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_bytes_round_trip_and_keep_order() {
        let a = Position {
            commit_lsn: 5,
            commit_idx: u64::MAX,
        };
        let b = Position {
            commit_lsn: 6,
            commit_idx: 0,
        };
        assert_eq!(Position::from_bytes(&a.to_bytes()), Some(a));
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(Position::from_bytes(&[0; 15]), None);
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
