//! The optional upstream call (`--upstream URL`): a "frontend" mesh-echo makes one HTTP/1.1
//! request to a "backend" per echo request, like the front tier of a two-tier app.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use crate::client::ErrorKind;
use crate::client::classify::classify;

/// Check an `--upstream` value: an absolute `http://host[:port][/prefix]` URL without a query.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: expected an http:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?}: must not have a query"));
    }
    Ok(uri)
}

/// What the upstream call produced, ready for the echo reply.
#[derive(Debug)]
pub(super) struct Reply {
    /// The frontend's own status: the upstream's, else 502 (unreachable) or 504 (timeout).
    pub status: StatusCode,
    /// The reply's `"upstream"` field.
    pub json: serde_json::Value,
}

/// The upstream base URL plus a pooled keep-alive HTTP/1.1 client (shared by all requests).
#[derive(Clone)]
pub struct Upstream {
    base: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// `base` must have passed [`parse_url`]. Names resolve with getaddrinfo (so /etc/hosts
    /// applies); `timeout` bounds each whole call (connect, request, response body).
    pub fn new(base: Uri, timeout: Duration) -> Self {
        // hyper-util's default resolver is getaddrinfo on the blocking pool.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            base,
            timeout,
            client,
        }
    }

    /// The upstream URL for an incoming request's path and query.
    pub(super) fn url_for(&self, incoming: &Uri) -> Uri {
        let prefix = self.base.path().trim_end_matches('/');
        let path = incoming.path();
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let path_and_query = match incoming.query() {
            Some(q) => format!("{prefix}{path}?{q}"),
            None => format!("{prefix}{path}"),
        };
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| self.base.clone())
    }

    /// Make the one upstream call for an incoming request.
    pub(super) async fn call(
        &self,
        method: &Method,
        incoming_uri: &Uri,
        incoming_headers: &HeaderMap,
        peer_ip: IpAddr,
        body: Bytes,
    ) -> Reply {
        let uri = self.url_for(incoming_uri);
        let url = uri.to_string();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = forwarded_headers(incoming_headers, peer_ip);

        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn StdError + Send + Sync>>((status, body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((status, body))) => Reply {
                status,
                json: serde_json::json!({
                    "url": url,
                    "status": status.as_u16(),
                    "body": body_json(&body),
                }),
            },
            Ok(Err(e)) => {
                debug!(%url, error = %error_chain(&*e), "upstream call failed");
                let kind = error_kind(&*e);
                let status = if kind == ErrorKind::Timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                Reply {
                    status,
                    json: serde_json::json!({
                        "url": url,
                        "error": format!("{}: {}", kind.as_str(), error_chain(&*e)),
                    }),
                }
            }
            Err(_) => {
                debug!(%url, timeout = ?self.timeout, "upstream call timed out");
                Reply {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    json: serde_json::json!({
                        "url": url,
                        "error": format!(
                            "timeout: no complete response within {}",
                            humantime::format_duration(self.timeout)
                        ),
                    }),
                }
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy proxy ones) and `host`: never forwarded.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    // The forwarded body is re-framed by the client.
    "content-length",
];

/// The incoming headers minus hop-by-hop ones (including any named in `Connection`) and
/// `host`, with the peer IP appended to `x-forwarded-for`.
fn forwarded_headers(incoming: &HeaderMap, peer_ip: IpAddr) -> HeaderMap {
    let named_by_connection: Vec<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(incoming.len() + 1);
    for (name, value) in incoming {
        let n = name.as_str();
        if DROPPED.contains(&n)
            || n.starts_with("proxy-")
            || named_by_connection.iter().any(|c| c == n)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let ip = peer_ip.to_canonical().to_string();
    let prior: Vec<&str> = incoming
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        out.insert(xff, v);
    }
    out
}

/// The upstream's body as JSON when it parses, else as (lossy UTF-8) text.
fn body_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Like mesh-client's classification, except that a timed-out connect counts as a timeout.
fn error_kind(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return ErrorKind::Timeout;
        }
        cur = e.source();
    }
    classify(err)
}

/// "outer: cause: root cause", skipping messages repeated down the chain.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !parts.last().is_some_and(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation() {
        assert!(parse_url("http://backend:8080").is_ok());
        assert!(parse_url("http://backend:8080/prefix/").is_ok());
        assert!(parse_url("http://10.0.0.1").is_ok());
        assert!(parse_url("https://backend:8080").is_err());
        assert!(parse_url("backend:8080").is_err());
        assert!(parse_url("/path").is_err());
        assert!(parse_url("http://backend/?a=1").is_err());
        assert!(parse_url("").is_err());
    }

    #[test]
    fn url_joining() {
        let join = |base: &str, incoming: &str| {
            let up = Upstream::new(parse_url(base).unwrap(), Duration::from_secs(10));
            up.url_for(&incoming.parse().unwrap()).to_string()
        };
        assert_eq!(
            join("http://backend:8080", "/api?x=1"),
            "http://backend:8080/api?x=1"
        );
        assert_eq!(join("http://backend:8080/", "/"), "http://backend:8080/");
        assert_eq!(join("http://b:1/pre", "/api"), "http://b:1/pre/api");
        assert_eq!(join("http://b:1/pre/", "/api?q"), "http://b:1/pre/api?q");
        assert_eq!(join("http://b:1/pre", "/"), "http://b:1/pre/");
        // Absolute-form / HTTP/2 request targets: only path and query are used.
        assert_eq!(
            join("http://b:1", "http://front:80/a/b?c=d"),
            "http://b:1/a/b?c=d"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "front"),
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("proxy-authorization", "x"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-length", "3"),
            ("x-request-id", "abc"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("content-type", "text/plain"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h, "10.1.2.3".parse().unwrap());
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-type", "x-forwarded-for", "x-multi", "x-request-id"]
        );
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");

        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        let out = forwarded_headers(&h, "::ffff:10.0.0.9".parse().unwrap());
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
    }

    #[test]
    fn bodies_and_errors() {
        assert_eq!(body_json(br#"{"pod":"p"}"#)["pod"], "p");
        assert_eq!(body_json(b"plain text"), "plain text");
        assert_eq!(body_json(b""), "");
        let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(error_kind(&e), ErrorKind::Timeout);
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(error_kind(&e), ErrorKind::Connect);
    }
}
