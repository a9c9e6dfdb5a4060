//! Turns the applied objects into running pods, service rules, name resolution and the cluster view,
//! the way a scheduler, the Deployment controller, kubelet and kube-proxy would.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Command,
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, PodSpec, Service},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use sha2::Digest as _;

use super::{
    Lab,
    manifest::selector_matches,
    net,
    pod::{self, PodContext},
    state::{ContainerState, LabState, PodState, SERVICE_FIRST},
};

/// A pod the objects ask for.
struct WantPod {
    namespace: String,
    /// Fixed name (bare Pod) or None (Deployment: generated).
    name: Option<String>,
    owner: Option<String>,
    meta: ObjectMeta,
    spec: PodSpec,
    hash: String,
}

fn hash_of(v: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let d = sha2::Sha256::digest(&bytes);
    d.iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..10]
        .to_string()
}

fn typed<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v.clone()).context("stored object no longer parses")
}

/// Brings running state in line with the applied objects.
pub fn reconcile(lab: &Lab, st: &mut LabState) -> anyhow::Result<()> {
    // 1. What should run.
    let mut want: Vec<WantPod> = vec![];
    let mut want_counts: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    for o in st.objects_of("Deployment") {
        let d: Deployment = typed(&o.value)?;
        let Some(spec) = d.spec else { continue };
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let hash = hash_of(&spec.template);
        let tmeta = spec.template.metadata.clone().unwrap_or_default();
        let pspec = spec.template.spec.clone().unwrap_or_default();
        want_counts.insert(
            (o.key.namespace.clone(), o.key.name.clone()),
            (replicas, hash.clone()),
        );
        for _ in 0..replicas {
            want.push(WantPod {
                namespace: o.key.namespace.clone(),
                name: None,
                owner: Some(o.key.name.clone()),
                meta: tmeta.clone(),
                spec: pspec.clone(),
                hash: hash.clone(),
            });
        }
    }
    for o in st.objects_of("Pod") {
        let p: Pod = typed(&o.value)?;
        let spec = p.spec.clone().unwrap_or_default();
        want.push(WantPod {
            namespace: o.key.namespace.clone(),
            name: Some(o.key.name.clone()),
            owner: None,
            meta: p.metadata.clone(),
            hash: hash_of(&spec),
            spec,
        });
    }

    // 2. Delete what is no longer wanted: pods of deleted objects, outdated templates, surplus.
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut missing: Vec<WantPod> = vec![];
    let mut by_owner: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for p in st.pods.values() {
        if let Some(owner) = &p.owner
            && let Some((_, hash)) = want_counts.get(&(p.namespace.clone(), owner.clone()))
            && *hash == p.spec_hash
        {
            by_owner
                .entry((p.namespace.clone(), owner.clone()))
                .or_default()
                .push(p.key());
        }
    }
    for ((ns, owner), (replicas, _)) in &want_counts {
        let mut have = by_owner
            .remove(&(ns.clone(), owner.clone()))
            .unwrap_or_default();
        // Oldest first, so scaling down removes the newest (like the ReplicaSet controller's ranking).
        have.sort_by_key(|k| st.pods.get(k).map(|p| (p.created_unix, p.name.clone())));
        keep.extend(have.iter().take(*replicas).cloned());
        let n = have.len().min(*replicas);
        let template = want
            .iter()
            .filter(|w| w.owner.as_deref() == Some(owner) && w.namespace == *ns)
            .take(replicas - n);
        missing.extend(template.map(|w| WantPod {
            namespace: w.namespace.clone(),
            name: None,
            owner: w.owner.clone(),
            meta: w.meta.clone(),
            spec: w.spec.clone(),
            hash: w.hash.clone(),
        }));
    }
    for w in want.into_iter().filter(|w| w.owner.is_none()) {
        let key = format!("{}/{}", w.namespace, w.name.clone().unwrap_or_default());
        match st.pods.get_mut(&key) {
            Some(p) if p.spec_hash == w.hash => {
                // Metadata is mutable in place (no restart), like the API server allows.
                p.labels = w.meta.labels.clone().unwrap_or_default();
                p.annotations = w.meta.annotations.clone().unwrap_or_default();
                keep.insert(key);
            }
            Some(_) => {
                // Only reachable through `apply` validation bypass: apply refuses spec changes.
                keep.insert(key);
            }
            None => missing.push(w),
        }
    }
    let doomed: Vec<String> = st
        .pods
        .keys()
        .filter(|k| !keep.contains(*k))
        .cloned()
        .collect();

    // 3. Create missing pods first (surge), then delete doomed ones.
    for w in missing {
        create_pod(lab, st, w)?;
    }
    for k in doomed {
        if let Some(p) = st.pods.remove(&k) {
            delete_pod(lab, &p);
            println!("pod/{} deleted", p.key());
        }
    }

    // 4. Services, kube-proxy rules, name resolution, cluster view.
    allocate_cluster_ips(st)?;
    let rules = service_rules(st)?;
    for n in &st.nodes {
        net::apply_nft(&n.netns, &net::render_nft(&rules))?;
    }
    write_hosts(lab, st)?;
    super::cluster::write(lab, st)?;
    Ok(())
}

