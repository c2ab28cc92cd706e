//! S2's append-session wire format: `s2s` frames carrying protobuf `AppendInput` out and
//! `AppendAck` in (`s2/v1/s2.proto`, `s2s.md` of S2's specs).
//!
//! Written by hand for the two messages a sink needs, so the client pulls in no protobuf
//! toolchain. A frame is a 3-byte big-endian length (of what follows), a flag byte (bit 7:
//! terminal; bits 6–5: compression, which this client never asks for) and the payload; a
//! terminal frame carries a 2-byte HTTP status and S2's JSON error body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::{AppendAck, AppendInput, AppendRecord, StreamPosition};

/// Largest frame S2 accepts (flag byte + payload), smaller than the 24-bit maximum.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;
const FLAG_TERMINAL: u8 = 0b1000_0000;
const FLAG_COMPRESSION: u8 = 0b0110_0000;
const FLAG_RECONNECT_ADVISED: u8 = 0b0001_0000;

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_len_field(buf: &mut BytesMut, field: u64, len: usize) {
    put_varint(buf, (field << 3) | WIRE_LEN);
    put_varint(buf, len as u64);
}

fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn header_len(name: &str, value: &str) -> usize {
    len_field(name.len()) + len_field(value.len())
}

fn record_len(r: &AppendRecord) -> usize {
    r.timestamp.map_or(0, |t| 1 + varint_len(t))
        + r.headers
            .iter()
            .map(|(k, v)| len_field(header_len(k, v)))
            .sum::<usize>()
        + len_field(r.body.len())
}

fn put_record(buf: &mut BytesMut, r: &AppendRecord) {
    if let Some(t) = r.timestamp {
        put_varint(buf, (1 << 3) | WIRE_VARINT);
        put_varint(buf, t);
    }
    for (k, v) in &r.headers {
        put_len_field(buf, 2, header_len(k, v));
        put_len_field(buf, 1, k.len());
        buf.put_slice(k.as_bytes());
        put_len_field(buf, 2, v.len());
        buf.put_slice(v.as_bytes());
    }
    put_len_field(buf, 3, r.body.len());
    buf.put_slice(r.body.as_bytes());
}

/// `input` as one regular s2s frame; `None` when it exceeds [`MAX_FRAME_BYTES`].
pub fn append_frame(input: &AppendInput) -> Option<Bytes> {
    let records: usize = input.records.iter().map(|r| len_field(record_len(r))).sum();
    let payload = records
        + input.match_seq_num.map_or(0, |m| 1 + varint_len(m))
        + input
            .fencing_token
            .as_ref()
            .map_or(0, |t| len_field(t.len()));
    if 1 + payload > MAX_FRAME_BYTES {
        return None;
    }
    let mut buf = BytesMut::with_capacity(4 + payload);
    buf.put_uint(1 + payload as u64, 3);
    buf.put_u8(0);
    for r in &input.records {
        put_len_field(&mut buf, 1, record_len(r));
        put_record(&mut buf, r);
    }
    if let Some(m) = input.match_seq_num {
        put_varint(&mut buf, (2 << 3) | WIRE_VARINT);
        put_varint(&mut buf, m);
    }
    if let Some(t) = &input.fencing_token {
        put_len_field(&mut buf, 3, t.len());
        buf.put_slice(t.as_bytes());
    }
    debug_assert_eq!(buf.len(), 4 + payload);
    Some(buf.freeze())
}

/// One frame received from S2.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// An append acknowledged, in the order the inputs were sent; `reconnect_advised`: S2
    /// is about to end the session and asks for new appends on a new one.
    Ack {
        ack: AppendAck,
        reconnect_advised: bool,
    },
    /// The session ended with an error: HTTP status and S2's JSON error body.
    Terminal { status: u16, body: String },
}

/// Why bytes from S2 could not be read as a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

/// Takes one complete frame off the front of `buf`, or `Ok(None)` until more bytes arrive.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 3 {
        return Ok(None);
    }
    let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError(format!("frame length {len} out of range")));
    }
    if buf.len() < 3 + len {
        return Ok(None);
    }
    buf.advance(3);
    let mut frame = buf.split_to(len).freeze();
    let flag = frame.get_u8();
    if flag & FLAG_TERMINAL != 0 {
        if frame.len() < 2 {
            return Err(FrameError("terminal frame without a status".into()));
        }
        let status = frame.get_u16();
        let body = String::from_utf8_lossy(&frame).into_owned();
        return Ok(Some(Frame::Terminal { status, body }));
    }
    if flag & FLAG_COMPRESSION != 0 {
        return Err(FrameError(format!(
            "compressed frame (flag {flag:#04x}) though none was asked for"
        )));
    }
    let reconnect_advised = flag & FLAG_RECONNECT_ADVISED != 0;
    decode_ack(frame).map(|ack| {
        Some(Frame::Ack {
            ack,
            reconnect_advised,
        })
    })
}

