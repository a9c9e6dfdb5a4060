//! DestinationRule `connectionPool` limits as Envoy's circuit breakers, per cluster of one client:
//! `http2MaxRequests` (max requests in flight), `tcp.maxConnections` with
//! `http1MaxPendingRequests` (HTTP/1.1 upstreams: one request per connection at a time, so a
//! request waits for a free connection slot in a bounded queue), `maxRetries` (retries in flight).
//! Overflow: the caller answers 503 `x-envoy-overloaded: true`, flag UO (flag URX for a refused
//! retry).
//!
//! # Semantics
//! - Istio's defaults are "unlimited": every limit `u32::MAX` (pilot
//!   `getDefaultCircuitBreakerThresholds`: Envoy's own defaults of 1024 / 3 retries caused 503s
//!   during pod churn). A `ConnectionPool` field left 0 means unset → that default, except
//!   `max_requests_per_connection`, where 0 is Istio's "unlimited".
//! - [`Breaker::acquire`] checks `max_requests` first (overflow → [`Overflow::Requests`]), then,
//!   for HTTP/1.1, takes one of `max_connections` slots (a `tokio` semaphore, FIFO), queueing at
//!   most `max_pending` requests when none is free (beyond → [`Overflow::Pending`]), like Envoy's
//!   connection pool (`pending_requests` checked when no connection is ready).
//! - The permits are RAII: dropping a [`RequestPermit`] frees its request count and slot;
//!   dropping an `acquire` future while it waits (client gone, route timeout) leaves the queue
//!   and frees its reservation — the future is cancellation safe.
//!
//! # Deviations
//! - A queued HTTP/1.1 request already counts toward `max_requests` (Envoy counts it once it is
//!   attached to a connection, and checks the limit without reserving, so it can overshoot
//!   slightly). Here the check and the increment are one atomic step: the limit is never
//!   exceeded.
//! - `max_connections` only bounds HTTP/1.1 requests in flight (one per connection); the
//!   connection pool itself (`proxy/http/upstream.rs`) owns connections and enforces idle
//!   timeout, `max_requests_per_connection` and `max_connection_duration`, carried here.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use mesh_common::proto::config::ConnectionPool;
use tokio::sync::Semaphore;

/// Istio's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Resolved limits (unset fields: Istio's defaults, u32::MAX limits, 10 s connect timeout,
/// 1 h idle timeout, unlimited requests per connection = 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    pub max_retries: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `tcp.maxConnectionDuration`: older upstream connections are not reused (None = no limit).
    pub max_connection_duration: Option<Duration>,
}

impl Default for PoolLimits {
    /// Istio's defaults (no `connectionPool`).
    fn default() -> Self {
        PoolLimits {
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
        }
    }
}

