//! The S2 operations a stream writer needs, behind a trait.
//!
//! Production uses [`S2Client`]; engine unit tests plug in an in-memory stream so backoff
//! scheduling can run under paused tokio time. End-to-end tests always use s2-lite.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use s2sink_client::{AppendAck, AppendInput, ReadLimits, S2Client, S2Error, SequencedRecord};

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Append, tail and read on S2 streams.
pub trait StreamIo: Send + Sync + 'static {
    /// Appends a batch atomically.
    fn append<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>>;
    /// Appends a batch so that batches of one stream submitted one after another reach S2 in
    /// that order, even while earlier ones are unanswered: the writer's pipelined appends.
    /// The batch is queued before this returns. The default sends a unary append when the
    /// future is first polled, which keeps no order between concurrent calls.
    fn append_ordered(
        self: Arc<Self>,
        basin: String,
        stream: String,
        input: Arc<AppendInput>,
    ) -> BoxFuture<'static, Result<AppendAck, S2Error>> {
        Box::pin(async move { self.append(&basin, &stream, &input).await })
    }
    /// The next sequence number the stream will assign.
    fn check_tail<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<u64, S2Error>>;
    /// Up to `count` records from `start` (empty at the tail).
    fn read<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>>;
}

impl StreamIo for S2Client {
    fn append<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
        input: &'a AppendInput,
    ) -> BoxFuture<'a, Result<AppendAck, S2Error>> {
        Box::pin(S2Client::append(self, basin, stream, input))
    }

    fn append_ordered(
        self: Arc<Self>,
        basin: String,
        stream: String,
        input: Arc<AppendInput>,
    ) -> BoxFuture<'static, Result<AppendAck, S2Error>> {
        S2Client::append_ordered(&self, &basin, &stream, input)
    }

    fn check_tail<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<u64, S2Error>> {
        Box::pin(async move { Ok(S2Client::check_tail(self, basin, stream).await?.seq_num) })
    }

    fn read<'a>(
        &'a self,
        basin: &'a str,
        stream: &'a str,
        start: u64,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<SequencedRecord>, S2Error>> {
        Box::pin(async move {
            let limits = ReadLimits {
                count: Some(count as u64),
                bytes: None,
            };
            S2Client::read(self, basin, stream, start, limits).await
        })
    }
}