fn get_varint(buf: &mut Bytes) -> Result<u64, FrameError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err(FrameError("truncated varint".into()));
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(FrameError("varint longer than 10 bytes".into()))
}

/// Calls `field(number, wire type, value)` for each field; length-delimited values are
/// passed as their bytes, others are skipped unless they are varints.
fn each_field(
    mut buf: Bytes,
    mut field: impl FnMut(u64, Result<u64, Bytes>) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    while buf.has_remaining() {
        let key = get_varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            WIRE_VARINT => field(number, Ok(get_varint(&mut buf)?))?,
            WIRE_LEN => {
                let len = get_varint(&mut buf)? as usize;
                if len > buf.remaining() {
                    return Err(FrameError("truncated field".into()));
                }
                field(number, Err(buf.split_to(len)))?;
            }
            WIRE_I64 | WIRE_I32 => {
                let n = if wire == WIRE_I64 { 8 } else { 4 };
                if n > buf.remaining() {
                    return Err(FrameError("truncated field".into()));
                }
                buf.advance(n);
            }
            other => return Err(FrameError(format!("unknown wire type {other}"))),
        }
    }
    Ok(())
}

fn decode_position(buf: Bytes) -> Result<StreamPosition, FrameError> {
    let mut p = StreamPosition::default();
    each_field(buf, |n, v| {
        match (n, v) {
            (1, Ok(v)) => p.seq_num = v,
            (2, Ok(v)) => p.timestamp = v,
            _ => {}
        }
        Ok(())
    })?;
    Ok(p)
}

fn decode_ack(buf: Bytes) -> Result<AppendAck, FrameError> {
    let mut ack = AppendAck::default();
    let mut seen = [false; 3];
    each_field(buf, |n, v| {
        if let (1..=3, Err(bytes)) = (n, v) {
            let p = decode_position(bytes)?;
            seen[n as usize - 1] = true;
            match n {
                1 => ack.start = p,
                2 => ack.end = p,
                _ => ack.tail = p,
            }
        }
        Ok(())
    })?;
    if !(seen[0] && seen[1]) {
        return Err(FrameError("append ack without start or end".into()));
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), n);
            assert_eq!(get_varint(&mut b.freeze()).unwrap(), v);
        }
    }

    #[test]
    fn an_append_input_encodes_as_protobuf_in_a_frame() {
        let input = AppendInput::new(vec![AppendRecord::new("hi").with_header("k", "v")])
            .with_match_seq_num(300);
        let frame = append_frame(&input).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 18, 0,             // length 18 (flag + payload), flag 0
            0x0a, 12,                // records (1), 12 bytes
            0x12, 6,                 //   headers (2), 6 bytes
            0x0a, 1, b'k',           //     name (1)
            0x12, 1, b'v',           //     value (2)
            0x1a, 2, b'h', b'i',     //   body (3)
            0x10, 0xac, 0x02,        // match_seq_num (2) = 300
        ];
        assert_eq!(&frame[..], want);
    }

    #[test]
    fn an_oversized_append_has_no_frame() {
        let big = "x".repeat(MAX_FRAME_BYTES);
        assert!(append_frame(&AppendInput::new(vec![AppendRecord::new(big)])).is_none());
    }

    #[test]
    fn acks_and_terminal_frames_decode_across_partial_reads() {
        // AppendAck { start: {1, 7}, end: {3, 7}, tail: {3, 7} } then a terminal 412.
        let ack: &[u8] = &[
            0, 0, 19, 0, 0x0a, 4, 0x08, 1, 0x10, 7, 0x12, 4, 0x08, 3, 0x10, 7, 0x1a, 4, 0x08, 3,
            0x10, 7,
        ];
        let body = br#"{"seq_num_mismatch":3}"#;
        let mut bytes = ack.to_vec();
        bytes.extend_from_slice(&[0, 0, 3 + body.len() as u8, FLAG_TERMINAL, 0x01, 0x9c]);
        bytes.extend_from_slice(body);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in bytes {
            buf.put_u8(b);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        let pos = |seq_num| StreamPosition {
            seq_num,
            timestamp: 7,
        };
        assert_eq!(
            frames,
            vec![
                Frame::Ack {
                    ack: AppendAck {
                        start: pos(1),
                        end: pos(3),
                        tail: pos(3)
                    },
                    reconnect_advised: false
                },
                Frame::Terminal {
                    status: 412,
                    body: r#"{"seq_num_mismatch":3}"#.into()
                }
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert!(next_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0u8, 0, 2, 0x40, 0][..]);
        assert!(next_frame(&mut buf).is_err(), "compressed");
        let mut buf = BytesMut::from(&[0u8, 0, 3, 0, 0x0a, 9][..]);
        assert!(next_frame(&mut buf).is_err(), "truncated");
    }
}
