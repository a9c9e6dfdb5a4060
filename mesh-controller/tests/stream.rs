//! The config stream over real gRPC: snapshot, deltas only to affected nodes, NACKs in the status,
//! authentication, and a controller restart with no gap in the config agents serve.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use mesh_agent::sources::controller::{ControllerSource, Credential};
use mesh_common::proto::config::{
    Ack, AgentMessage, ConfigUpdate, Subscribe, agent_message::Msg,
    config_service_client::ConfigServiceClient, config_service_server::ConfigServiceServer,
};
use mesh_controller::{
    auth::NodeAuth,
    model::Model,
    server::{ConfigServer, Hub},
    translate,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

fn model(weight_pod_b: bool) -> Model {
    let mut m = Model::default();
    let mut objs = vec![
        json!({"kind": "Namespace", "metadata": {"name": "demo", "annotations": {"weft.dev/mesh": "enabled"}}}),
        json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "demo", "uid": "ua"}, "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIP": "10.244.1.2"}}),
        json!({"kind": "Pod", "metadata": {"name": "b", "namespace": "demo", "uid": "ub"}, "spec": {"nodeName": "node-b"}, "status": {"phase": "Running", "podIP": "10.244.2.2"}}),
    ];
    if weight_pod_b {
        // Opted out of the mesh: no other node needs to know it (a meshed pod would also change
        // node-a's address book, which every node receives).
        objs.push(json!({"kind": "Pod", "metadata": {"name": "a2", "namespace": "demo", "uid": "ua2", "annotations": {"weft.dev/mesh": "disabled"}}, "spec": {"nodeName": "node-a"}, "status": {"phase": "Running", "podIP": "10.244.1.3"}}));
    }
    for o in objs {
        m.insert(o);
    }
    m
}

async fn serve(hub: std::sync::Arc<Hub>, addr: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let a = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ConfigServiceServer::new(ConfigServer { hub }))
            .serve_with_incoming(TcpListenerStream::new(l))
            .await;
    });
    (a, h)
}

struct FakeAgent {
    tx: mpsc::Sender<AgentMessage>,
    updates: tonic::Streaming<ConfigUpdate>,
}

async fn agent(addr: SocketAddr, node: &str, token: &str) -> Result<FakeAgent, tonic::Status> {
    let mut c = ConfigServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(Msg::Subscribe(Subscribe {
            node: node.into(),
            token: token.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let updates = c.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(FakeAgent { tx, updates })
}

impl FakeAgent {
    async fn next(&mut self) -> ConfigUpdate {
        tokio::time::timeout(Duration::from_secs(5), self.updates.message())
            .await
            .expect("an update within 5 s")
            .unwrap()
            .unwrap()
    }
    async fn none_within(&mut self, d: Duration) {
        assert!(
            tokio::time::timeout(d, self.updates.message())
                .await
                .is_err(),
            "no update expected"
        );
    }
    async fn ack(&self, u: &ConfigUpdate, accepted: bool, error: &str) {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Ack(Ack {
                    nonce: u.nonce.clone(),
                    version: u.version.clone(),
                    accepted,
                    error: error.into(),
                })),
            })
            .await
            .unwrap();
    }
}

fn tokens() -> std::sync::Arc<NodeAuth> {
    std::sync::Arc::new(NodeAuth::tokens(BTreeMap::from([
        ("node-a".to_string(), "ta".to_string()),
        ("node-b".to_string(), "tb".to_string()),
    ])))
}

