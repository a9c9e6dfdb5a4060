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

use crate::{
    auth::NodeAuth,
    translate::{NodeConfig, diff},
};

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
    /// False until the first config is computed: a subscriber that arrives earlier waits for it
    /// (an empty snapshot would make the agent un-enrol its pods).
    snapshot_sent: bool,
}

#[derive(Default)]
struct HubState {
    version: u64,
    next_id: u64,
    /// A config has been computed (`update` was called once).
    ready: bool,
    configs: BTreeMap<String, NodeConfig>,
    subscribers: BTreeMap<String, Subscriber>,
    status: BTreeMap<String, NodeStatus>,
}

/// Shared between the translation loop and the gRPC service.
pub struct Hub {
    state: Mutex<HubState>,
    auth: Arc<NodeAuth>,
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
    pub fn new(auth: Arc<NodeAuth>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState::default()),
            auth,
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
        st.ready = true;
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
            let update = if sub.snapshot_sent {
                let (upserts, removed) = diff(&sub.sent, new);
                if upserts.is_empty() && removed.is_empty() {
                    continue;
                }
                ConfigUpdate {
                    version: version.clone(),
                    nonce: format!("{version}-{node}"),
                    snapshot: false,
                    resources: upserts,
                    removed,
                }
            } else {
                snapshot_update(&version, node, sub.id, new)
            };
            if sub.tx.try_send(Ok(update)).is_err() {
                warn!(
                    node,
                    "config stream is backed up or closed; the agent will resync on reconnect"
                );
                continue;
            }
            sub.sent = new.clone();
            sub.snapshot_sent = true;
            let s = status.entry(node.clone()).or_default();
            s.last_sent_version = version.clone();
            s.last_sent_unix_ms = now_ms();
            s.resources = new.len();
        }
    }

    /// A config has been computed: agents get a snapshot as soon as they subscribe.
    pub fn ready(&self) -> bool {
        self.lock().ready
    }

    pub fn status(&self) -> BTreeMap<String, NodeStatus> {
        self.lock().status.clone()
    }

    async fn authenticate(&self, node: &str, token: &str, caller: &str) -> Result<(), Status> {
        self.auth.check_subscriber(node, token).await.map_err(|e| {
            warn!(caller, node, "config stream refused: {e}");
            Status::unauthenticated(format!("node {node:?}: {e}"))
        })
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
        let ready = st.ready;
        let snapshot = st.configs.get(node).cloned().unwrap_or_default();
        if ready {
            let _ = tx.try_send(Ok(snapshot_update(&version, node, id, &snapshot)));
        }
        st.subscribers.insert(
            node.to_string(),
            Subscriber {
                id,
                tx,
                sent: snapshot.clone(),
                snapshot_sent: ready,
            },
        );
        let s = st.status.entry(node.to_string()).or_default();
        s.connected = true;
        s.agent_version = agent_version.to_string();
        if ready {
            s.last_sent_version = version;
            s.last_sent_unix_ms = now_ms();
            s.resources = snapshot.len();
        }
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

fn snapshot_update(version: &str, node: &str, id: u64, cfg: &NodeConfig) -> ConfigUpdate {
    ConfigUpdate {
        version: version.to_string(),
        nonce: format!("{version}-{node}-s{id}"),
        snapshot: true,
        resources: cfg
            .values()
            .map(|r| mesh_common::proto::config::Resource::clone(r))
            .collect(),
        removed: vec![],
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
        let caller = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
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
        self.hub
            .authenticate(&sub.node, &sub.token, &caller)
            .await?;
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
