//! Retry decisions (Envoy's router retry state, as Istio configures it): which attempt outcomes
//! are retriable under a route's `retry_on`, and the jittered back-off between attempts.
//! Pure: the proxy (`proxy/http.rs`) performs the attempts, counts them against
//! `RetryPolicy.attempts` and takes a retry slot from the cluster's breaker
//! ([`super::limits::Breaker::try_retry`]) before each retry.
//!
//! # Conditions (Envoy `retry_state_impl.cc`, checked against its source)
//! A **response** is retried when any enabled condition matches it:
//! - `5xx`: any status 500–599; `gateway-error`: 502, 503, 504; `retriable-4xx`: 409;
//! - `retriable-status-codes`: one of the policy's `retriable_status_codes` or of the bare numeric
//!   tokens (Istio moves `retryOn: "503,reset"`'s `503` into `retriable_status_codes` and adds
//!   the `retriable-status-codes` condition, so numeric tokens enable it by themselves);
//! - gRPC `cancelled` (1), `deadline-exceeded` (4), `resource-exhausted` (8), `internal` (13),
//!   `unavailable` (14): matched on the response's `grpc-status` (trailers-only responses).
//!
//! An attempt that got **no response** is a stream reset in Envoy. `5xx`, `gateway-error` and
//! `reset` retry every reset ("we count an upstream reset as a 5xx, since it will result in
//! one"), which includes connect failures, `REFUSED_STREAM` and the per-try timeout (Envoy
//! resets the upstream stream when the per-try timer fires and asks the same question — its own
//! comment: per-try timeouts "are only retried if the applicable retry policy specifies either
//! RETRY_ON_5XX or RETRY_ON_GATEWAY_ERROR", plus `reset` since it exists). `connect-failure`
//! retries only connect failures, `refused-stream` only `REFUSED_STREAM`.
//!
//! # Deviations
//! - `reset-before-request`: Envoy retries a reset only if no request byte was sent upstream.
//!   [`AttemptOutcome`] does not say whether the request was written, so every reset **without a
//!   response** is retried under it — connect failure, reset, `REFUSED_STREAM` — but not the
//!   per-try timeout (the request was certainly sent and may be executing).
//! - `envoy-ratelimited`: Envoy retries a response carrying `x-envoy-ratelimited` **only** under
//!   this condition (and never under the others). The outcome does not carry headers: a caller
//!   that sees `x-envoy-ratelimited` uses [`RetryOn::on_envoy_ratelimited`] instead of
//!   [`RetryOn::retriable`].
//! - Numeric tokens are accepted for 100–599 (Istio accepts the codes Go's `http.StatusText`
//!   knows); anything else is returned as unknown.
//! - [`backoff`] draws uniformly below the cap; Envoy draws below `(2^n − 1) · base` and then
//!   clamps to the cap, so once the exponential exceeds the cap it waits exactly the cap more
//!   often. The mean is lower here; the bounds are the same.
use std::time::Duration;

use mesh_common::proto::config::RetryPolicy;

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

// Condition bits (private: the set is an implementation detail of `RetryOn`).
const ON_5XX: u32 = 1 << 0;
const ON_GATEWAY_ERROR: u32 = 1 << 1;
const ON_RESET: u32 = 1 << 2;
const ON_CONNECT_FAILURE: u32 = 1 << 3;
const ON_REFUSED_STREAM: u32 = 1 << 4;
const ON_RETRIABLE_4XX: u32 = 1 << 5;
const ON_STATUS_CODES: u32 = 1 << 6;
const ON_RESET_BEFORE_REQUEST: u32 = 1 << 7;
const ON_ENVOY_RATELIMITED: u32 = 1 << 8;
const ON_GRPC_CANCELLED: u32 = 1 << 9;
const ON_GRPC_DEADLINE_EXCEEDED: u32 = 1 << 10;
const ON_GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 11;
const ON_GRPC_INTERNAL: u32 = 1 << 12;
const ON_GRPC_UNAVAILABLE: u32 = 1 << 13;

/// Conditions under which any reset (no response) is retried.
const ANY_RESET: u32 = ON_5XX | ON_GATEWAY_ERROR | ON_RESET;

