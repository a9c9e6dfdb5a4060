//! `cargo xtask demo`: from a fresh machine to a running lab serving the example app, with a
//! report of which backend pods (on which nodes) served the traffic.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    lab::{self, Lab},
    setup, util,
};

const REQUESTS: u32 = 300;

pub fn run() -> anyhow::Result<()> {
    util::require_root("the demo")?;
    setup::run(setup::Mode::Ensure)?;
    let lab = Lab::new()?;
    if lab::is_up(&lab) {
        println!("a lab is running: taking it down to start fresh");
        lab::down(&lab)?;
    }
    println!("== starting the lab (2 nodes)");
    lab::up(&lab, 2, true)?;
    println!("== deploying examples/ (client, frontend, backend v1 ×2 + v2)");
    lab::apply(&lab, &[util::workspace_root().join("examples")])?;

    let st = lab::state(&lab)?;
    let client = st
        .pods
        .values()
        .find(|p| {
            p.namespace == "demo" && p.labels.get("app").map(String::as_str) == Some("client")
        })
        .context("no client pod in namespace demo")?
        .name
        .clone();
    wait_ready(&lab, &client)?;

    println!(
        "== {REQUESTS} requests: client → frontend (ClusterIP) → backend (ClusterIP), a new connection each"
    );
    let out = client_json(
        &lab,
        &client,
        &[
            "-n",
            &REQUESTS.to_string(),
            "-c",
            "4",
            "-H",
            "connection: close",
            "--json",
            "http://frontend:8080/",
        ],
    )?;
    let ok = out["status"]["200"].as_u64().unwrap_or(0);
    println!(
        "   {ok}/{} answered 200; latency p50 {:.2} ms, p99 {:.2} ms; errors {}",
        out["total"],
        out["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        out["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        out["errors"]
    );
    let served: BTreeMap<String, u64> = out["upstream_pods"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();

    println!();
    println!(
        "  {:<32} {:<8} {:<8} {:>8}",
        "BACKEND POD", "NODE", "VERSION", "REQUESTS"
    );
    let mut nodes_serving = std::collections::BTreeSet::new();
    let mut all_served = true;
    for p in st
        .pods
        .values()
        .filter(|p| p.labels.get("app").map(String::as_str) == Some("backend"))
    {
        let n = served.get(&p.name).copied().unwrap_or(0);
        if n > 0 {
            nodes_serving.insert(p.node.clone());
        } else {
            all_served = false;
        }
        let version = p.labels.get("version").cloned().unwrap_or_default();
        println!("  {:<32} {:<8} {:<8} {:>8}", p.name, p.node, version, n);
    }
    println!();
    if ok != u64::from(REQUESTS) || !all_served || nodes_serving.len() < 2 {
        bail!(
            "the demo traffic did not spread over every backend pod on both nodes (see the table)"
        );
    }
    println!(
        "every backend pod served traffic, on {} nodes.",
        nodes_serving.len()
    );
    println!(
        "explore: cargo xtask lab status | cargo xtask lab exec {client} -n demo -- curl -s http://backend:8080/"
    );
    println!("clean up: cargo xtask lab down");
    Ok(())
}

fn client_json(lab: &Lab, client: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut argv = vec!["mesh-client".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = util::output(&mut lab::pod_command(lab, "demo", client, &argv)?)?;
    serde_json::from_str(out.trim()).with_context(|| format!("mesh-client printed no JSON: {out}"))
}

/// Waits (bounded) until the frontend answers through the backend.
fn wait_ready(lab: &Lab, client: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client_json(
            lab,
            client,
            &[
                "-n",
                "1",
                "--timeout",
                "2s",
                "--json",
                "http://frontend:8080/healthz",
            ],
        );
        let v2 = client_json(
            lab,
            client,
            &[
                "-n",
                "1",
                "--timeout",
                "2s",
                "--json",
                "http://backend:8080/healthz",
            ],
        );
        if let (Ok(a), Ok(b)) = (&v, &v2)
            && a["status"]["200"] == 1
            && b["status"]["200"] == 1
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the example app did not become ready within 30 s: {v:?} {v2:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
