//! What ingest reads from a message given as text, without building its JSON tree.
//!
//! Grouping and deduplication need a handful of fields (`metadata.table_schema`,
//! `table_name`, `record_pks`, `idempotency_key`, `group_id`, and `record` only when the sink
//! groups by columns). [`light`] reads exactly those from the producer's text in one
//! pass, borrowing strings where it can, checks the types
//! [`Envelope::from_value`](s2sink_core::Envelope::from_value) checks, and
//! checks every other byte as a tree parse would (numbers in range, escapes and surrogates,
//! the nesting limit): an answer means the text is a JSON object the full path accepts, so
//! ingest scans each message once. Anything unusual (a field of the wrong type, a duplicate
//! metadata field, an escaped key, invalid JSON) makes it answer `None`, and the caller takes
//! the full path (parse the tree, then `Envelope::from_value`), so errors and results are
//! exactly the full path's.

use std::borrow::Cow;
use std::fmt;

#[cfg(test)]
use s2sink_core::envelope::{Envelope, Metadata};
use s2sink_core::GroupSource;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The envelope fields ingest needs, borrowed from the text where it can: what the group is
/// derived from ([`Light::group_source`]), the idempotency key and `metadata.group_id`.
pub struct Light<'a> {
    record: Option<Value>,
    meta: Option<Meta<'a>>,
}

impl<'a> Light<'a> {
    /// The fields [`GroupKey::derive_from`](s2sink_core::GroupKey::derive_from) reads.
    pub fn group_source(&self) -> GroupSource<'_> {
        let meta = self.meta.as_ref();
        GroupSource {
            table_schema: meta.and_then(|m| m.table_schema.as_deref()),
            table_name: meta.and_then(|m| m.table_name.as_deref()),
            record: self.record.as_ref(),
            record_pks: meta.and_then(|m| m.record_pks.as_deref()),
        }
    }

    /// `metadata.idempotency_key`.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.meta.as_ref()?.idempotency_key.as_deref()
    }

    /// `metadata.group_id` when it is a string.
    pub fn group_id(&self) -> Option<&str> {
        self.meta.as_ref()?.group_id.as_deref()
    }
}

/// The envelope fields ingest needs, or `None` when the full path must decide. `with_record`:
/// also parse `record` (the sink groups by columns). `Some` also means `raw` is a JSON object a
/// `serde_json::Value` parse accepts.
pub fn light(raw: &str, with_record: bool) -> Option<Light<'_>> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let top = TopSeed { with_record }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Light {
        record: top.record,
        meta: top.metadata,
    })
}

