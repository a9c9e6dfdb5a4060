//! `mesh-controller`: Weft's cluster controller.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mesh_common::proto::config::config_service_server::ConfigServiceServer;
use mesh_controller::{
    admin,
    server::{ConfigServer, Hub, NodeStatus},
    sources::files::FilesSource,
    translate,
};
use tracing::info;

/// Weft's cluster controller: watches the cluster (today: a directory of Kubernetes YAML) and streams
/// each node agent exactly the config its node needs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), also read from RUST_LOG.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller in files mode: watch DIR, serve the config stream.
    Run {
        /// Directory of Kubernetes YAML (the lab's cluster view, or what you would `kubectl apply`).
        #[arg(long)]
        files: PathBuf,
        /// Config stream (gRPC).
        #[arg(long, default_value = "0.0.0.0:15010")]
        listen: SocketAddr,
        /// Admin HTTP endpoint (`/debug/proxy-status`).
        #[arg(long, default_value = "127.0.0.1:15014")]
        admin: SocketAddr,
        /// YAML map node name → bootstrap token; agents must present their node's token.
        #[arg(long, required_unless_present = "insecure_no_auth")]
        node_tokens: Option<PathBuf>,
        /// Accept agents without a token (local debugging only).
        #[arg(long)]
        insecure_no_auth: bool,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Certificate service (gRPC, IstioCertificateService shape).
        #[arg(long, default_value = "0.0.0.0:15012")]
        ca_listen: SocketAddr,
        /// Directory with the CA root (`root-cert.pem`, `root-key.pem`); generated when absent.
        #[arg(long, default_value = "/var/lib/weft/ca")]
        ca_dir: PathBuf,
        /// Changes are coalesced for this long (capped at 10×) before being sent.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        debounce: Duration,
    },
    /// Check a directory of Istio / Gateway API / Kubernetes YAML offline: one diagnostic per
    /// problem (Istio's codes and wording); exit status 1 when any is an error or warning.
    Analyze {
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
    },
    /// Config-stream scale benchmark (used by `cargo xtask bench control-plane`).
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 1_000)]
        services: usize,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// Print the CustomResourceDefinitions of the Istio APIs Weft serves (deploy/crds/).
    Crds,
    /// Per node: last config version sent, last acknowledged, NACK reason, age.
    ProxyStatus {
        /// The controller's admin endpoint.
        #[arg(long, default_value = "127.0.0.1:15014")]
        admin: SocketAddr,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            files,
            listen,
            admin,
            node_tokens,
            insecure_no_auth,
            trust_domain,
            ca_listen,
            ca_dir,
            debounce,
        } => {
            let tokens = match node_tokens {
                Some(p) => Some(
                    serde_yaml::from_str::<BTreeMap<String, String>>(
                        &std::fs::read_to_string(&p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    )
                    .with_context(|| format!("{}: expected a map node → token", p.display()))?,
                ),
                None if insecure_no_auth => None,
                None => bail!("--node-tokens is required (or --insecure-no-auth)"),
            };
            info!(files = %files.display(), %listen, %admin, auth = tokens.is_some(), trust_domain, "mesh-controller {} starting (files mode)", env!("CARGO_PKG_VERSION"));
            let ca = mesh_controller::ca::Ca::load_or_generate(&ca_dir, &trust_domain)
                .context("loading the CA")?;
            rt.block_on(run(
                files,
                listen,
                admin,
                tokens,
                trust_domain,
                debounce,
                (ca_listen, ca),
            ))
        }
        Command::ProxyStatus { admin, json } => rt.block_on(proxy_status(admin, json)),
        Command::Bench {
            pods,
            services,
            nodes,
            rounds,
        } => {
            let table = rt.block_on(mesh_controller::bench::run(
                mesh_controller::bench::BenchArgs {
                    pods,
                    services,
                    nodes,
                    rounds,
                },
            ))?;
            print!("{table}");
            Ok(())
        }
        Command::Crds => {
            print!("{}", mesh_controller::crd::crds_yaml());
            Ok(())
        }
        Command::Analyze { dir } => {
            let (diags, objects) = mesh_controller::validate::analyze_dir(&dir)?;
            for d in &diags {
                println!("{d}");
            }
            let bad = diags
                .iter()
                .filter(|d| {
                    matches!(
                        d.severity,
                        mesh_controller::validate::Severity::Error
                            | mesh_controller::validate::Severity::Warning
                    )
                })
                .count();
            if diags.is_empty() {
                println!(
                    "✔ No validation issues found when analyzing {} ({objects} objects).",
                    dir.display()
                );
            } else {
                eprintln!(
                    "{} diagnostic(s) ({bad} error/warning) in {objects} objects",
                    diags.len()
                );
            }
            std::process::exit(if bad > 0 { 1 } else { 0 })
        }
    }
}

