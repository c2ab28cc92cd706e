//! Opening an append session's streaming request and reading its response, over either
//! HTTP/2 transport: our own h2c connection for `http://` endpoints ([`crate::h2c`]), or
//! reqwest's HTTP/2 (ALPN) client for `https://`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use tokio::sync::mpsc;

use crate::error::{parse_retry_after, transport_error, S2Error};
use crate::h2c;

/// Builds the reqwest client of one `https://` session.
pub(crate) type ClientFactory = Box<dyn Fn() -> Result<reqwest::Client, S2Error> + Send + Sync>;

/// How a client's sessions reach S2: one connection per session either way, so sessions of
/// many streams never queue behind the server's limit of concurrent HTTP/2 streams on one
/// connection (a session holds its stream as long as it lives).
pub(crate) enum Transport {
    /// `https://`: a reqwest HTTP/2 client of its own per session (no whole-request timeout).
    Reqwest(ClientFactory),
    /// `http://`: an h2c connection of its own per session.
    H2c { connect_timeout: Duration },
}

/// What a session request needs: the records URL and its headers (basin, token).
pub(crate) struct SessionRequest {
    pub url: reqwest::Url,
    pub headers: HeaderMap,
}

/// The response of an opened session: its status and the frames to come.
pub(crate) struct Opened {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: ResponseBody,
}

pub(crate) enum ResponseBody {
    /// The session's own client (and so its connection) lives as long as the response.
    Reqwest {
        response: reqwest::Response,
        _client: reqwest::Client,
    },
    /// The connection lives as long as the response is read.
    H2c(hyper::body::Incoming, h2c::Connection),
}

fn ended(context: &str, reason: String, may_have_applied: bool) -> S2Error {
    S2Error::SessionEnded {
        context: context.to_string(),
        reason,
        may_have_applied,
    }
}

/// Sends the request whose body is `frames`; resolves when S2 answers with its headers.
pub(crate) async fn open(
    transport: &Transport,
    request: &SessionRequest,
    frames: mpsc::UnboundedReceiver<Bytes>,
    context: &str,
) -> Result<Opened, S2Error> {
    match transport {
        Transport::Reqwest(client) => {
            // Lives as long as the response it returns (the connection goes with it).
            let http = client()?;
            let r = http
                .post(request.url.clone())
                .headers(request.headers.clone())
                .header(CONTENT_TYPE, "s2s/proto")
                .body(reqwest::Body::wrap_stream(ReqwestFrames(frames)))
                .send()
                .await
                .map_err(|e| transport_error(context, e))?;
            Ok(Opened {
                status: r.status().as_u16(),
                retry_after: parse_retry_after(r.headers()),
                body: ResponseBody::Reqwest {
                    response: r,
                    _client: http,
                },
            })
        }
        Transport::H2c { connect_timeout } => {
            let url = &request.url;
            let host = url.host_str().unwrap_or("127.0.0.1");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = url.port_or_known_default().unwrap_or(80);
            let mut conn = h2c::connect(host, port, *connect_timeout)
                .await
                .map_err(|e| ended(context, format!("could not connect: {e}"), false))?;
            let mut builder = hyper::Request::post(url.as_str()).header(CONTENT_TYPE, "s2s/proto");
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            let req = builder
                .body(http_body_util::StreamBody::new(h2c::BodyFrames(frames)))
                .map_err(|e| S2Error::InvalidConfig(format!("{context}: request: {e}")))?;
            let r = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| ended(context, format!("connection failed: {e}"), true))?;
            let (parts, body) = r.into_parts();
            Ok(Opened {
                status: parts.status.as_u16(),
                retry_after: parse_retry_after(&parts.headers),
                body: ResponseBody::H2c(body, conn),
            })
        }
    }
}

impl ResponseBody {
    /// The next bytes of the response; `None` at its end.
    pub async fn chunk(&mut self, context: &str) -> Result<Option<Bytes>, S2Error> {
        match self {
            ResponseBody::Reqwest { response, .. } => response
                .chunk()
                .await
                .map_err(|e| transport_error(context, e)),
            ResponseBody::H2c(body, _) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        return Err(ended(context, format!("connection failed: {e}"), true))
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
        }
    }

    /// The whole remaining body as text (an error response), empty if it cannot be read.
    pub async fn text(self) -> String {
        match self {
            ResponseBody::Reqwest { response, .. } => response.text().await.unwrap_or_default(),
            ResponseBody::H2c(body, _conn) => match body.collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => String::new(),
            },
        }
    }
}

/// The request body for reqwest: frames as the session submits them.
struct ReqwestFrames(mpsc::UnboundedReceiver<Bytes>);

impl futures_core::Stream for ReqwestFrames {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}
