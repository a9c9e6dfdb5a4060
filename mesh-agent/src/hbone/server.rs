//! The HBONE server: `:15008` inside a meshed pod's netns. Terminates mTLS with the pod's own
//! certificate, requires a client certificate of our trust domain, then serves CONNECT streams:
//! the authority must be this pod (`<podIP>:<port>`), the policy must allow the peer, and only
//! after the connect to the app (loopback in the pod netns) succeeded is 200 sent.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use h2::server::SendResponse;
use rustls::{RootCertStore, sign::CertifiedKey};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{
    CONNECTION_WINDOW, CertSource, InboundConn, InboundPolicy, MAX_FRAME, MAX_HEADER_LIST,
    MAX_STREAMS, STREAM_WINDOW, copy, tls,
};
use crate::{metrics::Direction, proxy::PodCtx};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one pod's server needs.
pub struct Server {
    pub pod: Arc<PodCtx>,
    /// The pod's SPIFFE ID (its certificate is presented).
    pub identity: String,
    pub certs: Arc<dyn CertSource>,
    pub policy: Arc<dyn InboundPolicy>,
    /// Last built TLS config, reused while the certificate and roots are the same.
    config: Mutex<Option<Cached>>,
}

type Cached = (
    Arc<CertifiedKey>,
    Arc<RootCertStore>,
    Arc<rustls::ServerConfig>,
);

