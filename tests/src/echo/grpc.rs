//! gRPC: `weft.echo.v1.Echo` and the standard `grpc.health.v1.Health`.

use std::sync::Arc;

use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::Identity;
use super::http::PeerAddr;
use crate::proto::echo_server::{Echo, EchoServer};
use crate::proto::{EchoRequest, EchoResponse};

/// The `weft.echo.v1.Echo` implementation.
#[derive(Debug, Clone)]
pub struct EchoService {
    id: Arc<Identity>,
}

impl EchoService {
    pub fn new(id: Arc<Identity>) -> Self {
        Self { id }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        if self.id.delay_ms > 0 {
            tokio::time::sleep(self.id.delay()).await;
        }
        if self.id.should_fail() {
            return Err(Status::unavailable(format!(
                "injected failure from {}",
                self.id.pod
            )));
        }
        let peer = req
            .extensions()
            .get::<PeerAddr>()
            .map(|p| p.0.to_string())
            .or_else(|| req.remote_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        Ok(Response::new(EchoResponse {
            message: req.into_inner().message,
            pod: self.id.pod.clone(),
            namespace: self.id.namespace.clone(),
            version: self.id.version.clone(),
            peer,
        }))
    }
}

/// The gRPC routes: Echo plus Health (SERVING for "" and "weft.echo.v1.Echo").
pub(super) async fn routes(id: Arc<Identity>) -> Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EchoServer<EchoService>>().await;
    Routes::new(health).add_service(EchoServer::new(EchoService::new(id)))
}
