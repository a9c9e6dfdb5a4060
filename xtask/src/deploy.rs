//! `cargo xtask deploy-check`: the Kubernetes manifests in `deploy/` render and apply, and say what
//! they should. Run by `cargo xtask test` (after the build, so the binaries' flags can be checked).
//!
//! 1. `kubectl kustomize` renders `deploy/` (full install) and every overlay;
//! 2. every rendered object is parsed strictly against the Kubernetes schema (k8s-openapi: unknown
//!    fields are errors) and a few properties are asserted (privileged agent on the host
//!    namespaces, least-privilege RBAC, the CRDs labelled as Weft's, …);
//! 3. `kubectl apply --dry-run=client -k` runs for `deploy/` and the istio-present overlay against a
//!    throwaway in-process API stub (kubectl's client dry-run still asks a server for discovery
//!    and for each object's current state; the stub serves the built-in kinds and answers 404);
//! 4. every `--flag` the Deployment and the DaemonSet pass exists in the binaries' `run --help`.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::{lab::manifest::strict, util};

/// The label that marks Weft's own CRDs (foreign `*.istio.io` CRDs lack it).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");
const NAMESPACE: &str = "weft-system";
const ISTIO_CRDS: [&str; 7] = [
    "authorizationpolicies.security.istio.io",
    "destinationrules.networking.istio.io",
    "gateways.networking.istio.io",
    "peerauthentications.security.istio.io",
    "requestauthentications.security.istio.io",
    "serviceentries.networking.istio.io",
    "virtualservices.networking.istio.io",
];
/// The built-in kinds the API stub serves: (groupVersion, plural, kind, namespaced).
const BUILTIN: &[(&str, &str, &str, bool)] = &[
    ("v1", "namespaces", "Namespace", false),
    ("v1", "serviceaccounts", "ServiceAccount", true),
    ("v1", "services", "Service", true),
    ("v1", "secrets", "Secret", true),
    ("v1", "configmaps", "ConfigMap", true),
    ("apps/v1", "deployments", "Deployment", true),
    ("apps/v1", "daemonsets", "DaemonSet", true),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", true),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    (
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    ),
    (
        "scheduling.k8s.io/v1",
        "priorityclasses",
        "PriorityClass",
        false,
    ),
];

pub fn run() -> anyhow::Result<()> {
    let deploy = util::workspace_root().join("deploy");
    kubectl_present()?;
    let full = render(&deploy)?;
    check_common(&full).context("deploy/")?;
    check_crds(&full, 7).context("deploy/")?;
    println!(
        "  ok    deploy/: {} objects ({})",
        full.len(),
        summary(&full)
    );
    let present = render(&deploy.join("overlays/istio-present"))?;
    check_common(&present).context("deploy/overlays/istio-present")?;
    check_crds(&present, 0).context("deploy/overlays/istio-present")?;
    println!(
        "  ok    deploy/overlays/istio-present: {} objects, no CRDs",
        present.len()
    );
    let cgroupfs = render(&deploy.join("overlays/cgroupfs"))?;
    check_common(&cgroupfs).context("deploy/overlays/cgroupfs")?;
    let ds: DaemonSet = get(&cgroupfs, "DaemonSet", "weft-agent")?;
    ensure!(
        env_value(
            agent_container(pod_spec(ds.spec.as_ref().map(|s| &s.template.spec))?)?,
            "PODS_CGROUP"
        ) == Some("/sys/fs/cgroup/kubepods"),
        "deploy/overlays/cgroupfs: PODS_CGROUP is not /sys/fs/cgroup/kubepods"
    );
    println!("  ok    deploy/overlays/cgroupfs: PODS_CGROUP patched");
    dry_run(&[deploy.clone(), deploy.join("overlays/istio-present")])?;
    flags(&full)?;
    println!("deploy manifests ok");
    Ok(())
}

