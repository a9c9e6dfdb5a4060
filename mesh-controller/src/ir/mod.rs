//! The IR: the user's route and policy resources (Istio VirtualService, DestinationRule,
//! AuthorizationPolicy, PeerAuthentication; Gateway API HTTPRoute/GRPCRoute with Service parents)
//! compiled into the config stream's resolved wire types. Pure functions, table-tested.
//!
//! - [`routes`]: `RouteTable` per destination service (`routes/<ns>/<svc>`).
//! - [`destination`]: `DestinationPolicy` per service (`destination/<ns>/<svc>`).
//! - [`authz`]: `Authorization` per AuthorizationPolicy (`authz/<ns>/<name>`).
//! - [`peerauthn`]: `PeerAuthn` per PeerAuthentication (`peerauthn/<ns>/<name>`).
//!
//! Objects that fail to parse are skipped here (validation reports them). `exportTo` is treated as
//! `*` (every resource is visible mesh-wide). Objects are considered oldest first
//! (`creationTimestamp`, then `namespace/name`; objects without a timestamp, as in files mode,
//! sort first by name).
pub mod authz;
pub mod destination;
pub mod peerauthn;
pub mod routes;

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh_common::proto::config::Resource;

use crate::{
    crd::{GoDuration, MeshResource, parse_go_duration, parse_resource},
    model::{Model, Service},
};

/// Istio's default root namespace (mesh-wide policies live there).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Kubernetes cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Which workloads a policy applies to, resolved against the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applicability {
    /// `None`: every namespace (mesh-wide); `Some(ns)`: only workloads of `ns`.
    pub namespace: Option<String>,
    /// `None`: every workload (of the namespace); `Some(sels)`: workloads whose labels include all
    /// of at least one selector (`Some([])` = none).
    pub selectors: Option<Vec<BTreeMap<String, String>>>,
}

impl Applicability {
    /// Whether a workload in `namespace` with `labels` is in scope.
    pub fn applies(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        match &self.selectors {
            None => true,
            Some(sels) => sels
                .iter()
                .any(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v))),
        }
    }
}

/// A compiled policy resource with its scope (AuthorizationPolicy or PeerAuthentication).
#[derive(Clone, Debug, PartialEq)]
pub struct ScopedPolicy {
    /// `namespace/name`, as listed in `Workload.policies`.
    pub name: String,
    pub resource: Arc<Resource>,
    pub applies: Applicability,
}

/// Everything compiled from one model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ir {
    /// Route tables and destination policies: every node receives all of them.
    pub shared: Vec<Arc<Resource>>,
    /// Authorization and PeerAuthn resources: only nodes with an in-scope workload receive them.
    pub policies: Vec<ScopedPolicy>,
}

/// Compiles the model's route and policy resources.
pub fn compile(model: &Model, root_namespace: &str) -> Ir {
    let services = model.services();
    let mut shared: Vec<Arc<Resource>> = vec![];
    let route_objs: Vec<MeshResource> = ["VirtualService", "HTTPRoute", "GRPCRoute"]
        .into_iter()
        .flat_map(|k| typed(model, k))
        .collect();
    shared.extend(
        routes::route_tables(&sorted(route_objs), &services)
            .into_iter()
            .map(Arc::new),
    );
    shared.extend(
        destination::destination_policies(&typed(model, "DestinationRule"), &services)
            .into_iter()
            .map(Arc::new),
    );
    let mut policies = authz::authorizations(
        &typed(model, "AuthorizationPolicy"),
        &services,
        root_namespace,
    );
    policies.extend(peerauthn::peer_authns(
        &typed(model, "PeerAuthentication"),
        root_namespace,
    ));
    Ir { shared, policies }
}

/// The typed objects of `kind`, oldest first; those that fail to parse are skipped.
pub fn typed(model: &Model, kind: &str) -> Vec<MeshResource> {
    sorted(
        model
            .of(kind)
            .filter_map(|v| parse_resource(v)?.ok())
            .collect(),
    )
}

/// Sorts oldest first: `creationTimestamp`, then `namespace/name`.
pub fn sorted(mut objs: Vec<MeshResource>) -> Vec<MeshResource> {
    objs.sort_by_key(age_key);
    objs
}

/// The precedence key among objects: (creationTimestamp, namespace, name).
pub fn age_key(r: &MeshResource) -> (Option<Time>, String, String) {
    (
        r.metadata().creation_timestamp.clone(),
        r.namespace().to_string(),
        r.name().to_string(),
    )
}