impl Server {
    pub fn new(
        pod: Arc<PodCtx>,
        identity: String,
        certs: Arc<dyn CertSource>,
        policy: Arc<dyn InboundPolicy>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pod,
            identity,
            certs,
            policy,
            config: Mutex::new(None),
        })
    }

    async fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let roots = self
            .certs
            .roots()
            .ok_or("no trust bundle from the controller yet")?;
        let cert = self.certs.cert(&self.identity).await?;
        let mut cached = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, r, cfg)) = cached.as_ref()
            && Arc::ptr_eq(c, &cert)
            && Arc::ptr_eq(r, &roots)
        {
            return Ok(cfg.clone());
        }
        let cfg = tls::server_config(cert.clone(), roots.clone()).map_err(|e| e.to_string())?;
        *cached = Some((cert, roots, cfg.clone()));
        Ok(cfg)
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.connection(stream, peer).await });
                }
                Err(e) => {
                    warn!(pod = %self.pod.id(), "HBONE accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let config = match self.tls_config().await {
            Ok(c) => c,
            Err(e) => {
                warn!(pod = %self.pod.id(), %peer, "HBONE refused: no certificate to present: {e}");
                return;
            }
        };
        let tls = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(tcp),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(pod = %self.pod.id(), %peer, "HBONE TLS handshake failed: {e}");
                self.pod
                    .metrics
                    .connection(Direction::Inbound, "tls_failed");
                return;
            }
            Err(_) => {
                warn!(pod = %self.pod.id(), %peer, "HBONE TLS handshake timed out");
                return;
            }
        };
        // The verifier checked the chain; the peer's identity must be of our trust domain.
        let src_identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(tls::uri_sans)
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.starts_with("spiffe://"));
        let Some(src_identity) = src_identity.filter(|s| {
            tls::trust_domain(s).is_some()
                && tls::trust_domain(s) == tls::trust_domain(&self.identity)
        }) else {
            warn!(pod = %self.pod.id(), %peer, "HBONE refused: the client certificate has no SPIFFE ID of our trust domain");
            self.pod
                .metrics
                .connection(Direction::Inbound, "tls_failed");
            return;
        };
        let mut conn = match h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_concurrent_streams(MAX_STREAMS as u32)
            .handshake::<_, Bytes>(tls)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(pod = %self.pod.id(), %peer, "HBONE HTTP/2 handshake: {e}");
                return;
            }
        };
        while let Some(next) = tokio::select! {
            n = conn.accept() => n,
            _ = self.pod.cancel.cancelled() => None,
        } {
            match next {
                Ok((req, respond)) => {
                    let me = self.clone();
                    let src = src_identity.clone();
                    tokio::spawn(async move { me.stream(req, respond, src, peer).await });
                }
                Err(e) => {
                    debug!(pod = %self.pod.id(), %peer, "HBONE connection: {e}");
                    break;
                }
            }
        }
    }

    async fn stream(
        self: Arc<Self>,
        req: http::Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
        src_identity: String,
        peer: SocketAddr,
    ) {
        let m = &self.pod.metrics;
        let reply = |respond: &mut SendResponse<Bytes>, status: u16| {
            let resp = http::Response::builder()
                .status(status)
                .body(())
                .unwrap_or_default();
            let _ = respond.send_response(resp, true);
        };
        if req.method() != http::Method::CONNECT {
            reply(&mut respond, 400);
            return;
        }
        let Some(dst) = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        else {
            reply(&mut respond, 400);
            return;
        };
        if dst.ip() != IpAddr::V4(self.pod.ip) {
            debug!(pod = %self.pod.id(), %dst, "HBONE authority is not this pod: 400");
            reply(&mut respond, 400);
            return;
        }
        let conn = InboundConn {
            src_identity: src_identity.clone(),
            src_ip: peer.ip(),
            dst,
        };
        if let Err(reason) = self.policy.check(&conn) {
            debug!(pod = %self.pod.id(), src = %src_identity, %dst, "denied: {reason}");
            m.connection(Direction::Inbound, "denied");
            reply(&mut respond, 401);
            return;
        }
        let app = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port());
        let upstream = match self.pod.socket(true).await {
            Ok(s) => s.connect(app).await,
            Err(e) => Err(e),
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                debug!(pod = %self.pod.id(), %app, "app connect failed: {e}: 503");
                m.connection(Direction::Inbound, "connect_failed");
                reply(&mut respond, 503);
                return;
            }
        };
        let send = match respond.send_response(
            http::Response::builder()
                .status(200)
                .body(())
                .unwrap_or_default(),
            false,
        ) {
            Ok(s) => s,
            Err(e) => {
                debug!(pod = %self.pod.id(), "HBONE response: {e}");
                return;
            }
        };
        m.connection(Direction::Inbound, "ok");
        // An HTTP port of this pod: serve the stream as HTTP (destination-side telemetry).
        if let Some(t) = &self.pod.tunnel {
            let mesh = t.mesh.load();
            let svc = mesh.service_of_endpoint(&dst);
            if svc.is_some_and(|s| {
                matches!(
                    s.protocol,
                    crate::state::mesh::PortProtocol::Http
                        | crate::state::mesh::PortProtocol::Http2
                )
            }) {
                let labels = crate::proxy::http::inbound::destination_labels(
                    &self.pod,
                    &mesh,
                    peer.ip(),
                    &src_identity,
                    svc.map(|s| s.as_ref()),
                );
                drop(mesh);
                let tcp_labels = self.pod.destination_labels(peer.ip(), Some(&src_identity));
                let guard = self.pod.conns.register(self.pod.conn_info(
                    "inbound",
                    "hbone-http",
                    peer,
                    dst,
                    Some(src_identity.clone()),
                    Some(self.identity.clone()),
                ));
                let io = super::io::TunnelIo::from_streams(send, req.into_body());
                tokio::select! {
                    _ = crate::proxy::http::inbound::serve(io, upstream, self.pod.clone(), labels, tcp_labels, dst.port()) => {}
                    _ = guard.cancel.cancelled() => {}
                }
                return;
            }
        }
        let labels = self.pod.destination_labels(peer.ip(), Some(&src_identity));
        m.tcp_opened(&labels);
        let guard = self.pod.conns.register(self.pod.conn_info(
            "inbound",
            "hbone",
            peer,
            dst,
            Some(src_identity.clone()),
            Some(self.identity.clone()),
        ));
        let r = tokio::select! {
            r = copy::bidi(upstream, send, req.into_body()) => r,
            _ = self.pod.cancel.cancelled() => copy::Copied { error: Some("pod deleted".into()), ..Default::default() },
            _ = guard.cancel.cancelled() => copy::Copied { error: Some("no longer allowed".into()), ..Default::default() },
        };
        m.bytes(Direction::Inbound, r.received, r.sent);
        m.tcp_closed(&labels, r.received, r.sent);
        debug!(
            src = %src_identity, destination_pod = %self.pod.id(), %dst, received = r.received, sent = r.sent,
            error = ?r.error, "HBONE stream closed"
        );
    }
}
