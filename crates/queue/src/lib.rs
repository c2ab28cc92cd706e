//! The durable per-group message queue of s2-sink, on sled.
//!
//! - **Accepted ⇒ durable**: [`Queue::enqueue`] returns only after the sled batch holding the
//!   messages is flushed; concurrent enqueues share one flush (group commit). Only then do
//!   their groups see them (publish after flush, in id order).
//! - **Ids that never repeat in S2**: records carry a [`DeliveryId`] (a random per-open epoch
//!   and the id), so a restored data directory never makes a new message look delivered.
//! - **Per-group FIFO**: messages of one [`GroupRef`] come back from [`Queue::head_run`] in
//!   acceptance order; an ungrouped message is its own group.
//! - **Failure bookkeeping**: [`Queue::fail`] keeps `deliver_count`, the last error and the
//!   backoff end on the message; [`Queue::redeliver`], [`Queue::acknowledge`] and
//!   [`Queue::discard`] are the manual fixes.
//! - **Idempotent ingest**: [`Queue::enqueue_idempotent`] answers a retried request (same
//!   [`RequestKey`]) or a message whose `idempotency_key` was accepted within the window with
//!   the original ids, storing nothing again; the records are written in the enqueue's batch.
//! - **Atomic**: every state change is one sled batch of the sink's tree, so group index,
//!   state and counters never diverge, and a crash loses whole batches or nothing. Chunk
//!   bodies live in span trees, written in one transaction with their headers and dropped
//!   whole after their last header is removed (see `bodies.rs`): a header never outlives its
//!   body's span.
//!
//! ```
//! use s2sink_core::{ErrorClass, GroupKey, LastError};
//! use s2sink_queue::{ListFilter, NewMessage, Queue, StateFilter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Runtime::new()?;
//! # rt.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let queue = Queue::open(dir.path())?;
//! let group = Some(GroupKey("public.orders/7".into()));
//! let accepted = queue
//!     .enqueue("orders", vec![
//!         NewMessage::new(group.clone(), br#"{"n":1}"#.to_vec()),
//!         NewMessage::new(group, br#"{"n":2}"#.to_vec()),
//!     ])
//!     .await?; // on disk now, and only now visible to its group
//! let g = &accepted[0].group;
//! assert_eq!(g.key(), Some("public.orders/7"));
//!
//! // The group actor takes the head run, delivers it, and acks or fails.
//! let run = queue.head_run("orders", g, 100, 1 << 20)?;
//! assert_eq!(run.len(), 2);
//! let error = LastError {
//!     class: ErrorClass::Retryable, status: Some(429), code: Some("rate_limited".into()),
//!     message: "slow down".into(), body: None, at_ms: 1_000,
//! };
//! let state = queue.fail("orders", run[0].id, error, 2_000)?;
//! assert_eq!(state.deliver_count, 1);
//! let failed = queue.list("orders", &ListFilter { state: StateFilter::Failed, ..Default::default() })?;
//! assert_eq!(failed.len(), 1);
//! queue.ack("orders", &[run[0].id, run[1].id])?;
//! assert_eq!(queue.counts("orders").delivered, 2);
//! assert_eq!(queue.total_pending(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

#[cfg(feature = "mimalloc")]
mod allocator;
mod bodies;
mod chunk;
mod codec;
mod error;
mod flusher;
mod idem;
mod index;
mod keys;
mod msgs;
mod parts;
mod prefetch;
mod queue;
mod shared_body;
mod sink;
#[cfg(feature = "test-util")]
pub mod testing;
mod types;
mod upgrade;
mod v1;

#[cfg(feature = "mimalloc")]
pub use allocator::{
    disable_huge_pages, huge_pages_disabled, purge_delay_ms, return_freed_memory_after,
    tune_mimalloc,
};
pub use error::QueueError;
pub use queue::{OpenTimes, Queue};
pub use sink::Paced;
pub use types::{
    Accepted, Counts, DeliveryId, DeliveryState, DiscardedMessage, EnqueueOutcome, Enqueued,
    GroupRef, Idempotency, ListFilter, MessageId, NewMessage, QueueOptions, RequestKey,
    SourcePosition, StateFilter, StoredMessage,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
