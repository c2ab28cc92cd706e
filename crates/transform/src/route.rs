//! The routing contract: a route function returns exactly `#{basin: String, stream: String}`
//! with names valid by S2's rules.

use rhai::{Dynamic, Map};
use s2sink_core::{validate_basin, validate_stream, Route};

/// Checks a route function's result, collecting every violation (not just the first) so one
/// error message tells the user all that is wrong.
pub(crate) fn validate_route(value: &Dynamic) -> Result<Route, Vec<String>> {
    let Some(map) = value.read_lock::<Map>() else {
        return Err(vec![format!(
            "route must return a map #{{basin: \"…\", stream: \"…\"}}, got {}",
            friendly_type(value)
        )]);
    };
    let mut violations = Vec::new();
    let basin = string_key(&map, "basin", &mut violations);
    let stream = string_key(&map, "stream", &mut violations);
    for key in map.keys() {
        if key != "basin" && key != "stream" {
            violations.push(format!(
                "unexpected key `{key}` (only `basin` and `stream` are allowed)"
            ));
        }
    }
    if let Some(b) = &basin {
        if let Err(e) = validate_basin(b) {
            violations.push(e.to_string());
        }
    }
    if let Some(s) = &stream {
        if let Err(e) = validate_stream(s) {
            violations.push(e.to_string());
        }
    }
    match (basin, stream) {
        (Some(basin), Some(stream)) if violations.is_empty() => Ok(Route { basin, stream }),
        _ => Err(violations),
    }
}

fn string_key(map: &Map, key: &str, violations: &mut Vec<String>) -> Option<String> {
    match map.get(key) {
        None => {
            violations.push(format!("missing key `{key}`"));
            None
        }
        Some(v) => match v.read_lock::<rhai::ImmutableString>() {
            Some(s) => Some(s.to_string()),
            None => {
                violations.push(format!(
                    "`{key}` must be a string, got {}",
                    friendly_type(v)
                ));
                None
            }
        },
    }
}

/// Rhai's type name of a value, as a user reads it (`()` is shown as `() (null)`).
pub(crate) fn friendly_type(value: &Dynamic) -> String {
    match value.type_name() {
        "()" => "() (null)".to_string(),
        "s2sink_transform::convert::BigU64" => "u64".to_string(),
        t => t.rsplit("::").next().unwrap_or(t).to_string(),
    }
}
