//! The S2 REST client: append, read, check tail, ensure basin/stream, list streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;

use crate::config::{encode_path_segment, Endpoint, S2Config, Target};
use crate::error::{from_response, parse_retry_after, transport_error, truncate_body, S2Error};
use crate::proto;
use crate::session::{SessionTarget, Sessions};
use crate::session_http::{self, SessionRequest, Transport};
use crate::types::{
    AppendAck, AppendInput, ListStreamsResponse, ReadBatch, ReadLimits, SequencedRecord,
    StreamPosition, TailResponse,
};

/// A cheap-to-clone handle on one connection pool to one S2 endpoint.
///
/// Every method is a single HTTP request without retries: the caller (the delivery engine)
/// owns retry policy, using [`S2Error::class`] and [`S2Error::retry_after`].
#[derive(Clone)]
pub struct S2Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: S2Config,
    sessions: Arc<Sessions>,
    session_target: Arc<SessionTarget>,
    /// `Authorization` of session requests (sensitive: never printed).
    session_auth: Option<HeaderValue>,
}

impl fmt::Debug for S2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config's Debug redacts the token.
        f.debug_struct("S2Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Outcome of a successful HTTP exchange: status and body text.
struct Response {
    status: u16,
    body: String,
}

impl S2Client {
    /// Builds a client (no network I/O happens here).
    pub fn new(config: S2Config) -> Result<Self, S2Error> {
        if let Endpoint::Direct(url) = &config.endpoint {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| S2Error::InvalidConfig(format!("endpoint URL {url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(S2Error::InvalidConfig(format!(
                    "endpoint URL {url:?} must be http or https"
                )));
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert("s2-format", HeaderValue::from_static("raw"));
        let mut session_auth = None;
        if let Some(token) = &config.access_token {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    S2Error::InvalidConfig("access token contains invalid characters".into())
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value.clone());
            session_auth = Some(value);
        }
        let http = build_client(client_builder(&headers, &config).timeout(config.request_timeout))?;
        // Sessions are long-lived streaming requests: HTTP/2 always, no whole-request
        // timeout (each append's ack has its own deadline). Plain http gets our own h2c
        // connection (see `h2c` for why), https a reqwest client of its own per session.
        let plain = match &config.endpoint {
            Endpoint::Direct(url) => url.starts_with("http://"),
            Endpoint::Cloud => false,
        };
        let session_client = {
            let (headers, config) = (headers.clone(), config.clone());
            move || build_client(client_builder(&headers, &config).http2_prior_knowledge())
        };
        let transport = if plain {
            Transport::H2c {
                connect_timeout: config.connect_timeout,
            }
        } else {
            // Built once here to surface configuration errors now.
            session_client()?;
            Transport::Reqwest(Box::new(session_client))
        };
        let session_target = Arc::new(SessionTarget {
            transport,
            ack_timeout: config.request_timeout,
        });
        Ok(S2Client {
            inner: Arc::new(Inner {
                http,
                config,
                sessions: Arc::default(),
                session_target,
                session_auth,
            }),
        })
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &S2Config {
        &self.inner.config
    }

    /// Appends one atomic batch to `stream`, returning S2's ack positions.
    ///
    /// No local limit checks: pack records with [`crate::BatchLimits`] first. 412 becomes
    /// [`S2Error::SeqNumMismatch`] (with the stream's actual tail) or
    /// [`S2Error::FencingTokenMismatch`].
    pub async fn append(
        &self,
        basin: &str,
        stream: &str,
        input: &AppendInput,
    ) -> Result<AppendAck, S2Error> {
        let context = format!("append to stream `{stream}` in basin `{basin}`");
        // Sized up front: an append body is up to ~1 MiB, and growing it by doubling copies it
        // again each time and asks the allocator for fresh (zeroed) pages per append.
        let estimate = 64
            + input
                .records
                .iter()
                .map(|r| {
                    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
                    r.body.len() + r.body.len() / 8 + headers + 48
                })
                .sum::<usize>();
        let mut body = Vec::with_capacity(estimate);
        serde_json::to_writer(&mut body, input)
            .map_err(|e| S2Error::InvalidConfig(format!("{context}: serialize: {e}")))?;
        let target = self.records_target(basin, stream, "");
        let req = self
            .basin_request(Method::POST, &target)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let resp = self.send(&context, req, input.match_seq_num).await?;
        decode(&context, &resp)
    }

    /// Appends `input` so that appends to one stream submitted one after another reach S2
    /// in that order, even while earlier ones are still unanswered.
    ///
    /// The append is queued before this returns (not when the future is first polled), on
    /// the stream's append session ([`S2Config::append_session`]; see `session`). With
    /// sessions off it is a unary [`S2Client::append`], which gives no such order.
    pub fn append_ordered(
        &self,
        basin: &str,
        stream: &str,
        input: Arc<AppendInput>,
    ) -> Pin<Box<dyn Future<Output = Result<AppendAck, S2Error>> + Send + 'static>> {
        if !self.inner.config.append_session {
            let (this, basin, stream) = (self.clone(), basin.to_owned(), stream.to_owned());
            return Box::pin(async move { this.append(&basin, &stream, &input).await });
        }
        let context = format!("append to stream `{stream}` in basin `{basin}`");
        let Some(frame) = proto::append_frame(&input) else {
            return Box::pin(std::future::ready(Err(S2Error::GroupTooLarge {
                index: 0,
                records: input.records.len(),
                reason: format!(
                    "the append exceeds the session frame limit of {} bytes",
                    proto::MAX_FRAME_BYTES
                ),
            })));
        };
        let request = match self.session_request(basin, stream, &context) {
            Ok(r) => r,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let reply = self.inner.sessions.submit(
            &self.inner.session_target,
            request,
            (basin.to_owned(), stream.to_owned()),
            frame,
            input.match_seq_num,
        );
        Box::pin(async move {
            reply.await.unwrap_or_else(|_| {
                Err(S2Error::SessionEnded {
                    context,
                    reason: "the session's task stopped (its runtime shut down)".into(),
                    may_have_applied: true,
                })
            })
        })
    }

    /// Opens an append session on `stream` and closes it without appending anything: checks
    /// that the way to S2 carries sessions (HTTP/2 all along) and that S2 takes this stream.
    pub async fn probe_session(&self, basin: &str, stream: &str) -> Result<(), S2Error> {
        let context = format!("append session on stream `{stream}` in basin `{basin}`");
        let request = self.session_request(basin, stream, &context)?;
        // No frame will come: the request body ends at once.
        let (_, frames) = tokio::sync::mpsc::unbounded_channel();
        let open = session_http::open(
            &self.inner.session_target.transport,
            &request,
            frames,
            &context,
        );
        let opened = tokio::time::timeout(self.inner.config.request_timeout, open)
            .await
            .map_err(|_| S2Error::SessionEnded {
                context: context.clone(),
                reason: "no answer within the request timeout".into(),
                may_have_applied: false,
            })??;
        if (200..300).contains(&opened.status) {
            return Ok(());
        }
        let text = opened.body.text().await;
        Err(from_response(
            context,
            opened.status,
            opened.retry_after,
            &text,
            None,
        ))
    }

    /// The URL and headers (basin, token) of a session request on `stream`.
    fn session_request(
        &self,
        basin: &str,
        stream: &str,
        context: &str,
    ) -> Result<SessionRequest, S2Error> {
        let target = self.records_target(basin, stream, "");
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| S2Error::InvalidConfig(format!("{context}: URL {}: {e}", target.url)))?;
        let mut headers = HeaderMap::new();
        if let Some(basin) = &target.basin_header {
            let v = HeaderValue::from_str(basin).map_err(|e| {
                S2Error::InvalidConfig(format!("{context}: basin name as a header: {e}"))
            })?;
            headers.insert("s2-basin", v);
        }
        if let Some(auth) = &self.inner.session_auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        Ok(SessionRequest { url, headers })
    }

    /// Number of append sessions open now (each one a streaming request to S2).
    pub fn open_sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// The stream's tail: the seq num the next record will get and the last timestamp.
    pub async fn check_tail(&self, basin: &str, stream: &str) -> Result<StreamPosition, S2Error> {
        let context = format!("check tail of stream `{stream}` in basin `{basin}`");
        let target = self.records_target(basin, stream, "/tail");
        let resp = self
            .send(&context, self.basin_request(Method::GET, &target), None)
            .await?;
        Ok(decode::<TailResponse>(&context, &resp)?.tail)
    }

    /// Reads records starting at `start_seq_num` (one unary read, no waiting).
    ///
    /// Returns an empty vec when the start is at or beyond the tail (S2's 416). Command
    /// records are included; see [`SequencedRecord::is_command`].
    pub async fn read(
        &self,
        basin: &str,
        stream: &str,
        start_seq_num: u64,
        limits: ReadLimits,
    ) -> Result<Vec<SequencedRecord>, S2Error> {
        let context = format!("read stream `{stream}` in basin `{basin}` from {start_seq_num}");
        let mut query = format!(
            "?seq_num={start_seq_num}&count={}",
            limits.count.unwrap_or(1000)
        );
        if let Some(bytes) = limits.bytes {
            query.push_str(&format!("&bytes={bytes}"));
        }
        let target = self.records_target(basin, stream, &query);
        match self
            .send(&context, self.basin_request(Method::GET, &target), None)
            .await
        {
            Ok(resp) => Ok(decode::<ReadBatch>(&context, &resp)?.records),
            Err(S2Error::RangeNotSatisfiable { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Creates `basin` if missing (PUT, idempotent). `config` is S2's `BasinConfig` JSON,
    /// e.g. `{"create_stream_on_append": true}`. Returns whether it was created.
    pub async fn ensure_basin(
        &self,
        basin: &str,
        config: Option<&serde_json::Value>,
    ) -> Result<bool, S2Error> {
        let context = format!("ensure basin `{basin}`");
        let url = self
            .inner
            .config
            .endpoint
            .account_url(&format!("/basins/{}", encode_path_segment(basin)));
        let body = match config {
            Some(c) => serde_json::json!({ "config": c }),
            None => serde_json::json!({}),
        };
        let req = self
            .inner
            .http
            .request(Method::PUT, url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        Ok(self.send(&context, req, None).await?.status == 201)
    }

    /// The basin's config (S2's `BasinConfig` JSON, e.g. `create_stream_on_append`): also the
    /// cheapest way to learn that the endpoint answers, the token is accepted and the basin
    /// exists, without writing anything.
    pub async fn basin_config(&self, basin: &str) -> Result<serde_json::Value, S2Error> {
        let context = format!("get config of basin `{basin}`");
        let url = self
            .inner
            .config
            .endpoint
            .account_url(&format!("/basins/{}", encode_path_segment(basin)));
        let req = self.inner.http.request(Method::GET, url);
        let resp = self.send(&context, req, None).await?;
        decode(&context, &resp)
    }

    /// Creates `stream` if missing (PUT, idempotent). `config` is S2's `StreamConfig` JSON.
    /// Returns whether it was created.
    pub async fn ensure_stream(
        &self,
        basin: &str,
        stream: &str,
        config: Option<&serde_json::Value>,
    ) -> Result<bool, S2Error> {
        let context = format!("ensure stream `{stream}` in basin `{basin}`");
        let target = self
            .inner
            .config
            .endpoint
            .basin_target(basin, &format!("/streams/{}", encode_path_segment(stream)));
        let body = config.cloned().unwrap_or_else(|| serde_json::json!({}));
        let req = self
            .basin_request(Method::PUT, &target)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        Ok(self.send(&context, req, None).await?.status == 201)
    }

    /// Deletes `stream` (S2 answers 202 and deletes asynchronously).
    pub async fn delete_stream(&self, basin: &str, stream: &str) -> Result<(), S2Error> {
        let context = format!("delete stream `{stream}` in basin `{basin}`");
        let target = self
            .inner
            .config
            .endpoint
            .basin_target(basin, &format!("/streams/{}", encode_path_segment(stream)));
        let req = self.basin_request(Method::DELETE, &target);
        self.send(&context, req, None).await.map(drop)
    }

    /// Names of the streams in `basin` starting with `prefix` (all pages), sorted as S2 lists.
    pub async fn list_streams(&self, basin: &str, prefix: &str) -> Result<Vec<String>, S2Error> {
        let context = format!("list streams in basin `{basin}`");
        let mut names: Vec<String> = Vec::new();
        loop {
            let mut query = format!("/streams?prefix={}", encode_path_segment(prefix));
            if let Some(last) = names.last() {
                query.push_str(&format!("&start_after={}", encode_path_segment(last)));
            }
            let target = self.inner.config.endpoint.basin_target(basin, &query);
            let resp = self
                .send(&context, self.basin_request(Method::GET, &target), None)
                .await?;
            let page: ListStreamsResponse = decode(&context, &resp)?;
            let empty = page.streams.is_empty();
            names.extend(page.streams.into_iter().map(|s| s.name));
            if !page.has_more || empty {
                return Ok(names);
            }
        }
    }

    fn records_target(&self, basin: &str, stream: &str, suffix: &str) -> Target {
        self.inner.config.endpoint.basin_target(
            basin,
            &format!("/streams/{}/records{suffix}", encode_path_segment(stream)),
        )
    }

    fn basin_request(&self, method: Method, target: &Target) -> RequestBuilder {
        let req = self.inner.http.request(method, &target.url);
        match &target.basin_header {
            Some(basin) => req.header("s2-basin", basin),
            None => req,
        }
    }

    /// Sends `req`; non-2xx statuses become typed errors.
    async fn send(
        &self,
        context: &str,
        req: RequestBuilder,
        expected_seq_num: Option<u64>,
    ) -> Result<Response, S2Error> {
        let resp = req.send().await.map_err(|e| transport_error(context, e))?;
        let status = resp.status().as_u16();
        let retry_after = parse_retry_after(resp.headers());
        let body = resp.text().await.map_err(|e| transport_error(context, e))?;
        tracing::debug!(%context, status, "S2 response");
        if (200..300).contains(&status) {
            Ok(Response { status, body })
        } else {
            Err(from_response(
                context.to_string(),
                status,
                retry_after,
                &body,
                expected_seq_num,
            ))
        }
    }
}

/// What every HTTP client of one S2 client shares: default headers (token, format), the
/// connect timeout, no proxy for a loopback endpoint.
fn client_builder(headers: &HeaderMap, config: &S2Config) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .default_headers(headers.clone())
        .connect_timeout(config.connect_timeout);
    if config.endpoint.is_loopback() {
        builder.no_proxy()
    } else {
        builder
    }
}

fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, S2Error> {
    builder
        .build()
        .map_err(|e| S2Error::InvalidConfig(format!("HTTP client: {e}")))
}

fn decode<T: DeserializeOwned>(context: &str, resp: &Response) -> Result<T, S2Error> {
    serde_json::from_str(&resp.body).map_err(|e| S2Error::Decode {
        context: context.to_string(),
        status: resp.status,
        reason: e.to_string(),
        body: truncate_body(&resp.body),
    })
}
