//! JSON → Rhai → JSON is exact through an identity transform, for arbitrary JSON.

use proptest::prelude::*;
use s2sink_transform::{FunctionSource, Functions, FunctionsConfig, TransformSpec};
use serde_json::{Map, Number, Value};

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(i64::MIN)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MAX as u64 + 1)),
        Just(Value::from(0)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        Just(Value::from(-0.0)),
        Just(Value::from(f64::MIN_POSITIVE)),
        Just(Value::from(f64::MAX)),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn identity(code: &str) -> Functions {
    Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::Inline(code.into()))),
        ..Default::default()
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn record_round_trips_exactly(record in json()) {
        let f = identity("fn transform(action, record, changes, metadata) { record }");
        let msg = serde_json::json!({ "action": "insert", "record": record, "changes": null });
        let body = f.transform(&msg, None).unwrap();
        prop_assert_eq!(&*body, &msg["record"]);
        // Same bytes too: numbers keep their form and keys their order.
        prop_assert_eq!(body.to_string(), msg["record"].to_string());
    }

    #[test]
    fn whole_message_round_trips_exactly(
        record in json(), changes in json(), metadata in json(), action in json()
    ) {
        let f = identity(
            "fn transform(action, record, changes, metadata) {
                #{action: action, record: record, changes: changes, metadata: metadata}
            }",
        );
        let msg = serde_json::json!({
            "action": action, "record": record, "changes": changes, "metadata": metadata
        });
        let body = f.transform(&msg, None).unwrap();
        prop_assert_eq!(body.to_string(), msg.to_string());
    }
}
