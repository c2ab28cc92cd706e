//! The s2-sink server: the delivery engine (actix actors), the HTTP API, config and CLI.
//!
//! Glue only: delivery policy lives in `s2sink-core`, the S2 protocol in `s2sink-client`,
//! durability in `s2sink-queue` and user functions in `s2sink-transform`.
//!
//! Embedding the engine alone: depend on this crate with `default-features = false`; only
//! [`engine`] and [`ServerError`] remain (no actix-web, config loader or CLI).

#[cfg(feature = "server")]
pub mod check;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
pub mod engine;
mod error;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod sources;

pub use error::ServerError;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
