//! `--controller URL`: workloads streamed by mesh-controller (gRPC config stream). The client keeps
//! the last accepted config while disconnected (static stability) and resubscribes with jittered
//! backoff; every update is validated first and ACKed, or NACKed with the reason (then the previous
//! config stays in effect).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_common::proto::config::{
    Ack, AgentMessage, ConfigUpdate, Resource, Subscribe, agent_message::Msg,
    config_service_client::ConfigServiceClient, resource::Kind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::{Snapshot, SourceError};
use crate::state::workload::{Workload, parse_cidr};

#[derive(Default)]
struct Shared {
    resources: BTreeMap<String, Resource>,
    /// Bumped on every accepted update.
    generation: u64,
    version: String,
    received_any: bool,
}

#[derive(Clone)]
pub struct ControllerSource {
    shared: Arc<Mutex<Shared>>,
    url: String,
}

/// Converts a streamed workload, refusing bad fields (→ NACK).
pub fn workload_from_proto(w: &mesh_common::proto::config::Workload) -> Result<Workload, String> {
    let ip = w.ip.parse().map_err(|_| {
        format!(
            "workload {}/{}: ip {:?} is not IPv4",
            w.namespace, w.name, w.ip
        )
    })?;
    let port = |p: &u32| {
        u16::try_from(*p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("workload {}/{}: port {p} out of range", w.namespace, w.name))
    };
    for c in &w.exclude_outbound_cidrs {
        parse_cidr(c).map_err(|e| format!("workload {}/{}: {e}", w.namespace, w.name))?;
    }
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        node: w.node.clone(),
        ip,
        service_account: w.service_account.clone(),
        labels: w
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mesh: w.mesh,
        fast_path: w.fast_path,
        exclude_outbound_ports: w
            .exclude_outbound_ports
            .iter()
            .map(port)
            .collect::<Result<_, _>>()?,
        exclude_inbound_ports: w
            .exclude_inbound_ports
            .iter()
            .map(port)
            .collect::<Result<_, _>>()?,
        exclude_outbound_cidrs: w.exclude_outbound_cidrs.clone(),
        identity: w.identity.clone(),
    })
}

/// Applies an update to a copy of the resources; an invalid update changes nothing.
pub fn apply(
    current: &BTreeMap<String, Resource>,
    u: &ConfigUpdate,
) -> Result<BTreeMap<String, Resource>, String> {
    let mut next = if u.snapshot {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for name in &u.removed {
        next.remove(name);
    }
    for r in &u.resources {
        if let Some(Kind::Workload(w)) = &r.kind {
            workload_from_proto(w)?;
        }
        next.insert(r.name.clone(), r.clone());
    }
    crate::state::mesh::MeshState::from_resources(next.values())?;
    Ok(next)
}

/// The node credential presented to the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    Token(String),
    /// Read anew for every (re)subscription: a projected ServiceAccount token is rotated by the
    /// kubelet and expires.
    File(std::path::PathBuf),
}

impl Credential {
    /// The token to present now (a token file is read anew on every call).
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Token(t) => Ok(t.clone()),
            Self::File(f) => std::fs::read_to_string(f)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("reading the token file {}: {e}", f.display())),
        }
    }
}

impl From<&str> for Credential {
    fn from(t: &str) -> Self {
        Self::Token(t.to_string())
    }
}

/// TLS to the controller: its certificate must chain to the mesh root (the server name is taken
/// from the URL's host, IP addresses included).
pub fn tls_to_controller(root_pem: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root_pem))
}

impl ControllerSource {
    /// Starts the client task (needs a tokio runtime).
    pub fn spawn(url: String, node: String, credential: impl Into<Credential>) -> Self {
        Self::spawn_tls(url, node, credential, None)
    }

    /// [`Self::spawn`] verifying the controller's TLS certificate against `root_pem`
    /// (`https://` URLs).
    pub fn spawn_tls(
        url: String,
        node: String,
        credential: impl Into<Credential>,
        root_pem: Option<String>,
    ) -> Self {
        let credential = credential.into();
        let me = Self {
            shared: Arc::new(Mutex::new(Shared::default())),
            url,
        };
        let shared = me.shared.clone();
        let url = me.url.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = match credential.read() {
                    Ok(token) => session(&url, root_pem.as_deref(), &node, &token, &shared).await,
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(()) => warn!(controller = %url, "config stream ended; resubscribing"),
                    Err(e) => {
                        warn!(controller = %url, "config stream: {e}; keeping the last config, retrying")
                    }
                }
                let jitter = Duration::from_millis(
                    u64::from(std::process::id() % 50)
                        + (std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.subsec_millis())
                            .unwrap_or(0)
                            % 50) as u64,
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        me
    }