const TOKENS: &[(&str, u32)] = &[
    ("5xx", ON_5XX),
    ("gateway-error", ON_GATEWAY_ERROR),
    ("reset", ON_RESET),
    ("connect-failure", ON_CONNECT_FAILURE),
    ("refused-stream", ON_REFUSED_STREAM),
    ("retriable-4xx", ON_RETRIABLE_4XX),
    ("retriable-status-codes", ON_STATUS_CODES),
    ("reset-before-request", ON_RESET_BEFORE_REQUEST),
    ("envoy-ratelimited", ON_ENVOY_RATELIMITED),
    ("cancelled", ON_GRPC_CANCELLED),
    ("deadline-exceeded", ON_GRPC_DEADLINE_EXCEEDED),
    ("resource-exhausted", ON_GRPC_RESOURCE_EXHAUSTED),
    ("internal", ON_GRPC_INTERNAL),
    ("unavailable", ON_GRPC_UNAVAILABLE),
];

/// A route's parsed retry conditions (`RetryPolicy.retry_on` + `retriable_status_codes`).
///
/// `Default` retries nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `ON_*` bits.
    flags: u32,
    /// Explicit codes and numeric tokens, sorted, deduplicated; used only with `ON_STATUS_CODES`.
    codes: Vec<u32>,
}

impl RetryOn {
    /// Parses Istio/Envoy `retryOn` tokens (`5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `refused-stream`, `retriable-4xx`, `retriable-status-codes`, `reset-before-request`,
    /// `envoy-ratelimited`, gRPC `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`, and bare numeric status codes, which Istio moves into
    /// `retriable_status_codes`) plus the explicit codes. Unknown tokens are returned in the
    /// second element (the caller logs them) and otherwise ignored.
    ///
    /// Tokens are case-sensitive (as in Envoy) and trimmed; an element holding a comma-separated
    /// list (`"5xx,reset"`) is split. The explicit `codes` only apply when
    /// `retriable-status-codes` is enabled, by its token or by a numeric token.
    pub fn parse(tokens: &[String], codes: &[u32]) -> (RetryOn, Vec<String>) {
        let mut out = RetryOn::default();
        let mut unknown = Vec::new();
        for token in tokens.iter().flat_map(|t| t.split(',')).map(str::trim) {
            if token.is_empty() {
                continue;
            }
            if let Some((_, bit)) = TOKENS.iter().find(|(name, _)| *name == token) {
                out.flags |= bit;
                continue;
            }
            match token.parse::<u32>() {
                Ok(code) if (100..=599).contains(&code) => {
                    out.flags |= ON_STATUS_CODES;
                    out.codes.push(code);
                }
                _ => unknown.push(token.to_string()),
            }
        }
        out.codes.extend_from_slice(codes);
        out.codes.sort_unstable();
        out.codes.dedup();
        (out, unknown)
    }

    /// [`RetryOn::parse`] of a route's resolved `RetryPolicy`.
    pub fn from_policy(p: &RetryPolicy) -> (RetryOn, Vec<String>) {
        RetryOn::parse(&p.retry_on, &p.retriable_status_codes)
    }

    /// No condition enabled: nothing is ever retried.
    pub fn is_empty(&self) -> bool {
        self.flags == 0
    }

    /// Is an attempt that ended with `o` retried under these conditions?
    pub fn retriable(&self, o: &AttemptOutcome) -> bool {
        let has = |bits: u32| self.flags & bits != 0;
        match *o {
            AttemptOutcome::Response {
                status,
                grpc_status,
            } => {
                (has(ON_5XX) && (500..=599).contains(&status))
                    || (has(ON_GATEWAY_ERROR) && matches!(status, 502..=504))
                    || (has(ON_RETRIABLE_4XX) && status == 409)
                    || (has(ON_STATUS_CODES)
                        && self.codes.binary_search(&u32::from(status)).is_ok())
                    || grpc_status.is_some_and(|g| has(grpc_bit(g)))
            }
            AttemptOutcome::ConnectFailure => {
                has(ANY_RESET | ON_CONNECT_FAILURE | ON_RESET_BEFORE_REQUEST)
            }
            AttemptOutcome::Reset => has(ANY_RESET | ON_RESET_BEFORE_REQUEST),
            AttemptOutcome::RefusedStream => {
                has(ANY_RESET | ON_REFUSED_STREAM | ON_RESET_BEFORE_REQUEST)
            }
            AttemptOutcome::PerTryTimeout => has(ANY_RESET),
        }
    }

