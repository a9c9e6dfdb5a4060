//! A tiny CA for the tests: a self-signed P-256 root signing CSRs, served over real gRPC
//! (`IstioCertificateService`) with switches to fail, delay or lie.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh_common::proto::ca::{
    IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tonic::{Request, Response, Status};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub root_pem: String,
    pub token: String,
    /// CreateCertificate calls received (including refused ones).
    pub calls: AtomicUsize,
    /// Calls per requested URI SAN.
    pub calls_by_san: Mutex<HashMap<String, usize>>,
    /// Fail this many of the next calls with `unavailable` (`usize::MAX`: always).
    pub fail: AtomicUsize,
    /// Sign this SAN instead of the requested one.
    pub san_override: Mutex<Option<String>>,
    /// Delay every answer for a SAN.
    pub slow: Mutex<HashMap<String, Duration>>,
    /// Delay every answer.
    pub delay: Mutex<Duration>,
    /// Start validity this long before now (mesh-controller backdates by a minute).
    pub backdate: Mutex<Duration>,
}

impl TestCa {
    pub fn new(token: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("root");
        Self {
            issuer: Issuer::new(params, key),
            root_pem: root.pem(),
            token: token.into(),
            calls: AtomicUsize::new(0),
            calls_by_san: Mutex::default(),
            fail: AtomicUsize::new(0),
            san_override: Mutex::default(),
            slow: Mutex::default(),
            delay: Mutex::default(),
            backdate: Mutex::default(),
        }
    }

    /// Signs the CSR's URI SAN (or `san`) for `ttl` from now: `[leaf, root]`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        san: Option<&str>,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = match san {
            Some(s) => vec![SanType::URI(
                s.to_string().try_into().map_err(|e| format!("{e}"))?,
            )],
            None => csr.params.subject_alt_names.clone(),
        };
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(SerialNumber::from(fastrand::u64(..).to_be_bytes().to_vec()));
        let now = time::OffsetDateTime::now_utc();
        let backdate = *self.backdate.lock().map_err(|e| e.to_string())?;
        p.not_before = now - time::Duration::milliseconds(backdate.as_millis() as i64);
        p.not_after = now + time::Duration::milliseconds(ttl.as_millis() as i64);
        csr.params = p;
        let leaf = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }

    pub fn calls_for(&self, san: &str) -> usize {
        self.calls_by_san
            .lock()
            .expect("lock")
            .get(san)
            .copied()
            .unwrap_or(0)
    }

    /// Serves on 127.0.0.1:0; returns `http://addr`.
    pub async fn serve(self: &Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let svc = IstioCertificateServiceServer::from_arc(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(
                    // Like `Server::serve` (what mesh-controller uses): no Nagle, else every
                    // call waits ~40 ms for a delayed ACK.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        format!("http://{addr}")
    }
}

#[tonic::async_trait]
impl IstioCertificateService for TestCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let req = request.into_inner();
        let san = CertificateSigningRequestParams::from_pem(&req.csr)
            .ok()
            .and_then(|c| {
                c.params.subject_alt_names.iter().find_map(|s| match s {
                    SanType::URI(u) => Some(u.as_str().to_string()),
                    _ => None,
                })
            })
            .unwrap_or_default();
        *self
            .calls_by_san
            .lock()
            .expect("lock")
            .entry(san.clone())
            .or_default() += 1;
        let delay = *self.delay.lock().expect("lock")
            + self
                .slow
                .lock()
                .expect("lock")
                .get(&san)
                .copied()
                .unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if token != self.token {
            return Err(Status::unauthenticated("bad bearer token"));
        }
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                usize::MAX => Some(usize::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if failing {
            return Err(Status::unavailable("test CA is failing"));
        }
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(0).max(1));
        let san_override = self.san_override.lock().expect("lock").clone();
        let chain = self
            .sign_csr(&req.csr, san_override.as_deref(), ttl)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
