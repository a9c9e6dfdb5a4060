//! Retry decisions (Envoy's router retry state, as Istio configures it): which attempt outcomes
//! are retriable under a route's `retry_on`, and the jittered back-off between attempts.
//! Pure: the proxy (`proxy/http.rs`) performs the attempts.
use std::time::Duration;

/// What one upstream attempt ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response head arrived. `grpc_status`: the `grpc-status` response header (trailers-only
    /// responses) when present.
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// The upstream connection could not be made (refused, unreachable, connect timeout, tunnel
    /// refused).
    ConnectFailure,
    /// The connection was reset / closed before a response head (after connecting).
    Reset,
    /// HTTP/2 REFUSED_STREAM from the upstream.
    RefusedStream,
    /// The per-try timeout fired before a response head.
    PerTryTimeout,
}

/// A route's parsed retry conditions (`RetryPolicy.retry_on` + `retriable_status_codes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    // private fields: the helper decides.
    _todo: (),
}

impl RetryOn {
    /// Parses Istio/Envoy `retryOn` tokens (`5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `refused-stream`, `retriable-4xx`, `retriable-status-codes`, `reset-before-request`,
    /// `envoy-ratelimited`, gRPC `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`, and bare numeric status codes, which Istio moves into
    /// `retriable_status_codes`) plus the explicit codes. Unknown tokens are returned in the
    /// second element (the caller logs them) and otherwise ignored.
    pub fn parse(tokens: &[String], codes: &[u32]) -> (RetryOn, Vec<String>) {
        let _ = (tokens, codes);
        todo!()
    }

    /// Is an attempt that ended with `o` retried under these conditions?
    pub fn retriable(&self, o: &AttemptOutcome) -> bool {
        let _ = o;
        todo!()
    }
}

/// Envoy's fully jittered exponential back-off before retry number `retry` (1 = the first retry):
/// a uniform random time in `[0, min((2^retry − 1) · base, max))`, `roll` being a uniform random
/// u64 (tests pass fixed rolls). `max` is 10 × base in Envoy (250 ms for the 25 ms default).
pub fn backoff(base: Duration, max: Duration, retry: u32, roll: u64) -> Duration {
    let _ = (base, max, retry, roll);
    todo!()
}
