//! The tunnel's certificates: the agent's certificate manager for the pods' identities, the trust
//! bundle from the config stream.
use std::sync::Arc;

use rustls::{RootCertStore, sign::CertifiedKey};

use crate::{
    hbone::{BoxFuture, CertSource},
    identity::{CertManager, Identity},
    state::mesh::SharedMesh,
};

pub struct AgentCerts {
    pub manager: Arc<CertManager>,
    pub mesh: Arc<SharedMesh>,
}

impl CertSource for AgentCerts {
    fn cert<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Arc<CertifiedKey>, String>> {
        Box::pin(async move {
            let id = Identity::parse(identity).map_err(|e| e.to_string())?;
            self.manager
                .fetch(&id)
                .await
                .map(|c| c.certified_key())
                .map_err(|e| e.to_string())
        })
    }

    fn roots(&self) -> Option<Arc<RootCertStore>> {
        self.mesh.load().roots.clone()
    }
}
