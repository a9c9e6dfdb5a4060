//! The node proxy's L7 path (client side): an HTTP/1.1 or HTTP/2 connection from an app to a
//! service is terminated here and every request is routed on its own, as an Envoy sidecar would:
//!
//! 1. route selection over the service's compiled table ([`crate::l7`]): first match wins;
//!    no table / no match → the whole service (VirtualService) or 404 `NR` (Gateway API);
//! 2. the route's own answers: CORS preflights ([`crate::l7::cors`]), `direct_response`,
//!    `redirect`; fault injection (delay `DI`, then
//!    abort `FI`) before anything goes upstream;
//! 3. a weighted destination, its DestinationRule subset (unknown → 503 `NC`) and the cluster's
//!    effective traffic policy ([`cluster`]): connection-pool breaker (503 `UO` +
//!    `x-envoy-overloaded`), load balancer over the endpoints outlier detection has not ejected
//!    (none → 503 `UH`);
//! 4. rewrite and header operations, then attempts: each on a pooled upstream connection
//!    ([`upstream`], over HBONE to meshed endpoints), with the per-try timeout, retried under the
//!    route's `retryOn` with jittered back-off on another endpoint when possible; the route
//!    timeout covers every attempt (504 `UT`);
//! 5. the response gets the route's header operations and `x-envoy-upstream-service-time`, and
//!    is reported as `istio_requests_total` & co. (`reporter="source"`) once its body ends.
//!
//! `x-request-id` is generated when absent, `traceparent` is continued (new span, same trace).
//! HTTP/1.1 `Upgrade` (WebSocket) requests are passed through: after a 101 both sides are spliced.
pub mod body;
pub mod cluster;
pub mod counted;
pub mod detect;
pub mod inbound;
pub mod upstream;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use body::{Body, ReqBody};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_common::proto::config::{
    HeaderOps, HttpRoute, RetryPolicy, WeightedDestination, string_match::Kind as StrKind,
};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::{
    l7::{
        RequestInfo, Selection, SubsetSelector, Unmatched, cors,
        retry::{AttemptOutcome, RetryOn, backoff},
        route::RegexRewrite,
    },
    metrics::HttpLabels,
    proxy::{PodCtx, TunnelCtx},
    state::mesh::{MeshState, ServicePort},
};
use upstream::{ConnSettings, Endpoint, SendError};

/// Request bodies up to this size are kept for retries (linkerd2-proxy's limit).
pub const REPLAY_LIMIT: u64 = 64 * 1024;
/// Retry back-off: Envoy's default base, capped at 10×.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// A client pod's HTTP state: its clusters and upstream connections.
#[derive(Default)]
pub struct PodHttp {
    pub clusters: cluster::Clusters,
    pub upstreams: Arc<upstream::Upstreams>,
}

