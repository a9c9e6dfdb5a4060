//! Outbound: app → `127.0.0.1:15001` (redirected by connect4) → original destination.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use mesh_common::{AF_INET, AF_INET6, OrigDst, SrcKey};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{PodCtx, TunnelCtx, relay};
use crate::{ebpf::OrigDstTable, hbone::client::Target, metrics::Direction, state::mesh::Upstream};

pub async fn serve(listener: TcpListener, pod: Arc<PodCtx>, orig: Arc<OrigDstTable>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let pod = pod.clone();
                let orig = orig.clone();
                tokio::spawn(async move { handle(stream, peer, pod, orig).await });
            }
            Err(e) => {
                warn!(pod = %pod.id(), "outbound accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

pub fn src_key(netns_cookie: u64, peer: SocketAddr) -> SrcKey {
    let mut key = SrcKey {
        netns_cookie,
        port: peer.port(),
        ..SrcKey::default()
    };
    match peer.ip() {
        IpAddr::V4(v4) => {
            key.family = AF_INET;
            key.addr[0] = u32::from(v4).to_be();
        }
        IpAddr::V6(v6) => {
            key.family = AF_INET6;
            let o = v6.octets();
            for i in 0..4 {
                key.addr[i] =
                    u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
        }
    }
    key
}

pub fn orig_addr(o: &OrigDst) -> SocketAddr {
    if o.family == AF_INET6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[4 * i..4 * i + 4].copy_from_slice(&o.addr[i].to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), o.port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from_be(o.addr[0]))), o.port)
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>, orig: Arc<OrigDstTable>) {
    let start = Instant::now();
    let m = &pod.metrics;
    let dst = match orig.take(&src_key(pod.netns_cookie, peer)) {
        Ok(Some(o)) => orig_addr(&o),
        Ok(None) => {
            warn!(pod = %pod.id(), %peer, "outbound connection without an original destination: reset");
            m.connection(Direction::Outbound, "no_original_dst");
            relay::reset(&client);
            return;
        }
        Err(e) => {
            warn!(pod = %pod.id(), %peer, "reading the original destination: {e}");
            m.connection(Direction::Outbound, "error");
            relay::reset(&client);
            return;
        }
    };
    // A service port speaking HTTP (declared, or sniffed when undeclared): the L7 path.
    if let Some(t) = &pod.tunnel {
        let svc = t.mesh.load().service(&dst).cloned();
        if let Some(svc) = svc {
            use super::http::detect::{Detected, SNIFF_TIMEOUT, sniff};
            use crate::state::mesh::PortProtocol;
            let l7 = match svc.protocol {
                PortProtocol::Http | PortProtocol::Http2 => true,
                PortProtocol::Tcp => false,
                PortProtocol::Unknown => sniff(&client, SNIFF_TIMEOUT).await != Detected::Tcp,
            };
            if l7 {
                m.connection(Direction::Outbound, "http");
                super::http::serve(client, pod.clone(), t.clone(), svc, dst).await;
                return;
            }
        }
    }
    let upstream = match &pod.tunnel {
        Some(t) => {
            let mesh = t.mesh.load();
            let (ns, labels) = match mesh.workloads.get(&pod.uid) {
                Some(w) => (
                    w.namespace.clone(),
                    w.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                None => (pod.namespace.clone(), Default::default()),
            };
            mesh.resolve_from(dst, Some(pod.ip.into()), &ns, &labels)
        }
        None => Upstream::Plain(dst),
    };
    let to = match upstream {
        Upstream::Plain(to) => to,
        Upstream::NoEndpoints(svc) => {
            debug!(pod = %pod.id(), original_dst = %dst, service = svc, "no endpoints: reset");
            m.connection(Direction::Outbound, "no_endpoints");
            relay::reset(&client);
            return;
        }
        Upstream::Hbone {
            via,
            authority,
            identity,
            service,
        } => {
            let Some(t) = pod.tunnel.clone() else { return };
            tunnel(
                &pod,
                &t,
                client,
                peer,
                dst,
                Target {
                    via,
                    authority,
                    identity,
                },
                service,
            )
            .await;
            return;
        }
    };
    let labels = pod.source_labels();
    let info = pod.conn_info(
        "outbound",
        "plain",
        SocketAddr::new(pod.ip.into(), peer.port()),
        to,
        None,
        None,
    );
    let Some(r) = super::forward(&pod, client, to, Direction::Outbound, &labels, info).await else {
        return;
    };
    debug!(
        source = %pod.id(), original_dst = %dst, sent = r.a_to_b, received = r.b_to_a,
        duration_ms = start.elapsed().as_millis() as u64, error = ?r.error.as_ref().map(|e| e.to_string()),
        "outbound connection closed"
    );
}

/// Relays `client` through an HBONE stream to `target`. A refused tunnel (401/503, TLS failure,
/// no certificate) resets the client: STRICT never degrades to plaintext.
async fn tunnel(
    pod: &Arc<PodCtx>,
    t: &TunnelCtx,
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    target: Target,
    service: Option<String>,
) {
    let m = &pod.metrics;
    let start = Instant::now();
    let headers = [
        ("forwarded", format!("for=\"{}:{}\"", pod.ip, peer.port())),
        (
            "baggage",
            format!(
                "k8s.namespace.name={},k8s.pod.name={}",
                pod.namespace, pod.name
            ),
        ),
        ("traceparent", traceparent()),
    ];
    let tn = match t
        .pool
        .connect(pod, &pod.identity, &*t.certs, &target, &headers)
        .await
    {
        Ok(tn) => tn,
        Err(e) => {
            warn!(source = %pod.id(), original_dst = %dst, destination = %target.identity, "tunnel refused: {e}");
            m.connection(Direction::Outbound, "tunnel_failed");
            relay::reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    m.connection(Direction::Outbound, "ok");
    let mut labels = pod.source_labels();
    labels.destination_principal = target.identity.clone();
    labels.destination_workload_namespace = super::namespace_of(&target.identity);
    labels.connection_security_policy = "mutual_tls".into();
    if let Some(dst) = t.mesh.load().meshed_pod(&target.authority.ip()) {
        labels.destination_workload = dst.workload.clone();
    }
    if let Some(svc) = &service
        && let Some((ns, name)) = svc.split_once('/')
    {
        labels.destination_service = format!("{name}.{ns}.svc.cluster.local");
    }
    m.tcp_opened(&labels);
    let guard = pod.conns.register(pod.conn_info(
        "outbound",
        "hbone",
        SocketAddr::new(pod.ip.into(), peer.port()),
        target.authority,
        Some(pod.identity.clone()),
        Some(target.identity.clone()),
    ));
    let r = tokio::select! {
        r = crate::hbone::copy::bidi(client, tn.send, tn.recv) => r,
        _ = pod.cancel.cancelled() => crate::hbone::copy::Copied { error: Some("pod deleted".into()), ..Default::default() },
        _ = guard.cancel.cancelled() => crate::hbone::copy::Copied { error: Some("no longer allowed".into()), ..Default::default() },
    };
    m.bytes(Direction::Outbound, r.sent, r.received);
    m.tcp_closed(&labels, r.sent, r.received);
    debug!(
        source = %pod.id(), original_dst = %dst, via = %target.via, destination = %target.identity,
        service = ?service, sent = r.sent, received = r.received,
        duration_ms = start.elapsed().as_millis() as u64, error = ?r.error,
        "outbound tunnel closed"
    );
}

/// A W3C traceparent for one tunnel (sampled flag off).
fn traceparent() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let r = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    format!("00-{:016x}{:016x}-{:016x}-00", r(1), r(2), r(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_addresses_round_trip() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let k = src_key(7, peer);
        assert_eq!(k.netns_cookie, 7);
        assert_eq!(k.port, 40000);
        assert_eq!(k.addr[0], u32::from(Ipv4Addr::LOCALHOST).to_be());
        let o = OrigDst {
            addr: [u32::from(Ipv4Addr::new(10, 244, 1, 2)).to_be(), 0, 0, 0],
            port: 8080,
            family: AF_INET,
            _pad: 0,
        };
        assert_eq!(
            orig_addr(&o),
            "10.244.1.2:8080".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[::1]:1234".parse().unwrap();
        let k6 = src_key(1, v6);
        let o6 = OrigDst {
            addr: k6.addr,
            port: 1234,
            family: AF_INET6,
            _pad: 0,
        };
        assert_eq!(orig_addr(&o6), v6);
    }
}
