//! Pure translation: the model → exactly what one node needs (its workloads with the mesh decision
//! made and the policies that apply to them, the services with their endpoints, the route tables
//! and destination policies, and the authorization / peer authentication policies of its
//! workloads), as named config-stream resources. Table-tested.
use std::{collections::BTreeMap, sync::Arc};

use mesh_common::proto::config::{
    AddressBook, Endpoint, PeerAddress, Resource, Service, ServicePort, TrustBundle, Workload,
    resource::Kind,
};

use crate::{
    ir::{self, DEFAULT_ROOT_NAMESPACE},
    model::{Model, Pod},
};

/// Opt-in annotations (namespace, pod).
pub const MESH: &str = "weft.dev/mesh";
pub const FAST_PATH: &str = "weft.dev/fast-path";
pub const EXCLUDE_OUT_PORTS: &str = "weft.dev/exclude-outbound-ports";
pub const EXCLUDE_IN_PORTS: &str = "weft.dev/exclude-inbound-ports";
pub const EXCLUDE_OUT_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";
/// Name of the trust bundle resource.
pub const TRUST_BUNDLE: &str = "trust-bundle";

/// Parameters of the translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslateOptions<'a> {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: &'a str,
    /// Istio's root namespace: policies there without a selector are mesh-wide.
    pub root_namespace: &'a str,
}

impl<'a> TranslateOptions<'a> {
    /// `trust_domain` with the default root namespace (`istio-system`).
    pub fn new(trust_domain: &'a str) -> Self {
        Self {
            trust_domain,
            root_namespace: DEFAULT_ROOT_NAMESPACE,
        }
    }
}

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
/// Namespace opted in: `weft.dev/mesh: enabled`.
pub fn namespace_meshed(model: &Model, namespace: &str) -> bool {
    model
        .namespace_annotations(namespace)
        .get(MESH)
        .map(String::as_str)
        == Some("enabled")
}

