//! Agent metrics (Prometheus text format on `/metrics`, port 15020 in the node netns).
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
        Arc::new(Self {
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
