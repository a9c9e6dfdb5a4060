//! The lab's cluster view (`<lab dir>/cluster/*.yaml`, Kubernetes objects as `kubectl get -o yaml`
//! shows them): Namespaces and Pods become workloads with Weft's opt-in rules applied —
//! namespace annotation `weft.dev/mesh: enabled`, pod annotation `weft.dev/mesh: disabled` opts out;
//! `weft.dev/fast-path: enabled` on the namespace or pod; pod annotations
//! `weft.dev/exclude-outbound-ports`, `weft.dev/exclude-inbound-ports` (comma-separated ports) and
//! `weft.dev/exclude-outbound-cidrs` (comma-separated IPv4 CIDRs).
use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

use super::{Snapshot, SourceError};
use crate::state::workload::Workload;

pub const MESH: &str = "weft.dev/mesh";
pub const FAST_PATH: &str = "weft.dev/fast-path";
pub const EXCLUDE_OUT_PORTS: &str = "weft.dev/exclude-outbound-ports";
pub const EXCLUDE_IN_PORTS: &str = "weft.dev/exclude-inbound-ports";
pub const EXCLUDE_OUT_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";

pub fn read(dir: &Path) -> Result<Snapshot, SourceError> {
    let rd = std::fs::read_dir(dir).map_err(|source| SourceError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut objects = vec![];
    let mut problems = vec![];
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pod-") || name.starts_with("namespace-")) || !name.ends_with(".yaml")
        {
            continue;
        }
        match std::fs::read_to_string(e.path()) {
            Ok(t) => match serde_yaml::from_str::<Value>(&t) {
                Ok(v) => objects.push(v),
                Err(err) => problems.push(format!("{name}: {err}")),
            },
            // A file removed between listing and reading: the object is gone.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => problems.push(format!("{name}: {err}")),
        }
    }
    let (workloads, more) = workloads_from_objects(&objects);
    problems.extend(more);
    Ok(Snapshot {
        workloads,
        problems,
        mesh: None,
    })
}

fn annotations(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn ports(s: Option<&String>, what: &str, pod: &str, problems: &mut Vec<String>) -> Vec<u16> {
    let mut out = vec![];
    for p in s
        .map(|s| s.split(','))
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => out.push(n),
            _ => problems.push(format!("pod {pod}: annotation {what}: {p:?} is not a port")),
        }
    }
    out
}

/// Pure translation (table-tested): Kubernetes objects → workloads.
pub fn workloads_from_objects(objects: &[Value]) -> (Vec<Workload>, Vec<String>) {
    let mut ns_ann: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for o in objects.iter().filter(|o| o["kind"] == "Namespace") {
        if let Some(n) = o.pointer("/metadata/name").and_then(Value::as_str) {
            ns_ann.insert(n.to_string(), annotations(o));
        }
    }
    let mut out = vec![];
    let mut problems = vec![];
    for p in objects.iter().filter(|o| o["kind"] == "Pod") {
        let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).map(str::to_string);
        let (Some(name), Some(uid)) = (s("/metadata/name"), s("/metadata/uid")) else {
            continue;
        };
        let namespace = s("/metadata/namespace").unwrap_or_else(|| "default".into());
        let pod = format!("{namespace}/{name}");
        let Some(ip) = s("/status/podIP").and_then(|ip| ip.parse().ok()) else {
            continue; // not running yet
        };
        let ann = annotations(p);
        let nsa = ns_ann.get(&namespace).cloned().unwrap_or_default();
        let mesh = nsa.get(MESH).map(String::as_str) == Some("enabled")
            && ann.get(MESH).map(String::as_str) != Some("disabled");
        let fast_path = [ann.get(FAST_PATH), nsa.get(FAST_PATH)]
            .into_iter()
            .flatten()
            .any(|v| v == "enabled");
        let labels = p
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Workload {
            uid,
            name,
            namespace,
            node: s("/spec/nodeName").unwrap_or_default(),
            ip,
            service_account: s("/spec/serviceAccountName").unwrap_or_else(|| "default".into()),
            labels,
            mesh,
            fast_path,
            exclude_outbound_ports: ports(
                ann.get(EXCLUDE_OUT_PORTS),
                EXCLUDE_OUT_PORTS,
                &pod,
                &mut problems,
            ),
            exclude_inbound_ports: ports(
                ann.get(EXCLUDE_IN_PORTS),
                EXCLUDE_IN_PORTS,
                &pod,
                &mut problems,
            ),
            exclude_outbound_cidrs: ann
                .get(EXCLUDE_OUT_CIDRS)
                .map(|s| {
                    s.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            identity: String::new(),
        });
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ann: Value) -> Value {
        json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "annotations": ann, "labels": {"app": name}},
               "spec": {"nodeName": "node-a", "serviceAccountName": "sa"}, "status": {"podIP": "10.244.1.9"}})
    }

    #[test]
    fn opt_in_table() {
        let objs = vec![
            json!({"kind": "Namespace", "metadata": {"name": "meshed", "annotations": {MESH: "enabled", FAST_PATH: "enabled"}}}),
            json!({"kind": "Namespace", "metadata": {"name": "plain"}}),
            pod("a", "meshed", json!({})),
            pod("b", "meshed", json!({MESH: "disabled"})),
            pod("c", "plain", json!({})),
            pod("d", "plain", json!({MESH: "enabled"})),
            pod(
                "e",
                "meshed",
                json!({EXCLUDE_OUT_PORTS: "5432, 6379", EXCLUDE_IN_PORTS: "x", EXCLUDE_OUT_CIDRS: "10.0.0.0/8"}),
            ),
        ];
        let (ws, problems) = workloads_from_objects(&objs);
        let by: BTreeMap<&str, &Workload> = ws.iter().map(|w| (w.name.as_str(), w)).collect();
        let cases = [
            ("a", true),
            ("b", false),
            ("c", false),
            ("d", false),
            ("e", true),
        ];
        for (name, mesh) in cases {
            assert_eq!(by[name].mesh, mesh, "pod {name}");
        }
        assert!(by["a"].fast_path);
        assert_eq!(by["e"].exclude_outbound_ports, vec![5432, 6379]);
        assert_eq!(
            by["e"].exclude_outbound_cidrs,
            vec!["10.0.0.0/8".to_string()]
        );
        assert_eq!(by["a"].service_account, "sa");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("meshed/e"));
    }
}
