//! Failures s2-lite cannot produce, served by a fake HTTP server on 127.0.0.1.

use std::time::Duration;

use s2sink_client::testing::{FakeReply, FakeServer};
use s2sink_client::{AppendInput, AppendRecord, S2Client, S2Config, S2Error};
use s2sink_core::ErrorClass;

const TOKEN: &str = "tok-SECRET-5f2c9a";

fn input() -> AppendInput {
    AppendInput::new(vec![
        AppendRecord::new(r#"{"k":1}"#).with_header("msg-id", "a")
    ])
    .with_match_seq_num(3)
}

fn assert_no_token(err: &S2Error) {
    let shown = format!("{err} | {err:?} | {:?}", err.to_last_error());
    assert!(!shown.contains(TOKEN), "token leaked: {shown}");
}

/// Appends through a fake server answering `reply`, with a token configured.
async fn append_via(reply: FakeReply) -> (S2Error, FakeServer) {
    let server = FakeServer::start(reply).await;
    let client = S2Client::new(
        server
            .config()
            .with_access_token(TOKEN)
            .with_request_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    let err = client
        .append("test-basin", "a/b.c", &input())
        .await
        .unwrap_err();
    assert_no_token(&err);
    (err, server)
}

#[tokio::test]
async fn request_shape_headers_token_and_percent_encoded_path() {
    let (_, server) = append_via(FakeReply::json(
        401,
        r#"{"code":"authn","message":"bad token"}"#,
    ))
    .await;
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        r.request_line(),
        "POST /v1/streams/a%2Fb.c/records HTTP/1.1"
    );
    assert_eq!(r.header("s2-basin"), Some("test-basin"));
    assert_eq!(r.header("s2-format"), Some("raw"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("authorization").map(str::to_owned),
        Some(format!("Bearer {TOKEN}"))
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"records":[{"headers":[["msg-id","a"]],"body":"{\"k\":1}"}],"match_seq_num":3})
    );
}

#[tokio::test]
async fn unauthorized_401_needs_attention() {
    let body = r#"{"code":"authn","message":"bad token"}"#;
    let (err, _s) = append_via(FakeReply::json(401, body)).await;
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.code(), Some("authn"));
    assert_eq!(err.body(), Some(body));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
}

#[tokio::test]
async fn forbidden_403_needs_attention() {
    let (err, _s) = append_via(FakeReply::json(
        403,
        r#"{"code":"permission_denied","message":"no"}"#,
    ))
    .await;
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.code(), Some("permission_denied"));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
}

#[tokio::test]
async fn rate_limited_429_is_retryable_with_retry_after() {
    let (err, _s) = append_via(
        FakeReply::json(429, r#"{"code":"rate_limited","message":"slow down"}"#)
            .with_header("Retry-After", "2")
            .with_header("retry-after-ms", "2500"),
    )
    .await;
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(!err.may_have_applied());
    assert_eq!(err.retry_after(), Some(Duration::from_millis(2500)));

    let (err, _s) = append_via(
        FakeReply::json(429, r#"{"code":"rate_limited","message":"slow down"}"#)
            .with_header("Retry-After", "3"),
    )
    .await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // A date ~2 minutes ahead (IMF-fixdate, as S2 or a gateway may send it).
    let ahead = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    let (err, _s) = append_via(
        FakeReply::json(503, r#"{"code":"server_draining","message":"bye"}"#)
            .with_header("Retry-After", &ahead),
    )
    .await;
    assert_eq!(err.class(), ErrorClass::Retryable);
    let wait = err.retry_after().expect("Retry-After date ignored");
    assert!(
        wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
        "{ahead} -> {wait:?}"
    );

    // A date in the past: retry now.
    let (err, _s) = append_via(
        FakeReply::json(503, r#"{"code":"server_draining","message":"bye"}"#)
            .with_header("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT"),
    )
    .await;
    assert_eq!(err.retry_after(), Some(Duration::ZERO));
}

#[tokio::test]
async fn internal_500_outcome_unknown() {
    let body = r#"{"code":"storage","message":"disk on fire"}"#;
    let (err, _s) = append_via(FakeReply::json(500, body)).await;
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
    assert!(err.may_have_applied());
    assert_eq!(err.body(), Some(body));
    assert!(err.to_string().contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn unavailable_503_by_code() {
    let (err, _s) = append_via(
        FakeReply::json(503, r#"{"code":"server_draining","message":"bye"}"#)
            .with_header("retry-after-ms", "150"),
    )
    .await;
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert_eq!(err.retry_after(), Some(Duration::from_millis(150)));
    let (err, _s) = append_via(FakeReply::json(
        503,
        r#"{"code":"unavailable","message":"try later"}"#,
    ))
    .await;
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
}

#[tokio::test]
async fn proxy_502_non_json_body_kept_verbatim() {
    let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let (err, _s) = append_via(FakeReply::text(502, page)).await;
    assert!(matches!(err, S2Error::Http { status: 502, .. }), "{err:?}");
    assert_eq!(err.body(), Some(page));
    assert_eq!(err.code(), None);
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
    let last = err.to_last_error();
    assert_eq!(last.status, Some(502));
    assert_eq!(last.body.as_deref(), Some(page));
}

#[tokio::test]
async fn request_timeout_is_outcome_unknown() {
    let (err, server) = append_via(FakeReply::Hang).await;
    assert!(matches!(err, S2Error::Timeout { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
    assert!(err.may_have_applied());
    assert_eq!(err.status(), None);
    // The request did reach the server before the timeout.
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn reset_connection_is_outcome_unknown() {
    let (err, server) = append_via(FakeReply::Reset).await;
    assert!(matches!(err, S2Error::Transport { .. }), "{err:?} / {err}");
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
    assert!(err.may_have_applied());
    assert!(!server.requests().is_empty());
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = S2Client::new(
        S2Config::direct(format!("http://127.0.0.1:{port}")).with_access_token(TOKEN),
    )
    .unwrap();
    let err = client
        .append("test-basin", "s", &input())
        .await
        .unwrap_err();
    assert!(matches!(err, S2Error::Connect { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(!err.may_have_applied());
    assert_no_token(&err);
}

#[tokio::test]
async fn token_not_in_client_or_config_debug() {
    let config = S2Config::cloud(TOKEN);
    let client = S2Client::new(config.clone()).unwrap();
    for shown in [
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{config:#?}"),
    ] {
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}

#[tokio::test]
async fn read_and_tail_errors_parse_too() {
    let server = FakeServer::start(FakeReply::json(
        404,
        r#"{"code":"stream_not_found","message":"stream `s` not found"}"#,
    ))
    .await;
    let client = server.client();
    let err = client.check_tail("test-basin", "s").await.unwrap_err();
    assert_eq!(err.code(), Some("stream_not_found"));
    let err = client
        .read("test-basin", "s", 0, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("stream_not_found"));
    let reqs = server.requests();
    assert_eq!(
        reqs[0].request_line(),
        "GET /v1/streams/s/records/tail HTTP/1.1"
    );
    assert_eq!(
        reqs[1].request_line(),
        "GET /v1/streams/s/records?seq_num=0&count=1000 HTTP/1.1"
    );
}

#[tokio::test]
async fn garbled_success_body_is_outcome_unknown() {
    let server = FakeServer::start(FakeReply::json(200, "not json")).await;
    let err = server
        .client()
        .append("test-basin", "s", &input())
        .await
        .unwrap_err();
    assert!(
        matches!(err, S2Error::Decode { status: 200, .. }),
        "{err:?}"
    );
    assert!(err.may_have_applied());
}
