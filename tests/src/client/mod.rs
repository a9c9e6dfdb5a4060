//! `mesh-client`: a small load generator for mesh-echo (HTTP/1.1, h2c, gRPC, raw TCP).

pub(crate) mod classify;
pub mod stats;
mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

pub use stats::{ErrorKind, Outcome, Stats, Summary};
pub use target::Target;

/// Load generator for Weft tests, talking to mesh-echo.
///
/// Modes: HTTP/1.1 with keep-alive (default; URL http://host:port/path?query), --http2 (h2c
/// prior knowledge), --grpc (calls weft.echo.v1.Echo/Echo at http://host:port; --data is the
/// message, -H headers become metadata), --tcp (URL tcp://host:port: one connection per
/// request: connect, write a small message or --data, half-close, read the echo, close; status
/// "ok" when the echo matches).
///
/// Summary (human table, or with --json exactly one JSON object): total (requests attempted),
/// status (HTTP code as string, gRPC code name like "OK"/"UNAVAILABLE", or "ok" for tcp ->
/// count), versions and pods (the echo reply's "version"/"pod" -> count), upstream_versions and
/// upstream_pods (the reply's "upstream.body.version"/"upstream.body.pod" -> count, from a
/// mesh-echo running with --upstream; empty objects otherwise), headers (for each
/// --count-header NAME, lower-cased: the response header's value -> number of responses carrying
/// it, several values of one header joined with ", "; responses without it are not counted; gRPC:
/// the response metadata or the error status' metadata), latency_ms {min, p50, p90, p99, max}
/// over completed requests, errors (kind -> count; kinds: connect, timeout, reset, protocol,
/// other), duration_ms, rps.
///
/// Exits non-zero only on usage errors; network errors are reported in "errors" (exit 0).
/// Names resolve through the system resolver (getaddrinfo, so /etc/hosts applies).
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-client", version, verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("mode").args(["http2", "grpc", "tcp"])))]
pub struct Args {
    /// Use HTTP/2 cleartext with prior knowledge (h2c).
    #[arg(long)]
    pub http2: bool,
    /// Call the gRPC weft.echo.v1.Echo/Echo method.
    #[arg(long)]
    pub grpc: bool,
    /// Raw TCP echo round trips (URL tcp://host:port).
    #[arg(long)]
    pub tcp: bool,
    /// Total number of requests (default 1 when neither -n nor -d is given).
    #[arg(short = 'n', long = "requests", value_name = "N")]
    pub requests: Option<u64>,
    /// Run for this long (e.g. 500ms, 5s, 1m); with -n too, stop at whichever comes first.
    #[arg(short = 'd', long = "duration", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Number of concurrent workers.
    #[arg(short = 'c', long = "concurrency", value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// Fixed total request rate across all workers (requests per second).
    #[arg(long, value_name = "R")]
    pub qps: Option<f64>,
    /// Extra request header "name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "'name: value'")]
    pub headers: Vec<String>,
    /// HTTP method.
    #[arg(
        short = 'X',
        long = "method",
        value_name = "METHOD",
        default_value = "GET"
    )]
    pub method: String,
    /// Request body (HTTP), message (gRPC) or payload (TCP).
    #[arg(long, value_name = "BODY")]
    pub data: Option<String>,
    /// Per-request timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Count the values of this response header (repeatable): the summary's "headers".
    #[arg(long = "count-header", value_name = "NAME")]
    pub count_headers: Vec<String>,
    /// Print exactly one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Target URL: http://host:port/path (HTTP, h2c, gRPC) or tcp://host:port.
    pub url: String,
}

/// A usage error (bad flags or URL): the binary exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("invalid URL {0:?}: {1}")]
    Url(String, String),
    #[error("invalid header {0:?}: expected 'name: value'")]
    Header(String),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("--qps must be a positive number, got {0}")]
    Qps(f64),
}

/// Run the load described by `args` and return the summary.
pub async fn run(args: &Args) -> Result<Summary, UsageError> {
    let target = Arc::new(Target::from_args(args)?);
    if let Some(q) = args.qps
        && !(q.is_finite() && q > 0.0)
    {
        return Err(UsageError::Qps(q));
    }
    let limit = match (args.requests, args.duration) {
        (None, None) => Some(1),
        (n, _) => n,
    };

    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let target = target.clone();
        let next = next.clone();
        let qps = args.qps;
        let timeout = args.timeout;
        workers.spawn(async move {
            let mut stats = Stats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|n| i >= n) {
                    break;
                }
                if let Some(q) = qps {
                    let at = start + Duration::from_secs_f64(i as f64 / q);
                    if deadline.is_some_and(|d| at >= d) {
                        break;
                    }
                    tokio::time::sleep_until(at).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let outcome = match tokio::time::timeout(timeout, target.call()).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Failed(ErrorKind::Timeout),
                };
                stats.record(outcome);
            }
            stats
        });
    }
    let mut stats = Stats::default();
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(s) => stats.merge(s),
            Err(e) => tracing::error!(error = %e, "worker panicked"),
        }
    }
    let mut summary = stats.summary(start.elapsed());
    // Every requested name is reported, even when no response carried it.
    for name in &args.count_headers {
        summary
            .headers
            .entry(name.trim().to_ascii_lowercase())
            .or_default();
    }
    Ok(summary)
}
