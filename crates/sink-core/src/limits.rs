//! S2's append limits and its metered-size formula.

/// Most records one append may carry.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Most metered bytes one append may carry (inclusive bound, verified against s2-lite).
pub const MAX_BATCH_METERED_BYTES: u64 = 1024 * 1024;
/// A single record may be as large as a whole batch.
pub const MAX_RECORD_METERED_BYTES: u64 = MAX_BATCH_METERED_BYTES;
/// Serialized JSON request bodies are kept under this by default: s2-lite buffers at most
/// 2 MiB of request body, and JSON escaping can double a body's size.
pub const DEFAULT_MAX_JSON_BYTES: usize = 2 * 1024 * 1024 - 64 * 1024;

/// S2's metered size of one record: `8 + 2·headers + Σ(name + value) + body`, in decoded bytes.
///
/// The timestamp is not counted. Summing this over records gives the batch size S2 checks.
pub fn metered_size<N, V>(headers: &[(N, V)], body_len: usize) -> u64
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len())
        .sum();
    8 + 2 * headers.len() as u64 + header_bytes as u64 + body_len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_record_is_eight_bytes() {
        assert_eq!(metered_size::<&str, &str>(&[], 0), 8);
    }

    #[test]
    fn headers_count_two_bytes_each_plus_lengths() {
        let h = [("content-type", "application/json"), ("msg-id", "a1")];
        // 8 + 2*2 + (12+16) + (6+2) + 7
        assert_eq!(metered_size(&h, 7), 8 + 4 + 28 + 8 + 7);
    }

    #[test]
    fn boundaries_match_s2_lite() {
        // Verified against s2-lite: 1,048,568-byte body with no headers is exactly 1 MiB.
        assert_eq!(
            metered_size::<&str, &str>(&[], 1_048_568),
            MAX_RECORD_METERED_BYTES
        );
        assert_eq!(
            metered_size(&[("h", "v")], 1_048_564),
            MAX_RECORD_METERED_BYTES
        );
    }

    #[test]
    fn multibyte_utf8_counts_bytes_not_chars() {
        let h = [("ü", "€")];
        assert_eq!(metered_size(&h, 0), 8 + 2 + 2 + 3);
    }
}