impl From<Option<&ConnectionPool>> for PoolLimits {
    fn from(p: Option<&ConnectionPool>) -> Self {
        let d = PoolLimits::default();
        let Some(p) = p else {
            return d;
        };
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let or_ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        PoolLimits {
            max_connections: or(p.max_connections, d.max_connections),
            max_pending: or(p.http1_max_pending_requests, d.max_pending),
            max_requests: or(p.http2_max_requests, d.max_requests),
            max_requests_per_connection: p.max_requests_per_connection,
            max_retries: or(p.max_retries, d.max_retries),
            connect_timeout: or_ms(p.connect_timeout_ms, d.connect_timeout),
            idle_timeout: or_ms(p.idle_timeout_ms, d.idle_timeout),
            max_connection_duration: (p.max_connection_duration_ms > 0)
                .then(|| Duration::from_millis(p.max_connection_duration_ms)),
        }
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
    limits: PoolLimits,
    /// HTTP/1.1 connection slots: `max_connections` permits (capped at `Semaphore::MAX_PERMITS`).
    /// Never closed.
    slots: Semaphore,
    /// Requests admitted (in flight or queued for a slot).
    requests: AtomicU32,
    /// HTTP/1.1 requests waiting for a slot.
    pending: AtomicU32,
    /// Retries in flight.
    retries: AtomicU32,
}

/// Held while a request is in flight (and, for HTTP/1.1, while it owns a connection slot).
/// Dropping it releases both.
#[derive(Debug)]
pub struct RequestPermit {
    breaker: Arc<Breaker>,
    /// Owns one (forgotten) semaphore permit, given back on drop.
    slot: bool,
}

/// Held while a retry is in flight. Dropping it releases the retry slot.
#[derive(Debug)]
pub struct RetryPermit {
    breaker: Arc<Breaker>,
}

/// Decrements `pending` when dropped: covers both a granted slot and a cancelled wait.
struct PendingGuard<'a>(&'a AtomicU32);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Atomically increments `counter` if it is below `limit`.
fn try_inc(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Breaker {
    pub fn new(limits: PoolLimits) -> Arc<Breaker> {
        let permits = usize::try_from(limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Breaker {
            slots: Semaphore::new(permits),
            limits,
            requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        })
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// Admits a request: `Requests` overflow at max_requests in flight; for `http1`, waits for one
    /// of max_connections slots, queueing at most max_pending requests (`Pending` beyond).
    /// Waiting has no bound of its own (the route timeout bounds it). Cancellation safe: a
    /// dropped future releases everything it reserved.
    pub async fn acquire(self: &Arc<Self>, http1: bool) -> Result<RequestPermit, Overflow> {
        if !try_inc(&self.requests, self.limits.max_requests) {
            return Err(Overflow::Requests);
        }
        // From here on the permit owns the request count (released on drop, also on an early
        // return or a cancelled wait).
        let mut permit = RequestPermit {
            breaker: Arc::clone(self),
            slot: false,
        };
        if !http1 {
            return Ok(permit);
        }
        match self.slots.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                if !try_inc(&self.pending, self.limits.max_pending) {
                    return Err(Overflow::Pending);
                }
                let _pending = PendingGuard(&self.pending);
                match self.slots.acquire().await {
                    Ok(p) => p.forget(),
                    // The semaphore is never closed; treat it as a full queue if it ever is.
                    Err(_) => return Err(Overflow::Pending),
                }
            }
        }
        permit.slot = true;
        Ok(permit)
    }

    /// A retry slot, `None` when max_retries retries are already in flight (flag URX).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        try_inc(&self.retries, self.limits.max_retries).then(|| RetryPermit {
            breaker: Arc::clone(self),
        })
    }

    /// Requests admitted and not yet finished (including HTTP/1.1 requests queued for a slot).
    pub fn active_requests(&self) -> u32 {
        self.requests.load(Ordering::Acquire)
    }

    /// HTTP/1.1 requests waiting for a connection slot.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Retries in flight.
    pub fn active_retries(&self) -> u32 {
        self.retries.load(Ordering::Acquire)
    }

    /// Free HTTP/1.1 connection slots.
    pub fn available_slots(&self) -> usize {
        self.slots.available_permits()
    }
}

impl RequestPermit {
    /// Whether this request holds an HTTP/1.1 connection slot.
    pub fn has_slot(&self) -> bool {
        self.slot
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        if self.slot {
            self.breaker.slots.add_permits(1);
        }
        self.breaker.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.breaker.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::{Pin, pin},
        task::Poll,
    };

    use super::*;

    /// Polls a future once (no timers: everything here is semaphore-driven).
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    fn limits(conns: u32, pending: u32, requests: u32, retries: u32) -> PoolLimits {
        PoolLimits {
            max_connections: conns,
            max_pending: pending,
            max_requests: requests,
            max_retries: retries,
            ..PoolLimits::default()
        }
    }

