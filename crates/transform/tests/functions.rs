//! Transform, filter and route functions on Sequin envelopes, and the whole `apply` path.

mod common;

use std::borrow::Cow;

use common::*;
use s2sink_core::Route;
use s2sink_transform::{
    Applied, FunctionKind, Functions, FunctionsConfig, TransformError, TransformSpec,
};
use serde_json::{json, Value};

#[test]
fn no_functions_delivers_the_message_unchanged_without_copying() {
    let f = Functions::compile(&FunctionsConfig::default()).unwrap();
    assert!(f.is_noop());
    let msg = envelope("insert");
    match f.apply(&msg, Some("m1")).unwrap() {
        Applied::Deliver { body, route } => {
            assert!(matches!(body, Cow::Borrowed(_)));
            assert_eq!(*body, msg);
            assert_eq!(route, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn identity_transform_on_every_action_keeps_the_record_and_its_key_order() {
    let f = with_transform("fn transform(action, record, changes, metadata) { record }");
    for action in ACTIONS {
        let msg = envelope(action);
        let body = f.transform(&msg, None).unwrap();
        assert_eq!(*body, msg["record"], "{action}");
        assert_eq!(body.to_string(), msg["record"].to_string(), "{action}");
    }
}

#[test]
fn whole_message_identity_keeps_nulls_and_order() {
    let f = with_transform(
        "fn transform(action, record, changes, metadata) {
            #{action: action, record: record, changes: changes, metadata: metadata}
        }",
    );
    for action in ACTIONS {
        let msg = envelope(action);
        let body = f.transform(&msg, None).unwrap();
        assert_eq!(body.to_string(), msg.to_string(), "{action}");
    }
}

#[test]
fn field_dropping_and_compressing_transform() {
    // The seed's fix for oversized records: drop one column, shorten another.
    let f = with_transform(
        r#"fn transform(action, record, changes, metadata) {
            record.remove("product");
            record.status = record.status?.sub_string(0, 3);
            record.table = metadata.table_name;
            record
        }"#,
    );
    let msg = envelope("update");
    let body = f.transform(&msg, Some("m-7")).unwrap();
    assert_eq!(body["status"], json!("shi"));
    assert_eq!(body["table"], json!("orders"));
    assert!(body.get("product").is_none());
    assert_eq!(body["id"], json!(1234));
    // Record keys keep their order; the new key follows.
    let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "id",
            "customer_id",
            "quantity",
            "price",
            "status",
            "created_at",
            "updated_at",
            "table"
        ]
    );
    // On a delete the nulls pass through the `?.` operator.
    let msg = envelope("delete");
    let body = f.transform(&msg, None).unwrap();
    assert_eq!(body["status"], Value::Null);
}

#[test]
fn transform_sees_each_action_and_changes() {
    let f = with_transform(
        r#"fn transform(action, record, changes, metadata) {
            #{ a: action, id: record["id"], old_status: changes?.status, lsn: metadata.commit_lsn,
               changed: if changes == () { 0 } else { changes.len() } }
        }"#,
    );
    let expect = [
        (
            "insert",
            json!({"a": "insert", "changed": 0, "id": 1234, "lsn": 123456790, "old_status": null}),
        ),
        (
            "update",
            json!({"a": "update", "changed": 2, "id": 1234, "lsn": 123456790, "old_status": "pending"}),
        ),
        (
            "delete",
            json!({"a": "delete", "changed": 0, "id": 1234, "lsn": 123456790, "old_status": null}),
        ),
        (
            "read",
            json!({"a": "read", "changed": 0, "id": 1234, "lsn": null, "old_status": null}),
        ),
    ];
    for (action, want) in expect {
        assert_eq!(
            *f.transform(&envelope(action), None).unwrap(),
            want,
            "{action}"
        );
    }
}

#[test]
fn missing_fields_are_passed_as_unit() {
    let f = with_transform(
        "fn transform(action, record, changes, metadata) {
            [action == (), record == (), changes == (), metadata == (), type_of(record)]
        }",
    );
    let msg = json!({"record": {"x": 1}});
    let body = f.transform(&msg, None).unwrap();
    assert_eq!(*body, json!([true, false, true, true, "map"]));
    let empty = json!({});
    let body = f.transform(&empty, None).unwrap();
    assert_eq!(*body, json!([true, true, true, true, "()"]));
}

