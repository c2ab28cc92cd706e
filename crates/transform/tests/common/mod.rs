//! Shared fixtures: Sequin envelopes (sequin-semantics.md §2.3) and helpers.
#![allow(dead_code)]

use s2sink_transform::{FunctionSource, Functions, FunctionsConfig, TransformSpec};
use serde_json::{json, Value};

pub fn metadata() -> Value {
    json!({
        "table_schema": "public",
        "table_name": "orders",
        "commit_timestamp": "2024-10-28T21:39:21.127470Z",
        "commit_lsn": 123456790,
        "commit_idx": 1,
        "idempotency_key": "MTIzNDU2NzkwOjE=",
        "record_pks": ["1234"],
        "database_name": "myapp-prod",
        "transaction_annotations": null,
        "enrichment": null,
        "consumer": { "id": "f47ac10b-58cc-4372-a567-0e02b2c3d479", "name": "orders_s2", "annotations": {} },
        "database": { "id": "12345678-9abc-def0-1234-56789abcdef0", "name": "myapp-prod",
                      "annotations": {}, "database": "myapp-prod", "hostname": "db.example.com" }
    })
}

pub fn record() -> Value {
    json!({
        "id": 1234, "customer_id": 789, "product": "Wireless Headphones", "quantity": 1,
        "price": "199.99", "status": "shipped",
        "created_at": "2024-10-28T21:37:01.127470Z", "updated_at": "2024-10-28T21:39:21.127470Z"
    })
}

/// A Sequin envelope for `action` (insert, update, delete, read).
pub fn envelope(action: &str) -> Value {
    let changes = if action == "update" {
        json!({ "status": "pending", "updated_at": "2024-10-28T21:37:01.127470Z" })
    } else {
        Value::Null
    };
    let mut meta = metadata();
    if action == "read" {
        meta["commit_lsn"] = Value::Null;
        meta["commit_idx"] = Value::Null;
    }
    let record = if action == "delete" {
        json!({ "id": 1234, "customer_id": null, "product": null, "quantity": null,
                "price": null, "status": null, "created_at": null, "updated_at": null })
    } else {
        record()
    };
    json!({ "action": action, "record": record, "changes": changes, "metadata": meta })
}

pub const ACTIONS: [&str; 4] = ["insert", "update", "delete", "read"];

pub fn inline(code: &str) -> Option<FunctionSource> {
    Some(FunctionSource::Inline(code.to_string()))
}

pub fn with_transform(code: &str) -> Functions {
    Functions::compile(&FunctionsConfig {
        transform: Some(TransformSpec::Function(FunctionSource::Inline(code.into()))),
        ..Default::default()
    })
    .unwrap()
}

pub fn with_filter(code: &str) -> Functions {
    Functions::compile(&FunctionsConfig {
        filter: inline(code),
        ..Default::default()
    })
    .unwrap()
}

pub fn with_route(code: &str) -> Functions {
    Functions::compile(&FunctionsConfig {
        route: inline(code),
        ..Default::default()
    })
    .unwrap()
}
