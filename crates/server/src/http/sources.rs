//! `GET /api/sources`: the built-in sources (`[[sources]]`) and how far each has got.

use actix_web::{web, HttpResponse};
use s2sink_source_postgres::{Position, StatusSnapshot};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::views::ErrorBody;
use super::AppState;

/// A log sequence number the way Postgres prints it (`pg_current_wal_lsn()`), e.g. `0/16B3748`.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `GET /api/sources`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    pub sources: Vec<SourceView>,
}

/// One source's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub name: String,
    /// The sink its changes go to.
    pub sink: String,
    pub kind: &'static str,
    /// `starting`, `backfilling`, `streaming`, `error` (retrying unless it also stopped) or
    /// `stopped`.
    #[schema(example = "streaming")]
    pub state: String,
    /// True while changes flow (backfilling or streaming).
    pub up: bool,
    /// Why the last attempt failed (never contains a password).
    pub last_error: Option<String>,
    /// Changes stored by this process since it started (backfill rows included).
    pub changes_stored: u64,
    /// The last stored change: its transaction's commit LSN and its index in it (null for
    /// backfill rows and before anything was stored).
    pub last_stored_lsn: Option<String>,
    pub last_stored_idx: Option<u64>,
    /// The flush LSN the replication slot was last told: WAL up to here may be recycled.
    pub confirmed_flush_lsn: Option<String>,
    /// The database's current WAL position at the last poll.
    pub server_wal_lsn: Option<String>,
    /// WAL the slot retains for this source (`server_wal_lsn - confirmed_flush_lsn`).
    pub lag_bytes: Option<u64>,
    /// Age of the last stored change's commit while changes flow; 0 when caught up.
    pub lag_seconds: f64,
    /// Backfill progress, when a backfill ran in this process.
    pub backfill: Option<BackfillView>,
}

/// How far a backfill got.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillView {
    pub rows_stored: u64,
    pub tables_done: usize,
    pub tables_total: usize,
    /// The table being read (`schema.table`).
    pub current_table: Option<String>,
    pub done: bool,
}

impl SourceView {
    /// The view of a status snapshot of a source delivering to `sink`.
    pub fn of(s: StatusSnapshot, sink: &str) -> SourceView {
        let streamed = s.last_stored.filter(|p: &Position| !p.is_backfill());
        SourceView {
            name: s.name,
            sink: sink.to_string(),
            kind: "postgres",
            state: s.state.as_str().to_string(),
            up: s.state.is_up(),
            last_error: s.last_error,
            changes_stored: s.changes_stored,
            last_stored_lsn: streamed.map(|p| lsn_text(p.commit_lsn)),
            last_stored_idx: streamed.map(|p| p.commit_idx),
            confirmed_flush_lsn: s.confirmed_flush_lsn.map(lsn_text),
            server_wal_lsn: s.server_wal_lsn.map(lsn_text),
            lag_bytes: s.lag_bytes,
            lag_seconds: s.lag_seconds,
            backfill: s.backfill.map(|b| BackfillView {
                rows_stored: b.rows_stored,
                tables_done: b.tables_done,
                tables_total: b.tables_total,
                current_table: b.current_table,
                done: b.done,
            }),
        }
    }
}

/// `GET /api/sources`: every configured source, in config order.
#[utoipa::path(
    get,
    path = "/api/sources",
    tag = "sources",
    summary = "Built-in sources (Postgres slots) and their progress and lag",
    responses(
        (status = 200, description = "Every configured source", body = SourceList),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list_sources(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SourceList {
        sources: state.source_views(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_like_postgres() {
        assert_eq!(lsn_text(0x16B_3748), "0/16B3748");
        assert_eq!(lsn_text((3u64 << 32) | 0xA0), "3/A0");
    }
}
