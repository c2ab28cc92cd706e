//! JSON bodies for the errors actix's HTTP/1 codec answers by itself.
//!
//! A malformed request line or header (400), a header section over the codec's limit (431) and
//! a request head that does not arrive within the head timeout (408) are answered by actix-http
//! before any application code runs, always with an empty body. Every other error this server
//! produces is `{"error":{"code","message"}}`, and clients should not need a second way to read
//! errors. So each connection's socket is wrapped in [`JsonCodecErrors`]: it recognises exactly
//! those responses on their way out (one of the three status lines with `content-length: 0` at
//! the start of a write) and writes the same response with the JSON body instead. Application
//! responses never match: every error the application sends carries a JSON body.
//!
//! Only a response at the start of a write is rewritten. actix writes each error response
//! alone (the connection closes after it), so in practice every one is caught; a client that
//! pipelines a good request before a broken one may still see the empty body.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The codec's own error responses and what their JSON body says.
const CODEC_ERRORS: [(&[u8], &str, &str); 3] = [
    (
        b"400 ",
        "bad_request",
        "malformed HTTP request: the request line or a header could not be parsed",
    ),
    (
        b"408 ",
        "request_timeout",
        "the request line and headers did not arrive in time",
    ),
    (
        b"431 ",
        "headers_too_large",
        "the request's header section is over the server's limit",
    ),
];

/// A connection whose codec-made error responses leave with a JSON body (see the module doc).
pub struct JsonCodecErrors<T> {
    io: T,
    /// A rewritten response not yet fully written to `io`.
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
}

impl<T> JsonCodecErrors<T> {
    /// Wraps one accepted connection.
    pub fn new(io: T) -> JsonCodecErrors<T> {
        JsonCodecErrors {
            io,
            out: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonCodecErrors<T> {
    /// Writes what is left of a rewritten response; `Ready(Ok)` once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// The same response with a JSON error body, when `buf` starts with one of the codec's empty
/// error responses; `None` for anything else.
pub fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 ") || buf.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let status = &buf[9..];
    let (_, code, message) = CODEC_ERRORS
        .iter()
        .find(|(s, _, _)| status.starts_with(s))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut headers = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("content-type") {
            headers.push(line);
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut out = Vec::with_capacity(buf.len() + body.len() + 64);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(&buf[head_end + 4..]);
    Some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonCodecErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonCodecErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        match rewrite(buf) {
            Some(out) => {
                this.out = out;
                // Counted as written now; flush and shutdown finish writing it.
                if let Poll::Ready(Err(e)) = this.drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_errors_get_a_json_body() {
        let raw = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(raw).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        for (status, code) in [
            ("408 Request Timeout", "request_timeout"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let out = String::from_utf8(rewrite(raw.as_bytes()).unwrap()).unwrap();
            assert!(out.contains(code), "{out}");
        }
    }

    #[test]
    fn other_responses_pass_unchanged() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\ncontent-type: application/json\r\n\r\n{\"error\":{}}",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-le",
            "{\"partial\": \"body\"}",
        ] {
            assert!(rewrite(raw.as_bytes()).is_none(), "{raw}");
        }
    }
}
