//! The web console, built into the binary (no CDN, works offline), served with security
//! headers: a Content-Security-Policy without inline script (the script is `/console.js`),
//! no framing (`frame-ancestors 'none'`, `X-Frame-Options: DENY`), `nosniff`, no referrer.

use actix_web::http::header;
use actix_web::{HttpResponse, HttpResponseBuilder};

const INDEX_HTML: &str = include_str!("../../assets/console.html");
const CONSOLE_JS: &str = include_str!("../../assets/console.js");

/// The console's Content-Security-Policy. Styles stay inline (`style` attributes and one
/// `<style>` block); scripts only from this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn secured(mut b: HttpResponseBuilder) -> HttpResponseBuilder {
    b.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    b
}

/// `GET /`
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    summary = "The web console (HTML)",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String))
)]
pub async fn index() -> HttpResponse {
    secured(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

/// `GET /console.js`
#[utoipa::path(
    get,
    path = "/console.js",
    tag = "console",
    summary = "The web console's script",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String))
)]
pub async fn script() -> HttpResponse {
    secured(HttpResponse::Ok())
        .content_type("text/javascript; charset=utf-8")
        .body(CONSOLE_JS)
}
