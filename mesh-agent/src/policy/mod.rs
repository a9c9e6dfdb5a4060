//! Inbound policy: Istio AuthorizationPolicy (L4) and PeerAuthentication, evaluated for a
//! destination workload. Pure (no I/O, no clocks): built from the streamed resources and queried
//! per connection.
//!
//! - [`authz`]: AuthorizationPolicy evaluation (CUSTOM → DENY → ALLOW, AUDIT, dry-run), with
//!   Istio's fail-safe for HTTP attributes on TCP connections.
//! - [`peerauthn`]: the effective mTLS mode (STRICT / PERMISSIVE / DISABLE) for a workload port.
//! - [`PolicyIndex`]: the policies by `namespace/name`, looked up with `Workload.policies` (the
//!   controller already selected which policies apply; see `mesh-controller/src/ir/authz.rs`).
//!
//! Malformed input (a bad CIDR, a non-numeric `destination.port` condition, an unknown enum value,
//! a resource whose name disagrees with its message) makes [`PolicyIndex::from_resources`] fail
//! with a [`PolicyError`] naming the resource and the field: the agent NACKs the update and keeps
//! its previous policies. Input the controller emits on purpose but that is not a valid Istio
//! policy (an empty `from`/`to` entry, e.g. after it dropped ports that were not numbers) is not an
//! error: it fails closed (see [`authz`]).
//!
//! Deviations from Istio, all fail-closed:
//! - a policy named in `Workload.policies` that the agent has not received denies every connection
//!   ([`PolicyIndex::check`]) until it arrives (ztunnel would evaluate without it);
//! - [`PolicyIndex::check`] also enforces PeerAuthentication STRICT (a plaintext connection to a
//!   STRICT port is denied), as ztunnel does by converting STRICT into a DENY policy.
use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
};

use mesh_common::proto::config::{
    Authorization, PeerAuthn, PolicyScope, Resource, Workload, resource::Kind,
};

pub mod authz;
pub mod peerauthn;

pub use authz::{Conn, Decision, Peer};
pub use peerauthn::Mode;

/// A policy resource the agent refuses (→ NACK).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct PolicyError {
    /// The resource name (`authz/<namespace>/<name>`, `peerauthn/<namespace>/<name>`).
    pub resource: String,
    /// The offending field, e.g. `rules[0].from[1].ip_blocks[2]`.
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A workload's labels, whichever map holds them (the proto's `HashMap`, the agent's `BTreeMap`).
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Kubernetes `matchLabels`: every selector label is present with the same value.
pub fn selector_matches<S: BuildHasher, L: Labels + ?Sized>(
    selector: &HashMap<String, String, S>,
    labels: &L,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()))
}

/// The policies of one update, by `namespace/name` (as `Workload.policies` names them).
#[derive(Debug, Default)]
pub struct PolicyIndex {
    authz: BTreeMap<String, authz::Policy>,
    peer_authn: BTreeMap<String, PeerAuthn>,
}

// === impl PolicyIndex ===

impl PolicyIndex {
    /// Indexes the `authz/…` and `peerauthn/…` resources (others are ignored); the first malformed
    /// one fails the whole update.
    pub fn from_resources<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> Result<Self, PolicyError> {
        let mut me = Self::default();
        for r in resources {
            match &r.kind {
                Some(Kind::Authorization(a)) => {
                    let key = key(&r.name, "authz/", &a.namespace, &a.name)?;
                    me.authz.insert(key, authz::Policy::compile(&r.name, a)?);
                }
                Some(Kind::PeerAuthn(p)) => {
                    let key = key(&r.name, "peerauthn/", &p.namespace, &p.name)?;
                    peerauthn::validate(&r.name, p)?;
                    me.peer_authn.insert(key, p.clone());
                }
                _ => {}
            }
        }
        Ok(me)
    }