/// One downstream connection to a service.
struct Conn {
    pod: Arc<PodCtx>,
    t: Arc<TunnelCtx>,
    /// The service port the app connected to (its VIP).
    svc: Arc<ServicePort>,
    dst: SocketAddr,
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) requests of one app connection to `svc`.
pub async fn serve(
    client: TcpStream,
    pod: Arc<PodCtx>,
    t: Arc<TunnelCtx>,
    svc: Arc<ServicePort>,
    dst: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    // The app's connection is also a TCP connection in the telemetry (ztunnel's view).
    let mut tcp_labels = pod.source_labels();
    tcp_labels.destination_service = svc.hostname.clone();
    let identities: std::collections::BTreeSet<&str> =
        svc.endpoints.iter().map(|e| e.identity.as_str()).collect();
    if !svc.endpoints.is_empty() && svc.endpoints.iter().all(|e| e.mesh) {
        tcp_labels.connection_security_policy = "mutual_tls".into();
        if let [id] = identities.into_iter().collect::<Vec<_>>()[..] {
            tcp_labels.destination_principal = id.to_string();
            tcp_labels.destination_workload_namespace = crate::proxy::namespace_of(id);
        }
    }
    pod.metrics.tcp_opened(&tcp_labels);
    let (client, counters) = counted::Counted::new(client);
    let conn = Arc::new(Conn {
        pod: pod.clone(),
        t,
        svc,
        dst,
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(client), service);
    tokio::select! {
        r = served => if let Err(e) = r {
            debug!(pod = %pod.id(), %dst, "HTTP connection ended: {e}");
        },
        _ = pod.cancel.cancelled() => {}
    }
    let (read, written) = counters.get();
    pod.metrics.tcp_closed(&tcp_labels, read, written);
}

/// Everything decided about one request, for the response and telemetry.
struct Outcome {
    labels: HttpLabels,
    flags: Vec<&'static str>,
    /// A generated consistent-hash cookie to hand to the client.
    set_cookie: Option<String>,
    /// Held until the response body ends: the breaker permit and the endpoint's in-flight count
    /// (an HTTP/1.1 connection is busy until then).
    hold: Vec<Box<dyn std::any::Any + Send>>,
    /// CORS headers for the response (an allowed origin's actual request).
    cors: Vec<(HeaderName, HeaderValue)>,
}

impl Outcome {
    fn flags(&self) -> String {
        if self.flags.is_empty() {
            "-".into()
        } else {
            self.flags.join(",")
        }
    }
}

/// Reports a request whose client went away before its response head (hyper drops the handler):
/// `response_code="0"`, flag `DC`, as Envoy does.
struct Disconnect {
    metrics: Arc<crate::metrics::Metrics>,
    start: Instant,
    /// The request's labels so far; `None` once a response is handed back.
    labels: Option<HttpLabels>,
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        if let Some(mut l) = self.labels.take() {
            l.response_code = "0".into();
            l.response_flags = "DC".into();
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            self.metrics.request(&l, ms, 0, 0);
        }
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let mut dc = Disconnect {
        metrics: conn.pod.metrics.clone(),
        start: Instant::now(),
        labels: None,
    };
    let resp = route_request(conn, req, &mut dc.labels).await;
    dc.labels = None;
    resp
}

async fn route_request(
    conn: Arc<Conn>,
    req: Request<Incoming>,
    dc: &mut Option<HttpLabels>,
) -> Response<Body> {
    let start = Instant::now();
    let mesh = conn.t.mesh.load();
    let (mut parts, body) = req.into_parts();
    let grpc = is_grpc(&parts.headers);
    let (src_ns, src_labels) = match mesh.workloads.get(&conn.pod.uid) {
        Some(w) => (
            w.namespace.clone(),
            w.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        ),
        None => (conn.pod.namespace.clone(), BTreeMap::new()),
    };
    if !parts.headers.contains_key("x-request-id") {
        parts.headers.insert(
            HeaderName::from_static("x-request-id"),
            header_value(&request_id()),
        );
    }
    continue_trace(&mut parts.headers);
    normalize_path(&mut parts.uri);
    let request_bytes_head = head_size(&parts.headers);
    let mut out = Outcome {
        labels: source_labels(&conn, &src_labels, grpc),
        flags: vec![],
        set_cookie: None,
        hold: vec![],
        cors: vec![],
    };
    *dc = Some(out.labels.clone());
    let info = RequestInfo::from_parts(&parts, conn.dst.port(), &src_ns, &src_labels);
    let table = mesh.routes(&conn.svc.hostname).cloned();
    let default_route;
    let mut route_index = None;
    let route: &HttpRoute = match table.as_ref().map(|t| (t, t.select(&info))) {
        Some((t, Selection::Route { route, index })) => {
            route_index = Some(index);
            // CORS comes first (Istio's filter order): a preflight is answered here.
            match t
                .cors(index)
                .map(|c| c.evaluate(&parts.method, &parts.headers))
            {
                Some(cors::Decision::Respond(headers)) => {
                    let mut resp = Response::new(body::empty());
                    resp.headers_mut().extend(headers);
                    return finish_local(&conn, out, start, resp, grpc);
                }
                Some(cors::Decision::Forward(headers)) => out.cors = headers,
                Some(cors::Decision::Pass) | None => {}
            }
            route
        }
        Some((_, Selection::NoRoute(Unmatched::NotFound))) => {
            out.flags.push("NR");
            return local(&conn, out, start, StatusCode::NOT_FOUND, "", grpc);
        }
        None | Some((_, Selection::NoRoute(Unmatched::WholeService))) => {
            default_route = HttpRoute {
                destinations: vec![WeightedDestination {
                    host: conn.svc.hostname.clone(),
                    weight: 1,
                    ..Default::default()
                }],
                retries: Some(istio_default_retries()),
                ..Default::default()
            };
            &default_route
        }
    };
    if let Some(d) = &route.direct_response {
        let status = StatusCode::from_u16(d.status as u16).unwrap_or(StatusCode::OK);
        let mut resp = Response::new(body::full(Bytes::from(d.body.clone())));
        *resp.status_mut() = status;
        apply_ops(resp.headers_mut(), route.response_headers.as_ref());
        return finish_local(&conn, out, start, resp, grpc);
    }
    if let Some(r) = &route.redirect {
        let location = redirect_location(r, route, &info, &parts.uri);
        let code = if r.code == 0 { 301 } else { r.code as u16 };
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        return finish_local(&conn, out, start, resp, grpc);
    }
    // Fault injection: delay, then abort; each sampled on its own; never retried.
    if let Some(f) = &route.fault {
        if let Some(d) = &f.delay
            && roll_percent(d.percentage)
        {
            out.flags.push("DI");
            tokio::time::sleep(Duration::from_millis(d.fixed_delay_ms)).await;
        }
        if let Some(a) = &f.abort
            && roll_percent(a.percentage)
        {
            out.flags.push("FI");
            use mesh_common::proto::config::fault_abort::Status;
            return match a.status {
                Some(Status::GrpcStatus(code)) => {
                    grpc_local(&conn, out, start, code, "fault filter abort")
                }
                Some(Status::HttpStatus(code)) => {
                    let s = StatusCode::from_u16(code as u16)
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    // A gRPC client gets it as grpc-status (Envoy's local reply mapping).
                    local(&conn, out, start, s, "fault filter abort", grpc)
                }
                None => local(
                    &conn,
                    out,
                    start,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "fault filter abort",
                    false,
                ),
            };
        }
    }
    let Some(dest) = crate::l7::pick_random(&route.destinations) else {
        return local(
            &conn,
            out,
            start,
            StatusCode::INTERNAL_SERVER_ERROR,
            "no route destination has a weight",
            grpc,
        );
    };
    let port = if dest.port == 0 {
        conn.svc.port
    } else {
        dest.port as u16
    };
    let Some(svc) = mesh.service_by_host(&dest.host, port).cloned() else {
        out.flags.push("NC");
        // Gateway API: a request sent to an invalid backendRef gets 500.
        let status = if table.as_ref().is_some_and(|t| t.table().gateway_api) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return local(&conn, out, start, status, "no healthy upstream", grpc);
    };
    out.labels.destination_service = svc.hostname.clone();
    out.labels.destination_service_name = svc.name.clone();
    out.labels.destination_service_namespace = svc.namespace.clone();
    let policy = mesh.destination(&dest.host).cloned();
    let selector = match SubsetSelector::new(&dest.host, policy.as_deref(), &dest.subset) {
        Ok(s) => s,
        Err(e) => {
            debug!(pod = %conn.pod.id(), "{e}");
            out.flags.push("NC");
            return local(
                &conn,
                out,
                start,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                grpc,
            );
        }
    };
    let endpoints: Vec<&crate::state::mesh::Endpoint> = selector.filter(&svc.endpoints);
    let cluster = conn.pod.http.clusters.get(
        cluster::ClusterKey {
            host: dest.host.clone(),
            port,
            subset: dest.subset.clone(),
        },
        cluster::effective_policy(policy.as_deref(), selector.subset(), port),
    );
    // Rewrite and header operations.
    if let Some(rw) = &route.rewrite {
        let regex = table
            .as_ref()
            .zip(route_index)
            .and_then(|(t, i)| t.regex_rewrite(i));
        rewrite(&mut parts, rw, regex, route, &info);
    }
    // Envoy: the weighted destination's operations, then the route's (the route's `set` wins).
    apply_ops(&mut parts.headers, dest.request_headers.as_ref());
    apply_ops(&mut parts.headers, route.request_headers.as_ref());
    strip_hop_by_hop(&mut parts.headers);
    let upgrade =
        parts.version == Version::HTTP_11 && parts.headers.contains_key(http::header::UPGRADE);
    let on_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let h2 = parts.version == Version::HTTP_2;
    let retries = route.retries.clone().unwrap_or_default();
    let (retry_on, unknown) = RetryOn::parse(&retries.retry_on, &retries.retriable_status_codes);
    if !unknown.is_empty() {
        debug!(route = %route.name, ?unknown, "ignoring unknown retryOn tokens");
    }
    let attempts_allowed = if upgrade { 0 } else { retries.attempts };
    // Every mirror is sampled on its own.
    let mirrors: Vec<&mesh_common::proto::config::Mirror> = route
        .mirror
        .iter()
        .chain(&route.mirrors)
        .filter(|m| !upgrade && roll_percent(m.percentage))
        .collect();
    let mut req_body = if http_body::Body::is_end_stream(&body) {
        ReqBody::Buffered(bytes::Bytes::new(), None)
    } else if attempts_allowed > 0 || !mirrors.is_empty() {
        // Streamed as it arrives (gRPC streams, slow uploads), a copy kept for retries and
        // mirrors.
        ReqBody::tee(body::boxed(body), REPLAY_LIMIT)
    } else {
        ReqBody::Streaming(body::boxed(body))
    };
    // Mirrored once the whole body went by (not if it exceeds the replay limit).
    if !mirrors.is_empty()
        && let Some(done) = req_body.when_complete()
    {
        let mirrors: Vec<_> = mirrors.into_iter().cloned().collect();
        let conn = conn.clone();
        let head = request_head(&parts);
        tokio::spawn(async move {
            if let Ok(Some(b)) = done.await {
                let mesh = conn.t.mesh.load();
                for m in &mirrors {
                    shadow(&conn, &mesh, m, &head, b.clone(), h2);
                }
            }
        });
    }
    let limits = cluster.limits().clone();
    let settings = ConnSettings {
        connect_timeout: limits.connect_timeout,
        idle_timeout: limits.idle_timeout,
        max_requests_per_connection: limits.max_requests_per_connection,
        max_connection_duration: limits.max_connection_duration,
    };
    // The route timeout starts now (after any fault delay) and covers every attempt.
    let deadline = route
        .timeout_ms
        .filter(|t| *t > 0)
        .map(|t| tokio::time::Instant::now() + Duration::from_millis(t));
    let per_try = retries
        .per_try_timeout_ms
        .filter(|t| *t > 0)
        .map(Duration::from_millis);
    let permit = match until(deadline, cluster.breaker.acquire(!h2)).await {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            debug!(pod = %conn.pod.id(), cluster = %cluster.key, "circuit breaker: {e}");
            out.flags.push("UO");
            let mut resp = local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                grpc,
            );
            resp.headers_mut().insert(
                HeaderName::from_static("x-envoy-overloaded"),
                HeaderValue::from_static("true"),
            );
            return finish_local(&conn, out, start, resp, grpc);
        }
        None => {
            out.flags.push("UT");
            return local(
                &conn,
                out,
                start,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                grpc,
            );
        }
    };
    let addrs: Vec<SocketAddr> = endpoints
        .iter()
        .map(|e| SocketAddr::new(e.ip, e.port))
        .collect();
    let mut hash = cluster
        .hash_key
        .as_ref()
        .and_then(|k| k.hash(&info, std::net::IpAddr::V4(conn.pod.ip)));
    // A hash cookie with a TTL that the client does not send yet: generate it (Envoy does) and
    // hand it back with the response, so the client's next requests stick.
    if hash.is_none()
        && let Some(crate::l7::lb::HashKey::Cookie {
            name,
            path,
            ttl: Some(ttl),
        }) = &cluster.hash_key
    {
        let value = crate::l7::lb::new_cookie_value();
        hash = Some(crate::l7::lb::hash_str(&value));
        let mut c = format!("{name}=\"{value}\"");
        // Whole seconds; under one second it is a session cookie (no Max-Age=0, which would
        // delete it at once).
        if ttl.as_secs() > 0 {
            c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if !path.is_empty() {
            c.push_str(&format!("; Path={path}"));
        }
        c.push_str("; HttpOnly");
        out.set_cookie = Some(c);
    }
    let mut tried: Vec<SocketAddr> = vec![];
    let mut attempt: u32 = 0;
    let mut _retry_permit = None;
    let upstream_start = Instant::now();
    // Istio `retryIgnorePreviousHosts`: retries prefer hosts not tried yet; unset = yes, except
    // under consistent hashing, where a retry keeps to the hashed host.
    let avoid_tried = retries
        .ignore_previous_hosts
        .unwrap_or(cluster.hash_key.is_none());
    loop {
        attempt += 1;
        let now = Instant::now();
        let cands = cluster.candidates(&addrs, now);
        let avoid: &[SocketAddr] = if avoid_tried { &tried } else { &[] };
        let Some(i) = cluster.balancer.pick(&cands, hash, avoid) else {
            out.flags.push("UH");
            drop(permit);
            return local(
                &conn,
                out,
                start,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                grpc,
            );
        };
        let ep_info = endpoints[i];
        let addr = addrs[i];
        tried.push(addr);
        set_destination(&mut out.labels, &mesh, ep_info);
        *dc = Some(out.labels.clone());
        let ep = Endpoint {
            addr,
            hbone: ep_info.mesh.then(|| ep_info.identity.clone()),
        };
        let Some(b) = req_body.attempt() else {
            break local(
                &conn,
                out,
                start,
                StatusCode::SERVICE_UNAVAILABLE,
                "request body already sent",
                grpc,
            );
        };
        let mut req = Request::new(b);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = upstream_uri(&parts, h2);
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        // Istio sets `include_request_attempt_count`: every upstream request carries it.
        req.headers_mut().insert(
            HeaderName::from_static("x-envoy-attempt-count"),
            header_value(&attempt.to_string()),
        );
        let inflight = cluster.start(addr);
        let send = conn
            .pod
            .http
            .upstreams
            .send(&conn.pod, &ep, req, h2, settings);
        let try_deadline = match (per_try, deadline) {
            (Some(p), Some(d)) => Some((tokio::time::Instant::now() + p).min(d)),
            (Some(p), None) => Some(tokio::time::Instant::now() + p),
            (None, d) => d,
        };
        let result = until(try_deadline, send).await;
        if let Some(Err(e)) = &result {
            debug!(pod = %conn.pod.id(), cluster = %cluster.key, "attempt {attempt}: {e}");
        }
        let overall_expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let (outcome, resp) = match result {
            Some(Ok(resp)) => {
                let status = resp.status().as_u16();
                let g = body::grpc_status(resp.headers());
                (
                    AttemptOutcome::Response {
                        status,
                        grpc_status: g,
                    },
                    Some(resp),
                )
            }
            Some(Err(SendError::Connect(..) | SendError::ConnectTimeout(..))) => {
                (AttemptOutcome::ConnectFailure, None)
            }
            Some(Err(SendError::RefusedStream(_))) => (AttemptOutcome::RefusedStream, None),
            Some(Err(SendError::Reset(..))) => (AttemptOutcome::Reset, None),
            None => (AttemptOutcome::PerTryTimeout, None),
        };
        // Outlier detection sees every attempt (local-origin failures as 503/504).
        let seen_status = match outcome {
            AttemptOutcome::Response { status, .. } => status,
            AttemptOutcome::PerTryTimeout => 504,
            _ => 503,
        };
        if let Some(ej) = cluster.report(addr, seen_status, &addrs) {
            info!(pod = %conn.pod.id(), cluster = %cluster.key, host = %ej.host, reason = ej.reason, times = ej.times, duration_ms = ej.duration.as_millis() as u64, "outlier ejected");
        }
        let retriable = retry_on.retriable(&outcome);
        let can_retry =
            retriable && !overall_expired && attempt <= attempts_allowed && req_body.replayable();
        if can_retry {
            match cluster.breaker.try_retry() {
                Some(p) => _retry_permit = Some(p),
                None => {
                    // The maxRetries circuit breaker (Envoy: UpstreamOverflow, not URX).
                    out.flags.push("UO");
                    if let Some(r) = resp {
                        out.hold.push(Box::new(inflight));
                        out.hold.push(Box::new(permit));
                        break proxied(
                            &conn,
                            out,
                            start,
                            upstream_start,
                            r,
                            route,
                            dest,
                            grpc,
                            req_body.bytes_read() + request_bytes_head,
                            on_upgrade,
                            deadline,
                        );
                    }
                    break attempt_failure(&conn, out, start, &outcome, grpc);
                }
            }
            let base = match retries.backoff_base_ms {
                0 => BACKOFF_BASE,
                ms => Duration::from_millis(ms),
            };
            // Envoy's retry_back_off: max_interval defaults to 10x base_interval.
            let wait = backoff(base, base * 10, attempt, fastrand::u64(..));
            let wake = tokio::time::Instant::now() + wait;
            let wake = deadline.map_or(wake, |d| wake.min(d));
            tokio::time::sleep_until(wake).await;
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                out.flags.push("UT");
                break local(
                    &conn,
                    out,
                    start,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    grpc,
                );
            }
            continue;
        }
        if retriable && attempt > attempts_allowed && attempts_allowed > 0 {
            out.flags.push("URX");
        }
        break match resp {
            Some(r) => {
                out.hold.push(Box::new(inflight));
                out.hold.push(Box::new(permit));
                proxied(
                    &conn,
                    out,
                    start,
                    upstream_start,
                    r,
                    route,
                    dest,
                    grpc,
                    req_body.bytes_read() + request_bytes_head,
                    on_upgrade,
                    deadline,
                )
            }
            None if overall_expired || matches!(outcome, AttemptOutcome::PerTryTimeout) => {
                out.flags.push("UT");
                local(
                    &conn,
                    out,
                    start,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    grpc,
                )
            }
            None => attempt_failure(&conn, out, start, &outcome, grpc),
        };
    }
}

