//! The request guard in front of every route.
//!
//! - **DNS rebinding**: `Host` must name this server: an IP address it listens on, `localhost`
//!   (when it listens on loopback or on every address), or a name in `server.allowed_hosts`;
//!   otherwise 421 `host_not_allowed`. A rebound name (`evil.example` resolving to
//!   127.0.0.1) fails this check, so a page on it can neither read nor write.
//! - **CSRF**: a state-changing request (anything but GET, HEAD, OPTIONS) whose
//!   `Sec-Fetch-Site` is not `same-origin`/`none`, or whose `Origin` is not this server's own
//!   origin, is refused with 403 `cross_site`, unless the origin is in
//!   `server.cors_allowed_origins`. Clients that send neither header (curl, the CLI,
//!   producers) are not affected. This holds with and without `api_token`.
//! - **CORS**: only for `server.cors_allowed_origins` (preflight answered, `Access-Control-*`
//!   headers added); no CORS headers otherwise.
//! - **One error shape**: every error response that is not already the API's JSON error (an
//!   extractor's, an unmatched method's, ...) is rewritten to `{"error":{"code","message"}}`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};

use super::error::{code_for, ApiError};
use super::{AppState, LiveSettings};

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The host name of a `Host` value, without port and IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `host` (a `Host` header value) names this server.
pub fn host_allowed(host: &str, listen: std::net::SocketAddr, allowed: &[String]) -> bool {
    let name = host_name(host);
    let listen_ip = listen.ip();
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        // An IP literal cannot be rebound.
        return listen_ip.is_unspecified()
            || ip == listen_ip
            || (ip.is_loopback() && listen_ip.is_loopback());
    }
    let local = listen_ip.is_loopback() || listen_ip.is_unspecified();
    if local && (name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost")) {
        return true;
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host))
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn request_host(req: &ServiceRequest) -> Option<String> {
    header_str(req.headers(), &header::HOST)
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

fn check_host(req: &ServiceRequest, state: &AppState, live: &LiveSettings) -> Option<ApiError> {
    // Browsers always send Host; a request without one (HTTP/1.0 tools) is not a browser's.
    let host = request_host(req)?;
    if host_allowed(&host, state.listen, &live.allowed_hosts) {
        return None;
    }
    Some(ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "host_not_allowed",
        format!(
            "Host `{}` does not name this server (listening on {}); use its address, localhost, \
             or add the name to server.allowed_hosts",
            shorten(&host),
            state.listen
        ),
    ))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The configured CORS origin this request comes from, if any.
fn cors_origin<'a>(req: &'a ServiceRequest, live: &LiveSettings) -> Option<&'a str> {
    let origin = header_str(req.headers(), &header::ORIGIN)?;
    let norm = origin.trim_end_matches('/').to_ascii_lowercase();
    live.cors_allowed_origins.contains(&norm).then_some(origin)
}

fn check_cross_site(req: &ServiceRequest, live: &LiveSettings) -> Option<ApiError> {
    if is_safe(req.method()) || cors_origin(req, live).is_some() {
        return None;
    }
    let headers = req.headers();
    let origin = header_str(headers, &header::ORIGIN);
    let refuse = |why: String| {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "refused a cross-site {} ({why}): state-changing requests must come from this \
                 server's own origin, from a non-browser client, or from an origin in \
                 server.cors_allowed_origins",
                req.method()
            ),
        ))
    };
    if let Some(site) = header_str(headers, &HeaderName::from_static("sec-fetch-site")) {
        let site = site.to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return refuse(format!(
                "Sec-Fetch-Site: {}{}",
                shorten(&site),
                origin
                    .map(|o| format!(", Origin: {}", shorten(o)))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(origin) = origin {
        let same = origin
            .split_once("://")
            .map(|(_, authority)| authority.trim_end_matches('/'))
            .zip(request_host(req))
            .is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(&host));
        if !same {
            return refuse(format!("Origin: {}", shorten(origin)));
        }
    }
    None
}

fn preflight(req: &ServiceRequest, live: &LiveSettings) -> Option<HttpResponse> {
    if req.method() != Method::OPTIONS
        || !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    Some(match cors_origin(req, live) {
        Some(origin) => HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, content-encoding, idempotency-key",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .insert_header((header::VARY, "Origin"))
            .finish(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "CORS preflight from origin `{}` refused: it is not in server.cors_allowed_origins",
                shorten(header_str(req.headers(), &header::ORIGIN).unwrap_or("(none)"))
            ),
        )
        .error_response(),
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, &header::CONTENT_TYPE)
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
}

/// Rewrites an error response that is not the API's JSON error into it, keeping its status
/// and headers (`Allow`, `Retry-After`, ...) and its text as the message.
async fn jsonify(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(res.headers()) {
        return res;
    }
    let (req, resp) = res.into_parts();
    let (head, body) = resp.into_parts();
    let text = actix_web::body::to_bytes(body)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        shorten(&text)
    };
    let mut out = ApiError::new(status, code_for(status), message).error_response();
    for (k, v) in head.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    ServiceResponse::new(req, out)
}

/// The middleware: see the module docs.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let live = state.live();
    let refusal = check_host(&req, &state, &live).or_else(|| check_cross_site(&req, &live));
    if let Some(err) = refusal {
        tracing::warn!(method = %req.method(), path = %req.path(), code = err.code, "request refused");
        return Ok(req.into_response(err.error_response()));
    }
    if let Some(resp) = preflight(&req, &live) {
        return Ok(req.into_response(resp));
    }
    let cors = cors_origin(&req, &live).map(str::to_string);
    let res = match next.call(req).await {
        Ok(res) => res.map_into_boxed_body(),
        // (No request to answer with here: return the error, in the JSON shape.)
        Err(e) => {
            let status = e.as_response_error().status_code();
            return Err(ApiError::new(status, code_for(status), e.to_string()).into());
        }
    };
    let mut res = jsonify(res).await;
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(origin) = cors.and_then(|o| HeaderValue::from_str(&o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_this_server_or_an_allowed_name() {
        let lo: std::net::SocketAddr = "127.0.0.1:7376".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:7376".parse().unwrap();
        let allowed = vec!["sink.internal".to_string()];
        assert!(host_allowed("127.0.0.1:7376", lo, &[]));
        assert!(host_allowed("localhost:7376", lo, &[]));
        assert!(host_allowed("LOCALHOST", lo, &[]));
        assert!(host_allowed("[::1]:7376", lo, &[]));
        assert!(!host_allowed("evil.example:7376", lo, &[]));
        assert!(!host_allowed("evil.example", lo, &allowed));
        assert!(host_allowed("Sink.Internal:7376", lo, &allowed));
        assert!(!host_allowed("10.0.0.5:7376", lo, &[]));
        assert!(host_allowed("10.0.0.5:7376", any, &[]));
        assert!(!host_allowed("rebind.example", any, &[]));
    }
}
