//! The one error type of this crate. Every variant names the source it belongs to; none ever
//! holds a password (URLs are redacted before they reach a message).

/// Everything that can stop or interrupt a PostgreSQL source.
///
/// [`SourceError::is_fatal`] tells `run` whether reconnecting can help: configuration,
/// server settings, privileges and schema problems need a human, connection losses do not.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A config field is missing, malformed or contradicts another.
    #[error("postgres source `{source_name}`: config field `{field}`: {message}")]
    Config {
        source_name: String,
        field: &'static str,
        message: String,
    },
    /// `wal_level` is not `logical`, so no logical slot can decode the WAL.
    #[error(
        "postgres source `{source_name}`: the server runs with wal_level = `{actual}`; logical \
         replication needs wal_level = logical (set it in postgresql.conf and restart PostgreSQL)"
    )]
    WalLevel { source_name: String, actual: String },
    /// The user may not open a replication connection (or create what is missing).
    #[error("postgres source `{source_name}`: insufficient privileges: {message}")]
    Privileges {
        source_name: String,
        message: String,
    },
    /// A configured table does not exist.
    #[error("postgres source `{source_name}`: table `{table}` does not exist")]
    MissingTable { source_name: String, table: String },
    /// A configured table has no primary key: its changes could not be grouped or deduplicated.
    #[error(
        "postgres source `{source_name}`: table `{table}` has no primary key; add one \
         (changes are grouped and keyed by it)"
    )]
    NoPrimaryKey { source_name: String, table: String },
    /// The publication exists but does not publish a configured table.
    #[error(
        "postgres source `{source_name}`: publication `{publication}` exists but does not \
         publish `{table}`; run ALTER PUBLICATION {publication} ADD TABLE {table}, or name a new \
         publication (it is created for the configured tables)"
    )]
    PublicationMismatch {
        source_name: String,
        publication: String,
        table: String,
    },
    /// The slot exists but is unusable (wrong plugin, other database, physical slot).
    #[error("postgres source `{source_name}`: replication slot `{slot}`: {message}")]
    SlotMismatch {
        source_name: String,
        slot: String,
        message: String,
    },
    /// Another session is consuming the slot.
    #[error(
        "postgres source `{source_name}`: replication slot `{slot}` is active in another \
         session (pid {pid}); two consumers of one slot would each see only part of the changes"
    )]
    SlotActive {
        source_name: String,
        slot: String,
        pid: String,
    },
    /// The server refused the login itself: wrong password, unknown role or database.
    /// Retrying with the same URL cannot succeed.
    #[error("postgres source `{source_name}`: the server refused the connection: {message}")]
    Rejected {
        source_name: String,
        message: String,
    },
    /// A query or the connection failed; retried with backoff.
    #[error("postgres source `{source_name}`: {context}: {message}")]
    Connection {
        source_name: String,
        context: String,
        message: String,
    },
    /// The replication stream sent something this crate cannot decode.
    #[error("postgres source `{source_name}`: replication protocol: {message}")]
    Protocol {
        source_name: String,
        message: String,
    },
    /// The sink refused to store a batch; retried (the source re-reads from the slot).
    #[error("postgres source `{source_name}`: sink `{sink}` failed to store changes: {message}")]
    Sink {
        source_name: String,
        sink: String,
        message: String,
    },
}

impl SourceError {
    /// True when retrying cannot help (config, server settings, privileges, schema, a slot
    /// held elsewhere): `run` returns these instead of reconnecting.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            SourceError::Connection { .. }
                | SourceError::Protocol { .. }
                | SourceError::Sink { .. }
        )
    }
}