/// A copy of a request's head (method, URI, version, headers) for a mirror sent later.
fn request_head(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// Mirrors a request (Envoy's request mirroring): fire and forget to one endpoint of the mirror
/// destination, `-shadow` appended to the authority, the response discarded. Only requests whose
/// body fit the replay limit are mirrored.
fn shadow(
    conn: &Arc<Conn>,
    mesh: &MeshState,
    m: &mesh_common::proto::config::Mirror,
    parts: &http::request::Parts,
    body: Bytes,
    h2: bool,
) {
    let port = if m.port == 0 {
        conn.svc.port
    } else {
        m.port as u16
    };
    let Some(svc) = mesh.service_by_host(&m.host, port) else {
        debug!(pod = %conn.pod.id(), host = %m.host, "mirror destination unknown");
        return;
    };
    let policy = mesh.destination(&m.host);
    let Ok(eps) = crate::l7::subset_endpoints(
        &m.host,
        policy.map(|p| p.as_ref()),
        &m.subset,
        &svc.endpoints,
    ) else {
        return;
    };
    if eps.is_empty() {
        return;
    }
    let ep = eps[fastrand::usize(..eps.len())];
    let target = Endpoint {
        addr: SocketAddr::new(ep.ip, ep.port),
        hbone: ep.mesh.then(|| ep.identity.clone()),
    };
    let mut req = Request::new(if body.is_empty() {
        body::empty()
    } else {
        body::full(body)
    });
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let shadow_host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}-shadow:{p}"),
        _ => format!("{host}-shadow"),
    };
    if let Some(pq) = parts.uri.path_and_query() {
        let uri = if h2 {
            Uri::builder()
                .scheme("http")
                .authority(shadow_host.as_str())
                .path_and_query(pq.clone())
                .build()
        } else {
            Uri::builder().path_and_query(pq.clone()).build()
        };
        if let Ok(u) = uri {
            *req.uri_mut() = u;
        }
    }
    req.headers_mut()
        .insert(http::header::HOST, header_value(&shadow_host));
    let (pod, upstreams) = (conn.pod.clone(), conn.pod.http.upstreams.clone());
    let settings = ConnSettings {
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
        max_requests_per_connection: 0,
        max_connection_duration: None,
    };
    tokio::spawn(async move {
        let sent = tokio::time::timeout(Duration::from_secs(30), async {
            let resp = upstreams.send(&pod, &target, req, h2, settings).await?;
            // Drain the body so the connection goes back to the pool.
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            Ok::<_, SendError>(())
        })
        .await;
        if let Ok(Err(e)) = sent {
            debug!(pod = %pod.id(), "mirror: {e}");
        }
    });
}