/// [`light`] as an [`Envelope`] and `metadata.group_id`, to compare with the full path.
#[cfg(test)]
fn light_envelope(raw: &str, with_record: bool) -> Option<(Envelope, Option<String>)> {
    let light = light(raw, with_record)?;
    let mut group_id = None;
    let metadata = light.meta.map(|meta| {
        group_id = meta.group_id;
        Metadata {
            table_schema: meta.table_schema.map(Cow::into_owned),
            table_name: meta.table_name.map(Cow::into_owned),
            idempotency_key: meta.idempotency_key.map(Cow::into_owned),
            record_pks: meta.record_pks,
            ..Metadata::default()
        }
    });
    let envelope = Envelope {
        record: light.record,
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

/// Any JSON value, checked as [`Value`] would be and dropped; remembers only its kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Valid {
    Null,
    Str,
    Other,
}

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Valid;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
                Ok(Valid::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
                Ok(Valid::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
                Ok(Valid::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
                Ok(Valid::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
                Ok(Valid::Str)
            }
            fn visit_unit<E>(self) -> Result<Valid, E> {
                Ok(Valid::Null)
            }
            fn visit_none<E>(self) -> Result<Valid, E> {
                Ok(Valid::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
                while seq.next_element::<Valid>()?.is_some() {}
                Ok(Valid::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
                while map.next_key::<Valid>()?.is_some() {
                    map.next_value::<Valid>()?;
                }
                Ok(Valid::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, or `null`: borrowed from the text when it has no escapes. Any other type is an
/// error (the full path names it).
struct StrOrNull<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for StrOrNull<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrNull<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<StrOrNull<'de>, E> {
                Ok(StrOrNull(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<StrOrNull<'de>, E> {
                Ok(StrOrNull(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_unit<E>(self) -> Result<StrOrNull<'de>, E> {
                Ok(StrOrNull(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The top level: must be an object; `action` a string or null, `record` kept only when
/// grouping needs it, `metadata` read field by field; everything else checked and dropped.
struct Top<'a> {
    record: Option<Value>,
    metadata: Option<Meta<'a>>,
}

struct TopSeed {
    with_record: bool,
}

impl<'de> DeserializeSeed<'de> for TopSeed {
    type Value = Top<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top {
            record: None,
            metadata: None,
        };
        // A key with escapes cannot be borrowed: an error, and the full path decides.
        while let Some(key) = map.next_key::<&'de str>()? {
            // As in the full path (serde_json's map), the last duplicate wins.
            match key {
                "action" => {
                    if map.next_value::<Valid>()? == Valid::Other {
                        return Err(A::Error::custom("action: not a string"));
                    }
                }
                "record" if self.with_record => top.record = Some(map.next_value()?),
                "record" => {
                    map.next_value::<Valid>()?;
                    top.record = None;
                }
                "metadata" => top.metadata = map.next_value::<MetaField>()?.0,
                _ => {
                    map.next_value::<Valid>()?;
                }
            }
        }
        Ok(top)
    }
}

/// `metadata`: `null`, or an object read as [`Meta`]; any other type is an error.
struct MetaField<'a>(Option<Meta<'a>>);

/// `metadata`, with every field [`Metadata`] types as a string or an array checked the same
/// way (a wrong type or a repeated field is an error here, and the full path decides).
#[derive(Default)]
struct Meta<'a> {
    table_schema: Option<Cow<'a, str>>,
    table_name: Option<Cow<'a, str>>,
    idempotency_key: Option<Cow<'a, str>>,
    record_pks: Option<Vec<Value>>,
    group_id: Option<String>,
}

impl<'de> Deserialize<'de> for MetaField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> Result<MetaField<'de>, E> {
                Ok(MetaField(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaField<'de>, A::Error> {
                let mut meta = Meta::default();
                let mut seen = [false; 7];
                let mut once = |i: usize, name: &str| {
                    if std::mem::replace(&mut seen[i], true) {
                        Err(A::Error::custom(format!("metadata.{name}: repeated")))
                    } else {
                        Ok(())
                    }
                };
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "table_schema" => {
                            once(0, key)?;
                            meta.table_schema = map.next_value::<StrOrNull>()?.0;
                        }
                        "table_name" => {
                            once(1, key)?;
                            meta.table_name = map.next_value::<StrOrNull>()?.0;
                        }
                        "idempotency_key" => {
                            once(2, key)?;
                            meta.idempotency_key = map.next_value::<StrOrNull>()?.0;
                        }
                        "record_pks" => {
                            once(3, key)?;
                            meta.record_pks = map.next_value()?;
                        }
                        "group_id" => {
                            once(4, key)?;
                            // Kept only when a string; anything else checked as a tree parse
                            // would (it is a tree: a group id is small or absent).
                            meta.group_id = match map.next_value::<Value>()? {
                                Value::String(s) => Some(s),
                                _ => None,
                            };
                        }
                        // Typed as strings in `Metadata`: checked, not kept.
                        "commit_timestamp" => {
                            once(5, key)?;
                            map.next_value::<StrOrNull>()?;
                        }
                        "database_name" => {
                            once(6, key)?;
                            map.next_value::<StrOrNull>()?;
                        }
                        _ => {
                            map.next_value::<Valid>()?;
                        }
                    }
                }
                Ok(MetaField(Some(meta)))
            }
        }
        d.deserialize_any(V)
    }
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
                // What ingest uses: the borrowed fields derive the full path's group.
                let borrowed = super::light(raw, with_record).expect("answers as above");
                assert_eq!(borrowed.group_id().map(str::to_string), g, "{raw}");
                assert_eq!(borrowed.idempotency_key(), env.idempotency_key(), "{raw}");
                // Ingest parses `record` exactly when the sink has group columns.
                let empty = Default::default();
                let columns = if with_record {
                    [&cols, &empty]
                } else {
                    [&empty, &empty]
                };
                for columns in columns {
                    assert_eq!(
                        GroupKey::derive_from(&borrowed.group_source(), None, columns),
                        GroupKey::derive(&env, None, columns),
                        "{raw}"
                    );
                }
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
        // Invalid JSON anywhere (also inside the fields it reads or skips) is declined: an
        // answer means the text is valid, and ingest checks each message only here.
        let deep_record = format!("{{\"record\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let deep_meta = format!(
            "{{\"metadata\":{{\"x\":{}{}}}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for bad in [
            r#"{"n":1e400}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"a":1"#,
            r#"{"a":1} x"#,
            r#"{"record":{"n":1e400}}"#,
            r#"{"record":{"s":"\ud800"}}"#,
            r#"{"action":"\ud800"}"#,
            r#"{"metadata":{"commit_lsn":1e400}}"#,
            r#"{"metadata":{"x":"\udc00"}}"#,
            r#"{"metadata":{"group_id":[1e999]}}"#,
            r#"{"metadata":{"table_name":"t"} "#,
            deep_record.as_str(),
            deep_meta.as_str(),
        ] {
            assert!(!valid_json(bad), "{bad}");
            assert!(light_envelope(bad, false).is_none(), "{bad}");
            assert!(light_envelope(bad, true).is_none(), "{bad}");
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

    proptest::proptest! {
        /// Mutations of envelopes (characters inserted, removed or replaced by ones JSON
        /// cares about): whenever the light path answers, the text is valid JSON, the full
        /// path accepts it, and both read the same fields.
        #[test]
        fn an_answer_means_the_full_path_agrees(
            base in 0usize..4,
            edits in proptest::collection::vec((0usize..400, 0usize..3, 0usize..24), 0..4),
            with_record in proptest::bool::ANY,
        ) {
            const BASES: [&str; 4] = [
                r#"{"action":"insert","record":{"id":1,"n":-2.5e3,"s":"a\"b"},"metadata":{"table_schema":"public","table_name":"t","record_pks":["1"],"idempotency_key":"k","commit_lsn":12}}"#,
                r#"{"record":{"a":[1,{"b":null}],"b":"x"},"metadata":{"table_name":"cols","group_id":"g","record_pks":[7,true]}}"#,
                r#"{"metadata":{"database_name":"d","commit_timestamp":"2026","x":{"y":[[]]}},"action":null,"z":18446744073709551615}"#,
                r#"{"a":{"b":[1,2,{"c":"\u00e9"}]},"metadata":null}"#,
            ];
            const ALPHABET: [&str; 24] = [
                "{", "}", "[", "]", "\"", ",", ":", "\\", "\\u", "d800", "1e400", "-",
                "0", ".", "e", "null", "true", " ", "x", "\"metadata\":", "\"record\":",
                "\"action\":", "\"group_id\":", "\"table_name\":",
            ];
            let mut raw = BASES[base].to_string();
            for (at, op, pick) in edits {
                let mut at = at % (raw.len() + 1);
                while !raw.is_char_boundary(at) {
                    at -= 1;
                }
                let end = raw[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                match op {
                    0 => raw.insert_str(at, ALPHABET[pick]),
                    1 => raw.replace_range(at..end, ""),
                    _ => raw.replace_range(at..end, ALPHABET[pick]),
                }
            }
            if let Some((light, lg)) = light_envelope(&raw, with_record) {
                proptest::prop_assert!(valid_json(&raw), "{}", raw);
                let full = full(&raw);
                proptest::prop_assert!(full.is_ok(), "{}: {:?}", raw, full.err());
                let (env, g) = full.unwrap();
                proptest::prop_assert_eq!(lg, g.clone());
                proptest::prop_assert_eq!(light.idempotency_key(), env.idempotency_key());
                let borrowed = super::light(&raw, with_record).expect("answers as above");
                proptest::prop_assert_eq!(borrowed.group_id().map(str::to_string), g);
                proptest::prop_assert_eq!(borrowed.idempotency_key(), env.idempotency_key());
                proptest::prop_assert_eq!(
                    GroupKey::derive_from(&borrowed.group_source(), None, &Default::default()),
                    GroupKey::derive(&env, None, &Default::default())
                );
                proptest::prop_assert_eq!(light.table(), env.table());
                proptest::prop_assert_eq!(
                    GroupKey::derive(&light, None, &Default::default()),
                    GroupKey::derive(&env, None, &Default::default())
                );
            } else if !raw.contains('\\') && full(&raw).is_ok() {
                // Declining is for the unusual: an unescaped valid envelope is read.
                let dup = |name: &str| raw.matches(name).count() > 1;
                proptest::prop_assert!(
                    dup("\"table_name\"") || dup("\"group_id\"") || dup("\"metadata\"")
                        || dup("\"record_pks\"") || dup("\"table_schema\""),
                    "declined a plain envelope: {}", raw
                );
            }
        }
    }
}
