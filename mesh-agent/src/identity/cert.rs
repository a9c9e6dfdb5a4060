//! One workload certificate: the node-local key, the CSR sent for it, and the checked response.
use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use super::{Identity, IdentityError};

/// A response whose leaf starts later than this is refused (clock skew beyond reason).
const MAX_NOT_BEFORE_SKEW: Duration = Duration::from_secs(5 * 60);

/// A fresh ECDSA P-256 key and a PEM CSR for `id`: the CSR carries only the URI SAN (empty
/// subject). The key stays in this process; only the CSR goes to the CA.
pub fn generate_csr(id: &Identity) -> Result<(KeyPair, String), IdentityError> {
    let err = |e: rcgen::Error| IdentityError::Csr {
        identity: id.to_string(),
        reason: e.to_string(),
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.to_string()
            .try_into()
            .map_err(|e: rcgen::Error| err(e))?,
    )];
    let csr = params
        .serialize_request(&key)
        .map_err(err)?
        .pem()
        .map_err(err)?;
    Ok((key, csr))
}

/// A checked workload certificate with its private key.
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first, then intermediates (what the proxy presents).
    pub chain: Vec<CertificateDer<'static>>,
    /// The trust anchors the CA sent (the response's last element).
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// When the response was accepted.
    pub received_at: SystemTime,
    /// The CA's response as received (PEM, leaf first), for the admin endpoint.
    pub chain_pem: Vec<String>,
    key: PrivateKeyDer<'static>,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Checks the CA's `cert_chain` (leaf first, the last element holding the root(s)) against
    /// the identity and key that were requested, at time `now`.
    pub fn from_response(
        id: &Identity,
        key: &KeyPair,
        cert_chain: &[String],
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::InvalidResponse {
            identity: id.to_string(),
            reason,
        };
        let parse_pem = |i: usize, pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("cert_chain[{i}] is not PEM certificates: {e}")))
                .and_then(|v| {
                    if v.is_empty() {
                        Err(bad(format!("cert_chain[{i}] holds no certificate")))
                    } else {
                        Ok(v)
                    }
                })
        };
        let (root_pem, chain_pems) = match cert_chain {
            [] => return Err(bad("empty cert_chain".into())),
            [_] => {
                return Err(bad(
                    "cert_chain has only one element; expected the leaf, then the root".into(),
                ));
            }
            [chain @ .., root] => (root, chain),
        };
        let mut chain = Vec::new();
        for (i, pem) in chain_pems.iter().enumerate() {
            chain.extend(parse_pem(i, pem)?);
        }
        let roots = parse_pem(cert_chain.len() - 1, root_pem)?;

        fn parse_x509<'a>(
            what: &str,
            der: &'a CertificateDer<'_>,
        ) -> Result<X509Certificate<'a>, String> {
            x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, c)| c)
                .map_err(|e| format!("{what} is not an X.509 certificate: {e}"))
        }
        let parse = |what: &str, der| parse_x509(what, der).map_err(bad);
        let leaf_der = chain
            .first()
            .ok_or_else(|| bad("no leaf certificate".into()))?;
        let leaf = parse("the leaf", leaf_der)?;

        // The identity: exactly one URI SAN, the one we asked for.
        let uris = uri_sans(&leaf).map_err(|e| bad(format!("leaf SAN extension: {e}")))?;
        match uris.as_slice() {
            [uri] if *uri == id.to_string() => {}
            [uri] => {
                return Err(bad(format!(
                    "the leaf is for {uri}, not the requested {id}"
                )));
            }
            other => {
                return Err(bad(format!(
                    "the leaf has {} URI SANs ({other:?}), expected exactly {id}",
                    other.len()
                )));
            }
        }
        // The key: ours.
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(
                "the leaf's public key is not the key this node generated for the CSR".into(),
            ));
        }
        // The signatures: each certificate signed by the next, the last by one of the roots.
        let parsed_chain = chain
            .iter()
            .enumerate()
            .map(|(i, der)| parse(&format!("chain certificate {i}"), der))
            .collect::<Result<Vec<_>, _>>()?;
        let parsed_roots = roots
            .iter()
            .enumerate()
            .map(|(i, der)| parse(&format!("root {i}"), der))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, pair) in parsed_chain.windows(2).enumerate() {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|e| {
                    bad(format!(
                        "chain certificate {i} is not signed by certificate {}: {e}",
                        i + 1
                    ))
                })?;
        }
        let last = parsed_chain
            .last()
            .ok_or_else(|| bad("no leaf certificate".into()))?;
        if !parsed_roots
            .iter()
            .any(|r| last.verify_signature(Some(r.public_key())).is_ok())
        {
            return Err(bad("the chain is not signed by the root the CA sent".into()));
        }
        // The validity.
        let not_before = system_time(leaf.validity().not_before.timestamp());
        let not_after = system_time(leaf.validity().not_after.timestamp());
        if not_after <= now {
            return Err(bad(format!(
                "the leaf expired at {}",
                humantime::format_rfc3339_seconds(not_after)
            )));
        }
        if not_before > now + MAX_NOT_BEFORE_SKEW {
            return Err(bad(format!(
                "the leaf is not valid before {}",
                humantime::format_rfc3339_seconds(not_before)
            )));
        }
        let serial = leaf
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let tls_err = |e: rustls::Error| IdentityError::Tls {
            identity: id.to_string(),
            reason: e.to_string(),
        };
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(tls_err)?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(tls_err)?;
        Ok(Self {
            identity: id.clone(),
            chain,
            roots,
            not_before,
            not_after,
            serial,
            received_at: now,
            chain_pem: cert_chain.to_vec(),
            key: key_der,
            certified: Arc::new(certified),
        })
    }

    /// The chain and signing key for rustls (built once, when the response was accepted).
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The private key (PKCS#8). Never serialized anywhere but into this process's TLS stack.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// When to renew: half-way through the lifetime. The lifetime counts from when the
    /// certificate was received if that is later than `not_before` (the CA backdates
    /// `not_before` for clock skew, which would make short test TTLs renew at once).
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.not_before.max(self.received_at);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }

    /// The whole usable lifetime (from `max(not_before, received_at)` to `not_after`).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before.max(self.received_at))
            .unwrap_or_default()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The URI SANs (SPIFFE IDs) of a parsed certificate.
pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    Ok(cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testca::TestCa;
    use rcgen::PublicKeyData as _;

    fn id() -> Identity {
        Identity::new("cluster.local", "demo", "web")
    }

    #[test]
    fn csr_carries_only_the_uri_san() {
        let (key, csr) = generate_csr(&id()).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(
            format!("{:?}", parsed.params.subject_alt_names),
            "[URI(Ia5String(\"spiffe://cluster.local/ns/demo/sa/web\"))]"
        );
        assert_eq!(parsed.public_key.der_bytes(), key.public_key_raw());
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn accepts_a_good_response() {
        let ca = TestCa::new("t");
        let (key, csr) = generate_csr(&id()).unwrap();
        let chain = ca.sign_csr(&csr, None, Duration::from_secs(3600)).unwrap();
        let now = SystemTime::now();
        let cert = WorkloadCert::from_response(&id(), &key, &chain, now).unwrap();
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots.len(), 1);
        assert!(!cert.serial.is_empty());
        assert!(!cert.is_expired(now));
        assert!(cert.is_expired(cert.not_after));
        let half = cert.refresh_at().duration_since(now).unwrap();
        assert!(
            half > Duration::from_secs(1790) && half <= Duration::from_secs(1800),
            "{half:?}"
        );
        let ck = cert.certified_key();
        assert!(ck.keys_match().is_ok());
        assert_eq!(ck.cert.len(), 1);
        assert!(Arc::ptr_eq(&ck, &cert.certified_key()), "built once");
    }

    #[test]
    fn half_life_counts_from_receipt_when_not_before_is_backdated() {
        // mesh-controller backdates not_before by a minute: a 4 s certificate must not be
        // "past half-life" on arrival.
        let ca = TestCa::new("t");
        *ca.backdate.lock().unwrap() = Duration::from_secs(60);
        let (key, csr) = generate_csr(&id()).unwrap();
        let chain = ca.sign_csr(&csr, None, Duration::from_secs(4)).unwrap();
        let now = SystemTime::now();
        let cert = WorkloadCert::from_response(&id(), &key, &chain, now).unwrap();
        assert!(cert.not_before < now - Duration::from_secs(59));
        let wait = cert.refresh_at().duration_since(now).unwrap();
        assert!(
            wait > Duration::from_millis(1400) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
    }

    /// Not a benchmark harness: the numbers are printed with `--nocapture` for the report.
    #[test]
    fn cost_of_keygen_csr_and_checks() {
        let ca = TestCa::new("t");
        let n = 200u32;
        let t = std::time::Instant::now();
        let csrs: Vec<_> = (0..n).map(|_| generate_csr(&id()).unwrap()).collect();
        let keygen = t.elapsed() / n;
        let chains: Vec<_> = csrs
            .iter()
            .map(|(_, csr)| ca.sign_csr(csr, None, Duration::from_secs(3600)).unwrap())
            .collect();
        let t = std::time::Instant::now();
        for ((key, _), chain) in csrs.iter().zip(&chains) {
            WorkloadCert::from_response(&id(), key, chain, SystemTime::now()).unwrap();
        }
        let check = t.elapsed() / n;
        eprintln!(
            "P-256 keygen + CSR: {keygen:?}/identity; response checks + CertifiedKey: {check:?}/certificate"
        );
    }

    #[test]
    fn refuses_bad_responses() {
        let ca = TestCa::new("t");
        let other_ca = TestCa::new("t");
        let (key, csr) = generate_csr(&id()).unwrap();
        let (other_key, other_csr) = generate_csr(&id()).unwrap();
        let _ = other_key;
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now();
        let good = ca.sign_csr(&csr, None, hour).unwrap();
        let cases: Vec<(&str, Vec<String>, SystemTime)> = vec![
            ("empty cert_chain", vec![], now),
            ("only one element", vec![good[0].clone()], now),
            (
                "cert_chain[0] holds no certificate",
                vec!["garbage".into(), good[1].clone()],
                now,
            ),
            (
                "cert_chain[1] is not PEM certificates",
                vec![
                    good[0].clone(),
                    "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into(),
                ],
                now,
            ),
            (
                "is not an X.509 certificate",
                vec![
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                    good[1].clone(),
                ],
                now,
            ),
            (
                "is for spiffe://cluster.local/ns/demo/sa/db, not the requested",
                ca.sign_csr(&csr, Some("spiffe://cluster.local/ns/demo/sa/db"), hour)
                    .unwrap(),
                now,
            ),
            (
                "not the key this node generated",
                ca.sign_csr(&other_csr, None, hour).unwrap(),
                now,
            ),
            (
                "not signed by the root",
                vec![good[0].clone(), other_ca.root_pem.clone()],
                now,
            ),
            ("expired", good.clone(), now + 2 * hour),
            ("not valid before", good.clone(), now - 2 * hour),
        ];
        for (want, chain, at) in cases {
            let e = WorkloadCert::from_response(&id(), &key, &chain, at)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?}, got {e}");
            assert!(e.contains("spiffe://cluster.local/ns/demo/sa/web"), "{e}");
        }
    }
}
