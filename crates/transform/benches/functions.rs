//! Calls per second of `Functions::apply` on one core for the common configurations.
//!
//! Run: `cargo bench -p s2sink-transform --bench functions -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use s2sink_transform::{FunctionSource, Functions, FunctionsConfig, TransformSpec};
use serde_json::{json, Value};

/// A Sequin update envelope whose record serializes to about 1 KB.
fn message() -> Value {
    let mut record = serde_json::Map::new();
    record.insert("id".into(), json!(1234));
    record.insert("customer_id".into(), json!(789));
    record.insert("product".into(), json!("Wireless Headphones"));
    record.insert("quantity".into(), json!(1));
    record.insert("price".into(), json!("199.99"));
    record.insert("status".into(), json!("shipped"));
    record.insert("created_at".into(), json!("2024-10-28T21:37:01.127470Z"));
    record.insert("updated_at".into(), json!("2024-10-28T21:39:21.127470Z"));
    record.insert("notes".into(), json!("x".repeat(400)));
    for i in 0..12 {
        record.insert(
            format!("attr_{i:02}"),
            json!(format!("value number {i} of the record")),
        );
    }
    let msg = json!({
        "action": "update",
        "record": record,
        "changes": { "status": "pending", "updated_at": "2024-10-28T21:37:01.127470Z" },
        "metadata": {
            "table_schema": "public", "table_name": "orders",
            "commit_timestamp": "2024-10-28T21:39:21.127470Z", "commit_lsn": 123456790, "commit_idx": 1,
            "idempotency_key": "MTIzNDU2NzkwOjE=", "record_pks": ["1234"], "database_name": "myapp-prod",
            "transaction_annotations": null, "enrichment": null,
            "consumer": { "id": "f47ac10b-58cc-4372-a567-0e02b2c3d479", "name": "orders_s2", "annotations": {} },
            "database": { "id": "12345678-9abc-def0-1234-56789abcdef0", "name": "myapp-prod",
                          "annotations": {}, "database": "myapp-prod", "hostname": "db.example.com" }
        }
    });
    let size = msg["record"].to_string().len();
    assert!((900..1200).contains(&size), "record is {size} bytes");
    msg
}

const FIVE_LINES: &str = r#"fn transform(action, record, changes, metadata) {
    record.remove("notes");
    record.status = record.status.to_upper();
    record.table = metadata.table_name;
    record.old_status = changes?.status;
    record
}"#;

const ROUTE: &str = r#"fn route(action, record, changes, metadata) {
    #{basin: "logs-" + metadata.table_schema, stream: metadata.table_name}
}"#;

fn bench(c: &mut Criterion) {
    let msg = message();
    let configs = [
        ("a_no_transform", FunctionsConfig::default()),
        (
            "b_path_record_id",
            FunctionsConfig {
                transform: Some(TransformSpec::Path("record.id".into())),
                ..Default::default()
            },
        ),
        (
            "c_five_line_transform_1kb",
            FunctionsConfig {
                transform: Some(TransformSpec::Function(FunctionSource::Inline(
                    FIVE_LINES.into(),
                ))),
                ..Default::default()
            },
        ),
        (
            "d_route_function",
            FunctionsConfig {
                route: Some(FunctionSource::Inline(ROUTE.into())),
                ..Default::default()
            },
        ),
    ];
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    for (name, config) in configs {
        let f = Functions::compile(&config).unwrap();
        f.apply(&msg, None).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let applied = f.apply(black_box(&msg), Some("m")).unwrap();
                black_box(applied);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
