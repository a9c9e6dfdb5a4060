//! Upstream HTTP connections of one client pod, pooled per endpoint: HTTP/1.1 connections are
//! reused for keep-alive (one request at a time each, returned to the pool once the response
//! body is done), HTTP/2 connections are shared by concurrent requests. A connection to a meshed
//! endpoint is an HBONE CONNECT stream (mTLS with the client pod's identity); to anything else a
//! plain TCP connection made in the client pod's netns.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use super::body::Body;
use crate::{
    hbone::{client::Target, io::TunnelIo},
    proxy::PodCtx,
};

/// How to reach an endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Endpoint {
    /// `<podIP>:<targetPort>`.
    pub addr: SocketAddr,
    /// `Some(identity)`: over HBONE, expecting this SPIFFE ID.
    pub hbone: Option<String>,
}

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("connect to {0}: timed out after {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("upstream {0} refused the stream")]
    RefusedStream(SocketAddr),
    #[error("upstream {0} reset: {1}")]
    Reset(SocketAddr, String),
}

/// Per-request connection settings (from the cluster's connection pool policy).
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// None = no limit.
    pub max_connection_duration: Option<Duration>,
}

impl ConnSettings {
    /// May a connection opened at `opened` that has served `served` requests take another one?
    /// (`maxRequestsPerConnection`, `maxConnectionDuration`; the idle timeout is checked apart.)
    fn reusable(&self, served: u32, opened: Instant, now: Instant) -> bool {
        (self.max_requests_per_connection == 0 || served < self.max_requests_per_connection)
            && self
                .max_connection_duration
                .is_none_or(|max| now.saturating_duration_since(opened) < max)
    }
}

/// The pool's bookkeeping of one connection.
#[derive(Clone, Copy)]
struct Usage {
    opened: Instant,
    served: u32,
}

struct IdleH1 {
    sender: http1::SendRequest<Body>,
    since: Instant,
    usage: Usage,
}

struct H2Conn {
    sender: http2::SendRequest<Body>,
    usage: Usage,
}

#[derive(Default)]
pub struct Upstreams {
    h1: Mutex<HashMap<Endpoint, Vec<IdleH1>>>,
    h2: Mutex<HashMap<Endpoint, H2Conn>>,
}

