//! What ingest reads from a message given as text, without building its JSON tree.
//!
//! Grouping and deduplication need a handful of fields (`metadata.table_schema`,
//! `table_name`, `record_pks`, `idempotency_key`, `group_id`, and `record` only when the sink
//! groups by columns). [`light_envelope`] reads exactly those from the producer's text in one
//! pass, borrowing strings where it can, and checks the types [`Envelope::from_value`] checks.
//! Anything unusual (a field of the wrong type, a duplicate metadata field, an escaped key)
//! makes it answer `None`, and the caller takes the full path (parse the tree, then
//! [`Envelope::from_value`]), so errors and results are exactly the full path's.

use std::borrow::Cow;
use std::fmt;

use s2sink_core::envelope::{Envelope, Metadata};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The envelope fields ingest needs, or `None` when the full path must decide. `with_record`:
/// also parse `record` (the sink groups by columns). `group_id`: `metadata.group_id` when it
/// is a string.
pub fn light_envelope(raw: &str, with_record: bool) -> Option<(Envelope, Option<String>)> {
    let top: Top = serde_json::from_str(raw).ok()?;
    if let Some(action) = top.action {
        if !(action.get().starts_with('"') || action.get() == "null") {
            return None;
        }
    }
    let record = match top.record {
        Some(r) if with_record => Some(serde_json::from_str::<Value>(r.get()).ok()?),
        _ => None,
    };
    let mut group_id = None;
    let metadata = match top.metadata {
        None => None,
        Some(m) if m.get() == "null" => None,
        Some(m) if m.get().starts_with('{') => {
            let meta: Meta = serde_json::from_str(m.get()).ok()?;
            if let Some(g) = meta.group_id {
                if g.get().starts_with('"') {
                    group_id = Some(serde_json::from_str::<String>(g.get()).ok()?);
                }
            }
            Some(Metadata {
                table_schema: meta.table_schema.map(Cow::into_owned),
                table_name: meta.table_name.map(Cow::into_owned),
                idempotency_key: meta.idempotency_key.map(Cow::into_owned),
                record_pks: meta.record_pks,
                ..Metadata::default()
            })
        }
        Some(_) => return None,
    };
    let envelope = Envelope {
        record,
        metadata,
        ..Envelope::default()
    };
    Some((envelope, group_id))
}

/// Whether `raw` is exactly one JSON value that a `serde_json::Value` parse accepts (the same
/// parser paths: numbers in range, escapes and surrogates, the nesting limit), without
/// building it: strings are visited in place, nothing is kept.
pub fn valid_json(raw: &str) -> bool {
    serde_json::from_str::<Valid>(raw).is_ok()
}

/// Any JSON value, checked as [`Value`] would be and dropped.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Valid;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_unit<E>(self) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_none<E>(self) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
                while seq.next_element::<Valid>()?.is_some() {}
                Ok(Valid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
                while map.next_key::<Valid>()?.is_some() {
                    map.next_value::<Valid>()?;
                }
                Ok(Valid)
            }
        }
        d.deserialize_any(V)
    }
}

