//! End-to-end checks of the mesh-echo / mesh-client contract, on 127.0.0.1 only.
//!
//! Each test starts its own mesh-echo process on free ports and drives it with mesh-client
//! (`--json`) or a direct client. Nothing here needs root and nothing is skipped.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tests::proto::EchoRequest;
use mesh_tests::proto::echo_client::EchoClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const READY_DEADLINE: Duration = Duration::from_secs(15);

/// `N` distinct free ports (all held open until chosen, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// A running mesh-echo, killed on drop.
struct Echo {
    child: Child,
    http: u16,
    grpc: u16,
    tcp: u16,
}

impl Echo {
    fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, &[])
    }

    /// Start with extra environment and extra command-line arguments.
    fn start_with(env: &[(&str, &str)], args: &[&str]) -> Self {
        let [http, grpc, tcp] = free_ports::<3>();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-echo"));
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--http-port", &http.to_string()])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--tcp-port", &tcp.to_string()])
            .env_remove("FAILURE_RATE")
            .env_remove("FAILURE_STATUS")
            .env_remove("DELAY_MS")
            .env_remove("VERSION")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("NODE_NAME")
            .env_remove("UPSTREAM")
            .env_remove("UPSTREAM_TIMEOUT")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn mesh-echo");
        let mut echo = Echo {
            child,
            http,
            grpc,
            tcp,
        };
        echo.wait_ready();
        echo
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        for port in [self.http, self.grpc, self.tcp] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    panic!("mesh-echo exited early: {status}");
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    start.elapsed() < READY_DEADLINE,
                    "mesh-echo not listening on {addr} after {READY_DEADLINE:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run mesh-client with `args` plus `--json`; it must exit 0 and print one JSON object.
fn client(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-client"))
        .arg("--json")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mesh-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mesh-client {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("mesh-client printed non-JSON ({e}): {stdout:?}"));
    for key in [
        "total",
        "status",
        "versions",
        "pods",
        "upstream_versions",
        "upstream_pods",
        "headers",
        "latency_ms",
        "errors",
        "duration_ms",
        "rps",
    ] {
        assert!(v.get(key).is_some(), "summary lacks {key:?}: {v}");
    }
    v
}

fn count(v: &Value, map: &str, key: &str) -> u64 {
    v[map][key].as_u64().unwrap_or(0)
}

async fn get_json(url: &str, http2: bool) -> (http::StatusCode, http::HeaderMap, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http();
    let req = http::Request::post(url)
        .header("x-multi", "a")
        .header("x-multi", "b")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&body).expect("echo body is JSON");
    (parts.status, parts.headers, v)
}

#[tokio::test]
async fn http1_and_h2c_replies_carry_identity_and_request() {
    let echo = Echo::start(&[
        ("POD_NAME", "echo-a"),
        ("POD_NAMESPACE", "ns1"),
        ("VERSION", "v7"),
        ("NODE_NAME", "node-1"),
    ]);
    for (http2, proto) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let (status, headers, v) = get_json(&echo.url("/some/path?a=1&b=2"), http2).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-echo-pod"], "echo-a");
        assert_eq!(headers["x-echo-version"], "v7");
        assert_eq!(v["pod"], "echo-a");
        assert_eq!(v["namespace"], "ns1");
        assert_eq!(v["version"], "v7");
        assert_eq!(v["node"], "node-1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/some/path");
        assert_eq!(v["query"], "a=1&b=2");
        assert_eq!(v["protocol"], proto);
        assert_eq!(v["headers"]["x-multi"], "a, b");
        assert_eq!(v["host"], format!("127.0.0.1:{}", echo.http));
        assert_eq!(v["status"], 200);
        assert_eq!(v["body_bytes"], 10);
        let peer: SocketAddr = v["peer"].as_str().expect("peer").parse().expect("ip:port");
        assert_eq!(peer.ip().to_string(), "127.0.0.1");

        let mut args = vec!["-n", "5"];
        if http2 {
            args.push("--http2");
        }
        let url = echo.url("/");
        args.push(&url);
        let s = client(&args);
        assert_eq!(s["total"], 5, "{s}");
        assert_eq!(count(&s, "status", "200"), 5, "{s}");
        assert_eq!(count(&s, "versions", "v7"), 5, "{s}");
        assert_eq!(count(&s, "pods", "echo-a"), 5, "{s}");
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
        assert_eq!(s["upstream_versions"], serde_json::json!({}), "{s}");
        assert_eq!(s["upstream_pods"], serde_json::json!({}), "{s}");
        assert!(
            v.get("upstream").is_none(),
            "no --upstream, no upstream field: {v}"
        );
    }
}

