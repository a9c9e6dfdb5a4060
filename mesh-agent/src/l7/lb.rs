//! Load balancing over a cluster's endpoints (DestinationRule `loadBalancer`): ROUND_ROBIN,
//! LEAST_REQUEST (power of two choices, Istio's default), RANDOM, PASSTHROUGH and consistent
//! hashing (ring hash or maglev) by header, cookie, source IP or query parameter. Health comes
//! from the caller (outlier detection). Pure apart from atomics and cached hash tables.
use std::{net::SocketAddr, time::Duration};

use mesh_common::proto::config::LoadBalancer;

use super::request::RequestInfo;

/// The algorithm a `LoadBalancer` resolves to (no policy = LEAST_REQUEST, Istio's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    Random,
    /// Send to the original destination address (no balancing).
    Passthrough,
    RingHash {
        min_ring_size: u64,
    },
    Maglev {
        table_size: u64,
    },
}

impl Algorithm {
    pub fn from_policy(lb: Option<&LoadBalancer>) -> Algorithm {
        let _ = lb;
        todo!()
    }
}

/// What a consistent-hash policy hashes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    /// `ttl: None` = never generate the cookie; `Some(ZERO)` = a session cookie.
    Cookie {
        name: String,
        path: String,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParam(String),
}

impl HashKey {
    /// The key of a consistent-hash `LoadBalancer`, `None` for the simple algorithms.
    pub fn from_policy(lb: Option<&LoadBalancer>) -> Option<HashKey> {
        let _ = lb;
        todo!()
    }

    /// The request's hash, `None` when the attribute is absent (header, cookie, query
    /// parameter): Envoy then picks a random endpoint — except for a cookie with a TTL, which the
    /// caller generates (see [`new_cookie_value`]) and hashes with [`hash_str`].
    pub fn hash(&self, req: &RequestInfo, src_ip: std::net::IpAddr) -> Option<u64> {
        let _ = (req, src_ip);
        todo!()
    }
}

/// A stable 64-bit hash of a string (the same value on every node and run).
pub fn hash_str(s: &str) -> u64 {
    let _ = s;
    todo!()
}

/// A fresh random cookie value for a generated hash cookie.
pub fn new_cookie_value() -> String {
    todo!()
}

/// One endpoint as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// Requests in flight to it from this client (LEAST_REQUEST).
    pub active_requests: u32,
    /// False when ejected by outlier detection (the caller already applied minHealthPercent).
    pub healthy: bool,
}

/// One cluster's balancer (round-robin position, cached hash ring/maglev table for the current
/// endpoint set). `Send + Sync`.
#[derive(Debug)]
pub struct Balancer {
    _todo: (),
}

impl Balancer {
    pub fn new(algorithm: Algorithm) -> Balancer {
        let _ = algorithm;
        todo!()
    }

    pub fn algorithm(&self) -> &Algorithm {
        todo!()
    }

    /// Picks the index of one of `candidates`: only healthy ones, and — for retries — not one in
    /// `avoid` unless nothing else is healthy (Envoy's previous_hosts predicate). `hash`: the
    /// request's hash for consistent-hash algorithms (`None` → random). `None` = no healthy
    /// candidate (the caller answers 503 UH). Candidates are in a stable order (the caller sorts).
    pub fn pick(
        &self,
        candidates: &[Candidate],
        hash: Option<u64>,
        avoid: &[SocketAddr],
    ) -> Option<usize> {
        let _ = (candidates, hash, avoid);
        todo!()
    }
}
