//! Message groups: which messages must reach S2 in order relative to each other.
//!
//! As in Sequin the effective key is the table plus the group value, so the same primary key
//! in two tables never collides. The key's text form is what the queue stores and the API shows.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Envelope;

/// Per-table group columns: `"schema.table"` → column names.
pub type GroupColumns = HashMap<String, Vec<String>>;

/// A group's canonical key. Messages with equal keys are delivered strictly in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupKey(pub String);

impl GroupKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Derives a message's group.
    ///
    /// - an explicit group from the producer wins (non-CDC producers);
    /// - else, for a CDC message, `schema.table/` plus the configured group columns' values
    ///   joined with `:` (nulls skipped), falling back to `metadata.record_pks` joined with `:`;
    /// - else no group: the message is delivered on its own, unordered.
    pub fn derive(
        envelope: &Envelope,
        explicit: Option<&str>,
        group_columns: &GroupColumns,
    ) -> Option<GroupKey> {
        Self::derive_from(&GroupSource::of(envelope), explicit, group_columns)
    }

    /// [`GroupKey::derive`] from the fields it reads, borrowed: ingest reads them from a
    /// message's text without building an [`Envelope`].
    pub fn derive_from(
        source: &GroupSource<'_>,
        explicit: Option<&str>,
        group_columns: &GroupColumns,
    ) -> Option<GroupKey> {
        if let Some(g) = explicit {
            return (!g.is_empty()).then(|| GroupKey(g.to_string()));
        }
        // Built in one string (`table/` then the values), not from parts joined and
        // formatted: derived for every message ingested.
        let mut key = String::with_capacity(64);
        source.push_table(&mut key)?;
        let table_len = key.len();
        key.push('/');
        let mut from_columns = false;
        if let Some(cols) = group_columns.get(&key[..table_len]) {
            if let Some(record) = source.record.and_then(Value::as_object) {
                let values = cols.iter().filter_map(|c| record.get(c));
                for v in values.filter(|v| !v.is_null()) {
                    if from_columns {
                        key.push(':');
                    }
                    push_value_text(&mut key, v);
                    from_columns = true;
                }
            }
        }
        if !from_columns {
            for (i, v) in source.record_pks?.iter().enumerate() {
                if i > 0 {
                    key.push(':');
                }
                push_value_text(&mut key, v);
            }
            if key.len() == table_len + 1 {
                return None;
            }
        }
        Some(GroupKey(key))
    }
}

/// The fields of a message a group is derived from ([`GroupKey::derive_from`]), borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupSource<'a> {
    /// `metadata.table_schema`.
    pub table_schema: Option<&'a str>,
    /// `metadata.table_name`.
    pub table_name: Option<&'a str>,
    /// `record` (read only when the table has group columns).
    pub record: Option<&'a Value>,
    /// `metadata.record_pks`.
    pub record_pks: Option<&'a [Value]>,
}

impl<'a> GroupSource<'a> {
    /// The fields of a parsed envelope.
    pub fn of(envelope: &'a Envelope) -> GroupSource<'a> {
        let meta = envelope.metadata.as_ref();
        GroupSource {
            table_schema: meta.and_then(|m| m.table_schema.as_deref()),
            table_name: meta.and_then(|m| m.table_name.as_deref()),
            record: envelope.record.as_ref(),
            record_pks: meta.and_then(|m| m.record_pks.as_deref()),
        }
    }

    /// Appends `schema.table` to `out` when a table is named (else leaves it as it is): the
    /// table's text form, for keys that start with it and for display.
    pub fn push_table(&self, out: &mut String) -> Option<()> {
        let name = self.table_name?;
        if let Some(schema) = self.table_schema {
            out.push_str(schema);
            out.push('.');
        }
        out.push_str(name);
        Some(())
    }
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group value as key text: a string as it is, anything else as its JSON.
fn push_value_text(key: &mut String, v: &Value) {
    use std::fmt::Write;
    match v {
        Value::String(s) => key.push_str(s),
        // Writing to a `String` cannot fail.
        other => write!(key, "{other}").expect("writing to a String"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(v: Value) -> Envelope {
        Envelope::from_value(&v).unwrap()
    }

    #[test]
    fn default_group_is_table_plus_pks() {
        let e = env(json!({"record": {"id": 7},
            "metadata": {"table_schema": "public", "table_name": "orders", "record_pks": ["7", "abc"]}}));
        assert_eq!(
            GroupKey::derive(&e, None, &GroupColumns::new()).unwrap().0,
            "public.orders/7:abc"
        );
    }

    #[test]
    fn same_pk_in_two_tables_differs() {
        let a = env(
            json!({"metadata": {"table_schema": "public", "table_name": "a", "record_pks": [1]}}),
        );
        let b = env(
            json!({"metadata": {"table_schema": "public", "table_name": "b", "record_pks": [1]}}),
        );
        let cols = GroupColumns::new();
        assert_ne!(
            GroupKey::derive(&a, None, &cols),
            GroupKey::derive(&b, None, &cols)
        );
    }

    #[test]
    fn group_columns_override_and_fall_back_to_pk_when_null() {
        let mut cols = GroupColumns::new();
        cols.insert("public.orders".into(), vec!["user_id".into(), "org".into()]);
        let e = env(json!({"record": {"id": 1, "user_id": 42, "org": null},
            "metadata": {"table_schema": "public", "table_name": "orders", "record_pks": ["1"]}}));
        assert_eq!(
            GroupKey::derive(&e, None, &cols).unwrap().0,
            "public.orders/42"
        );
        let e = env(json!({"record": {"id": 1, "user_id": null},
            "metadata": {"table_schema": "public", "table_name": "orders", "record_pks": ["1"]}}));
        assert_eq!(
            GroupKey::derive(&e, None, &cols).unwrap().0,
            "public.orders/1"
        );
    }

    #[test]
    fn values_are_their_text_and_an_empty_key_is_no_group() {
        let cols = GroupColumns::new();
        let with_pks = |pks: Value| {
            let e = env(json!({"metadata": {"table_name": "t", "record_pks": pks}}));
            GroupKey::derive(&e, None, &cols).map(|k| k.0)
        };
        assert_eq!(
            with_pks(json!([1.5, true, "x", {"a": [1]}])).as_deref(),
            Some("t/1.5:true:x:{\"a\":[1]}")
        );
        assert_eq!(with_pks(json!(["", ""])).as_deref(), Some("t/:"));
        assert_eq!(with_pks(json!([""])), None);
        assert_eq!(with_pks(json!([])), None);
        // A group column whose value is an empty string still groups (by table alone).
        let mut by_col = GroupColumns::new();
        by_col.insert("t".into(), vec!["org".into()]);
        let e =
            env(json!({"record": {"org": ""}, "metadata": {"table_name": "t", "record_pks": [9]}}));
        assert_eq!(GroupKey::derive(&e, None, &by_col).unwrap().0, "t/");
    }

    #[test]
    fn explicit_group_wins_and_no_table_means_no_group() {
        let e = env(json!({"hello": 1}));
        let cols = GroupColumns::new();
        assert_eq!(
            GroupKey::derive(&e, Some("user-9"), &cols).unwrap().0,
            "user-9"
        );
        assert_eq!(GroupKey::derive(&e, None, &cols), None);
        assert_eq!(GroupKey::derive(&e, Some(""), &cols), None);
        let no_pks = env(json!({"metadata": {"table_name": "t"}}));
        assert_eq!(GroupKey::derive(&no_pks, None, &cols), None);
    }
}