/// Pod opted out: `weft.dev/mesh: disabled`.
pub fn pod_opted_out(pod: &Pod) -> bool {
    pod.annotations.get(MESH).map(String::as_str) == Some("disabled")
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`.
pub fn identity(trust_domain: &str, pod: &Pod) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        pod.namespace, pod.service_account
    )
}

pub fn workload(model: &Model, pod: &Pod, trust_domain: &str) -> Option<Workload> {
    let ip = pod.ip?;
    let nsa = model.namespace_annotations(&pod.namespace);
    let mesh = namespace_meshed(model, &pod.namespace) && !pod_opted_out(pod);
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
        identity: identity(trust_domain, pod),
        policies: vec![],
    })
}

/// Every node's config, computed once per model change.
///
/// Route tables and destination policies are shared by every node (one `Arc` each); an
/// authorization or peer authentication policy goes only to the nodes running a meshed workload
/// it applies to, and each meshed workload lists the policies that apply (`Workload.policies`).
pub fn all_nodes(model: &Model, opts: &TranslateOptions<'_>) -> BTreeMap<String, NodeConfig> {
    all_nodes_interned(model, opts, &mut Interner::default())
}

/// Keeps the previous translation's resources: an unchanged resource keeps its `Arc`, so the
/// per-node diff sees it unchanged by pointer instead of comparing it once per node.
#[derive(Default)]
pub struct Interner {
    previous: std::collections::HashMap<String, Arc<Resource>>,
    current: std::collections::HashMap<String, Arc<Resource>>,
}

impl Interner {
    /// The previous `Arc` when `r` is equal to it, else `r`.
    pub fn intern(&mut self, r: Arc<Resource>) -> Arc<Resource> {
        let kept = match self.previous.get(&r.name) {
            Some(old) if Arc::ptr_eq(old, &r) || **old == *r => old.clone(),
            _ => r,
        };
        self.current.insert(kept.name.clone(), kept.clone());
        kept
    }

    /// Ends one translation: what was not interned this time is forgotten.
    fn finish(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// [`all_nodes`] reusing the `Arc`s of unchanged resources from the previous call.
pub fn all_nodes_interned(
    model: &Model,
    opts: &TranslateOptions<'_>,
    interner: &mut Interner,
) -> BTreeMap<String, NodeConfig> {
    let out = translate_all(model, opts, interner);
    interner.finish();
    out
}

fn translate_all(
    model: &Model,
    opts: &TranslateOptions<'_>,
    interner: &mut Interner,
) -> BTreeMap<String, NodeConfig> {
    let trust_domain = opts.trust_domain;
    let mut compiled = ir::compile(model, opts.root_namespace);
    for r in compiled.shared.iter_mut() {
        *r = interner.intern(r.clone());
    }
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
    let mut mesh_by_ns: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
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
                let meshed = *mesh_by_ns
                    .entry(p.namespace.as_str())
                    .or_insert_with(|| namespace_meshed(model, &p.namespace))
                    && !pod_opted_out(p);
                endpoints.push(Endpoint {
                    mesh: meshed,
                    identity: identity(opts.trust_domain, p),
                    name: p.name.clone(),
                    workload_uid: p.uid.clone(),
                    ip: p.ip.map(|i| i.to_string()).unwrap_or_default(),
                    node: p.node.clone(),
                    ports: pmap,
                    labels: p
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                });
            }
        }
        endpoints.sort_by(|a, b| a.workload_uid.cmp(&b.workload_uid));
        let name = format!("service/{}/{}", svc.namespace, svc.name);
        services.push(
            interner.intern(Arc::new(Resource {
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
            })),
        );
    }
    // Pods some service selects are known to every node through the endpoints already.
    let behind_a_service: std::collections::HashSet<&str> = services
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Service(s)) => Some(s.endpoints.iter().map(|e| e.workload_uid.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
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
    // Every node's meshed pods that no service selects (reached by pod IP), one shared resource
    // per node, sent to all nodes.
    let mut address_books: Vec<Arc<Resource>> = vec![];
    for (node, pods) in &pods_by_node {
        let meshed: Vec<PeerAddress> = pods
            .iter()
            .filter(|p| p.running && !node.is_empty())
            .filter(|p| !behind_a_service.contains(p.uid.as_str()))
            .filter_map(|p| {
                let ip = p.ip?;
                let m = *mesh_by_ns
                    .entry(p.namespace.as_str())
                    .or_insert_with(|| namespace_meshed(model, &p.namespace))
                    && !pod_opted_out(p);
                m.then(|| PeerAddress {
                    uid: p.uid.clone(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    ip: ip.to_string(),
                    identity: identity(trust_domain, p),
                    workload: [
                        "service.istio.io/canonical-name",
                        "app.kubernetes.io/name",
                        "app",
                    ]
                    .iter()
                    .find_map(|k| p.labels.get(*k))
                    .cloned()
                    .unwrap_or_else(|| p.name.clone()),
                })
            })
            .collect();
        if !meshed.is_empty() {
            let name = format!("addresses/{node}");
            address_books.push(interner.intern(Arc::new(Resource {
                name: name.clone(),
                kind: Some(Kind::AddressBook(AddressBook {
                    node: node.to_string(),
                    pods: meshed,
                })),
            })));
        }
    }
    for (node, cfg) in out.iter_mut() {
        for p in pods_by_node.get(node.as_str()).into_iter().flatten() {
            if let Some(mut w) = workload(model, p, trust_domain) {
                if w.mesh {
                    for pol in ir::authz::applying(&compiled.policies, &p.namespace, &p.labels) {
                        w.policies.push(pol.name.clone());
                        cfg.insert(
                            pol.resource.name.clone(),
                            interner.intern(pol.resource.clone()),
                        );
                    }
                    w.policies.sort();
                    w.policies.dedup();
                }
                cfg.insert(
                    format!("workload/{}", w.uid),
                    interner.intern(Arc::new(Resource {
                        name: format!("workload/{}", w.uid),
                        kind: Some(Kind::Workload(w)),
                    })),
                );
            }
        }
        for s in services
            .iter()
            .chain(&compiled.shared)
            .chain(&address_books)
        {
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
        let all = all_nodes(&model(), &TranslateOptions::new("cluster.local"));
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
        assert!(svc.endpoints[0].mesh, "meshed pod: reached over HBONE");
        assert_eq!(
            svc.endpoints[0].identity,
            "spiffe://cluster.local/ns/demo/sa/sa"
        );
        let Some(Kind::Workload(w)) = &all["node-a"]["workload/ua"].kind else {
            panic!()
        };
        assert_eq!(w.identity, "spiffe://cluster.local/ns/demo/sa/sa");
    }

    #[test]
    fn interning_keeps_unchanged_resources_shared() {
        let mut interner = Interner::default();
        let opts = TranslateOptions::new("td");
        let a = all_nodes_interned(&model(), &opts, &mut interner);
        let b = all_nodes_interned(&model(), &opts, &mut interner);
        assert!(Arc::ptr_eq(
            &a["node-a"]["service/demo/b"],
            &b["node-b"]["service/demo/b"]
        ));
        assert!(Arc::ptr_eq(
            &a["node-a"]["workload/ua"],
            &b["node-a"]["workload/ua"]
        ));
        let mut m = model();
        m.insert(json!({"kind": "Service", "metadata": {"name": "b", "namespace": "demo"},
               "spec": {"clusterIP": "10.96.0.11", "selector": {"app": "b"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
        let c = all_nodes_interned(&m, &opts, &mut interner);
        assert!(!Arc::ptr_eq(
            &b["node-a"]["service/demo/b"],
            &c["node-a"]["service/demo/b"]
        ));
        assert_eq!(diff(&b["node-c"], &c["node-c"]).0.len(), 1);
    }

    #[test]
    fn only_changed_nodes_get_a_delta() {
        let before = all_nodes(&model(), &TranslateOptions::new("td"));
        let mut m = model();
        m.insert(json!({"kind": "Pod", "metadata": {"name": "o", "namespace": "demo", "uid": "uo"},
                        "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIP": "10.244.1.3"}}));
        let after = all_nodes(&m, &TranslateOptions::new("td"));
        // The pod joined the mesh: its node gets the workload, every node its node's address book.
        let (up, rm) = diff(&before["node-a"], &after["node-a"]);
        let mut names: Vec<&str> = up.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["addresses/node-a", "workload/uo"]);
        assert!(rm.is_empty());
        let (up, _) = diff(&before["node-b"], &after["node-b"]);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].name, "addresses/node-a");
        let Some(Kind::AddressBook(book)) = &up[0].kind else {
            panic!()
        };
        let ips: Vec<&str> = book.pods.iter().map(|p| p.ip.as_str()).collect();
        assert_eq!(
            ips,
            vec!["10.244.1.3"],
            "meshed pods no service selects (a is behind service b)"
        );
        // A change to a pod outside the mesh reaches its node only.
        let mut m2 = m.clone();
        m2.insert(json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "plain", "uid": "up", "labels": {"app": "c"}},
                         "spec": {"nodeName": "node-b"}, "status": {"phase": "Running", "podIP": "10.244.2.2"}}));
        let after2 = all_nodes(&m2, &TranslateOptions::new("td"));
        assert_eq!(diff(&after["node-a"], &after2["node-a"]), (vec![], vec![]));
        let (up, _) = diff(&after["node-b"], &after2["node-b"]);
        assert_eq!(
            up.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec!["workload/up"]
        );
    }

    /// The base model plus a meshed namespace `shop` with pods on node-a (app=web) and node-b
    /// (app=db), a VirtualService, a DestinationRule and policies.
    fn ir_model(weight: i32) -> Model {
        let mut m = model();
        let yaml = format!(
            "kind: Namespace\nmetadata: {{name: shop, annotations: {{weft.dev/mesh: enabled}}}}
---
kind: Pod
metadata: {{name: web, namespace: shop, uid: uw, labels: {{app: web}}}}
spec: {{nodeName: node-a}}
status: {{phase: Running, podIP: 10.244.1.9}}
---
kind: Pod
metadata: {{name: db, namespace: shop, uid: ud, labels: {{app: db, version: v1}}}}
spec: {{nodeName: node-b}}
status: {{phase: Running, podIP: 10.244.2.9}}
---
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{clusterIP: 10.96.0.20, selector: {{app: db}}, ports: [{{port: 5432}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db]
  http:
  - route:
    - {{destination: {{host: db, subset: v1}}, weight: {weight}}}
    - {{destination: {{host: db, subset: v2}}, weight: {rest}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec: {{host: db, subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-only, namespace: shop}}
spec: {{selector: {{matchLabels: {{app: db}}}}, rules: [{{}}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ns-wide, namespace: shop}}
spec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [bad]}}}}]}}]}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
",
            rest = 100 - weight
        );
        for doc in yaml.split("\n---\n") {
            m.insert(serde_yaml::from_str(doc).unwrap());
        }
        m
    }

    fn policies_of(cfg: &NodeConfig, uid: &str) -> Vec<String> {
        match &cfg[&format!("workload/{uid}")].kind {
            Some(Kind::Workload(w)) => w.policies.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ir_resources_per_node() {
        let all = all_nodes(&ir_model(90), &TranslateOptions::new("td"));
        for node in ["node-a", "node-b", "node-c"] {
            assert!(all[node].contains_key("routes/shop/db"), "{node}");
            assert!(all[node].contains_key("destination/shop/db"), "{node}");
        }
        assert!(
            Arc::ptr_eq(
                &all["node-a"]["routes/shop/db"],
                &all["node-c"]["routes/shop/db"]
            ),
            "route tables are shared across nodes"
        );
        let names = |node: &str, prefix: &str| -> Vec<String> {
            all[node]
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        };
        // node-a: web (shop) and a (demo, meshed); node-b: db (shop) and p (not meshed).
        assert_eq!(names("node-a", "authz/"), ["authz/shop/ns-wide"]);
        assert_eq!(
            names("node-b", "authz/"),
            ["authz/shop/db-only", "authz/shop/ns-wide"]
        );
        assert!(names("node-c", "authz/").is_empty(), "no workload in scope");
        assert_eq!(
            names("node-a", "peerauthn/"),
            ["peerauthn/istio-system/default"]
        );
        assert!(names("node-c", "peerauthn/").is_empty());
        assert_eq!(
            policies_of(&all["node-b"], "ud"),
            ["istio-system/default", "shop/db-only", "shop/ns-wide"]
        );
        assert_eq!(
            policies_of(&all["node-a"], "uw"),
            ["istio-system/default", "shop/ns-wide"]
        );
        assert_eq!(
            policies_of(&all["node-a"], "ua"),
            ["istio-system/default"],
            "mesh-wide policy in the root namespace"
        );
        assert!(policies_of(&all["node-b"], "up").is_empty(), "not meshed");
        let Some(Kind::Service(svc)) = &all["node-a"]["service/shop/db"].kind else {
            panic!()
        };
        assert_eq!(
            svc.endpoints[0].labels["version"], "v1",
            "endpoint labels for subsets"
        );
    }

    #[test]
    fn root_namespace_is_an_option() {
        let opts = TranslateOptions {
            trust_domain: "td",
            root_namespace: "mesh-root",
        };
        let all = all_nodes(&ir_model(90), &opts);
        assert!(
            !all["node-a"].contains_key("peerauthn/istio-system/default"),
            "istio-system is an ordinary namespace now: no workload in scope"
        );
        assert_eq!(policies_of(&all["node-a"], "uw"), ["shop/ns-wide"]);
        let ir = crate::ir::compile(&ir_model(90), "mesh-root");
        let pa = ir
            .policies
            .iter()
            .find(|p| p.name == "istio-system/default");
        assert_eq!(
            pa.map(|p| p.applies.namespace.clone()),
            Some(Some("istio-system".into()))
        );
    }

    #[test]
    fn weight_change_is_one_route_table_delta_per_node() {
        let opts = TranslateOptions::new("td");
        let before = all_nodes(&ir_model(90), &opts);
        let after = all_nodes(&ir_model(80), &opts);
        for node in ["node-a", "node-b", "node-c"] {
            let (up, rm) = diff(&before[node], &after[node]);
            let names: Vec<_> = up.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["routes/shop/db"], "{node}");
            assert!(rm.is_empty());
            let Some(Kind::RouteTable(t)) = &up[0].kind else {
                panic!()
            };
            let w: Vec<u32> = t.http[0].destinations.iter().map(|d| d.weight).collect();
            assert_eq!(w, [80, 20]);
        }
    }
}