/// `Kind/namespace/name`, as origins and sources name objects.
pub fn object_ref(r: &MeshResource) -> String {
    format!("{}/{}/{}", r.kind(), r.namespace(), r.name())
}

/// `<svc>.<ns>.svc.cluster.local`.
pub fn fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// `host` as Istio resolves it in the namespace of the object that names it: a short name (no
/// dot) is `<host>.<namespace>.svc.cluster.local`; anything else is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        fqdn(host, namespace)
    }
}

/// `(namespace, service)` of a cluster-local FQDN.
pub fn service_of_fqdn(host: &str) -> Option<(String, String)> {
    let rest = host.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (name, namespace) = rest.split_once('.')?;
    if namespace.contains('.') || name.is_empty() || namespace.is_empty() || name.contains('*') {
        return None;
    }
    Some((namespace.to_string(), name.to_string()))
}

/// The services a resolved host refers to, with 0 for an exact host and 1 for a wildcard (an
/// exact host takes precedence, as in Istio). Exact hosts need not exist yet (apply order does not
/// matter); wildcards (`*.ns.svc.cluster.local`, `*`) expand over the model's services.
pub fn target_services(host: &str, services: &[Service]) -> Vec<((String, String), u8)> {
    if let Some(s) = service_of_fqdn(host) {
        return vec![(s, 0)];
    }
    if !host.starts_with('*') {
        return vec![];
    }
    services
        .iter()
        .filter(|s| host_matches(host, &fqdn(&s.name, &s.namespace)))
        .map(|s| ((s.namespace.clone(), s.name.clone()), 1))
        .collect()
}

/// Whether `host` is matched by the (possibly wildcard) `pattern` (`*.example.com`, `*`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// A duration in milliseconds; `None` if unset, malformed or zero ("0s" disables in Istio).
pub fn millis(d: Option<&GoDuration>) -> Option<u64> {
    d.and_then(|d| parse_go_duration(&d.0))
        .map(|d| d.as_millis() as u64)
        .filter(|ms| *ms > 0)
}

/// A Go duration string in milliseconds (`0s` allowed: returns `Some(0)`).
pub fn millis_str(s: &str) -> Option<u64> {
    parse_go_duration(s).map(|d| d.as_millis() as u64)
}

#[cfg(test)]
pub(crate) mod testutil {
    use serde_json::Value;

    use crate::crd::{MeshResource, parse_resource};

    /// Parses YAML documents into typed resources, panicking on errors (tests only).
    pub fn resources(yaml: &str) -> Vec<MeshResource> {
        yaml.split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| {
                let v: Value = serde_yaml::from_str(d).expect("yaml");
                parse_resource(&v).expect("mesh kind").expect("valid")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_resolution() {
        let cases = [
            ("reviews", "demo", "reviews.demo.svc.cluster.local"),
            ("reviews.other", "demo", "reviews.other"),
            (
                "reviews.other.svc.cluster.local",
                "demo",
                "reviews.other.svc.cluster.local",
            ),
            ("*.demo.svc.cluster.local", "x", "*.demo.svc.cluster.local"),
        ];
        for (h, ns, want) in cases {
            assert_eq!(resolve_host(h, ns), want, "{h} in {ns}");
        }
        assert_eq!(
            service_of_fqdn("reviews.demo.svc.cluster.local"),
            Some(("demo".into(), "reviews".into()))
        );
        assert_eq!(service_of_fqdn("api.example.com"), None);
    }

    #[test]
    fn applicability() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let mesh = Applicability {
            namespace: None,
            selectors: None,
        };
        let ns = Applicability {
            namespace: Some("demo".into()),
            selectors: None,
        };
        let sel = Applicability {
            namespace: Some("demo".into()),
            selectors: Some(vec![l("app", "a")]),
        };
        let none = Applicability {
            namespace: None,
            selectors: Some(vec![]),
        };
        let cases = [
            (&mesh, "x", l("app", "b"), true),
            (&ns, "demo", l("app", "b"), true),
            (&ns, "x", l("app", "b"), false),
            (&sel, "demo", l("app", "a"), true),
            (&sel, "demo", l("app", "b"), false),
            (&none, "demo", l("app", "a"), false),
        ];
        for (a, n, labels, want) in cases {
            assert_eq!(a.applies(n, &labels), want, "{a:?} {n} {labels:?}");
        }
    }
}
