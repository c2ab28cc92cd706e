//! Packing records into appends that S2 (and s2-lite's 2 MiB body buffer) will accept.
//!
//! Three limits apply to every append: record count, metered bytes (S2's formula) and the
//! serialized JSON body size (JSON escaping can inflate a body up to 6×, and s2-lite refuses
//! request bodies over 2 MiB even when the metered size is fine). Records that can never fit
//! are refused here, before any network call, with their size and the limit.
//!
//! Two ways to use it:
//! - [`BatchLimits::pack`]: split an ordered sequence into batches, order preserved.
//! - [`BatchBuilder`]: incremental, for the delivery engine. Compute a group's cost
//!   ([`BatchLimits::check_group`]), ask whether it [`fits`](BatchBuilder::fits) into the
//!   batch being built, [`push_group`](BatchBuilder::push_group) it (a group — a run of
//!   records that must share one append — is never split), and [`take`](BatchBuilder::take)
//!   the finished batch.

use s2sink_core::{limits::DEFAULT_MAX_JSON_BYTES, MAX_BATCH_METERED_BYTES, MAX_BATCH_RECORDS};

use crate::error::S2Error;
use crate::types::AppendRecord;

/// Longest fencing token S2 accepts, in bytes.
const MAX_FENCING_TOKEN_BYTES: usize = 36;

/// JSON bytes of an append body outside its records, for the worst case:
/// `{"records":[` … `]` plus `,"match_seq_num":<20 digits>` and
/// `,"fencing_token":"<36 bytes, each escaped to 6>"` and `}`.
pub const BATCH_JSON_OVERHEAD: usize = 12 + 1 + 17 + 20 + 17 + 2 + MAX_FENCING_TOKEN_BYTES * 6 + 1;

/// Limits one append must respect. `Default` is S2's: 1000 records, 1 MiB metered and
/// [`DEFAULT_MAX_JSON_BYTES`] of JSON body.
///
/// `max_metered_bytes` is also the largest single record accepted (as in S2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_metered_bytes: u64,
    pub max_json_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_records: MAX_BATCH_RECORDS,
            max_metered_bytes: MAX_BATCH_METERED_BYTES,
            max_json_bytes: DEFAULT_MAX_JSON_BYTES,
        }
    }
}

/// What one record costs against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordCost {
    /// S2's metered size.
    pub metered: u64,
    /// Exact length of the record's serialized JSON object (as `serde_json` writes it).
    pub json_bytes: usize,
}

impl RecordCost {
    /// Computes the cost of `record` (one pass over its strings).
    pub fn of(record: &AppendRecord) -> Self {
        RecordCost {
            metered: record.metered_size(),
            json_bytes: record_json_bytes(record),
        }
    }
}

/// What a group of records costs: counts and sums, with one separator byte per record so
/// that summing group costs stays an upper bound of the real body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCost {
    pub records: usize,
    pub metered: u64,
    /// Σ (record JSON + 1 separator).
    pub json_bytes: usize,
}

impl GroupCost {
    /// Sums the costs of `group` without checking limits.
    pub fn of(group: &[AppendRecord]) -> Self {
        group
            .iter()
            .fold(GroupCost::default(), |acc, r| acc.add(RecordCost::of(r)))
    }

    fn add(self, c: RecordCost) -> Self {
        GroupCost {
            records: self.records + 1,
            metered: self.metered + c.metered,
            json_bytes: self.json_bytes + c.json_bytes + 1,
        }
    }
}