/// The local reply for an attempt that got no response.
fn attempt_failure(
    conn: &Conn,
    mut out: Outcome,
    start: Instant,
    o: &AttemptOutcome,
    grpc: bool,
) -> Response<Body> {
    if matches!(o, AttemptOutcome::PerTryTimeout) {
        out.flags.push("UT");
        return local(
            conn,
            out,
            start,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            grpc,
        );
    }
    let (flag, reason) = match o {
        AttemptOutcome::ConnectFailure => ("UF", "connection failure"),
        AttemptOutcome::RefusedStream => ("UR", "remote refused stream reset"),
        _ => ("UC", "connection termination"),
    };
    out.flags.push(flag);
    local(
        conn,
        out,
        start,
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
        ),
        grpc,
    )
}

/// An upstream response on its way back: header operations, service time, upgrade splice,
/// telemetry when the body ends.
#[allow(clippy::too_many_arguments)]
fn proxied(
    conn: &Conn,
    mut out: Outcome,
    start: Instant,
    upstream_start: Instant,
    mut resp: Response<Incoming>,
    route: &HttpRoute,
    dest: &WeightedDestination,
    grpc: bool,
    request_bytes: u64,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    deadline: Option<tokio::time::Instant>,
) -> Response<Body> {
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = on_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        let pod = conn.pod.id();
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        debug!(%pod, "upgraded connection: {e}");
                    }
                }
                Err(e) => debug!(%pod, "upgrade failed: {e}"),
            }
        });
    }
    let elapsed = upstream_start.elapsed().as_millis();
    let (mut parts, body) = resp.into_parts();
    apply_ops(&mut parts.headers, dest.response_headers.as_ref());
    apply_ops(&mut parts.headers, route.response_headers.as_ref());
    strip_hop_by_hop_response(&mut parts.headers, status);
    parts.headers.insert(
        HeaderName::from_static("x-envoy-upstream-service-time"),
        header_value(&elapsed.to_string()),
    );
    if let Some(c) = out.set_cookie.take()
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        parts.headers.append(http::header::SET_COOKIE, v);
    }
    parts.headers.extend(std::mem::take(&mut out.cors));
    let head_grpc = body::grpc_status(&parts.headers);
    out.labels.response_code = status.as_u16().to_string();
    let metrics = conn.pod.metrics.clone();
    let head = head_size(&parts.headers);
    let hold = std::mem::take(&mut out.hold);
    // The route timeout runs until the response body is complete (Envoy): a body still
    // streaming at the deadline is cut off (UT). Not for an upgraded connection.
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = body::Deadline::new(
        body,
        deadline.filter(|_| status != StatusCode::SWITCHING_PROTOCOLS),
        timed_out.clone(),
    );
    let body = body::Observed::new(body, move |seen| {
        drop(hold);
        let mut l = out.labels;
        if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
            out.flags.push("UT");
        }
        l.response_flags = if out.flags.is_empty() {
            "-".into()
        } else {
            out.flags.join(",")
        };
        if grpc {
            l.grpc_response_status = seen
                .grpc_status
                .or(head_grpc)
                .map(|g| g.to_string())
                .unwrap_or_default();
        }
        metrics.request(
            &l,
            start.elapsed().as_secs_f64() * 1000.0,
            request_bytes,
            head + seen.bytes,
        );
    });
    Response::from_parts(parts, body::boxed(body))
}

