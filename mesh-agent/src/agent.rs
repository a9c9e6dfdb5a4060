//! `mesh-agent run`: load/adopt the data path, then keep this node's pods enrolled as the workload
//! source changes, and serve their in-pod listeners.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, error, info, warn};

use crate::{
    ebpf::{Datapath, EbpfError, Enrolment, OrigDstTable, netns, pins::PinLayout},
    identity::{CertManager, ManagerConfig},
    metrics::{BpfLabels, Metrics},
    pods::{
        locate,
        worker::{NetnsWorker, WorkerError},
    },
    proxy::{PodCtx, TunnelCtx, inbound, outbound},
    sources::{self, Snapshot},
    state::{
        enrolment::{self, PodPlan},
        mesh::SharedMesh,
    },
};

/// Where workloads come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--local-config FILE`
    Local(PathBuf),
    /// `--lab-cluster-dir DIR`
    Lab(PathBuf),
    /// `--controller URL` (with the node's bootstrap token)
    Controller {
        url: String,
        credential: sources::controller::Credential,
        /// The certificate service (`http://<controller>:15012`).
        ca: String,
        /// Requested workload certificate lifetime.
        cert_ttl: Duration,
        /// The mesh root (PEM) verifying the controller's TLS certificate; `None`: plaintext.
        ca_root_pem: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub pods_cgroup: PathBuf,
    pub pins: PinLayout,
    pub state_dir: PathBuf,
    pub source: Source,
    pub metrics_addr: Option<SocketAddr>,
    /// Admin endpoint (`config`, `certs`, `connections`), localhost.
    pub admin_addr: Option<SocketAddr>,
    pub probe_sources: Vec<Ipv4Addr>,
    pub fast_path: bool,
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("pod {pod}: {message}")]
    Pod { pod: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The listeners opened inside a pod's netns at enrolment, and the netns cookie.
struct PodListeners {
    out4: std::net::TcpListener,
    out6: Option<std::net::TcpListener>,
    inb: std::net::TcpListener,
    hbone: Option<std::net::TcpListener>,
    cookie: u64,
}

/// One enrolled pod.
struct Enrolled {
    plan: PodPlan,
    enrolment: Enrolment,
    ctx: Arc<PodCtx>,
    accept_tasks: Vec<JoinHandle<()>>,
    cgroup: PathBuf,
    cgroup_id: u64,
    listeners: Vec<String>,
}

/// What `mesh-agent bpf pods` reads (`<state dir>/pods.json`).
#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub pod_index: u32,
    pub fast_path: bool,
    pub listeners: Vec<String>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
}

pub struct Agent {
    cfg: AgentConfig,
    datapath: Datapath,
    orig: Arc<OrigDstTable>,
    metrics: Arc<Metrics>,
    enrolled: BTreeMap<String, Enrolled>,
    next_index: u32,
    last_good: Option<Snapshot>,
    controller: Option<sources::controller::ControllerSource>,
    /// Some desired pod could not be enrolled yet (retried every pass).
    pending: bool,
    /// What `pods.json` was last written for.
    written: String,
    /// Services, endpoints and the trust bundle from the controller (read by the proxy).
    mesh: Arc<SharedMesh>,
    /// Workload certificates (controller mode).
    certs: Option<Arc<CertManager>>,
    /// The mTLS tunnel (controller mode).
    tunnel: Option<Arc<TunnelCtx>>,
    /// Open proxied connections.
    conns: Arc<crate::proxy::conns::ConnRegistry>,
    admin: Option<Arc<crate::admin::AdminState>>,
}

