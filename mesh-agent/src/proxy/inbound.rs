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

use super::{PodCtx, relay};
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
    let sock = match pod.socket(true).await {
        Ok(s) => s,
        Err(e) => {
            warn!(pod = %pod.id(), "creating the app socket: {e}");
            m.connection(Direction::Inbound, "error");
            relay::reset(&client);
            return;
        }
    };
    let upstream = match sock.connect(app).await {
        Ok(u) => u,
        Err(e) => {
            debug!(pod = %pod.id(), %app, "app connect failed: {e}");
            m.connection(Direction::Inbound, "connect_failed");
            relay::reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    m.connection(Direction::Inbound, "ok");
    let r = tokio::select! {
        r = relay::relay(client, upstream) => r,
        _ = pod.cancel.cancelled() => relay::RelayResult { a_to_b: 0, b_to_a: 0, error: Some(std::io::Error::other("pod deleted")) },
    };
    m.bytes(Direction::Inbound, r.a_to_b, r.b_to_a);
    debug!(
        source = %peer, destination_pod = %pod.id(), original_dst = %dst, received = r.a_to_b, sent = r.b_to_a,
        duration_ms = start.elapsed().as_millis() as u64, error = ?r.error.as_ref().map(|e| e.to_string()),
        "inbound connection closed"
    );
}
