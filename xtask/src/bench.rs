//! `cargo xtask bench capture`: what Weft's eBPF capture costs, against the same proxy behind the
//! iptables REDIRECT + SO_ORIGINAL_DST capture sidecar meshes use.
//!
//! One single-node lab (release binaries), one TCP echo server (non-meshed), four client pods:
//! (a) direct, (b) Weft capture, (c) Weft capture with the sk_msg fast path, (d) iptables REDIRECT
//! to the same relay code (`mesh-agent redirect-proxy`) in the client's netns. Every process is
//! pinned to the same CPU; variants run interleaved, round after round; each figure is the median
//! over rounds.
use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    lab::{self, Lab},
    setup, util,
};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Capture cost: latency, connection rate and throughput for direct / Weft / Weft fast path /
    /// iptables REDIRECT.
    Capture(CaptureArgs),
    /// Config-stream scale: 10 000 pods, 1 000 services, 100 agent streams; change → all affected
    /// agents ACKed (p50/p99), bytes per change, controller RSS and CPU.
    ControlPlane(ControlPlaneArgs),
    /// HBONE mTLS cost: 1 KB round-trip latency at a fixed rate and throughput with 1 and 8
    /// streams, for direct / plain-TCP capture / HBONE.
    Tunnel(crate::bench_tunnel::TunnelArgs),
    /// L7 proxy cost: HTTP/1.1 and HTTP/2 1 KB requests, direct vs Weft same-node vs Weft
    /// cross-node, at fixed rates and at saturation: added latency, max rps, agent CPU, RSS.
    L7(crate::bench_l7::L7Args),
}

#[derive(clap::Args)]
pub struct ControlPlaneArgs {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// Interleaved rounds (each runs every variant once).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 3000)]
    rr: usize,
    /// Seconds per connection-rate run.
    #[arg(long, default_value = "1s")]
    crr: String,
    /// MiB per throughput run.
    #[arg(long, default_value_t = 64)]
    stream_mib: usize,
    /// CPU every process is pinned to.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench-direct}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-weft, annotations: {weft.dev/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-fast, annotations: {weft.dev/mesh: enabled, weft.dev/fast-path: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-iptables}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench-direct}
spec:
  containers:
  - {name: echo, command: ["mesh-echo", "--tcp-port", "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench-direct}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench-weft}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench-fast}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench-iptables}
spec:
  containers:
  - {name: c, command: ["sleep", "infinity"]}
  - {name: proxy, command: ["mesh-agent", "redirect-proxy", "--listen", "127.0.0.1:15001"]}
"#;

const VARIANTS: [(&str, &str); 4] = [
    ("a", "bench-direct"),
    ("b", "bench-weft"),
    ("c", "bench-fast"),
    ("d", "bench-iptables"),
];

const LABELS: [&str; 4] = [
    "(a) direct pod→pod",
    "(b) Weft eBPF capture",
    "(c) Weft + sk_msg fast path",
    "(d) iptables REDIRECT + same proxy",
];

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Capture(a) => capture(a),
        BenchCommand::Tunnel(a) => crate::bench_tunnel::run(a),
        BenchCommand::L7(a) => crate::bench_l7::run(a),
        BenchCommand::ControlPlane(a) => {
            util::run(util::cargo().args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "mesh-controller",
            ]))?;
            util::run(
                Command::new(util::target_dir().join("release/mesh-controller"))
                    .args(["bench", "--log", "warn"])
                    .args([
                        "--pods",
                        &a.pods.to_string(),
                        "--services",
                        &a.services.to_string(),
                    ])
                    .args([
                        "--nodes",
                        &a.nodes.to_string(),
                        "--rounds",
                        &a.rounds.to_string(),
                    ]),
            )
        }
    }
}

/// A fresh single-node lab (release binaries) with `manifest` applied; runs `body`, then takes the
/// lab down (also when `body` fails).
pub(crate) fn with_lab(
    manifest: &str,
    body: impl FnOnce(&Lab) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    with_lab_nodes(manifest, 1, body)
}

/// [`with_lab`] with `nodes` nodes.
pub(crate) fn with_lab_nodes(
    manifest: &str,
    nodes: u8,
    body: impl FnOnce(&Lab) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    util::require_root("the benchmark")?;
    setup::run(setup::Mode::Ensure)?;
    let lab = Lab::new()?;
    if lab::is_up(&lab) {
        println!("a lab is running: the benchmark takes it down and uses its own");
        lab::down(&lab)?;
    }
    lab::up_with(&lab, nodes, true, lab::Profile::Release)?;
    let result = (|| -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let f = dir.join("bench.yaml");
        std::fs::write(&f, manifest)?;
        lab::apply(&lab, &[f])?;
        let _ = std::fs::remove_dir_all(&dir);
        body(&lab)
    })();
    let down = lab::down(&lab);
    result?;
    down
}

/// Pins every long-running lab process (agents, servers, relays) to `cpu`.
pub(crate) fn pin_lab(cpu: &str) {
    for pid in lab_pids() {
        let _ =
            util::output(Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]));
    }
}

