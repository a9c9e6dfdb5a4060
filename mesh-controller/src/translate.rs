//! Pure translation: the model → exactly what one node needs (its workloads with the mesh decision
//! made, and the services with their endpoints), as named config-stream resources. Table-tested.
use std::{collections::BTreeMap, sync::Arc};

use mesh_common::proto::config::{
    Endpoint, Resource, Service, ServicePort, TrustBundle, Workload, resource::Kind,
};

use crate::model::{Model, Pod};

/// Opt-in annotations (namespace, pod).
pub const MESH: &str = "weft.dev/mesh";
pub const FAST_PATH: &str = "weft.dev/fast-path";
pub const EXCLUDE_OUT_PORTS: &str = "weft.dev/exclude-outbound-ports";
pub const EXCLUDE_IN_PORTS: &str = "weft.dev/exclude-inbound-ports";
pub const EXCLUDE_OUT_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";
/// Name of the trust bundle resource.
pub const TRUST_BUNDLE: &str = "trust-bundle";

/// One node's config: resources by name. Shared (`Arc`): every node references the same service
/// resources, so memory does not grow with nodes × services.
pub type NodeConfig = BTreeMap<String, Arc<Resource>>;

fn ports(s: Option<&String>) -> Vec<u32> {
    s.map(|s| {
        s.split(',')
            .filter_map(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p > 0)
            .map(u32::from)
            .collect()
    })
    .unwrap_or_default()
}

