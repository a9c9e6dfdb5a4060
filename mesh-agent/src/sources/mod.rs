//! Where the agent learns its node's workloads from: a local file (`--local-config`, the shape the
//! controller will stream) or, in the lab, the lab's cluster view (`--lab-cluster-dir`).
pub mod controller;
pub mod lab;
pub mod local;

use crate::state::workload::Workload;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

/// A snapshot of workloads plus per-object problems (reported, not fatal).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub workloads: Vec<Workload>,
    pub problems: Vec<String>,
    /// Services, endpoints and the trust bundle (the controller source only).
    pub mesh: Option<std::sync::Arc<crate::state::mesh::MeshState>>,
}
