//! `cargo xtask lab …`: a multi-node cluster shape on one Linux machine.
//!
//! Nodes are network namespaces joined by an underlay bridge; pods are network namespaces + cgroup v2
//! directories (kubelet layout, `weft-lab/<node>/kubepods/pod<UID>`) + processes; Services get
//! ClusterIPs that nftables DNAT in every node (kube-proxy's job); names resolve through per-pod
//! `/etc/hosts`. State lives in one directory (`$WEFT_LAB_DIR`, default `/run/weft-lab`).
pub(crate) mod agents;
mod cluster;
pub mod manifest;
mod net;
mod pod;
mod reconcile;
pub mod state;
mod status;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use nix::fcntl::{Flock, FlockArg};

use self::{
    manifest::{Doc, Object},
    pod::PodContext,
    state::{LabState, NodeState, StoredObject, node_pod_gateway, node_underlay_ip, object_id},
};
use crate::{setup, util};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the lab: N nodes (node-a, node-b, …) joined by an underlay network, each running a
    /// mesh-agent (like the DaemonSet).
    Up {
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=26))]
        nodes: u8,
        /// Do not start the node agents (a plain cluster without the mesh).
        #[arg(long)]
        no_agents: bool,
        /// Run release builds of the binaries (what the benchmarks use).
        #[arg(long)]
        release: bool,
    },
    /// Start, stop (SIGTERM), kill (SIGKILL) or restart the lab's mesh-controller.
    Controller {
        #[arg(value_parser = ["start", "stop", "kill", "restart"])]
        action: String,
    },
    /// The controller's per-node config status (`mesh-controller proxy-status`).
    ProxyStatus {
        #[arg(long)]
        json: bool,
    },
    /// Start, stop (SIGTERM), kill (SIGKILL, like a crash) or restart a node's mesh-agent.
    Agent {
        #[arg(value_parser = ["start", "stop", "kill", "restart"])]
        action: String,
        node: String,
    },
    /// Remove everything the lab created (namespaces, veths, cgroups, processes, pins, files).
    /// Safe to run twice and after a crash.
    Down,
    /// Apply Kubernetes YAML (a file or a directory of .yaml/.yml/.json files).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in the given YAML.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a command inside a pod (its network namespace and cgroup): `lab exec POD -- CMD…`.
    Exec {
        pod: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command in a node's network namespace (like a hostNetwork pod).
    ExecNode {
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Nodes, pods and services.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print a pod's container log.
    Logs {
        pod: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Container (default: the first).
        #[arg(short = 'c', long)]
        container: Option<String>,
    },
}

/// Paths of a lab.
pub struct Lab {
    pub dir: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Lab {
    pub fn new() -> anyhow::Result<Lab> {
        let dir = std::env::var_os("WEFT_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/weft-lab"));
        let cg = setup::cgroup2_root().context("no cgroup v2 mount: run `cargo xtask setup`")?;
        Ok(Lab {
            dir,
            cgroup_root: cg.join("weft-lab"),
        })
    }
    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.join("cluster")
    }
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{ns}_{name}"))
    }
    pub fn log_path(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{ns}_{pod}_{container}.log"))
    }
    pub fn agent_state_dir(&self, node: &str) -> PathBuf {
        self.dir.join("agents").join(node)
    }
    pub fn node_token_file(&self, node: &str) -> PathBuf {
        self.dir.join("agents").join(format!("{node}.token"))
    }
    pub fn controller_tokens(&self) -> PathBuf {
        self.dir.join("node-tokens.yaml")
    }
    pub fn controller_log(&self) -> PathBuf {
        self.dir.join("logs").join("controller.log")
    }
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("agent-{node}.log"))
    }
    pub fn pod_path(&self, st: &LabState) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            st.bin_dir.display()
        )
    }
    /// Serialises lab commands (the lock file lives beside the lab directory, so `down` can
    /// remove the directory while holding it).
    fn lock(&self) -> anyhow::Result<Flock<File>> {
        let path = self.dir.with_extension("lock");
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
    }
    fn load(&self) -> anyhow::Result<LabState> {
        LabState::load(&self.state_path())?
            .context("no lab is running: start one with `cargo xtask lab up`")
    }
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    util::require_root("the lab")?;
    let lab = Lab::new()?;
    match cmd {
        LabCommand::Up {
            nodes,
            no_agents,
            release,
        } => up_with(
            &lab,
            nodes,
            !no_agents,
            if release {
                Profile::Release
            } else {
                Profile::Debug
            },
        ),
        LabCommand::Agent { action, node } => agent(&lab, &action, &node),
        LabCommand::Controller { action } => controller(&lab, &action),
        LabCommand::ProxyStatus { json } => {
            let st = lab.load()?;
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{}", net::UNDERLAY_NS))
                .arg(st.bin_dir.join("mesh-controller"))
                .args([
                    "proxy-status",
                    "--admin",
                    &format!("{}:15014", agents::CONTROLLER_IP),
                ]);
            if json {
                cmd.arg("--json");
            }
            let code = cmd
                .status()
                .context("running mesh-controller proxy-status")?
                .code()
                .unwrap_or(1);
            std::process::exit(code)
        }
        LabCommand::Down => down(&lab),
        LabCommand::Apply { files } => apply(&lab, &files),
        LabCommand::Delete { files } => delete(&lab, &files),
        LabCommand::Exec {
            pod,
            namespace,
            command,
        } => {
            let code = exec(&lab, &namespace, &pod, &command)?;
            std::process::exit(code)
        }
        LabCommand::ExecNode { node, command } => {
            let st = lab.load()?;
            let n = st
                .node(&node)
                .with_context(|| format!("no node {node:?} in the lab"))?;
            let code = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", n.netns))
                .args(&command)
                .status()
                .context("spawning nsenter")?
                .code()
                .unwrap_or(1);
            std::process::exit(code)
        }
        LabCommand::Status { json } => {
            let st = lab.load()?;
            status::print(&st, json)
        }
        LabCommand::Logs {
            pod,
            namespace,
            container,
        } => {
            let st = lab.load()?;
            let p = st
                .pods
                .get(&format!("{namespace}/{pod}"))
                .with_context(|| format!("no pod {namespace}/{pod}"))?;
            let c = match &container {
                Some(c) => p.containers.iter().find(|x| &x.name == c),
                None => p.containers.first(),
            }
            .with_context(|| format!("pod {namespace}/{pod} has no container {container:?}"))?;
            let text = std::fs::read_to_string(&c.log)
                .with_context(|| format!("reading {}", c.log.display()))?;
            print!("{text}");
            Ok(())
        }
    }
}

