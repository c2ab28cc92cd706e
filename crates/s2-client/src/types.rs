//! Request and response shapes of S2's REST API (JSON, `s2-format: raw`).
//!
//! These serialize exactly to S2's wire format, so the batch builder can account for the
//! bytes that will be sent without a second representation.

use serde::{Deserialize, Serialize};

use crate::text::Text;

/// One record to append: the body is sent as a raw UTF-8 string (the sink's JSON message).
/// Body and headers are [`Text`]: shared with the payload and names they come from, so
/// building and cloning records copies no bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppendRecord {
    /// Record headers as `(name, value)`; names must be non-empty (S2 reserves empty names
    /// for command records). Omitted from the body when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(Text, Text)>,
    /// The record body.
    #[serde(default)]
    pub body: Text,
    /// Client timestamp in ms since the epoch; S2 assigns arrival time when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

impl AppendRecord {
    /// A record with only a body.
    pub fn new(body: impl Into<Text>) -> Self {
        AppendRecord {
            headers: Vec::new(),
            body: body.into(),
            timestamp: None,
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the client timestamp (builder style).
    pub fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// S2's metered size of this record (what the 1 MiB limits count).
    pub fn metered_size(&self) -> u64 {
        s2sink_core::metered_size(&self.headers, self.body.len())
    }
}

/// One atomic append: all records become durable or none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppendInput {
    /// 1..=1000 records (S2 answers 422 otherwise; use the batch builder to stay inside).
    pub records: Vec<AppendRecord>,
    /// Only append if the stream's next seq num equals this (412 `seq_num_mismatch` otherwise);
    /// the basis of exactly-once delivery for a single writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_seq_num: Option<u64>,
    /// Only append if the stream's fencing token equals this (412 `fencing_token_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<String>,
}

impl AppendInput {
    /// An unconditional append of `records`.
    pub fn new(records: Vec<AppendRecord>) -> Self {
        AppendInput {
            records,
            match_seq_num: None,
            fencing_token: None,
        }
    }

    /// Makes the append conditional on the stream's next seq num (builder style).
    pub fn with_match_seq_num(mut self, seq_num: u64) -> Self {
        self.match_seq_num = Some(seq_num);
        self
    }

    /// Makes the append conditional on the stream's fencing token (builder style).
    pub fn with_fencing_token(mut self, token: impl Into<String>) -> Self {
        self.fencing_token = Some(token.into());
        self
    }
}

/// A position in a stream: a sequence number and the timestamp S2 recorded there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamPosition {
    pub seq_num: u64,
    pub timestamp: u64,
}

/// S2's acknowledgement of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppendAck {
    /// Position of the first appended record.
    pub start: StreamPosition,
    /// One past the last appended record (`end.seq_num - start.seq_num` = records appended).
    pub end: StreamPosition,
    /// The stream's next seq num after the append (may exceed `end` under concurrent writers).
    pub tail: StreamPosition,
}

/// A record read back from a stream.
///
/// Command records (fence/trim) are returned as-is: a single header with an empty name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedRecord {
    pub seq_num: u64,
    pub timestamp: u64,
    /// S2 omits `headers` when empty.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// S2 omits `body` when empty.
    #[serde(default)]
    pub body: String,
}

impl SequencedRecord {
    /// Whether this is a fence/trim command record rather than data.
    pub fn is_command(&self) -> bool {
        self.headers.len() == 1 && self.headers[0].0.is_empty()
    }
}

/// Bounds for one unary read; S2 caps unary reads at 1000 records and 1 MiB anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadLimits {
    /// Most records to return (`None` = S2's cap of 1000).
    pub count: Option<u64>,
    /// Most metered bytes to return (`None` = S2's cap of 1 MiB).
    pub bytes: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct ReadBatch {
    #[serde(default)]
    pub records: Vec<SequencedRecord>,
}

#[derive(Deserialize)]
pub(crate) struct TailResponse {
    pub tail: StreamPosition,
}

#[derive(Deserialize)]
pub(crate) struct StreamInfo {
    pub name: String,
}

#[derive(Deserialize)]
pub(crate) struct ListStreamsResponse {
    #[serde(default)]
    pub streams: Vec<StreamInfo>,
    #[serde(default)]
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_body_matches_s2_wire_format() {
        let input = AppendInput::new(vec![
            AppendRecord::new(r#"{"k":1}"#).with_header("msg-id", "a1"),
            AppendRecord::new("").with_timestamp(7),
        ])
        .with_match_seq_num(2);
        assert_eq!(
            serde_json::to_string(&input).unwrap(),
            r#"{"records":[{"headers":[["msg-id","a1"]],"body":"{\"k\":1}"},{"body":"","timestamp":7}],"match_seq_num":2}"#
        );
    }

    #[test]
    fn read_records_default_missing_headers_and_body() {
        let b: ReadBatch = serde_json::from_str(
            r#"{"records":[{"seq_num":0,"timestamp":5,"headers":[["a","b"]],"body":"x"},{"seq_num":1,"timestamp":6}]}"#,
        )
        .unwrap();
        assert_eq!(b.records[0].headers, vec![("a".into(), "b".into())]);
        assert_eq!(b.records[1].body, "");
        assert!(b.records[1].headers.is_empty());
        assert!(!b.records[1].is_command());
    }
}
