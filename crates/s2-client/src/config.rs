//! Where the client connects, with which credentials and timeouts.

use std::fmt;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes kept verbatim in path segments: RFC 3986 unreserved characters. Everything else,
/// notably `/` in hierarchical stream names, is percent-encoded (`a/b.c` → `a%2Fb.c`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one URL path segment (a basin or stream name).
pub fn encode_path_segment(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// An S2 access token. Its `Debug` prints `[redacted]` so it cannot leak through logs,
/// `{:?}` of a config or client, or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken(token.into())
    }

    /// The secret itself, for building the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which S2 deployment to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// S2 cloud: `https://{basin}.b.s2.dev` for streams, `https://a.s2.dev` for basins.
    Cloud,
    /// One base URL for everything (s2-lite, PrivateLink, e.g. `http://127.0.0.1:8080`);
    /// the basin travels in the `s2-basin` header of every `/streams*` request.
    Direct(String),
}

/// A request target derived from an [`Endpoint`]: URL plus the `s2-basin` header if needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// `Some(basin)` on direct endpoints for basin-scoped (`/streams*`) requests.
    pub basin_header: Option<String>,
}

impl Endpoint {
    fn direct_base(url: &str) -> &str {
        url.trim_end_matches('/')
    }

    /// URL of an account-level path such as `/basins/x` (`path` starts with `/`, already encoded).
    pub fn account_url(&self, path: &str) -> String {
        match self {
            Endpoint::Cloud => format!("https://a.s2.dev/v1{path}"),
            Endpoint::Direct(url) => format!("{}/v1{path}", Self::direct_base(url)),
        }
    }

    /// Target of a basin-level path such as `/streams/x/records` (`path` already encoded).
    pub fn basin_target(&self, basin: &str, path: &str) -> Target {
        match self {
            Endpoint::Cloud => Target {
                url: format!("https://{}.b.s2.dev/v1{path}", encode_path_segment(basin)),
                basin_header: None,
            },
            Endpoint::Direct(url) => Target {
                url: format!("{}/v1{path}", Self::direct_base(url)),
                basin_header: Some(basin.to_string()),
            },
        }
    }

    /// Whether the endpoint is on this machine, so system HTTP proxies must be bypassed.
    pub(crate) fn is_loopback(&self) -> bool {
        match self {
            Endpoint::Cloud => false,
            Endpoint::Direct(url) => reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(|c| c == '[' || c == ']')
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }),
        }
    }
}

/// Client configuration. Defaults: connect timeout 3 s, request timeout 10 s, no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2Config {
    pub endpoint: Endpoint,
    /// Bearer token; optional because s2-lite ignores auth.
    pub access_token: Option<AccessToken>,
    /// Time allowed to establish a connection (nothing was sent if it elapses).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request; after it elapses an append's outcome is unknown.
    /// In an append session, the time one append may wait for its ack.
    pub request_timeout: Duration,
    /// Send ordered appends ([`crate::S2Client::append_ordered`]) on S2's append session
    /// (one HTTP/2 streaming request per stream, applied and acknowledged in order) rather
    /// than as unary requests. On by default; turn it off only when something between
    /// s2-sink and S2 cannot carry HTTP/2 (an HTTP/1.1-only proxy).
    pub append_session: bool,
}

/// Default connect timeout (the official SDK's value).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default request timeout: above S2's Standard-class ack latency with room for 1 MiB uploads.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl S2Config {
    /// A config for `endpoint` with default timeouts and no token.
    pub fn new(endpoint: Endpoint) -> Self {
        S2Config {
            endpoint,
            access_token: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            append_session: true,
        }
    }

    /// S2 cloud with an access token.
    pub fn cloud(token: impl Into<String>) -> Self {
        Self::new(Endpoint::Cloud).with_access_token(token)
    }

    /// A direct endpoint such as s2-lite at `http://127.0.0.1:8080`.
    pub fn direct(url: impl Into<String>) -> Self {
        Self::new(Endpoint::Direct(url.into()))
    }

    /// Sets the bearer token (builder style).
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(AccessToken::new(token));
        self
    }

    /// Sets the connect timeout (builder style).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the request timeout (builder style).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Turns append sessions on or off (builder style; see [`S2Config::append_session`]).
    pub fn with_append_session(mut self, on: bool) -> Self {
        self.append_session = on;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_percent_encoded() {
        assert_eq!(encode_path_segment("a/b.c"), "a%2Fb.c");
        assert_eq!(encode_path_segment("orders_v1-x~"), "orders_v1-x~");
        assert_eq!(encode_path_segment("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(encode_path_segment("ü"), "%C3%BC");
    }

    #[test]
    fn cloud_urls_use_basin_subdomain_without_header() {
        let t = Endpoint::Cloud.basin_target("my-basin", "/streams/a%2Fb/records");
        assert_eq!(t.url, "https://my-basin.b.s2.dev/v1/streams/a%2Fb/records");
        assert_eq!(t.basin_header, None);
        assert_eq!(
            Endpoint::Cloud.account_url("/basins/my-basin"),
            "https://a.s2.dev/v1/basins/my-basin"
        );
    }

    #[test]
    fn direct_urls_carry_basin_header() {
        let e = Endpoint::Direct("http://127.0.0.1:8080/".into());
        let t = e.basin_target("my-basin", "/streams/x/records/tail");
        assert_eq!(t.url, "http://127.0.0.1:8080/v1/streams/x/records/tail");
        assert_eq!(t.basin_header.as_deref(), Some("my-basin"));
        assert_eq!(
            e.account_url("/basins/my-basin"),
            "http://127.0.0.1:8080/v1/basins/my-basin"
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(Endpoint::Direct("http://127.0.0.1:1".into()).is_loopback());
        assert!(Endpoint::Direct("http://localhost:1".into()).is_loopback());
        assert!(Endpoint::Direct("http://[::1]:1".into()).is_loopback());
        assert!(!Endpoint::Direct("https://s2.internal:1".into()).is_loopback());
        assert!(!Endpoint::Cloud.is_loopback());
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let c = S2Config::cloud("sekrit-token-123");
        let d = format!("{c:?} {:?}", c.access_token);
        assert!(!d.contains("sekrit"), "{d}");
        assert!(d.contains("[redacted]"), "{d}");
        assert_eq!(c.access_token.unwrap().expose(), "sekrit-token-123");
    }
}