#[test]
fn path_transforms() {
    let cases = [
        ("record", envelope("insert")["record"].clone()),
        ("record.id", json!(1234)),
        ("metadata.table_name", json!("orders")),
        ("changes.status", Value::Null),
        ("action", json!("insert")),
        ("record.nope.deeper", Value::Null),
    ];
    let msg = envelope("insert");
    for (path, want) in cases {
        let f = Functions::compile(&FunctionsConfig {
            transform: Some(TransformSpec::Path(path.into())),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(*f.transform(&msg, None).unwrap(), want, "{path}");
    }
    let f = Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Path("changes.status".into())),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        *f.transform(&envelope("update"), None).unwrap(),
        json!("pending")
    );
}

#[test]
fn invalid_path_is_a_load_error() {
    for bad in [
        "payload.id",
        "record[0]",
        "record.",
        &format!("record.{}", "a".repeat(2000)),
    ] {
        let err = Functions::compile(&FunctionsConfig {
            transform: Some(TransformSpec::Path(bad.to_string())),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.is_load_error(), "{bad}: {err}");
    }
}

#[test]
fn filter_true_and_false_on_every_action() {
    let f = with_filter(
        r#"fn filter(action, record, changes, metadata) {
            action != "delete" && metadata.table_name == "orders"
        }"#,
    );
    for action in ACTIONS {
        let msg = envelope(action);
        let want = action != "delete";
        assert_eq!(f.filter(&msg, None).unwrap(), want, "{action}");
        let applied = f.apply(&msg, None).unwrap();
        assert_eq!(matches!(applied, Applied::Filtered), !want, "{action}");
    }
}

