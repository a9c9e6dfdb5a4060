//! One `mesh-agent` per lab node, as the DaemonSet would run it: in the node's network namespace
//! (hostNetwork), in its own cgroup `weft-lab/<node>/agent` (outside `kubepods`), pinning under
//! `/sys/fs/bpf/weft/<node>/`, reading the lab's cluster view.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Lab,
    pod::{self, PodContext},
    state::{LabState, NodeState, node_pod_gateway},
};

pub fn agent_cgroup(node: &NodeState) -> std::path::PathBuf {
    node.cgroup.join("agent")
}

/// Pids in the node's agent cgroup.
pub fn agent_pids(node: &NodeState) -> Vec<i32> {
    std::fs::read_to_string(agent_cgroup(node).join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub fn start(lab: &Lab, st: &LabState, node: &NodeState) -> anyhow::Result<i32> {
    if !agent_pids(node).is_empty() {
        bail!("the agent of {} is already running", node.name);
    }
    let cg = agent_cgroup(node);
    std::fs::create_dir_all(&cg).with_context(|| format!("creating {}", cg.display()))?;
    let mut cmd = Command::new(st.bin_dir.join("mesh-agent"));
    cmd.args(["run", "--node", &node.name])
        .arg("--pods-cgroup")
        .arg(node.cgroup.join("kubepods"))
        .arg("--state-dir")
        .arg(lab.agent_state_dir(&node.name))
        .args(["--probe-source", &node_pod_gateway(node.index).to_string()])
        .args(["--probe-source", &node.underlay_ip.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("WEFT_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        );
    // The agent subscribes to the lab's controller (WEFT_LAB_AGENT_SOURCE=files reads the cluster
    // view directly instead, for debugging an agent without a controller).
    if std::env::var("WEFT_LAB_AGENT_SOURCE").as_deref() == Ok("files") {
        cmd.arg("--lab-cluster-dir").arg(lab.cluster_dir());
    } else {
        cmd.args([
            "--controller",
            &format!("https://{CONTROLLER_IP}:{}", mesh_common_xds_port()),
        ])
        .arg("--ca-root")
        .arg(controller_root(lab))
        .arg("--token-file")
        .arg(lab.node_token_file(&node.name));
    }
    if std::env::var("WEFT_LAB_FAST_PATH").as_deref() == Ok("1") {
        cmd.arg("--fast-path");
    }
    // Short-lived workload certificates (rotation tests), e.g. `6s`.
    if let Ok(ttl) = std::env::var("WEFT_LAB_CERT_TTL") {
        cmd.args(["--cert-ttl", &ttl]);
    }
    let ctx = PodContext {
        cgroup: cg,
        netns: node.netns.clone(),
        etc: None,
        hostname: None,
    };
    let pid = pod::spawn(cmd, &ctx, &lab.agent_log(&node.name))?;
    // Ready when its pods.json appears (first reconcile done), bounded.
    let ready = lab.agent_state_dir(&node.name).join("pods.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if agent_pids(node).is_empty() {
            let log = std::fs::read_to_string(lab.agent_log(&node.name)).unwrap_or_default();
            bail!("the agent of {} exited at start:\n{log}", node.name);
        }
        if Instant::now() > deadline {
            bail!(
                "the agent of {} did not become ready within 10 s (see {})",
                node.name,
                lab.agent_log(&node.name).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// Stops the node's agent with `signal` (SIGTERM: graceful; SIGKILL: a crash), waiting for it.
pub fn stop(lab: &Lab, node: &NodeState, signal: nix::sys::signal::Signal) -> anyhow::Result<bool> {
    let pids = agent_pids(node);
    if pids.is_empty() {
        return Ok(false);
    }
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent_pids(node).is_empty() {
        if Instant::now() > deadline {
            bail!("the agent of {} did not stop", node.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(lab.agent_state_dir(&node.name).join("pods.json"));
    Ok(true)
}

/// The controller's address: the underlay gateway (netns `wlab-underlay`), reachable from every node.
pub const CONTROLLER_IP: std::net::Ipv4Addr = super::state::UNDERLAY_GW;

fn mesh_common_xds_port() -> u16 {
    15010
}

pub fn controller_cgroup(lab: &Lab) -> std::path::PathBuf {
    lab.cgroup_root.join("controller")
}

pub fn controller_pids(lab: &Lab) -> Vec<i32> {
    std::fs::read_to_string(controller_cgroup(lab).join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Per-node bootstrap tokens (random), written once per lab: the controller's map and one file per
/// node for its agent.
pub fn write_tokens(lab: &Lab, st: &LabState) -> anyhow::Result<()> {
    let mut map = String::new();
    for n in &st.nodes {
        let token = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .replace('-', "");
        map.push_str(&format!("{}: {token}\n", n.name));
        let f = lab.node_token_file(&n.name);
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&f, &token)?;
    }
    std::fs::write(lab.controller_tokens(), map)?;
    Ok(())
}

/// Starts mesh-controller in files mode on the lab's cluster view, in the underlay netns.
pub fn start_controller(lab: &Lab, st: &LabState) -> anyhow::Result<i32> {
    if !controller_pids(lab).is_empty() {
        bail!("the lab's controller is already running");
    }
    let cg = controller_cgroup(lab);
    std::fs::create_dir_all(&cg).with_context(|| format!("creating {}", cg.display()))?;
    let mut cmd = Command::new(st.bin_dir.join("mesh-controller"));
    cmd.args(["run", "--files"])
        .arg(lab.cluster_dir())
        .args([
            "--listen",
            &format!("{CONTROLLER_IP}:15010"),
            "--admin",
            &format!("{CONTROLLER_IP}:15014"),
        ])
        .arg("--node-tokens")
        .arg(lab.controller_tokens())
        .args(["--ca-listen", &format!("{CONTROLLER_IP}:15012")])
        .arg("--ca-dir")
        .arg(lab.dir.join("ca"))
        // TLS on :15010/:15012 with a certificate from the mesh root for the address agents use.
        .args(["--tls-san", &CONTROLLER_IP.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("WEFT_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
        );
    let ctx = PodContext {
        cgroup: cg,
        netns: super::net::UNDERLAY_NS.into(),
        etc: None,
        hostname: None,
    };
    let pid = pod::spawn(cmd, &ctx, &lab.controller_log())?;
    // The agents verify the controller with the mesh root it writes on first start.
    let root = controller_root(lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.exists() {
        if controller_pids(lab).is_empty() {
            let log = std::fs::read_to_string(lab.controller_log()).unwrap_or_default();
            bail!("the controller exited at start:\n{log}");
        }
        if Instant::now() > deadline {
            bail!(
                "the controller wrote no CA root ({}) within 10 s",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// The mesh root the lab's controller generated (agents' `--ca-root`).
pub fn controller_root(lab: &Lab) -> std::path::PathBuf {
    lab.dir.join("ca").join("root-cert.pem")
}

pub fn stop_controller(lab: &Lab, signal: nix::sys::signal::Signal) -> anyhow::Result<bool> {
    let pids = controller_pids(lab);
    if pids.is_empty() {
        return Ok(false);
    }
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller_pids(lab).is_empty() {
        if Instant::now() > deadline {
            bail!("the controller did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}
