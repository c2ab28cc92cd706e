//! Sequin's path transforms: pick one value out of the message by a dotted path.

use serde_json::Value;

/// Longest path accepted, as in Sequin.
pub const MAX_PATH_LEN: usize = 2000;

const ROOTS: [&str; 4] = ["record", "changes", "action", "metadata"];

/// A validated path such as `record`, `record.id` or `metadata.table_name`.
///
/// Matches Sequin's `^(record|changes|action|metadata)(\.[a-zA-Z0-9_\-.]+)*$`. Applying it
/// walks objects only: a missing key, or a step into a non-object (arrays included), gives
/// `null`, as in Sequin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTransform {
    path: String,
    segments: Vec<String>,
}

impl PathTransform {
    /// Parses and validates `path`; the error says which rule it breaks.
    pub fn parse(path: &str) -> Result<PathTransform, String> {
        if path.len() > MAX_PATH_LEN {
            return Err(format!(
                "path is {} characters long, the maximum is {MAX_PATH_LEN}",
                path.len()
            ));
        }
        let root = ROOTS
            .iter()
            .find(|r| path.starts_with(**r))
            .ok_or_else(|| format!("path {path:?} must start with one of {ROOTS:?}"))?;
        let rest = &path[root.len()..];
        let valid_rest = rest.is_empty()
            || (rest.starts_with('.')
                && rest.len() >= 2
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
        if !valid_rest {
            return Err(format!(
                "path {path:?} must match ^(record|changes|action|metadata)(\\.[a-zA-Z0-9_\\-.]+)*$"
            ));
        }
        Ok(PathTransform {
            path: path.to_string(),
            segments: path.split('.').map(str::to_string).collect(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The value at this path in `msg`, or `None` where Sequin gives `nil` (then use `null`).
    pub fn apply<'a>(&self, msg: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(msg, |cur, seg| cur.as_object()?.get(seg.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_and_invalid_paths() {
        for ok in [
            "record",
            "action",
            "changes.status",
            "metadata.table_name",
            "record.a-b_c.D9",
            "record..x",
        ] {
            assert!(PathTransform::parse(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "rec",
            "recordx",
            "record.",
            "body.id",
            "record.a b",
            "record[0]",
            ".record",
            "record.ü",
        ] {
            assert!(PathTransform::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("record.{}", "a".repeat(MAX_PATH_LEN));
        assert!(PathTransform::parse(&long).unwrap_err().contains("2000"));
    }

    #[test]
    fn missing_and_non_object_steps_are_null() {
        let msg = json!({"record": {"id": 7, "tags": [1, 2], "o": {"x": {"y": true}}}, "action": "insert"});
        let get = |p: &str| PathTransform::parse(p).unwrap().apply(&msg).cloned();
        assert_eq!(get("record.id"), Some(json!(7)));
        assert_eq!(get("record.o.x.y"), Some(json!(true)));
        assert_eq!(get("action"), Some(json!("insert")));
        assert_eq!(get("record.nope"), None);
        assert_eq!(get("record.tags.0"), None);
        assert_eq!(get("changes"), None);
        assert_eq!(get("changes.status"), None);
        assert_eq!(get("record.id.x"), None);
    }
}
