//! `PeerAuthn`s: PeerAuthentications with their scope resolved.
//!
//! Istio: no selector in the root namespace = mesh-wide; no selector elsewhere = the namespace; a
//! selector = matching workloads of the namespace. Root-namespace policies **with** a selector are
//! ignored (not compiled). `portLevelMtls` is keyed by workload port and only honoured with a
//! selector. `DISABLE` is passed through (the validator reports that Weft treats it as
//! PERMISSIVE).
use std::sync::Arc;

use mesh_common::proto::config::{PeerAuthn, PolicyScope, Resource, peer_authn, resource::Kind};

use super::{Applicability, ScopedPolicy};
use crate::crd::{
    MeshResource,
    security::{MtlsMode, PeerMtls},
};

/// Compiles every PeerAuthentication (oldest first).
pub fn peer_authns(pas: &[MeshResource], root_namespace: &str) -> Vec<ScopedPolicy> {
    pas.iter()
        .filter_map(|obj| {
            let MeshResource::PeerAuthentication(pa) = obj else {
                return None;
            };
            let ns = obj.namespace();
            let name = obj.name();
            let root = ns == root_namespace;
            let selector = pa
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone().unwrap_or_default());
            let (scope, applies) = match (&selector, root) {
                (Some(_), true) => return None,
                (Some(sel), false) => (
                    PolicyScope::WorkloadSelector,
                    Applicability {
                        namespace: Some(ns.to_string()),
                        selectors: Some(vec![sel.clone()]),
                    },
                ),
                (None, true) => (
                    PolicyScope::Mesh,
                    Applicability {
                        namespace: None,
                        selectors: None,
                    },
                ),
                (None, false) => (
                    PolicyScope::Namespace,
                    Applicability {
                        namespace: Some(ns.to_string()),
                        selectors: None,
                    },
                ),
            };
            let port_level_mtls = if selector.is_some() {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .map(|(p, m)| (*p, mode(Some(m)) as i32))
                    .collect()
            } else {
                Default::default()
            };
            Some(ScopedPolicy {
                name: format!("{ns}/{name}"),
                resource: Arc::new(Resource {
                    name: format!("peerauthn/{ns}/{name}"),
                    kind: Some(Kind::PeerAuthn(PeerAuthn {
                        name: name.into(),
                        namespace: ns.into(),
                        scope: scope as i32,
                        selector: selector.unwrap_or_default().into_iter().collect(),
                        mode: mode(pa.spec.mtls.as_ref()) as i32,
                        port_level_mtls,
                    })),
                }),
                applies,
            })
        })
        .collect()
}

fn mode(m: Option<&PeerMtls>) -> peer_authn::Mode {
    match m.and_then(|m| m.mode) {
        None | Some(MtlsMode::Unset) => peer_authn::Mode::Unset,
        Some(MtlsMode::Disable) => peer_authn::Mode::Disable,
        Some(MtlsMode::Permissive) => peer_authn::Mode::Permissive,
        Some(MtlsMode::Strict) => peer_authn::Mode::Strict,
    }
}

#[cfg(test)]
mod tests;
