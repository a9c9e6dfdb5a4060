//! `cargo xtask demo`: from a fresh machine to a running lab serving the example app, with a
//! report of which backend pods (on which nodes) served the traffic; then the app under the mesh,
//! and L7 traffic management from `examples/traffic/` (a 90/10 canary, a header-based dark launch,
//! fault injection) with the measured outcome of each.
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

    round(
        &lab,
        &client,
        "client → frontend (ClusterIP) → backend (ClusterIP), a new connection each",
    )?;

    println!(
        "== putting namespace demo in the mesh: examples/mesh/ (annotation weft.dev/mesh: enabled)"
    );
    let uids: Vec<String> = st
        .pods
        .values()
        .filter(|p| p.namespace == "demo")
        .map(|p| p.uid.clone())
        .collect();
    lab::apply(&lab, &[util::workspace_root().join("examples/mesh")])?;
    wait_enrolled(&lab, uids.len())?;
    let after: Vec<String> = lab::state(&lab)?
        .pods
        .values()
        .filter(|p| p.namespace == "demo")
        .map(|p| p.uid.clone())
        .collect();
    if after != uids {
        bail!("pods were restarted when the namespace joined the mesh");
    }
    println!(
        "   {} pods enrolled by the node agents, none restarted",
        uids.len()
    );
    let before = capture_stats(&lab)?;
    round(
        &lab,
        &client,
        "the same traffic, now captured by eBPF and tunnelled over mutual TLS between the node proxies",
    )?;
    let now = capture_stats(&lab)?;
    println!(
        "  {:<8} {:>20} {:>16} {:>24}",
        "NODE", "OUTBOUND REDIRECTED", "INBOUND STEERED", "mTLS REQUESTS RECEIVED"
    );
    for (node, (o, i, t)) in &now {
        let (o0, i0, t0) = before.get(node).copied().unwrap_or((0, 0, 0));
        println!("  {:<8} {:>20} {:>16} {:>24}", node, o - o0, i - i0, t - t0);
    }
    let tunnelled: u64 = now
        .iter()
        .map(|(n, (_, _, t))| t - before.get(n).map(|b| b.2).unwrap_or(0))
        .sum();
    if tunnelled < u64::from(REQUESTS) {
        bail!("only {tunnelled} requests arrived over mTLS for {REQUESTS} requests");
    }
    let total: u64 = now
        .iter()
        .map(|(n, (o, _, _))| o - before.get(n).map(|b| b.0).unwrap_or(0))
        .sum();
    if total < 2 * u64::from(REQUESTS) {
        bail!("only {total} connections went through the node proxies for {REQUESTS} requests");
    }
    println!(
        "new connections of meshed pods went through their node's proxy (no iptables, no restart) and arrived over HBONE mTLS with each pod's SPIFFE identity (see `mesh-agent certs`, istio_tcp_* metrics on :15020); connections opened before enrolment (the frontend's pooled backend connections) stay direct, as designed."
    );
    traffic_management(&lab, &client)?;
    println!(
        "explore: cargo xtask lab status | cargo xtask lab exec {client} -n demo -- curl -s http://backend:8080/"
    );
    println!("clean up: cargo xtask lab down");
    Ok(())
}

