//! Inbound: a client's SYN to `<podIP>:<port>` is steered by sk_lookup to `:15006`; the accepted
//! socket's local address is the original destination; the proxy connects to the app over loopback
//! inside the pod netns.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::PodCtx;
use crate::metrics::Direction;

pub async fn serve(listener: TcpListener, pod: Arc<PodCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let pod = pod.clone();
                tokio::spawn(async move { handle(stream, peer, pod).await });
            }
            Err(e) => {
                warn!(pod = %pod.id(), "inbound accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<PodCtx>) {
    let start = Instant::now();
    let m = &pod.metrics;
    let dst = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(pod = %pod.id(), "inbound local_addr: {e}");
            m.connection(Direction::Inbound, "error");
            return;
        }
    };
    let app = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port());
    // Plaintext: PeerAuthentication STRICT refuses it; AuthorizationPolicy applies without a peer.
    if let Some(t) = &pod.tunnel
        && let Err(reason) = t.mesh.load().check_inbound(&pod.uid, None, peer.ip(), dst)
    {
        debug!(pod = %pod.id(), %peer, original_dst = %dst, "plaintext connection refused: {reason}");
        m.connection(Direction::Inbound, "denied");
        super::relay::reset(&client);
        return;
    }
    let labels = pod.destination_labels(peer.ip(), None);
    let info = pod.conn_info("inbound", "plain", peer, dst, None, None);
    let Some(r) = super::forward(&pod, client, app, Direction::Inbound, &labels, info).await else {
        return;
    };
    debug!(
        source = %peer, destination_pod = %pod.id(), original_dst = %dst, received = r.a_to_b, sent = r.b_to_a,
        duration_ms = start.elapsed().as_millis() as u64, error = ?r.error.as_ref().map(|e| e.to_string()),
        "inbound connection closed"
    );
}
