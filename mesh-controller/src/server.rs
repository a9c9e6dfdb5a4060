//! The config stream (gRPC `weft.config.v1.ConfigService/Stream`, port 15010): per node, a snapshot
//! then deltas of exactly what changed for that node, each with a version and a nonce; agents ACK or
//! NACK. The hub keeps per-node status for `proxy-status`.
use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use mesh_common::proto::config::{
    AgentMessage, ConfigUpdate, agent_message::Msg, config_service_server::ConfigService,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::translate::{NodeConfig, diff};

/// What `proxy-status` shows for one node.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeStatus {
    pub connected: bool,
    pub agent_version: String,
    pub last_sent_version: String,
    pub last_sent_unix_ms: u64,
    pub last_acked_version: String,
    pub last_acked_unix_ms: u64,
    pub last_nack: Option<String>,
    pub resources: usize,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
    sent: NodeConfig,
}

#[derive(Default)]
struct HubState {
    version: u64,
    next_id: u64,
    configs: BTreeMap<String, NodeConfig>,
    subscribers: BTreeMap<String, Subscriber>,
    status: BTreeMap<String, NodeStatus>,
}

/// Shared between the translation loop and the gRPC service.
pub struct Hub {
    state: Mutex<HubState>,
    /// node → bootstrap token; `None` = no authentication (explicitly insecure).
    tokens: Option<BTreeMap<String, String>>,
    /// Distinguishes versions of different controller runs.
    instance: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hub {
    pub fn new(tokens: Option<BTreeMap<String, String>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState::default()),
            tokens,
            instance: format!("{:x}", now_ms()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs newly computed configs and sends each connected node its delta (nodes whose config
    /// did not change get nothing).
    pub fn update(&self, configs: BTreeMap<String, NodeConfig>) {
        let mut st = self.lock();
        st.version += 1;
        let version = format!("{}-{}", self.instance, st.version);
        st.configs = configs;
        let HubState {
            configs,
            subscribers,
            status,
            ..
        } = &mut *st;
        for (node, sub) in subscribers.iter_mut() {
            let empty = NodeConfig::new();
            let new = configs.get(node).unwrap_or(&empty);
            let (upserts, removed) = diff(&sub.sent, new);
            if upserts.is_empty() && removed.is_empty() {
                continue;
            }
            let update = ConfigUpdate {
                version: version.clone(),
                nonce: format!("{version}-{node}"),
                snapshot: false,
                resources: upserts,
                removed,
            };
            if sub.tx.try_send(Ok(update)).is_err() {
                warn!(
                    node,
                    "config stream is backed up or closed; the agent will resync on reconnect"
                );
                continue;
            }
            sub.sent = new.clone();
            let s = status.entry(node.clone()).or_default();
            s.last_sent_version = version.clone();
            s.last_sent_unix_ms = now_ms();
            s.resources = new.len();
        }
    }

    pub fn status(&self) -> BTreeMap<String, NodeStatus> {
        self.lock().status.clone()
    }

    fn authenticate(&self, node: &str, token: &str) -> Result<(), Status> {
        match &self.tokens {
            None => Ok(()),
            Some(t) if t.get(node).is_some_and(|want| want == token) => Ok(()),
            Some(_) => {
                warn!(node, "config stream refused: bad or missing node token");
                Err(Status::unauthenticated(format!(
                    "node {node:?}: bad or missing bootstrap token"
                )))
            }
        }
    }

    fn subscribe(
        &self,
        node: &str,
        agent_version: &str,
    ) -> (u64, mpsc::Receiver<Result<ConfigUpdate, Status>>) {
        let (tx, rx) = mpsc::channel(64);
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        let version = format!("{}-{}", self.instance, st.version);
        let snapshot = st.configs.get(node).cloned().unwrap_or_default();
        let update = ConfigUpdate {
            version: version.clone(),
            nonce: format!("{version}-{node}-s{id}"),
            snapshot: true,
            resources: snapshot
                .values()
                .map(|r| mesh_common::proto::config::Resource::clone(r))
                .collect(),
            removed: vec![],
        };
        let _ = tx.try_send(Ok(update));
        st.subscribers.insert(
            node.to_string(),
            Subscriber {
                id,
                tx,
                sent: snapshot.clone(),
            },
        );
        let s = st.status.entry(node.to_string()).or_default();
        s.connected = true;
        s.agent_version = agent_version.to_string();
        s.last_sent_version = version;
        s.last_sent_unix_ms = now_ms();
        s.resources = snapshot.len();
        (id, rx)
    }

    fn ack(&self, node: &str, version: &str, accepted: bool, error: &str) {
        let mut st = self.lock();
        let s = st.status.entry(node.to_string()).or_default();
        if accepted {
            s.last_acked_version = version.to_string();
            s.last_acked_unix_ms = now_ms();
            s.last_nack = None;
        } else {
            warn!(node, version, error, "agent NACKed config");
            s.last_nack = Some(format!("{version}: {error}"));
        }
    }

    fn disconnect(&self, node: &str, id: u64) {
        let mut st = self.lock();
        if st.subscribers.get(node).is_some_and(|s| s.id == id) {
            st.subscribers.remove(node);
            if let Some(s) = st.status.get_mut(node) {
                s.connected = false;
            }
        }
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct ConfigServer {
    pub hub: Arc<Hub>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for ConfigServer {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(Msg::Subscribe(sub)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message must be Subscribe",
            ));
        };
        if sub.node.is_empty() {
            return Err(Status::invalid_argument("Subscribe.node is empty"));
        }
        self.hub.authenticate(&sub.node, &sub.token)?;
        let node = sub.node.clone();
        let (id, rx) = self.hub.subscribe(&node, &sub.agent_version);
        info!(
            node,
            have_version = sub.have_version,
            agent = sub.agent_version,
            "agent subscribed"
        );
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                match msg {
                    Ok(AgentMessage {
                        msg: Some(Msg::Ack(a)),
                    }) => hub.ack(&node, &a.version, a.accepted, &a.error),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(node, "config stream: {e}");
                        break;
                    }
                }
            }
            hub.disconnect(&node, id);
            info!(node, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
