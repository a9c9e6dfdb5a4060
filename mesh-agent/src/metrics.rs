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

pub struct Metrics {
    pub registry: Mutex<Registry>,
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
        Arc::new(Self {
            registry: Mutex::new(r),
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
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