/// Which build of the workspace binaries the lab runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds the binaries pods run (unless `WEFT_LAB_NO_BUILD=1`, used by tests that built them).
fn build_binaries(profile: Profile) -> anyhow::Result<PathBuf> {
    let (dir, flag) = match profile {
        Profile::Debug => ("debug", None),
        Profile::Release => ("release", Some("--release")),
    };
    let bin_dir = util::target_dir().join(dir);
    if std::env::var("WEFT_LAB_NO_BUILD").as_deref() != Ok("1") {
        println!("building workspace binaries for the lab ({dir}) …");
        util::run(
            util::cargo()
                .args([
                    "build",
                    "--quiet",
                    "--bins",
                    "-p",
                    "mesh-tests",
                    "-p",
                    "mesh-agent",
                    "-p",
                    "mesh-controller",
                ])
                .args(flag),
        )?;
    }
    for b in ["mesh-echo", "mesh-client", "mesh-agent", "mesh-controller"] {
        if !bin_dir.join(b).exists() {
            bail!(
                "{} missing: build the workspace first",
                bin_dir.join(b).display()
            );
        }
    }
    Ok(bin_dir)
}

pub fn up(lab: &Lab, nodes: u8, with_agents: bool) -> anyhow::Result<()> {
    up_with(lab, nodes, with_agents, Profile::Debug)
}