impl BatchLimits {
    /// Checks the limits are usable and within S2's own (call at config load).
    pub fn validate(&self) -> Result<(), S2Error> {
        if self.max_records == 0 || self.max_records > MAX_BATCH_RECORDS {
            return Err(S2Error::InvalidConfig(format!(
                "batch max_records must be 1..={MAX_BATCH_RECORDS}, got {}",
                self.max_records
            )));
        }
        if self.max_metered_bytes < 8 || self.max_metered_bytes > MAX_BATCH_METERED_BYTES {
            return Err(S2Error::InvalidConfig(format!(
                "batch max_metered_bytes must be 8..={MAX_BATCH_METERED_BYTES}, got {}",
                self.max_metered_bytes
            )));
        }
        let min_json =
            BATCH_JSON_OVERHEAD + 1 + RecordCost::of(&AppendRecord::default()).json_bytes;
        if self.max_json_bytes < min_json {
            return Err(S2Error::InvalidConfig(format!(
                "batch max_json_bytes must be at least {min_json}, got {}",
                self.max_json_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a record that cannot fit even in an empty batch. `index` is reported in the
    /// error (the record's position in the caller's sequence).
    pub fn check_record(&self, index: usize, cost: RecordCost) -> Result<(), S2Error> {
        if cost.metered > self.max_metered_bytes {
            return Err(S2Error::RecordTooLarge {
                index,
                metered: cost.metered,
                limit: self.max_metered_bytes,
            });
        }
        let body = BATCH_JSON_OVERHEAD + cost.json_bytes + 1;
        if body > self.max_json_bytes {
            return Err(S2Error::RecordJsonTooLarge {
                index,
                json_bytes: body,
                limit: self.max_json_bytes,
            });
        }
        Ok(())
    }

    /// Costs `group` and refuses it if it cannot fit even in an empty batch: each record is
    /// checked first ([`S2Error::RecordTooLarge`] / [`S2Error::RecordJsonTooLarge`] with
    /// `first_index + i`), then the whole group ([`S2Error::GroupTooLarge`]).
    pub fn check_group(
        &self,
        first_index: usize,
        group: &[AppendRecord],
    ) -> Result<GroupCost, S2Error> {
        let mut cost = GroupCost::default();
        for (i, r) in group.iter().enumerate() {
            let c = RecordCost::of(r);
            self.check_record(first_index + i, c)?;
            cost = cost.add(c);
        }
        let reason = if cost.records > self.max_records {
            format!(
                "{} records exceed the limit of {}",
                cost.records, self.max_records
            )
        } else if cost.metered > self.max_metered_bytes {
            format!(
                "metered size {} bytes exceeds the limit of {} bytes",
                cost.metered, self.max_metered_bytes
            )
        } else if BATCH_JSON_OVERHEAD + cost.json_bytes > self.max_json_bytes {
            format!(
                "serialized JSON of {} bytes exceeds the request body limit of {} bytes",
                BATCH_JSON_OVERHEAD + cost.json_bytes,
                self.max_json_bytes
            )
        } else {
            return Ok(cost);
        };
        Err(S2Error::GroupTooLarge {
            index: first_index,
            records: cost.records,
            reason,
        })
    }

    /// Splits `records` into batches within these limits, preserving order and dropping
    /// nothing. Fails (before any network call) on the first record that can never fit.
    pub fn pack(
        &self,
        records: impl IntoIterator<Item = AppendRecord>,
    ) -> Result<Vec<Vec<AppendRecord>>, S2Error> {
        let mut builder = BatchBuilder::new(*self);
        let mut batches = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            if let Some(done) = builder.push_group_at(i, vec![record])? {
                batches.push(done);
            }
        }
        if !builder.is_empty() {
            batches.push(builder.take());
        }
        Ok(batches)
    }
}

/// [`BatchLimits::pack`] with S2's default limits.
pub fn pack(
    records: impl IntoIterator<Item = AppendRecord>,
) -> Result<Vec<Vec<AppendRecord>>, S2Error> {
    BatchLimits::default().pack(records)
}

/// Incremental batch assembly for a delivery engine. See the module docs.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    limits: BatchLimits,
    records: Vec<AppendRecord>,
    metered: u64,
    /// Upper bound of the serialized append body (including [`BATCH_JSON_OVERHEAD`]).
    json_bytes: usize,
}

impl BatchBuilder {
    /// An empty builder for `limits` (validate them with [`BatchLimits::validate`] first).
    pub fn new(limits: BatchLimits) -> Self {
        BatchBuilder {
            limits,
            records: Vec::new(),
            metered: 0,
            json_bytes: BATCH_JSON_OVERHEAD,
        }
    }

    /// The limits this builder packs to.
    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// Records in the batch being built.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch being built has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Metered bytes of the batch being built.
    pub fn metered_bytes(&self) -> u64 {
        self.metered
    }

    /// Upper bound of the JSON body size if the batch were sent now (with any
    /// `match_seq_num` and a fencing token of up to 36 bytes).
    pub fn json_bytes(&self) -> usize {
        self.json_bytes
    }

    /// The records of the batch being built.
    pub fn records(&self) -> &[AppendRecord] {
        &self.records
    }

    /// Whether a group of this cost can join the batch being built without exceeding a limit.
    pub fn fits(&self, cost: &GroupCost) -> bool {
        self.records.len() + cost.records <= self.limits.max_records
            && self.metered + cost.metered <= self.limits.max_metered_bytes
            && self.json_bytes + cost.json_bytes <= self.limits.max_json_bytes
    }

    /// Adds a group that must stay in one append. If it does not fit into the current batch,
    /// the current batch is finished and returned (`Ok(Some(batch))`) and the group starts the
    /// next one. Errors if the group could not fit even into an empty batch (indices in the
    /// error are positions within `group`); the builder is unchanged then.
    pub fn push_group(
        &mut self,
        group: Vec<AppendRecord>,
    ) -> Result<Option<Vec<AppendRecord>>, S2Error> {
        self.push_group_at(0, group)
    }

    /// [`push_group`](Self::push_group) for a group of one record.
    pub fn push(&mut self, record: AppendRecord) -> Result<Option<Vec<AppendRecord>>, S2Error> {
        self.push_group_at(0, vec![record])
    }

    fn push_group_at(
        &mut self,
        first_index: usize,
        group: Vec<AppendRecord>,
    ) -> Result<Option<Vec<AppendRecord>>, S2Error> {
        let cost = self.limits.check_group(first_index, &group)?;
        let finished = if self.fits(&cost) {
            None
        } else {
            Some(self.take())
        };
        debug_assert!(self.fits(&cost));
        self.records.extend(group);
        self.metered += cost.metered;
        self.json_bytes += cost.json_bytes;
        Ok(finished)
    }

    /// Takes the batch built so far (possibly empty) and resets the builder.
    pub fn take(&mut self) -> Vec<AppendRecord> {
        self.metered = 0;
        self.json_bytes = BATCH_JSON_OVERHEAD;
        std::mem::take(&mut self.records)
    }
}

/// Length of `s` as a JSON string literal written by `serde_json` (quotes included).
///
/// Called for every record body planned (1 KiB each, thousands per second). Blocks of 255
/// bytes are scanned with branch-free byte counters the compiler turns into SIMD (~0.1 µs a
/// KiB; 8-byte words with a per-byte fallback where a `"` was took three times that); only a
/// block holding a control byte (escaped as `\n` or `\u00XX`) is counted byte by byte.
fn json_string_bytes(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut extra = 0usize;
    for block in bytes.chunks(255) {
        // u8 counters: at most 255 bytes, each adding at most one.
        let (mut control, mut escaped) = (0u8, 0u8);
        for &b in block {
            control |= u8::from(b < 0x20);
            escaped += u8::from(b == b'"') + u8::from(b == b'\\');
        }
        extra += if control == 0 {
            usize::from(escaped)
        } else {
            block.iter().map(|&b| escape_extra(b)).sum::<usize>()
        };
    }
    2 + bytes.len() + extra
}

/// Bytes `serde_json` adds when it escapes `b` inside a string.
fn escape_extra(b: u8) -> usize {
    match b {
        b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
        0x00..=0x1f => 5,
        _ => 0,
    }
}

fn decimal_digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Exact length of `serde_json::to_vec(record)`.
fn record_json_bytes(r: &AppendRecord) -> usize {
    // `{` + `"body":` + body + `}`
    let mut n = 1 + 7 + json_string_bytes(&r.body) + 1;
    if !r.headers.is_empty() {
        // `"headers":[` + `],`, then `[name,value]` per header, comma-separated.
        n += 11 + 2 + (r.headers.len() - 1);
        n += r
            .headers
            .iter()
            .map(|(k, v)| 3 + json_string_bytes(k) + json_string_bytes(v))
            .sum::<usize>();
    }
    if let Some(ts) = r.timestamp {
        // `,"timestamp":` + digits
        n += 13 + decimal_digits(ts);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AppendInput;
    use proptest::prelude::*;

    fn rec(body_len: usize) -> AppendRecord {
        AppendRecord::new("x".repeat(body_len))
    }

    #[test]
    fn json_cost_is_exact_for_tricky_strings() {
        for r in [
            AppendRecord::default(),
            AppendRecord::new("\"\\\u{0}\u{1f}\n\t\r\u{8}\u{c}\u{7f}é€😀/<>")
                .with_header("k\"", "v\u{1}")
                .with_header("ü", "")
                .with_timestamp(u64::MAX),
            AppendRecord::new("").with_timestamp(0),
        ] {
            assert_eq!(
                RecordCost::of(&r).json_bytes,
                serde_json::to_vec(&r).unwrap().len(),
                "{r:?}"
            );
        }
    }

    #[test]
    fn json_string_length_is_exact_at_every_offset() {
        let specials = [
            '"', '\\', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', ' ', '!', 'x',
        ];
        for len in 0..40 {
            for at in 0..len {
                for c in specials {
                    let mut s: String = "x".repeat(len);
                    s.replace_range(at..at + 1, &c.to_string());
                    assert_eq!(
                        json_string_bytes(&s),
                        serde_json::to_string(&s).unwrap().len(),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn splits_on_record_count() {
        let batches = pack((0..2500).map(|_| rec(1))).unwrap();
        let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
    }

    #[test]
    fn splits_on_metered_bytes_inclusive() {
        // Two records of 524,280 body bytes meter exactly 1 MiB together (S2 accepts).
        let batches = pack([rec(524_280), rec(524_280), rec(0)]).unwrap();
        let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1]);
        let batches = pack([rec(524_281), rec(524_280)]).unwrap();
        assert_eq!(batches.len(), 2);
    }

    #[test]
    fn splits_on_json_bytes() {
        // 500 control characters: 508 metered bytes, ~3000 JSON bytes each, so 1000 of them
        // fit the count and metered limits but not the JSON cap.
        let r = AppendRecord::new("\u{1}".repeat(500));
        let batches = pack(vec![r; 1000]).unwrap();
        assert!(batches.len() >= 2, "{}", batches.len());
        for b in &batches {
            let body = serde_json::to_vec(&AppendInput::new(b.clone())).unwrap();
            assert!(body.len() <= DEFAULT_MAX_JSON_BYTES);
        }
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 1000);
    }

    #[test]
    fn refuses_record_over_one_mib_with_size_and_limit() {
        assert!(pack([rec(1_048_568)]).is_ok());
        let err = pack([rec(1), rec(1_048_569)]).unwrap_err();
        assert!(matches!(
            err,
            S2Error::RecordTooLarge {
                index: 1,
                metered: 1_048_577,
                limit: 1_048_576
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("1048577") && msg.contains("1048576"), "{msg}");
    }

    #[test]
    fn refuses_record_over_json_cap() {
        // Control characters escape to 6 bytes: 400 KiB of them is ~2.4 MB of JSON.
        let r = AppendRecord::new("\u{1}".repeat(400 * 1024));
        let err = pack([r]).unwrap_err();
        assert!(
            matches!(err, S2Error::RecordJsonTooLarge { index: 0, limit, .. } if limit == DEFAULT_MAX_JSON_BYTES),
            "{err}"
        );
    }

    #[test]
    fn groups_are_never_split() {
        let mut b = BatchBuilder::new(BatchLimits {
            max_records: 5,
            ..Default::default()
        });
        assert_eq!(b.push_group(vec![rec(1); 3]).unwrap(), None);
        let g = vec![rec(2); 3];
        assert!(!b.fits(&GroupCost::of(&g)));
        let done = b.push_group(g).unwrap().unwrap();
        assert_eq!(done, vec![rec(1); 3]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.take(), vec![rec(2); 3]);
        assert!(b.is_empty());
        let err = b.push_group(vec![rec(1); 6]).unwrap_err();
        assert!(
            matches!(err, S2Error::GroupTooLarge { records: 6, .. }),
            "{err}"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn validates_limits() {
        assert!(BatchLimits::default().validate().is_ok());
        for bad in [
            BatchLimits {
                max_records: 0,
                ..Default::default()
            },
            BatchLimits {
                max_records: 1001,
                ..Default::default()
            },
            BatchLimits {
                max_metered_bytes: MAX_BATCH_METERED_BYTES + 1,
                ..Default::default()
            },
            BatchLimits {
                max_json_bytes: 10,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{0,40}",
            "\\PC{0,20}",
            proptest::collection::vec(0u8..0x80, 0..60).prop_map(|v| String::from_utf8(v).unwrap()),
        ]
    }

    fn arb_record() -> impl Strategy<Value = AppendRecord> {
        (
            proptest::collection::vec((arb_string(), arb_string()), 0..3),
            arb_string(),
            proptest::option::of(any::<u64>()),
            0usize..3000,
        )
            .prop_map(|(headers, body, timestamp, pad)| AppendRecord {
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                body: (body + &"\"".repeat(pad % 7) + &"y".repeat(pad)).into(),
                timestamp,
            })
    }

    proptest! {
        #[test]
        fn json_string_length_is_exact_with_several_specials_in_a_word(
            chars in proptest::collection::vec(
                proptest::sample::select(vec!['"', '\\', '\n', '\u{1}', '\u{1f}', 'é', 'x', '\u{7f}', '€', ' ']),
                0..50,
            ),
        ) {
            let s: String = chars.into_iter().collect();
            prop_assert_eq!(json_string_bytes(&s), serde_json::to_string(&s).unwrap().len());
        }

        #[test]
        fn record_json_cost_is_exact(r in arb_record()) {
            prop_assert_eq!(RecordCost::of(&r).json_bytes, serde_json::to_vec(&r).unwrap().len());
        }

        #[test]
        fn packed_batches_respect_limits_and_keep_order(
            records in proptest::collection::vec(arb_record(), 0..120),
            max_records in 1usize..20,
            max_metered in 3000u64..20_000,
            max_json in 7_000usize..40_000,
        ) {
            let limits = BatchLimits { max_records, max_metered_bytes: max_metered, max_json_bytes: max_json };
            match limits.pack(records.clone()) {
                Ok(batches) => {
                    for b in &batches {
                        prop_assert!(!b.is_empty());
                        prop_assert!(b.len() <= max_records);
                        prop_assert!(b.iter().map(AppendRecord::metered_size).sum::<u64>() <= max_metered);
                        let input = AppendInput {
                            records: b.clone(),
                            match_seq_num: Some(u64::MAX),
                            fencing_token: Some("\u{1}".repeat(36)),
                        };
                        prop_assert!(serde_json::to_vec(&input).unwrap().len() <= max_json);
                    }
                    let flat: Vec<_> = batches.into_iter().flatten().collect();
                    prop_assert_eq!(flat, records);
                }
                Err(e) => {
                    // Only refused when some record really cannot fit on its own.
                    let (index, too_big) = match e {
                        S2Error::RecordTooLarge { index, .. } => {
                            (index, records[index].metered_size() > max_metered)
                        }
                        S2Error::RecordJsonTooLarge { index, .. } => {
                            let input = AppendInput::new(vec![records[index].clone()]);
                            (index, serde_json::to_vec(&input).unwrap().len() + BATCH_JSON_OVERHEAD > max_json)
                        }
                        other => panic!("unexpected {other}"),
                    };
                    prop_assert!(too_big, "record {} refused", index);
                    for r in &records[..index] {
                        prop_assert!(limits.check_record(0, RecordCost::of(r)).is_ok());
                    }
                }
            }
        }

        #[test]
        fn builder_groups_stay_together(
            groups in proptest::collection::vec(proptest::collection::vec(arb_record(), 1..5), 0..40),
        ) {
            let limits = BatchLimits { max_records: 8, max_metered_bytes: 12_000, max_json_bytes: 30_000 };
            let mut b = BatchBuilder::new(limits);
            let mut batches = Vec::new();
            let mut accepted = Vec::new();
            for g in groups {
                let before = b.len();
                match b.push_group(g.clone()) {
                    Ok(Some(done)) => { prop_assert_eq!(done.len(), before); batches.push(done); accepted.push(g); }
                    Ok(None) => accepted.push(g),
                    Err(_) => prop_assert_eq!(b.len(), before),
                }
                prop_assert!(b.json_bytes() >= serde_json::to_vec(&AppendInput::new(b.records().to_vec())).unwrap().len());
            }
            if !b.is_empty() { batches.push(b.take()); }
            // Every accepted group lies entirely in one batch, in order.
            let mut it = batches.iter();
            let mut cur: &[AppendRecord] = &[];
            for g in &accepted {
                if cur.is_empty() { cur = it.next().unwrap(); }
                prop_assert!(cur.len() >= g.len());
                prop_assert_eq!(&cur[..g.len()], &g[..]);
                cur = &cur[g.len()..];
            }
            prop_assert!(cur.is_empty() && it.next().is_none());
        }
    }
}
