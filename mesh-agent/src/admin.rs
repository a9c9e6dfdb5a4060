//! Agent admin endpoint (`127.0.0.1:15000` in the node netns; `mesh-agent config|certs|connections`
//! call it): `GET /config` — the pods enrolled here and the mesh state from the controller;
//! `GET /certs` — each identity's certificate (serial, validity, state, chain); `GET /connections`
//! — open proxied connections and pooled HBONE tunnels; `GET /clusters` — each pod's L7 clusters
//! (load balancer, requests in flight, pending, endpoints ejected by outlier detection). JSON
//! only, read-only.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use http_body_util::Full;
use hyper::{Response, body::Bytes, service::service_fn};
use serde_json::{Value, json};

use crate::{
    identity::CertManager,
    proxy::{TunnelCtx, conns::ConnRegistry},
    state::mesh::SharedMesh,
};

/// What the admin endpoint reads; the agent updates `pods` after every reconcile.
pub struct AdminState {
    pub node: String,
    pub pods: Mutex<Value>,
    /// The enrolled pods' proxy contexts (their L7 clusters).
    pub pod_ctxs: Mutex<Vec<Arc<crate::proxy::PodCtx>>>,
    pub mesh: Arc<SharedMesh>,
    pub certs: Option<Arc<CertManager>>,
    pub tunnel: Option<Arc<TunnelCtx>>,
    pub conns: Arc<ConnRegistry>,
}

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map(|t| Value::String(humantime::format_rfc3339_seconds(t).to_string()))
        .unwrap_or(Value::Null)
}

impl AdminState {
    pub fn config(&self) -> Value {
        json!({
            "node": self.node,
            "pods": self.pods.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "mesh": self.mesh.load().dump(),
        })
    }

    pub fn certs(&self) -> Value {
        let now = SystemTime::now();
        let list: Vec<Value> = self
            .certs
            .as_ref()
            .map(|c| c.certs())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                json!({
                    "identity": c.identity.to_string(),
                    "state": c.state.as_str(),
                    "serial": c.serial,
                    "not_before": rfc3339(c.not_before),
                    "not_after": rfc3339(c.not_after),
                    "renew_at": rfc3339(c.renew_at),
                    "expires_in_seconds": c.expiry_seconds(now),
                    "rotations": c.rotations_total,
                    "failures": c.failures_total,
                    "last_error": c.last_error,
                    "chain_pem": c.chain_pem,
                })
            })
            .collect();
        json!({"node": self.node, "certificates": list})
    }

    /// Each pod's L7 clusters: balancer, requests in flight, pending, ejected endpoints.
    pub fn clusters(&self) -> Value {
        let pods: Vec<Value> = self
            .pod_ctxs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| json!({"pod": c.id(), "clusters": c.http.clusters.dump()}))
            .collect();
        json!({"node": self.node, "pods": pods})
    }

    pub fn connections(&self) -> Value {
        let tunnels: Vec<Value> = self
            .tunnel
            .as_ref()
            .map(|t| t.pool.connections())
            .unwrap_or_default()
            .into_iter()
            .map(|(pod, src, dst_id, via, streams)| {
                json!({"pod_uid": pod, "src_identity": src, "dst_identity": dst_id, "via": via.to_string(), "streams": streams})
            })
            .collect();
        json!({
            "node": self.node,
            "connections": self.conns.list(),
            "tunnels": tunnels,
        })
    }
}

/// Serves until the process exits.
pub async fn serve(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let st = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let st = st.clone();
                async move {
                    let body = match req.uri().path() {
                        "/config" => Some(st.config()),
                        "/certs" => Some(st.certs()),
                        "/connections" => Some(st.connections()),
                        "/clusters" => Some(st.clusters()),
                        _ => None,
                    };
                    match body {
                        Some(v) => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(
                                serde_json::to_vec_pretty(&v).unwrap_or_default(),
                            ))),
                        None => {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(
                                    b"not found: /config, /certs, /connections, /clusters\n",
                                )))
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `mesh-agent config|certs|connections`: GET the path from the node's admin endpoint.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    use http_body_util::{BodyExt as _, Empty};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the agent admin endpoint {addr}: {e} (is the agent running on this node?)"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "{path}: HTTP {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}