pub fn up_with(lab: &Lab, nodes: u8, with_agents: bool, profile: Profile) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    if let Some(st) = LabState::load(&lab.state_path())? {
        bail!(
            "a lab is already running ({} nodes, {} pods in {}): use it, or `cargo xtask lab down` first",
            st.nodes.len(),
            st.pods.len(),
            lab.dir.display()
        );
    }
    let leftovers = net::lab_netns();
    if !leftovers.is_empty() || lab.cgroup_root.exists() {
        bail!(
            "leftovers of an earlier lab exist ({} namespaces{}): run `cargo xtask lab down` first",
            leftovers.len(),
            if lab.cgroup_root.exists() {
                ", cgroups"
            } else {
                ""
            }
        );
    }
    let bin_dir = build_binaries(profile)?;
    std::fs::create_dir_all(lab.dir.join("logs"))?;
    std::fs::create_dir_all(lab.dir.join("pods"))?;
    let mut st = LabState {
        bin_dir,
        ..Default::default()
    };
    let result = (|| -> anyhow::Result<()> {
        net::create_underlay()?;
        for i in 1..=nodes {
            let name = format!("node-{}", (b'a' + i - 1) as char);
            let node = NodeState {
                netns: format!("{}{name}", net::PREFIX),
                cgroup: lab.cgroup_root.join(&name),
                name,
                index: i,
                underlay_ip: node_underlay_ip(i),
                pod_cidr: format!("10.244.{i}.0/24"),
            };
            std::fs::create_dir_all(node.cgroup.join("kubepods"))
                .with_context(|| format!("creating {}", node.cgroup.display()))?;
            net::create_node(&node)?;
            st.nodes.push(node);
        }
        for n in &st.nodes {
            net::node_routes(n, &st.nodes)?;
        }
        reconcile::reconcile(lab, &mut st)?;
        st.save(&lab.state_path())?;
        if with_agents {
            agents::write_tokens(lab, &st)?;
            let pid = agents::start_controller(lab, &st)?;
            println!(
                "mesh-controller running (pid {pid}, {}:15010, log {})",
                agents::CONTROLLER_IP,
                lab.controller_log().display()
            );
            for n in &st.nodes {
                let pid = agents::start(lab, &st, n)?;
                println!(
                    "mesh-agent on {} running (pid {pid}, log {})",
                    n.name,
                    lab.agent_log(&n.name).display()
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("lab up failed, cleaning up: {e:#}");
        let _ = teardown(lab);
        return Err(e);
    }
    for n in &st.nodes {
        println!(
            "node {} up: underlay {} pods {} (gateway {})",
            n.name,
            n.underlay_ip,
            n.pod_cidr,
            node_pod_gateway(n.index)
        );
    }
    println!(
        "lab ready in {}: `cargo xtask lab apply -f examples/`",
        lab.dir.display()
    );
    Ok(())
}

fn controller(lab: &Lab, action: &str) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    let st = lab.load()?;
    use nix::sys::signal::Signal;
    match action {
        "stop" | "kill" => {
            let sig = if action == "kill" {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let stopped = agents::stop_controller(lab, sig)?;
            println!(
                "controller {}",
                if stopped {
                    "stopped"
                } else {
                    "was not running"
                }
            );
        }
        "start" => println!(
            "controller started (pid {})",
            agents::start_controller(lab, &st)?
        ),
        _ => {
            agents::stop_controller(lab, Signal::SIGTERM)?;
            println!(
                "controller restarted (pid {})",
                agents::start_controller(lab, &st)?
            );
        }
    }
    Ok(())
}

fn agent(lab: &Lab, action: &str, node: &str) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    let st = lab.load()?;
    let n = st
        .node(node)
        .with_context(|| format!("no node {node:?} in the lab"))?
        .clone();
    use nix::sys::signal::Signal;
    match action {
        "stop" | "kill" => {
            let sig = if action == "kill" {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            if !agents::stop(lab, &n, sig)? {
                println!("the agent of {node} was not running");
            } else {
                println!("agent of {node} stopped ({sig})");
            }
        }
        "start" => {
            let pid = agents::start(lab, &st, &n)?;
            println!("agent of {node} started (pid {pid})");
        }
        _ => {
            agents::stop(lab, &n, Signal::SIGTERM)?;
            let pid = agents::start(lab, &st, &n)?;
            println!("agent of {node} restarted (pid {pid})");
        }
    }
    Ok(())
}

pub fn down(lab: &Lab) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    teardown(lab)?;
    println!("lab down: no lab namespaces, cgroups, processes, pins or files remain");
    Ok(())
}

/// Removes everything, from state when present and by naming convention otherwise.
fn teardown(lab: &Lab) -> anyhow::Result<()> {
    let st = LabState::load(&lab.state_path()).ok().flatten();
    // Processes: every process of the lab lives under its cgroup root.
    pod::kill_cgroup(&lab.cgroup_root)?;
    for ns in net::lab_netns() {
        net::netns_del(&ns);
    }
    // eBPF pins of the lab's node agents.
    let mut nodes: Vec<String> = st
        .map(|s| s.nodes.into_iter().map(|n| n.name).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf/weft") {
        nodes.extend(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("node-")),
        );
    }
    for n in nodes {
        let p = Path::new("/sys/fs/bpf/weft").join(n);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("removing pins {}", p.display()))?;
        }
    }
    if lab.dir.exists() {
        std::fs::remove_dir_all(&lab.dir)
            .with_context(|| format!("removing {}", lab.dir.display()))?;
    }
    let left = net::lab_netns();
    if !left.is_empty() {
        bail!("lab namespaces survived deletion: {left:?}");
    }
    Ok(())
}

