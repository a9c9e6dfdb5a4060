//! The lab's network: namespaces, veths, routes, and kube-proxy-style service DNAT (nftables).
//!
//! Topology (all inside namespaces the lab creates):
//! - `wlab-underlay` holds bridge `br0` (10.100.0.254/24); node *i* attaches with 10.100.0.(10+i).
//! - `wlab-<node>` is a node; its pods' CIDR is 10.244.<i>.0/24, routes to other nodes' pod CIDRs go
//!   via their underlay address; forwarding is on.
//! - each pod netns has `eth0` with its /32 and a default route via 10.244.<i>.1, which the node
//!   side of every pod veth carries (Calico-style point-to-point, no bridge).
use std::{net::Ipv4Addr, process::Command};

use anyhow::Context as _;

use super::state::{NodeState, UNDERLAY_GW, node_pod_gateway};
use crate::util::{output, sh};

pub const PREFIX: &str = "wlab-";
pub const UNDERLAY_NS: &str = "wlab-underlay";
pub const NFT_TABLE: &str = "weft-kube-proxy";

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    sh("ip", args).map(|_| ())
}

pub fn netns_add(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Lab namespaces currently present (by prefix).
pub fn lab_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

pub fn netns_del(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Runs `prog args` inside a netns without changing mounts (unlike `ip netns exec`).
pub fn in_netns(netns: &str, prog: &str, args: &[&str]) -> anyhow::Result<String> {
    output(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(prog)
            .args(args),
    )
}

pub fn create_underlay() -> anyhow::Result<()> {
    netns_add(UNDERLAY_NS)?;
    ip(&["-n", UNDERLAY_NS, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        UNDERLAY_NS,
        "addr",
        "add",
        &format!("{UNDERLAY_GW}/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", UNDERLAY_NS, "link", "set", "br0", "up"])
}

pub fn create_node(node: &NodeState) -> anyhow::Result<()> {
    let ns = node.netns.as_str();
    netns_add(ns)?;
    let ul = format!("ul-{}", node.index);
    ip(&[
        "-n",
        UNDERLAY_NS,
        "link",
        "add",
        &ul,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])?;
    ip(&["-n", UNDERLAY_NS, "link", "set", &ul, "master", "br0", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/24", node.underlay_ip),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    // Like a real node: a default route (to the underlay gateway), so the node's own connects to
    // ClusterIPs get a route before the OUTPUT hook DNATs them.
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &UNDERLAY_GW.to_string(),
    ])?;
    in_netns(ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    // Replies to a pod's own /32 come back through its veth; loose reverse-path filtering.
    in_netns(ns, "sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"])?;
    Ok(())
}

/// Routes from `node` to every other node's pod CIDR via the underlay.
pub fn node_routes(node: &NodeState, all: &[NodeState]) -> anyhow::Result<()> {
    for other in all.iter().filter(|o| o.name != node.name) {
        ip(&[
            "-n",
            &node.netns,
            "route",
            "replace",
            &other.pod_cidr,
            "via",
            &other.underlay_ip.to_string(),
        ])?;
    }
    Ok(())
}

/// Wires a pod netns to its node with a veth pair.
pub fn create_pod_net(
    node: &NodeState,
    pod_ns: &str,
    host_veth: &str,
    pod_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let gw = node_pod_gateway(node.index).to_string();
    let node_ns = node.netns.as_str();
    netns_add(pod_ns)?;
    ip(&[
        "-n", node_ns, "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns",
        pod_ns,
    ])?;
    ip(&[
        "-n",
        pod_ns,
        "addr",
        "add",
        &format!("{pod_ip}/32"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n", pod_ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    ip(&[
        "-n", pod_ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    ip(&[
        "-n",
        node_ns,
        "addr",
        "add",
        &format!("{gw}/32"),
        "dev",
        host_veth,
    ])?;
    ip(&["-n", node_ns, "link", "set", host_veth, "up"])?;
    ip(&[
        "-n",
        node_ns,
        "route",
        "replace",
        &format!("{pod_ip}/32"),
        "dev",
        host_veth,
    ])
}

/// One Service port as kube-proxy programs it.
pub struct ServiceRule {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// (pod IP, target port)
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// Renders the node's kube-proxy table: ClusterIP:port → random endpoint (DNAT, both for traffic
/// forwarded from pods and for the node's own connects); no endpoints → TCP reset / ICMP reject.
pub fn render_nft(rules: &[ServiceRule]) -> String {
    let mut dnat = String::new();
    let mut reject = String::new();
    for r in rules {
        let proto = r.protocol.to_ascii_lowercase();
        if r.endpoints.is_empty() {
            let with = if proto == "tcp" { "with tcp reset" } else { "" };
            reject.push_str(&format!(
                "    ip daddr {} {proto} dport {} reject {with}\n",
                r.cluster_ip, r.port
            ));
            continue;
        }
        let map: Vec<String> = r
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, (ip, p))| format!("{i} : {ip} . {p}"))
            .collect();
        dnat.push_str(&format!(
            "    ip daddr {} {proto} dport {} dnat to numgen random mod {} map {{ {} }}\n",
            r.cluster_ip,
            r.port,
            r.endpoints.len(),
            map.join(", ")
        ));
    }
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain services {{\n{dnat}  }}\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n    jump services\n  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n  chain no-endpoints {{\n{reject}  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    jump no-endpoints\n  }}\n  chain local-out {{\n    type filter hook output priority 0; policy accept;\n    jump no-endpoints\n  }}\n}}\n"
    )
}

/// Atomically replaces the node's kube-proxy table.
pub fn apply_nft(node_ns: &str, ruleset: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node_ns}"))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning nft (run `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nft in {node_ns} failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_rules() {
        let s = render_nft(&[
            ServiceRule {
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 8080,
                protocol: "TCP".into(),
                endpoints: vec![
                    (Ipv4Addr::new(10, 244, 1, 2), 8080),
                    (Ipv4Addr::new(10, 244, 2, 2), 9090),
                ],
            },
            ServiceRule {
                cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
                port: 80,
                protocol: "TCP".into(),
                endpoints: vec![],
            },
        ]);
        assert!(s.contains("ip daddr 10.96.0.10 tcp dport 8080 dnat to numgen random mod 2 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.2 . 9090 }"));
        assert!(s.contains("ip daddr 10.96.0.11 tcp dport 80 reject with tcp reset"));
        assert!(s.starts_with("table ip weft-kube-proxy\ndelete table ip weft-kube-proxy\n"));
    }
}
