//! `cargo xtask bench tunnel`: what the HBONE mTLS tunnel costs, in one run against direct and
//! plain-TCP capture.
//!
//! One single-node lab (release binaries, controller + agent), one TCP echo server outside the mesh
//! and one inside it, clients: (a) direct pod→pod, (b) Weft plain-TCP capture (meshed client, server
//! outside the mesh), (c) Weft HBONE mTLS (both meshed: client proxy → TLS 1.3 + HTTP/2 CONNECT →
//! server proxy). Every process pinned to one CPU; variants interleaved round after round; each
//! figure is the median over rounds.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bench::{bench_in, median, pin_lab, with_lab},
    lab::{self, Lab},
};

#[derive(clap::Args)]
pub struct TunnelArgs {
    /// Interleaved rounds (each runs every variant once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Round trips per latency run (1 KB each way).
    #[arg(long, default_value_t = 3000)]
    rr: usize,
    /// Fixed request rate of the latency runs (requests per second).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// MiB per throughput run (each way, split over the streams).
    #[arg(long, default_value_t = 64)]
    stream_mib: usize,
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bt-plain}
---
apiVersion: v1
kind: Namespace
metadata: {name: bt-mesh, annotations: {weft.dev/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bt-plain}
spec:
  containers:
  - {name: echo, command: ["mesh-echo", "--tcp-port", "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bt-mesh}
spec:
  containers:
  - {name: echo, command: ["mesh-echo", "--tcp-port", "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bt-plain}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bt-mesh}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
"#;

/// (variant, client namespace, server namespace, label)
const VARIANTS: [(&str, &str, &str, &str); 3] = [
    ("a", "bt-plain", "bt-plain", "(a) direct pod→pod"),
    ("b", "bt-mesh", "bt-plain", "(b) Weft plain-TCP capture"),
    ("c", "bt-mesh", "bt-mesh", "(c) Weft HBONE mTLS"),
];

pub fn run(args: TunnelArgs) -> anyhow::Result<()> {
    with_lab(MANIFEST, |lab| {
        let st = lab::state(lab)?;
        let target = |ns: &str| -> anyhow::Result<String> {
            Ok(format!(
                "{}:9000",
                st.pods
                    .get(&format!("{ns}/server"))
                    .context("server pod")?
                    .ip
            ))
        };
        wait_meshed(lab)?;
        let cpu = args.cpu.to_string();
        pin_lab(&cpu);
        for (_, client, server, _) in VARIANTS {
            bench_in(lab, client, &cpu, &["rr", &target(server)?, "-n", "200"])?;
        }
        let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        let t0 = Instant::now();
        let bytes = (args.stream_mib << 20).to_string();
        for round in 1..=args.rounds {
            for (v, client, server, _) in VARIANTS {
                let t = target(server)?;
                let rr = bench_in(
                    lab,
                    client,
                    &cpu,
                    &[
                        "rr",
                        &t,
                        "-n",
                        &args.rr.to_string(),
                        "--size",
                        "1024",
                        "--rate",
                        &args.rate.to_string(),
                    ],
                )?;
                let s1 = bench_in(lab, client, &cpu, &["stream", &t, "--bytes", &bytes])?;
                let s8 = bench_in(
                    lab,
                    client,
                    &cpu,
                    &["stream", &t, "--bytes", &bytes, "--streams", "8"],
                )?;
                for (k, val) in [
                    ("p50", &rr["p50_us"]),
                    ("p99", &rr["p99_us"]),
                    ("s1", &s1["mb_per_s"]),
                    ("s8", &s8["mb_per_s"]),
                ] {
                    samples
                        .entry((v, k))
                        .or_default()
                        .push(val.as_f64().unwrap_or(f64::NAN));
                }
            }
            eprintln!(
                "round {round}/{} done ({:.0} s)",
                args.rounds,
                t0.elapsed().as_secs_f64()
            );
        }
        // The HBONE variant really went through the tunnel.
        let m = crate::util::output(&mut lab::node_command(
            lab,
            "node-a",
            &["curl", "-sf", "http://127.0.0.1:15020/metrics"],
        )?)?;
        if !m.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        }) {
            bail!("variant (c) did not go through HBONE (no mutual_tls connection in the metrics)");
        }
        let table = render(&samples, &args);
        println!("\n{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    })
}

fn render(samples: &BTreeMap<(&str, &str), Vec<f64>>, args: &TunnelArgs) -> String {
    let m = |v: &str, k: &str| median(samples.get(&(v, k)).map(Vec::as_slice).unwrap_or(&[]));
    let mut s = format!(
        "Tunnel benchmark: {} interleaved rounds, median of per-round figures; rr = {}× 1 KB round trips on one connection at {} req/s; stream = {} MiB echoed each way over 1 or 8 connections. One node, all processes pinned to CPU {}. Ratios against (a) direct.\n\n",
        args.rounds, args.rr, args.rate, args.stream_mib, args.cpu
    );
    s.push_str("| variant | rr p50 µs | rr p99 µs | 1 stream MB/s | 8 streams MB/s | p50 vs a | p99 vs a | 1 stream vs a | 8 streams vs a |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (v, _, _, label) in VARIANTS {
        s.push_str(&format!(
            "| {label} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
            m(v, "p50"),
            m(v, "p99"),
            m(v, "s1"),
            m(v, "s8"),
            m(v, "p50") / m("a", "p50"),
            m(v, "p99") / m("a", "p99"),
            m(v, "s1") / m("a", "s1"),
            m(v, "s8") / m("a", "s8"),
        ));
    }
    s
}

/// Both meshed pods enrolled, and the meshed server's address known to the agent.
fn wait_meshed(lab: &Lab) -> anyhow::Result<()> {
    let pods = lab.agent_state_dir("node-a").join("pods.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v: Value = std::fs::read(&pods)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let n = v
            .as_array()
            .map(|a| a.iter().filter(|p| p["namespace"] == "bt-mesh").count())
            .unwrap_or(0);
        if n == 2 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the meshed bench pods were not enrolled: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