fn load_docs(files: &[PathBuf]) -> anyhow::Result<(Vec<Doc>, Vec<manifest::ManifestError>)> {
    let mut docs = vec![];
    let mut errors = vec![];
    for f in files {
        let (d, e) = manifest::load_path(f)?;
        docs.extend(d);
        errors.extend(e);
    }
    Ok((docs, errors))
}

fn report(errors: &[manifest::ManifestError]) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    for e in errors {
        eprintln!("error: {e}");
    }
    bail!("{} document(s) refused; the rest was applied", errors.len())
}

pub fn apply(lab: &Lab, files: &[PathBuf]) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    let mut st = lab.load()?;
    let (docs, mut errors) = load_docs(files)?;
    // Namespaces first, so objects in a namespace created by the same apply are accepted.
    let mut ordered: Vec<&Doc> = docs
        .iter()
        .filter(|d| matches!(d.obj, Object::Namespace(_)))
        .collect();
    ordered.extend(
        docs.iter()
            .filter(|d| !matches!(d.obj, Object::Namespace(_))),
    );
    let mut changed: BTreeMap<String, &'static str> = BTreeMap::new();
    for d in ordered {
        let key = d.obj.key();
        let fail = |msg: String, field: &str| manifest::ManifestError {
            file: d.file.clone(),
            index: d.index,
            object: Some(format!("{}/{}", d.obj.kind(), key.name)),
            field: field.into(),
            message: msg,
        };
        if !key.namespace.is_empty() && !st.namespace_exists(&key.namespace) {
            errors.push(fail(
                format!("namespace {:?} not found", key.namespace),
                "metadata.namespace",
            ));
            continue;
        }
        let id = object_id(&key);
        let value = d.obj.to_value();
        if let (Object::Pod(_), Some(old)) = (&d.obj, st.objects.get(&id))
            && old.value.get("spec") != value.get("spec")
        {
            errors.push(fail(
                "Forbidden: pod updates may not change fields other than metadata; delete the pod first".into(),
                "spec",
            ));
            continue;
        }
        let verb = match st.objects.get(&id) {
            None => "created",
            Some(old) if old.value == value => "unchanged",
            Some(_) => "configured",
        };
        st.objects.insert(
            id,
            StoredObject {
                key: key.clone(),
                value,
            },
        );
        changed.insert(
            format!(
                "{}/{}",
                key.kind.to_ascii_lowercase(),
                if key.namespace.is_empty() {
                    key.name.clone()
                } else {
                    format!("{}/{}", key.namespace, key.name)
                }
            ),
            verb,
        );
    }
    for (k, verb) in &changed {
        println!("{k} {verb}");
    }
    let res = reconcile::reconcile(lab, &mut st);
    st.save(&lab.state_path())?;
    res?;
    report(&errors)
}

