//! Workload certificates on the agent (DESIGN.md §3 "Identity").
//!
//! Every pod runs as a SPIFFE identity `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//! The node proxy presents that identity's X.509 SVID when it tunnels for the pod.
//!
//! - **Keys never leave the node.** For every certificate request the agent generates a fresh
//!   ECDSA P-256 key here ([`cert::generate_csr`]), keeps it in memory only, and sends the
//!   controller's CA nothing but a PKCS#10 CSR whose single URI SAN is the identity. The CA
//!   (`istio.v1.auth.IstioCertificateService/CreateCertificate`, mesh-controller `ca.rs`) answers
//!   with `[leaf, …, root]`; the agent authenticates as its node with `authorization: Bearer
//!   <token>` (the same [`Credential`](crate::sources::controller::Credential) as the config
//!   stream, re-read on every request).
//! - **Every response is checked** ([`cert::WorkloadCert::from_response`]): the leaf's only URI SAN
//!   must be the identity asked for, its public key must be ours, it must be signed by the next
//!   certificate of the chain, and it must not be expired. Anything else is refused with a reason.
//! - **Cache and rotation** ([`manager::CertManager`]): certificates are cached per identity. The
//!   identities of the node's pods are [`track`](manager::CertManager::track)ed: each gets a task
//!   that prefetches its certificate and renews it at half-life (±10% jitter); a failed renewal is
//!   retried with jittered exponential backoff, never later than shortly before expiry, and the
//!   old certificate stays in use until it expires.
//! - **On demand, with priority**: [`fetch`](manager::CertManager::fetch) returns the cached
//!   certificate or requests one at once. Concurrent requests for one identity share a single CA
//!   call; background renewals go through a small semaphore that on-demand requests bypass, so a
//!   connection waiting for an identity never queues behind other identities' rotations.
//! - **Observability**: [`certs`](manager::CertManager::certs) lists every certificate with its
//!   state, expiry, last error and rotation/failure counters (admin endpoint, metrics); every
//!   failure is logged with the identity and the reason.
use std::fmt;

pub mod cert;
pub mod manager;
#[cfg(test)]
mod testca;

pub use cert::WorkloadCert;
pub use manager::{CertInfo, CertManager, CertState, ManagerConfig};

/// A SPIFFE workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` (no empty segments, no query or fragment).
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason: &str| IdentityError::InvalidIdentity {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("not a spiffe:// URI"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment is not allowed"));
        }
        let (td, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if td.is_empty() {
            return Err(bad("empty trust domain"));
        }
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Ok(Self::new(td, *ns, *sa)),
            _ => Err(bad(
                "expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a certificate could not be obtained. `Clone`: one failed CA call is reported to every
/// caller that was waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("{uri:?} is not a SPIFFE identity: {reason}")]
    InvalidIdentity { uri: String, reason: String },
    #[error("CA address {address:?}: {reason}")]
    CaAddress { address: String, reason: String },
    #[error("generating the key or CSR for {identity}: {reason}")]
    Csr { identity: String, reason: String },
    #[error("node credential: {0}")]
    Credential(String),
    #[error("CA refused or failed the request for {identity}: {code:?}: {message}")]
    Ca {
        identity: String,
        code: tonic::Code,
        message: String,
    },
    #[error("CA response for {identity} refused: {reason}")]
    InvalidResponse { identity: String, reason: String },
    #[error("building the rustls key for {identity}: {reason}")]
    Tls { identity: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let id = Identity::parse("spiffe://cluster.local/ns/demo/sa/web").unwrap();
        assert_eq!(id, Identity::new("cluster.local", "demo", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        assert_eq!(
            "spiffe://td/ns/a/sa/b".parse::<Identity>().unwrap(),
            Identity::new("td", "a", "b")
        );
        for (uri, why) in [
            ("https://cluster.local/ns/demo/sa/web", "not a spiffe"),
            ("spiffe://cluster.local", "no path"),
            ("spiffe:///ns/demo/sa/web", "empty trust domain"),
            ("spiffe://cluster.local/ns/demo", "expected"),
            ("spiffe://cluster.local/ns//sa/web", "expected"),
            ("spiffe://cluster.local/ns/demo/sa/web/x", "expected"),
            ("spiffe://cluster.local/ns/demo/sa/web?x=1", "query"),
        ] {
            let e = Identity::parse(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
