//! `cargo xtask bench l7`: what the L7 path costs (HTTP parsed and routed by the client node's
//! proxy, carried over HBONE, parsed again by the server node's proxy), in one run against direct
//! pod-to-pod HTTP.
//!
//! A two-node lab (release binaries). A plain namespace: a client on node-a, echo servers on
//! node-a and node-b (direct baselines). A meshed namespace: a client on node-a, a Service
//! `same` (server on node-a) and a Service `cross` (server on node-b), ports named `http`, and
//! `cross-tcp` (the node-b server through a `tcp` port: HBONE without HTTP processing, to split the
//! added latency into tunnel and L7 shares).
//! `mesh-client` sends 1 KB responses (`?size=1024`) over keep-alive connections with HTTP/1.1 and
//! HTTP/2 (h2c), at fixed rates and at saturation (no rate, `--concurrency` workers); variants are
//! interleaved round after round, figures are medians over rounds. Agent CPU is read from
//! /proc (utime + stime of both agents) around each run; RSS is the agents' VmRSS at the end.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bench::{median, with_lab_nodes},
    lab::{self, Lab},
};

#[derive(clap::Args)]
pub struct L7Args {
    /// Interleaved rounds (each runs every variant once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fixed request rates (requests per second), comma-separated.
    #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Duration of each run (milliseconds).
    #[arg(long, default_value_t = 4000)]
    duration_ms: u64,
    /// Connections (workers) of the fixed-rate runs.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Workers of the saturation runs.
    #[arg(long, default_value_t = 16)]
    saturation_connections: u32,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bl-plain}
