//! Exact conversion between JSON (`serde_json::Value`) and Rhai values.
//!
//! Rules, chosen so that an identity transform gives back the same JSON:
//! - `null` ↔ `()`, booleans ↔ `bool`, strings ↔ strings (any unicode), arrays ↔ arrays,
//!   objects ↔ object maps.
//! - Integers that fit `i64` ↔ Rhai `INT` (i64), exactly, including `i64::MIN`/`i64::MAX`.
//! - Integers above `i64::MAX` (up to `u64::MAX`) have no Rhai integer type; they become a
//!   [`BigU64`] value (Rhai type name `u64`) that is passed through unchanged, compares with
//!   `==`/`!=` and turns into its exact decimal string with `to_string()`; arithmetic on it is a
//!   script error, never a silent rounding to float.
//! - Other numbers are `f64` in `serde_json` (without `arbitrary_precision`) ↔ Rhai `FLOAT`
//!   (f64), bit for bit. A script result that is NaN or infinite has no JSON form and is an error.
//! - Rhai `char` becomes a one-character string; a BLOB becomes an array of byte integers;
//!   other Rhai types (timestamps, function pointers, …) are an error.
//! - Key order: Rhai maps are sorted by key, so on the way back keys are put in the order of a
//!   *hint* object (the input object the result was derived from) where the keys match; keys the
//!   hint doesn't have follow in sorted order. Returning `record` (changed or not) therefore keeps
//!   the record's key order.

use rhai::{Array, Dynamic, Engine, Map, INT};
use serde_json::{Number, Value};

/// Deepest nesting accepted in a function's result (serde_json's own parser limit).
pub const MAX_DEPTH: usize = 128;

/// A JSON integer above `i64::MAX`, kept exact inside Rhai.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BigU64(pub u64);

impl BigU64 {
    pub(crate) fn register(engine: &mut Engine) {
        engine
            .register_type_with_name::<BigU64>("u64")
            .register_fn("to_string", |x: &mut BigU64| x.0.to_string())
            .register_fn("to_debug", |x: &mut BigU64| x.0.to_string())
            .register_fn("==", |a: BigU64, b: BigU64| a == b)
            .register_fn("!=", |a: BigU64, b: BigU64| a != b)
            .register_fn("==", |_: BigU64, _: INT| false)
            .register_fn("!=", |_: BigU64, _: INT| true)
            .register_fn("==", |_: INT, _: BigU64| false)
            .register_fn("!=", |_: INT, _: BigU64| true);
    }
}

/// Converts a JSON value into a Rhai value (infallible: every JSON value has a Rhai form).
pub fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => number_to_dynamic(n),
        Value::String(s) => Dynamic::from(rhai::ImmutableString::from(s.as_str())),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect::<Array>()),
        Value::Object(obj) => {
            let mut map = Map::new();
            for (k, v) in obj {
                map.insert(k.as_str().into(), to_dynamic(v));
            }
            Dynamic::from_map(map)
        }
    }
}

