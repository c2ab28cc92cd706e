//! Text-format PostgreSQL values → JSON, the way Sequin encodes them.
//!
//! Both pgoutput (protocol version 1, text mode) and the backfill's `::text` casts produce
//! the types' text output under the session settings this crate pins (`DateStyle=ISO`,
//! `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`), so one decoder serves both.
//!
//! | type | JSON |
//! | --- | --- |
//! | int2, int4, int8, oid | number |
//! | float4, float8 | number; `NaN`, `Infinity`, `-Infinity` as strings |
//! | numeric, money | string, as PostgreSQL prints it (`"199.99"`) |
//! | bool | bool |
//! | json, jsonb | nested JSON |
//! | timestamptz | `"2024-10-28T21:37:01.127470Z"` (UTC, 6 fractional digits) |
//! | timestamp | `"2024-10-28T21:37:01.127470"` (no zone, 6 fractional digits) |
//! | date | `"2024-10-28"` |
//! | bytea | string, PostgreSQL's hex form `"\\x0102"` |
//! | arrays of the above | JSON arrays (nested for multi-dimensional) |
//! | everything else (text, uuid, inet, intervals, enums, …) | the text form, as a string |
//!
//! `infinity`/`-infinity` timestamps and dates, and BC dates, stay as PostgreSQL prints them.

use serde_json::Value;

/// Type OIDs (from `pg_type.dat`) this decoder treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of a known array type, or `None` if `type_oid` is not one.
pub fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        199 => oid::JSON,
        3807 => oid::JSONB,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        791 => oid::MONEY,
        1182 => oid::DATE,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        // text-like element types: the elements stay strings.
        1009 /* text */ | 1015 /* varchar */ | 1014 /* bpchar */ | 1002 /* char */
        | 1003 /* name */ | 2951 /* uuid */ | 1041 /* inet */ | 651 /* cidr */
        | 1183 /* time */ | 1270 /* timetz */ | 1187 /* interval */ | 1040 /* macaddr */ => 25,
        _ => return None,
    })
}

/// Decodes one non-NULL text value of type `type_oid`.
pub fn decode(type_oid: u32, text: &str) -> Value {
    if let Some(elem) = array_element(type_oid) {
        return match parse_array(text, elem) {
            Some(v) => v,
            None => Value::String(text.to_string()),
        };
    }
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => match text.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(text.to_string()),
            },
        },
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string())),
        oid::BOOL => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        oid::JSON | oid::JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        oid::TIMESTAMPTZ => {
            Value::String(timestamptz_to_iso(text).unwrap_or_else(|| text.to_string()))
        }
        oid::TIMESTAMP => Value::String(timestamp_to_iso(text).unwrap_or_else(|| text.to_string())),
        _ => Value::String(text.to_string()),
    }
}

/// Parses PostgreSQL's array text format (`{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`,
/// optionally prefixed by dimensions like `[0:1]=`), decoding elements as `elem`.
pub fn parse_array(text: &str, elem: u32) -> Option<Value> {
    let body = if text.starts_with('[') {
        &text[text.find('=')? + 1..]
    } else {
        text
    };
    let bytes = body.as_bytes();
    let mut pos = 0;
    let v = parse_array_level(bytes, &mut pos, elem)?;
    if pos != bytes.len() {
        return None;
    }
    Some(v)
}

fn parse_array_level(b: &[u8], pos: &mut usize, elem: u32) -> Option<Value> {
    if b.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut out = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(Value::Array(out));
    }
    loop {
        match b.get(*pos)? {
            b'{' => out.push(parse_array_level(b, pos, elem)?),
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match *b.get(*pos)? {
                        b'\\' => {
                            s.push(*b.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            s.push(c);
                            *pos += 1;
                        }
                    }
                }
                out.push(decode(elem, &String::from_utf8(s).ok()?));
            }
            _ => {
                let start = *pos;
                while !matches!(b.get(*pos)?, b',' | b'}') {
                    *pos += 1;
                }
                let raw = std::str::from_utf8(&b[start..*pos]).ok()?.trim();
                if raw.eq_ignore_ascii_case("NULL") {
                    out.push(Value::Null);
                } else {
                    out.push(decode(elem, raw));
                }
            }
        }
        match b.get(*pos)? {
            b',' => *pos += 1,
            b'}' => {
                *pos += 1;
                return Some(Value::Array(out));
            }
            _ => return None,
        }
    }
}