/// One round of demo traffic with the per-backend table; fails unless it spread over every backend
/// pod on both nodes.
fn round(lab: &Lab, client: &str, what: &str) -> anyhow::Result<()> {
    println!("== {what}");
    let args = |url: &'static str| -> Vec<String> {
        [
            "-n",
            &REQUESTS.to_string(),
            "-c",
            "4",
            "-H",
            "connection: close",
            "--json",
            url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Two tiers: client → frontend → backend (the frontend pools its backend connections).
    let tiers = client_json(
        lab,
        client,
        &args("http://frontend:8080/")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    // Spread: client → backend, a new connection per request (kube-proxy balances per connection).
    let direct = client_json(
        lab,
        client,
        &args("http://backend:8080/")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    for (label, out) in [
        ("client → frontend → backend", &tiers),
        ("client → backend", &direct),
    ] {
        println!(
            "   {label}: {}/{} answered 200; latency p50 {:.2} ms, p99 {:.2} ms; errors {}",
            out["status"]["200"].as_u64().unwrap_or(0),
            out["total"],
            out["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            out["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            out["errors"]
        );
    }
    let all_ok = [&tiers, &direct]
        .iter()
        .all(|o| o["status"]["200"].as_u64() == Some(u64::from(REQUESTS)));
    let served: BTreeMap<String, u64> = direct["pods"]
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
    let st = lab::state(lab)?;
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
    if !all_ok || !all_served || nodes_serving.len() < 2 {
        bail!(
            "the demo traffic failed or did not spread over every backend pod on both nodes (see above)"
        );
    }
    println!(
        "every backend pod served traffic, on {} nodes.\n",
        nodes_serving.len()
    );
    Ok(())
}

const BACKEND: &str = "http://backend:8080/";

/// `summary[map][key]` of a mesh-client JSON summary (0 when absent).
fn count(v: &serde_json::Value, map: &str, key: &str) -> u64 {
    v[map][key].as_u64().unwrap_or(0)
}

/// The fraction of the run's requests under `summary[map][key]`.
fn share(v: &serde_json::Value, map: &str, key: &str) -> f64 {
    count(v, map, key) as f64 / v["total"].as_u64().unwrap_or(0).max(1) as f64
}

/// Runs mesh-client from the client pod until `done` holds for its summary (bounded: the
/// policies reach the node proxies asynchronously).
fn poll(
    lab: &Lab,
    client: &str,
    what: &str,
    args: &[&str],
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client_json(lab, client, args)?;
        if done(&v) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not in effect within 30 s; last run: {v}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One row of the traffic-management table.
fn outcome_row(scenario: &str, v: &serde_json::Value) -> String {
    let total = v["total"].as_u64().unwrap_or(0).max(1) as f64;
    let pct = |k: &str| format!("{:.1}%", 100.0 * count(v, "versions", k) as f64 / total);
    let codes = v["status"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k}×{}", n.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let errors = v["errors"].as_object().map_or(0, |m| {
        m.values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>()
    });
    format!(
        "  {:<40} {:>8} {:>7} {:>7}  {:<22} {:>9.1} {:>9.1}{}",
        scenario,
        v["total"],
        pct("v1"),
        pct("v2"),
        codes,
        v["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        v["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        if errors > 0 {
            format!("   ({errors} transport errors)")
        } else {
            String::new()
        }
    )
}

/// The mesh's L7 traffic management, applied as a user would (`examples/traffic/`, Istio
/// VirtualService + DestinationRule) and measured from the client pod: distribution per version,
/// status codes and latency of each scenario, in one table. Fails when an outcome is far off what
/// the policy says (the tolerances are loose: this is a demo, the tests check precisely).
fn traffic_management(lab: &Lab, client: &str) -> anyhow::Result<()> {
    let dir = util::workspace_root().join("examples/traffic");
    println!(
        "== L7 traffic management in the node proxies (no sidecar, no waypoint): examples/traffic/"
    );
    let mut rows = vec![];

    println!("   10-canary.yaml: DestinationRule subsets v1/v2 + VirtualService 90/10");
    lab::apply(lab, &[dir.join("10-canary.yaml")])?;
    // Without it, balancing per request over the pods gives v2 (1 of 3 pods) about a third.
    poll(
        lab,
        client,
        "the 90/10 canary",
        &["-n", "200", "--json", BACKEND],
        |v| count(v, "status", "200") == 200 && share(v, "versions", "v2") < 0.2,
    )?;
    let canary = client_json(lab, client, &["-n", "1000", "-c", "4", "--json", BACKEND])?;
    rows.push(outcome_row("canary 90/10", &canary));

    println!("   20-dark-launch.yaml: end-user: jason → v2, everybody else on the canary");
    lab::apply(lab, &[dir.join("20-dark-launch.yaml")])?;
    let jason = ["-H", "end-user: jason"];
    let mut args = vec!["-n", "20", "--json"];
    args.extend_from_slice(&jason);
    args.push(BACKEND);
    poll(lab, client, "the dark launch", &args, |v| {
        count(v, "versions", "v2") == 20
    })?;
    let mut args = vec!["-n", "200", "-c", "4", "--json"];
    args.extend_from_slice(&jason);
    args.push(BACKEND);
    let dark = client_json(lab, client, &args)?;
    rows.push(outcome_row("dark launch: end-user: jason", &dark));
    let others = client_json(
        lab,
        client,
        &[
            "-n",
            "1000",
            "-c",
            "4",
            "-H",
            "end-user: alice",
            "--json",
            BACKEND,
        ],
    )?;
    rows.push(outcome_row("dark launch: other users", &others));

    println!(
        "   30-fault-injection.yaml: on the canary route, 10% delayed 200 ms, 10% aborted 503"
    );
    lab::apply(lab, &[dir.join("30-fault-injection.yaml")])?;
    poll(
        lab,
        client,
        "the fault injection",
        &["-n", "100", "--json", BACKEND],
        |v| count(v, "status", "503") > 0,
    )?;
    let faults = client_json(lab, client, &["-n", "1000", "-c", "4", "--json", BACKEND])?;
    rows.push(outcome_row(
        "fault injection: 10% delay, 10% abort",
        &faults,
    ));
    let jason_faults = client_json(lab, client, &args)?;
    rows.push(outcome_row(
        "fault injection: end-user: jason",
        &jason_faults,
    ));

    println!();
    println!(
        "  {:<40} {:>8} {:>7} {:>7}  {:<22} {:>9} {:>9}",
        "SCENARIO", "REQUESTS", "v1", "v2", "STATUS CODES", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!("{r}");
    }
    println!();

    let mut wrong = vec![];
    if !(0.05..=0.15).contains(&share(&canary, "versions", "v2"))
        || count(&canary, "status", "200") != 1000
    {
        wrong.push("the canary is not 90/10 with every request answered");
    }
    if count(&dark, "versions", "v2") != 200 {
        wrong.push("jason did not always get v2");
    }
    if !(0.05..=0.15).contains(&share(&others, "versions", "v2")) {
        wrong.push("other users are not on the 90/10 canary");
    }
    let aborted = share(&faults, "status", "503");
    if !(0.05..=0.15).contains(&aborted)
        || faults["latency_ms"]["p99"].as_f64().unwrap_or(0.0) < 200.0
    {
        wrong.push("the fault injection did not abort ~10% and delay the slowest by 200 ms");
    }
    if count(&jason_faults, "status", "200") != 200 {
        wrong.push("the fault injection reached jason's route");
    }
    if !wrong.is_empty() {
        bail!("traffic management: {}", wrong.join("; "));
    }
    println!(
        "each policy applied to running pods within seconds, routed and injected per request by the client's node proxy (Istio semantics; telemetry: istio_requests_total & co. on :15020)."
    );
    println!(
        "undo: cargo xtask lab delete -f examples/traffic/10-canary.yaml (the VirtualService and DestinationRule `backend`)\n"
    );
    Ok(())
}

/// Per node: (connects redirected to the proxy, inbound connections steered to it, HBONE
/// connections received over mutual TLS).
fn capture_stats(lab: &Lab) -> anyhow::Result<BTreeMap<String, (u64, u64, u64)>> {
    let st = lab::state(lab)?;
    let mut out = BTreeMap::new();
    for n in &st.nodes {
        let text = util::output(
            std::process::Command::new(st.bin_dir.join("mesh-agent"))
                .args(["bpf", "stats", "--json", "--node", &n.name]),
        )?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let metrics = util::output(&mut lab::node_command(
            lab,
            &n.name,
            &["curl", "-sf", "http://127.0.0.1:15020/metrics"],
        )?)?;
        let tunnelled: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{reporter=\"destination\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        out.insert(
            n.name.clone(),
            (
                v["connect_redirected"].as_u64().unwrap_or(0),
                v["lookup_steered"].as_u64().unwrap_or(0),
                tunnelled as u64,
            ),
        );
    }
    Ok(out)
}

/// Waits (bounded) until the agents enrolled `n` demo pods.
fn wait_enrolled(lab: &Lab, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = lab::state(lab)?;
        let enrolled: usize = st
            .nodes
            .iter()
            .filter_map(|node| {
                std::fs::read(lab.agent_state_dir(&node.name).join("pods.json")).ok()
            })
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| {
                v.as_array()
                    .map(|a| a.iter().filter(|p| p["namespace"] == "demo").count())
                    .unwrap_or(0)
            })
            .sum();
        if enrolled >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {enrolled}/{n} demo pods were enrolled within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
