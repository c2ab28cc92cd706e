//! [`Text`]: immutable UTF-8 that clones without copying.
//!
//! A record's body is the queue's stored payload and most header values repeat on every
//! record (the sink's name, fixed header names): as `String`s each record cost several
//! allocations and a copy of its body. A `Text` shares the bytes it was made from.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Immutable UTF-8 text backed by shared [`Bytes`]: cloning it, or making it from a payload
/// already held as `Bytes`, copies nothing.
#[derive(Clone, Default)]
pub struct Text(Bytes);

impl Text {
    /// Text that borrows a static string (header names): no allocation at all.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Shares `bytes` when they are UTF-8 (checked once, here).
    pub fn from_utf8(bytes: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Text(bytes))
    }

    /// Shares `bytes` when they are UTF-8; otherwise a copy with each invalid sequence
    /// replaced by U+FFFD (as [`String::from_utf8_lossy`]).
    pub fn from_utf8_lossy(bytes: Bytes) -> Text {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Text(bytes),
            Err(_) => Text::from(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// `part` (text inside `bytes`, e.g. one message of a request body already checked as
    /// UTF-8) as `Text` sharing `bytes`: no copy, no second check. Panics when `part` does
    /// not lie inside `bytes`.
    pub fn shared_in(bytes: &Bytes, part: &str) -> Text {
        Text(bytes.slice_ref(part.as_bytes()))
    }

    /// The shared bytes, giving up the text view (e.g. to store them).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks the bytes are UTF-8 (`from_utf8`, `from_utf8_lossy`)
        // or takes them from a `str`; the bytes are never changed after.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The shared bytes (for a request body: no copy).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its first `len` bytes, shared; `None` unless `len` ends a character.
    pub fn prefix(&self, len: usize) -> Option<Text> {
        self.as_str()
            .is_char_boundary(len)
            .then(|| Text(self.0.slice(..len)))
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::from(s.as_str())
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.as_str().to_owned()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.0 == other.0
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_its_bytes_and_checks_them_once() {
        let payload = Bytes::from_static(b"{\"a\":\"\xc3\xa9\"}");
        let t = Text::from_utf8(payload.clone()).unwrap();
        assert_eq!(t.as_bytes().as_ptr(), payload.as_ptr(), "no copy");
        assert_eq!(t.clone().as_bytes().as_ptr(), payload.as_ptr());
        assert!(Text::from_utf8(Bytes::from_static(b"\xff")).is_err());
        assert_eq!(
            Text::from_utf8_lossy(Bytes::from_static(b"a\xffb")),
            "a\u{fffd}b"
        );
        assert_eq!(Text::from_static("s2sink-id"), "s2sink-id");
        assert_eq!(String::from(Text::from("x")), "x");
    }

    #[test]
    fn a_part_of_checked_bytes_is_shared() {
        let body = Bytes::from_static("[{\"é\":1}, {\"b\":2}]".as_bytes());
        let text = std::str::from_utf8(&body).unwrap();
        let part = &text[1..10];
        let t = Text::shared_in(&body, part);
        assert_eq!(t, part);
        assert_eq!(t.as_bytes().as_ptr(), part.as_ptr(), "no copy");
        assert_eq!(t.into_bytes(), part.as_bytes());
    }

    #[test]
    #[should_panic]
    fn a_part_from_elsewhere_is_refused() {
        let body = Bytes::from_static(b"abc");
        let elsewhere = String::from("abc");
        Text::shared_in(&body, &elsewhere);
    }

    #[test]
    fn a_prefix_ends_on_a_character() {
        let t = Text::from("aé");
        assert_eq!(t.prefix(1).unwrap(), "a");
        assert!(t.prefix(2).is_none(), "inside é");
        assert_eq!(t.prefix(3).unwrap(), "aé");
    }

    #[test]
    fn serializes_as_a_json_string() {
        let t = Text::from("a\"b");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""a\"b""#);
        assert_eq!(serde_json::from_str::<Text>(&json).unwrap(), t);
    }
}