---
apiVersion: v1
kind: Namespace
metadata: {name: bl-mesh, annotations: {weft.dev/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: server-a, namespace: bl-plain}
spec:
  nodeName: node-a
  containers:
  - {name: echo, command: ["mesh-echo", "--http-port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, namespace: bl-plain}
spec:
  nodeName: node-b
  containers:
  - {name: echo, command: ["mesh-echo", "--http-port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bl-plain}
spec:
  nodeName: node-a
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-a, namespace: bl-mesh, labels: {app: same}}
spec:
  nodeName: node-a
  containers:
  - {name: echo, command: ["mesh-echo", "--http-port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, namespace: bl-mesh, labels: {app: cross}}
spec:
  nodeName: node-b
  containers:
  - {name: echo, command: ["mesh-echo", "--http-port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bl-mesh}
spec:
  nodeName: node-a
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Service
metadata: {name: same, namespace: bl-mesh}
spec:
  selector: {app: same}
  ports:
  - {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: cross, namespace: bl-mesh}
spec:
  selector: {app: cross}
  ports:
  - {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: cross-tcp, namespace: bl-mesh}
spec:
  selector: {app: cross}
  ports:
  - {name: tcp, port: 8080}
"#;

/// (key, client namespace, label)
/// (e) is the breakdown: the same server through a `tcp` port (HBONE, no HTTP processing).
const VARIANTS: [(&str, &str, &str); 5] = [
    ("a", "bl-plain", "(a) direct, same node"),
    ("b", "bl-plain", "(b) direct, cross node"),
    ("c", "bl-mesh", "(c) Weft L7 + HBONE, same node"),
    ("d", "bl-mesh", "(d) Weft L7 + HBONE, cross node"),
    ("e", "bl-mesh", "(e) Weft L4 HBONE only, cross node"),
];

/// The direct baseline of each variant (added latency is measured against it).
fn baseline(v: &str) -> &'static str {
    match v {
        "c" => "a",
        "d" => "b",
        "a" => "a",
        _ => "b",
    }
}

pub fn run(args: L7Args) -> anyhow::Result<()> {
    with_lab_nodes(MANIFEST, 2, |lab| {
        let st = lab::state(lab)?;
        let ip = |key: &str| -> anyhow::Result<String> {
            Ok(st.pods.get(key).context("bench pod")?.ip.to_string())
        };
        let urls: BTreeMap<&str, String> = BTreeMap::from([
            (
                "a",
                format!("http://{}:8080/bench?size=1024", ip("bl-plain/server-a")?),
            ),
            (
                "b",
                format!("http://{}:8080/bench?size=1024", ip("bl-plain/server-b")?),
            ),
            ("c", "http://same.bl-mesh:8080/bench?size=1024".to_string()),
            ("d", "http://cross.bl-mesh:8080/bench?size=1024".to_string()),
            (
                "e",
                "http://cross-tcp.bl-mesh:8080/bench?size=1024".to_string(),
            ),
        ]);
        wait_routable(lab, &urls)?;
        let agents = agent_pids(lab)?;
        let dur = format!("{}ms", args.duration_ms);
        // (protocol, load) runs; load = Some(rate) or None (saturation).
        let mut loads: Vec<Option<u32>> = args.rates.iter().map(|r| Some(*r)).collect();
        loads.push(None);
        let mut samples: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
        let t0 = Instant::now();
        for round in 1..=args.rounds {
            for proto in ["h1", "h2"] {
                for load in &loads {
                    for (v, ns, _) in VARIANTS {
                        let mut a: Vec<String> = vec!["mesh-client".into(), "--json".into()];
                        if proto == "h2" {
                            a.push("--http2".into());
                        }
                        a.extend(["-d".into(), dur.clone()]);
                        match load {
                            Some(r) => a.extend([
                                "--qps".into(),
                                r.to_string(),
                                "-c".into(),
                                args.connections.to_string(),
                            ]),
                            None => {
                                a.extend(["-c".into(), args.saturation_connections.to_string()])
                            }
                        }
                        a.push(urls[v].clone());
                        let cpu0 = cpu_seconds(&agents);
                        let out =
                            crate::util::output(&mut lab::pod_command(lab, ns, "client", &a)?)?;
                        let cpu = cpu_seconds(&agents) - cpu0;
                        let j: Value = serde_json::from_str(out.trim())
                            .with_context(|| format!("mesh-client printed {out:?}"))?;
                        let total = j["total"].as_f64().unwrap_or(0.0);
                        let ok = j["status"]["200"].as_f64().unwrap_or(0.0);
                        if total == 0.0 || ok < total * 0.99 {
                            bail!(
                                "variant {v} {proto} {load:?}: only {ok} of {total} requests got 200: {j}"
                            );
                        }
                        let key = format!(
                            "{proto}/{}",
                            load.map_or("max".to_string(), |r| r.to_string())
                        );
                        let lat = &j["latency_ms"];
                        for (k, val) in [
                            ("p50", lat["p50"].as_f64()),
                            ("p90", lat["p90"].as_f64()),
                            ("p99", lat["p99"].as_f64()),
                            ("rps", j["rps"].as_f64()),
                            ("cpu_per_1k", Some(cpu * 1000.0 / total)),
                        ] {
                            samples
                                .entry((format!("{key}/{v}"), k))
                                .or_default()
                                .push(val.unwrap_or(f64::NAN));
                        }
                    }
                }
            }
            eprintln!(
                "round {round}/{} done ({:.0} s)",
                args.rounds,
                t0.elapsed().as_secs_f64()
            );
        }
        // The Weft variants really took the L7 path on both sides.
        for node in ["node-a", "node-b"] {
            let m = crate::util::output(&mut lab::node_command(
                lab,
                node,
                &["curl", "-sf", "http://127.0.0.1:15020/metrics"],
            )?)?;
            if !m.lines().any(|l| {
                l.starts_with("istio_requests_total{reporter=\"destination\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            }) {
                bail!("{node}: no request reported by the destination side over mTLS");
            }
        }
        let rss = rss_mib(&agents);
        let table = render(&samples, &args, &loads, rss);
        println!("\n{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    })
}

fn render(
    samples: &BTreeMap<(String, &str), Vec<f64>>,
    args: &L7Args,
    loads: &[Option<u32>],
    rss: f64,
) -> String {
    let m = |key: &str, k: &str| {
        median(
            samples
                .get(&(key.to_string(), k))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        )
    };
    let mut s = format!(
        "L7 benchmark: {} interleaved rounds of {} ms runs, medians of per-round figures. mesh-client GET with 1 KB responses; fixed rates over {} keep-alive connections, saturation with {} workers. Two lab nodes on one 2-core VM (client, servers, both agents and the load generator share the 2 CPUs). Added latency = variant − direct baseline on the same path (same node / cross node). Agent CPU = both agents' CPU seconds per 1 000 requests. Agents' RSS at the end: {:.1} MiB.\n\n",
        args.rounds, args.duration_ms, args.connections, args.saturation_connections, rss
    );
    s.push_str("| protocol | load | variant | p50 ms | p90 ms | p99 ms | added p50 ms | added p90 ms | added p99 ms | achieved rps | agent CPU s / 1k req |\n");
    s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for proto in ["h1", "h2"] {
        for load in loads {
            let key = format!(
                "{proto}/{}",
                load.map_or("max".to_string(), |r| r.to_string())
            );
            for (v, _, label) in VARIANTS {
                let kv = format!("{key}/{v}");
                let kb = format!("{key}/{}", baseline(v));
                let added = |p: &str| {
                    if v == "a" || v == "b" {
                        "–".to_string()
                    } else {
                        format!("{:+.3}", m(&kv, p) - m(&kb, p))
                    }
                };
                s.push_str(&format!(
                    "| {} | {} | {label} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.0} | {:.3} |\n",
                    if proto == "h1" { "HTTP/1.1" } else { "HTTP/2" },
                    load.map_or("saturation".to_string(), |r| format!("{r} rps")),
                    m(&kv, "p50"),
                    m(&kv, "p90"),
                    m(&kv, "p99"),
                    added("p50"),
                    added("p90"),
                    added("p99"),
                    m(&kv, "rps"),
                    m(&kv, "cpu_per_1k"),
                ));
            }
        }
    }
    s
}

/// Every URL answers 200 (pods enrolled, config streamed, certificates issued).
fn wait_routable(lab: &Lab, urls: &BTreeMap<&str, String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (v, url) in urls {
        let ns = VARIANTS
            .iter()
            .find(|x| x.0 == *v)
            .map(|x| x.1)
            .unwrap_or("bl-plain");
        loop {
            let out = crate::util::output(&mut lab::pod_command(
                lab,
                ns,
                "client",
                &[
                    "mesh-client".into(),
                    "--json".into(),
                    "-n".into(),
                    "5".into(),
                    url.clone(),
                ],
            )?)
            .unwrap_or_default();
            let j: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
            if j["status"]["200"] == 5 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} is not reachable from {ns}/client: {out}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

fn agent_pids(lab: &Lab) -> anyhow::Result<Vec<i32>> {
    let st = lab::state(lab)?;
    let pids: Vec<i32> = st.nodes.iter().flat_map(lab::agents::agent_pids).collect();
    if pids.len() < 2 {
        bail!("expected two agents, found {pids:?}");
    }
    Ok(pids)
}

/// utime + stime of `pids`, in seconds.
fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            // Fields after the command name (which may contain spaces): state is field 3.
            let rest = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (n(11) + n(12)) / tick
        })
        .sum()
}

fn rss_mib(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}
