//! `mesh-agent`: Weft's per-node agent.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_agent::{
    agent::{Agent, AgentConfig, Source},
    ebpf::{Datapath, pins::PinLayout},
    inspect,
    sources::controller::Credential,
};
use serde_json::json;

/// Weft's per-node agent: loads the eBPF capture programs, enrols this node's meshed pods (in-pod
/// listeners, no restart) and runs the node proxy for them.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), also read from RUST_LOG.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct NodeArgs {
    /// This node's name (pins live under /sys/fs/bpf/weft/<node>).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Pin directory (default /sys/fs/bpf/weft/<node>).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Agent state directory (default /run/weft/<node>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl NodeArgs {
    fn pins(&self) -> PinLayout {
        self.pin_dir
            .clone()
            .map(PinLayout::new)
            .unwrap_or_else(|| PinLayout::for_node(&self.node))
    }
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/weft").join(&self.node))
    }
}

#[derive(Subcommand)]
// Parsed once at start: the size of `Run` does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the agent: attach (or adopt) the data path, enrol meshed pods, proxy their traffic.
    Run {
        #[command(flatten)]
        node: NodeArgs,
        /// The pods cgroup subtree the capture hooks attach to (kubelet's `kubepods`).
        #[arg(long)]
        pods_cgroup: PathBuf,
        /// Workloads from mesh-controller's config stream (e.g. http://10.100.0.254:15010).
        #[arg(long, conflicts_with_all = ["local_config", "lab_cluster_dir"], required_unless_present_any = ["local_config", "lab_cluster_dir"])]
        controller: Option<String>,
        /// File holding this node's credential for the controller (files mode: its bootstrap
        /// token; Kubernetes: the projected ServiceAccount token). Re-read for every request.
        #[arg(long, requires = "controller")]
        token_file: Option<PathBuf>,
        /// The controller's certificate service; default: the --controller host on port 15012.
        #[arg(long, requires = "controller")]
        ca: Option<String>,
        /// The mesh root (PEM file) that verifies the controller's TLS certificate; required for
        /// `https://` controller URLs (Kubernetes: the `weft-ca-root` ConfigMap).
        #[arg(long, requires = "controller")]
        ca_root: Option<PathBuf>,
        /// Requested lifetime of workload certificates (rotated at half-life).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        cert_ttl: Duration,
        /// Workloads from a local file (YAML/JSON `{workloads: [...]}`), the shape the controller streams.
        #[arg(long, conflicts_with = "lab_cluster_dir")]
        local_config: Option<PathBuf>,
        /// Workloads from the lab's cluster view (Namespaces and Pods as YAML files).
        #[arg(long)]
        lab_cluster_dir: Option<PathBuf>,
        /// Serve /metrics here (Prometheus text format).
        #[arg(long, default_value = "0.0.0.0:15020")]
        metrics: SocketAddr,
        /// Admin endpoint (`mesh-agent config|certs|connections`); keep it on localhost.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Node addresses that kubelet probes come from: never steered to the proxy.
        #[arg(long = "probe-source")]
        probe_sources: Vec<Ipv4Addr>,
        /// Turn the same-node sk_msg fast path on for every pod of this node.
        #[arg(long)]
        fast_path: bool,
        /// How often to re-read the workload source.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// Proxy worker threads (default: one per CPU). Where the agent shares a few CPUs with
        /// the workloads, fewer threads mean fewer cross-thread wake-ups (docs/benchmarks.md).
        #[arg(long, env = "WEFT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
    },
    /// Inspect (or switch) this node's eBPF data path, from its pins.
    #[command(subcommand)]
    Bpf(BpfCommand),
    /// Benchmark baseline only: the same relay behind iptables REDIRECT + SO_ORIGINAL_DST (run it
    /// inside a pod netns next to a REDIRECT rule). Not part of the mesh.
    #[command(hide = true)]
    RedirectProxy {
        #[arg(long, default_value = "127.0.0.1:15001")]
        listen: SocketAddr,
    },
    /// Remove every pin of the node (detaching all programs) and the agent's state. Stop the agent first.
    Uninstall {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The running agent's config: pods enrolled here, services/endpoints, meshed pods, trust bundle.
    Config {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The running agent's workload certificates: identity, serial, validity, state, chain.
    Certs {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The running agent's open connections and pooled HBONE tunnels, with identities.
    Connections {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The running agent's L7 clusters per pod: load balancer, requests in flight, pending
    /// requests, endpoints ejected by outlier detection.
    Clusters {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The agent's admin endpoint (in the node's network namespace).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Load every Weft program into the kernel (the verifier runs), print names and ids, unload.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Weft programs of this node: attach points (links), run counts.
    Progs {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Every map with its entries decoded (pods by name).
    Maps {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Per pod: enrolled?, cgroup id, netns cookie, listeners, fast path.
    Pods {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        json: bool,
    },
    /// The decision counters.
    Stats {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show or switch the node's bypass (deliberate fail-open: capture stops for every pod).
    Bypass {
        #[command(flatten)]
        node: NodeArgs,
        /// on | off | status
        #[arg(value_parser = ["on", "off", "status"], default_value = "status")]
        state: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command_name = match &cli.command {
        Command::Config { .. } => "config",
        Command::Certs { .. } => "certs",
        Command::Clusters { .. } => "clusters",
        _ => "connections",
    };
    match cli.command {
        Command::Run {
            node,
            pods_cgroup,
            controller,
            token_file,
            ca,
            ca_root,
            cert_ttl,
            local_config,
            lab_cluster_dir,
            metrics,
            admin,
            probe_sources,
            fast_path,
            resync,
            worker_threads,
        } => {
            let source = match (controller, local_config, lab_cluster_dir) {
                (Some(url), _, _) => {
                    // Checked now (a typo fails at start), read again for every subscription.
                    let credential = match token_file {
                        Some(f) => {
                            std::fs::read_to_string(&f)
                                .with_context(|| format!("reading {}", f.display()))?;
                            Credential::File(f)
                        }
                        None => Credential::Token(String::new()),
                    };
                    let ca = match ca {
                        Some(ca) => ca,
                        None => ca_from_controller(&url)?,
                    };
                    let ca_root_pem = match &ca_root {
                        Some(f) => Some(
                            std::fs::read_to_string(f)
                                .with_context(|| format!("reading --ca-root {}", f.display()))?,
                        ),
                        None if url.starts_with("https://") => anyhow::bail!(
                            "--controller {url} is https: --ca-root FILE (the mesh root) is required to verify it"
                        ),
                        None => {
                            tracing::warn!(
                                "PLAINTEXT to the controller ({url}): the node token and certificates cross the network in clear; use https:// with --ca-root"
                            );
                            None
                        }
                    };
                    Source::Controller {
                        url,
                        credential,
                        ca,
                        cert_ttl,
                        ca_root_pem,
                    }
                }
                (None, Some(f), _) => Source::Local(f),
                (None, None, Some(d)) => Source::Lab(d),
                (None, None, None) => anyhow::bail!(
                    "one of --controller, --local-config or --lab-cluster-dir is required"
                ),
            };
            let cfg = AgentConfig {
                pins: node.pins(),
                state_dir: node.state_dir(),
                node: node.node.clone(),
                pods_cgroup,
                source,
                metrics_addr: Some(metrics),
                admin_addr: Some(admin),
                probe_sources,
                fast_path,
                resync,
            };
            tracing::info!(config = ?cfg, "mesh-agent {} starting", env!("CARGO_PKG_VERSION"));
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = worker_threads {
                rt.worker_threads(usize::from(n));
            }
            let rt = rt.enable_all().build()?;
            rt.block_on(async move {
                let agent = Agent::start(cfg).context("starting the agent")?;
                agent.run().await.context("agent")
            })
        }
        Command::Config { admin }
        | Command::Certs { admin }
        | Command::Connections { admin }
        | Command::Clusters { admin } => {
            let path = match command_name {
                "config" => "/config",
                "certs" => "/certs",
                "clusters" => "/clusters",
                _ => "/connections",
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let v = rt.block_on(mesh_agent::admin::get(admin.admin, path))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Uninstall { node } => {
            let removed = inspect::uninstall(&node.pins(), &node.state_dir())?;
            println!(
                "{}",
                if removed {
                    format!(
                        "removed {} (all programs detached)",
                        node.pins().root.display()
                    )
                } else {
                    "nothing pinned".into()
                }
            );
            Ok(())
        }
        Command::Bpf(cmd) => bpf(cmd),
        Command::RedirectProxy { listen } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen).await?;
                mesh_agent::proxy::baseline::serve(l).await
            })?;
            Ok(())
        }
    }
}

fn print(
    json_out: bool,
    v: &serde_json::Value,
    table: impl FnOnce(&serde_json::Value),
) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        table(v);
    }
    Ok(())
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn bpf(cmd: BpfCommand) -> anyhow::Result<()> {
    match cmd {
        BpfCommand::Check { json } => {
            let dir = PinLayout::new(format!("/sys/fs/bpf/weft-check-{}", std::process::id()));
            let res = (|| -> anyhow::Result<Vec<(String, u32)>> {
                let mut dp = Datapath::open(dir.clone()).context("loading Weft's eBPF object")?;
                Ok(dp.load_all()?)
            })();
            let _ = std::fs::remove_dir_all(&dir.root);
            let progs = res?;
            let v = json!(
                progs
                    .iter()
                    .map(|(n, id)| json!({"name": n, "id": id}))
                    .collect::<Vec<_>>()
            );
            print(json, &v, |_| {
                println!("{:<20} {:>8}", "PROGRAM", "ID");
                for (n, id) in &progs {
                    println!("{n:<20} {id:>8}");
                }
                println!("ok: {} programs loaded and verified", progs.len());
            })
        }
        BpfCommand::Progs { node, json } => {
            let v = inspect::progs_json(&node.pins())?;
            print(json, &v, |v| {
                println!("PROGRAMS");
                println!("  {:>6} {:<18} {:<16} {:>10}", "ID", "NAME", "TYPE", "RUNS");
                for p in v["programs"].as_array().into_iter().flatten() {
                    println!(
                        "  {:>6} {:<18} {:<16} {:>10}",
                        s(&p["id"]),
                        s(&p["name"]),
                        s(&p["type"]),
                        s(&p["run_count"])
                    );
                }
                println!("LINKS (pinned attachments)");
                println!(
                    "  {:<48} {:>6} {:>6} {:<22} TARGET",
                    "PIN", "LINK", "PROG", "ATTACH"
                );
                for l in v["links"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<48} {:>6} {:>6} {:<22} {}",
                        s(&l["pin"]),
                        s(&l["link_id"]),
                        s(&l["prog_id"]),
                        s(&l["attach_type"]),
                        s(&l["target"])
                    );
                }
            })
        }
        BpfCommand::Maps { node, json } => {
            let v = inspect::maps_json(&node.pins(), &node.state_dir())?;
            print(json, &v, |v| {
                for (name, entries) in v.as_object().into_iter().flatten() {
                    match entries {
                        serde_json::Value::Array(a) => {
                            println!("{name} ({} entries)", a.len());
                            for e in a {
                                println!("  {}", s(e));
                            }
                        }
                        other => println!("{name}: {other}"),
                    }
                }
            })
        }
        BpfCommand::Pods { node, json } => {
            let v = inspect::pods_json(&node.pins(), &node.state_dir())?;
            print(json, &v, |v| {
                println!(
                    "{:<12} {:<36} {:<14} {:<8} {:>10} {:>8} {:<5} LISTENERS",
                    "NAMESPACE", "POD", "IP", "ENROLLED", "CGROUP-ID", "NETNS", "FAST"
                );
                for p in v.as_array().into_iter().flatten() {
                    let l: Vec<String> = p["listeners"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    println!(
                        "{:<12} {:<36} {:<14} {:<8} {:>10} {:>8} {:<5} {}",
                        s(&p["namespace"]),
                        s(&p["name"]),
                        s(&p["ip"]),
                        s(&p["enrolled"]),
                        s(&p["cgroup_id"]),
                        s(&p["netns_cookie"]),
                        s(&p["fast_path"]),
                        l.join(" ")
                    );
                }
            })
        }
        BpfCommand::Stats { node, json } => {
            let st = inspect::stats(&node.pins())?;
            let v = json!(
                st.iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            );
            print(json, &v, |_| {
                for (k, v) in &st {
                    println!("{k:<28} {v:>12}");
                }
            })
        }
        BpfCommand::Bypass { node, state, json } => {
            let pins = node.pins();
            let cfg = match state.as_str() {
                "on" => inspect::set_bypass(&pins, true)?,
                "off" => inspect::set_bypass(&pins, false)?,
                _ => inspect::config(&pins)?,
            };
            let on = cfg.flags & mesh_common::config_flags::BYPASS != 0;
            if on && state == "on" {
                eprintln!(
                    "WARNING: bypass is ON for node {}: meshed pods' traffic is no longer captured (fail open)",
                    node.node
                );
            }
            print(json, &json!({"node": node.node, "bypass": on}), |_| {
                println!(
                    "node {}: bypass {}",
                    node.node,
                    if on {
                        "ON (traffic is NOT captured)"
                    } else {
                        "off (capture enforced, fail closed)"
                    }
                );
            })
        }
    }
}

/// `http://host:15010` → `http://host:15012`.
fn ca_from_controller(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--controller {url:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("--controller {url:?} has no host"))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!("{scheme}://{host}:{}", mesh_common::ports::CA))
}