/// A locally generated reply (Envoy's local replies: text body, or a gRPC trailers-only status).
fn local(
    conn: &Conn,
    out: Outcome,
    start: Instant,
    status: StatusCode,
    text: &str,
    grpc: bool,
) -> Response<Body> {
    let resp = local_response(status, text, grpc);
    finish_local(conn, out, start, resp, grpc)
}

fn local_response(status: StatusCode, text: &str, grpc: bool) -> Response<Body> {
    if grpc {
        // gRPC clients read the status from grpc-status (HTTP 200, trailers-only).
        let code = http_to_grpc(status.as_u16());
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            HeaderName::from_static("grpc-status"),
            header_value(&code.to_string()),
        );
        h.insert(HeaderName::from_static("grpc-message"), header_value(text));
        // Telemetry keeps the HTTP status Envoy would report for the local reply.
        resp.extensions_mut().insert(LocalStatus(status));
        return resp;
    }
    let mut resp = Response::new(body::full(Bytes::from(text.to_string())));
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    resp
}

#[derive(Clone, Copy)]
struct LocalStatus(StatusCode);

fn grpc_local(conn: &Conn, out: Outcome, start: Instant, code: u32, msg: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        HeaderName::from_static("grpc-status"),
        header_value(&code.to_string()),
    );
    h.insert(HeaderName::from_static("grpc-message"), header_value(msg));
    finish_local(conn, out, start, resp, true)
}

