//! `lab status`: nodes, pods, services.
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{reconcile::service_endpoints, state::LabState};

pub fn print(st: &LabState, as_json: bool) -> anyhow::Result<()> {
    let nodes: Vec<_> = st
        .nodes
        .iter()
        .map(|n| {
            json!({"name": n.name, "underlay_ip": n.underlay_ip.to_string(), "pod_cidr": n.pod_cidr,
                   "netns": n.netns, "pods": st.pods.values().filter(|p| p.node == n.name).count()})
        })
        .collect();
    let pods: Vec<_> = st
        .pods
        .values()
        .map(|p| {
            json!({"namespace": p.namespace, "name": p.name, "uid": p.uid, "node": p.node, "ip": p.ip.to_string(),
                   "phase": p.phase(), "labels": p.labels, "annotations": p.annotations,
                   "service_account": p.service_account, "netns": p.netns, "cgroup": p.cgroup,
                   "owner": p.owner})
        })
        .collect();
    let mut services = vec![];
    for o in st.objects_of("Service") {
        let svc: Service = serde_json::from_value(o.value.clone())?;
        let ip = st
            .cluster_ips
            .get(&format!("{}/{}", o.key.namespace, o.key.name))
            .map(|i| i.to_string())
            .unwrap_or_else(|| "None".into());
        let ports: Vec<_> = service_endpoints(st, &svc, &o.key.namespace)
            .into_iter()
            .map(|(name, port, proto, eps)| {
                json!({"name": name, "port": port, "protocol": proto,
                       "endpoints": eps.iter().map(|(ip, p, pod)| json!({"ip": ip.to_string(), "port": p, "pod": pod})).collect::<Vec<_>>()})
            })
            .collect();
        services.push(json!({"namespace": o.key.namespace, "name": o.key.name, "cluster_ip": ip, "ports": ports}));
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"nodes": nodes, "pods": pods, "services": services})
            )?
        );
        return Ok(());
    }
    println!("NODES");
    println!(
        "  {:<10} {:<14} {:<16} {:>4}",
        "NAME", "UNDERLAY", "POD CIDR", "PODS"
    );
    for n in &st.nodes {
        let count = st.pods.values().filter(|p| p.node == n.name).count();
        println!(
            "  {:<10} {:<14} {:<16} {:>4}",
            n.name,
            n.underlay_ip.to_string(),
            n.pod_cidr,
            count
        );
    }
    println!("PODS");
    println!(
        "  {:<12} {:<36} {:<14} {:<8} {:<8} LABELS",
        "NAMESPACE", "NAME", "IP", "NODE", "PHASE"
    );
    for p in st.pods.values() {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {:<12} {:<36} {:<14} {:<8} {:<8} {}",
            p.namespace,
            p.name,
            p.ip.to_string(),
            p.node,
            p.phase(),
            labels.join(",")
        );
    }
    println!("SERVICES");
    println!(
        "  {:<12} {:<16} {:<14} PORTS → ENDPOINTS",
        "NAMESPACE", "NAME", "CLUSTER-IP"
    );
    for s in &services {
        let ports: Vec<String> = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let eps: Vec<String> = p["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{}:{}", e["ip"].as_str().unwrap_or(""), e["port"]))
                    .collect();
                format!(
                    "{}/{} → [{}]",
                    p["port"],
                    p["protocol"].as_str().unwrap_or(""),
                    eps.join(" ")
                )
            })
            .collect();
        println!(
            "  {:<12} {:<16} {:<14} {}",
            s["namespace"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or(""),
            s["cluster_ip"].as_str().unwrap_or(""),
            ports.join("; ")
        );
    }
    Ok(())
}