fn schedule(st: &LabState, spec: &PodSpec) -> anyhow::Result<String> {
    if let Some(n) = &spec.node_name {
        if st.node(n).is_none() {
            bail!("spec.nodeName {n:?} is not a lab node");
        }
        return Ok(n.clone());
    }
    let wanted_host = spec
        .node_selector
        .as_ref()
        .and_then(|s| s.get("kubernetes.io/hostname"))
        .cloned();
    st.nodes
        .iter()
        .filter(|n| wanted_host.as_ref().is_none_or(|h| *h == n.name))
        .min_by_key(|n| {
            (
                st.pods.values().filter(|p| p.node == n.name).count(),
                n.index,
            )
        })
        .map(|n| n.name.clone())
        .context("no lab node matches the pod's nodeSelector")
}

fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:x}", std::process::id()))
}

fn create_pod(lab: &Lab, st: &mut LabState, w: WantPod) -> anyhow::Result<()> {
    let uid = new_uid();
    let name = match &w.name {
        Some(n) => n.clone(),
        None => format!(
            "{}-{}-{}",
            w.owner.clone().unwrap_or_default(),
            w.hash,
            &uid.replace('-', "")[..5]
        ),
    };
    let node_name =
        schedule(st, &w.spec).with_context(|| format!("scheduling pod {}/{name}", w.namespace))?;
    let node = st.node(&node_name).context("node vanished")?.clone();
    let used: BTreeSet<Ipv4Addr> = st.pods.values().map(|p| p.ip).collect();
    let ip = (2..=254u8)
        .map(|h| Ipv4Addr::new(10, 244, node.index, h))
        .find(|a| !used.contains(a))
        .with_context(|| format!("node {node_name} has no free pod IP"))?;
    st.next_veth += 1;
    let host_veth = format!("wlp{}", st.next_veth);
    let netns = format!("{}{}-{}", net::PREFIX, w.namespace, name);
    let cgroup = node.cgroup.join("kubepods").join(format!("pod{uid}"));
    let pod_dir = lab.pod_dir(&w.namespace, &name);
    std::fs::create_dir_all(&pod_dir)?;
    std::fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    net::create_pod_net(&node, &netns, &host_veth, ip)
        .with_context(|| format!("wiring pod {}/{name} on {node_name}", w.namespace))?;
    std::fs::write(pod_dir.join("hosts"), "")?;
    std::fs::write(
        pod_dir.join("resolv.conf"),
        format!(
            "# weft lab: names resolve through /etc/hosts (written by the lab)\nsearch {0}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.53\noptions ndots:5 timeout:1 attempts:1\n",
            w.namespace
        ),
    )?;
    let sa = w
        .spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut pod = PodState {
        namespace: w.namespace.clone(),
        name: name.clone(),
        uid,
        node: node_name.clone(),
        ip,
        netns: netns.clone(),
        host_veth,
        cgroup: cgroup.clone(),
        labels: w.meta.labels.clone().unwrap_or_default(),
        annotations: w.meta.annotations.clone().unwrap_or_default(),
        service_account: sa,
        owner: w.owner.clone(),
        spec_hash: w.hash.clone(),
        spec: serde_json::to_value(&w.spec)?,
        containers: vec![],
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    // Hosts must be in place before the containers resolve anything.
    st.pods.insert(pod.key(), pod.clone());
    allocate_cluster_ips(st)?;
    write_hosts(lab, st)?;
    let ctx = PodContext {
        cgroup,
        netns,
        etc: Some((pod_dir.join("hosts"), pod_dir.join("resolv.conf"))),
        hostname: Some(name.clone()),
    };
    for c in &w.spec.containers {
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        let Some((prog, args)) = argv.split_first() else {
            continue;
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env_clear()
            .env("PATH", lab.pod_path(st))
            .env("HOME", "/root")
            .env("HOSTNAME", &name)
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &w.namespace)
            .env("POD_IP", ip.to_string())
            .env("NODE_NAME", &node_name)
            .env("SERVICE_ACCOUNT", &pod.service_account)
            .current_dir(c.working_dir.as_deref().unwrap_or("/"));
        for e in c.env.iter().flatten() {
            let v = match &e.value_from {
                Some(from) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                    Some("metadata.name") => name.clone(),
                    Some("metadata.namespace") => w.namespace.clone(),
                    Some("status.podIP") => ip.to_string(),
                    Some("spec.nodeName") => node_name.clone(),
                    Some("spec.serviceAccountName") => pod.service_account.clone(),
                    _ => String::new(),
                },
                None => e.value.clone().unwrap_or_default(),
            };
            cmd.env(&e.name, v);
        }
        let log = lab.log_path(&w.namespace, &name, &c.name);
        let pid = pod::spawn(cmd, &ctx, &log).with_context(|| {
            format!(
                "starting container {} of pod {}/{name}",
                c.name, w.namespace
            )
        })?;
        pod.containers.push(ContainerState {
            name: c.name.clone(),
            pid,
            log,
        });
    }
    println!("pod/{}/{name} created on {node_name} ({ip})", w.namespace);
    st.pods.insert(pod.key(), pod);
    Ok(())
}