    /// Changes whenever an update was accepted.
    pub fn generation(&self) -> u64 {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    pub fn read(&self) -> Result<Snapshot, SourceError> {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if !s.received_any {
            return Err(SourceError::Parse {
                path: self.url.clone(),
                message: "no config received from the controller yet".into(),
            });
        }
        let workloads = s
            .resources
            .values()
            .filter_map(|r| match &r.kind {
                Some(Kind::Workload(w)) => workload_from_proto(w).ok(),
                _ => None,
            })
            .collect();
        // Validated when the update was accepted; a failure here cannot happen but is not hidden.
        let mesh = crate::state::mesh::MeshState::from_resources(s.resources.values()).map_err(
            |message| SourceError::Parse {
                path: self.url.clone(),
                message,
            },
        )?;
        Ok(Snapshot {
            workloads,
            problems: vec![],
            mesh: Some(Arc::new(mesh)),
        })
    }
}

async fn session(
    url: &str,
    root_pem: Option<&str>,
    node: &str,
    token: &str,
    shared: &Arc<Mutex<Shared>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5));
    if let Some(root) = root_pem {
        endpoint = endpoint.tls_config(tls_to_controller(root))?;
    }
    let mut client = ConfigServiceClient::new(endpoint.connect().await?);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let have_version = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .version
        .clone();
    tx.send(AgentMessage {
        msg: Some(Msg::Subscribe(Subscribe {
            node: node.into(),
            token: token.into(),
            have_version,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })),
    })
    .await?;
    let mut updates = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(u) = updates.message().await? {
        let result = {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            match apply(&s.resources, &u) {
                Ok(next) => {
                    s.resources = next;
                    s.generation += 1;
                    s.version = u.version.clone();
                    s.received_any = true;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let ack = match &result {
            Ok(()) => Ack {
                nonce: u.nonce.clone(),
                version: u.version.clone(),
                accepted: true,
                error: String::new(),
            },
            Err(e) => {
                warn!(version = %u.version, "NACK: {e}");
                Ack {
                    nonce: u.nonce.clone(),
                    version: u.version.clone(),
                    accepted: false,
                    error: e.clone(),
                }
            }
        };
        if result.is_ok() {
            info!(version = %u.version, snapshot = u.snapshot, resources = u.resources.len(), removed = u.removed.len(), "config accepted");
        }
        tx.send(AgentMessage {
            msg: Some(Msg::Ack(ack)),
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::proto::config::Workload as PW;

    fn res(uid: &str, ip: &str) -> Resource {
        Resource {
            name: format!("workload/{uid}"),
            kind: Some(Kind::Workload(PW {
                uid: uid.into(),
                name: uid.into(),
                namespace: "n".into(),
                node: "a".into(),
                ip: ip.into(),
                mesh: true,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn snapshot_delta_and_invalid_updates() {
        let snap = ConfigUpdate {
            version: "1".into(),
            nonce: "n1".into(),
            snapshot: true,
            resources: vec![res("a", "10.0.0.1"), res("b", "10.0.0.2")],
            removed: vec![],
        };
        let s1 = apply(&BTreeMap::new(), &snap).unwrap();
        assert_eq!(s1.len(), 2);
        let delta = ConfigUpdate {
            version: "2".into(),
            nonce: "n2".into(),
            snapshot: false,
            resources: vec![res("c", "10.0.0.3")],
            removed: vec!["workload/a".into()],
        };
        let s2 = apply(&s1, &delta).unwrap();
        assert_eq!(
            s2.keys().cloned().collect::<Vec<_>>(),
            vec!["workload/b".to_string(), "workload/c".to_string()]
        );
        let bad = ConfigUpdate {
            version: "3".into(),
            nonce: "n3".into(),
            snapshot: false,
            resources: vec![res("d", "not-an-ip")],
            removed: vec![],
        };
        let e = apply(&s2, &bad).unwrap_err();
        assert!(e.contains("not-an-ip"), "{e}");
    }
}
