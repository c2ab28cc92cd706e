//! Management routes: sinks, message listing and detail, acknowledge / redeliver / discard,
//! reload.

use actix_web::{web, HttpResponse};
use s2sink_core::GroupKey;
use s2sink_queue::{GroupRef, ListFilter, MessageId, StateFilter};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::views::{message_detail, message_summary, payload_json, sink_view};
use super::AppState;

type Res = Result<HttpResponse, ApiError>;

/// `GET /api/sinks`
pub async fn list_sinks(state: web::Data<AppState>) -> Res {
    let now = state.clock.now_millis();
    let sinks: Vec<_> = state.engine.sinks().map(|s| sink_view(s, now)).collect();
    Ok(HttpResponse::Ok().json(json!({ "sinks": sinks })))
}

/// `GET /api/sinks/{sink}`
pub async fn get_sink(state: web::Data<AppState>, path: web::Path<String>) -> Res {
    let shared = state.engine.sink(&path)?;
    Ok(HttpResponse::Ok().json(sink_view(shared, state.clock.now_millis())))
}

/// Query of the message listing.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub group: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<u64>,
    /// `oldest` (default) or `newest`.
    pub order: Option<String>,
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
pub async fn list_messages(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Res {
    let shared = state.engine.sink(&path)?;
    let newest_first = match query.order.as_deref().unwrap_or("oldest") {
        "oldest" => false,
        "newest" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown order `{other}`: use oldest or newest"
            )))
        }
    };
    let filter = ListFilter {
        state: parse_state(query.state.as_deref())?,
        group: query
            .group
            .as_ref()
            .map(|g| GroupRef::from(GroupKey(g.clone()))),
        after: query.after.map(MessageId),
        limit: query.limit.unwrap_or(50).clamp(1, 1000),
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
    let items: Vec<_> = msgs.iter().map(|m| message_summary(m, now)).collect();
    Ok(HttpResponse::Ok().json(json!({ "messages": items, "next_after": next })))
}

fn parse_id(raw: &str) -> Result<MessageId, ApiError> {
    raw.parse::<u64>()
        .map(MessageId)
        .map_err(|_| ApiError::bad_request(format!("message id `{raw}` is not a number")))
}

/// `GET /api/sinks/{sink}/messages/{id}`
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
    Ok(HttpResponse::Ok().json(json!({ "id": id.0, "action": action, "ok": true })))
}

/// `POST /api/sinks/{sink}/redeliver`
pub async fn redeliver_all(state: web::Data<AppState>, path: web::Path<String>) -> Res {
    let n = state.engine.redeliver(&path, None).await?;
    Ok(HttpResponse::Ok().json(json!({ "redelivered": n })))
}

/// `GET /api/sinks/{sink}/discarded`
pub async fn discarded(state: web::Data<AppState>, path: web::Path<String>) -> Res {
    let shared = state.engine.sink(&path)?;
    let now = state.clock.now_millis();
    let items: Vec<_> = shared
        .queue
        .discarded(&shared.name, 100)
        .map_err(crate::ServerError::from)?
        .iter()
        .map(|d| {
            let mut v = message_summary(&d.message, now);
            v["state"] = json!("discarded");
            v["discarded_at"] = json!(d.discarded_at);
            v["message"] = payload_json(&d.message);
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "messages": items })))
}

/// `POST /api/reload`
pub async fn reload(state: web::Data<AppState>) -> Res {
    let Some(path) = &state.config_path else {
        return Err(ApiError::bad_request(
            "the server was not started from a config file",
        ));
    };
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let config = crate::config::load(path, &env)?;
    state.engine.reload(config.sinks).await?;
    Ok(HttpResponse::Ok().json(json!({ "reloaded": true })))
}
