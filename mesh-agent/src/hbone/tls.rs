//! TLS for HBONE (wire-compatible with Istio ztunnel): TLS 1.3 only, AES-GCM suites only, ALPN
//! `h2`, no SNI. Both sides present their pod's SPIFFE certificate and verify the peer's chain
//! against the mesh trust bundle:
//! - client side: the server's URI SAN must be the destination workload's identity;
//! - server side: any identity of our trust domain (authorization decides the rest).
use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
    sign::CertifiedKey,
};

/// ALPN of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// ring with the suites ztunnel allows: TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    p.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// The URI SANs of a certificate (SPIFFE IDs); none when it does not parse.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .ok()
        .and_then(|(_, c)| crate::identity::cert::uri_sans(&c).ok())
        .unwrap_or_default()
}

/// The trust domain of a SPIFFE ID (`spiffe://<td>/...`).
pub fn trust_domain(spiffe: &str) -> Option<&str> {
    spiffe.strip_prefix("spiffe://")?.split('/').next()
}

/// Verifies the server chain against the trust bundle (no DNS/IP name check: HBONE has no SNI)
/// and that the leaf's URI SAN is one of the expected identities.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let sans = uri_sans(end_entity);
        if sans.iter().any(|s| self.expected.contains(s)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "peer identity {sans:?} is not the expected {:?}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Always presents one certificate.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Client side: present `cert` (the source pod's identity), expect one of `expected`.
pub fn client_config(
    cert: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    expected: Vec<String>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            roots,
            expected,
            provider,
        }))
        .with_client_cert_resolver(Arc::new(OneCert(cert)));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.enable_sni = false;
    Ok(Arc::new(c))
}

/// Server side: present `cert` (the destination pod's identity), require a client certificate
/// that chains to the trust bundle.
pub fn server_config(
    cert: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::General(e.to_string()))?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(OneCert(cert)));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// A root store from PEM certificates (the trust bundle).
pub fn roots_from_pem(pems: &[String]) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut store = RootCertStore::empty();
    for pem in pems {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| format!("trust bundle: {e}"))?;
            store.add(der).map_err(|e| format!("trust bundle: {e}"))?;
        }
    }
    if store.is_empty() {
        return Err("trust bundle: no certificate".into());
    }
    Ok(store)
}