#[tokio::test]
async fn query_knobs_and_healthz() {
    let echo = Echo::start(&[]);
    let (status, _, v) = get_json(&echo.url("/x?size=1000"), false).await;
    assert_eq!(status, 200);
    assert_eq!(v["pad"].as_str().map(str::len), Some(1000));
    assert_eq!(v["version"], "v1", "default VERSION");
    assert_eq!(v["namespace"], "default", "default POD_NAMESPACE");

    let (status, _, v) = get_json(&echo.url("/healthz"), false).await;
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"status": "ok"}));

    let s = client(&["-n", "10", "-c", "2", &echo.url("/?status=503")]);
    assert_eq!(s["total"], 10, "{s}");
    assert_eq!(count(&s, "status", "503"), 10, "{s}");
    assert_eq!(count(&s, "versions", "v1"), 10, "{s}");

    // ?close=1 forces a new connection per request; all must still succeed.
    let s = client(&["-n", "10", &echo.url("/?close=1")]);
    assert_eq!(count(&s, "status", "200"), 10, "{s}");

    // ?delay beyond --timeout is a timeout error, not a status.
    let s = client(&["-n", "2", "--timeout", "100ms", &echo.url("/?delay=2000")]);
    assert_eq!(s["total"], 2, "{s}");
    assert_eq!(count(&s, "errors", "timeout"), 2, "{s}");

    // POST with a body.
    let s = client(&[
        "-n",
        "3",
        "-X",
        "POST",
        "--data",
        "hello",
        &echo.url("/post"),
    ]);
    assert_eq!(count(&s, "status", "200"), 3, "{s}");
}

#[tokio::test]
async fn failure_rate_one_fails_everything() {
    let echo = Echo::start(&[("FAILURE_RATE", "1"), ("VERSION", "v2")]);
    let s = client(&["-n", "20", "-c", "4", &echo.url("/")]);
    assert_eq!(s["total"], 20, "{s}");
    assert_eq!(count(&s, "status", "503"), 20, "{s}");
    assert_eq!(count(&s, "versions", "v2"), 20, "{s}");

    let grpc = format!("http://127.0.0.1:{}", echo.http);
    let s = client(&["--grpc", "-n", "10", &grpc]);
    assert_eq!(count(&s, "status", "UNAVAILABLE"), 10, "{s}");

    let echo = Echo::start(&[("FAILURE_RATE", "1"), ("FAILURE_STATUS", "500")]);
    let s = client(&["-n", "5", &echo.url("/")]);
    assert_eq!(count(&s, "status", "500"), 5, "{s}");
}

#[tokio::test]
async fn count_header_and_delay_ms() {
    // DELAY_MS slows every request of this server (HTTP and gRPC), on top of ?delay=.
    let echo = Echo::start(&[("VERSION", "v9"), ("DELAY_MS", "150")]);
    let s = client(&[
        "-n",
        "4",
        "--count-header",
        "X-Echo-Version",
        "--count-header",
        "x-absent",
        &echo.url("/?delay=50"),
    ]);
    assert_eq!(count(&s, "status", "200"), 4, "{s}");
    assert_eq!(s["headers"]["x-echo-version"]["v9"], 4, "{s}");
    assert_eq!(
        s["headers"]["x-absent"],
        serde_json::json!({}),
        "absent: listed, nothing counted: {s}"
    );
    assert!(s["latency_ms"]["min"].as_f64().unwrap() >= 200.0, "{s}");
    let grpc = format!("http://127.0.0.1:{}", echo.grpc);
    let s = client(&["--grpc", "-n", "2", &grpc]);
    assert_eq!(count(&s, "status", "OK"), 2, "{s}");
    assert!(s["latency_ms"]["min"].as_f64().unwrap() >= 150.0, "{s}");
    // Without --count-header the summary's headers are empty.
    let s = client(&["-n", "1", &echo.url("/")]);
    assert_eq!(s["headers"], serde_json::json!({}), "{s}");
}

