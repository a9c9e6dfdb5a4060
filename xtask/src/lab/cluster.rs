//! The cluster view: `<lab dir>/cluster/`, one YAML file per object, as `kubectl get -o yaml` would
//! show it — applied objects (Services with their ClusterIP), Pods with `spec.nodeName` and
//! `status.podIP`, EndpointSlices, Nodes. The mesh controller's `files` source reads this
//! directory, so it sees the lab exactly as its Kubernetes source sees a cluster.
use std::collections::BTreeSet;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{Lab, reconcile::service_endpoints, state::LabState};

pub fn write(lab: &Lab, st: &LabState) -> anyhow::Result<()> {
    let dir = lab.cluster_dir();
    std::fs::create_dir_all(&dir)?;
    let mut files: Vec<(String, serde_json::Value)> = vec![];
    for n in &st.nodes {
        files.push((
            format!("node-{}.yaml", n.name),
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                "spec": {"podCIDR": n.pod_cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": n.underlay_ip.to_string()}]},
            }),
        ));
    }
    for o in st.objects.values() {
        if o.key.kind == "Pod" {
            continue; // written from the running state below
        }
        let mut v = o.value.clone();
        if o.key.kind == "Service"
            && let Some(ip) = st
                .cluster_ips
                .get(&format!("{}/{}", o.key.namespace, o.key.name))
            && let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut())
        {
            spec.insert("clusterIP".into(), ip.to_string().into());
            spec.insert("clusterIPs".into(), json!([ip.to_string()]));
        }
        let ns = if o.key.namespace.is_empty() {
            "_".to_string()
        } else {
            o.key.namespace.clone()
        };
        files.push((file_name(&o.key.kind, &ns, &o.key.name), v));
        if o.key.kind == "Service" {
            let svc: Service = serde_json::from_value(o.value.clone()).context("stored Service")?;
            let eps = service_endpoints(st, &svc, &o.key.namespace);
            let mut endpoints: Vec<serde_json::Value> = vec![];
            let mut seen = BTreeSet::new();
            for (_, _, _, list) in &eps {
                for (ip, _, pod) in list {
                    if seen.insert(*ip) {
                        let node = st
                            .pods
                            .get(&format!("{}/{pod}", o.key.namespace))
                            .map(|p| p.node.clone())
                            .unwrap_or_default();
                        endpoints.push(json!({
                            "addresses": [ip.to_string()],
                            "conditions": {"ready": true},
                            "nodeName": node,
                            "targetRef": {"kind": "Pod", "namespace": o.key.namespace, "name": pod},
                        }));
                    }
                }
            }
            let ports: Vec<serde_json::Value> = eps
                .iter()
                .map(|(name, _, proto, list)| {
                    json!({"name": name, "protocol": proto, "port": list.first().map(|(_, p, _)| *p)})
                })
                .collect();
            files.push((
                file_name("EndpointSlice", &o.key.namespace, &o.key.name),
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {
                        "name": format!("{}-lab", o.key.name), "namespace": o.key.namespace,
                        "labels": {"kubernetes.io/service-name": o.key.name},
                    },
                    "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
                }),
            ));
        }
    }
    for p in st.pods.values() {
        let mut spec = p.spec.clone();
        if let Some(m) = spec.as_object_mut() {
            m.insert("nodeName".into(), p.node.clone().into());
            m.insert(
                "serviceAccountName".into(),
                p.service_account.clone().into(),
            );
        }
        let owner = p.owner.as_ref().map(
            |o| json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": o, "uid": ""}]),
        );
        files.push((
            file_name("Pod", &p.namespace, &p.name),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": p.name, "namespace": p.namespace, "uid": p.uid,
                    "labels": p.labels, "annotations": p.annotations, "ownerReferences": owner,
                },
                "spec": spec,
                "status": {"phase": p.phase(), "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}],
                           "hostIP": st.node(&p.node).map(|n| n.underlay_ip.to_string())},
            }),
        ));
    }
    let mut keep = BTreeSet::new();
    for (name, v) in files {
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_yaml::to_string(&v)?)?;
        std::fs::rename(&tmp, &path)?;
        keep.insert(name);
    }
    for e in std::fs::read_dir(&dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn file_name(kind: &str, ns: &str, name: &str) -> String {
    format!("{}-{ns}-{name}.yaml", kind.to_ascii_lowercase())
}