impl Upstreams {
    /// Sends `req` to `ep` over a pooled or new connection. `h2`: speak HTTP/2 (prior knowledge).
    pub async fn send(
        self: &Arc<Self>,
        pod: &Arc<PodCtx>,
        ep: &Endpoint,
        req: Request<Body>,
        h2: bool,
        s: ConnSettings,
    ) -> Result<Response<Incoming>, SendError> {
        if h2 {
            self.send_h2(pod, ep, req, s).await
        } else {
            self.send_h1(pod, ep, req, s).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        pod: &Arc<PodCtx>,
        ep: &Endpoint,
        mut req: Request<Body>,
        s: ConnSettings,
    ) -> Result<Response<Incoming>, SendError> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        // A pooled connection may have been closed by the server meanwhile: a request hyper
        // could not send at all is retried on another connection (bounded).
        for _ in 0..3 {
            let (mut sender, mut usage) = match self.checkout_h1(ep, s) {
                Some(c) => c,
                None => (
                    self.connect_h1(pod, ep, s).await?,
                    Usage {
                        opened: Instant::now(),
                        served: 0,
                    },
                ),
            };
            let pooled = usage.served > 0;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    usage.served += 1;
                    if !upgrade && s.reusable(usage.served, usage.opened, Instant::now()) {
                        let me = self.clone();
                        let ep = ep.clone();
                        // Back to the pool once the response body is done.
                        tokio::spawn(async move {
                            if sender.ready().await.is_ok() {
                                me.h1
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .entry(ep)
                                    .or_default()
                                    .push(IdleH1 {
                                        sender,
                                        since: Instant::now(),
                                        usage,
                                    });
                            }
                        });
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if pooled => {
                        debug!(upstream = %ep.addr, "pooled connection closed before the request was sent: {}", e.error());
                        req = r;
                    }
                    _ => return Err(SendError::Reset(ep.addr, e.error().to_string())),
                },
            }
        }
        Err(SendError::Reset(ep.addr, "no usable connection".into()))
    }

    fn checkout_h1(
        &self,
        ep: &Endpoint,
        s: ConnSettings,
    ) -> Option<(http1::SendRequest<Body>, Usage)> {
        let mut idle = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(ep)?;
        let now = Instant::now();
        // Unusable connections popped here are dropped, which closes them.
        while let Some(c) = list.pop() {
            if c.sender.is_ready()
                && now.duration_since(c.since) < s.idle_timeout
                && s.reusable(c.usage.served, c.usage.opened, now)
            {
                return Some((c.sender, c.usage));
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        pod: &Arc<PodCtx>,
        ep: &Endpoint,
        s: ConnSettings,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = connect(pod, ep, s.connect_timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(ep.addr, e.to_string()))?;
        let addr = ep.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream = %addr, "HTTP/1.1 upstream connection: {e}");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        self: &Arc<Self>,
        pod: &Arc<PodCtx>,
        ep: &Endpoint,
        req: Request<Body>,
        s: ConnSettings,
    ) -> Result<Response<Incoming>, SendError> {
        let pooled = {
            let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            match conns.get_mut(ep) {
                Some(c)
                    if !c.sender.is_closed()
                        && s.reusable(c.usage.served, c.usage.opened, Instant::now()) =>
                {
                    c.usage.served += 1;
                    Some(c.sender.clone())
                }
                _ => None,
            }
        };
        let mut sender = match pooled {
            Some(sn) => sn,
            None => {
                let io = connect(pod, ep, s.connect_timeout).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(crate::hbone::STREAM_WINDOW)
                    .initial_connection_window_size(crate::hbone::CONNECTION_WINDOW)
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| SendError::Connect(ep.addr, e.to_string()))?;
                let addr = ep.addr;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(upstream = %addr, "HTTP/2 upstream connection: {e}");
                    }
                });
                self.h2.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    ep.clone(),
                    H2Conn {
                        sender: sender.clone(),
                        usage: Usage {
                            opened: Instant::now(),
                            served: 1,
                        },
                    },
                );
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError::Reset(ep.addr, e.to_string()))?;
        sender.send_request(req).await.map_err(|e| {
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .and_then(|h| h.reason())
                == Some(h2::Reason::REFUSED_STREAM);
            if refused {
                SendError::RefusedStream(ep.addr)
            } else {
                SendError::Reset(ep.addr, e.to_string())
            }
        })
    }

    /// Drops idle connections (pod deleted, or for tests).
    pub fn clear(&self) {
        self.h1.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.h2.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A connection to an endpoint: HBONE or plain, bounded by the connect timeout.
async fn connect(pod: &Arc<PodCtx>, ep: &Endpoint, timeout: Duration) -> Result<UpIo, SendError> {
    let fut = async {
        match &ep.hbone {
            Some(identity) => {
                let t = pod
                    .tunnel
                    .clone()
                    .ok_or_else(|| SendError::Connect(ep.addr, "no tunnel configured".into()))?;
                let target = Target {
                    via: SocketAddr::new(ep.addr.ip(), mesh_common::ports::HBONE),
                    authority: ep.addr,
                    identity: identity.clone(),
                };
                let headers = [
                    ("forwarded", format!("for=\"{}\"", pod.ip)),
                    (
                        "baggage",
                        format!(
                            "k8s.namespace.name={},k8s.pod.name={}",
                            pod.namespace, pod.name
                        ),
                    ),
                ];
                let tn = t
                    .pool
                    .connect(pod, &pod.identity, &*t.certs, &target, &headers)
                    .await
                    .map_err(|e| SendError::Connect(ep.addr, e.to_string()))?;
                Ok(UpIo::Tunnel(Box::new(TunnelIo::new(tn))))
            }
            None => {
                let sock = pod
                    .socket(ep.addr.is_ipv4())
                    .await
                    .map_err(|e| SendError::Connect(ep.addr, e.to_string()))?;
                let s = sock
                    .connect(ep.addr)
                    .await
                    .map_err(|e| SendError::Connect(ep.addr, e.to_string()))?;
                Ok(UpIo::Tcp(s))
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| SendError::ConnectTimeout(ep.addr, timeout))?
}

/// An upstream byte stream.
pub enum UpIo {
    Tcp(TcpStream),
    Tunnel(Box<TunnelIo>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tunnel(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tunnel(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tunnel(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tunnel(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_limits() {
        let s = |per_conn: u32, max_age_ms: Option<u64>| ConnSettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_requests_per_connection: per_conn,
            max_connection_duration: max_age_ms.map(Duration::from_millis),
        };
        let opened = Instant::now();
        let at = |ms: u64| opened + Duration::from_millis(ms);
        // (settings, served, now, reusable)
        let cases = [
            (s(0, None), 1_000_000, at(86_400_000), true),
            (s(2, None), 1, at(0), true),
            (s(2, None), 2, at(0), false),
            (s(0, Some(500)), 7, at(499), true),
            (s(0, Some(500)), 7, at(500), false),
            (s(10, Some(500)), 10, at(1), false),
        ];
        for (i, (settings, served, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(settings.reusable(served, opened, now), want, "case {i}");
        }
    }
}