/// `2024-10-28 21:37:01.12747` → (days since 1970-01-01, micros of the day); `None` for
/// anything else (BC, infinity, other DateStyles).
fn parse_date_time(text: &str) -> Option<(i64, i64)> {
    let (date, time) = text.split_once(' ')?;
    let days = parse_date(date)?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some((days, ((h * 60 + m) * 60 + s) * 1_000_000 + micros))
}

fn parse_date(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let mo: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, mo, d))
}

/// `timestamptz` text (`2024-10-28 21:37:01.12747+00`, any `±HH[:MM[:SS]]` offset) → UTC ISO.
pub fn timestamptz_to_iso(text: &str) -> Option<String> {
    let sign_at = text.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (local, offset) = text.split_at(sign_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut off = offset[1..].split(':');
    let oh: i64 = off.next()?.parse().ok()?;
    let om: i64 = off.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    let os: i64 = off.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    let (days, micros) = parse_date_time(local)?;
    let total = days * 86_400_000_000 + micros - sign * ((oh * 60 + om) * 60 + os) * 1_000_000;
    Some(format!("{}Z", format_unix_micros(total)))
}

/// `timestamp` text (`2024-10-28 21:37:01.12747`) → `2024-10-28T21:37:01.127470`.
pub fn timestamp_to_iso(text: &str) -> Option<String> {
    let (days, micros) = parse_date_time(text)?;
    Some(format_unix_micros(days * 86_400_000_000 + micros))
}

/// Microseconds since the PostgreSQL epoch (2000-01-01 UTC) → `…T…(6 digits)Z`.
pub fn pg_micros_to_iso(pg_micros: i64) -> String {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    format!("{}Z", format_unix_micros(pg_micros + PG_EPOCH_UNIX_MICROS))
}

/// Microseconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SS.ffffff` (no zone suffix).
pub fn format_unix_micros(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rem = micros.rem_euclid(86_400_000_000);
    let (y, mo, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rem % 1_000_000
    )
}

/// Howard Hinnant's `days_from_civil`: proleptic Gregorian date → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamptz_to_iso("2024-10-28 21:37:01.12747+00").unwrap(),
            "2024-10-28T21:37:01.127470Z"
        );
        assert_eq!(
            timestamptz_to_iso("2024-10-29 03:07:01+05:30").unwrap(),
            "2024-10-28T21:37:01.000000Z"
        );
        assert_eq!(
            timestamptz_to_iso("2024-01-01 00:30:00-01").unwrap(),
            "2024-01-01T01:30:00.000000Z"
        );
        assert_eq!(
            timestamp_to_iso("2000-02-29 23:59:59.5").unwrap(),
            "2000-02-29T23:59:59.500000"
        );
        assert_eq!(pg_micros_to_iso(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(decode(oid::TIMESTAMPTZ, "infinity"), json!("infinity"));
        for days in [-800_000, -1, 0, 1, 19_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn scalars_and_arrays() {
        assert_eq!(
            decode(oid::INT8, "9007199254740993"),
            json!(9007199254740993i64)
        );
        assert_eq!(decode(oid::FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(decode(oid::FLOAT4, "1.5"), json!(1.5));
        assert_eq!(decode(oid::NUMERIC, "199.99"), json!("199.99"));
        assert_eq!(decode(oid::BOOL, "t"), json!(true));
        assert_eq!(decode(oid::JSONB, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(decode(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(decode(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(
            decode(1009, r#"{a,"b c","d\"e","NULL",NULL,""}"#),
            json!(["a", "b c", "d\"e", "NULL", null, ""])
        );
        assert_eq!(decode(1231, "{1.5,NaN}"), json!(["1.5", "NaN"]));
        assert_eq!(decode(1000, "{t,f}"), json!([true, false]));
        assert_eq!(decode(1007, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(decode(1007, "{}"), json!([]));
        assert_eq!(decode(1007, "{1,2"), json!("{1,2"));
    }
}
