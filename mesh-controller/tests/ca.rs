//! The certificate service over real gRPC: node-scoped signing and every refusal.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mesh_common::proto::ca::{
    IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    istio_certificate_service_server::IstioCertificateServiceServer,
};
use mesh_controller::{
    auth::NodeAuth,
    ca::{Ca, CaServer},
    model::{Model, Store},
};
use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;

fn csr(uri: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn signs_only_identities_of_pods_on_the_callers_node() {
    let dir = std::env::temp_dir().join(format!("weft-ca-grpc-{}", std::process::id()));
    let ca = Arc::new(Ca::load_or_generate(&dir, "cluster.local").unwrap());
    let mut m = Model::default();
    m.insert(json!({"kind": "Pod", "metadata": {"name": "web-1", "namespace": "demo", "uid": "u1"}, "spec": {"nodeName": "node-a", "serviceAccountName": "web"}}));
    m.insert(json!({"kind": "Pod", "metadata": {"name": "db-1", "namespace": "demo", "uid": "u2"}, "spec": {"nodeName": "node-b", "serviceAccountName": "db"}}));
    let server = CaServer {
        ca: ca.clone(),
        store: Store::new(m),
        auth: Arc::new(NodeAuth::tokens(
            [
                ("node-a".to_string(), "ta".to_string()),
                ("node-b".to_string(), "tb".to_string()),
            ]
            .into(),
        )),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let mut client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let call = |token: &str, uri: &str, ttl: i64| {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr(uri),
            validity_duration: ttl,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };

    // A pod on the caller's node: signed, leaf + root, right SAN and TTL.
    let resp = client
        .create_certificate(call("ta", "spiffe://cluster.local/ns/demo/sa/web", 7200))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.cert_chain.len(), 2);
    assert_eq!(resp.cert_chain[1], ca.root_pem());
    let (_, pem) = x509_parser::pem::parse_x509_pem(resp.cert_chain[0].as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
    );
    assert_eq!(san, "[URI(\"spiffe://cluster.local/ns/demo/sa/web\")]");
    assert_eq!(
        cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
        7200 + 60
    );
    // A TTL above the cap is capped at 24 h.
    let resp = client
        .create_certificate(call(
            "ta",
            "spiffe://cluster.local/ns/demo/sa/web",
            7 * 86400,
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, pem) = x509_parser::pem::parse_x509_pem(resp.cert_chain[0].as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
    assert_eq!(
        cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
        86400 + 60
    );

    // Refusals.
    let cases = [
        (
            "tb",
            "spiffe://cluster.local/ns/demo/sa/web",
            tonic::Code::PermissionDenied,
            "a pod on another node",
        ),
        (
            "ta",
            "spiffe://cluster.local/ns/demo/sa/ghost",
            tonic::Code::PermissionDenied,
            "a non-existent pod",
        ),
        (
            "nope",
            "spiffe://cluster.local/ns/demo/sa/web",
            tonic::Code::Unauthenticated,
            "a bad token",
        ),
        (
            "ta",
            "spiffe://evil.org/ns/demo/sa/web",
            tonic::Code::InvalidArgument,
            "another trust domain",
        ),
    ];
    for (token, uri, code, what) in cases {
        let err = client
            .create_certificate(call(token, uri, 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
