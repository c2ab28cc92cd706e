//! The s2-sink server: the delivery engine (actix actors), the HTTP API, config and CLI.
//!
//! Glue only: delivery policy lives in `s2sink-core`, the S2 protocol in `s2sink-client`,
//! durability in `s2sink-queue` and user functions in `s2sink-transform`.

pub mod cli;
pub mod config;
pub mod engine;
mod error;
pub mod http;
pub mod serve;

pub use error::ServerError;