#[tokio::test]
async fn grpc_echo_and_health() {
    let echo = Echo::start(&[("POD_NAME", "grpc-pod"), ("VERSION", "v3")]);
    for port in [echo.http, echo.grpc] {
        let url = format!("http://127.0.0.1:{port}");
        let s = client(&["--grpc", "-n", "20", "-c", "4", &url]);
        assert_eq!(s["total"], 20, "{s}");
        assert_eq!(count(&s, "status", "OK"), 20, "{s}");
        assert_eq!(count(&s, "versions", "v3"), 20, "{s}");
        assert_eq!(count(&s, "pods", "grpc-pod"), 20, "{s}");

        let mut c = EchoClient::connect(url.clone()).await.expect("connect");
        let r = c
            .echo(EchoRequest {
                message: "ping".into(),
            })
            .await
            .expect("echo")
            .into_inner();
        assert_eq!(r.message, "ping");
        assert_eq!(r.pod, "grpc-pod");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.version, "v3");
        assert!(r.peer.starts_with("127.0.0.1:"), "peer {:?}", r.peer);

        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect health");
        let mut h = HealthClient::new(channel);
        for service in ["", "weft.echo.v1.Echo"] {
            let resp = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
        }
    }
}

#[tokio::test]
async fn tcp_echo_one_mib_with_half_close() {
    let echo = Echo::start(&[]);
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", echo.tcp))
        .await
        .expect("connect");
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.expect("write");
        w.shutdown().await.expect("half-close");
    };
    let mut got = Vec::new();
    let read = async {
        r.read_to_end(&mut got).await.expect("read to EOF");
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
        .await
        .expect("tcp echo timed out");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");

    let url = format!("tcp://127.0.0.1:{}", echo.tcp);
    let s = client(&["--tcp", "-n", "20", "-c", "2", &url]);
    assert_eq!(count(&s, "status", "ok"), 20, "{s}");
}

