//! Integration tests against a real s2-lite on 127.0.0.1 (one server per test, unique basins).

use s2sink_client::testing::{unique_name, LiteServer};
use s2sink_client::{
    pack, AppendInput, AppendRecord, BatchLimits, ReadLimits, S2Client, S2Config, S2Error,
    StreamPosition,
};
use s2sink_core::ErrorClass;

fn record(i: usize) -> AppendRecord {
    AppendRecord::new(format!(r#"{{"k":{i},"s":"quote \" and ü"}}"#))
        .with_header("content-type", "application/json")
        .with_header("msg-id", format!("m{i}"))
}

#[tokio::test]
async fn create_append_read_back_and_tail() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("events").await;
    // Ensure is idempotent: the second call finds both.
    assert!(!client.ensure_basin(&basin, None).await.unwrap());
    assert!(!client.ensure_stream(&basin, &stream, None).await.unwrap());
    assert_eq!(
        client.check_tail(&basin, &stream).await.unwrap(),
        StreamPosition {
            seq_num: 0,
            timestamp: 0
        }
    );
    // Empty stream reads as empty (S2 answers 416).
    assert!(client
        .read(&basin, &stream, 0, ReadLimits::default())
        .await
        .unwrap()
        .is_empty());

    let mut records: Vec<_> = (0..3).map(record).collect();
    records.push(AppendRecord::new("")); // no headers, empty body
    let ack = client
        .append(&basin, &stream, &AppendInput::new(records.clone()))
        .await
        .unwrap();
    assert_eq!((ack.start.seq_num, ack.end.seq_num), (0, 4));
    assert_eq!(ack.tail.seq_num, 4);

    let ack2 = client
        .append(
            &basin,
            &stream,
            &AppendInput::new(vec![record(4)]).with_match_seq_num(4),
        )
        .await
        .unwrap();
    assert_eq!(ack2.start.seq_num, 4);
    records.push(record(4));

    let read = client
        .read(&basin, &stream, 0, ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(read.len(), 5);
    for (i, (got, sent)) in read.iter().zip(&records).enumerate() {
        assert_eq!(got.seq_num, i as u64);
        let sent_headers: Vec<(String, String)> = sent
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got.headers, sent_headers);
        assert_eq!(got.body, sent.body);
    }
    let limited = client
        .read(
            &basin,
            &stream,
            1,
            ReadLimits {
                count: Some(2),
                bytes: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        limited.iter().map(|r| r.seq_num).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let tail = client.check_tail(&basin, &stream).await.unwrap();
    assert_eq!(tail.seq_num, 5);
    assert!(client
        .read(&basin, &stream, 5, ReadLimits::default())
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .read(&basin, &stream, 99, ReadLimits::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn wrong_match_seq_num_and_fencing_token_are_412_with_actual_values() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("cond").await;
    client
        .append(
            &basin,
            &stream,
            &AppendInput::new(vec![record(0), record(1)]),
        )
        .await
        .unwrap();
    let err = client
        .append(
            &basin,
            &stream,
            &AppendInput::new(vec![record(2)]).with_match_seq_num(0),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            S2Error::SeqNumMismatch {
                expected: Some(0),
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(412));
    assert_eq!(err.code(), Some("seq_num_mismatch"));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
    assert!(!err.may_have_applied());

    let err = client
        .append(
            &basin,
            &stream,
            &AppendInput::new(vec![record(2)]).with_fencing_token("w1"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, S2Error::FencingTokenMismatch { actual, .. } if actual.is_empty()),
        "{err:?}"
    );
    // Nothing was appended by the refused requests.
    assert_eq!(client.check_tail(&basin, &stream).await.unwrap().seq_num, 2);
}

#[tokio::test]
async fn missing_stream_and_basin_are_404_with_codes() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let basin = lite.fresh_basin().await;
    let err = client
        .append(&basin, "nope", &AppendInput::new(vec![record(0)]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert_eq!(err.code(), Some("stream_not_found"));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(err.body().unwrap().contains("stream_not_found"));

    let missing = unique_name("missing");
    let err = client.check_tail(&missing, "x").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert_eq!(err.code(), Some("basin_not_found"));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
    let last = err.to_last_error();
    assert_eq!(last.code.as_deref(), Some("basin_not_found"));
    assert_eq!(last.status, Some(404));
}

#[tokio::test]
async fn batch_of_1001_records_is_422_and_builder_splits_it() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("big").await;
    let records: Vec<_> = (0..1001)
        .map(|i| AppendRecord::new(i.to_string()))
        .collect();
    let err = client
        .append(&basin, &stream, &AppendInput::new(records.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err:?}");
    assert_eq!(err.code(), Some("invalid"));
    assert_eq!(err.class(), ErrorClass::NeedsAttention);

    let batches = pack(records).unwrap();
    assert_eq!(batches.len(), 2);
    for b in batches {
        client
            .append(&basin, &stream, &AppendInput::new(b))
            .await
            .unwrap();
    }
    assert_eq!(
        client.check_tail(&basin, &stream).await.unwrap().seq_num,
        1001
    );
}

#[tokio::test]
async fn record_of_exactly_one_mib_accepted_one_byte_more_refused_locally() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("mib").await;
    let exact = AppendRecord::new("a".repeat(1_048_564)).with_header("h", "v");
    assert_eq!(exact.metered_size(), 1_048_576);
    let batches = pack([exact]).unwrap();
    let ack = client
        .append(&basin, &stream, &AppendInput::new(batches[0].clone()))
        .await
        .unwrap();
    assert_eq!(ack.end.seq_num, 1);

    let over = AppendRecord::new("a".repeat(1_048_565)).with_header("h", "v");
    let err = pack([over]).unwrap_err();
    assert!(
        matches!(
            err,
            S2Error::RecordTooLarge {
                index: 0,
                metered: 1_048_577,
                limit: 1_048_576
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("1048577") && msg.contains("1048576"), "{msg}");
    assert_eq!(err.class(), ErrorClass::NeedsAttention);
    assert_eq!(client.check_tail(&basin, &stream).await.unwrap().seq_num, 1);
}

#[tokio::test]
async fn json_cap_keeps_escaped_bodies_under_lite_body_limit() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("escaped").await;
    // Control characters escape to 6 JSON bytes: 1000 such records are ~6 MB of JSON but
    // only ~1 MB metered, which s2-lite would refuse as one body.
    let records = vec![AppendRecord::new("\u{1}".repeat(1000)); 1000];
    // A separate client (connection pool): after s2-lite refuses a body mid-upload, hyper may
    // report the broken connection to the next request queued on it.
    let oversize_client = S2Client::new(S2Config::direct(lite.endpoint())).unwrap();
    let whole = oversize_client
        .append(&basin, &stream, &AppendInput::new(records.clone()))
        .await
        .unwrap_err();
    // s2-lite answers 400 `bad_json` once its 2 MiB buffer is full and closes the connection,
    // so the client sees either that 400 or a broken pipe while still sending.
    assert!(
        whole.status() == Some(400) || matches!(whole, S2Error::Transport { .. }),
        "{whole:?}"
    );
    assert_eq!(client.check_tail(&basin, &stream).await.unwrap().seq_num, 0);
    let batches = BatchLimits::default().pack(records).unwrap();
    assert!(batches.len() >= 3, "{}", batches.len());
    for b in batches {
        client
            .append(&basin, &stream, &AppendInput::new(b))
            .await
            .unwrap();
    }
    assert_eq!(
        client.check_tail(&basin, &stream).await.unwrap().seq_num,
        1000
    );
    let back = client
        .read(&basin, &stream, 999, ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(back[0].body, "\u{1}".repeat(1000));
}

#[tokio::test]
async fn stream_name_with_slash_and_listing() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let (basin, stream) = lite.fresh_stream("a/b.c").await;
    client.ensure_stream(&basin, "a/other", None).await.unwrap();
    client.ensure_stream(&basin, "zzz", None).await.unwrap();
    let ack = client
        .append(&basin, &stream, &AppendInput::new(vec![record(0)]))
        .await
        .unwrap();
    assert_eq!(ack.end.seq_num, 1);
    let read = client
        .read(&basin, &stream, 0, ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(read[0].body, record(0).body);
    assert_eq!(
        client.list_streams(&basin, "a/").await.unwrap(),
        vec!["a/b.c".to_string(), "a/other".to_string()]
    );
    assert_eq!(client.list_streams(&basin, "").await.unwrap().len(), 3);
}

#[tokio::test]
async fn basin_config_create_stream_on_append() {
    let lite = LiteServer::start().await;
    let client = lite.client();
    let basin = unique_name("auto");
    let created = client
        .ensure_basin(
            &basin,
            Some(&serde_json::json!({"create_stream_on_append": true})),
        )
        .await
        .unwrap();
    assert!(created);
    let ack = client
        .append(
            &basin,
            "auto-created",
            &AppendInput::new(vec![record(0).with_timestamp(1)]),
        )
        .await
        .unwrap();
    assert_eq!(ack.start.seq_num, 0);
}
