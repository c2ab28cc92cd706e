//! Sequin's change-message envelope: `{action, record, changes, metadata}`.
//!
//! The envelope is a typed *view* used for validation and grouping. Unknown fields are kept in
//! `extra` so that a message round-trips without losing anything; the bytes that reach S2 are
//! the producer's JSON (or the transform's output), not a re-serialization of this struct.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::CoreError;

/// One change message. Any JSON object is accepted; the Sequin fields are typed when present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// `insert`, `update`, `delete` or `read` for CDC messages; free-form otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The row (for a delete: the old row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Value>,
    /// Old values of changed columns for an update; `null` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Value>,
    /// Where the change came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Fields this struct does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Sequin's `metadata` object (`ConsumerEventData.Metadata`). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_lsn: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_idx: Option<Value>,
    /// Base64 of `"lsn:idx"` for CDC; carried into an S2 record header when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Primary-key values, stringified, in key-column order: the default group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_pks: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_annotations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Value>,
    /// Fields this struct does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Envelope {
    /// Reads the typed view of a JSON value, naming the field that has the wrong type.
    pub fn from_value(value: &Value) -> Result<Envelope, CoreError> {
        let obj = value
            .as_object()
            .ok_or_else(|| CoreError::InvalidEnvelope {
                field: "(message)".into(),
                reason: format!("expected a JSON object, got {}", json_type(value)),
            })?;
        check_type(obj, "action", |v| v.is_string() || v.is_null(), "a string")?;
        if let Some(Value::Object(meta)) = obj.get("metadata") {
            check_type(
                meta,
                "table_schema",
                |v| v.is_string() || v.is_null(),
                "a string",
            )
            .map_err(|e| prefix(e, "metadata."))?;
            check_type(
                meta,
                "table_name",
                |v| v.is_string() || v.is_null(),
                "a string",
            )
            .map_err(|e| prefix(e, "metadata."))?;
            check_type(
                meta,
                "record_pks",
                |v| v.is_array() || v.is_null(),
                "an array",
            )
            .map_err(|e| prefix(e, "metadata."))?;
            check_type(
                meta,
                "idempotency_key",
                |v| v.is_string() || v.is_null(),
                "a string",
            )
            .map_err(|e| prefix(e, "metadata."))?;
        } else if let Some(other) = obj.get("metadata") {
            if !other.is_null() {
                return Err(CoreError::InvalidEnvelope {
                    field: "metadata".into(),
                    reason: format!("expected an object, got {}", json_type(other)),
                });
            }
        }
        // Deserialize from the borrowed value: no copy of the whole message.
        Envelope::deserialize(value).map_err(|e| CoreError::InvalidEnvelope {
            field: "(message)".into(),
            reason: e.to_string(),
        })
    }

    /// `schema.table` when the metadata names a table.
    pub fn table(&self) -> Option<String> {
        let mut out = String::new();
        self.push_table(&mut out)?;
        Some(out)
    }

    /// Appends `schema.table` to `out` when the metadata names a table (else leaves it as it
    /// is): for keys that start with the table, built in one string.
    pub fn push_table(&self, out: &mut String) -> Option<()> {
        crate::GroupSource::of(self).push_table(out)
    }

    /// The envelope's idempotency key, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.metadata.as_ref()?.idempotency_key.as_deref()
    }
}

fn prefix(e: CoreError, p: &str) -> CoreError {
    match e {
        CoreError::InvalidEnvelope { field, reason } => CoreError::InvalidEnvelope {
            field: format!("{p}{field}"),
            reason,
        },
        other => other,
    }
}

fn check_type(
    obj: &Map<String, Value>,
    key: &str,
    ok: impl Fn(&Value) -> bool,
    expected: &str,
) -> Result<(), CoreError> {
    match obj.get(key) {
        Some(v) if !ok(v) => Err(CoreError::InvalidEnvelope {
            field: key.to_string(),
            reason: format!("expected {expected}, got {}", json_type(v)),
        }),
        _ => Ok(()),
    }
}

/// A JSON value's type name, for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "action": "update",
            "record": {"id": 1234, "status": "shipped", "price": "199.99"},
            "changes": {"status": "pending"},
            "metadata": {
                "table_schema": "public", "table_name": "orders",
                "commit_timestamp": "2024-10-28T21:39:21.127470Z",
                "commit_lsn": 123456790, "commit_idx": 1,
                "idempotency_key": "MTIzNDU2NzkwOjE=", "record_pks": ["1234"],
                "database_name": "myapp-prod", "transaction_annotations": null,
                "enrichment": null,
                "consumer": {"id": "f47ac10b", "name": "orders_s2", "annotations": {}},
                "database": {"id": "1234", "name": "myapp-prod"},
                "future_field": 7
            },
            "unknown_top": [1, 2]
        })
    }

    #[test]
    fn parses_sequin_envelope_and_keeps_unknown_fields() {
        let env = Envelope::from_value(&sample()).unwrap();
        assert_eq!(env.action.as_deref(), Some("update"));
        assert_eq!(env.table().as_deref(), Some("public.orders"));
        assert_eq!(env.idempotency_key(), Some("MTIzNDU2NzkwOjE="));
        let m = env.metadata.as_ref().unwrap();
        assert_eq!(m.extra.get("future_field"), Some(&json!(7)));
        assert_eq!(env.extra.get("unknown_top"), Some(&json!([1, 2])));
        let back = serde_json::to_value(&env).unwrap();
        assert_eq!(back["metadata"]["future_field"], json!(7));
        assert_eq!(back["unknown_top"], json!([1, 2]));
        assert_eq!(back["record"], sample()["record"]);
    }

    #[test]
    fn any_object_is_an_envelope() {
        let env = Envelope::from_value(&json!({"hello": "world"})).unwrap();
        assert!(env.action.is_none() && env.metadata.is_none());
        assert_eq!(env.extra["hello"], json!("world"));
    }

    #[test]
    fn rejects_non_objects_and_wrong_types_naming_the_field() {
        let e = Envelope::from_value(&json!([1])).unwrap_err().to_string();
        assert!(e.contains("expected a JSON object, got an array"), "{e}");
        let e = Envelope::from_value(&json!({"action": 5}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`action`") && e.contains("a number"), "{e}");
        let e = Envelope::from_value(&json!({"metadata": {"record_pks": "x"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata.record_pks"), "{e}");
        let e = Envelope::from_value(&json!({"metadata": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`metadata`"), "{e}");
    }
}
