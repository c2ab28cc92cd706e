//! Append sessions against a real s2-lite on 127.0.0.1: order, acks, failures, reopening.

use std::sync::Arc;

use s2sink_client::testing::{read_all, LiteServer};
use s2sink_client::{AppendInput, AppendRecord, S2Client, S2Config, S2Error};
use s2sink_core::ErrorClass;

fn batch(from: usize, n: usize) -> AppendInput {
    AppendInput::new(
        (from..from + n)
            .map(|i| {
                AppendRecord::new(format!(r#"{{"k":{i},"s":"quote \" and ü"}}"#))
                    .with_header("msg-id", format!("m{i}"))
            })
            .collect(),
    )
}

/// (seq num, `msg-id` header, body) of every record in the stream.
async fn records(lite: &LiteServer, basin: &str, stream: &str) -> Vec<(u64, String, String)> {
    read_all(&lite.client(), basin, stream)
        .await
        .into_iter()
        .map(|r| (r.seq_num, r.headers[0].1.clone(), r.body))
        .collect()
}

#[tokio::test]
async fn pipelined_appends_land_in_submission_order_with_their_acks() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("session").await;
    // 50 appends of 20 records, all submitted before any is awaited, each chained to the
    // previous one by match_seq_num: any reordering on the way would be a 412.
    let replies: Vec<_> = (0..50)
        .map(|k| {
            let input = batch(k * 20, 20).with_match_seq_num(k as u64 * 20);
            client.append_ordered(&basin, &stream, Arc::new(input))
        })
        .collect();
    assert_eq!(client.open_sessions(), 1);
    for (k, reply) in replies.into_iter().enumerate() {
        let ack = reply.await.unwrap_or_else(|e| panic!("append {k}: {e}"));
        assert_eq!(
            (ack.start.seq_num, ack.end.seq_num),
            (k as u64 * 20, k as u64 * 20 + 20)
        );
    }
    let records = records(&lite, &basin, &stream).await;
    assert_eq!(records.len(), 1000);
    for (i, (seq, id, body)) in records.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(id, &format!("m{i}"));
        assert_eq!(body, &format!(r#"{{"k":{i},"s":"quote \" and ü"}}"#));
    }
}

#[tokio::test]
async fn a_failed_append_ends_the_session_and_nothing_behind_it_lands() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("session-fail").await;
    let ok = client.append_ordered(&basin, &stream, Arc::new(batch(0, 2).with_match_seq_num(0)));
    // Wrong position: the stream will be at 2, not 5.
    let bad = client.append_ordered(&basin, &stream, Arc::new(batch(2, 2).with_match_seq_num(5)));
    let behind =
        client.append_ordered(&basin, &stream, Arc::new(batch(4, 2).with_match_seq_num(7)));
    assert_eq!(ok.await.unwrap().end.seq_num, 2);
    match bad.await {
        Err(S2Error::SeqNumMismatch {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (Some(5), 2)),
        other => panic!("expected a 412 for the bad append, got {other:?}"),
    }
    let e = behind
        .await
        .expect_err("the append behind a failure fails too");
    assert_eq!(e.class(), ErrorClass::OutcomeUnknown, "{e}");
    assert_eq!(e.code(), Some("session_ended"));
    assert_eq!(records(&lite, &basin, &stream).await.len(), 2);

    // The next append opens a new session and goes through.
    let ack = client
        .append_ordered(&basin, &stream, Arc::new(batch(2, 3).with_match_seq_num(2)))
        .await
        .unwrap();
    assert_eq!((ack.start.seq_num, ack.end.seq_num), (2, 5));
    assert_eq!(records(&lite, &basin, &stream).await.len(), 5);
}

#[tokio::test]
async fn a_missing_stream_is_s2s_error_not_a_hang() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, _) = lite.fresh_stream("exists").await;
    let e = client
        .append_ordered(&basin, "no-such-stream", Arc::new(batch(0, 1)))
        .await
        .expect_err("404");
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.class(), ErrorClass::NeedsAttention, "{e}");
}

#[tokio::test]
async fn nothing_listening_fails_the_append_as_not_sent() {
    // Port 9 (discard): nothing listens there on the test machines.
    let client = S2Client::new(S2Config::direct("http://127.0.0.1:9")).unwrap();
    let e = client
        .append_ordered("basin-x", "stream-x", Arc::new(batch(0, 1)))
        .await
        .expect_err("nothing to connect to");
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
}

#[tokio::test]
async fn with_sessions_off_ordered_appends_are_unary() {
    let lite = LiteServer::start().await;
    let config = S2Config::direct(lite.endpoint()).with_append_session(false);
    let client = S2Client::new(config).unwrap();
    let (basin, stream) = lite.fresh_stream("unary").await;
    let ack = client
        .append_ordered(&basin, &stream, Arc::new(batch(0, 3).with_match_seq_num(0)))
        .await
        .unwrap();
    assert_eq!(ack.end.seq_num, 3);
    assert_eq!(client.open_sessions(), 0);
    assert_eq!(records(&lite, &basin, &stream).await.len(), 3);
}
