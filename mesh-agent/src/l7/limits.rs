//! DestinationRule `connectionPool` limits as Envoy's circuit breakers, per cluster of one client:
//! `http2MaxRequests` (max requests in flight), `tcp.maxConnections` with
//! `http1MaxPendingRequests` (HTTP/1.1 upstreams: one request per connection at a time, so a
//! request waits for a free connection slot in a bounded queue), `maxRetries` (retries in flight).
//! Overflow: the caller answers 503 `x-envoy-overloaded: true`, flag UO.
use std::{sync::Arc, time::Duration};

use mesh_common::proto::config::ConnectionPool;

/// Resolved limits (unset fields: Istio's defaults, u32::MAX limits, 10 s connect timeout,
/// 1 h idle timeout, unlimited requests per connection = 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_requests_per_connection: u32,
    pub max_retries: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl From<Option<&ConnectionPool>> for PoolLimits {
    fn from(p: Option<&ConnectionPool>) -> Self {
        let _ = p;
        todo!()
    }
}

/// Which limit overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("max requests in flight reached")]
    Requests,
    #[error("pending request queue full")]
    Pending,
}

/// One cluster's counters. `Send + Sync`; cheap to share as `Arc<Breaker>`.
#[derive(Debug)]
pub struct Breaker {
    _todo: (),
}

/// Held while a request is in flight (and, for HTTP/1.1, while it owns a connection slot).
#[derive(Debug)]
pub struct RequestPermit {
    _todo: (),
}

/// Held while a retry is in flight.
#[derive(Debug)]
pub struct RetryPermit {
    _todo: (),
}

impl Breaker {
    pub fn new(limits: PoolLimits) -> Arc<Breaker> {
        let _ = limits;
        todo!()
    }

    pub fn limits(&self) -> &PoolLimits {
        todo!()
    }

    /// Admits a request: `Requests` overflow at max_requests in flight; for `http1`, waits for one
    /// of max_connections slots, queueing at most max_pending requests (`Pending` beyond).
    /// Waiting has no bound of its own (the route timeout bounds it).
    pub async fn acquire(self: &Arc<Self>, http1: bool) -> Result<RequestPermit, Overflow> {
        let _ = http1;
        todo!()
    }

    /// A retry slot, `None` when max_retries retries are already in flight (flag URX).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        todo!()
    }

    pub fn active_requests(&self) -> u32 {
        todo!()
    }

    pub fn pending(&self) -> u32 {
        todo!()
    }
}
