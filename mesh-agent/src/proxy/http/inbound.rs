//! The server side of the L7 path: an HBONE stream to an HTTP port of a meshed pod is served as
//! HTTP so each request is reported with `reporter="destination"` (Istio's server-side
//! telemetry), then forwarded to the app over loopback in the pod's netns on one upstream
//! connection per stream (HTTP/1.1 keep-alive, or HTTP/2 multiplexed, following the client's
//! version). Upgrades (WebSocket) are spliced after the app's 101.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use http::{Request, Response, StatusCode, Version};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Mutex};
use tracing::debug;

use super::body::{self, Body};
use crate::{hbone::io::TunnelIo, metrics::HttpLabels, proxy::PodCtx};

enum AppConn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

struct Ctx {
    pod: Arc<PodCtx>,
    app: SocketAddr,
    /// The connection made before the tunnel was accepted, used by the first request.
    first: Mutex<Option<TcpStream>>,
    conn: Mutex<Option<AppConn>>,
    labels: HttpLabels,
}

/// Serves one accepted HBONE stream whose destination port speaks HTTP.
pub async fn serve(
    io: TunnelIo,
    app_conn: TcpStream,
    pod: Arc<PodCtx>,
    labels: HttpLabels,
    tcp_labels: crate::metrics::TcpLabels,
    dst_port: u16,
) {
    pod.metrics.tcp_opened(&tcp_labels);
    let (io, counters) = super::counted::Counted::new(io);
    let ctx = Arc::new(Ctx {
        pod: pod.clone(),
        app: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst_port),
        first: Mutex::new(Some(app_conn)),
        conn: Mutex::new(None),
        labels,
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        r = served => if let Err(e) = r {
            debug!(pod = %pod.id(), "HTTP over HBONE ended: {e}");
        },
        _ = pod.cancel.cancelled() => {}
    }
    let (read, written) = counters.get();
    pod.metrics.tcp_closed(&tcp_labels, read, written);
}

async fn app_stream(ctx: &Ctx) -> std::io::Result<TcpStream> {
    if let Some(s) = ctx.first.lock().await.take() {
        return Ok(s);
    }
    ctx.pod.socket(true).await?.connect(ctx.app).await
}

async fn send(ctx: &Ctx, req: Request<Body>) -> Result<Response<Incoming>, String> {
    let h2 = req.version() == Version::HTTP_2;
    let mut guard = ctx.conn.lock().await;
    let reusable = match guard.as_mut() {
        Some(AppConn::H1(s)) => !h2 && s.ready().await.is_ok(),
        Some(AppConn::H2(s)) => h2 && !s.is_closed(),
        None => false,
    };
    if !reusable {
        let tcp = app_stream(ctx)
            .await
            .map_err(|e| format!("app connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        *guard = Some(if h2 {
            let (s, c) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            AppConn::H2(s)
        } else {
            let (s, c) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c.with_upgrades());
            AppConn::H1(s)
        });
    }
    match guard.as_mut() {
        Some(AppConn::H2(s)) => {
            let mut s = s.clone();
            drop(guard);
            s.send_request(req).await.map_err(|e| e.to_string())
        }
        // HTTP/1.1: one request at a time on this stream's connection (the client sends them
        // sequentially anyway), so the lock is held until the response head.
        Some(AppConn::H1(s)) => s.send_request(req).await.map_err(|e| e.to_string()),
        None => Err("no app connection".into()),
    }
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let grpc = super::is_grpc(&parts.headers);
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let mut labels = ctx.labels.clone();
    labels.request_protocol = if grpc { "grpc" } else { "http" }.into();
    let req_bytes =
        super::head_size(&parts.headers) + http_body::Body::size_hint(&body).exact().unwrap_or(0);
    let h2 = parts.version == Version::HTTP_2;
    let mut up = Request::new(body::boxed(body));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = super::upstream_uri(&parts, h2);
    *up.version_mut() = parts.version;
    *up.headers_mut() = std::mem::take(&mut parts.headers);
    let resp = match send(&ctx, up).await {
        Ok(r) => r,
        Err(e) => {
            debug!(pod = %ctx.pod.id(), "to the app: {e}");
            labels.response_code = "503".into();
            labels.response_flags = "UF".into();
            ctx.pod.metrics.request(
                &labels,
                start.elapsed().as_secs_f64() * 1000.0,
                req_bytes,
                0,
            );
            let mut r = Response::new(body::full(
                "upstream connect error or disconnect/reset before headers",
            ));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
    };
    let mut resp = resp;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = on_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let Ok((d, u)) = tokio::try_join!(down, up) {
                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
        });
    }
    labels.response_code = resp.status().as_u16().to_string();
    let head_grpc = body::grpc_status(resp.headers());
    let (parts, b) = resp.into_parts();
    let head = super::head_size(&parts.headers);
    let metrics = ctx.pod.metrics.clone();
    let observed = body::Observed::new(b, move |seen| {
        let mut l = labels;
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
            req_bytes,
            head + seen.bytes,
        );
    });
    Response::from_parts(parts, body::boxed(observed))
}

/// Destination-side labels for requests from `src_identity` (client pod `src_ip`) to this pod.
pub fn destination_labels(
    pod: &PodCtx,
    mesh: &crate::state::mesh::MeshState,
    src_ip: std::net::IpAddr,
    src_identity: &str,
    svc: Option<&crate::state::mesh::ServicePort>,
) -> HttpLabels {
    let own: BTreeMap<String, String> = mesh
        .workloads
        .get(&pod.uid)
        .map(|w| {
            w.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut l = HttpLabels {
        reporter: "destination".into(),
        source_principal: src_identity.to_string(),
        source_workload_namespace: crate::proxy::namespace_of(src_identity),
        destination_workload: pod.workload.clone(),
        destination_workload_namespace: pod.namespace.clone(),
        destination_principal: pod.identity.clone(),
        destination_app: super::app_label(&own).unwrap_or("unknown").to_string(),
        destination_version: super::version_label(&own).unwrap_or("unknown").to_string(),
        connection_security_policy: "mutual_tls".into(),
        ..HttpLabels::unknown()
    };
    if let Some(src) = mesh.meshed_pod(&src_ip) {
        l.source_workload = src.workload.clone();
    }
    if let Some(src) = mesh.workloads.values().find(|w| w.ip == src_ip.to_string()) {
        let sl: BTreeMap<String, String> = src
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.source_app = super::app_label(&sl).unwrap_or("unknown").to_string();
        l.source_version = super::version_label(&sl).unwrap_or("unknown").to_string();
    }
    if let Some(s) = svc {
        l.destination_service = s.hostname.clone();
        l.destination_service_name = s.name.clone();
        l.destination_service_namespace = s.namespace.clone();
    }
    l
}
