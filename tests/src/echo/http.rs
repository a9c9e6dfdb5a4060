//! The HTTP side: one port speaking HTTP/1.1 and h2c (prior knowledge), with gRPC requests
//! (`content-type: application/grpc*`) handed to tonic and `/ws` upgraded to a WebSocket echo.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::Identity;
use super::upstream::Upstream;

/// The TCP peer of a connection, put in every request's extensions (the gRPC echo reads it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One HTTP listener's request handler.
#[derive(Clone)]
pub(super) struct Server {
    id: Arc<Identity>,
    routes: Routes,
    grpc_only: bool,
    upstream: Option<Arc<Upstream>>,
}

impl Server {
    pub(super) fn new(
        id: Arc<Identity>,
        routes: Routes,
        grpc_only: bool,
        upstream: Option<Arc<Upstream>>,
    ) -> Self {
        Self {
            id,
            routes,
            grpc_only,
            upstream,
        }
    }

    pub(super) async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| this.clone().handle(req, peer));
                let builder = auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(%peer, error = %e, "connection ended with error");
                }
            });
        }
    }

    async fn handle(
        self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        req.extensions_mut().insert(PeerAddr(peer));
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if is_grpc || self.grpc_only {
            return self.routes.oneshot(req).await;
        }
        let resp = match req.uri().path() {
            "/healthz" => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/ws" if is_websocket_upgrade(&req) => websocket(req, peer),
            _ => echo(&self.id, self.upstream.as_deref(), req, peer).await,
        };
        Ok(resp)
    }
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::new(Full::new(Bytes::from(v.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The echo query knobs.
#[derive(Debug, Default, PartialEq)]
struct Knobs {
    status: Option<u16>,
    delay: Option<Duration>,
    size: Option<usize>,
    close: bool,
    duplex: bool,
}

impl Knobs {
    fn parse(query: Option<&str>) -> Self {
        let mut k = Knobs::default();
        for pair in query.unwrap_or_default().split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "status" => k.status = value.parse().ok().filter(|s| (100..=999).contains(s)),
                "delay" => k.delay = value.parse().ok().map(Duration::from_millis),
                "size" => k.size = value.parse().ok(),
                "close" => k.close = matches!(value, "1" | "true" | ""),
                "duplex" => k.duplex = matches!(value, "1" | "true" | ""),
                _ => {}
            }
        }
        k
    }
}

fn headers_json(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out.into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.join(", "))))
        .collect()
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

async fn echo(
    id: &Identity,
    upstream: Option<&Upstream>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let knobs = Knobs::parse(parts.uri.query());
    if knobs.duplex {
        // Full duplex: the reply starts at once and streams the request body back as it
        // arrives (a bidirectional stream, like gRPC bidi).
        let mut resp = Response::new(Body::new(body));
        if let Ok(pod) = HeaderValue::from_str(&id.pod) {
            resp.headers_mut().insert("x-echo-pod", pod);
        }
        return resp;
    }

    let mut body_bytes: u64 = 0;
    // The request body, kept only when it is to be forwarded upstream.
    let mut forward = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                    if upstream.is_some() {
                        forward.extend_from_slice(d);
                    }
                }
            }
            Err(e) => {
                debug!(%peer, error = %e, "reading request body failed");
                break;
            }
        }
    }
    let delay = id.delay() + knobs.delay.unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    // Local decisions (an injected failure, ?status=) short-circuit: no upstream call.
    let local = if id.should_fail() {
        Some(id.failure_status)
    } else {
        knobs.status
    };
    let (status, upstream_json) = match (local, upstream) {
        (Some(s), _) => (StatusCode::from_u16(s).unwrap_or(StatusCode::OK), None),
        (None, None) => (StatusCode::OK, None),
        (None, Some(up)) => {
            let r = up
                .call(
                    &parts.method,
                    &parts.uri,
                    &parts.headers,
                    peer.ip(),
                    forward.freeze(),
                )
                .await;
            (r.status, Some(r.json))
        }
    };
    let host = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });

    let mut v = serde_json::json!({
        "pod": id.pod,
        "namespace": id.namespace,
        "version": id.version,
        "node": id.node,
        "pod_ip": id.pod_ip,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "protocol": protocol_name(parts.version),
        "headers": headers_json(&parts.headers),
        "peer": peer.to_string(),
        "host": host,
        "status": status.as_u16(),
        "body_bytes": body_bytes,
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(u) = upstream_json {
            obj.insert("upstream".to_owned(), u);
        }
        if let Some(n) = knobs.size {
            obj.insert("pad".to_owned(), serde_json::Value::String("x".repeat(n)));
        }
    }

    let mut resp = json_response(status, &v);
    let h = resp.headers_mut();
    if let Ok(pod) = HeaderValue::from_str(&id.pod) {
        h.insert("x-echo-pod", pod);
    }
    if let Ok(version) = HeaderValue::from_str(&id.version) {
        h.insert("x-echo-version", version);
    }
    if knobs.close && parts.version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if parts.method == Method::HEAD {
        *resp.body_mut() = Body::empty();
    }
    resp
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Answer the upgrade with 101 and echo every text/binary message on the upgraded stream.
fn websocket(mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "no key"}),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%peer, error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(msg) = ws.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    debug!(%peer, error = %e, "websocket read failed");
                    return;
                }
            };
            if msg.is_text() || msg.is_binary() {
                if let Err(e) = ws.send(msg).await {
                    debug!(%peer, error = %e, "websocket write failed");
                    return;
                }
            } else if msg.is_close() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });

    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse() {
        assert_eq!(Knobs::parse(None), Knobs::default());
        let k = Knobs::parse(Some("status=503&delay=20&size=10&close=1&duplex=1&other=x"));
        assert_eq!(
            k,
            Knobs {
                status: Some(503),
                delay: Some(Duration::from_millis(20)),
                size: Some(10),
                close: true,
                duplex: true,
            }
        );
        assert_eq!(Knobs::parse(Some("status=abc&close=0")), Knobs::default());
    }

    #[test]
    fn headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-b", HeaderValue::from_static("3"));
        let j = headers_json(&h);
        assert_eq!(j["x-a"], "1, 2");
        assert_eq!(j["x-b"], "3");
    }
}