    /// Number of indexed policies (both kinds).
    pub fn len(&self) -> usize {
        self.authz.len() + self.peer_authn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The AuthorizationPolicies and PeerAuthentications of `policies` (`Workload.policies`), in
    /// name order. The controller's list is authoritative; a policy whose own scope cannot include
    /// the workload (another namespace, a selector its labels do not match) is left out, which only
    /// matters while a workload's list and the policies are out of step.
    pub fn for_workload<L: Labels + ?Sized>(
        &self,
        policies: &[String],
        namespace: &str,
        labels: &L,
    ) -> (Vec<&Authorization>, Vec<&PeerAuthn>) {
        let authz = self
            .authz_policies(policies, namespace, labels)
            .into_iter()
            .map(authz::Policy::proto)
            .collect();
        (authz, self.peer_authns(policies, namespace, labels))
    }

    /// The compiled AuthorizationPolicies of `policies`, in name order.
    pub fn authz_policies<L: Labels + ?Sized>(
        &self,
        policies: &[String],
        namespace: &str,
        labels: &L,
    ) -> Vec<&authz::Policy> {
        let mut out: Vec<&authz::Policy> = policies
            .iter()
            .filter_map(|n| self.authz.get(n))
            .filter(|p| {
                let a = p.proto();
                in_scope(a.scope, &a.namespace, &a.selector, namespace, labels)
            })
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out.dedup_by(|a, b| a.name() == b.name());
        out
    }

    /// The PeerAuthentications of `policies`, in name order.
    pub fn peer_authns<L: Labels + ?Sized>(
        &self,
        policies: &[String],
        namespace: &str,
        labels: &L,
    ) -> Vec<&PeerAuthn> {
        let mut out: Vec<(&String, &PeerAuthn)> = policies
            .iter()
            .filter_map(|n| self.peer_authn.get_key_value(n))
            .filter(|(_, p)| {
                // A selector PeerAuthentication only applies in its own namespace (root-namespace
                // ones with a selector are not compiled at all).
                let own_ns =
                    p.scope != PolicyScope::WorkloadSelector as i32 || p.namespace == namespace;
                own_ns && in_scope(p.scope, &p.namespace, &p.selector, namespace, labels)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// Names in `policies` the agent holds neither an AuthorizationPolicy nor a PeerAuthentication
    /// for.
    pub fn missing<'p>(&self, policies: &'p [String]) -> Vec<&'p str> {
        policies
            .iter()
            .filter(|n| !self.authz.contains_key(*n) && !self.peer_authn.contains_key(*n))
            .map(String::as_str)
            .collect()
    }

    /// The inbound decision for a connection to a workload: a listed policy not received yet
    /// denies; PeerAuthentication STRICT denies a plaintext connection (no peer); then
    /// [`authz::evaluate`].
    pub fn check<L: Labels + ?Sized>(
        &self,
        policies: &[String],
        namespace: &str,
        labels: &L,
        conn: &Conn,
    ) -> Decision {
        let missing = self.missing(policies);
        if !missing.is_empty() {
            return Decision::deny(format!(
                "policy not received yet: {} (fail closed)",
                missing.join(", ")
            ));
        }
        if conn.peer.is_none() {
            let pas = self.peer_authns(policies, namespace, labels);
            let eff = peerauthn::effective(pas, labels, conn.dst_port);
            if eff.mode == Mode::Strict {
                return Decision::deny(format!(
                    "plaintext connection to port {} refused: PeerAuthentication STRICT ({})",
                    conn.dst_port,
                    eff.decided_by.as_deref().unwrap_or("mesh default")
                ));
            }
        }
        authz::evaluate(self.authz_policies(policies, namespace, labels), conn)
    }

    /// [`Self::check`] for a streamed workload.
    pub fn check_workload(&self, w: &Workload, conn: &Conn) -> Decision {
        self.check(&w.policies, &w.namespace, &w.labels, conn)
    }

    /// The effective mTLS mode of a workload port (see [`peerauthn::effective`]).
    pub fn mtls_mode<L: Labels + ?Sized>(
        &self,
        policies: &[String],
        namespace: &str,
        labels: &L,
        port: u16,
    ) -> Mode {
        peerauthn::effective(self.peer_authns(policies, namespace, labels), labels, port).mode
    }
}

/// `authz/<ns>/<name>` → `<ns>/<name>`, checked against the message's own namespace and name.
fn key(resource: &str, prefix: &str, ns: &str, name: &str) -> Result<String, PolicyError> {
    let key = resource.strip_prefix(prefix).unwrap_or(resource);
    if key != format!("{ns}/{name}") {
        return Err(PolicyError::new(
            resource,
            "name",
            format!("the message is {ns}/{name}, the resource name says {key}"),
        ));
    }
    Ok(key.to_string())
}

/// Whether a policy's own scope can include a workload (MESH and TARGET_REFS: trust the list).
fn in_scope<S: BuildHasher, L: Labels + ?Sized>(
    scope: i32,
    policy_ns: &str,
    selector: &HashMap<String, String, S>,
    namespace: &str,
    labels: &L,
) -> bool {
    match PolicyScope::try_from(scope) {
        Ok(PolicyScope::Namespace) => policy_ns == namespace,
        Ok(PolicyScope::WorkloadSelector) => selector_matches(selector, labels),
        Ok(PolicyScope::Mesh | PolicyScope::TargetRefs) => true,
        // Rejected by from_resources.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;
