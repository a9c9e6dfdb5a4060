//! A workload as the agent knows it — the shape `--local-config` files use and the controller will
//! stream: already decided (meshed or not) by whoever produced it.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Pod UID (finds the pod's cgroup `…/pod<UID>`).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Node the pod is scheduled on; workloads of other nodes are ignored.
    pub node: String,
    pub ip: Ipv4Addr,
    #[serde(default = "default_sa")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Capture this pod's traffic.
    #[serde(default)]
    pub mesh: bool,
    /// Same-node sk_msg fast path for this pod.
    #[serde(default)]
    pub fast_path: bool,
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    /// IPv4 CIDRs (`10.0.0.0/8`) whose outbound connections are not captured.
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<String>,
    /// SPIFFE ID; empty = `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
    #[serde(default)]
    pub identity: String,
}

impl Workload {
    /// The pod's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        if self.identity.is_empty() {
            format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                self.namespace, self.service_account
            )
        } else {
            self.identity.clone()
        }
    }
}

/// Istio's canonical workload name: `service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the pod name (telemetry `*_workload` labels).
pub fn canonical_name(labels: &BTreeMap<String, String>, pod_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| pod_name.to_string())
}

fn default_sa() -> String {
    "default".into()
}

/// A `--local-config` file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

/// Parses `a.b.c.d/len` into (network address, prefix length).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 CIDR"))?;
    let len: u8 = len
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    if len > 32 {
        return Err(format!("{s:?}: prefix length above 32"));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(parse_cidr("10.1.2.3"), Ok((Ipv4Addr::new(10, 1, 2, 3), 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((Ipv4Addr::new(0, 0, 0, 0), 0)));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("x/8").is_err());
    }

    #[test]
    fn local_config_rejects_unknown_fields() {
        let ok = "workloads:\n- {uid: u1, name: a, namespace: n, node: node-a, ip: 10.244.1.2, mesh: true}\n";
        let c: LocalConfig = serde_yaml::from_str(ok).unwrap();
        assert_eq!(c.workloads[0].service_account, "default");
        let bad = "workloads:\n- {uid: u1, name: a, namespace: n, node: node-a, ip: 10.244.1.2, mesh: true, bogus: 1}\n";
        let e = serde_yaml::from_str::<LocalConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
