//! `mesh-controller`: Weft's cluster controller.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mesh_common::proto::config::config_service_server::ConfigServiceServer;
use mesh_controller::{
    admin,
    auth::{NodeAuth, TokenReviewAuth},
    model::Store,
    server::{ConfigServer, Hub, NodeStatus},
    sources::files::FilesSource,
    translate,
};
use tracing::info;

/// Weft's cluster controller: watches the cluster (the Kubernetes API or a directory of YAML), streams
/// each node agent exactly the config its node needs, and signs the workload certificates of the
/// pods on the calling agent's node.
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
// Parsed once at start: the size of `Run` does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the controller: watch the cluster (`--source kube`) or a directory of YAML (`--files DIR`),
    /// serve the config stream and the certificate service.
    Run {
        /// Where the cluster comes from: `files` (a directory of YAML, `--files`) or `kube` (the
        /// Kubernetes API: in-cluster config, else KUBECONFIG / ~/.kube/config).
        #[arg(long, value_enum, default_value = "files")]
        source: SourceKind,
        /// Directory of Kubernetes YAML (the lab's cluster view, or what you would `kubectl apply`).
        #[arg(long, required_if_eq("source", "files"))]
        files: Option<PathBuf>,
        /// Config stream (gRPC).
        #[arg(long, default_value = "0.0.0.0:15010")]
        listen: SocketAddr,
        /// Admin HTTP endpoint (`/debug/proxy-status`).
        #[arg(long, default_value = "127.0.0.1:15014")]
        admin: SocketAddr,
        /// Files mode: YAML map node name → bootstrap token; agents must present their node's token.
        #[arg(long)]
        node_tokens: Option<PathBuf>,
        /// Kube mode: the agents' ServiceAccount (`namespace/name`); their projected tokens
        /// (audience `weft-controller`) are checked with TokenReview.
        #[arg(long, default_value = "weft-system/weft-agent")]
        agent_service_account: String,
        /// Kube mode: the Secret with the CA root (`namespace/name`, keys `root-cert.pem` and
        /// `root-key.pem`); generated and created when absent. Files mode uses `--ca-dir`.
        #[arg(long, default_value = "weft-system/weft-ca")]
        ca_secret: String,
        /// Accept agents without a token (local debugging only).
        #[arg(long)]
        insecure_no_auth: bool,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Istio's root namespace: PeerAuthentication / AuthorizationPolicy there apply mesh-wide.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// Certificate service (gRPC, IstioCertificateService shape).
        #[arg(long, default_value = "0.0.0.0:15012")]
        ca_listen: SocketAddr,
        /// Files mode: directory with the CA root (`root-cert.pem`, `root-key.pem`); generated when
        /// absent.
        #[arg(long, default_value = "/var/lib/weft/ca")]
        ca_dir: PathBuf,
        /// A DNS name or IP address agents reach the controller by (repeatable): the config stream
        /// and the certificate service are served over TLS with a certificate for these names,
        /// issued by the mesh root (agents verify it with `--ca-root`).
        #[arg(long, conflicts_with = "plaintext")]
        tls_san: Vec<String>,
        /// Serve the config stream and the certificate service without TLS (tokens and
        /// certificates in clear: local debugging only).
        #[arg(long)]
        plaintext: bool,
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

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum SourceKind {
    Files,
    Kube,
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
            source,
            files,
            listen,
            admin,
            node_tokens,
            agent_service_account,
            ca_secret,
            insecure_no_auth,
            trust_domain,
            root_namespace,
            ca_listen,
            ca_dir,
            debounce,
            tls_san,
            plaintext,
        } => {
            let serve = Serve {
                listen,
                admin,
                ca_listen,
                trust_domain,
                root_namespace,
                debounce,
                tls_sans: if plaintext { vec![] } else { tls_san },
            };
            if !plaintext && serve.tls_sans.is_empty() {
                bail!(
                    "pass --tls-san NAME|IP (repeatable) for TLS on :15010/:15012, or --plaintext"
                );
            }
            match source {
                SourceKind::Files => {
                    let files = files.context("--files DIR is required with --source files")?;
                    let auth = match node_tokens {
                        Some(p) => NodeAuth::tokens(
                            serde_yaml::from_str::<BTreeMap<String, String>>(
                                &std::fs::read_to_string(&p)
                                    .with_context(|| format!("reading {}", p.display()))?,
                            )
                            .with_context(|| {
                                format!("{}: expected a map node → token", p.display())
                            })?,
                        ),
                        None if insecure_no_auth => NodeAuth::Insecure,
                        None => bail!("--node-tokens is required (or --insecure-no-auth)"),
                    };
                    info!(files = %files.display(), %listen, %admin, auth = !matches!(auth, NodeAuth::Insecure), trust_domain = serve.trust_domain, "mesh-controller {} starting (files mode)", env!("CARGO_PKG_VERSION"));
                    let ca = mesh_controller::ca::Ca::load_or_generate(&ca_dir, &serve.trust_domain)
                        .context("loading the CA")?;
                    rt.block_on(async move {
                        let mut src = FilesSource::new(files);
                        src.refresh()
                            .with_context(|| format!("reading {}", src.dir().display()))?;
                        let store = Store::new(src.model());
                        tokio::spawn(watch_files(src, store.clone()));
                        serve
                            .run(store, Arc::new(auth), ca, None, Box::pin(async {}))
                            .await
                    })
                }
                SourceKind::Kube => rt.block_on(async move {
                    if node_tokens.is_some() || insecure_no_auth {
                        bail!("--node-tokens / --insecure-no-auth are files-mode options; kube mode authenticates agents with TokenReview");
                    }
                    let client = kube::Client::try_default()
                        .await
                        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
                    info!(%listen, %admin, trust_domain = serve.trust_domain, "mesh-controller {} starting (kube mode)", env!("CARGO_PKG_VERSION"));
                    let ca = mesh_controller::sources::kube::load_or_create_ca(
                        &client,
                        &ca_secret,
                        &serve.trust_domain,
                    )
                    .await?;
                    let ns = ca_secret.split_once('/').map(|(ns, _)| ns).unwrap_or("weft-system");
                    mesh_controller::sources::kube::publish_root(&client, ns, ca.root_pem()).await?;
                    let store = Store::new(Default::default());
                    let synced = mesh_controller::sources::kube::spawn(client.clone(), store.clone());
                    mesh_controller::sources::kube::report_foreign_crds(&client).await;
                    let auth = NodeAuth::TokenReview(TokenReviewAuth::new(
                        client.clone(),
                        &agent_service_account,
                        store.clone(),
                    ));
                    serve
                        .run(store, Arc::new(auth), ca, Some(client), Box::pin(synced))
                        .await
                }),
            }
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

/// Polls the directory (50 ms) and publishes each changed model.
async fn watch_files(mut src: FilesSource, store: Arc<Store>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match src.refresh() {
            Ok(true) => store.replace(src.model()),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "reading {}: {e}; keeping the last good config",
                src.dir().display()
            ),
        }
    }
}