fn kubectl_present() -> anyhow::Result<()> {
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`kubectl version --client` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!(
            "kubectl is missing ({e}): checking deploy/ needs it (Debian package `kubectl`; \
             `cargo xtask setup` reports it)"
        ),
    }
}

fn render(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let yaml = util::output(Command::new("kubectl").arg("kustomize").arg(dir))
        .with_context(|| format!("rendering {}", dir.display()))?;
    let mut docs = vec![];
    for (i, de) in serde_yaml::Deserializer::from_str(&yaml).enumerate() {
        let v = Value::deserialize(de).with_context(|| format!("document {i}"))?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default();
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let typed = |r: Result<(), crate::lab::manifest::DocError>| {
            r.map_err(|e| anyhow::anyhow!("{} {kind} {name}: {e}", dir.display()))
        };
        match (v["apiVersion"].as_str().unwrap_or_default(), kind) {
            ("v1", "Namespace") => typed(strict::<Namespace>(&v).map(drop))?,
            ("v1", "ServiceAccount") => typed(strict::<ServiceAccount>(&v).map(drop))?,
            ("v1", "Service") => typed(strict::<Service>(&v).map(drop))?,
            ("apps/v1", "Deployment") => typed(strict::<Deployment>(&v).map(drop))?,
            ("apps/v1", "DaemonSet") => typed(strict::<DaemonSet>(&v).map(drop))?,
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                typed(strict::<ClusterRole>(&v).map(drop))?
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                typed(strict::<ClusterRoleBinding>(&v).map(drop))?
            }
            ("rbac.authorization.k8s.io/v1", "Role") => typed(strict::<Role>(&v).map(drop))?,
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                typed(strict::<RoleBinding>(&v).map(drop))?
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                typed(strict::<CustomResourceDefinition>(&v).map(drop))?
            }
            (api, kind) => bail!(
                "{}: unexpected {api} {kind} {name} (add it to xtask/src/deploy.rs if intended)",
                dir.display()
            ),
        }
        docs.push(v);
    }
    Ok(docs)
}

fn summary(objs: &[Value]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for o in objs {
        *kinds.entry(o["kind"].as_str().unwrap_or("?")).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn get<T: serde::de::DeserializeOwned>(
    objs: &[Value],
    kind: &str,
    name: &str,
) -> anyhow::Result<T> {
    let v = objs
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))?;
    Ok(serde_json::from_value(v.clone())?)
}

fn pod_spec(s: Option<&Option<PodSpec>>) -> anyhow::Result<&PodSpec> {
    s.and_then(|s| s.as_ref()).context("no pod spec")
}

