//! The certificate authority (`istio.v1.auth.IstioCertificateService/CreateCertificate`, port 15012).
//!
//! Signs CSRs for SPIFFE IDs `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` with a short TTL, and only
//! for identities of pods **scheduled on the calling agent's node**: the caller authenticates as its
//! node (files mode: the node's bootstrap token as `authorization: Bearer …`). Every refusal is logged
//! with the caller, its node and the requested identity. The root comes from `--ca-dir`
//! (`root-cert.pem`, `root-key.pem`) and is generated there (ECDSA P-256, 10 years) when absent.
use std::{path::Path, sync::Arc, time::Duration};

use mesh_common::proto::ca::{
    IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_server::IstioCertificateService,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::model::Model;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA files in {dir}: {message}")]
    Files { dir: String, message: String },
    #[error("CSR: {0}")]
    Csr(String),
    #[error("signing: {0}")]
    Sign(String),
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_domain: String,
    default_ttl: Duration,
    max_ttl: Duration,
}

/// A parsed SPIFFE identity of this trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub namespace: String,
    pub service_account: String,
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`, requiring the trust domain.
pub fn parse_spiffe(uri: &str, trust_domain: &str) -> Result<SpiffeId, String> {
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{uri:?} is not a spiffe:// URI"))?;
    let (td, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("{uri:?} has no path"))?;
    if td != trust_domain {
        return Err(format!(
            "{uri:?}: trust domain {td:?} is not {trust_domain:?}"
        ));
    }
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Ok(SpiffeId {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        }),
        _ => Err(format!(
            "{uri:?}: expected spiffe://{trust_domain}/ns/<namespace>/sa/<service account>"
        )),
    }
}

impl Ca {
    /// Loads the root from `dir` (`root-cert.pem`, `root-key.pem`), generating it on first start.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let ferr = |m: String| CaError::Files {
            dir: dir.display().to_string(),
            message: m,
        };
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        let (cert, key) = if cert_path.exists() && key_path.exists() {
            (
                std::fs::read_to_string(&cert_path).map_err(|e| ferr(e.to_string()))?,
                std::fs::read_to_string(&key_path).map_err(|e| ferr(e.to_string()))?,
            )
        } else {
            std::fs::create_dir_all(dir).map_err(|e| ferr(e.to_string()))?;
            let (cert, key) = generate_root(trust_domain).map_err(ferr)?;
            std::fs::write(&cert_path, &cert).map_err(|e| ferr(e.to_string()))?;
            write_private(&key_path, &key).map_err(|e| ferr(e.to_string()))?;
            info!(dir = %dir.display(), "generated a new root CA");
            (cert, key)
        };
        Self::from_pem(&cert, &key, trust_domain).map_err(ferr)
    }

    /// A CA from a PEM certificate and key (a file pair or the `weft-ca` Secret).
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("root key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("root certificate: {e}"))?;
        Ok(Self {
            issuer,
            root_pem: cert_pem.to_string(),
            trust_domain: trust_domain.into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(24 * 3600),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The identity a CSR asks for (its single URI SAN), after checking the CSR's signature.
    pub fn requested_identity(
        &self,
        csr_pem: &str,
    ) -> Result<(CertificateSigningRequestParams, SpiffeId), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(CaError::Csr(format!(
                "expected exactly one URI SAN, found {}",
                uris.len()
            )));
        };
        let id = parse_spiffe(uri, &self.trust_domain).map_err(CaError::Csr)?;
        Ok((csr, id))
    }

    /// Signs a CSR already checked by [`Ca::requested_identity`]: the leaf carries only the SPIFFE
    /// URI SAN, client+server auth, and lives `ttl` (default 24 h, capped).
    pub fn sign(
        &self,
        mut csr: CertificateSigningRequestParams,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<String, CaError> {
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl);
        let uri = format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, id.namespace, id.service_account
        );
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            uri.try_into().map_err(|e| CaError::Sign(format!("{e}")))?,
        )];
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::seconds(ttl.as_secs() as i64);
        csr.params = p;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(cert.pem())
    }
}

impl Ca {
    /// The controller's own TLS identity for the config stream and the certificate service: a
    /// P-256 key and a certificate for `sans` (DNS names or IP addresses) signed by the mesh root,
    /// valid one year (re-issued at every start). Returns (certificate chain PEM, key PEM).
    pub fn server_identity(&self, sans: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| CaError::Sign(format!("--tls-san {s:?}: {e}"))),
            })
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "weft controller");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::days(365);
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        ))
    }
}

/// A new self-signed ECDSA P-256 root (10 years): (certificate PEM, key PEM).
pub fn generate_root(trust_domain: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, format!("weft {trust_domain}"));
    dn.push(DnType::CommonName, "weft root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Decides whether `node` may obtain `id`: some pod of that namespace and service account must be
/// scheduled on the node. Pure (table-tested).
pub fn authorize(model: &Model, node: &str, id: &SpiffeId) -> Result<(), String> {
    let pods = model.pods();
    if pods.iter().any(|p| {
        p.node == node && p.namespace == id.namespace && p.service_account == id.service_account
    }) {
        return Ok(());
    }
    if pods
        .iter()
        .any(|p| p.namespace == id.namespace && p.service_account == id.service_account)
    {
        Err(format!(
            "no pod with identity {id} is scheduled on node {node}"
        ))
    } else {
        Err(format!("no pod with identity {id} exists"))
    }
}

/// The gRPC service: authenticates the node, authorizes the identity, signs.
pub struct CaServer {
    pub ca: Arc<Ca>,
    pub store: Arc<crate::model::Store>,
    pub auth: Arc<crate::auth::NodeAuth>,
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let req = request.into_inner();
        let identity = self.ca.requested_identity(&req.csr);
        let requested = identity
            .as_ref()
            .map(|(_, id)| id.to_string())
            .unwrap_or_else(|e| format!("<{e}>"));
        let node = match self.auth.node_of(&token).await {
            Ok(node) => node,
            Err(e) => {
                warn!(
                    caller,
                    node = "?",
                    identity = requested,
                    "certificate refused: {e}"
                );
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        let (csr, id) = identity.map_err(|e| {
            warn!(
                caller,
                node,
                identity = requested,
                "certificate refused: {e}"
            );
            Status::invalid_argument(e.to_string())
        })?;
        let decision = self.store.read(|m| authorize(m, &node, &id));
        if let Err(reason) = decision {
            warn!(caller, node, identity = %id, "certificate refused: {reason}");
            return Err(Status::permission_denied(reason));
        }
        let ttl = u64::try_from(req.validity_duration)
            .ok()
            .map(Duration::from_secs);
        let leaf = self
            .ca
            .sign(csr, &id, ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(caller, node, identity = %id, "certificate signed");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf, self.ca.root_pem().to_string()],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spiffe_ids() {
        let cases = [
            ("spiffe://cluster.local/ns/demo/sa/web", Ok(("demo", "web"))),
            ("spiffe://other/ns/demo/sa/web", Err("trust domain")),
            ("spiffe://cluster.local/ns/demo", Err("expected")),
            ("https://cluster.local/ns/demo/sa/web", Err("not a spiffe")),
        ];
        for (uri, want) in cases {
            match (parse_spiffe(uri, "cluster.local"), want) {
                (Ok(id), Ok((ns, sa))) => assert_eq!(
                    (id.namespace.as_str(), id.service_account.as_str()),
                    (ns, sa),
                    "{uri}"
                ),
                (Err(e), Err(w)) => assert!(e.contains(w), "{uri}: {e}"),
                (got, want) => panic!("{uri}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn authorization_table() {
        let mut m = Model::default();
        m.insert(json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "demo", "uid": "u"}, "spec": {"nodeName": "node-a", "serviceAccountName": "web"}}));
        let id = |ns: &str, sa: &str| SpiffeId {
            namespace: ns.into(),
            service_account: sa.into(),
        };
        assert!(authorize(&m, "node-a", &id("demo", "web")).is_ok());
        assert!(
            authorize(&m, "node-b", &id("demo", "web"))
                .unwrap_err()
                .contains("scheduled on node node-b")
        );
        assert!(
            authorize(&m, "node-a", &id("demo", "db"))
                .unwrap_err()
                .contains("exists")
        );
    }

    #[test]
    fn signs_with_the_spiffe_san_and_ttl() {
        let dir = std::env::temp_dir().join(format!("weft-ca-{}", std::process::id()));
        let ca = Ca::load_or_generate(&dir, "cluster.local").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/demo/sa/web".try_into().unwrap(),
        )];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let (csr, id) = ca.requested_identity(&csr).unwrap();
        let pem = ca.sign(csr, &id, Some(Duration::from_secs(3600))).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der.contents).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[URI(\"spiffe://cluster.local/ns/demo/sa/web\")]"
        );
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60);
        // Reloading uses the same root.
        let again = Ca::load_or_generate(&dir, "cluster.local").unwrap();
        assert_eq!(again.root_pem(), ca.root_pem());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
