//! mesh-echo: the sample server Weft's tests, demos and benchmarks talk to.

use std::net::IpAddr;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};
use mesh_tests::echo::{Identity, Listeners, Upstream, run, upstream};

/// Echo server for Weft tests: HTTP/1.1 + h2c + gRPC + WebSocket on one port, plus optional
/// gRPC-only and raw TCP echo ports.
///
/// HTTP: every reply (except /ws) is JSON {pod, namespace, version, node, pod_ip, method, path,
/// query, protocol ("HTTP/1.1"|"HTTP/2.0"), headers (multi-valued joined with ", "), peer (the
/// TCP peer "ip:port"), host (Host or :authority), status, body_bytes}, with response headers
/// x-echo-pod and x-echo-version. Query knobs: ?status=N (reply with status N), ?delay=MS (sleep
/// before replying), ?size=N (add "pad" of N bytes), ?close=1 (Connection: close after the
/// reply, HTTP/1.1), ?duplex=1 (no JSON: the reply streams the request body back as it
/// arrives, full duplex). GET /healthz returns {"status":"ok"}. GET /ws (WebSocket upgrade) echoes
/// every text/binary message back. Requests with content-type application/grpc* go to gRPC.
///
/// gRPC: weft.echo.v1.Echo/Echo (unary; EchoRequest{message} -> EchoResponse{message, pod,
/// namespace, version, peer}) and grpc.health.v1.Health (SERVING for "" and
/// "weft.echo.v1.Echo").
///
/// TCP: writes back every byte read; after the client's half-close it finishes echoing and
/// shuts down its own write side.
///
/// Environment: POD_NAME (else HOSTNAME, else the system hostname), POD_NAMESPACE (default
/// "default"), VERSION (default "v1"), NODE_NAME, POD_IP (optional), FAILURE_RATE (0..1,
/// default 0: that fraction of HTTP requests get FAILURE_STATUS, default 503, and of gRPC echo
/// calls get UNAVAILABLE), DELAY_MS (default 0: every HTTP and gRPC echo request is answered
/// that many milliseconds late, before any ?delay=; a per-pod slowness), RUST_LOG (log filter,
/// default info; logs go to stderr).
///
/// Upstream (--upstream URL, or env UPSTREAM; two-tier apps): every HTTP echo request on
/// --http-port (not /healthz, not /ws upgrades, not gRPC) makes ONE HTTP/1.1 request (pooled
/// keep-alive client; names resolve with getaddrinfo, so /etc/hosts applies) to URL joined
/// with the incoming path and query (--upstream http://backend:8080/pre + /api?x=1 ->
/// http://backend:8080/pre/api?x=1; so query knobs apply on the upstream too), with the same
/// method and body, the incoming headers minus hop-by-hop ones (connection and the headers it
/// names, keep-alive, proxy-*, te, trailer, transfer-encoding, upgrade), host and
/// content-length, plus x-forwarded-for (the peer IP, appended to any incoming value). The
/// reply gains "upstream": {url, status, body (the upstream's body as JSON, else as text)} and
/// takes the upstream's status; if the upstream cannot be reached it is 502 (504 after
/// --upstream-timeout) with "upstream": {url, error: "<kind>: <message>"}, kind one of
/// connect, timeout, reset, protocol, other. A local decision (FAILURE_RATE, ?status=) is
/// answered without calling the upstream and without "upstream"; ?delay= sleeps before the
/// call.
///
/// Exits on SIGTERM/SIGINT.
#[derive(Debug, Parser)]
#[command(name = "mesh-echo", version, verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("ports").required(true).multiple(true)
    .args(["http_port", "grpc_port", "tcp_port"])))]
struct Args {
    /// HTTP/1.1 + h2c (prior knowledge) + gRPC + WebSocket (/ws) port.
    #[arg(long, value_name = "P")]
    http_port: Option<u16>,
    /// Separate port serving only gRPC (h2c).
    #[arg(long, value_name = "P")]
    grpc_port: Option<u16>,
    /// Raw TCP echo port.
    #[arg(long, value_name = "P")]
    tcp_port: Option<u16>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Call this http://host[:port][/prefix] URL for every HTTP echo request (see above).
    #[arg(long, value_name = "URL", env = "UPSTREAM")]
    upstream: Option<String>,
    /// Bound on each whole upstream call (connect, request, response body), e.g. 500ms, 10s.
    #[arg(long, value_name = "DURATION", env = "UPSTREAM_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // An empty UPSTREAM means none; anything else must be a valid URL (a usage error if not).
    let upstream = match args.upstream.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => match upstream::parse_url(url) {
            Ok(uri) => Some(Upstream::new(uri, args.upstream_timeout)),
            Err(e) => Args::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid --upstream: {e}"),
                )
                .exit(),
        },
    };
    mesh_tests::init_tracing();
    let identity = Identity::from_env()?;
    run(
        Listeners {
            bind: args.bind,
            http_port: args.http_port,
            grpc_port: args.grpc_port,
            tcp_port: args.tcp_port,
        },
        identity,
        upstream,
    )
    .await
}