async fn run(
    files: PathBuf,
    listen: SocketAddr,
    admin_addr: SocketAddr,
    tokens: Option<BTreeMap<String, String>>,
    td: String,
    debounce: Duration,
    (ca_listen, ca): (SocketAddr, mesh_controller::ca::Ca),
) -> anyhow::Result<()> {
    // Without node tokens the CA cannot tell nodes apart: it then refuses every request.
    let nodes_by_token = tokens
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, t)| (t, n))
        .collect();
    let hub = Hub::new(tokens);
    let mut src = FilesSource::new(files);
    src.refresh()
        .with_context(|| format!("reading {}", src.dir().display()))?;
    let model = std::sync::Arc::new(std::sync::RwLock::new(src.model()));
    let bundle = translate::trust_bundle(&td, vec![ca.root_pem().to_string()]);
    hub.update(translate::with_trust_bundle(
        translate::all_nodes(&src.model(), &translate::TranslateOptions::new(&td)),
        &bundle,
    ));
    let mut reported = report_diagnostics(&src.model(), &std::collections::BTreeSet::new());
    let ca_server = mesh_controller::ca::CaServer {
        ca: std::sync::Arc::new(ca),
        model: model.clone(),
        nodes_by_token,
    };
    tokio::spawn(async move {
        let svc = mesh_common::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer::new(ca_server);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve(ca_listen)
            .await
        {
            tracing::error!("certificate service on {ca_listen}: {e}");
        }
    });
    let h = hub.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match src.refresh() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(
                        "reading {}: {e}; keeping the last good config",
                        src.dir().display()
                    );
                    continue;
                }
            }
            // Debounce: wait until the source is quiet for `debounce`, at most 10× that.
            let start = Instant::now();
            loop {
                tokio::time::sleep(debounce).await;
                if !src.refresh().unwrap_or(false) || start.elapsed() > debounce * 10 {
                    break;
                }
            }
            let m = src.model();
            h.update(translate::with_trust_bundle(
                translate::all_nodes(&m, &translate::TranslateOptions::new(&td)),
                &bundle,
            ));
            reported = report_diagnostics(&m, &reported);
            *model.write().unwrap_or_else(|p| p.into_inner()) = m;
        }
    });
    let a = hub.clone();
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_addr, a).await {
            tracing::error!("admin endpoint {admin_addr}: {e}");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(ConfigServiceServer::new(ConfigServer { hub }))
        .serve_with_shutdown(listen, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .with_context(|| format!("serving the config stream on {listen}"))
}

/// Logs validation findings of the current model that were not reported before (files mode: the
/// logs and `analyze` are where they show; status conditions come with the Kubernetes source).
fn report_diagnostics(
    model: &mesh_controller::model::Model,
    before: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let now: std::collections::BTreeSet<String> = mesh_controller::validate::validate_model(model)
        .iter()
        .map(|d| d.to_string())
        .collect();
    for d in now.difference(before) {
        if d.starts_with("Error") {
            tracing::error!("{d}");
        } else if d.starts_with("Warn") {
            tracing::warn!("{d}");
        } else {
            tracing::info!("{d}");
        }
    }
    now
}

async fn proxy_status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("connecting to the controller admin endpoint {admin}"))?;
    s.write_all(
        format!("GET /debug/proxy-status HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("malformed admin response")?;
    let status: BTreeMap<String, NodeStatus> =
        serde_json::from_str(body).context("admin response")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let age = |ms: u64| {
        if ms == 0 {
            "-".to_string()
        } else {
            format!("{:.1}s", (now.saturating_sub(ms)) as f64 / 1000.0)
        }
    };
    println!(
        "{:<10} {:<10} {:<22} {:>7} {:<22} {:>7} {:>5} NACK",
        "NODE", "CONNECTED", "SENT", "AGE", "ACKED", "AGE", "RES"
    );
    for (node, s) in &status {
        let synced = if s.last_sent_version == s.last_acked_version {
            ""
        } else {
            " (not acked)"
        };
        println!(
            "{:<10} {:<10} {:<22} {:>7} {:<22} {:>7} {:>5} {}{}",
            node,
            s.connected,
            s.last_sent_version,
            age(s.last_sent_unix_ms),
            s.last_acked_version,
            age(s.last_acked_unix_ms),
            s.resources,
            s.last_nack.clone().unwrap_or_else(|| "-".into()),
            synced
        );
    }
    Ok(())
}
