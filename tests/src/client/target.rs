//! One request of each kind.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Channel, Endpoint};

use super::classify::classify;
use super::{Args, ErrorKind, Outcome, UsageError};
use crate::proto::EchoRequest;
use crate::proto::echo_client::EchoClient;

const DEFAULT_MESSAGE: &str = "hello from mesh-client\n";

/// What to call, built once from the arguments and shared by the workers.
pub enum Target {
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        uri: Uri,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
        count: Vec<HeaderName>,
    },
    Grpc {
        client: EchoClient<Channel>,
        headers: HeaderMap,
        message: String,
        count: Vec<HeaderName>,
    },
    Tcp {
        host: String,
        port: u16,
        payload: Bytes,
    },
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap, UsageError> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| UsageError::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| UsageError::Header(h.clone()))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| UsageError::Header(h.clone()))?;
        map.append(name, value);
    }
    Ok(map)
}

fn parse_header_names(raw: &[String]) -> Result<Vec<HeaderName>, UsageError> {
    raw.iter()
        .map(|n| {
            HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| UsageError::HeaderName(n.clone()))
        })
        .collect()
}

/// The values of the `count` headers in `map`: (name, values joined with ", ").
fn counted(map: &HeaderMap, count: &[HeaderName]) -> Vec<(String, String)> {
    count
        .iter()
        .filter_map(|name| {
            let values: Vec<String> = map
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (!values.is_empty()).then(|| (name.as_str().to_owned(), values.join(", ")))
        })
        .collect()
}

fn parse_url(url: &str, scheme: &str) -> Result<Uri, UsageError> {
    let bad = |why: &str| UsageError::Url(url.to_owned(), why.to_owned());
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some(scheme) {
        return Err(bad(&format!("expected a {scheme}:// URL")));
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    Ok(uri)
}

impl Target {
    pub fn from_args(args: &Args) -> Result<Self, UsageError> {
        let headers = parse_headers(&args.headers)?;
        let count = parse_header_names(&args.count_headers)?;
        if args.tcp {
            let uri = parse_url(&args.url, "tcp")?;
            let port = uri
                .port_u16()
                .ok_or_else(|| UsageError::Url(args.url.clone(), "no port".to_owned()))?;
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let payload = Bytes::from(args.data.clone().unwrap_or_else(|| DEFAULT_MESSAGE.into()));
            return Ok(Target::Tcp {
                host,
                port,
                payload,
            });
        }
        let uri = parse_url(&args.url, "http")?;
        if args.grpc {
            let endpoint = Endpoint::from_shared(args.url.clone())
                .map_err(|e| UsageError::Url(args.url.clone(), e.to_string()))?
                .connect_timeout(args.timeout)
                .tcp_nodelay(true);
            return Ok(Target::Grpc {
                client: EchoClient::new(endpoint.connect_lazy()),
                headers,
                message: args.data.clone().unwrap_or_else(|| DEFAULT_MESSAGE.into()),
                count,
            });
        }
        let method = Method::from_bytes(args.method.as_bytes())
            .map_err(|_| UsageError::Method(args.method.clone()))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(args.timeout));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(args.http2)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Target::Http {
            client: Box::new(client),
            uri,
            method,
            headers,
            body: Bytes::from(args.data.clone().unwrap_or_default()),
            count,
        })
    }

    /// Make one request (the caller applies the timeout).
    pub async fn call(&self) -> Outcome {
        let start = Instant::now();
        match self {
            Target::Http {
                client,
                uri,
                method,
                headers,
                body,
                count,
            } => {
                let mut req = Request::new(Full::new(body.clone()));
                *req.method_mut() = method.clone();
                *req.uri_mut() = uri.clone();
                *req.headers_mut() = headers.clone();
                let resp = match client.request(req).await {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(classify(&e)),
                };
                let status = resp.status().as_u16().to_string();
                let counted = counted(resp.headers(), count);
                let body = match resp.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Outcome::Failed(classify(&e)),
                };
                let latency = start.elapsed();
                let f = echo_fields(&body);
                Outcome::Done {
                    status,
                    latency,
                    version: f.version,
                    pod: f.pod,
                    upstream_version: f.upstream_version,
                    upstream_pod: f.upstream_pod,
                    headers: counted,
                }
            }
            Target::Grpc {
                client,
                headers,
                message,
                count,
            } => {
                let mut req = tonic::Request::new(EchoRequest {
                    message: message.clone(),
                });
                let md = req.metadata_mut().as_mut();
                for (k, v) in headers {
                    md.append(k.clone(), v.clone());
                }
                match client.clone().echo(req).await {
                    Ok(resp) => {
                        let counted = counted(&resp.metadata().clone().into_headers(), count);
                        let r = resp.into_inner();
                        Outcome::Done {
                            status: grpc_code_name(tonic::Code::Ok).to_owned(),
                            latency: start.elapsed(),
                            version: Some(r.version),
                            pod: Some(r.pod),
                            upstream_version: None,
                            upstream_pod: None,
                            headers: counted,
                        }
                    }
                    Err(status) => match std::error::Error::source(&status) {
                        // A locally generated status wrapping a transport failure.
                        Some(src) => Outcome::Failed(classify(src)),
                        None => Outcome::Done {
                            status: grpc_code_name(status.code()).to_owned(),
                            latency: start.elapsed(),
                            version: None,
                            pod: None,
                            upstream_version: None,
                            upstream_pod: None,
                            headers: counted(&status.metadata().clone().into_headers(), count),
                        },
                    },
                }
            }
            Target::Tcp {
                host,
                port,
                payload,
            } => match tcp_roundtrip(host, *port, payload).await {
                Ok(true) => Outcome::Done {
                    status: "ok".to_owned(),
                    latency: start.elapsed(),
                    version: None,
                    pod: None,
                    upstream_version: None,
                    upstream_pod: None,
                    headers: vec![],
                },
                Ok(false) => Outcome::Failed(ErrorKind::Protocol),
                Err((connecting, e)) => Outcome::Failed(if connecting {
                    ErrorKind::Connect
                } else {
                    classify(&e)
                }),
            },
        }
    }
}

