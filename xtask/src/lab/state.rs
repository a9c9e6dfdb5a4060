//! The lab's persistent state (`<lab dir>/state.json`): applied objects and what runs for them.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::manifest::ObjKey;

/// Address plan (only ever configured inside the lab's own namespaces).
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 254);
pub const SERVICE_FIRST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn node_underlay_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 0, 10 + index)
}
pub fn node_pod_gateway(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index, 1)
}

#[derive(Serialize, Deserialize, Default)]
pub struct LabState {
    /// Directory of the workspace binaries put first on the pods' PATH.
    pub bin_dir: PathBuf,
    pub nodes: Vec<NodeState>,
    /// Applied objects as the API server would store them.
    pub objects: BTreeMap<String, StoredObject>,
    /// Running pods by `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
    /// ClusterIPs by `namespace/name`.
    pub cluster_ips: BTreeMap<String, Ipv4Addr>,
    pub next_veth: u32,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct StoredObject {
    pub key: ObjKey,
    pub value: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct NodeState {
    pub name: String,
    /// 1-based; the node's pod CIDR is 10.244.<index>.0/24.
    pub index: u8,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: String,
    pub cgroup: PathBuf,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub host_veth: String,
    pub cgroup: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// Owning Deployment name, if any.
    pub owner: Option<String>,
    /// Hash of the pod spec (Deployment: of the template) it was created from.
    pub spec_hash: String,
    /// Pod spec as applied (JSON), for the cluster view.
    pub spec: serde_json::Value,
    pub containers: Vec<ContainerState>,
    pub created_unix: u64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ContainerState {
    pub name: String,
    pub pid: i32,
    pub log: PathBuf,
}

impl PodState {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// `Running` while every container process lives, else `Failed`.
    pub fn phase(&self) -> &'static str {
        if self
            .containers
            .iter()
            .all(|c| process_alive(c.pid, &self.cgroup))
        {
            "Running"
        } else {
            "Failed"
        }
    }
}

/// True if `pid` is alive and still inside `cgroup` (guards against pid reuse).
pub fn process_alive(pid: i32, cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().any(|l| l.trim() == pid.to_string()))
        .unwrap_or(false)
}

impl LabState {
    pub fn load(path: &Path) -> anyhow::Result<Option<LabState>> {
        match std::fs::read(path) {
            Ok(b) => {
                Ok(Some(serde_json::from_slice(&b).with_context(|| {
                    format!("corrupt lab state {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn objects_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a StoredObject> + 'a {
        self.objects.values().filter(move |o| o.key.kind == kind)
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        ns == "default"
            || ns == "kube-system"
            || self.objects_of("Namespace").any(|o| o.key.name == ns)
    }
}

pub fn object_id(key: &ObjKey) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}