/// What both modes serve.
struct Serve {
    listen: SocketAddr,
    admin: SocketAddr,
    ca_listen: SocketAddr,
    trust_domain: String,
    root_namespace: String,
    debounce: Duration,
    /// Names/addresses of the controller's TLS certificate; empty = plaintext (`--plaintext`).
    tls_sans: Vec<String>,
}

/// A tonic server builder, with TLS (a certificate from the mesh root) unless plaintext.
fn grpc_server(tls: &Option<(String, String)>) -> anyhow::Result<tonic::transport::Server> {
    let b = tonic::transport::Server::builder();
    Ok(match tls {
        Some((cert, key)) => b
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .context("TLS for the controller's gRPC endpoints")?,
        None => b,
    })
}

impl Serve {
    async fn run(
        self,
        store: Arc<Store>,
        auth: Arc<NodeAuth>,
        ca: mesh_controller::ca::Ca,
        kube: Option<kube::Client>,
        synced: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> anyhow::Result<()> {
        let Self {
            listen,
            admin: admin_addr,
            ca_listen,
            trust_domain: td,
            root_namespace,
            debounce,
            tls_sans,
        } = self;
        let tls = if tls_sans.is_empty() {
            tracing::warn!(
                "PLAINTEXT gRPC (--plaintext): agent tokens and certificates cross the network in clear"
            );
            None
        } else {
            Some(
                ca.server_identity(&tls_sans)
                    .context("the controller's TLS certificate")?,
            )
        };

        let hub = Hub::new(auth.clone());
        let bundle = translate::trust_bundle(&td, vec![ca.root_pem().to_string()]);
        let ca_server = mesh_controller::ca::CaServer {
            ca: Arc::new(ca),
            store: store.clone(),
            auth,
        };
        let mut ca_grpc = grpc_server(&tls)?;
        tokio::spawn(async move {
            let svc = mesh_common::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer::new(ca_server);
            if let Err(e) = ca_grpc.add_service(svc).serve(ca_listen).await {
                tracing::error!("certificate service on {ca_listen}: {e}");
            }
        });
        let h = hub.clone();
        let mut changes = store.subscribe();
        tokio::spawn(async move {
            // Until every kind is listed the hub has no config: subscribers wait, /readyz is 503.
            synced.await;
            let mut reported = std::collections::BTreeSet::new();
            let mut interner = translate::Interner::default();
            let mut status = kube.map(mesh_controller::status::StatusWriter::new);
            loop {
                changes.borrow_and_update();
                let m = store.snapshot();
                h.update(translate::with_trust_bundle(
                    translate::all_nodes_interned(
                        &m,
                        &translate::TranslateOptions {
                            trust_domain: &td,
                            root_namespace: &root_namespace,
                        },
                        &mut interner,
                    ),
                    &bundle,
                ));
                reported = report_diagnostics(&m, &reported);
                if let Some(w) = status.as_mut() {
                    w.write(&m).await;
                }
                if changes.changed().await.is_err() {
                    break;
                }
                // Debounce: wait until the source is quiet for `debounce`, at most 10× that.
                let start = Instant::now();
                loop {
                    changes.borrow_and_update();
                    tokio::time::sleep(debounce).await;
                    if !changes.has_changed().unwrap_or(false) || start.elapsed() > debounce * 10 {
                        break;
                    }
                }
            }
        });
        let a = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin_addr, a).await {
                tracing::error!("admin endpoint {admin_addr}: {e}");
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        grpc_server(&tls)?
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
