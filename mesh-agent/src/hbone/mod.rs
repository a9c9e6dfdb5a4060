//! HBONE: the mTLS tunnel between node proxies, wire-compatible with Istio ztunnel — HTTP/2
//! `CONNECT` over TLS 1.3 (ALPN `h2`, no SNI, AES-GCM) to `<dstPodIP>:15008`, `:authority` =
//! `<dstPodIP>:<targetPort>`, request headers `forwarded`, `baggage`, `traceparent`. The server
//! answers 200 only after its connect to the app succeeded, 401 on an authorization deny, 503 when
//! the app refuses, 400 on a malformed request.
//!
//! - [`tls`]: rustls configs and SPIFFE verification;
//! - [`client`]: per-pod pooled HTTP/2 connections keyed by (source pod and identity, destination
//!   identity, destination address), multiplexed up to a stream limit;
//! - [`server`]: the `:15008` listener inside each meshed pod's netns;
//! - [`copy`]: TCP ↔ HTTP/2 stream copy with half-close and reset propagation.
pub mod client;
pub mod copy;
pub mod io;
pub mod server;
pub mod tls;

use std::{future::Future, pin::Pin, sync::Arc};

use rustls::{RootCertStore, sign::CertifiedKey};

/// HTTP/2 settings (ztunnel's): 4 MiB stream window, 16 MiB connection window, 1 MiB frames,
/// 16 KiB header lists, streams per connection.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
pub const MAX_HEADER_LIST: u32 = 16 << 10;
pub const MAX_STREAMS: usize = 100;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the tunnel gets certificates and the trust bundle from (the agent's certificate
/// manager and config stream).
pub trait CertSource: Send + Sync {
    /// The current certificate of `identity` (fetched on demand when the node has none yet).
    fn cert<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Arc<CertifiedKey>, String>>;
    /// The mesh trust bundle; `None` until the controller sent one (then HBONE fails closed).
    fn roots(&self) -> Option<Arc<RootCertStore>>;
}

/// What the server knows about an inbound tunnelled connection when it decides.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundConn {
    /// The peer's verified SPIFFE ID.
    pub src_identity: String,
    pub src_ip: std::net::IpAddr,
    pub dst: std::net::SocketAddr,
}

/// The server-side decision (PeerAuthentication/AuthorizationPolicy live behind it).
pub trait InboundPolicy: Send + Sync {
    /// `Err(reason)` denies (401).
    fn check(&self, conn: &InboundConn) -> Result<(), String>;
}

/// Allows every verified peer (no AuthorizationPolicy applies).
pub struct AllowAll;

impl InboundPolicy for AllowAll {
    fn check(&self, _conn: &InboundConn) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {0}: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(std::net::SocketAddr, String),
    #[error("HTTP/2 with {0}: {1}")]
    H2(std::net::SocketAddr, h2::Error),
    #[error("CONNECT {authority} via {via}: status {status}")]
    Status {
        via: std::net::SocketAddr,
        authority: std::net::SocketAddr,
        status: u16,
    },
    #[error("certificate for {0}: {1}")]
    Cert(String, String),
    #[error("no trust bundle from the controller yet")]
    NoTrustBundle,
}
