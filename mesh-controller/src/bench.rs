//! `mesh-controller bench` (driven by `cargo xtask bench control-plane`): the config stream at
//! scale, in one process over real gRPC on 127.0.0.1 — N pods over M nodes, S services, one agent
//! stream per node. Measures, per change, the time from the source change to every affected agent
//! having ACKed (p50/p99 over repetitions), the bytes sent, and the controller's RSS and CPU.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_common::proto::config::{
    Ack, AgentMessage, Subscribe, agent_message::Msg, config_service_client::ConfigServiceClient,
    config_service_server::ConfigServiceServer,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use crate::{
    model::Model,
    server::{ConfigServer, Hub},
    translate,
};

pub struct BenchArgs {
    pub pods: usize,
    pub services: usize,
    pub nodes: usize,
    pub rounds: usize,
}

fn pod(i: usize, nodes: usize, services: usize) -> Value {
    let node = format!("node-{}", i % nodes);
    json!({"kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "bench", "uid": format!("uid-{i}"),
           "labels": {"app": format!("s{}", i % services)}},
           "spec": {"nodeName": node, "serviceAccountName": "sa"},
           "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 100 + (i >> 16) % 100, (i >> 8) & 255, i & 255)}})
}

/// A 2-subset canary on service s0 with `weight` % to v2.
fn virtual_service(weight: i64) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "s0", "namespace": "bench"},
           "spec": {"hosts": ["s0"], "http": [{"route": [
               {"destination": {"host": "s0", "subset": "v1"}, "weight": 100 - weight},
               {"destination": {"host": "s0", "subset": "v2"}, "weight": weight}]}]}})
}

fn base_model(a: &BenchArgs) -> Model {
    let mut m = Model::default();
    m.insert(virtual_service(5));
    m.insert(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                    "metadata": {"name": "s0", "namespace": "bench"},
                    "spec": {"host": "s0", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}));
    m.insert(json!({"kind": "Namespace", "metadata": {"name": "bench", "annotations": {"weft.dev/mesh": "enabled"}}}));
    for n in 0..a.nodes {
        m.insert(json!({"kind": "Node", "metadata": {"name": format!("node-{n}")}}));
    }
    for s in 0..a.services {
        m.insert(json!({"kind": "Service", "metadata": {"name": format!("s{s}"), "namespace": "bench"},
                        "spec": {"clusterIP": format!("10.96.{}.{}", s >> 8, s & 255), "selector": {"app": format!("s{s}")}, "ports": [{"port": 80, "targetPort": 8080}]}}));
    }
    for i in 0..a.pods {
        m.insert(pod(i, a.nodes, a.services));
    }
    m
}