fn finish_local(
    conn: &Conn,
    mut out: Outcome,
    start: Instant,
    mut resp: Response<Body>,
    grpc: bool,
) -> Response<Body> {
    resp.headers_mut().extend(std::mem::take(&mut out.cors));
    let code = resp
        .extensions()
        .get::<LocalStatus>()
        .map(|s| s.0)
        .unwrap_or(resp.status());
    out.labels.response_code = code.as_u16().to_string();
    out.labels.response_flags = out.flags();
    if grpc {
        out.labels.grpc_response_status = body::grpc_status(resp.headers())
            .map(|g| g.to_string())
            .unwrap_or_default();
    }
    let size =
        http_body::Body::size_hint(resp.body()).exact().unwrap_or(0) + head_size(resp.headers());
    conn.pod
        .metrics
        .request(&out.labels, start.elapsed().as_secs_f64() * 1000.0, 0, size);
    resp
}

/// Envoy's HTTP → gRPC status mapping for local replies.
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn source_labels(conn: &Conn, src_labels: &BTreeMap<String, String>, grpc: bool) -> HttpLabels {
    let pod = &conn.pod;
    HttpLabels {
        reporter: "source".into(),
        source_workload: pod.workload.clone(),
        source_workload_namespace: pod.namespace.clone(),
        source_principal: pod.identity.clone(),
        source_app: app_label(src_labels).unwrap_or("unknown").to_string(),
        source_version: version_label(src_labels).unwrap_or("unknown").to_string(),
        destination_service: conn.svc.hostname.clone(),
        destination_service_name: conn.svc.name.clone(),
        destination_service_namespace: conn.svc.namespace.clone(),
        request_protocol: if grpc { "grpc" } else { "http" }.into(),
        connection_security_policy: "unknown".into(),
        ..HttpLabels::unknown()
    }
}

fn set_destination(l: &mut HttpLabels, mesh: &MeshState, ep: &crate::state::mesh::Endpoint) {
    l.destination_app = app_label(&ep.labels).unwrap_or("unknown").to_string();
    l.destination_version = version_label(&ep.labels).unwrap_or("unknown").to_string();
    if ep.mesh {
        l.destination_principal = ep.identity.clone();
        l.destination_workload_namespace = crate::proxy::namespace_of(&ep.identity);
        l.connection_security_policy = "mutual_tls".into();
        l.destination_workload = mesh
            .meshed_pod(&ep.ip)
            .map(|p| p.workload.clone())
            .unwrap_or_else(|| ep.name.clone());
    } else {
        l.destination_workload = ep.name.clone();
        l.connection_security_policy = "none".into();
    }
}

fn app_label(l: &BTreeMap<String, String>) -> Option<&str> {
    l.get("app.kubernetes.io/name")
        .or_else(|| l.get("app"))
        .map(String::as_str)
}

fn version_label(l: &BTreeMap<String, String>) -> Option<&str> {
    l.get("app.kubernetes.io/version")
        .or_else(|| l.get("version"))
        .map(String::as_str)
}

/// Istio's retry policy for routes that set none (the default route included).
pub fn istio_default_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        retry_on: [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    }
}

/// Runs `f` until `deadline` (`None` = no deadline); `None` when the deadline passed first.
async fn until<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    f: F,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

fn roll_percent(p: f64) -> bool {
    p > 0.0 && fastrand::f64() * 100.0 < p
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn head_size(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// A random 128-bit request id in UUID format.
fn request_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// W3C trace context: keep the trace id and flags, start a new span (parent id); start a new
/// trace when the header is absent or malformed.
fn continue_trace(h: &mut HeaderMap) {
    let span = format!("{:016x}", fastrand::u64(1..));
    let next = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let f: Vec<&str> = v.trim().split('-').collect();
            (f.len() == 4 && f[1].len() == 32 && f[2].len() == 16 && f[3].len() == 2)
                .then(|| format!("{}-{}-{span}-{}", f[0], f[1], f[3]))
        })
        .unwrap_or_else(|| {
            format!(
                "00-{:016x}{:016x}-{span}-00",
                fastrand::u64(1..),
                fastrand::u64(..)
            )
        });
    h.insert(HeaderName::from_static("traceparent"), header_value(&next));
}

/// Route/destination header operations: remove, then set, then add (Envoy's `HeaderParser`
/// removes first, "remove-before-add"; Istio lists `set` before `add`).
fn apply_ops(h: &mut HeaderMap, ops: Option<&HeaderOps>) {
    let Some(ops) = ops else { return };
    for k in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(k.as_bytes()) {
            h.remove(n);
        }
    }
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
}