    /// Whether a response carrying `x-envoy-ratelimited` (from an upstream Envoy) is retried:
    /// only under `envoy-ratelimited`, whatever else is enabled (Envoy checks this header first
    /// and answers from it alone).
    pub fn on_envoy_ratelimited(&self) -> bool {
        self.flags & ON_ENVOY_RATELIMITED != 0
    }
}

/// The condition bit of a gRPC status code (0 = none).
fn grpc_bit(status: u32) -> u32 {
    match status {
        1 => ON_GRPC_CANCELLED,
        4 => ON_GRPC_DEADLINE_EXCEEDED,
        8 => ON_GRPC_RESOURCE_EXHAUSTED,
        13 => ON_GRPC_INTERNAL,
        14 => ON_GRPC_UNAVAILABLE,
        _ => 0,
    }
}

/// Envoy's fully jittered exponential back-off before retry number `retry` (1 = the first retry):
/// a uniform random time in `[0, min((2^retry − 1) · base, max))`, `roll` being a uniform random
/// u64 (tests pass fixed rolls; it is reduced modulo the range). `max` is 10 × base in Envoy
/// (250 ms for the 25 ms default). Retry 0, a zero base or a zero max → no wait.
pub fn backoff(base: Duration, max: Duration, retry: u32, roll: u64) -> Duration {
    if retry == 0 {
        return Duration::ZERO;
    }
    // 2^retry − 1, saturating (u128 nanoseconds cannot overflow for any realistic retry count,
    // and saturation keeps absurd ones at the cap).
    let multiplier = 1u128.checked_shl(retry).map_or(u128::MAX, |p| p - 1);
    let cap = base
        .as_nanos()
        .saturating_mul(multiplier)
        .min(max.as_nanos());
    if cap == 0 {
        return Duration::ZERO;
    }
    nanos(u128::from(roll) % cap)
}

/// [`backoff`] with a random roll (`fastrand`).
pub fn backoff_random(base: Duration, max: Duration, retry: u32) -> Duration {
    backoff(base, max, retry, fastrand::u64(..))
}

