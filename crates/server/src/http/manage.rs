//! Management routes: sinks, message listing and detail, acknowledge / redeliver / discard,
//! reload.

use actix_web::{web, HttpRequest, HttpResponse};
use s2sink_core::GroupKey;
use s2sink_queue::{GroupRef, ListFilter, MessageId, StateFilter};

use super::error::ApiError;
use super::params::Params;
use super::views::{
    message_detail, message_summary, payload_json, sink_view, ActionDone, DiscardedMessage,
    DiscardedPage, ErrorBody, MessageDetail, MessagePage, Reconciling, Redelivered, Reloaded,
    SinkPage, SinkView,
};
use super::AppState;

type Res = Result<HttpResponse, ApiError>;

/// `GET /api/sinks?limit=&after=`: sinks by name, a page at a time (`after` = the previous
/// page's `next_after`).
#[utoipa::path(
    get,
    path = "/api/sinks",
    tag = "sinks",
    summary = "List sinks",
    params(
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Sinks per page (1-1000, default 1000)"),
        ("after" = Option<String>, Query, description = "The previous page's `next_after`"),
    ),
    responses(
        (status = 200, description = "A page of sinks by name", body = SinkPage),
        (status = 400, description = "Unknown or repeated query parameter, or `limit` out of range", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list_sinks(state: web::Data<AppState>, req: HttpRequest) -> Res {
    let params = Params::parse(&req, &["limit", "after"])?;
    let limit = params.int("limit", 1, 1000, 1000)? as usize;
    let after = params.str("after");
    let now = state.clock.now_millis();
    let mut page: Vec<_> = state
        .engine
        .sinks()
        .filter(|s| after.is_none_or(|a| s.name.as_str() > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|s| s.name.clone())
    } else {
        None
    };
    let sinks: Vec<_> = page.into_iter().map(|s| sink_view(s, now)).collect();
    Ok(HttpResponse::Ok().json(SinkPage {
        sinks,
        next_after: next,
    }))
}

/// `GET /api/sinks/{sink}`
#[utoipa::path(
    get,
    path = "/api/sinks/{sink}",
    tag = "sinks",
    summary = "One sink: config (S2 token redacted), counts, health, last error",
    params(super::schema::SinkParam),
    responses(
        (status = 200, description = "The sink", body = SinkView),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_sink(state: web::Data<AppState>, path: web::Path<String>) -> Res {
    let shared = state.engine.sink(&path)?;
    Ok(HttpResponse::Ok().json(sink_view(shared, state.clock.now_millis())))
}

fn parse_state(s: Option<&str>) -> Result<StateFilter, ApiError> {
    Ok(match s.unwrap_or("all") {
        "all" => StateFilter::All,
        "pending" => StateFilter::Pending,
        "backing_off" => StateFilter::BackingOff,
        "failed" | "failing" => StateFilter::Failed,
        // One append is in flight per group at most; it shows as pending until acked.
        "delivering" => StateFilter::Pending,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown state `{other}`: use pending, delivering, backing_off, failed or all"
            )))
        }
    })
}

/// `GET /api/sinks/{sink}/messages`
#[utoipa::path(
    get,
    path = "/api/sinks/{sink}/messages",
    tag = "messages",
    summary = "List the messages in a sink's queue",
    params(
        super::schema::SinkParam,
        ("state" = Option<super::schema::StateFilter>, Query, description = "Only messages in this state (default `all`; `delivering` lists as `pending`, `failing` = `failed`)"),
        ("group" = Option<String>, Query, description = "Only this group's messages"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Messages per page (1-1000, default 50)"),
        ("after" = Option<u64>, Query, minimum = 0, description = "The previous page's `next_after`"),
        ("order" = Option<super::schema::Order>, Query, description = "`oldest` (default) or `newest` first"),
    ),
    responses(
        (status = 200, description = "A page of messages (no payloads)", body = MessagePage),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
        (status = 503, description = "`storage`: the queue could not be read", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list_messages(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Res {
    let shared = state.engine.sink(&path)?;
    let query = Params::parse(&req, &["state", "group", "limit", "after", "order"])?;
    let newest_first = match query.str("order").unwrap_or("oldest") {
        "oldest" => false,
        "newest" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown order `{other}`: use oldest or newest"
            )))
        }
    };
    let filter = ListFilter {
        state: parse_state(query.str("state"))?,
        group: query
            .str("group")
            .map(|g| GroupRef::from(GroupKey(g.to_string()))),
        after: query.cursor("after")?.map(MessageId),
        limit: query.int("limit", 1, 1000, 50)? as usize,
        newest_first,
    };
    let now = state.clock.now_millis();
    let msgs = shared
        .queue
        .list(&shared.name, &filter)
        .map_err(crate::ServerError::from)?;
    let next = if msgs.len() == filter.limit {
        msgs.last().map(|m| m.id.0)
    } else {
        None
    };
    let messages: Vec<_> = msgs.iter().map(|m| message_summary(m, now)).collect();
    Ok(HttpResponse::Ok().json(MessagePage {
        messages,
        next_after: next,
    }))
}