/// The top level: must be an object; the three fields kept as raw text, the rest skipped.
#[derive(Default)]
struct Top<'a> {
    action: Option<&'a RawValue>,
    record: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top::default();
                // A key with escapes cannot be borrowed: an error, and the full path decides.
                while let Some(key) = map.next_key::<&'de str>()? {
                    // As in the full path (serde_json's map), the last duplicate wins.
                    match key {
                        "action" => top.action = Some(map.next_value()?),
                        "record" => top.record = Some(map.next_value()?),
                        "metadata" => top.metadata = Some(map.next_value()?),
                        // Checked as a tree parse would (numbers, escapes, nesting).
                        _ => {
                            map.next_value::<Valid>()?;
                        }
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

/// `metadata`, with every field [`Metadata`] types as a string or an array checked the same
/// way (a wrong type is an error here, and the full path names it).
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    table_schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    record_pks: Option<Vec<Value>>,
    #[serde(borrow, default)]
    group_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    commit_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    database_name: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2sink_core::GroupKey;

    /// The full path: what ingest did before (and still does when the light one declines).
    fn full(raw: &str) -> Result<(Envelope, Option<String>), String> {
        let value: Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let env = Envelope::from_value(&value).map_err(|e| e.to_string())?;
        let g = value
            .pointer("/metadata/group_id")
            .and_then(|g| g.as_str())
            .map(str::to_string);
        Ok((env, g))
    }

    #[test]
    fn agrees_with_the_full_path_or_declines() {
        let mut cols = s2sink_core::group::GroupColumns::new();
        cols.insert(
            "public.cols".to_string(),
            vec!["a".to_string(), "b".to_string()],
        );
        let cases = [
            r#"{"action":"insert","record":{"id":1,"pad":"xx"},"changes":null,"metadata":{"table_schema":"public","table_name":"bench","record_pks":["1"]}}"#,
            r#"{"record":{"a":1,"b":"x"},"metadata":{"table_schema":"public","table_name":"cols","record_pks":[7]}}"#,
            r#"{"metadata":{"table_name":"t","record_pks":[1,"a\"b"],"idempotency_key":"k\n1","group_id":"g"}}"#,
            r#"{"metadata":{"table_name":"t","group_id":5}}"#,
            r#"{"metadata":null,"action":null}"#,
            r#"{"metadata":{"table_name":"a"},"metadata":{"table_name":"b"}}"#,
            r#"{"action":5}"#,
            r#"{"metadata":[1]}"#,
            r#"{"metadata":{"table_name":1}}"#,
            r#"{"metadata":{"commit_timestamp":1}}"#,
            r#"{"metadata":{"database_name":[]}}"#,
            r#"{"metadata":{"record_pks":"x"}}"#,
            r#"{"metadata":{"idempotency_key":{}}}"#,
            r#"{"metadata":{"table_name":"t","table_name":"u"}}"#,
            r#"{"metad\u0061ta":{"table_name":"t","record_pks":[1]}}"#,
            r#"{"a":1}"#,
            r#"[1]"#,
            r#"5"#,
        ];
        for raw in cases {
            for with_record in [false, true] {
                let Some((light, lg)) = light_envelope(raw, with_record) else {
                    continue;
                };
                let (env, g) = full(raw).unwrap_or_else(|e| {
                    panic!("light path accepted what the full path refuses: {raw}: {e}")
                });
                assert_eq!(lg, g, "{raw}");
                assert_eq!(light.idempotency_key(), env.idempotency_key(), "{raw}");
                assert_eq!(light.table(), env.table(), "{raw}");
                if with_record {
                    assert_eq!(
                        GroupKey::derive(&light, None, &cols),
                        GroupKey::derive(&env, None, &cols),
                        "{raw}"
                    );
                }
                assert_eq!(
                    GroupKey::derive(&light, None, &Default::default()),
                    GroupKey::derive(&env, None, &Default::default()),
                    "{raw}"
                );
            }
        }
        // Deep nesting is the full path's to refuse (its tree parse has a depth limit).
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(light_envelope(&deep, false).is_none());
        assert!(full(&deep).is_err());
        for bad in [
            r#"{"n":1e400}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"a":1"#,
            r#"{"a":1} x"#,
        ] {
            assert!(!valid_json(bad), "{bad}");
            assert!(light_envelope(bad, false).is_none(), "{bad}");
            assert!(full(bad).is_err(), "{bad}");
        }
        assert!(!valid_json(&deep));
        assert!(valid_json(
            r#"{"n":18446744073709551616,"s":"\ud83d\ude00","a":[null,true,-1,1.5]}"#
        ));
        // The usual message takes the light path.
        assert!(light_envelope(cases[0], false).is_some());
        assert!(light_envelope(cases[2], true).is_some());
        // Wrong types and non-objects are left to the full path (which names the field).
        for raw in [cases[6], cases[7], cases[8], cases[9], cases[16], cases[17]] {
            assert!(light_envelope(raw, false).is_none(), "{raw}");
        }
    }
}