/// The workload a pod becomes, with Weft's opt-in rules: namespace `weft.dev/mesh: enabled`, pod
/// not `weft.dev/mesh: disabled`.
pub fn workload(model: &Model, pod: &Pod, trust_domain: &str) -> Option<Workload> {
    let ip = pod.ip?;
    let nsa = model.namespace_annotations(&pod.namespace);
    let mesh = nsa.get(MESH).map(String::as_str) == Some("enabled")
        && pod.annotations.get(MESH).map(String::as_str) != Some("disabled");
    let fast_path = [pod.annotations.get(FAST_PATH), nsa.get(FAST_PATH)]
        .into_iter()
        .flatten()
        .any(|v| v == "enabled");
    Some(Workload {
        uid: pod.uid.clone(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        node: pod.node.clone(),
        ip: ip.to_string(),
        service_account: pod.service_account.clone(),
        labels: pod
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mesh,
        fast_path,
        exclude_outbound_ports: ports(pod.annotations.get(EXCLUDE_OUT_PORTS)),
        exclude_inbound_ports: ports(pod.annotations.get(EXCLUDE_IN_PORTS)),
        exclude_outbound_cidrs: pod
            .annotations
            .get(EXCLUDE_OUT_CIDRS)
            .map(|s| {
                s.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        identity: format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            pod.namespace, pod.service_account
        ),
        policies: vec![],
    })
}

/// Every node's config, computed once per model change.
pub fn all_nodes(model: &Model, trust_domain: &str) -> BTreeMap<String, NodeConfig> {
    let pods = model.pods();
    // Index running pods by (namespace, label, value): a selector only scans the pods of its first
    // label instead of every pod.
    let mut by_label: std::collections::HashMap<(&str, &str, &str), Vec<&Pod>> =
        std::collections::HashMap::new();
    for p in pods.iter().filter(|p| p.running && p.ip.is_some()) {
        for (k, v) in &p.labels {
            by_label
                .entry((p.namespace.as_str(), k.as_str(), v.as_str()))
                .or_default()
                .push(p);
        }
    }
    let mut services: Vec<Arc<Resource>> = vec![];
    for svc in model.services() {
        let mut endpoints = vec![];
        if let Some((k0, v0)) = svc.selector.iter().next() {
            let candidates = by_label
                .get(&(svc.namespace.as_str(), k0.as_str(), v0.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for p in candidates {
                if !svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)) {
                    continue;
                }
                let mut pmap = std::collections::HashMap::new();
                for sp in &svc.ports {
                    let target = match &sp.target {
                        Ok(n) => Some(*n),
                        Err(name) => p.named_ports.get(name).copied(),
                    };
                    if let Some(t) = target {
                        pmap.insert(u32::from(sp.port), u32::from(t));
                    }
                }
                endpoints.push(Endpoint {
                    workload_uid: p.uid.clone(),
                    ip: p.ip.map(|i| i.to_string()).unwrap_or_default(),
                    node: p.node.clone(),
                    ports: pmap,
                });
            }
        }
        endpoints.sort_by(|a, b| a.workload_uid.cmp(&b.workload_uid));
        let name = format!("service/{}/{}", svc.namespace, svc.name);
        services.push(Arc::new(Resource {
            name,
            kind: Some(Kind::Service(Service {
                hostname: format!("{}.{}.svc.cluster.local", svc.name, svc.namespace),
                addresses: svc
                    .cluster_ip
                    .map(|ip| vec![ip.to_string()])
                    .unwrap_or_default(),
                ports: svc
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: u32::from(p.port),
                        target_port: p.target.clone().map(u32::from).unwrap_or(0),
                        protocol: p.protocol.clone(),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
                endpoints,
                name: svc.name,
                namespace: svc.namespace,
            })),
        }));
    }
    let mut out: BTreeMap<String, NodeConfig> = BTreeMap::new();
    for node in model
        .of("Node")
        .filter_map(|n| n.pointer("/metadata/name").and_then(|v| v.as_str()))
    {
        out.entry(node.to_string()).or_default();
    }
    for p in &pods {
        if !p.node.is_empty() {
            out.entry(p.node.clone()).or_default();
        }
    }
    let mut pods_by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        pods_by_node.entry(p.node.as_str()).or_default().push(p);
    }
    for (node, cfg) in out.iter_mut() {
        for p in pods_by_node.get(node.as_str()).into_iter().flatten() {
            if let Some(w) = workload(model, p, trust_domain) {
                cfg.insert(
                    format!("workload/{}", w.uid),
                    Arc::new(Resource {
                        name: format!("workload/{}", w.uid),
                        kind: Some(Kind::Workload(w)),
                    }),
                );
            }
        }
        for s in &services {
            cfg.insert(s.name.clone(), s.clone());
        }
    }
    out
}

/// The trust bundle resource every node receives (the CA's roots).
pub fn trust_bundle(trust_domain: &str, roots_pem: Vec<String>) -> Arc<Resource> {
    Arc::new(Resource {
        name: TRUST_BUNDLE.into(),
        kind: Some(Kind::TrustBundle(TrustBundle {
            trust_domain: trust_domain.into(),
            roots_pem,
        })),
    })
}

/// Adds the (shared) trust bundle to every node's config.
pub fn with_trust_bundle(
    mut configs: BTreeMap<String, NodeConfig>,
    bundle: &Arc<Resource>,
) -> BTreeMap<String, NodeConfig> {
    for cfg in configs.values_mut() {
        cfg.insert(TRUST_BUNDLE.into(), bundle.clone());
    }
    configs
}

/// What changed between two configs of a node: (upserted resources, removed names).
pub fn diff(old: &NodeConfig, new: &NodeConfig) -> (Vec<Resource>, Vec<String>) {
    let upserts = new
        .iter()
        // Same allocation ⇒ unchanged without a deep compare (services are shared across nodes).
        .filter(|(k, v)| !old.get(*k).is_some_and(|o| Arc::ptr_eq(o, v) || o == *v))
        .map(|(_, v)| Resource::clone(v))
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (upserts, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> Model {
        let mut m = Model::default();
        for v in [
            json!({"kind": "Namespace", "metadata": {"name": "demo", "annotations": {MESH: "enabled"}}}),
            json!({"kind": "Namespace", "metadata": {"name": "plain"}}),
            json!({"kind": "Node", "metadata": {"name": "node-c"}}),
            json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "demo", "uid": "ua", "labels": {"app": "b"}},
                   "spec": {"nodeName": "node-a", "serviceAccountName": "sa", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                   "status": {"phase": "Running", "podIP": "10.244.1.2"}}),
            json!({"kind": "Pod", "metadata": {"name": "o", "namespace": "demo", "uid": "uo", "annotations": {MESH: "disabled"}},
                   "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIP": "10.244.1.3"}}),
            json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "plain", "uid": "up", "labels": {"app": "b"}},
                   "spec": {"nodeName": "node-b"}, "status": {"phase": "Running", "podIP": "10.244.2.2"}}),
            json!({"kind": "Pod", "metadata": {"name": "pending", "namespace": "demo", "uid": "un"}, "spec": {"nodeName": "node-b"}, "status": {"phase": "Pending"}}),
            json!({"kind": "Service", "metadata": {"name": "b", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "b"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        ] {
            m.insert(v);
        }
        m
    }

    fn workloads(cfg: &NodeConfig) -> Vec<(String, bool)> {
        cfg.values()
            .filter_map(|r| match &r.kind {
                Some(Kind::Workload(w)) => Some((w.name.clone(), w.mesh)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn per_node_table() {
        let all = all_nodes(&model(), "cluster.local");
        let cases: [(&str, Vec<(String, bool)>); 3] = [
            ("node-a", vec![("a".into(), true), ("o".into(), false)]),
            ("node-b", vec![("p".into(), false)]),
            ("node-c", vec![]),
        ];
        for (node, want) in cases {
            let mut got = workloads(&all[node]);
            got.sort();
            assert_eq!(got, want, "{node}");
            assert!(
                all[node].contains_key("service/demo/b"),
                "{node} gets the services"
            );
        }
        let Some(Kind::Service(svc)) = &all["node-a"]["service/demo/b"].kind else {
            panic!()
        };
        assert_eq!(svc.endpoints.len(), 1, "only same-namespace running pods");
        assert_eq!(
            svc.endpoints[0].ports[&80], 8080,
            "named targetPort resolved"
        );
        let Some(Kind::Workload(w)) = &all["node-a"]["workload/ua"].kind else {
            panic!()
        };
        assert_eq!(w.identity, "spiffe://cluster.local/ns/demo/sa/sa");
    }

    #[test]
    fn only_changed_nodes_get_a_delta() {
        let before = all_nodes(&model(), "td");
        let mut m = model();
        m.insert(json!({"kind": "Pod", "metadata": {"name": "o", "namespace": "demo", "uid": "uo"},
                        "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIP": "10.244.1.3"}}));
        let after = all_nodes(&m, "td");
        let (up, rm) = diff(&before["node-a"], &after["node-a"]);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].name, "workload/uo");
        assert!(rm.is_empty());
        assert_eq!(diff(&before["node-b"], &after["node-b"]), (vec![], vec![]));
    }
}