/// One simulated agent: ACKs everything, reports the last version it ACKed and bytes received.
async fn agent(
    addr: SocketAddr,
    node: String,
    acked: watch::Sender<String>,
    bytes: Arc<Mutex<u64>>,
) {
    let Ok(mut c) = ConfigServiceClient::connect(format!("http://{addr}")).await else {
        return;
    };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx
        .send(AgentMessage {
            msg: Some(Msg::Subscribe(Subscribe {
                node,
                ..Default::default()
            })),
        })
        .await;
    let Ok(resp) = c.stream(ReceiverStream::new(rx)).await else {
        return;
    };
    let mut updates = resp.into_inner();
    while let Ok(Some(u)) = updates.message().await {
        *bytes.lock().unwrap_or_else(|p| p.into_inner()) += u.encoded_len() as u64;
        let _ = tx
            .send(AgentMessage {
                msg: Some(Msg::Ack(Ack {
                    nonce: u.nonce.clone(),
                    version: u.version.clone(),
                    accepted: true,
                    error: String::new(),
                })),
            })
            .await;
        let _ = acked.send(u.version);
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn cpu_s() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

pub async fn run(a: BenchArgs) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let mut model = base_model(&a);
    let setup_s = t0.elapsed().as_secs_f64();
    let hub = Hub::new(std::sync::Arc::new(crate::auth::NodeAuth::Insecure));
    let mut interner = translate::Interner::default();
    let cpu0 = cpu_s();
    let t = Instant::now();
    hub.update(translate::all_nodes_interned(
        &model,
        &translate::TranslateOptions::new("cluster.local"),
        &mut interner,
    ));
    let initial_ms = t.elapsed().as_secs_f64() * 1e3;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ConfigServiceServer::new(ConfigServer { hub: hub.clone() })
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(256 << 20),
            )
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let mut acks: BTreeMap<String, watch::Receiver<String>> = BTreeMap::new();
    let bytes = Arc::new(Mutex::new(0u64));
    for n in 0..a.nodes {
        let (tx, rx) = watch::channel(String::new());
        acks.insert(format!("node-{n}"), rx);
        tokio::spawn(agent(addr, format!("node-{n}"), tx, bytes.clone()));
    }
    // Wait for every snapshot to be ACKed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while hub
        .status()
        .values()
        .filter(|s| !s.last_acked_version.is_empty())
        .count()
        < a.nodes
    {
        anyhow::ensure!(Instant::now() < deadline, "agents did not sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot_s = t.elapsed().as_secs_f64();
    let snapshot_bytes = *bytes.lock().unwrap_or_else(|p| p.into_inner());

    let mut rows = vec![];
    for (label, kind) in [
        ("pod added outside the mesh (its node only)", 0),
        (
            "meshed pod added (its node; every node: that node's address book)",
            1,
        ),
        ("service endpoints changed (every node)", 2),
        (
            "VirtualService weight changed (every node: one route table)",
            3,
        ),
    ] {
        let mut lat = vec![];
        let mut per_change_bytes = vec![];
        let mut nodes_touched = 0;
        for r in 0..a.rounds {
            let before_bytes = *bytes.lock().unwrap_or_else(|p| p.into_inner());
            let before: BTreeMap<String, String> = hub
                .status()
                .into_iter()
                .map(|(n, s)| (n, s.last_sent_version))
                .collect();
            let i = a.pods + r + kind * 100_000;
            // 0: a pod opted out of the mesh whose label matches no service (only its node);
            // 1: a meshed pod matching no service (its node, plus that node's address book
            //    everywhere); 2: a pod that joins service s0 (s0's endpoints change everywhere);
            // 3: the weights of the VirtualService on s0 change (its route table everywhere).
            let mut p = pod(i, a.nodes, a.services);
            let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            match kind {
                0 => {
                    p["metadata"]["labels"]["app"] = json!("none");
                    p["metadata"]["annotations"] = json!({"weft.dev/mesh": "disabled"});
                    model.insert(p);
                }
                1 => {
                    p["metadata"]["labels"]["app"] = json!("none");
                    model.insert(p);
                }
                2 => {
                    p["metadata"]["labels"]["app"] = json!("s0");
                    model.insert(p);
                }
                _ => {
                    let w = 10 + (r as i64 % 80);
                    model.insert(virtual_service(w));
                }
            }
            let start = Instant::now();
            hub.update(translate::all_nodes_interned(
                &model,
                &translate::TranslateOptions::new("cluster.local"),
                &mut interner,
            ));
            let sent: BTreeMap<String, String> = hub
                .status()
                .into_iter()
                .filter(|(n, s)| before.get(n) != Some(&s.last_sent_version))
                .map(|(n, s)| (n, s.last_sent_version))
                .collect();
            nodes_touched = sent.len();
            anyhow::ensure!(
                if kind == 0 {
                    sent.len() == 1 && sent.contains_key(&node)
                } else {
                    sent.len() == a.nodes
                },
                "change kind {kind} reached {} nodes",
                sent.len()
            );
            for (n, v) in &sent {
                let rx = acks
                    .get_mut(n)
                    .ok_or_else(|| anyhow::anyhow!("no agent {n}"))?;
                while *rx.borrow() != *v {
                    rx.changed().await?;
                }
            }
            lat.push(start.elapsed().as_secs_f64() * 1e3);
            per_change_bytes
                .push((*bytes.lock().unwrap_or_else(|p| p.into_inner()) - before_bytes) as f64);
        }
        rows.push(format!(
            "| {label} | {} | {:.1} | {:.1} | {:.0} |",
            nodes_touched,
            pct(&mut lat.clone(), 50.0),
            pct(&mut lat, 99.0),
            pct(&mut per_change_bytes, 50.0)
        ));
    }
    let cpu = cpu_s() - cpu0;
    Ok(format!(
        "Control-plane benchmark: {} pods, {} services, {} nodes (one agent stream each, real gRPC on 127.0.0.1, in one process), {} changes of each kind. Building the model {:.1} s; initial translation {:.0} ms; all snapshots ACKed after {:.2} s ({:.1} MB sent).\n\n| change | nodes sent a delta | p50 ms to all ACKed | p99 ms | bytes sent per change (p50) |\n|---|---:|---:|---:|---:|\n{}\n\nController process: RSS {:.0} MB, CPU {:.1} s in total.\n",
        a.pods,
        a.services,
        a.nodes,
        a.rounds,
        setup_s,
        initial_ms,
        snapshot_s,
        snapshot_bytes as f64 / 1e6,
        rows.join("\n"),
        rss_mb(),
        cpu
    ))
}