pub fn delete(lab: &Lab, files: &[PathBuf]) -> anyhow::Result<()> {
    let _lock = lab.lock()?;
    let mut st = lab.load()?;
    let (docs, errors) = load_docs(files)?;
    for d in &docs {
        let key = d.obj.key();
        let id = object_id(&key);
        if st.objects.remove(&id).is_some() {
            println!("{} deleted", key);
        } else {
            println!("{} not found", key);
        }
        if let Object::Namespace(_) = d.obj {
            // Deleting a namespace deletes everything in it.
            st.objects.retain(|_, o| o.key.namespace != key.name);
        }
    }
    let res = reconcile::reconcile(lab, &mut st);
    st.save(&lab.state_path())?;
    res?;
    report(&errors)
}

/// Runs `command` in a pod (netns + cgroup + its /etc files) and returns its exit code.
pub fn exec(lab: &Lab, ns: &str, pod: &str, command: &[String]) -> anyhow::Result<i32> {
    let mut cmd = pod_command(lab, ns, pod, command)?;
    let st = cmd
        .status()
        .with_context(|| format!("running {command:?} in pod {ns}/{pod}"))?;
    Ok(st.code().unwrap_or(128 + st.signal_number()))
}

/// A command prepared to run inside a pod, exactly like the pod's own processes.
pub fn pod_command(lab: &Lab, ns: &str, pod: &str, command: &[String]) -> anyhow::Result<Command> {
    let st = lab.load()?;
    let p = st
        .pods
        .get(&format!("{ns}/{pod}"))
        .with_context(|| format!("no pod {ns}/{pod} (see `cargo xtask lab status`)"))?;
    let (prog, args) = command.split_first().context("no command")?;
    let dir = lab.pod_dir(ns, pod);
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("PATH", lab.pod_path(&st))
        .env("POD_NAME", pod)
        .env("POD_NAMESPACE", ns);
    pod::enter(
        &mut cmd,
        &PodContext {
            cgroup: p.cgroup.clone(),
            netns: p.netns.clone(),
            etc: Some((dir.join("hosts"), dir.join("resolv.conf"))),
            hostname: Some(pod.to_string()),
        },
    )?;
    Ok(cmd)
}

/// A command prepared to run in a node's network namespace (like `lab exec-node`).
pub fn node_command(lab: &Lab, node: &str, command: &[&str]) -> anyhow::Result<Command> {
    let st = lab.load()?;
    let n = st
        .node(node)
        .with_context(|| format!("no node {node:?} in the lab"))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", n.netns))
        .args(command);
    Ok(cmd)
}

/// The current state (for the demo and tests).
pub fn state(lab: &Lab) -> anyhow::Result<LabState> {
    lab.load()
}

/// True when a lab is up.
pub fn is_up(lab: &Lab) -> bool {
    lab.state_path().exists()
}

trait SignalNumber {
    fn signal_number(&self) -> i32;
}
impl SignalNumber for std::process::ExitStatus {
    fn signal_number(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt as _;
        self.signal().unwrap_or(0)
    }
}