/// A `Duration` of `n` nanoseconds (`n` below some `Duration::as_nanos`, so it fits).
fn nanos(n: u128) -> Duration {
    const NS: u128 = 1_000_000_000;
    let secs = u64::try_from(n / NS).unwrap_or(u64::MAX);
    // n % NS < 10^9 fits u32.
    let sub = u32::try_from(n % NS).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(tokens: &str, codes: &[u32]) -> RetryOn {
        let tokens: Vec<String> = tokens.split(',').map(str::to_string).collect();
        let (r, unknown) = RetryOn::parse(&tokens, codes);
        assert!(unknown.is_empty(), "unknown tokens {unknown:?}");
        r
    }

    fn resp(status: u16) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            grpc_status: None,
        }
    }

    fn grpc(code: u32) -> AttemptOutcome {
        AttemptOutcome::Response {
            status: 200,
            grpc_status: Some(code),
        }
    }

    use AttemptOutcome::{ConnectFailure, PerTryTimeout, RefusedStream, Reset};

    #[test]
    fn conditions_table() {
        // (retry_on, codes, outcome, retried)
        let cases: &[(&str, &[u32], AttemptOutcome, bool)] = &[
            // 5xx: any 5xx and every no-response outcome.
            ("5xx", &[], resp(500), true),
            ("5xx", &[], resp(501), true),
            ("5xx", &[], resp(503), true),
            ("5xx", &[], resp(599), true),
            ("5xx", &[], resp(499), false),
            ("5xx", &[], resp(409), false),
            ("5xx", &[], resp(200), false),
            ("5xx", &[], ConnectFailure, true),
            ("5xx", &[], Reset, true),
            ("5xx", &[], RefusedStream, true),
            ("5xx", &[], PerTryTimeout, true),
            // gateway-error: 502/503/504 and every no-response outcome.
            ("gateway-error", &[], resp(502), true),
            ("gateway-error", &[], resp(503), true),
            ("gateway-error", &[], resp(504), true),
            ("gateway-error", &[], resp(500), false),
            ("gateway-error", &[], resp(501), false),
            ("gateway-error", &[], resp(505), false),
            ("gateway-error", &[], ConnectFailure, true),
            ("gateway-error", &[], Reset, true),
            ("gateway-error", &[], RefusedStream, true),
            ("gateway-error", &[], PerTryTimeout, true),
            // reset: every no-response outcome, no response status.
            ("reset", &[], Reset, true),
            ("reset", &[], ConnectFailure, true),
            ("reset", &[], RefusedStream, true),
            ("reset", &[], PerTryTimeout, true),
            ("reset", &[], resp(503), false),
            // connect-failure: only connect failures.
            ("connect-failure", &[], ConnectFailure, true),
            ("connect-failure", &[], Reset, false),
            ("connect-failure", &[], RefusedStream, false),
            ("connect-failure", &[], PerTryTimeout, false),
            ("connect-failure", &[], resp(503), false),
            // refused-stream: only REFUSED_STREAM.
            ("refused-stream", &[], RefusedStream, true),
            ("refused-stream", &[], Reset, false),
            ("refused-stream", &[], ConnectFailure, false),
            ("refused-stream", &[], resp(503), false),
            // reset-before-request: resets without a response, not the per-try timeout.
            ("reset-before-request", &[], ConnectFailure, true),
            ("reset-before-request", &[], Reset, true),
            ("reset-before-request", &[], RefusedStream, true),
            ("reset-before-request", &[], PerTryTimeout, false),
            ("reset-before-request", &[], resp(503), false),
            // retriable-4xx: 409 only.
            ("retriable-4xx", &[], resp(409), true),
            ("retriable-4xx", &[], resp(400), false),
            ("retriable-4xx", &[], resp(429), false),
            ("retriable-4xx", &[], resp(500), false),
            // retriable-status-codes: the explicit list.
            ("retriable-status-codes", &[503, 429], resp(503), true),
            ("retriable-status-codes", &[503, 429], resp(429), true),
            ("retriable-status-codes", &[503, 429], resp(500), false),
            ("retriable-status-codes", &[503], Reset, false),
            ("retriable-status-codes", &[], resp(503), false),
            // Explicit codes without the condition do nothing (Envoy).
            ("connect-failure", &[503], resp(503), false),
            // Numeric tokens enable the condition, and with it the explicit codes.
            ("503", &[], resp(503), true),
            ("503", &[], resp(502), false),
            ("503", &[429], resp(429), true),
            ("reset,503", &[], resp(503), true),
            // gRPC conditions on grpc-status.
            ("cancelled", &[], grpc(1), true),
            ("deadline-exceeded", &[], grpc(4), true),
            ("resource-exhausted", &[], grpc(8), true),
            ("internal", &[], grpc(13), true),
            ("unavailable", &[], grpc(14), true),
            ("unavailable", &[], grpc(13), false),
            ("unavailable", &[], grpc(0), false),
            ("unavailable", &[], resp(503), false),
            ("cancelled", &[], grpc(14), false),
            (
                "unavailable",
                &[],
                AttemptOutcome::Response {
                    status: 503,
                    grpc_status: Some(14),
                },
                true,
            ),
            ("unavailable", &[], Reset, false),
            // envoy-ratelimited alone retries nothing through `retriable`.
            ("envoy-ratelimited", &[], resp(429), false),
            ("envoy-ratelimited", &[], Reset, false),
        ];
        for (tokens, codes, outcome, want) in cases {
            assert_eq!(
                on(tokens, codes).retriable(outcome),
                *want,
                "retry_on {tokens:?} codes {codes:?} outcome {outcome:?}"
            );
        }
    }

    #[test]
    fn istio_default_policy() {
        // What the controller resolves a route without `retries` to.
        let r = on(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            &[],
        );
        assert!(r.retriable(&ConnectFailure));
        assert!(r.retriable(&RefusedStream));
        assert!(r.retriable(&grpc(14)));
        assert!(r.retriable(&grpc(1)));
        // 503 dropped from Istio's default in 1.24.
        assert!(!r.retriable(&resp(503)));
        assert!(!r.retriable(&Reset));
        assert!(!r.retriable(&PerTryTimeout));
        assert!(!r.retriable(&grpc(4)));
        assert!(!r.is_empty());
    }

    #[test]
    fn empty_retries_nothing() {
        let (r, unknown) = RetryOn::parse(&[], &[503]);
        assert!(unknown.is_empty());
        // The codes are kept but inert without the condition.
        assert!(r.is_empty());
        for o in [
            resp(500),
            resp(503),
            grpc(14),
            ConnectFailure,
            Reset,
            RefusedStream,
            PerTryTimeout,
        ] {
            assert!(!r.retriable(&o), "{o:?}");
        }
        assert!(!r.on_envoy_ratelimited());
    }

    #[test]
    fn parse_tokens() {
        let tokens: Vec<String> = [
            " 5xx ",
            "",
            "gateway-error,reset",
            "bogus",
            "5XX",
            "503",
            "42",
            "700",
            "-1",
            "envoy-ratelimited",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (r, unknown) = RetryOn::parse(&tokens, &[429, 503]);
        // Case-sensitive like Envoy; out-of-range numbers are not status codes.
        assert_eq!(unknown, vec!["bogus", "5XX", "42", "700", "-1"]);
        assert_eq!(
            r.flags,
            ON_5XX | ON_GATEWAY_ERROR | ON_RESET | ON_STATUS_CODES | ON_ENVOY_RATELIMITED
        );
        assert_eq!(r.codes, vec![429, 503]);
        assert!(r.on_envoy_ratelimited());
        assert!(r.retriable(&resp(429)));
    }

    #[test]
    fn from_policy() {
        let p = RetryPolicy {
            attempts: 3,
            retry_on: vec!["gateway-error".into(), "409".into()],
            retriable_status_codes: vec![418],
            ..Default::default()
        };
        let (r, unknown) = RetryOn::from_policy(&p);
        assert!(unknown.is_empty());
        assert!(r.retriable(&resp(502)));
        assert!(r.retriable(&resp(409)));
        assert!(r.retriable(&resp(418)));
        assert!(!r.retriable(&resp(500)));
    }

    #[test]
    fn backoff_table() {
        let ms = Duration::from_millis;
        let base = ms(25);
        let max = ms(250);
        // (retry, roll, expected)
        let cases: &[(u32, u64, Duration)] = &[
            // Retry 0: no wait, whatever the roll.
            (0, 0, Duration::ZERO),
            (0, u64::MAX, Duration::ZERO),
            // Retry 1: [0, 25 ms).
            (1, 0, Duration::ZERO),
            (1, 1_000_000, ms(1)),
            (1, 24_999_999, Duration::from_nanos(24_999_999)),
            (1, 25_000_000, Duration::ZERO),
            (1, 25_000_001, Duration::from_nanos(1)),
            // Retry 2: [0, 75 ms).
            (2, 74_999_999, Duration::from_nanos(74_999_999)),
            (2, 75_000_000, Duration::ZERO),
            // Retry 3: [0, 175 ms).
            (3, 174_000_000, ms(174)),
            (3, 175_000_000, Duration::ZERO),
            // Retry 4: (2^4 − 1)·25 = 375 ms, capped at 250 ms.
            (4, 249_000_000, ms(249)),
            (4, 250_000_000, Duration::ZERO),
            (4, 260_000_000, ms(10)),
            // Huge retry counts saturate at the cap.
            (63, 249_000_000, ms(249)),
            (64, 249_000_000, ms(249)),
            (200, 250_000_001, Duration::from_nanos(1)),
        ];
        for (retry, roll, want) in cases {
            assert_eq!(
                backoff(base, max, *retry, *roll),
                *want,
                "retry {retry} roll {roll}"
            );
        }
        // Zero base or zero max: no wait.
        assert_eq!(backoff(Duration::ZERO, max, 3, 12345), Duration::ZERO);
        assert_eq!(backoff(base, Duration::ZERO, 3, 12345), Duration::ZERO);
        // Seconds-scale values keep their sub-second part.
        assert_eq!(
            backoff(
                Duration::from_secs(10),
                Duration::from_secs(100),
                1,
                1_500_000_001
            ),
            Duration::new(1, 500_000_001)
        );
    }

    #[test]
    fn backoff_random_within_bounds() {
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        for retry in 1..8u32 {
            let cap = (base * ((1u32 << retry) - 1)).min(max);
            for _ in 0..200 {
                assert!(backoff_random(base, max, retry) < cap);
            }
        }
        assert_eq!(backoff_random(base, max, 0), Duration::ZERO);
    }
}