fn number_to_dynamic(n: &Number) -> Dynamic {
    if let Some(i) = n.as_i64() {
        Dynamic::from_int(i)
    } else if let Some(u) = n.as_u64() {
        Dynamic::from(BigU64(u))
    } else {
        // Without `arbitrary_precision` every other serde_json number is an f64.
        Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Converts a Rhai value back to JSON, ordering object keys after `hint` where possible.
///
/// Errors name the path of the offending value (e.g. `$.items[2]`) and why it has no JSON form.
pub fn to_json(value: &Dynamic, hint: Option<&Value>) -> Result<Value, String> {
    let mut path = String::from("$");
    convert_back(value, hint, 0, &mut path)
}

fn convert_back(
    value: &Dynamic,
    hint: Option<&Value>,
    depth: usize,
    path: &mut String,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH} levels"));
    }
    if value.is_shared() {
        // A value captured by a closure: read through the lock.
        let inner = value.clone().flatten();
        return convert_back(&inner, hint, depth, path);
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::Number(i.into()));
    }
    if let Ok(f) = value.as_float() {
        return Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{path}: float {f} (NaN or infinite) has no JSON form"));
    }
    if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        return Ok(Value::String(s.as_str().to_string()));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(big) = value.read_lock::<BigU64>() {
        return Ok(Value::Number(big.0.into()));
    }
    if let Some(arr) = value.read_lock::<Array>() {
        let hint_items = match hint {
            Some(Value::Array(h)) => Some(h),
            _ => None,
        };
        let mut out = Vec::with_capacity(arr.len());
        let base = path.len();
        for (i, item) in arr.iter().enumerate() {
            path.push_str(&format!("[{i}]"));
            out.push(convert_back(
                item,
                hint_items.and_then(|h| h.get(i)),
                depth + 1,
                path,
            )?);
            path.truncate(base);
        }
        return Ok(Value::Array(out));
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map_back(&map, hint, depth, path);
    }
    if let Some(blob) = value.read_lock::<rhai::Blob>() {
        return Ok(Value::Array(
            blob.iter().map(|b| Value::Number((*b).into())).collect(),
        ));
    }
    Err(format!(
        "{path}: a value of type `{}` has no JSON form",
        value.type_name()
    ))
}

fn map_back(
    map: &Map,
    hint: Option<&Value>,
    depth: usize,
    path: &mut String,
) -> Result<Value, String> {
    let mut out = serde_json::Map::with_capacity(map.len());
    let base = path.len();
    let child = |key: &str, v: &Dynamic, h: Option<&Value>, path: &mut String| {
        path.push('.');
        path.push_str(key);
        let r = convert_back(v, h, depth + 1, path);
        path.truncate(base);
        r
    };
    match hint {
        Some(Value::Object(h)) => {
            let mut matched = 0;
            for (k, hv) in h {
                if let Some(v) = map.get(k.as_str()) {
                    matched += 1;
                    out.insert(k.clone(), child(k, v, Some(hv), path)?);
                }
            }
            if matched < map.len() {
                for (k, v) in map {
                    if !h.contains_key(k.as_str()) {
                        out.insert(k.to_string(), child(k, v, None, path)?);
                    }
                }
            }
        }
        _ => {
            for (k, v) in map {
                out.insert(k.to_string(), child(k, v, None, path)?);
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extremes_round_trip_exactly() {
        let v = json!({
            "imin": i64::MIN, "imax": i64::MAX, "umax": u64::MAX, "above": (i64::MAX as u64) + 1,
            "f": 0.1, "neg0": -0.0, "big": 1.7976931348623157e308, "tiny": 5e-324,
            "s": "ünï ✓ 😀", "n": null, "a": [1, [2.5, {"x": []}]], "o": {}
        });
        let back = to_json(&to_dynamic(&v), Some(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.to_string(), v.to_string());
    }

    #[test]
    fn big_u64_is_not_rounded() {
        let d = to_dynamic(&json!(u64::MAX));
        assert!(d.is::<BigU64>());
        assert_eq!(to_json(&d, None).unwrap(), json!(18446744073709551615u64));
    }

    #[test]
    fn non_finite_float_is_an_error() {
        let err = to_json(&Dynamic::from_float(f64::NAN), None).unwrap_err();
        assert!(err.contains("NaN"), "{err}");
        let err = to_json(
            &Dynamic::from_array(vec![Dynamic::from_float(f64::INFINITY)]),
            None,
        )
        .unwrap_err();
        assert!(err.starts_with("$[0]"), "{err}");
    }

    #[test]
    fn key_order_follows_hint_then_sorted() {
        let hint = json!({"z": 1, "a": 2, "m": 3});
        let mut map = Map::new();
        map.insert("m".into(), Dynamic::from_int(3));
        map.insert("new".into(), Dynamic::from_int(4));
        map.insert("b".into(), Dynamic::from_int(5));
        map.insert("z".into(), Dynamic::from_int(1));
        let back = to_json(&Dynamic::from_map(map), Some(&hint)).unwrap();
        assert_eq!(back.to_string(), r#"{"z":1,"m":3,"b":5,"new":4}"#);
    }
}
