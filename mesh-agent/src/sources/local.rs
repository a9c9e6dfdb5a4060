//! `--local-config FILE`: YAML or JSON `{workloads: [...]}` (see `state::workload::Workload`).
use std::path::Path;

use super::{Snapshot, SourceError};
use crate::state::workload::LocalConfig;

pub fn read(path: &Path) -> Result<Snapshot, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let cfg: LocalConfig = serde_yaml::from_str(&text).map_err(|e| SourceError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Snapshot {
        workloads: cfg.workloads,
        problems: vec![],
        mesh: None,
    })
}