/// Connect, write `payload`, half-close, read until EOF; true when the echo matches.
async fn tcp_roundtrip(
    host: &str,
    port: u16,
    payload: &[u8],
) -> Result<bool, (bool, std::io::Error)> {
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| (true, e))?;
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let mut echoed = Vec::with_capacity(payload.len());
    let read = r.read_to_end(&mut echoed);
    let (wr, rr) = tokio::join!(write, read);
    wr.map_err(|e| (false, e))?;
    rr.map_err(|e| (false, e))?;
    Ok(echoed == payload)
}

/// The identity fields of a mesh-echo reply: its own, and (with `--upstream`) the backend's.
#[derive(Debug, Default, PartialEq)]
struct EchoFields {
    version: Option<String>,
    pod: Option<String>,
    upstream_version: Option<String>,
    upstream_pod: Option<String>,
}

#[derive(serde::Deserialize)]
struct EchoReply {
    version: Option<String>,
    pod: Option<String>,
    /// `{url, status, body}` or `{url, error}`; read leniently.
    upstream: Option<serde_json::Value>,
}

fn echo_fields(body: &[u8]) -> EchoFields {
    let Ok(r) = serde_json::from_slice::<EchoReply>(body) else {
        return EchoFields::default();
    };
    let upstream_field = |name: &str| {
        r.upstream
            .as_ref()
            .and_then(|u| u.get("body"))
            .and_then(|b| b.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    EchoFields {
        upstream_version: upstream_field("version"),
        upstream_pod: upstream_field("pod"),
        version: r.version,
        pod: r.pod,
    }
}

/// The canonical upper-case gRPC status code name.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_urls() {
        let h = parse_headers(&["Host: a.b".into(), "x-y:z".into()]).unwrap();
        assert_eq!(h["host"], "a.b");
        assert_eq!(h["x-y"], "z");
        assert!(parse_headers(&["nocolon".into()]).is_err());
        assert!(parse_url("http://h:1/p", "http").is_ok());
        assert!(parse_url("https://h:1/p", "http").is_err());
        assert!(parse_url("/p", "http").is_err());
        assert!(parse_url("tcp://h:1", "tcp").is_ok());
        let n = parse_header_names(&["X-Envoy-Overloaded".into()]).unwrap();
        assert_eq!(n[0].as_str(), "x-envoy-overloaded");
        assert!(parse_header_names(&["bad name".into()]).is_err());
    }

    #[test]
    fn counted_headers() {
        let mut m = HeaderMap::new();
        m.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        m.append("x-multi", HeaderValue::from_static("a"));
        m.append("x-multi", HeaderValue::from_static("b"));
        let names = parse_header_names(&[
            "x-envoy-overloaded".into(),
            "X-Multi".into(),
            "x-absent".into(),
        ])
        .unwrap();
        assert_eq!(
            counted(&m, &names),
            [
                ("x-envoy-overloaded".to_owned(), "true".to_owned()),
                ("x-multi".to_owned(), "a, b".to_owned()),
            ]
        );
    }

    #[test]
    fn echo_body_fields() {
        let f = echo_fields(br#"{"version":"v2","pod":"p1","x":1}"#);
        assert_eq!(
            (f.version.as_deref(), f.pod.as_deref()),
            (Some("v2"), Some("p1"))
        );
        assert_eq!((f.upstream_version, f.upstream_pod), (None, None));
        assert_eq!(echo_fields(b"not json"), EchoFields::default());

        let f = echo_fields(
            br#"{"version":"v1","pod":"front","upstream":{"url":"http://b/","status":200,
                "body":{"version":"v2","pod":"back"}}}"#,
        );
        assert_eq!(f.version.as_deref(), Some("v1"));
        assert_eq!(f.upstream_version.as_deref(), Some("v2"));
        assert_eq!(f.upstream_pod.as_deref(), Some("back"));
        // Upstream failures and non-echo upstream bodies count nothing upstream.
        for body in [
            &br#"{"version":"v1","upstream":{"url":"u","error":"connect: refused"}}"#[..],
            br#"{"version":"v1","upstream":{"url":"u","status":200,"body":"plain"}}"#,
            br#"{"version":"v1","upstream":"odd"}"#,
        ] {
            let f = echo_fields(body);
            assert_eq!(f.version.as_deref(), Some("v1"));
            assert_eq!((f.upstream_version, f.upstream_pod), (None, None));
        }
    }
}