/// A message id from the path: an integer from 0 to `i64::MAX` (as documented: `int64`).
fn parse_id(raw: &str) -> Result<MessageId, ApiError> {
    match raw.parse::<u64>() {
        Ok(n) if n <= i64::MAX as u64 => Ok(MessageId(n)),
        _ => Err(ApiError::bad_request(format!(
            "message id `{raw}` is not an integer from 0 to {}",
            i64::MAX
        ))),
    }
}

/// `GET /api/sinks/{sink}/messages/{id}`
#[utoipa::path(
    get,
    path = "/api/sinks/{sink}/messages/{id}",
    tag = "messages",
    summary = "One queued message with its payload and what delivery would do with it",
    params(super::schema::SinkParam, super::schema::IdParam),
    responses(
        (status = 200, description = "The message", body = MessageDetail),
        (status = 400, description = "`id` is not an integer from 0 to 2^63-1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 404, description = "`unknown_sink`, or `unknown_message` (not in the queue: delivered, discarded or never accepted)", body = ErrorBody),
        (status = 503, description = "`storage`: the queue could not be read", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_message(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Res {
    let (sink, id) = path.into_inner();
    let shared = state.engine.sink(&sink)?;
    let id = parse_id(&id)?;
    let msg = shared
        .queue
        .get(&sink, id)
        .map_err(crate::ServerError::from)?
        .ok_or_else(|| crate::ServerError::UnknownMessage {
            sink: sink.clone(),
            id: id.0,
        })?;
    Ok(HttpResponse::Ok().json(message_detail(shared, &msg, state.clock.now_millis())))
}

/// `POST /api/sinks/{sink}/messages/{id}/{action}`
#[utoipa::path(
    post,
    path = "/api/sinks/{sink}/messages/{id}/{action}",
    tag = "messages",
    summary = "Acknowledge (drop as delivered), redeliver now, or discard one queued message",
    params(
        super::schema::SinkParam,
        super::schema::IdParam,
        ("action" = super::schema::Action, Path, description = "What to do with the message"),
    ),
    responses(
        (status = 200, description = "Done", body = ActionDone),
        (status = 400, description = "`id` is not an integer from 0 to 2^63-1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 403, description = "`cross_site`: a browser request from another site", body = ErrorBody),
        (status = 404, description = "`unknown_sink`, `unknown_message`, or an unknown action", body = ErrorBody),
        (status = 503, description = "`shutting_down` or `storage`", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn message_action(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Res {
    let (sink, id, action) = path.into_inner();
    let id = parse_id(&id)?;
    match action.as_str() {
        "acknowledge" => state.engine.acknowledge(&sink, id).await?,
        "discard" => state.engine.discard(&sink, id).await?,
        "redeliver" => {
            state.engine.redeliver(&sink, Some(id)).await?;
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action `{other}`: use acknowledge, redeliver or discard"
            )))
        }
    }
    Ok(HttpResponse::Ok().json(ActionDone {
        id: id.0,
        action,
        ok: true,
    }))
}

/// `POST /api/sinks/{sink}/redeliver`
#[utoipa::path(
    post,
    path = "/api/sinks/{sink}/redeliver",
    tag = "messages",
    summary = "Make every failing or backing-off message of a sink ready now",
    params(super::schema::SinkParam),
    responses(
        (status = 200, description = "Done", body = Redelivered),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 403, description = "`cross_site`: a browser request from another site", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
        (status = 503, description = "`shutting_down` or `storage`", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn redeliver_all(state: web::Data<AppState>, path: web::Path<String>) -> Res {
    let n = state.engine.redeliver(&path, None).await?;
    Ok(HttpResponse::Ok().json(Redelivered { redelivered: n }))
}

/// `POST /api/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start`: the way out of a
/// corrupt low-water mark (see `Engine::reconcile_from_start`).
#[utoipa::path(
    post,
    path = "/api/sinks/{sink}/streams/{basin}/{stream}/reconcile-from-start",
    tag = "streams",
    summary = "Make the next reconcile of a stream read it from its first record",
    description = "The way out of a corrupt low-water mark: the sink's next reconcile of this stream reads it from sequence number 0 instead of the stored mark.",
    params(
        super::schema::SinkParam,
        ("basin" = String, Path, description = "S2 basin name"),
        ("stream" = String, Path, description = "S2 stream name"),
    ),
    responses(
        (status = 200, description = "Done", body = Reconciling),
        (status = 400, description = "Invalid basin or stream name", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 403, description = "`cross_site`: a browser request from another site", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
        (status = 503, description = "`shutting_down` or `storage`", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn reconcile_from_start(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Res {
    let (sink, basin, stream) = path.into_inner();
    let route = s2sink_core::Route::new(basin, stream)
        .map_err(|e| ApiError::bad_request(format!("invalid stream: {e}")))?;
    state.engine.reconcile_from_start(&sink, &route).await?;
    Ok(HttpResponse::Ok().json(Reconciling {
        stream: route.to_string(),
        reconcile_from: 0,
    }))
}

/// Payload bytes after which a discarded page stops (at least one message is always shown), so
/// one answer stays bounded even with 16 MiB messages.
const DISCARDED_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// `GET /api/sinks/{sink}/discarded?limit=&before=`: newest first, a page at a time
/// (`before` = the previous page's `next_before`).
#[utoipa::path(
    get,
    path = "/api/sinks/{sink}/discarded",
    tag = "messages",
    summary = "The newest discarded messages with their payloads, newest first",
    params(
        super::schema::SinkParam,
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "Messages per page (1-100, default 20)"),
        ("before" = Option<u64>, Query, minimum = 0, description = "The previous page's `next_before`"),
    ),
    responses(
        (status = 200, description = "A page of discarded messages", body = DiscardedPage),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 404, description = "`unknown_sink`", body = ErrorBody),
        (status = 503, description = "`storage`: the queue could not be read", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn discarded(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Res {
    let shared = state.engine.sink(&path)?;
    let params = Params::parse(&req, &["limit", "before"])?;
    let limit = params.int("limit", 1, 100, 20)? as usize;
    let before = params.cursor("before")?;
    let now = state.clock.now_millis();
    // The queue lists the newest n; read more only as far as the cursor needs.
    let mut n = limit + 1;
    let page = loop {
        let all = shared
            .queue
            .discarded(&shared.name, n)
            .map_err(crate::ServerError::from)?;
        let exhausted = all.len() < n;
        let page: Vec<_> = all
            .into_iter()
            .filter(|d| before.is_none_or(|b| d.seq < b))
            .take(limit + 1)
            .collect();
        if page.len() > limit || exhausted {
            break page;
        }
        n *= 2;
    };
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut next = None;
    for (i, d) in page.iter().enumerate() {
        if i == limit || (i > 0 && bytes + d.message.payload.len() > DISCARDED_PAGE_BYTES) {
            next = page.get(i.saturating_sub(1)).map(|p| p.seq);
            break;
        }
        bytes += d.message.payload.len();
        let mut summary = message_summary(&d.message, now);
        summary.state = "discarded";
        items.push(DiscardedMessage {
            summary,
            discarded_at: d.discarded_at,
            message: payload_json(&d.message),
        });
    }
    Ok(HttpResponse::Ok().json(DiscardedPage {
        messages: items,
        next_before: next,
    }))
}

/// `POST /api/reload`: sink settings and functions, plus the `[server]` keys that apply live;
/// 422 naming the keys that need a restart (nothing applied then).
#[utoipa::path(
    post,
    path = "/api/reload",
    tag = "server",
    summary = "Re-read the config file",
    description = "Applies sink settings and functions, plus the `[server]` keys that change live. A change to any other `[server]` key refuses the whole reload (422) and applies nothing.",
    responses(
        (status = 200, description = "Reloaded", body = Reloaded),
        (status = 400, description = "The server was not started from a config file", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API token (when `server.api_token` is set)", body = ErrorBody),
        (status = 403, description = "`cross_site`: a browser request from another site", body = ErrorBody),
        (status = 422, description = "`invalid_config`: the file is invalid, or changes a key only a restart applies; nothing was applied", body = ErrorBody),
        (status = 503, description = "`shutting_down` or `storage`", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn reload(state: web::Data<AppState>) -> Res {
    let applied = state.reload().await?;
    tracing::info!(server_keys = ?applied, "config reloaded");
    Ok(HttpResponse::Ok().json(Reloaded {
        reloaded: true,
        server_keys_applied: applied,
    }))
}
