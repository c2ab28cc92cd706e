//! Reading a stream back for this sink's records: what every reconciliation is made of (the
//! stream writers', the dead-letter step's, and re-checking a stream an uncertain append went
//! to), with the record headers that name the sink and the message, and the marks' format.

use s2sink_client::S2Error;
use s2sink_core::Route;
use s2sink_queue::{DeliveryId, Queue, QueueError};

use super::io::StreamIo;

/// Record header naming the sink that wrote the record.
pub const HEADER_SINK: &str = "s2sink-sink";
/// Record header carrying the message's [`DeliveryId`] (`<epoch hex>-<id>`, or the plain
/// decimal id for messages accepted before epochs existed).
pub const HEADER_ID: &str = "s2sink-id";

/// The key of `sink`'s durable low-water mark on `route` (see the writer's `stream` module).
pub fn lwm_key(sink: &str, route: &Route) -> String {
    format!("{}{}/{}", lwm_prefix(sink), route.basin, route.stream)
}

/// The common prefix of every low-water mark of `sink`.
pub fn lwm_prefix(sink: &str) -> String {
    format!("lwm/{sink}/")
}

/// Every stream `sink` has a low-water mark on, with the stored mark (not decoded: its
/// writer refuses a corrupt one and reports it). Keys that do not name a valid route are
/// skipped.
pub fn marked_routes(queue: &Queue, sink: &str) -> Result<Vec<(Route, Vec<u8>)>, QueueError> {
    let prefix = lwm_prefix(sink);
    Ok(queue
        .markers_with_prefix(&prefix)?
        .into_iter()
        .filter_map(|(k, v)| {
            let (basin, stream) = k[prefix.len()..].split_once('/')?;
            Some((Route::new(basin, stream).ok()?, v))
        })
        .collect())
}

/// The stream's tail; 0 for a stream that does not exist (yet).
pub async fn tail_or_zero(io: &dyn StreamIo, route: &Route) -> Result<u64, S2Error> {
    match io.check_tail(&route.basin, &route.stream).await {
        Ok(t) => Ok(t),
        Err(e) if e.code() == Some("stream_not_found") => Ok(0),
        Err(e) => Err(e),
    }
}

/// A stored low-water mark: exactly 8 big-endian bytes, `None` for anything else (reading back
/// from a wrong place could miss records).
pub fn decode_mark(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// The delivery ids of `sink`'s records in `[from, tail)`, in stream order, and the position
/// after the last record read (at least `tail` unless the stream ended early; `from` when
/// nothing was read).
pub async fn ours_between(
    io: &dyn StreamIo,
    sink: &str,
    route: &Route,
    from: u64,
    tail: u64,
) -> Result<(Vec<DeliveryId>, u64), S2Error> {
    let mut pos = from;
    let mut found = Vec::new();
    while pos < tail {
        let records = io.read(&route.basin, &route.stream, pos, 1000).await?;
        let Some(last) = records.last() else { break };
        pos = last.seq_num + 1;
        found.extend(
            records
                .iter()
                .filter_map(|r| our_delivery_id(sink, &r.headers)),
        );
    }
    Ok((found, pos))
}

/// The delivery id in a record's headers when the record was written by `sink`.
pub fn our_delivery_id(sink: &str, headers: &[(String, String)]) -> Option<DeliveryId> {
    let mut is_ours = false;
    let mut id = None;
    for (k, v) in headers {
        if k == HEADER_SINK {
            is_ours = v == sink;
        } else if k == HEADER_ID {
            id = DeliveryId::parse(v);
        }
    }
    if is_ours {
        id
    } else {
        None
    }
}

/// The queue message id (without epoch) in a record's headers when the record was written by
/// `sink`: what the ingest API returned for it. Unique within one data directory's history.
pub fn our_id(sink: &str, headers: &[(String, String)]) -> Option<u64> {
    our_delivery_id(sink, headers).map(|d| d.id.0)
}
