//! Live status of one source, shared with the server for its API and metrics.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Position;

/// What the source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// Connecting, checking, creating the publication/slot (also while reconnecting).
    Starting,
    /// Reading the tables' existing rows.
    Backfilling,
    /// Consuming the slot.
    Streaming,
    /// The last attempt failed; `last_error` says why (retrying unless fatal).
    Error,
    /// `run` returned.
    Stopped,
}

impl SourceState {
    /// The name the API and the console show (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Backfilling => "backfilling",
            SourceState::Streaming => "streaming",
            SourceState::Error => "error",
            SourceState::Stopped => "stopped",
        }
    }

    /// Whether changes flow (backfilling or streaming): the `s2sink_source_up` gauge.
    pub fn is_up(self) -> bool {
        matches!(self, SourceState::Backfilling | SourceState::Streaming)
    }
}

/// How far the backfill got.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackfillProgress {
    /// Rows read and stored so far.
    pub rows_stored: u64,
    /// Tables completely read.
    pub tables_done: usize,
    pub tables_total: usize,
    /// The table being read, `schema.table`.
    pub current_table: Option<String>,
    pub done: bool,
}

/// A point-in-time copy of [`SourceStatus`], serializable for `/api`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusSnapshot {
    pub name: String,
    pub state: SourceState,
    /// The last error (never contains a password).
    pub last_error: Option<String>,
    /// Changes stored by this process (stream and backfill).
    pub changes_stored: u64,
    pub last_stored: Option<Position>,
    /// The flush LSN last reported to the slot (from `pg_replication_slots` when polled).
    pub confirmed_flush_lsn: Option<u64>,
    /// The server's `pg_current_wal_lsn()` at the last poll.
    pub server_wal_lsn: Option<u64>,
    /// `server_wal_lsn - confirmed_flush_lsn`: WAL the slot retains for this source.
    pub lag_bytes: Option<u64>,
    /// Now minus the commit time of the last stored change while changes flow; 0 when
    /// caught up.
    pub lag_seconds: f64,
    pub backfill: Option<BackfillProgress>,
}

#[derive(Debug)]
struct Inner {
    state: SourceState,
    last_error: Option<String>,
    changes_stored: u64,
    last_stored: Option<Position>,
    confirmed_flush_lsn: Option<u64>,
    server_wal_lsn: Option<u64>,
    last_commit_unix_micros: Option<i64>,
    caught_up: bool,
    backfill: Option<BackfillProgress>,
}

/// Live status of one source: written by `run`, read cheaply by the server (one mutex,
/// held only to copy fields).
#[derive(Debug)]
pub struct SourceStatus {
    name: String,
    inner: Mutex<Inner>,
}

impl SourceStatus {
    /// A status in state `starting` for the source `name`.
    pub fn new(name: impl Into<String>) -> SourceStatus {
        SourceStatus {
            name: name.into(),
            inner: Mutex::new(Inner {
                state: SourceState::Starting,
                last_error: None,
                changes_stored: 0,
                last_stored: None,
                confirmed_flush_lsn: None,
                server_wal_lsn: None,
                last_commit_unix_micros: None,
                caught_up: true,
                backfill: None,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A consistent copy of the status.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.with(|i| {
            let lag_bytes = match (i.server_wal_lsn, i.confirmed_flush_lsn) {
                (Some(server), Some(flushed)) => Some(server.saturating_sub(flushed)),
                _ => None,
            };
            let lag_seconds = match (i.caught_up, i.last_commit_unix_micros) {
                (false, Some(commit)) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or(commit);
                    (now - commit).max(0) as f64 / 1e6
                }
                _ => 0.0,
            };
            StatusSnapshot {
                name: self.name.clone(),
                state: i.state,
                last_error: i.last_error.clone(),
                changes_stored: i.changes_stored,
                last_stored: i.last_stored,
                confirmed_flush_lsn: i.confirmed_flush_lsn,
                server_wal_lsn: i.server_wal_lsn,
                lag_bytes,
                lag_seconds,
                backfill: i.backfill.clone(),
            }
        })
    }

    pub(crate) fn set_state(&self, state: SourceState) {
        self.with(|i| i.state = state);
    }

    pub(crate) fn set_error(&self, error: String) {
        self.with(|i| {
            i.state = SourceState::Error;
            i.last_error = Some(error);
        });
    }

    pub(crate) fn stored(&self, count: usize, last: Position, commit_unix_micros: Option<i64>) {
        self.with(|i| {
            i.changes_stored += count as u64;
            i.last_stored = Some(last);
            if commit_unix_micros.is_some() {
                i.last_commit_unix_micros = commit_unix_micros;
                i.caught_up = false;
            }
        });
    }

    pub(crate) fn set_caught_up(&self) {
        self.with(|i| i.caught_up = true);
    }

    pub(crate) fn set_confirmed(&self, lsn: u64) {
        self.with(|i| i.confirmed_flush_lsn = Some(i.confirmed_flush_lsn.unwrap_or(0).max(lsn)));
    }

    pub(crate) fn set_server_lsns(&self, server: Option<u64>, confirmed: Option<u64>) {
        self.with(|i| {
            if server.is_some() {
                i.server_wal_lsn = server;
            }
            if confirmed.is_some() {
                i.confirmed_flush_lsn = confirmed;
            }
        });
    }

    pub(crate) fn update_backfill(&self, f: impl FnOnce(&mut BackfillProgress)) {
        self.with(|i| f(i.backfill.get_or_insert_with(BackfillProgress::default)));
    }
}

#[cfg(test)]
mod tests {
    use super::SourceState;

    #[test]
    fn state_names_are_the_serde_names_and_up_means_changes_flow() {
        for (state, up) in [
            (SourceState::Starting, false),
            (SourceState::Backfilling, true),
            (SourceState::Streaming, true),
            (SourceState::Error, false),
            (SourceState::Stopped, false),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.is_up(), up, "{state:?}");
        }
    }
}
