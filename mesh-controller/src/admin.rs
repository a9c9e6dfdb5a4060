//! Admin HTTP endpoint (default `127.0.0.1:15014`): `GET /debug/proxy-status` → per-node status
//! JSON; `GET /healthz` → 200 while the process serves; `GET /readyz` → 200 once the first config
//! has been computed (kube mode: every kind listed), 503 before.
use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Response, body::Bytes, service::service_fn};

use crate::server::Hub;

pub async fn serve(addr: SocketAddr, hub: Arc<Hub>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let hub = hub.clone();
                async move {
                    let path = req.uri().path();
                    if path == "/debug/proxy-status" {
                        let body = serde_json::to_vec_pretty(&hub.status()).unwrap_or_default();
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                    } else if path == "/healthz" {
                        Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                    } else if path == "/readyz" {
                        let ready = hub.ready();
                        Response::builder()
                            .status(if ready { 200 } else { 503 })
                            .body(Full::new(Bytes::from_static(if ready {
                                b"ready\n"
                            } else {
                                b"waiting for the first config\n"
                            })))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