pub fn delete_pod(lab: &Lab, p: &PodState) {
    if let Err(e) = pod::kill_cgroup(&p.cgroup) {
        eprintln!("warning: {e:#}");
    }
    net::netns_del(&p.netns);
    let _ = std::fs::remove_dir_all(lab.pod_dir(&p.namespace, &p.name));
}

fn allocate_cluster_ips(st: &mut LabState) -> anyhow::Result<()> {
    let services: Vec<(String, Option<String>)> = st
        .objects_of("Service")
        .map(|o| {
            let ip = o
                .value
                .pointer("/spec/clusterIP")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (format!("{}/{}", o.key.namespace, o.key.name), ip)
        })
        .collect();
    let live: BTreeSet<&String> = services.iter().map(|(k, _)| k).collect();
    st.cluster_ips.retain(|k, _| live.contains(k));
    for (key, requested) in &services {
        if st.cluster_ips.contains_key(key) || requested.as_deref() == Some("None") {
            continue;
        }
        let used: BTreeSet<Ipv4Addr> = st.cluster_ips.values().copied().collect();
        let ip = match requested.as_deref().filter(|s| !s.is_empty()) {
            Some(r) => {
                let ip: Ipv4Addr = r
                    .parse()
                    .with_context(|| format!("service {key}: clusterIP"))?;
                if used.contains(&ip) {
                    bail!("service {key}: clusterIP {ip} is already allocated");
                }
                ip
            }
            None => {
                let first = u32::from(SERVICE_FIRST);
                (first..first + 65000)
                    .map(Ipv4Addr::from)
                    .find(|a| !used.contains(a))
                    .context("service range exhausted")?
            }
        };
        st.cluster_ips.insert(key.clone(), ip);
    }
    Ok(())
}