/// Connection-specific headers are not forwarded; `Upgrade` (with `Connection: upgrade`) is, for
/// WebSocket passthrough.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let upgrade = h.contains_key(http::header::UPGRADE);
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|n| n != "upgrade")
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
    ] {
        h.remove(n);
    }
    h.remove(http::header::CONNECTION);
    if upgrade {
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
}

fn strip_hop_by_hop_response(h: &mut HeaderMap, status: StatusCode) {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "connection",
    ] {
        h.remove(n);
    }
}

/// The request URI for the upstream: origin-form for HTTP/1.1 (with a Host header), absolute
/// for HTTP/2 (`:scheme`/`:authority`).
fn upstream_uri(parts: &http::request::Parts, h2: bool) -> Uri {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    if !h2 {
        return pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".into());
    Uri::builder()
        .scheme(parts.uri.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query(pq)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// The uri prefix the route matched on, if its first matching block used a prefix, and whether
/// that block matches by path segment (Gateway API `PathPrefix`).
fn matched_prefix<'a>(route: &'a HttpRoute, info: &RequestInfo) -> Option<(&'a str, bool)> {
    route
        .matches
        .iter()
        .find_map(|m| match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
            Some(StrKind::Prefix(p))
                if info.path.starts_with(p.as_str())
                    || (m.ignore_uri_case
                        && info
                            .path
                            .to_ascii_lowercase()
                            .starts_with(&p.to_ascii_lowercase())) =>
            {
                Some((p.as_str(), m.uri_prefix_by_segment))
            }
            _ => None,
        })
}

/// `rewrite`: the matched prefix (or the whole path, or every match of `uriRegexRewrite`)
/// replaced, the authority replaced.
fn rewrite(
    parts: &mut http::request::Parts,
    rw: &mesh_common::proto::config::Rewrite,
    regex: Option<&RegexRewrite>,
    route: &HttpRoute,
    info: &RequestInfo,
) {
    let path = if let Some(re) = regex {
        Some(re.apply(&info.path))
    } else if !rw.full_path.is_empty() {
        Some(rw.full_path.clone())
    } else if !rw.uri.is_empty() {
        Some(match matched_prefix(route, info) {
            // Istio (Envoy `prefix_rewrite`): a plain swap of the matched prefix.
            Some((p, false)) => format!("{}{}", rw.uri, &info.path[p.len().min(info.path.len())..]),
            // Gateway API `ReplacePrefixMatch`: segment-wise, one `/` between the parts.
            Some((p, true)) => {
                let rest = &info.path[p.len().min(info.path.len())..];
                if rw.uri.ends_with('/') && rest.starts_with('/') {
                    format!("{}{}", rw.uri, &rest[1..])
                } else if rest.is_empty() || rest.starts_with('/') || rw.uri.ends_with('/') {
                    format!("{}{rest}", rw.uri)
                } else {
                    format!("{}/{rest}", rw.uri)
                }
            }
            None => rw.uri.clone(),
        })
    } else {
        None
    };
    if let Some(path) = path {
        let pq = if info.raw_query.is_empty() {
            path
        } else {
            format!("{path}?{}", info.raw_query)
        };
        let mut b = Uri::builder();
        if let Some(s) = parts.uri.scheme() {
            b = b.scheme(s.clone());
        }
        if let Some(a) = parts.uri.authority() {
            b = b.authority(a.clone());
        }
        if let Ok(u) = b.path_and_query(pq).build() {
            parts.uri = u;
        }
    }
    if !rw.authority.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rw.authority) {
            parts.headers.insert(http::header::HOST, v);
        }
        if parts.uri.authority().is_some() {
            let mut b = Uri::builder().authority(rw.authority.as_str());
            if let Some(s) = parts.uri.scheme() {
                b = b.scheme(s.clone());
            }
            if let Some(pq) = parts.uri.path_and_query() {
                b = b.path_and_query(pq.clone());
            }
            if let Ok(u) = b.build() {
                parts.uri = u;
            }
        }
    }
}