    #[test]
    fn from_proto() {
        let ms = Duration::from_millis;
        let cases: Vec<(Option<ConnectionPool>, PoolLimits)> = vec![
            (None, PoolLimits::default()),
            // All fields unset: the defaults (0 per connection = unlimited).
            (Some(ConnectionPool::default()), PoolLimits::default()),
            (
                Some(ConnectionPool {
                    max_connections: 1,
                    connect_timeout_ms: 250,
                    http1_max_pending_requests: 2,
                    http2_max_requests: 3,
                    max_requests_per_connection: 4,
                    max_retries: 5,
                    idle_timeout_ms: 60_000,
                    max_connection_duration_ms: 30_000,
                }),
                PoolLimits {
                    max_connections: 1,
                    max_pending: 2,
                    max_requests: 3,
                    max_requests_per_connection: 4,
                    max_retries: 5,
                    connect_timeout: ms(250),
                    idle_timeout: ms(60_000),
                    max_connection_duration: Some(ms(30_000)),
                },
            ),
            (
                Some(ConnectionPool {
                    max_connections: 100,
                    max_retries: 3,
                    ..Default::default()
                }),
                PoolLimits {
                    max_connections: 100,
                    max_retries: 3,
                    ..PoolLimits::default()
                },
            ),
        ];
        for (proto, want) in cases {
            assert_eq!(PoolLimits::from(proto.as_ref()), want, "{proto:?}");
        }
        let d = PoolLimits::default();
        assert_eq!(d.max_connections, u32::MAX);
        assert_eq!(d.max_pending, u32::MAX);
        assert_eq!(d.max_requests, u32::MAX);
        assert_eq!(d.max_retries, u32::MAX);
        assert_eq!(d.max_requests_per_connection, 0);
        assert_eq!(d.connect_timeout, Duration::from_secs(10));
        assert_eq!(d.idle_timeout, Duration::from_secs(3600));
        assert_eq!(d.max_connection_duration, None);
    }

