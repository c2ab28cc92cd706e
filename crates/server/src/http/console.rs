//! The web console, built into the binary (no CDN, works offline).

use actix_web::HttpResponse;

const INDEX_HTML: &str = include_str!("../../assets/console.html");

/// `GET /`
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}
