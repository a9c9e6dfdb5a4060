//! The node proxy's L4 path.
//!
//! - outbound (`127.0.0.1:15001` in the client pod): recover the original destination recorded by
//!   the eBPF hooks; with the controller's mesh state, a service VIP picks an endpoint and a meshed
//!   endpoint is reached through the HBONE tunnel ([`crate::hbone`]) with the pod's identity;
//!   anything else is connected to from inside the client pod's netns (the server sees the pod's
//!   IP); copy both ways.
//! - inbound (`:15006` in the server pod): the accepted socket's local address is the original
//!   destination; connect to the app over loopback inside the pod netns, copy both ways.
//!
//! Half-close is propagated (a FIN on one side shuts down writing on the other); a reset on either
//! side resets the other (SO_LINGER 0).
pub mod baseline;
pub mod certs;
pub mod conns;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod relay;

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use mesh_common::MESH_MARK;
use tokio::net::TcpSocket;

use crate::{
    ebpf::netns,
    metrics::{Direction, Metrics},
    pods::worker::NetnsWorker,
};

/// Upstream IPv4 sockets kept ready per pod, so a new connection does not wait for the netns
/// worker (a thread hop, ~18 µs) to create one.
const POOL_TARGET: usize = 16;
const POOL_LOW: usize = 8;

/// What the proxy knows about one enrolled pod.
pub struct PodCtx {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub netns_cookie: u64,
    pub worker: NetnsWorker,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the pod is deleted: its proxied connections close.
    pub cancel: tokio_util::sync::CancellationToken,
    /// Pre-created upstream IPv4 sockets (created in the pod netns, marked, TCP_NODELAY).
    pub pool: Mutex<Vec<TcpSocket>>,
    pub refilling: AtomicBool,
    /// The pod's SPIFFE ID (its tunnels present this identity).
    pub identity: String,
    /// Istio canonical workload name (telemetry).
    pub workload: String,
    /// The node's open connections (admin, policy re-checks).
    pub conns: Arc<conns::ConnRegistry>,
    /// The mTLS tunnel (controller mode); `None`: plain TCP everywhere (local/lab sources).
    pub tunnel: Option<Arc<TunnelCtx>>,
    /// L7 state: clusters (balancers, breakers, outlier detection) and upstream connections.
    pub http: http::PodHttp,
}

/// A pod's inbound policy (AuthorizationPolicy, PeerAuthentication) from the current mesh state.
pub struct PodPolicy {
    pub uid: String,
    pub mesh: Arc<crate::state::mesh::SharedMesh>,
}

impl crate::hbone::InboundPolicy for PodPolicy {
    fn check(&self, c: &crate::hbone::InboundConn) -> Result<(), String> {
        self.mesh
            .load()
            .check_inbound(&self.uid, Some(&c.src_identity), c.src_ip, c.dst)
    }
}

/// What the proxy needs to tunnel: the node-wide HBONE pool, certificates, the mesh state.
pub struct TunnelCtx {
    pub pool: crate::hbone::client::Pool,
    pub certs: Arc<dyn crate::hbone::CertSource>,
    pub mesh: Arc<crate::state::mesh::SharedMesh>,
}

