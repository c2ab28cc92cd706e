//! S2 basin and stream name rules (`common/src/basin.rs`, `common/src/stream.rs` of S2).
//!
//! Checked locally so a typo is reported at config load with the rule it breaks, instead of
//! as an S2 400 on every delivery attempt.

use crate::CoreError;

/// Basin: 8–48 bytes of `[a-z0-9-]`, beginning and ending with a letter or digit.
pub fn validate_basin(name: &str) -> Result<(), CoreError> {
    let err = |reason| {
        Err(CoreError::InvalidBasin {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() < 8 {
        return err("must be at least 8 characters long");
    }
    if name.len() > 48 {
        return err("must be at most 48 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("may contain only lowercase letters, digits and hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("must begin and end with a lowercase letter or digit");
    }
    Ok(())
}

/// Stream: 1–512 bytes of UTF-8, not `.` or `..`, no NUL byte.
pub fn validate_stream(name: &str) -> Result<(), CoreError> {
    let err = |reason| {
        Err(CoreError::InvalidStream {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("must not be empty");
    }
    if name.len() > 512 {
        return err("must be at most 512 bytes long");
    }
    if name == "." || name == ".." {
        return err("must not be `.` or `..`");
    }
    if name.contains('\0') {
        return err("must not contain a NUL byte");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basin_rules() {
        assert!(validate_basin("test-basin-01").is_ok());
        assert!(validate_basin("abcdefgh").is_ok());
        assert!(validate_basin(&"a".repeat(48)).is_ok());
        for bad in [
            "short",
            "abcdefg",
            "-abcdefgh",
            "abcdefgh-",
            "Abcdefgh",
            "abc_defgh",
            "abc.defgh",
        ] {
            assert!(validate_basin(bad).is_err(), "{bad} accepted");
        }
        assert!(validate_basin(&"a".repeat(49)).is_err());
        let msg = validate_basin("UPPERCASE").unwrap_err().to_string();
        assert!(
            msg.contains("UPPERCASE") && msg.contains("lowercase"),
            "{msg}"
        );
    }

    #[test]
    fn stream_rules() {
        for ok in ["a", "orders", "a/b.c", "ünïcode", &"s".repeat(512)] {
            assert!(validate_stream(ok).is_ok(), "{ok} refused");
        }
        for bad in ["", ".", "..", "a\0b", &"s".repeat(513)] {
            assert!(validate_stream(bad).is_err(), "{bad:?} accepted");
        }
    }
}