#[test]
fn filter_returning_a_non_bool_is_an_error() {
    for (code, got) in [("1", "i64"), (r#""true""#, "string"), ("()", "()")] {
        let f = with_filter(&format!(
            "fn filter(action, record, changes, metadata) {{ {code} }}"
        ));
        let err = f.filter(&envelope("insert"), Some("msg-9")).unwrap_err();
        match &err {
            TransformError::InvalidOutput {
                kind,
                msg_id,
                reason,
            } => {
                assert_eq!(*kind, FunctionKind::Filter);
                assert_eq!(msg_id.as_deref(), Some("msg-9"));
                assert!(reason.contains("bool") && reason.contains(got), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("msg-9"), "{err}");
    }
}

#[test]
fn route_to_table_name_on_every_action() {
    let f = with_route(
        r#"fn route(action, record, changes, metadata) {
            #{basin: "logs-" + metadata.table_schema, stream: metadata.table_name}
        }"#,
    );
    for action in ACTIONS {
        let route = f.route(&envelope(action), None).unwrap();
        assert_eq!(
            route,
            Some(Route::new("logs-public", "orders").unwrap()),
            "{action}"
        );
    }
}

fn route_error(code: &str) -> Vec<String> {
    let f = with_route(&format!(
        "fn route(action, record, changes, metadata) {{ {code} }}"
    ));
    match f.route(&envelope("insert"), Some("r-1")).unwrap_err() {
        TransformError::InvalidRoute { msg_id, violations } => {
            assert_eq!(msg_id.as_deref(), Some("r-1"));
            violations
        }
        other => panic!("{code}: {other:?}"),
    }
}

#[test]
fn every_route_violation_is_named() {
    let v = route_error(r#"#{stream: "orders"}"#);
    assert_eq!(v, ["missing key `basin`"]);
    let v = route_error(r#"#{basin: "other-basin"}"#);
    assert_eq!(v, ["missing key `stream`"]);
    let v = route_error(r#"#{basin: 12345678, stream: "orders"}"#);
    assert!(
        v.len() == 1 && v[0].contains("`basin` must be a string") && v[0].contains("i64"),
        "{v:?}"
    );
    let v = route_error(r#"#{basin: "other-basin", stream: ()}"#);
    assert!(
        v.len() == 1 && v[0].contains("`stream` must be a string"),
        "{v:?}"
    );
    let v = route_error(r#"#{basin: "other-basin", stream: "orders", partition: 1}"#);
    assert_eq!(
        v,
        ["unexpected key `partition` (only `basin` and `stream` are allowed)"]
    );
    let v = route_error(r#"#{basin: "Bad_Basin", stream: "orders"}"#);
    assert!(
        v.len() == 1 && v[0].contains("invalid basin name \"Bad_Basin\""),
        "{v:?}"
    );
    let v = route_error(r#"#{basin: "short", stream: "orders"}"#);
    assert!(v[0].contains("at least 8"), "{v:?}");
    let v = route_error(r#"#{basin: "other-basin", stream: ""}"#);
    assert!(
        v.len() == 1 && v[0].contains("invalid stream name \"\"") && v[0].contains("empty"),
        "{v:?}"
    );
    let v = route_error(r#""other-basin/orders""#);
    assert!(v.len() == 1 && v[0].contains("must return a map"), "{v:?}");
    // Several violations at once are all reported.
    let v = route_error(r#"#{basin: "x", extra: 1}"#);
    assert_eq!(v.len(), 3, "{v:?}");
    let err = with_route(r#"fn route(a, r, c, m) { #{basin: "x", extra: 1} }"#)
        .route(&envelope("insert"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing key `stream`") && err.contains("`extra`") && err.contains("\"x\""),
        "{err}"
    );
}

#[test]
fn apply_runs_filter_route_and_transform() {
    let f = Functions::compile(&FunctionsConfig {
        filter: inline(r#"fn filter(action, record, changes, metadata) { action != "read" }"#),
        route: inline(
            r#"fn route(action, record, changes, metadata) { #{basin: "other-basin", stream: metadata.table_name} }"#,
        ),
        transform: Some(TransformSpec::Path("record.id".into())),
        ..Default::default()
    })
    .unwrap();
    assert!(!f.is_noop());
    assert_eq!(f.apply(&envelope("read"), None).unwrap(), Applied::Filtered);
    match f.apply(&envelope("update"), None).unwrap() {
        Applied::Deliver { body, route } => {
            assert_eq!(*body, json!(1234));
            assert_eq!(route.unwrap().to_string(), "other-basin/orders");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn runtime_errors_carry_kind_message_id_and_position() {
    let f = with_transform(
        "fn transform(action, record, changes, metadata) {\n    let x = 1;\n    x + \"a\" * 2\n}",
    );
    let err = f.transform(&envelope("insert"), Some("id-42")).unwrap_err();
    match &err {
        TransformError::Runtime {
            kind,
            msg_id,
            location,
            message,
        } => {
            assert_eq!(*kind, FunctionKind::Transform);
            assert_eq!(msg_id.as_deref(), Some("id-42"));
            assert_eq!(location.source, "inline transform");
            assert_eq!(location.line, Some(3), "{err}");
            assert!(location.column.is_some(), "{err}");
            assert!(message.contains("Function not found"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("id-42") && text.contains("line 3"), "{text}");

    let f = with_transform(r#"fn transform(a, r, c, m) { throw "no thanks" }"#);
    let err = f
        .transform(&envelope("insert"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no thanks") && err.contains("line 1"), "{err}");
}

#[test]
fn non_json_results_are_errors() {
    let f = with_transform("fn transform(a, r, c, m) { #{x: [1.0 / 0.0]} }");
    let err = f.transform(&envelope("insert"), None).unwrap_err();
    assert!(matches!(err, TransformError::InvalidOutput { .. }), "{err}");
    assert!(err.to_string().contains("$.x[0]"), "{err}");
    let f = with_transform("fn transform(a, r, c, m) { Fn(\"transform\") }");
    let err = f
        .transform(&envelope("insert"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no JSON form"), "{err}");
}

#[test]
fn big_integers_survive_and_can_be_stringified() {
    let f = with_transform(
        "fn transform(a, r, c, m) { #{same: r.big, text: r.big.to_string(), eq: r.big == r.big, max: r.max } }",
    );
    let msg = json!({"record": {"big": u64::MAX, "max": i64::MAX}});
    let body = f.transform(&msg, None).unwrap();
    assert_eq!(
        *body,
        json!({"same": u64::MAX, "text": "18446744073709551615", "eq": true, "max": i64::MAX})
    );
    let f = with_transform("fn transform(a, r, c, m) { r.big + 1 }");
    assert!(f.transform(&msg, None).is_err());
}

#[test]
fn functions_are_send_sync_clone_debug() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    check::<Functions>();
    check::<TransformError>();
    let f = with_filter("fn filter(a, r, c, m) { true }");
    assert!(format!("{f:?}").contains("filter: true"));
}