#[tokio::test]
async fn websocket_echo() {
    let echo = Echo::start(&[]);
    let url = format!("ws://127.0.0.1:{}/ws", echo.http);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("ws connect timed out")
    .expect("ws connect");
    assert_eq!(resp.status(), 101);
    let msgs = [
        Message::text("hello websocket"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(100_000)),
    ];
    for m in msgs {
        ws.send(m.clone()).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("ws echo timed out")
            .expect("stream ended")
            .expect("ws read");
        assert_eq!(back, m);
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn concurrency_counts_every_request() {
    let echo = Echo::start(&[]);
    for mode in [None, Some("--http2")] {
        let url = echo.url("/");
        let mut args = vec!["-c", "4", "-n", "200"];
        args.extend(mode);
        args.push(&url);
        let s = client(&args);
        assert_eq!(s["total"], 200, "{mode:?}: {s}");
        assert_eq!(count(&s, "status", "200"), 200, "{mode:?}: {s}");
        let l = &s["latency_ms"];
        let (p50, p99, max) = (
            l["p50"].as_f64().expect("p50"),
            l["p99"].as_f64().expect("p99"),
            l["max"].as_f64().expect("max"),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{s}");
    }

    // Duration mode with pacing stops on time and never exceeds the rate budget.
    let s = client(&["-d", "300ms", "--qps", "50", "-c", "2", &echo.url("/")]);
    let total = s["total"].as_u64().expect("total");
    assert!((1..=16).contains(&total), "{s}");
    assert_eq!(count(&s, "status", "200"), total, "{s}");
}

#[test]
fn client_reports_network_errors_and_rejects_bad_usage() {
    // Nothing listens on a just-freed port: connect errors, exit 0.
    let [port] = free_ports::<1>();
    let url = format!("http://127.0.0.1:{port}/");
    let s = client(&["-n", "3", &url]);
    assert_eq!(s["total"], 3, "{s}");
    assert_eq!(count(&s, "errors", "connect"), 3, "{s}");
    let s = client(&["--grpc", "-n", "2", &url]);
    assert_eq!(count(&s, "errors", "connect"), 2, "{s}");
    let s = client(&["--tcp", "-n", "2", &format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(count(&s, "errors", "connect"), 2, "{s}");

    for bad in [
        vec!["not a url"],
        vec!["ftp://127.0.0.1:1/"],
        vec!["--tcp", "tcp://127.0.0.1"],
        vec!["-H", "no-colon", "http://127.0.0.1:1/"],
        vec!["--http2", "--grpc", "http://127.0.0.1:1/"],
        vec!["-d", "soon", "http://127.0.0.1:1/"],
        vec!["--qps", "0", "http://127.0.0.1:1/"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mesh-client"))
            .args(&bad)
            .output()
            .expect("run mesh-client");
        assert!(!out.status.success(), "{bad:?} should be a usage error");
    }
}

#[test]
fn echo_requires_a_port_and_exits_on_sigterm() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-echo"))
        .output()
        .expect("run mesh-echo");
    assert!(!out.status.success(), "mesh-echo without ports must fail");

    let mut echo = Echo::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &echo.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = echo.child.try_wait().expect("try_wait") {
            assert!(
                status.success(),
                "mesh-echo exit status after SIGTERM: {status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "mesh-echo ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send `method url` (HTTP/1.1, or h2c) with `headers` and `body`; return the status and the
/// JSON reply.
async fn send_json(
    method: &str,
    url: &str,
    http2: bool,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (http::StatusCode, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {body:?}"));
    (parts.status, v)
}

#[tokio::test]
async fn upstream_two_tier_reports_the_backend() {
    let backend = Echo::start(&[("VERSION", "v2"), ("POD_NAME", "backend-1")]);
    let backend_base = format!("http://127.0.0.1:{}", backend.http);
    let frontend = Echo::start_with(
        &[("VERSION", "v1"), ("POD_NAME", "frontend-1")],
        &["--upstream", &backend_base],
    );

    // Path, query, method, body and headers are forwarded; Host is the upstream's.
    for (http2, proto) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let (status, _, v) = get_json(&frontend.url("/api/items?x=1"), http2).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["pod"], "frontend-1");
        assert_eq!(v["version"], "v1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["protocol"], proto);
        let up = &v["upstream"];
        assert_eq!(up["url"], format!("{backend_base}/api/items?x=1"), "{v}");
        assert_eq!(up["status"], 200, "{v}");
        let b = &up["body"];
        assert_eq!(b["pod"], "backend-1", "{v}");
        assert_eq!(b["version"], "v2");
        assert_eq!(b["method"], "POST");
        assert_eq!(b["path"], "/api/items");
        assert_eq!(b["query"], "x=1");
        assert_eq!(b["protocol"], "HTTP/1.1", "upstream calls are HTTP/1.1");
        assert_eq!(b["body_bytes"], 10);
        assert_eq!(b["host"], format!("127.0.0.1:{}", backend.http));
        assert_eq!(b["headers"]["x-multi"], "a, b");
        assert_eq!(b["headers"]["x-forwarded-for"], "127.0.0.1");
    }

    // Hop-by-hop headers (and those named by Connection) stay behind; XFF is appended to.
    let (status, v) = send_json(
        "GET",
        &frontend.url("/hop"),
        false,
        &[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("x-keep", "1"),
            ("x-forwarded-for", "10.9.9.9"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let h = v["upstream"]["body"]["headers"]
        .as_object()
        .expect("upstream headers");
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {v}");
    }
    assert_eq!(h["x-keep"], "1", "{v}");
    assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.0.0.1", "{v}");

    // mesh-client counts the backend too, over HTTP/1.1 and h2c.
    for mode in [None, Some("--http2")] {
        let url = frontend.url("/");
        let mut args = vec!["-n", "20", "-c", "4"];
        args.extend(mode);
        args.push(&url);
        let s = client(&args);
        assert_eq!(count(&s, "status", "200"), 20, "{s}");
        assert_eq!(count(&s, "versions", "v1"), 20, "{s}");
        assert_eq!(count(&s, "pods", "frontend-1"), 20, "{s}");
        assert_eq!(s["upstream_versions"], serde_json::json!({"v2": 20}), "{s}");
        assert_eq!(
            s["upstream_pods"],
            serde_json::json!({"backend-1": 20}),
            "{s}"
        );
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    }

    // /healthz and gRPC never go upstream.
    let (status, _, v) = get_json(&frontend.url("/healthz"), false).await;
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"status": "ok"}));
    let grpc = format!("http://127.0.0.1:{}", frontend.http);
    let s = client(&["--grpc", "-n", "3", &grpc]);
    assert_eq!(count(&s, "status", "OK"), 3, "{s}");
    assert_eq!(s["upstream_versions"], serde_json::json!({}), "{s}");

    // UPSTREAM from the environment, with a path prefix and a name from /etc/hosts.
    let prefixed = format!("http://localhost:{}/prefix/", backend.http);
    let frontend = Echo::start(&[("UPSTREAM", &prefixed)]);
    let (status, _, v) = get_json(&frontend.url("/api?x=1"), false).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["upstream"]["url"],
        format!("http://localhost:{}/prefix/api?x=1", backend.http)
    );
    assert_eq!(v["upstream"]["body"]["path"], "/prefix/api", "{v}");
    assert_eq!(v["upstream"]["body"]["pod"], "backend-1", "{v}");
}

#[tokio::test]
async fn upstream_failures_propagate() {
    // The backend fails: its status becomes the frontend's.
    let backend = Echo::start(&[("VERSION", "v2"), ("FAILURE_RATE", "1")]);
    let backend_base = format!("http://127.0.0.1:{}", backend.http);
    let frontend = Echo::start_with(&[], &["--upstream", &backend_base]);
    let (status, _, v) = get_json(&frontend.url("/"), false).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], 503);
    assert_eq!(v["upstream"]["status"], 503, "{v}");
    assert_eq!(v["upstream"]["body"]["version"], "v2", "{v}");
    let s = client(&["-n", "10", "-c", "2", &frontend.url("/")]);
    assert_eq!(count(&s, "status", "503"), 10, "{s}");
    assert_eq!(count(&s, "versions", "v1"), 10, "{s}");
    assert_eq!(s["upstream_versions"], serde_json::json!({"v2": 10}), "{s}");

    // Nothing listens upstream: 502 with the connect error.
    let [closed] = free_ports::<1>();
    let closed_url = format!("http://127.0.0.1:{closed}");
    let frontend = Echo::start_with(&[], &["--upstream", &closed_url]);
    let (status, _, v) = get_json(&frontend.url("/a?b=1"), false).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["status"], 502);
    assert_eq!(v["upstream"]["url"], format!("{closed_url}/a?b=1"));
    let err = v["upstream"]["error"].as_str().expect("upstream.error");
    assert!(err.starts_with("connect: "), "{v}");
    assert!(v["upstream"].get("status").is_none(), "{v}");
    let s = client(&["-n", "5", &frontend.url("/")]);
    assert_eq!(count(&s, "status", "502"), 5, "{s}");
    assert_eq!(s["upstream_versions"], serde_json::json!({}), "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");

    // Not HTTP upstream (the raw TCP echo port): 502 with a protocol error.
    let tcp_url = format!("http://127.0.0.1:{}", backend.tcp);
    let frontend = Echo::start_with(&[], &["--upstream", &tcp_url]);
    let (status, _, v) = get_json(&frontend.url("/"), false).await;
    assert_eq!(status, 502, "{v}");
    let err = v["upstream"]["error"].as_str().expect("upstream.error");
    assert!(err.starts_with("protocol: "), "{v}");

    // Too slow upstream: 504. ?delay= is forwarded too, so the frontend waits 400 ms itself,
    // then the backend's 400 ms exceeds the 300 ms upstream timeout.
    let slow_backend = Echo::start(&[]);
    let frontend = Echo::start_with(
        &[],
        &[
            "--upstream",
            &format!("http://127.0.0.1:{}", slow_backend.http),
            "--upstream-timeout",
            "300ms",
        ],
    );
    let start = Instant::now();
    let (status, _, v) = get_json(&frontend.url("/?delay=400"), false).await;
    assert_eq!(status, 504, "{v}");
    let err = v["upstream"]["error"].as_str().expect("upstream.error");
    assert!(err.starts_with("timeout: "), "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Local decisions short-circuit: no upstream call, no "upstream" field.
    let (status, _, v) = get_json(&frontend.url("/?status=418"), false).await;
    assert_eq!(status, 418, "{v}");
    assert!(v.get("upstream").is_none(), "{v}");
    let frontend = Echo::start_with(&[("FAILURE_RATE", "1")], &["--upstream", &closed_url]);
    let (status, _, v) = get_json(&frontend.url("/"), false).await;
    assert_eq!(status, 503, "local failure, not 502: {v}");
    assert!(v.get("upstream").is_none(), "{v}");
}

#[test]
fn echo_rejects_bad_upstream_flags() {
    let [port] = free_ports::<1>();
    let port = port.to_string();
    for (env, args) in [
        (None, vec!["--upstream", "ftp://127.0.0.1:1"]),
        (None, vec!["--upstream", "127.0.0.1:1"]),
        (None, vec!["--upstream", "http://127.0.0.1:1/?q=1"]),
        (None, vec!["--upstream-timeout", "soon"]),
        (Some("http://a b"), vec![]),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-echo"));
        cmd.args(["--bind", "127.0.0.1", "--http-port", &port])
            .args(&args)
            .env_remove("UPSTREAM")
            .env_remove("UPSTREAM_TIMEOUT")
            .stdin(Stdio::null());
        if let Some(url) = env {
            cmd.env("UPSTREAM", url);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mesh-echo");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mesh-echo {args:?} (UPSTREAM={env:?}) did not reject its usage");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(2), "{args:?} (UPSTREAM={env:?})");
    }
}
