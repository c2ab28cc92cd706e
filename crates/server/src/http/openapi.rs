//! The OpenAPI 3 document of the HTTP API, served at `GET /api/openapi.json` (no token needed).
//!
//! Generated from the code by `utoipa`: every handler carries a `#[utoipa::path]` with its
//! parameters, request body and the status codes it returns; the response bodies are the view
//! types the handlers serialize ([`super::views`]). A test checks that every route registered
//! in [`super::configure`] is in the document, so a new route without docs fails.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::schema::{Action, IngestBody, IngestMessage, Order, StateFilter};
use super::views;

/// Adds the bearer scheme `api_token`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`server.api_token`: `Authorization: Bearer <token>` on every `/api` \
                         route when it is set (the document itself needs none)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "s2-sink",
        description = "Delivers JSON messages to S2 streams, exactly once per message and in order per group. See docs/API.md.\n\n\
Every error is `{\"error\":{\"code\",\"message\"}}` (schema `ErrorBody`). Besides the codes listed per operation, any route can answer: 405 `method_not_allowed` (with `Allow`) for a method it does not take, 421 `host_not_allowed` when `Host` does not name this server, and 400/408/431 for requests the HTTP codec cannot read. Unknown paths are 404 `not_found`."
    ),
    paths(
        super::metrics::healthz,
        super::metrics::metrics,
        super::console::index,
        super::console::script,
        openapi_json,
        super::manage::list_sinks,
        super::manage::get_sink,
        super::manage::list_messages,
        super::ingest::ingest,
        super::manage::get_message,
        super::manage::message_action,
        super::manage::redeliver_all,
        super::manage::reconcile_from_start,
        super::manage::discarded,
        super::manage::reload,
        super::sources::list_sources,
    ),
    components(schemas(views::ErrorBody, IngestBody, IngestMessage, Action, StateFilter, Order)),
    modifiers(&BearerAuth),
    tags(
        (name = "messages", description = "Ingest, list and manage messages"),
        (name = "sinks", description = "Sinks and their state"),
        (name = "streams", description = "Per-stream operations"),
        (name = "server", description = "Health, metrics, reload"),
        (name = "sources", description = "Built-in sources (Postgres replication slots)"),
        (name = "console", description = "The web console"),
    )
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /api/openapi.json`
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "server",
    summary = "This OpenAPI document (no token needed)",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The document is OpenAPI 3.x JSON and describes exactly the registered routes: a route
    /// added to `configure` without a `#[utoipa::path]` in [`super::ApiDoc`] fails here.
    #[test]
    fn document_is_openapi_3_and_lists_every_registered_route() {
        let doc: Value = serde_json::from_str(super::document()).expect("valid JSON");
        let version = doc["openapi"].as_str().expect("an `openapi` version");
        assert!(version.starts_with("3."), "{version}");
        let paths = doc["paths"].as_object().expect("paths");
        let mut registered = std::collections::BTreeSet::new();
        for (path, methods) in super::super::route_table() {
            for method in methods {
                let op = &paths
                    .get(&path)
                    .unwrap_or_else(|| panic!("{path} is registered but not in the document"))
                    [method.to_ascii_lowercase()];
                assert!(
                    op.is_object(),
                    "{method} {path} is registered but not in the document"
                );
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no responses"
                );
                registered.insert((path.clone(), method.to_ascii_lowercase()));
            }
        }
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    registered.contains(&(path.clone(), method.clone())),
                    "{method} {path} is documented but not registered"
                );
            }
        }
        // Every /api route but the document itself needs the token, and says so.
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                let needs = path.starts_with("/api/") && path != "/api/openapi.json";
                assert_eq!(secured, needs, "security of {method} {path}");
                if needs {
                    assert!(op["responses"]["401"].is_object(), "401 of {method} {path}");
                }
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["api_token"]["scheme"],
            "bearer"
        );
        let ingest = &paths["/api/sinks/{sink}/messages"]["post"];
        let body = &ingest["requestBody"]["content"];
        assert!(body["application/json"].is_object(), "{body}");
        assert!(body["application/x-ndjson"].is_object(), "{body}");
        for status in [
            "202", "400", "401", "404", "408", "413", "415", "422", "429", "503",
        ] {
            assert!(
                ingest["responses"][status].is_object(),
                "ingest documents no {status}"
            );
        }
        assert!(ingest["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    }
}