fn agent_container(p: &PodSpec) -> anyhow::Result<&Container> {
    p.containers
        .iter()
        .find(|c| c.name == "agent")
        .context("no container `agent`")
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

fn check_crds(objs: &[Value], want: usize) -> anyhow::Result<()> {
    let crds: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    ensure!(
        crds.len() == want,
        "{} CustomResourceDefinitions, want {want}",
        crds.len()
    );
    for c in crds {
        let name = c["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(ISTIO_CRDS.contains(&name), "unexpected CRD {name}");
        ensure!(
            c["metadata"]["labels"][PART_OF.0] == PART_OF.1,
            "CRD {name} lacks the label {}={}",
            PART_OF.0,
            PART_OF.1
        );
    }
    Ok(())
}

/// What every variant of the install must say.
fn check_common(objs: &[Value]) -> anyhow::Result<()> {
    get::<Namespace>(objs, "Namespace", NAMESPACE)?;
    for o in objs {
        let kind = o["kind"].as_str().unwrap_or_default();
        let cluster_scoped = matches!(
            kind,
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        );
        let ns = o["metadata"]["namespace"].as_str();
        ensure!(
            cluster_scoped || ns == Some(NAMESPACE),
            "{kind} {} is in namespace {ns:?}, not {NAMESPACE}",
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
    }

    // The controller: non-root, read-only, no capabilities, bounded.
    let d: Deployment = get(objs, "Deployment", "weft-controller")?;
    let p = pod_spec(d.spec.as_ref().map(|s| &s.template.spec))?;
    ensure!(p.service_account_name.as_deref() == Some("weft-controller"));
    let psc = p.security_context.clone().unwrap_or_default();
    ensure!(
        psc.run_as_non_root == Some(true),
        "controller: runAsNonRoot"
    );
    ensure!(
        psc.run_as_user == Some(65532),
        "controller: runAsUser 65532"
    );
    ensure!(
        psc.seccomp_profile.map(|s| s.type_) == Some("RuntimeDefault".into()),
        "controller: seccomp RuntimeDefault"
    );
    let c = p
        .containers
        .iter()
        .find(|c| c.name == "controller")
        .context("no container `controller`")?;
    ensure!(
        c.image
            .as_deref()
            .is_some_and(|i| i.starts_with("weft/mesh-controller:")),
        "controller image {:?}",
        c.image
    );
    let sc = c.security_context.clone().unwrap_or_default();
    ensure!(
        sc.read_only_root_filesystem == Some(true),
        "controller: readOnlyRootFilesystem"
    );
    ensure!(
        sc.allow_privilege_escalation == Some(false),
        "controller: allowPrivilegeEscalation false"
    );
    ensure!(
        sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".into()]),
        "controller: drop ALL capabilities"
    );
    let r = c.resources.clone().unwrap_or_default();
    ensure!(
        r.requests.is_some() && r.limits.is_some(),
        "controller: resource requests and limits"
    );
    let ports: BTreeSet<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    ensure!(
        ports == BTreeSet::from([15010, 15012, 15014]),
        "controller ports {ports:?}"
    );
    ensure!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let svc: Service = get(objs, "Service", "weft-controller")?;
    let sports: BTreeSet<i32> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    ensure!(
        sports == BTreeSet::from([15010, 15012]),
        "Service weft-controller ports {sports:?}"
    );

    // The agent: privileged on the host namespaces, on every node, no API token.
    let ds: DaemonSet = get(objs, "DaemonSet", "weft-agent")?;
    let p = pod_spec(ds.spec.as_ref().map(|s| &s.template.spec))?;
    ensure!(p.host_network == Some(true), "agent: hostNetwork");
    ensure!(p.host_pid == Some(true), "agent: hostPID");
    ensure!(p.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"));
    ensure!(p.priority_class_name.as_deref() == Some("system-node-critical"));
    ensure!(
        p.automount_service_account_token == Some(false),
        "agent: automountServiceAccountToken false"
    );
    ensure!(
        p.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "agent: tolerate every taint"
    );
    let c = agent_container(p)?;
    ensure!(
        c.image
            .as_deref()
            .is_some_and(|i| i.starts_with("weft/mesh-agent:")),
        "agent image {:?}",
        c.image
    );
    ensure!(
        c.security_context.as_ref().and_then(|s| s.privileged) == Some(true),
        "agent: privileged"
    );
    let node_env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    ensure!(
        node_env == Some("spec.nodeName"),
        "agent: NODE_NAME from spec.nodeName"
    );
    let args = c.args.clone().unwrap_or_default();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    ensure!(arg("--node") == Some("$(NODE_NAME)"), "agent: --node");
    ensure!(
        arg("--pods-cgroup") == Some("$(PODS_CGROUP)"),
        "agent: --pods-cgroup"
    );
    ensure!(
        arg("--controller") == Some("https://weft-controller.weft-system.svc:15010"),
        "agent: --controller must be the controller Service over TLS"
    );
    let root = arg("--ca-root").context("agent: --ca-root (verifies the controller's TLS)")?;
    ensure!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| root.starts_with(&format!("{}/", m.mount_path)) && m.name == "ca-root"),
        "agent: --ca-root {root} is not on the ca-root volume (ConfigMap weft-ca-root)"
    );
    let token = arg("--token-file").context("agent: --token-file")?;
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = |path: &str| mounts.iter().find(|m| m.mount_path == path);
    let tm = mounts
        .iter()
        .find(|m| token.starts_with(&format!("{}/", m.mount_path)))
        .context("agent: --token-file is not on a mounted volume")?;
    let vol = p
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == tm.name)
        .context("agent: token volume")?;
    let sat = vol
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .into_iter()
        .flatten()
        .find_map(|s| s.service_account_token.clone())
        .context("agent: the token is not a projected ServiceAccount token")?;
    ensure!(sat.audience.as_deref() == Some("weft-controller"));
    ensure!(sat.expiration_seconds.is_some_and(|s| s <= 3600));
    ensure!(
        mount("/sys/fs/bpf").and_then(|m| m.mount_propagation.as_deref()) == Some("Bidirectional"),
        "agent: /sys/fs/bpf with Bidirectional propagation"
    );
    for path in ["/sys/fs/cgroup", "/run/weft"] {
        ensure!(mount(path).is_some(), "agent: no mount at {path}");
    }
    let sa: ServiceAccount = get(objs, "ServiceAccount", "weft-agent")?;
    ensure!(sa.automount_service_account_token == Some(false));

    // RBAC: the agent is bound to nothing; the controller reads, writes status, reviews tokens,
    // and touches one Secret.
    for o in objs
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
    {
        ensure!(
            !o["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "weft-agent"),
            "{} {} binds weft-agent: the agent needs no API permission",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
    }
    let cr: ClusterRole = get(objs, "ClusterRole", "weft-controller")?;
    for rule in cr.rules.iter().flatten() {
        check_cluster_rule(rule)?;
    }
    let role: Role = get(objs, "Role", "weft-controller-ca")?;
    for rule in role.rules.iter().flatten() {
        // The CA Secret and the root ConfigMap it publishes, nothing else.
        let (kind, name) = match rule.resources.as_deref() {
            Some([r]) if r == "secrets" => ("Secrets", "weft-ca"),
            Some([r]) if r == "configmaps" => ("ConfigMaps", "weft-ca-root"),
            other => bail!("Role weft-controller-ca: unexpected resources {other:?}"),
        };
        let create_only = rule.verbs == ["create"];
        ensure!(
            create_only || rule.resource_names.as_deref() == Some(&[name.to_string()][..]),
            "Role weft-controller-ca: {:?} on {kind} must be limited to resourceNames [{name}]",
            rule.verbs
        );
    }
    Ok(())
}

fn check_cluster_rule(rule: &PolicyRule) -> anyhow::Result<()> {
    let res = rule.resources.clone().unwrap_or_default();
    let groups = rule.api_groups.clone().unwrap_or_default();
    ensure!(
        !rule.verbs.iter().any(|v| v == "*")
            && !res.iter().any(|r| r == "*")
            && !groups.iter().any(|g| g == "*"),
        "ClusterRole weft-controller: no wildcards ({rule:?})"
    );
    ensure!(
        !res.iter().any(|r| r == "secrets"),
        "ClusterRole weft-controller: no cluster-wide Secrets"
    );
    let read = rule
        .verbs
        .iter()
        .all(|v| matches!(v.as_str(), "get" | "list" | "watch"));
    let status = res.iter().all(|r| r.ends_with("/status"))
        && rule
            .verbs
            .iter()
            .all(|v| matches!(v.as_str(), "patch" | "update"));
    let review = res == ["tokenreviews"] && rule.verbs == ["create"];
    ensure!(
        read || status || review,
        "ClusterRole weft-controller: {:?} on {res:?} is more than read, status and TokenReview",
        rule.verbs
    );
    Ok(())
}

/// `kubectl apply --dry-run=client -k DIR` against the in-process API stub.
fn dry_run(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let _ = serve(s);
        }
    });
    let tmp = std::env::temp_dir().join(format!("weft-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let kubeconfig = tmp.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: stub, cluster: {{server: \"http://{addr}\"}}}}]\n\
             contexts: [{{name: stub, context: {{cluster: stub, user: stub}}}}]\n\
             users: [{{name: stub, user: {{}}}}]\ncurrent-context: stub\n"
        ),
    )?;
    let res = (|| {
        for dir in dirs {
            // --validate=false: the stub serves no OpenAPI; the schema check is the strict
            // k8s-openapi parse above.
            let out = util::output(
                Command::new("kubectl")
                    .args(["apply", "--dry-run=client", "--validate=false", "-k"])
                    .arg(dir)
                    .arg("--cache-dir")
                    .arg(tmp.join("cache"))
                    .env("KUBECONFIG", &kubeconfig),
            )
            .with_context(|| format!("kubectl apply --dry-run=client -k {}", dir.display()))?;
            let created = out.lines().filter(|l| l.ends_with("(dry run)")).count();
            ensure!(
                created > 0 && created == out.lines().count(),
                "unexpected kubectl output:\n{out}"
            );
            println!(
                "  ok    kubectl apply --dry-run=client -k {}: {created} objects",
                dir.strip_prefix(util::workspace_root())
                    .unwrap_or(dir)
                    .display()
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

/// One request of the API stub: discovery of the built-in kinds, 404 for everything else.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let gvs: BTreeSet<&str> = BUILTIN.iter().map(|b| b.0).collect();
    let body = match path {
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
        "/apis" => Some(json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": gvs.iter().filter_map(|gv| gv.split_once('/')).map(|(g, v)| json!({
                "name": g,
                "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
                "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v},
            })).collect::<Vec<_>>(),
        })),
        p => gvs
            .iter()
            .find(|gv| {
                p == if **gv == "v1" {
                    "/api/v1".to_string()
                } else {
                    format!("/apis/{gv}")
                }
            })
            .map(|gv| {
                json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": BUILTIN.iter().filter(|b| b.0 == *gv).map(|(_, plural, kind, namespaced)| json!({
                        "name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced,
                        "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    })).collect::<Vec<_>>(),
                })
            }),
    };
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found (weft deploy-check API stub)"}),
        ),
    };
    let body = body.to_string();
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// Every `--flag` in the manifests exists in the binaries built by `cargo build --bins`.
fn flags(objs: &[Value]) -> anyhow::Result<()> {
    let bin = |name: &str| -> anyhow::Result<String> {
        let path = std::env::var_os(format!(
            "WEFT_{}_BIN",
            name.replace('-', "_").to_uppercase()
        ))
        .map(PathBuf::from)
        .unwrap_or_else(|| util::target_dir().join("debug").join(name));
        ensure!(
            path.exists(),
            "{} is missing: `cargo build --bins` first (`cargo xtask test` does)",
            path.display()
        );
        util::output(Command::new(&path).args(["run", "--help"]))
    };
    let d: Deployment = get(objs, "Deployment", "weft-controller")?;
    let ds: DaemonSet = get(objs, "DaemonSet", "weft-agent")?;
    for (name, spec) in [
        (
            "mesh-controller",
            pod_spec(d.spec.as_ref().map(|s| &s.template.spec))?,
        ),
        (
            "mesh-agent",
            pod_spec(ds.spec.as_ref().map(|s| &s.template.spec))?,
        ),
    ] {
        let help = bin(name)?;
        let known: BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .filter(|w| w.starts_with("--"))
            .collect();
        let used: Vec<&String> = spec
            .containers
            .iter()
            .flat_map(|c| c.args.iter().flatten())
            .filter(|a| a.starts_with("--"))
            .collect();
        for flag in used {
            let flag = flag.split('=').next().unwrap_or(flag);
            ensure!(
                known.contains(flag),
                "deploy/ passes {flag} to `{name} run`, which does not know it"
            );
        }
        println!("  ok    {name} run: every flag of the manifests exists");
    }
    Ok(())
}