/// A socket for the proxy's own connections: created in the current thread's netns, with the mesh
/// mark (never captured) and TCP_NODELAY.
pub fn new_socket(v4: bool) -> std::io::Result<TcpSocket> {
    let s = if v4 {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    netns::set_mark(s.as_raw_fd(), MESH_MARK)?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl PodCtx {
    /// A socket in this pod's netns: from the pool for IPv4, else made by the worker.
    pub async fn socket(self: &Arc<Self>, v4: bool) -> std::io::Result<TcpSocket> {
        if v4 {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(s) = pooled {
                self.refill();
                return Ok(s);
            }
            self.refill();
        }
        self.worker
            .run(move || new_socket(v4))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Tops the pool up on the worker when it runs low (at most one refill in flight).
    pub fn refill(self: &Arc<Self>) {
        let low = self.pool.lock().unwrap_or_else(|p| p.into_inner()).len() < POOL_LOW;
        if !low || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let queued = self.worker.spawn_job(move || {
            let mut fresh = vec![];
            let have = me.pool.lock().unwrap_or_else(|p| p.into_inner()).len();
            for _ in have..POOL_TARGET {
                match new_socket(true) {
                    Ok(s) => fresh.push(s),
                    Err(_) => break,
                }
            }
            me.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(fresh);
            me.refilling.store(false, Ordering::Release);
        });
        if queued.is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Connects to `target` from the pod's netns and relays `client` to it until both sides close (or
/// the pod is deleted). Counts the connection and its bytes; returns what was relayed, or `None`
/// when the connection could not be made (the client was reset).
pub async fn forward(
    pod: &Arc<PodCtx>,
    client: tokio::net::TcpStream,
    target: std::net::SocketAddr,
    direction: Direction,
    labels: &crate::metrics::TcpLabels,
    info: conns::ConnInfo,
) -> Option<relay::RelayResult> {
    let m = &pod.metrics;
    let sock = match pod.socket(target.is_ipv4()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pod = %pod.id(), %target, "creating a socket in the pod netns: {e}");
            m.connection(direction, "error");
            relay::reset(&client);
            return None;
        }
    };
    let upstream = match sock.connect(target).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(pod = %pod.id(), %target, "connect failed: {e}");
            m.connection(direction, "connect_failed");
            relay::reset(&client);
            return None;
        }
    };
    let _ = client.set_nodelay(true);
    m.connection(direction, "ok");
    m.tcp_opened(labels);
    let guard = pod.conns.register(info);
    let r = tokio::select! {
        r = relay::relay(client, upstream) => r,
        _ = pod.cancel.cancelled() => relay::RelayResult { a_to_b: 0, b_to_a: 0, error: Some(std::io::Error::other("pod deleted")) },
        _ = guard.cancel.cancelled() => relay::RelayResult { a_to_b: 0, b_to_a: 0, error: Some(std::io::Error::other("no longer allowed")) },
    };
    m.bytes(direction, r.a_to_b, r.b_to_a);
    m.tcp_closed(labels, r.a_to_b, r.b_to_a);
    Some(r)
}

/// The namespace of a SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`), `unknown` otherwise.
pub fn namespace_of(identity: &str) -> String {
    identity
        .split("/ns/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

impl PodCtx {
    /// A registry entry for a connection of this pod.
    pub fn conn_info(
        &self,
        direction: &'static str,
        transport: &'static str,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        src_identity: Option<String>,
        dst_identity: Option<String>,
    ) -> conns::ConnInfo {
        conns::ConnInfo {
            direction,
            transport,
            pod: self.id(),
            pod_uid: self.uid.clone(),
            src,
            dst,
            src_identity,
            dst_identity,
            opened_unix_ms: 0,
        }
    }

    /// Istio TCP labels with this pod as the client (`reporter="source"`).
    pub fn source_labels(&self) -> crate::metrics::TcpLabels {
        crate::metrics::TcpLabels {
            reporter: "source".into(),
            source_workload: self.workload.clone(),
            source_workload_namespace: self.namespace.clone(),
            source_principal: self.identity.clone(),
            ..crate::metrics::TcpLabels::unknown()
        }
    }

    /// Istio TCP labels with this pod as the server (`reporter="destination"`); the client is
    /// looked up by IP among the meshed pods.
    pub fn destination_labels(
        &self,
        src_ip: std::net::IpAddr,
        src_principal: Option<&str>,
    ) -> crate::metrics::TcpLabels {
        let mut l = crate::metrics::TcpLabels {
            reporter: "destination".into(),
            destination_workload: self.workload.clone(),
            destination_workload_namespace: self.namespace.clone(),
            destination_principal: self.identity.clone(),
            connection_security_policy: if src_principal.is_some() {
                "mutual_tls".into()
            } else {
                "none".into()
            },
            ..crate::metrics::TcpLabels::unknown()
        };
        if let Some(p) = src_principal {
            l.source_principal = p.to_string();
            l.source_workload_namespace = namespace_of(p);
        }
        if let Some(t) = &self.tunnel
            && let Some(src) = t.mesh.load().meshed_pod(&src_ip)
        {
            l.source_workload = src.workload.clone();
            l.source_workload_namespace = namespace_of(&src.identity);
        }
        l
    }
}
