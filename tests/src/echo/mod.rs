//! `mesh-echo`: an HTTP/1.1 + h2c + gRPC + WebSocket + raw TCP echo server that reports which
//! pod answered.

mod grpc;
mod http;
mod tcp;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

pub use grpc::EchoService;
pub use upstream::Upstream;

/// Listener configuration (from flags).
#[derive(Debug, Clone)]
pub struct Listeners {
    pub bind: IpAddr,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub tcp_port: Option<u16>,
}

/// Who this server claims to be, and its fault-injection knobs (from the environment).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    pub version: String,
    pub node: Option<String>,
    pub pod_ip: Option<String>,
    pub failure_rate: f64,
    pub failure_status: u16,
    /// Added latency of every echo request, HTTP and gRPC (a per-pod slowness), in ms.
    pub delay_ms: u64,
}

impl Identity {
    /// Read the identity from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Read the identity through `get` (an environment lookup), for tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let pod = get("POD_NAME")
            .or_else(|| get("HOSTNAME"))
            .unwrap_or_else(system_hostname);
        let failure_rate = match get("FAILURE_RATE") {
            Some(v) => {
                let r: f64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("FAILURE_RATE={v:?} is not a number"))?;
                anyhow::ensure!((0.0..=1.0).contains(&r), "FAILURE_RATE={r} not in 0..=1");
                r
            }
            None => 0.0,
        };
        let failure_status = match get("FAILURE_STATUS") {
            Some(v) => {
                let s: u16 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("FAILURE_STATUS={v:?} is not a status code"))?;
                anyhow::ensure!((100..=999).contains(&s), "FAILURE_STATUS={s} out of range");
                s
            }
            None => 503,
        };
        let delay_ms = match get("DELAY_MS") {
            Some(v) => v
                .trim()
                .parse()
                .with_context(|| format!("DELAY_MS={v:?} is not a number of milliseconds"))?,
            None => 0,
        };
        Ok(Self {
            pod,
            namespace: get("POD_NAMESPACE").unwrap_or_else(|| "default".to_owned()),
            version: get("VERSION").unwrap_or_else(|| "v1".to_owned()),
            node: get("NODE_NAME"),
            pod_ip: get("POD_IP"),
            failure_rate,
            failure_status,
            delay_ms,
        })
    }

    /// The `DELAY_MS` slowness (zero by default).
    pub fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delay_ms)
    }

    /// Whether this request should be failed by fault injection.
    pub fn should_fail(&self) -> bool {
        self.failure_rate > 0.0 && fastrand::f64() < self.failure_rate
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Bind every configured listener, then serve until SIGTERM/SIGINT. With `upstream`, every
/// HTTP echo request on the HTTP port also calls it (see [`Upstream`]).
pub async fn run(
    listeners: Listeners,
    identity: Identity,
    upstream: Option<Upstream>,
) -> anyhow::Result<()> {
    let id = Arc::new(identity);
    let upstream = upstream.map(Arc::new);
    info!(config = ?listeners, identity = ?id, upstream = ?upstream, "mesh-echo starting");
    let routes = grpc::routes(id.clone()).await;
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(port) = listeners.http_port {
        let l = bind(listeners.bind, port).await?;
        info!(addr = %l.local_addr()?, "HTTP/1.1 + h2c + gRPC + WebSocket listening");
        let svc = http::Server::new(id.clone(), routes.clone(), false, upstream.clone());
        tasks.spawn(svc.serve(l));
    }
    if let Some(port) = listeners.grpc_port {
        let l = bind(listeners.bind, port).await?;
        info!(addr = %l.local_addr()?, "gRPC listening");
        let svc = http::Server::new(id.clone(), routes.clone(), true, None);
        tasks.spawn(svc.serve(l));
    }
    if let Some(port) = listeners.tcp_port {
        let l = bind(listeners.bind, port).await?;
        info!(addr = %l.local_addr()?, "TCP echo listening");
        tasks.spawn(tcp::serve(l));
    }

    tokio::select! {
        sig = shutdown_signal() => {
            info!(signal = sig?, "shutting down");
        }
        Some(res) = tasks.join_next() => {
            res.context("listener task panicked")?;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    tasks.abort_all();
    Ok(())
}

async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn identity_defaults_and_precedence() {
        let id = Identity::from_lookup(lookup(&[("HOSTNAME", "h1")])).unwrap();
        assert_eq!(id.pod, "h1");
        assert_eq!(id.namespace, "default");
        assert_eq!(id.version, "v1");
        assert_eq!(id.failure_status, 503);
        assert_eq!(id.delay_ms, 0);
        assert!(!id.should_fail());

        let id = Identity::from_lookup(lookup(&[
            ("HOSTNAME", "h1"),
            ("POD_NAME", "p1"),
            ("POD_NAMESPACE", "ns"),
            ("VERSION", "v2"),
            ("FAILURE_RATE", "1"),
            ("FAILURE_STATUS", "500"),
            ("DELAY_MS", "150"),
        ]))
        .unwrap();
        assert_eq!(id.delay(), std::time::Duration::from_millis(150));
        assert_eq!((id.pod.as_str(), id.namespace.as_str()), ("p1", "ns"));
        assert_eq!(id.version, "v2");
        assert!(id.should_fail());
        assert_eq!(id.failure_status, 500);
    }

    #[test]
    fn identity_rejects_bad_knobs() {
        assert!(Identity::from_lookup(lookup(&[("FAILURE_RATE", "2")])).is_err());
        assert!(Identity::from_lookup(lookup(&[("FAILURE_RATE", "x")])).is_err());
        assert!(Identity::from_lookup(lookup(&[("FAILURE_STATUS", "42")])).is_err());
        assert!(Identity::from_lookup(lookup(&[("DELAY_MS", "-1")])).is_err());
    }
}
