//! The minimal view of the cluster the validator needs: Services and pod labels.
use std::collections::BTreeMap;

use serde_json::Value;

/// Kubernetes cluster domain used to expand short hosts.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A Kubernetes Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterService {
    pub namespace: String,
    pub name: String,
    /// `spec.selector`; empty = selects no pods (endpoints managed elsewhere).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<u16>,
}

/// A pod, or a workload template that will create pods (Deployment, StatefulSet, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Services by `(namespace, name)` and pods.
///
/// Reference checks need data: with no Services at all, "unknown host" is not reported; with no
/// pods at all, "subset selects no pods" is not reported (validating mesh YAML on its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub services: BTreeMap<(String, String), ClusterService>,
    pub pods: Vec<ClusterPod>,
}

impl ClusterView {
    /// Adds (or replaces) a Service.
    pub fn add_service(&mut self, svc: ClusterService) {
        self.services
            .insert((svc.namespace.clone(), svc.name.clone()), svc);
    }

    /// Adds a pod.
    pub fn add_pod(&mut self, pod: ClusterPod) {
        self.pods.push(pod);
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ClusterService> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The Service a fully-qualified `name.namespace.svc.cluster.local` host refers to.
    pub fn service_for_fqdn(&self, fqdn: &str) -> Option<&ClusterService> {
        let rest = fqdn.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
        let (name, namespace) = rest.split_once('.')?;
        if namespace.contains('.') {
            return None;
        }
        self.service(namespace, name)
    }

    /// Pods in `namespace` whose labels include all of `selectors` (each a label map, ANDed).
    pub fn pods_matching<'a>(
        &'a self,
        namespace: &'a str,
        selectors: &'a [&'a BTreeMap<String, String>],
    ) -> impl Iterator<Item = &'a ClusterPod> + 'a {
        self.pods.iter().filter(move |p| {
            p.namespace == namespace
                && selectors
                    .iter()
                    .all(|sel| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        })
    }

    /// Adds what `obj` contributes: a v1 Service, a Pod, or a workload template
    /// (Deployment/StatefulSet/DaemonSet/ReplicaSet/Job: the template labels count as a pod).
    /// Returns whether the object was used.
    pub fn add_object(&mut self, obj: &Value) -> bool {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let meta = obj.get("metadata");
        let name = str_at(meta, "name");
        let namespace = match str_at(meta, "namespace") {
            ns if ns.is_empty() => "default".to_string(),
            ns => ns,
        };
        match (api_version, kind) {
            ("v1", "Service") => {
                let spec = obj.get("spec");
                let ports = spec
                    .and_then(|s| s.get("ports"))
                    .and_then(Value::as_array)
                    .map(|ports| {
                        ports
                            .iter()
                            .filter_map(|p| p.get("port").and_then(Value::as_u64))
                            .filter_map(|p| u16::try_from(p).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                self.add_service(ClusterService {
                    namespace,
                    name,
                    selector: labels_at(spec.and_then(|s| s.get("selector"))),
                    ports,
                });
                true
            }
            ("v1", "Pod") => {
                self.add_pod(ClusterPod {
                    namespace,
                    name,
                    labels: labels_at(meta.and_then(|m| m.get("labels"))),
                });
                true
            }
            (
                "apps/v1" | "batch/v1",
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job",
            ) => {
                let labels = obj
                    .get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("metadata"))
                    .and_then(|m| m.get("labels"));
                self.add_pod(ClusterPod {
                    namespace,
                    name: format!("{}/{name}", kind.to_ascii_lowercase()),
                    labels: labels_at(labels),
                });
                true
            }
            _ => false,
        }
    }
}

fn str_at(v: Option<&Value>, key: &str) -> String {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn labels_at(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `host` as Istio resolves it in `namespace`: a name without dots becomes
/// `host.namespace.svc.cluster.local`; anything else is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

/// Whether `host` is matched by the (possibly wildcard) `pattern` (`*.example.com`, `*`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}