fn capture(args: CaptureArgs) -> anyhow::Result<()> {
    with_lab(MANIFEST, |lab| {
        let st = lab::state(lab)?;
        let server = st.pods.get("bench-direct/server").context("server pod")?.ip;
        let target = format!("{server}:9000");
        wait_enrolled(lab)?;
        // (d): REDIRECT the client's connections to the server to the in-pod relay.
        exec(
            lab,
            "bench-iptables",
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &server.to_string(),
                "--dport",
                "9000",
                "-m",
                "mark",
                "!",
                "--mark",
                &format!("{:#x}", mesh_common_mark()),
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
        )?;
        // High connection rates exhaust ephemeral ports in TIME_WAIT within a few runs (measured:
        // 5500 conn/s collapsing to 220 after ~14k connections). Same standard tuning for every
        // variant: the full port range and TIME_WAIT reuse in each client pod.
        for (_, ns) in VARIANTS {
            exec(
                lab,
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_local_port_range=1024 65535",
                    "net.ipv4.tcp_tw_reuse=1",
                ],
            )?;
        }
        // Pin every long-running process (agent, server, baseline relay) to one CPU.
        let cpu = args.cpu.to_string();
        pin_lab(&cpu);
        // Warm up every path once.
        for (_, ns) in VARIANTS {
            bench_in(lab, ns, &cpu, &["rr", &target, "-n", "200"])?;
        }
        let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        let t0 = Instant::now();
        for round in 1..=args.rounds {
            for (v, ns) in VARIANTS {
                let rr = bench_in(lab, ns, &cpu, &["rr", &target, "-n", &args.rr.to_string()])?;
                let crr = bench_in(lab, ns, &cpu, &["crr", &target, "-d", &args.crr])?;
                let stream = bench_in(
                    lab,
                    ns,
                    &cpu,
                    &[
                        "stream",
                        &target,
                        "--bytes",
                        &(args.stream_mib << 20).to_string(),
                    ],
                )?;
                if crr["failed"].as_u64().unwrap_or(0) > 0 {
                    bail!("variant {v}: {} connections failed", crr["failed"]);
                }
                for (k, val) in [
                    ("p50", &rr["p50_us"]),
                    ("p99", &rr["p99_us"]),
                    ("cps", &crr["per_second"]),
                    ("mbps", &stream["mb_per_s"]),
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
        let table = render(&samples, &args);
        println!("\n{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    })
}

fn mesh_common_mark() -> u32 {
    0x539
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn render(samples: &BTreeMap<(&str, &str), Vec<f64>>, args: &CaptureArgs) -> String {
    let m = |v: &str, k: &str| median(samples.get(&(v, k)).map(Vec::as_slice).unwrap_or(&[]));
    let mut s = format!(
        "Capture benchmark: {} interleaved rounds, median of per-round figures; rr = {}× 100-byte round trips on one connection, crr = connect + 100-byte round trip + close for {}, stream = {} MiB echoed (each way). All processes pinned to CPU {}; client pods use tcp_tw_reuse=1 and ports 1024-65535. Ratios against (d).\n\n",
        args.rounds, args.rr, args.crr, args.stream_mib, args.cpu
    );
    s.push_str("| variant | rr p50 µs | rr p99 µs | new conn/s | stream MB/s | p50 vs d | p99 vs d | conn/s vs d | MB/s vs d |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for ((v, _), label) in VARIANTS.iter().zip(LABELS) {
        s.push_str(&format!(
            "| {label} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
            m(v, "p50"),
            m(v, "p99"),
            m(v, "cps"),
            m(v, "mbps"),
            m(v, "p50") / m("d", "p50"),
            m(v, "p99") / m("d", "p99"),
            m(v, "cps") / m("d", "cps"),
            m(v, "mbps") / m("d", "mbps"),
        ));
    }
    s
}

fn exec(lab: &Lab, ns: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let argv: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    util::output(&mut lab::pod_command(lab, ns, "client", &argv)?)
}

/// `mesh-bench ARGS` pinned to `cpu` in the `client` pod of `ns`; its JSON report.
pub(crate) fn bench_in(lab: &Lab, ns: &str, cpu: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = vec!["taskset", "-c", cpu, "mesh-bench"];
    cmd.extend_from_slice(args);
    let out = exec(lab, ns, &cmd).with_context(|| format!("mesh-bench {args:?} in {ns}"))?;
    serde_json::from_str(out.trim()).with_context(|| format!("mesh-bench printed {out:?}"))
}

/// Every process of the lab except pods' idle `sleep`s.
pub(crate) fn lab_pids() -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains("/weft-lab/"))
        {
            out.push(pid);
        }
    }
    out
}

fn wait_enrolled(lab: &Lab) -> anyhow::Result<()> {
    let pods = lab.agent_state_dir("node-a").join("pods.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v: Value = std::fs::read(&pods)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let n = v
            .as_array()
            .map(|a| a.iter().filter(|p| p["name"] == "client").count())
            .unwrap_or(0);
        if n == 2 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bench clients were not enrolled: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
