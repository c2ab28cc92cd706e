//! The one error enum of this crate.

use crate::MessageId;

/// Why a queue operation failed.
///
/// [`QueueError::is_fatal`] tells the caller whether the on-disk state is no longer known: the
/// server must then stop cleanly instead of carrying on (the queue also refuses further work).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// sled reported an I/O or internal error; the disk state is unknown.
    #[error("storage error during {op} (sink {sink:?}): {source}")]
    Storage {
        /// The queue operation that failed (`enqueue`, `ack`, `flush`, …).
        op: &'static str,
        /// The sink concerned, when there is one.
        sink: Option<String>,
        #[source]
        source: sled::Error,
    },
    /// A stored record could not be decoded: the data directory is damaged or from another
    /// version.
    #[error("corrupt record in sink {sink:?} ({what})")]
    Corrupt {
        /// The sink whose tree holds the record (empty for markers).
        sink: String,
        /// Which record (key kind and id).
        what: String,
    },
    /// An earlier fatal error stopped the queue; nothing more is written or read.
    #[error("queue stopped after an earlier storage error")]
    Stopped,
    /// The message is not (or no longer) in the queue.
    #[error("message {id} not found in sink {sink:?}")]
    NotFound {
        /// The sink asked for.
        sink: String,
        /// The id asked for.
        id: MessageId,
    },
    /// A request key was accepted before for a different request (another fingerprint):
    /// nothing was stored. Not fatal.
    #[error("idempotency key {key:?} of sink {sink:?} was already used for a different request")]
    IdempotencyConflict {
        /// The sink asked for.
        sink: String,
        /// The request key.
        key: String,
    },
    /// The flusher thread could not be started when opening the queue.
    #[error("cannot start the flusher thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl QueueError {
    /// True when the disk state is unknown and the process should exit (after logging).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            QueueError::Storage { .. }
                | QueueError::Corrupt { .. }
                | QueueError::Stopped
                | QueueError::Thread(_)
        )
    }
}