#[tokio::test]
async fn snapshot_then_deltas_only_to_affected_nodes_and_nacks_in_status() {
    let hub = Hub::new(tokens());
    hub.update(translate::all_nodes(
        &model(false),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let (addr, _srv) = serve(hub.clone(), "127.0.0.1:0").await;

    assert_eq!(
        agent(addr, "node-a", "wrong").await.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    // Node b's token does not open node a's config.
    assert_eq!(
        agent(addr, "node-a", "tb").await.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );

    let mut a = agent(addr, "node-a", "ta").await.unwrap();
    let mut b = agent(addr, "node-b", "tb").await.unwrap();
    let sa = a.next().await;
    let sb = b.next().await;
    assert!(sa.snapshot && sb.snapshot);
    assert_eq!(
        sa.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["addresses/node-a", "addresses/node-b", "workload/ua"]
    );
    assert_eq!(
        sb.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["addresses/node-a", "addresses/node-b", "workload/ub"]
    );
    a.ack(&sa, true, "").await;
    b.ack(&sb, true, "").await;

    // A pod added on node-a: node-a gets a delta with just that workload, node-b nothing.
    hub.update(translate::all_nodes(
        &model(true),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let da = a.next().await;
    assert!(!da.snapshot);
    assert_eq!(da.resources.len(), 1);
    assert_eq!(da.resources[0].name, "workload/ua2");
    b.none_within(Duration::from_millis(300)).await;

    // A NACK shows in the status with its reason; the ACKed version stays the previous one.
    a.ack(&da, false, "bad workload").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = hub.status();
    assert_eq!(
        st["node-a"].last_nack.as_deref(),
        Some(format!("{}: bad workload", da.version).as_str())
    );
    assert_eq!(st["node-a"].last_acked_version, sa.version);
    assert_eq!(st["node-b"].last_acked_version, sb.version);
    assert!(st["node-a"].connected && st["node-b"].connected);

    // The pod removed again: a delta with a removal.
    hub.update(translate::all_nodes(
        &model(false),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let da2 = a.next().await;
    assert_eq!(da2.removed, vec!["workload/ua2".to_string()]);

    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!hub.status()["node-a"].connected);
}

#[tokio::test]
async fn controller_restart_agents_resync_without_a_gap() {
    let hub = Hub::new(tokens());
    hub.update(translate::all_nodes(
        &model(false),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // The first controller runs on its own runtime: dropping that runtime ends every task and
    // connection of it, like a process exit.
    let rt1 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let h = hub.clone();
    let a = addr.to_string();
    rt1.spawn(async move {
        let (_, srv) = serve(h, &a).await;
        let _ = srv.await;
    });

    // The agent reads its token file for every subscription (projected tokens rotate).
    let token_file = std::env::temp_dir().join(format!("weft-stream-token-{}", std::process::id()));
    std::fs::write(&token_file, "ta\n").unwrap();
    let src = ControllerSource::spawn(
        format!("http://{addr}"),
        "node-a".into(),
        Credential::File(token_file.clone()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while src.read().is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no config received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(src.read().unwrap().workloads.len(), 1);

    // Controller gone: the agent keeps serving its last config.
    tokio::task::spawn_blocking(move || drop(rt1))
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            src.read().unwrap().workloads.len(),
            1,
            "no gap while the controller is down"
        );
    }

    // A new controller with a changed world and a rotated token: the agent resubscribes with the
    // new token and converges.
    std::fs::write(&token_file, "ta-rotated\n").unwrap();
    let hub2 = Hub::new(std::sync::Arc::new(NodeAuth::tokens(BTreeMap::from([(
        "node-a".to_string(),
        "ta-rotated".to_string(),
    )]))));
    hub2.update(translate::all_nodes(
        &model(true),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let (_, _srv2) = serve(hub2.clone(), &addr.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while src.read().unwrap().workloads.len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent did not resync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !hub2.status()["node-a"].last_acked_version.is_empty(),
        "the resync was ACKed"
    );
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test]
async fn an_agent_that_subscribes_before_the_first_config_waits_for_it() {
    // The kube source lists every kind before the first config is computed; an agent arriving
    // earlier must not get an empty snapshot (it would un-enrol its pods).
    let hub = Hub::new(tokens());
    let (addr, _srv) = serve(hub.clone(), "127.0.0.1:0").await;
    let mut a = agent(addr, "node-a", "ta").await.unwrap();
    a.none_within(Duration::from_millis(300)).await;
    assert!(hub.status()["node-a"].last_sent_version.is_empty());
    let bundle = translate::trust_bundle("cluster.local", vec!["ROOT".into()]);
    hub.update(translate::with_trust_bundle(
        translate::all_nodes(
            &model(false),
            &translate::TranslateOptions::new("cluster.local"),
        ),
        &bundle,
    ));
    let s = a.next().await;
    assert!(s.snapshot, "the first update is a snapshot");
    let mut names: Vec<&str> = s.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "addresses/node-a",
            "addresses/node-b",
            "trust-bundle",
            "workload/ua"
        ]
    );
    a.ack(&s, true, "").await;
    // Later updates are deltas.
    hub.update(translate::with_trust_bundle(
        translate::all_nodes(
            &model(true),
            &translate::TranslateOptions::new("cluster.local"),
        ),
        &bundle,
    ));
    let d = a.next().await;
    assert!(!d.snapshot);
    assert_eq!(d.resources.len(), 1);
}

#[tokio::test]
async fn the_stream_is_served_over_tls_verified_with_the_mesh_root() {
    let dir = std::env::temp_dir().join(format!("weft-stream-tls-{}", std::process::id()));
    let ca = mesh_controller::ca::Ca::load_or_generate(&dir, "cluster.local").unwrap();
    let (cert, key) = ca.server_identity(&["127.0.0.1".into()]).unwrap();
    let hub = Hub::new(tokens());
    hub.update(translate::all_nodes(
        &model(false),
        &translate::TranslateOptions::new("cluster.local"),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .unwrap()
            .add_service(ConfigServiceServer::new(ConfigServer { hub }))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    // Verified with the mesh root: the agent gets its config.
    let good = ControllerSource::spawn_tls(
        format!("https://{addr}"),
        "node-a".into(),
        "ta",
        Some(ca.root_pem().to_string()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while good.read().is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no config over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another root (an impostor's view): the agent refuses the controller and gets nothing.
    let other_dir = dir.join("other");
    let other = mesh_controller::ca::Ca::load_or_generate(&other_dir, "cluster.local").unwrap();
    let bad = ControllerSource::spawn_tls(
        format!("https://{addr}"),
        "node-a".into(),
        "ta",
        Some(other.root_pem().to_string()),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        bad.read().is_err(),
        "a controller not signed by the mesh root is refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