impl Agent {
    /// Opens (or adopts) the node's data path and attaches the cgroup hooks.
    pub fn start(cfg: AgentConfig) -> Result<Self, AgentError> {
        let mut datapath = Datapath::open(cfg.pins.clone())?;
        let own = locate::own_cgroup();
        let report = datapath.attach_cgroup_hooks(&cfg.pods_cgroup, own.as_deref())?;
        info!(node = %cfg.node, pins = %cfg.pins.root.display(), attached = ?report.attached, adopted = ?report.adopted, "data path ready");
        let own_id = own
            .as_deref()
            .and_then(|p| locate::cgroup_id(p).ok())
            .unwrap_or(0);
        datapath.set_config(own_id)?;
        datapath.set_probe_sources(&cfg.probe_sources)?;
        if datapath.config()?.flags & mesh_common::config_flags::BYPASS != 0 {
            warn!(
                "BYPASS IS ON for node {}: meshed pods' traffic is NOT captured (fail open); `mesh-agent bpf bypass off` restores capture",
                cfg.node
            );
        }
        let orig = Arc::new(OrigDstTable::open(&cfg.pins)?);
        std::fs::create_dir_all(&cfg.state_dir)?;
        Ok(Self {
            cfg,
            datapath,
            orig,
            metrics: Metrics::new(),
            enrolled: BTreeMap::new(),
            next_index: 1,
            last_good: None,
            controller: None,
            pending: false,
            written: String::new(),
            mesh: Arc::new(SharedMesh::default()),
            certs: None,
            tunnel: None,
            conns: Arc::default(),
            admin: None,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until SIGTERM/SIGINT.
    pub async fn run(mut self) -> Result<(), AgentError> {
        if let Source::Controller {
            url,
            credential,
            ca,
            cert_ttl,
            ca_root_pem,
        } = &self.cfg.source
        {
            self.controller = Some(sources::controller::ControllerSource::spawn_tls(
                url.clone(),
                self.cfg.node.clone(),
                credential.clone(),
                ca_root_pem.clone(),
            ));
            let mut mc = ManagerConfig::new(ca.clone(), credential.clone());
            mc.ttl = *cert_ttl;
            mc.ca_root_pem = ca_root_pem.clone();
            let certs = Arc::new(CertManager::new(mc).map_err(|e| AgentError::Pod {
                pod: "-".into(),
                message: format!("certificate manager for {ca}: {e}"),
            })?);
            self.tunnel = Some(Arc::new(TunnelCtx {
                pool: crate::hbone::client::Pool::default(),
                certs: Arc::new(crate::proxy::certs::AgentCerts {
                    manager: certs.clone(),
                    mesh: self.mesh.clone(),
                }),
                mesh: self.mesh.clone(),
            }));
            self.certs = Some(certs);
        }
        if let Some(addr) = self.cfg.admin_addr {
            let st = Arc::new(crate::admin::AdminState {
                node: self.cfg.node.clone(),
                pods: std::sync::Mutex::new(serde_json::Value::Array(vec![])),
                pod_ctxs: std::sync::Mutex::new(vec![]),
                mesh: self.mesh.clone(),
                certs: self.certs.clone(),
                tunnel: self.tunnel.clone(),
                conns: self.conns.clone(),
            });
            self.admin = Some(st.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::admin::serve(addr, st).await {
                    error!("admin endpoint on {addr}: {e}");
                }
            });
        }
        if let Some(addr) = self.cfg.metrics_addr {
            let m = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(addr, m).await {
                    error!("metrics server on {addr}: {e}");
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut first = true;
        let mut last_stamp = None;
        let mut last_full = std::time::Instant::now();
        let mut last_stats = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            // Re-read the source only when it changed, some pod is still waiting to be enrolled, or
            // every 10 s; the proxy shares the CPU with this loop.
            let stamp = self.source_stamp();
            if first
                || stamp != last_stamp
                || self.pending
                || last_full.elapsed() > Duration::from_secs(10)
            {
                last_stamp = stamp;
                last_full = std::time::Instant::now();
                self.reconcile_once().await;
            }
            if first {
                self.forget_stale();
                first = false;
            }
            if last_stats.elapsed() > Duration::from_secs(5) {
                last_stats = std::time::Instant::now();
                self.refresh_stats();
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.resync) => {}
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        info!(
            "shutting down: pins stay, so the data path keeps failing closed until an agent returns"
        );
        Ok(())
    }

    /// Modification time of the source (the file, or the directory whose entries are replaced by
    /// rename on every change).
    fn source_stamp(&self) -> Option<u128> {
        let p = match &self.cfg.source {
            Source::Local(p) | Source::Lab(p) => p,
            Source::Controller { .. } => {
                return self.controller.as_ref().map(|c| u128::from(c.generation()));
            }
        };
        let t = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos())
    }

    fn refresh_stats(&self) {
        if let Ok(stats) = self.datapath.stats() {
            for (name, v) in stats {
                self.metrics
                    .bpf
                    .get_or_create(&BpfLabels {
                        decision: name.into(),
                    })
                    .set(v as i64);
            }
        }
        if let Some(certs) = &self.certs {
            let now = std::time::SystemTime::now();
            self.metrics.cert_expiry.clear();
            for c in certs.certs() {
                let l = crate::metrics::IdentityLabels {
                    identity: c.identity.to_string(),
                };
                if let Some(s) = c.expiry_seconds(now) {
                    self.metrics.cert_expiry.get_or_create(&l).set(s);
                }
                self.metrics
                    .cert_rotations
                    .get_or_create(&l)
                    .set(c.rotations_total as i64);
                self.metrics
                    .cert_failures
                    .get_or_create(&l)
                    .set(c.failures_total as i64);
            }
        }
        if let Some(c) = &self.controller {
            self.metrics.config_generation.set(c.generation() as i64);
        }
    }

    fn read_source(&self) -> Result<Snapshot, sources::SourceError> {
        match &self.cfg.source {
            Source::Local(p) => sources::local::read(p),
            Source::Lab(d) => sources::lab::read(d),
            Source::Controller { url, .. } => match &self.controller {
                Some(c) => c.read(),
                None => Err(sources::SourceError::Parse {
                    path: url.clone(),
                    message: "controller client not started".into(),
                }),
            },
        }
    }

    /// One pass: read the source (keeping the last good snapshot on errors), enrol/un-enrol.
    pub async fn reconcile_once(&mut self) {
        let snap = match self.read_source() {
            Ok(s) => {
                for p in &s.problems {
                    warn!("workload source: {p}");
                }
                self.last_good = Some(s.clone());
                s
            }
            Err(e) => {
                warn!("workload source: {e}; keeping the last good workloads");
                match &self.last_good {
                    Some(s) => s.clone(),
                    None => return,
                }
            }
        };
        if let Some(m) = &snap.mesh {
            self.mesh.store(m.clone());
            // Policies may have changed: close inbound connections that are no longer allowed.
            let closed = self.conns.recheck(|c| {
                if c.direction == "inbound" {
                    m.check_inbound(&c.pod_uid, c.src_identity.as_deref(), c.src.ip(), c.dst)
                } else {
                    Ok(())
                }
            });
            if closed > 0 {
                info!(closed, "policy change closed connections");
            }
        }
        let (desired, errors) =
            enrolment::desired(&snap.workloads, &self.cfg.node, self.cfg.fast_path);
        for e in errors {
            warn!(pod = %e.pod, "not enrolled: {}", e.message);
        }
        let present: BTreeSet<&str> = snap.workloads.iter().map(|w| w.uid.as_str()).collect();
        let current: BTreeMap<String, PodPlan> = self
            .enrolled
            .iter()
            .map(|(k, v)| (k.clone(), v.plan.clone()))
            .collect();
        let d = enrolment::diff(&current, &desired);
        // Fast path and exclusions change in place; anything else re-enrols the pod.
        let rebuild: Vec<String> = d
            .update
            .iter()
            .filter(|uid| match desired.get(*uid) {
                Some(plan) => !self.update_in_place(uid, plan),
                None => false,
            })
            .cloned()
            .collect();
        for uid in d.unenroll.iter().chain(rebuild.iter()) {
            let hard = !present.contains(uid.as_str());
            self.unenroll(uid, hard);
        }
        for uid in d.enroll.iter().chain(rebuild.iter()) {
            let Some(plan) = desired.get(uid) else {
                continue;
            };
            if let Err(e) = self.enroll(plan.clone()).await {
                // Typically the pod's process is not there yet: retried next pass.
                debug!(pod = %format!("{}/{}", plan.namespace, plan.name), "enrolment deferred: {e}");
            }
        }
        self.pending = desired.keys().any(|uid| !self.enrolled.contains_key(uid));
        if let Some(certs) = &self.certs {
            // Prefetch and rotate the identities of the pods on this node; drop the others.
            certs.track(
                desired
                    .values()
                    .filter_map(|p| crate::identity::Identity::parse(&p.identity).ok()),
            );
        }
        self.metrics.enrolled_pods.set(self.enrolled.len() as i64);
        let fingerprint = format!(
            "{:?}",
            self.enrolled
                .values()
                .map(|e| (&e.plan, e.enrolment.netns_cookie))
                .collect::<Vec<_>>()
        );
        if fingerprint != self.written || !self.cfg.state_dir.join("pods.json").exists() {
            self.write_state();
            self.written = fingerprint;
        }
    }

    async fn enroll(&mut self, plan: PodPlan) -> Result<(), AgentError> {
        let pod = format!("{}/{}", plan.namespace, plan.name);
        let perr = |m: String| AgentError::Pod {
            pod: pod.clone(),
            message: m,
        };
        let cgroup = locate::find_cgroup(&self.cfg.pods_cgroup, &plan.uid)
            .map_err(|e| perr(e.to_string()))?;
        let pid = locate::first_pid(&cgroup).map_err(|e| perr(e.to_string()))?;
        let ns = locate::open_netns(pid).map_err(|e| perr(e.to_string()))?;
        let ns_for_worker = ns.try_clone()?;
        let tunnelled = self.tunnel.is_some();
        let worker = NetnsWorker::spawn(ns_for_worker, &plan.name)
            .map_err(|e: WorkerError| perr(e.to_string()))?;
        let opened = worker
            .run(move || -> std::io::Result<PodListeners> {
                let mark = |l: &std::net::TcpListener| -> std::io::Result<()> {
                    l.set_nonblocking(true)?;
                    netns::set_mark(l.as_raw_fd(), mesh_common::MESH_MARK)
                };
                let out4 = std::net::TcpListener::bind((
                    Ipv4Addr::LOCALHOST,
                    mesh_common::ports::OUTBOUND,
                ))?;
                mark(&out4)?;
                // IPv6 loopback may be absent in the pod: then connect6 redirects have no listener
                // and fail closed, which is the right outcome.
                let out6 = std::net::TcpListener::bind((
                    std::net::Ipv6Addr::LOCALHOST,
                    mesh_common::ports::OUTBOUND,
                ))
                .ok();
                if let Some(l) = &out6 {
                    mark(l)?;
                }
                let inb = std::net::TcpListener::bind((
                    Ipv4Addr::UNSPECIFIED,
                    mesh_common::ports::INBOUND,
                ))?;
                mark(&inb)?;
                let hbone = if tunnelled {
                    let l = std::net::TcpListener::bind((
                        Ipv4Addr::UNSPECIFIED,
                        mesh_common::ports::HBONE,
                    ))?;
                    mark(&l)?;
                    Some(l)
                } else {
                    None
                };
                let cookie = netns::netns_cookie(out4.as_raw_fd())?;
                Ok(PodListeners {
                    out4,
                    out6,
                    inb,
                    hbone,
                    cookie,
                })
            })
            .await
            .map_err(|e| perr(e.to_string()))?
            .map_err(|e| perr(format!("opening the in-pod listeners: {e}")))?;
        let PodListeners {
            out4,
            out6,
            inb,
            hbone,
            cookie,
        } = opened;
        let index = self.next_index;
        self.next_index += 1;
        let enrolment = Enrolment {
            uid: plan.uid.clone(),
            netns_cookie: cookie,
            ip: plan.ip,
            pod_index: index,
            fast_path: plan.fast_path,
            exclude_outbound_ports: plan.exclude_outbound_ports.clone(),
            exclude_inbound_ports: plan.exclude_inbound_ports.clone(),
            exclude_outbound_cidrs: plan.exclude_outbound_cidrs.clone(),
        };
        let mut listeners = vec![
            format!("127.0.0.1:{}", mesh_common::ports::OUTBOUND),
            format!("0.0.0.0:{}", mesh_common::ports::INBOUND),
        ];
        if out6.is_some() {
            listeners.insert(1, format!("[::1]:{}", mesh_common::ports::OUTBOUND));
        }
        let ctx = Arc::new(PodCtx {
            uid: plan.uid.clone(),
            name: plan.name.clone(),
            namespace: plan.namespace.clone(),
            ip: plan.ip,
            netns_cookie: cookie,
            worker,
            metrics: self.metrics.clone(),
            cancel: tokio_util::sync::CancellationToken::new(),
            pool: std::sync::Mutex::new(Vec::new()),
            refilling: std::sync::atomic::AtomicBool::new(false),
            identity: plan.identity.clone(),
            workload: plan.workload.clone(),
            conns: self.conns.clone(),
            tunnel: self.tunnel.clone(),
            http: Default::default(),
        });
        ctx.refill();
        let mut tasks = vec![];
        for l in std::iter::once(out4).chain(out6) {
            let l = TcpListener::from_std(l)?;
            tasks.push(tokio::spawn(outbound::serve(
                l,
                ctx.clone(),
                self.orig.clone(),
            )));
        }
        let inb_fd = inb.as_raw_fd();
        let inb = TcpListener::from_std(inb)?;
        // Maps last: only now may connects be redirected and inbound steered.
        if let Err(e) = self.datapath.enroll(&enrolment, inb_fd, &ns) {
            for t in &tasks {
                t.abort();
            }
            let _ = self.datapath.unenroll(&enrolment);
            return Err(e.into());
        }
        tasks.push(tokio::spawn(inbound::serve(inb, ctx.clone())));
        if let (Some(l), Some(t)) = (hbone, &self.tunnel) {
            let server = crate::hbone::server::Server::new(
                ctx.clone(),
                plan.identity.clone(),
                t.certs.clone(),
                Arc::new(crate::proxy::PodPolicy {
                    uid: plan.uid.clone(),
                    mesh: t.mesh.clone(),
                }),
            );
            tasks.push(tokio::spawn(server.serve(TcpListener::from_std(l)?)));
            listeners.push(format!("0.0.0.0:{}", mesh_common::ports::HBONE));
        }
        let cgroup_id = locate::cgroup_id(&cgroup).unwrap_or(0);
        info!(pod = %pod, uid = %plan.uid, ip = %plan.ip, netns_cookie = cookie, cgroup_id, fast_path = plan.fast_path, "enrolled");
        self.enrolled.insert(
            plan.uid.clone(),
            Enrolled {
                plan,
                enrolment,
                ctx,
                accept_tasks: tasks,
                cgroup,
                cgroup_id,
                listeners,
            },
        );
        Ok(())
    }

    /// Applies a changed plan that only touches the data path (fast path, exclusions) without
    /// closing the pod's listeners, so no connection is refused meanwhile. False: the change
    /// (identity, IP, names) needs a re-enrolment.
    fn update_in_place(&mut self, uid: &str, plan: &PodPlan) -> bool {
        let Some(e) = self.enrolled.get_mut(uid) else {
            return false;
        };
        fn identity(p: &PodPlan) -> (&str, &str, &str, Ipv4Addr, &str, &str) {
            (
                &p.uid,
                &p.name,
                &p.namespace,
                p.ip,
                &p.identity,
                &p.workload,
            )
        }
        if identity(&e.plan) != identity(plan) {
            return false;
        }
        let next = Enrolment {
            fast_path: plan.fast_path,
            exclude_outbound_ports: plan.exclude_outbound_ports.clone(),
            exclude_inbound_ports: plan.exclude_inbound_ports.clone(),
            exclude_outbound_cidrs: plan.exclude_outbound_cidrs.clone(),
            ..e.enrolment.clone()
        };
        if let Err(err) = self.datapath.update(&e.enrolment, &next) {
            warn!(pod = %e.ctx.id(), "updating the maps in place: {err}; re-enrolling");
            return false;
        }
        info!(pod = %e.ctx.id(), uid, fast_path = plan.fast_path, "updated in place");
        e.enrolment = next;
        e.plan = plan.clone();
        true
    }

    /// Un-enrols a pod. `hard` (the pod is gone): also closes its proxied connections, so nothing
    /// keeps the dead netns alive. Otherwise established connections keep working.
    fn unenroll(&mut self, uid: &str, hard: bool) {
        let Some(e) = self.enrolled.remove(uid) else {
            return;
        };
        if let Err(err) = self.datapath.unenroll(&e.enrolment) {
            warn!(pod = %e.ctx.id(), "un-enrolling from the maps: {err}");
        }
        for t in &e.accept_tasks {
            t.abort();
        }
        if let Some(t) = &self.tunnel {
            t.pool.forget_pod(uid);
        }
        if hard {
            e.ctx.cancel.cancel();
        }
        info!(pod = %e.ctx.id(), uid, hard, "un-enrolled");
    }

    /// After the first pass: drop map entries and links of pods an earlier agent enrolled that are
    /// not enrolled now.
    fn forget_stale(&mut self) {
        let cookies = self
            .enrolled
            .values()
            .map(|e| e.enrolment.netns_cookie)
            .collect();
        let ips = self.enrolled.values().map(|e| e.enrolment.ip).collect();
        let uids = self.enrolled.keys().cloned().collect();
        match self.datapath.forget_others(&cookies, &ips, &uids) {
            Ok(d) if !d.is_empty() => {
                info!(dropped = ?d, "forgot state of pods no longer enrolled")
            }
            Ok(_) => {}
            Err(e) => warn!("cleaning stale entries: {e}"),
        }
    }

    fn write_state(&self) {
        let records: Vec<PodRecord> = self
            .enrolled
            .values()
            .map(|e| PodRecord {
                uid: e.plan.uid.clone(),
                name: e.plan.name.clone(),
                namespace: e.plan.namespace.clone(),
                ip: e.plan.ip,
                cgroup: e.cgroup.clone(),
                cgroup_id: e.cgroup_id,
                netns_cookie: e.enrolment.netns_cookie,
                pod_index: e.enrolment.pod_index,
                fast_path: e.plan.fast_path,
                listeners: e.listeners.clone(),
                exclude_outbound_ports: e.plan.exclude_outbound_ports.clone(),
                exclude_inbound_ports: e.plan.exclude_inbound_ports.clone(),
            })
            .collect();
        if let Some(a) = &self.admin {
            *a.pods.lock().unwrap_or_else(|p| p.into_inner()) =
                serde_json::to_value(&records).unwrap_or_default();
            *a.pod_ctxs.lock().unwrap_or_else(|p| p.into_inner()) =
                self.enrolled.values().map(|e| e.ctx.clone()).collect();
        }
        let path = self.cfg.state_dir.join("pods.json");
        let tmp = path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(&records)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            warn!("writing {}: {e}", path.display());
        }
    }
}
