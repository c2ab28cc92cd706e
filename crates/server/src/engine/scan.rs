//! Reading a stream back for this sink's records: what reconciliations are made of (the
//! dead-letter step, and re-checking a stream an uncertain append went to).

use s2sink_client::S2Error;
use s2sink_core::Route;
use s2sink_queue::DeliveryId;

use super::io::StreamIo;
use super::writer::our_delivery_id;

/// The key of `sink`'s durable low-water mark on `route` (see the writer's `stream` module).
pub fn lwm_key(sink: &str, route: &Route) -> String {
    format!("{}{}/{}", lwm_prefix(sink), route.basin, route.stream)
}

/// The common prefix of every low-water mark of `sink`.
pub fn lwm_prefix(sink: &str) -> String {
    format!("lwm/{sink}/")
}

/// The stream's tail; 0 for a stream that does not exist (yet).
pub async fn tail_or_zero(io: &dyn StreamIo, route: &Route) -> Result<u64, S2Error> {
    match io.check_tail(&route.basin, &route.stream).await {
        Ok(t) => Ok(t),
        Err(e) if e.code() == Some("stream_not_found") => Ok(0),
        Err(e) => Err(e),
    }
}

/// The delivery ids of `sink`'s records in `[from, tail)`, in stream order.
pub async fn ours_between(
    io: &dyn StreamIo,
    sink: &str,
    route: &Route,
    from: u64,
    tail: u64,
) -> Result<Vec<DeliveryId>, S2Error> {
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
    Ok(found)
}