/// A Service's ready endpoints per port: (port name, service port, protocol, [(pod IP, target port)]).
pub type Endpoints = Vec<(String, u16, String, Vec<(Ipv4Addr, u16, String)>)>;

pub fn service_endpoints(st: &LabState, svc: &Service, ns: &str) -> Endpoints {
    let Some(spec) = &svc.spec else { return vec![] };
    let selector = spec.selector.clone().unwrap_or_default();
    let pods: Vec<&PodState> = if selector.is_empty() {
        vec![]
    } else {
        st.pods
            .values()
            .filter(|p| {
                p.namespace == ns
                    && selector_matches(&selector, &p.labels)
                    && p.phase() == "Running"
            })
            .collect()
    };
    let mut out = vec![];
    for sp in spec.ports.iter().flatten() {
        let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let mut eps = vec![];
        for p in &pods {
            let target = match &sp.target_port {
                None => Some(sp.port as u16),
                Some(IntOrString::Int(t)) => Some(*t as u16),
                Some(IntOrString::String(name)) => named_port(p, name, &proto),
            };
            if let Some(t) = target {
                eps.push((p.ip, t, p.name.clone()));
            }
        }
        eps.sort();
        out.push((
            sp.name.clone().unwrap_or_default(),
            sp.port as u16,
            proto,
            eps,
        ));
    }
    out
}

fn named_port(p: &PodState, name: &str, proto: &str) -> Option<u16> {
    let spec: PodSpec = serde_json::from_value(p.spec.clone()).ok()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|cp| {
            cp.name.as_deref() == Some(name) && cp.protocol.as_deref().unwrap_or("TCP") == proto
        })
        .map(|cp| cp.container_port as u16)
}

fn service_rules(st: &LabState) -> anyhow::Result<Vec<net::ServiceRule>> {
    let mut rules = vec![];
    for o in st.objects_of("Service") {
        let svc: Service = typed(&o.value)?;
        let Some(ip) = st
            .cluster_ips
            .get(&format!("{}/{}", o.key.namespace, o.key.name))
        else {
            continue; // headless
        };
        for (_, port, proto, eps) in service_endpoints(st, &svc, &o.key.namespace) {
            rules.push(net::ServiceRule {
                cluster_ip: *ip,
                port,
                protocol: proto,
                endpoints: eps.into_iter().map(|(ip, p, _)| (ip, p)).collect(),
            });
        }
    }
    Ok(rules)
}

/// Every pod's /etc/hosts: itself, then each Service as `svc.ns.svc.cluster.local`, `svc.ns.svc`,
/// `svc.ns` and, within the pod's own namespace, `svc` (headless Services: one line per endpoint).
/// Written in place so the bind mounts inside running pods see the update.
fn write_hosts(lab: &Lab, st: &LabState) -> anyhow::Result<()> {
    let mut services: Vec<(String, String, Vec<Ipv4Addr>)> = vec![];
    for o in st.objects_of("Service") {
        let key = format!("{}/{}", o.key.namespace, o.key.name);
        let ips = match st.cluster_ips.get(&key) {
            Some(ip) => vec![*ip],
            None => {
                let svc: Service = typed(&o.value)?;
                let mut ips: Vec<Ipv4Addr> = service_endpoints(st, &svc, &o.key.namespace)
                    .into_iter()
                    .flat_map(|(_, _, _, e)| e.into_iter().map(|(ip, _, _)| ip))
                    .collect();
                ips.sort();
                ips.dedup();
                ips
            }
        };
        services.push((o.key.namespace.clone(), o.key.name.clone(), ips));
    }
    for p in st.pods.values() {
        let mut s = format!(
            "# written by the weft lab\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{}\n",
            p.ip, p.name
        );
        for (ns, name, ips) in &services {
            for ip in ips {
                s.push_str(&format!(
                    "{ip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}"
                ));
                if *ns == p.namespace {
                    s.push_str(&format!(" {name}"));
                }
                s.push('\n');
            }
        }
        let path = lab.pod_dir(&p.namespace, &p.name).join("hosts");
        // Truncate + write keeps the inode that running pods have bind-mounted.
        std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
