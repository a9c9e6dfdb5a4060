//! Agent metrics (Prometheus text format on `/metrics`, port 15020 in the node netns).
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: Direction,
    /// `sent` = client → server, `received` = server → client.
    pub flow: String,
}

/// Istio's standard TCP labels (so existing dashboards work). Values Weft does not know are
/// `unknown`, as in Istio.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` (client side) or `destination` (server side).
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service: String,
    pub destination_principal: String,
    pub request_protocol: String,
    /// `mutual_tls` (HBONE) or `none` (plaintext; `unknown` on the client side).
    pub connection_security_policy: String,
    /// `-`, or Envoy's flags: `UF` (upstream connect/tunnel failure), `UH` (no healthy upstream).
    pub response_flags: String,
}

impl TcpLabels {
    pub fn unknown() -> Self {
        let u = || "unknown".to_string();
        Self {
            reporter: u(),
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_service: u(),
            destination_principal: u(),
            request_protocol: "tcp".into(),
            connection_security_policy: u(),
            response_flags: "-".into(),
        }
    }
}

/// Istio's standard HTTP/gRPC request labels. Unknown values are `unknown`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    pub response_code: String,
    /// gRPC status code (numeric) or `-`... Istio: empty for non-gRPC.
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl HttpLabels {
    pub fn unknown() -> Self {
        let u = || "unknown".to_string();
        Self {
            reporter: u(),
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_service: u(),
            destination_service_name: u(),
            destination_service_namespace: u(),
            request_protocol: "http".into(),
            response_code: "0".into(),
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: u(),
        }
    }
}

/// Istio's request duration buckets (ms).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Istio's size buckets: 1, 10, … 10^9 bytes.
fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 10,
    ))
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

pub struct Metrics {
    pub registry: Mutex<Registry>,
    /// Istio's standard names (no `weft_` prefix).
    istio: Mutex<Registry>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    requests: Family<HttpLabels, Counter>,
    request_duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    /// Workload certificates: seconds until expiry, rotations, failures, by identity.
    pub cert_expiry: Family<IdentityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub cert_rotations: Family<IdentityLabels, Gauge>,
    pub cert_failures: Family<IdentityLabels, Gauge>,
    /// Version of the config last accepted from the controller (a change counter).
    pub config_generation: Gauge,
    connections: Family<ConnLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    pub enrolled_pods: Gauge,
    pub bpf: Family<BpfLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BpfLabels {
    pub decision: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("weft");
        let connections = Family::<ConnLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let enrolled_pods = Gauge::default();
        let bpf = Family::<BpfLabels, Gauge>::default();
        r.register(
            "proxy_connections",
            "Connections handled by the node proxy, by direction and result",
            connections.clone(),
        );
        r.register(
            "proxy_bytes",
            "Bytes relayed by the node proxy",
            bytes.clone(),
        );
        r.register(
            "enrolled_pods",
            "Pods of this node enrolled in the mesh",
            enrolled_pods.clone(),
        );
        r.register(
            "bpf_decisions",
            "Decisions taken by the eBPF programs (summed over CPUs)",
            bpf.clone(),
        );
        let cert_expiry =
            Family::<IdentityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let cert_rotations = Family::<IdentityLabels, Gauge>::default();
        let cert_failures = Family::<IdentityLabels, Gauge>::default();
        let config_generation = Gauge::default();
        r.register(
            "certificate_expiry_seconds",
            "Seconds until the workload certificate of an identity expires",
            cert_expiry.clone(),
        );
        r.register(
            "certificate_rotations",
            "Renewals of an identity's certificate",
            cert_rotations.clone(),
        );
        r.register(
            "certificate_failures",
            "Failed certificate requests for an identity",
            cert_failures.clone(),
        );
        r.register(
            "config_generation",
            "Accepted config updates from the controller",
            config_generation.clone(),
        );
        let mut istio = Registry::default();
        let (tcp_opened, tcp_closed, tcp_sent, tcp_received) = (
            Family::<TcpLabels, Counter>::default(),
            Family::<TcpLabels, Counter>::default(),
            Family::<TcpLabels, Counter>::default(),
            Family::<TcpLabels, Counter>::default(),
        );
        istio.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        istio.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        istio.register(
            "istio_tcp_sent_bytes",
            "Bytes sent during the response (server to client)",
            tcp_sent.clone(),
        );
        istio.register(
            "istio_tcp_received_bytes",
            "Bytes received during the request (client to server)",
            tcp_received.clone(),
        );
        let requests = Family::<HttpLabels, Counter>::default();
        let request_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        istio.register("istio_requests", "HTTP and gRPC requests", requests.clone());
        istio.register(
            "istio_request_duration_milliseconds",
            "Request duration (ms)",
            request_duration.clone(),
        );
        istio.register(
            "istio_request_bytes",
            "Request sizes (headers and body, bytes)",
            request_bytes.clone(),
        );
        istio.register(
            "istio_response_bytes",
            "Response sizes (headers and body, bytes)",
            response_bytes.clone(),
        );
        Arc::new(Self {
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            registry: Mutex::new(r),
            istio: Mutex::new(istio),
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            cert_expiry,
            cert_rotations,
            cert_failures,
            config_generation,
            connections,
            bytes,
            enrolled_pods,
            bpf,
        })
    }

    pub fn connection(&self, direction: Direction, result: &str) {
        self.connections
            .get_or_create(&ConnLabels {
                direction,
                result: result.into(),
            })
            .inc();
    }

    pub fn bytes(&self, direction: Direction, sent: u64, received: u64) {
        self.bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "sent".into(),
            })
            .inc_by(sent);
        self.bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "received".into(),
            })
            .inc_by(received);
    }

    /// A TCP connection established (Istio telemetry).
    pub fn tcp_opened(&self, l: &TcpLabels) {
        self.tcp_opened.get_or_create(l).inc();
    }

    /// A TCP connection closed: `request_bytes` client → server, `response_bytes` server → client.
    pub fn tcp_closed(&self, l: &TcpLabels, request_bytes: u64, response_bytes: u64) {
        self.tcp_closed.get_or_create(l).inc();
        self.tcp_received.get_or_create(l).inc_by(request_bytes);
        self.tcp_sent.get_or_create(l).inc_by(response_bytes);
    }

    /// One HTTP/gRPC request finished (Istio telemetry).
    pub fn request(
        &self,
        l: &HttpLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.requests.get_or_create(l).inc();
        self.request_duration.get_or_create(l).observe(duration_ms);
        self.request_bytes
            .get_or_create(l)
            .observe(request_bytes as f64);
        self.response_bytes
            .get_or_create(l)
            .observe(response_bytes as f64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        {
            let r = self.istio.lock().unwrap_or_else(|p| p.into_inner());
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &r);
        }
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// Serves `/metrics` until the process exits.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(m.encode())))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    };
                    resp.map_err(std::io::Error::other)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}
