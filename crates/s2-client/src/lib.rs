//! S2 REST client of s2-sink.
//!
//! A thin, retry-free client over reqwest (rustls) speaking S2's JSON API with
//! `s2-format: raw`: append (with `match_seq_num` / fencing), check tail, read, ensure
//! basin/stream, list streams. Failures are one typed [`S2Error`] that classifies itself with
//! sink-core's policy ([`S2Error::class`]) so the delivery engine decides about retries.
//! [`BatchLimits`] / [`BatchBuilder`] pack records into appends S2 accepts, refusing oversize
//! records before any network call. With the `test-util` feature, [`testing`] runs s2-lite
//! and a fault-injecting fake server for tests.

pub mod batch;
pub mod client;
pub mod config;
pub mod error;
mod h2c;
pub mod proto;
mod session;
mod session_http;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod text;
pub mod types;

pub use batch::{pack, BatchBuilder, BatchLimits, GroupCost, RecordCost, BATCH_JSON_OVERHEAD};
pub use client::S2Client;
pub use config::{AccessToken, Endpoint, S2Config};
pub use error::S2Error;
pub use text::Text;
pub use types::{
    AppendAck, AppendInput, AppendRecord, ReadLimits, SequencedRecord, StreamPosition,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