    #[test]
    fn breaker_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Breaker>();
        check::<Arc<Breaker>>();
        check::<RequestPermit>();
        check::<RetryPermit>();
    }

    #[tokio::test]
    async fn default_limits_are_huge() {
        let b = Breaker::new(PoolLimits::from(None));
        assert_eq!(b.limits(), &PoolLimits::default());
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(b.acquire(true).await.unwrap());
            held.push(b.acquire(false).await.unwrap());
        }
        assert_eq!(b.active_requests(), 200);
        assert_eq!(b.pending(), 0);
        drop(held);
        assert_eq!(b.active_requests(), 0);
    }

    #[tokio::test]
    async fn max_requests() {
        let b = Breaker::new(limits(u32::MAX, u32::MAX, 2, u32::MAX));
        let p1 = b.acquire(false).await.unwrap();
        let p2 = b.acquire(true).await.unwrap();
        assert!(!p1.has_slot());
        assert!(p2.has_slot());
        assert_eq!(b.acquire(false).await.unwrap_err(), Overflow::Requests);
        assert_eq!(b.acquire(true).await.unwrap_err(), Overflow::Requests);
        assert_eq!(b.active_requests(), 2);
        drop(p1);
        assert_eq!(b.active_requests(), 1);
        let _p3 = b.acquire(false).await.unwrap();
        assert_eq!(b.active_requests(), 2);
        drop(p2);
        assert_eq!(b.active_requests(), 1);
    }

    #[tokio::test]
    async fn http2_ignores_connection_slots() {
        let b = Breaker::new(limits(1, 1, u32::MAX, u32::MAX));
        let _h1 = b.acquire(true).await.unwrap();
        // The only slot is taken; HTTP/2 requests only check max_requests.
        let mut h2 = Vec::new();
        for _ in 0..10 {
            h2.push(b.acquire(false).await.unwrap());
        }
        assert_eq!(b.pending(), 0);
        assert_eq!(b.active_requests(), 11);
        assert_eq!(b.available_slots(), 0);
    }

    #[tokio::test]
    async fn one_connection_one_pending() {
        let b = Breaker::new(limits(1, 1, u32::MAX, u32::MAX));
        let first = b.acquire(true).await.unwrap();
        assert_eq!(b.available_slots(), 0);

        // The second waits in the queue.
        let mut second = pin!(b.acquire(true));
        assert!(poll_once(&mut second).await.is_pending());
        assert_eq!(b.pending(), 1);

        // The third overflows the queue.
        assert_eq!(b.acquire(true).await.unwrap_err(), Overflow::Pending);
        assert_eq!(b.pending(), 1);
        // The overflowed request released its request count.
        assert_eq!(b.active_requests(), 2);

        // Releasing the first lets the second proceed.
        drop(first);
        let second = second.await.unwrap();
        assert!(second.has_slot());
        assert_eq!(b.pending(), 0);
        assert_eq!(b.active_requests(), 1);
        assert_eq!(b.available_slots(), 0);

        drop(second);
        assert_eq!(b.available_slots(), 1);
        assert_eq!(b.active_requests(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_the_queue() {
        let b = Breaker::new(limits(1, 1, u32::MAX, u32::MAX));
        let first = b.acquire(true).await.unwrap();
        {
            let mut waiter = Box::pin(b.acquire(true));
            assert!(poll_once(&mut waiter).await.is_pending());
            assert_eq!(b.pending(), 1);
            assert_eq!(b.active_requests(), 2);
            // Dropped while waiting (client gone, route timeout).
        }
        assert_eq!(b.pending(), 0);
        assert_eq!(b.active_requests(), 1);
        // The queue has room again.
        let mut again = pin!(b.acquire(true));
        assert!(poll_once(&mut again).await.is_pending());
        assert_eq!(b.pending(), 1);
        drop(first);
        let again = again.await.unwrap();
        assert_eq!(b.pending(), 0);
        drop(again);
        assert_eq!(b.available_slots(), 1);
        assert_eq!(b.active_requests(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_with_timeout() {
        let b = Breaker::new(limits(1, 4, u32::MAX, u32::MAX));
        let _first = b.acquire(true).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(5), b.acquire(true)).await;
        assert!(r.is_err(), "timed out waiting");
        assert_eq!(b.pending(), 0);
        assert_eq!(b.active_requests(), 1);
    }

    #[tokio::test]
    async fn zero_pending_queue() {
        // max_pending 0 set directly (the proto's 0 means "unset" and resolves to u32::MAX).
        let b0 = Breaker::new(limits(1, 0, u32::MAX, u32::MAX));
        let _c = b0.acquire(true).await.unwrap();
        // No queue at all: the next HTTP/1.1 request overflows at once.
        assert_eq!(b0.acquire(true).await.unwrap_err(), Overflow::Pending);
        assert_eq!(b0.pending(), 0);
    }

    #[tokio::test]
    async fn fifo_slot_handoff() {
        let b = Breaker::new(limits(1, 10, u32::MAX, u32::MAX));
        let first = b.acquire(true).await.unwrap();
        let mut w1 = Box::pin(b.acquire(true));
        let mut w2 = Box::pin(b.acquire(true));
        assert!(poll_once(&mut w1).await.is_pending());
        assert!(poll_once(&mut w2).await.is_pending());
        assert_eq!(b.pending(), 2);
        drop(first);
        // The earlier waiter gets the slot.
        assert!(poll_once(&mut w2).await.is_pending());
        let p1 = match poll_once(&mut w1).await {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("first waiter should have the slot"),
        };
        assert_eq!(b.pending(), 1);
        drop(p1);
        let _p2 = w2.await.unwrap();
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn retries() {
        let b = Breaker::new(limits(u32::MAX, u32::MAX, u32::MAX, 2));
        let r1 = b.try_retry().unwrap();
        let r2 = b.try_retry().unwrap();
        assert!(b.try_retry().is_none());
        assert_eq!(b.active_retries(), 2);
        drop(r1);
        assert_eq!(b.active_retries(), 1);
        let _r3 = b.try_retry().unwrap();
        assert!(b.try_retry().is_none());
        drop(r2);
        assert_eq!(b.active_retries(), 1);
        // Istio's default: unlimited.
        let d = Breaker::new(PoolLimits::default());
        let held: Vec<_> = (0..1000).map(|_| d.try_retry().unwrap()).collect();
        assert_eq!(d.active_retries(), 1000);
        drop(held);
        assert_eq!(d.active_retries(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_slots_never_exceed_limit() {
        let b = Breaker::new(limits(3, u32::MAX, u32::MAX, u32::MAX));
        let in_slot = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let b = Arc::clone(&b);
            let in_slot = Arc::clone(&in_slot);
            let max_seen = Arc::clone(&max_seen);
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let _p = b.acquire(true).await.unwrap();
                    let n = in_slot.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_slot.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(max_seen.load(Ordering::SeqCst) <= 3);
        assert_eq!(b.active_requests(), 0);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.available_slots(), 3);
    }
}