/// Istio's default path normalisation (see [`crate::l7::path`]), before routing; the query is
/// kept as sent.
fn normalize_path(uri: &mut http::Uri) {
    let std::borrow::Cow::Owned(path) = crate::l7::path::normalize(uri.path()) else {
        return;
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(pq) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(u) = http::Uri::from_parts(parts) {
        *uri = u;
    }
}

/// The `Location` of a redirect route.
fn redirect_location(
    r: &mesh_common::proto::config::Redirect,
    route: &HttpRoute,
    info: &RequestInfo,
    uri: &Uri,
) -> String {
    let scheme = if r.scheme.is_empty() {
        uri.scheme_str().unwrap_or("http")
    } else {
        r.scheme.as_str()
    };
    let req_host = info
        .authority
        .rsplit_once(':')
        .map_or(info.authority.as_str(), |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                info.authority.as_str()
            }
        });
    let host = if r.authority.is_empty() {
        req_host
    } else {
        r.authority.as_str()
    };
    let port = if r.port != 0 {
        Some(r.port as u16)
    } else if r.port_from_request {
        Some(info.dst_port)
    } else {
        info.authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|_| r.authority.is_empty())
    };
    let path = if !r.path.is_empty() {
        r.path.clone()
    } else if !r.path_prefix.is_empty() {
        match matched_prefix(route, info) {
            Some((p, _)) => format!(
                "{}{}",
                r.path_prefix.trim_end_matches('/'),
                &info.path[p.len().min(info.path.len())..]
            ),
            None => r.path_prefix.clone(),
        }
    } else {
        info.path.clone()
    };
    let default_port = matches!((scheme, port), ("http", Some(80)) | ("https", Some(443)));
    let authority = match port {
        Some(p) if !default_port => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    let query = if info.raw_query.is_empty() {
        String::new()
    } else {
        format!("?{}", info.raw_query)
    };
    format!("{scheme}://{authority}{path}{query}")
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>(_: T) {}
    let _ = |c: Arc<Conn>, r: Request<Incoming>| is_send(handle(c, r));
    let _ = Method::GET;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_continued() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        continue_trace(&mut h);
        let v = h["traceparent"].to_str().unwrap();
        assert!(v.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{v}");
        assert!(v.ends_with("-01"));
        assert!(!v.contains("b7ad6b7169203331"));
        let mut h = HeaderMap::new();
        continue_trace(&mut h);
        assert_eq!(h["traceparent"].to_str().unwrap().len(), 55);
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.split('-').count(), 5);
    }

    #[test]
    fn header_ops_set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("x"));
        h.insert("again", HeaderValue::from_static("old"));
        let ops = HeaderOps {
            set: [
                ("a".to_string(), "2".to_string()),
                ("again".to_string(), "new".to_string()),
            ]
            .into(),
            add: [("a".to_string(), "3".to_string())].into(),
            remove: vec!["gone".into(), "again".into()],
        };
        apply_ops(&mut h, Some(&ops));
        // Removals come first: a header both removed and set ends up set (Envoy).
        assert_eq!(h["again"], "new");
        let a: Vec<_> = h
            .get_all("a")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(a, ["2", "3"]);
        assert!(!h.contains_key("gone"));
    }

    fn info(path: &str, query: &str, authority: &str) -> RequestInfo {
        RequestInfo {
            path: path.into(),
            raw_query: query.into(),
            authority: authority.into(),
            dst_port: 8080,
            ..Default::default()
        }
    }

    fn prefix_route(p: &str, by_segment: bool) -> HttpRoute {
        HttpRoute {
            matches: vec![mesh_common::proto::config::HttpMatch {
                uri: Some(mesh_common::proto::config::StringMatch {
                    kind: Some(StrKind::Prefix(p.into())),
                }),
                uri_prefix_by_segment: by_segment,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rewrites_replace_the_matched_prefix() {
        // (Gateway API segment-wise?, prefix, rewrite, path, want)
        let cases = [
            (true, "/api", "/v2", "/api/users", "/v2/users"),
            (true, "/api/", "/", "/api/users", "/users"),
            (true, "/api", "/", "/api/users", "/users"),
            (true, "/api", "/v2", "/api", "/v2"),
            // Istio rewrite.uri = Envoy prefix_rewrite: a plain swap ("//users" is Envoy's
            // answer too; Istio's docs say to match "/api/" for that).
            (false, "/api", "/v2", "/api/users", "/v2/users"),
            (false, "/api/", "/", "/api/users", "/users"),
            (false, "/api", "/", "/api/users", "//users"),
            (false, "/foo", "/bar", "/foobar", "/barbar"),
        ];
        for (by_segment, prefix, uri, path, want) in cases {
            let route = prefix_route(prefix, by_segment);
            let mut parts = Request::get(path).body(()).unwrap().into_parts().0;
            let rw = mesh_common::proto::config::Rewrite {
                uri: uri.into(),
                ..Default::default()
            };
            rewrite(&mut parts, &rw, None, &route, &info(path, "", "svc"));
            assert_eq!(parts.uri.path(), want, "{prefix} {uri} {path}");
        }
        // No prefix match: the whole path, the query kept.
        let mut parts = Request::get("/x?a=1").body(()).unwrap().into_parts().0;
        let rw = mesh_common::proto::config::Rewrite {
            uri: "/y".into(),
            authority: "other:9".into(),
            ..Default::default()
        };
        rewrite(
            &mut parts,
            &rw,
            None,
            &HttpRoute::default(),
            &info("/x", "a=1", "svc"),
        );
        assert_eq!(parts.uri.to_string(), "/y?a=1");
        assert_eq!(parts.headers["host"], "other:9");
    }

    #[test]
    fn paths_normalised_before_routing_query_kept() {
        for (input, want) in [
            ("/public/../admin?x=/../y", "/admin?x=/../y"),
            ("http://svc:8080/a/./b", "http://svc:8080/a/b"),
            ("/plain?q=1", "/plain?q=1"),
        ] {
            let mut uri: http::Uri = input.parse().unwrap();
            normalize_path(&mut uri);
            assert_eq!(uri.to_string(), want, "{input}");
        }
    }

    #[test]
    fn redirect_locations() {
        let r = mesh_common::proto::config::Redirect {
            path: "/new".into(),
            authority: "b.example".into(),
            ..Default::default()
        };
        assert_eq!(
            redirect_location(
                &r,
                &HttpRoute::default(),
                &info("/old", "q=1", "a:8080"),
                &Uri::from_static("/old")
            ),
            "http://b.example/new?q=1"
        );
        let r = mesh_common::proto::config::Redirect {
            scheme: "https".into(),
            port: 443,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(
                &r,
                &HttpRoute::default(),
                &info("/p", "", "a:8080"),
                &Uri::from_static("/p")
            ),
            "https://a/p"
        );
        let r = mesh_common::proto::config::Redirect {
            port_from_request: true,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(
                &r,
                &HttpRoute::default(),
                &info("/p", "", "a"),
                &Uri::from_static("/p")
            ),
            "http://a:8080/p"
        );
        let r = mesh_common::proto::config::Redirect {
            path_prefix: "/v2".into(),
            ..Default::default()
        };
        assert_eq!(
            redirect_location(
                &r,
                &prefix_route("/v1", true),
                &info("/v1/x", "", "a"),
                &Uri::from_static("/v1/x")
            ),
            "http://a/v2/x"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_upgrade_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-app", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(
            !h.contains_key("connection")
                && !h.contains_key("x-private")
                && !h.contains_key("keep-alive")
        );
        assert!(h.contains_key("x-app"));
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }
}
