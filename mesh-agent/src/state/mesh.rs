//! What the node proxy knows about the mesh beyond its own pods, from the config stream: services
//! (VIP:port → endpoints), which endpoints are meshed and with which identity, and the trust
//! bundle. Pure: built from the streamed resources (an invalid resource fails the whole update,
//! which the agent then NACKs) and queried per connection by [`MeshState::resolve`].
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use mesh_common::{
    ports::HBONE,
    proto::config::{Resource, resource::Kind},
};
use rustls::RootCertStore;

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub uid: String,
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub mesh: bool,
    pub identity: String,
    pub labels: BTreeMap<String, String>,
}

/// A service port (`<VIP>:<port>`) and its endpoints.
#[derive(Debug)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    /// The application protocol of the port (Istio's protocol selection).
    pub protocol: PortProtocol,
    /// Round-robin position.
    next: AtomicUsize,
}

/// The protocol of a service port, as Istio selects it: `appProtocol` first, then the port name
/// (`<protocol>` or `<protocol>-<suffix>`), case-insensitive; anything else is detected from the
/// first bytes the client sends (sniffing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// HTTP/1.1 (or HTTP/2 with prior knowledge, which the proxy also accepts on such ports).
    Http,
    /// `http2`, `grpc`, `grpc-web`, `h2c`: HTTP/2.
    Http2,
    /// Opaque TCP (`tcp`, `tls`, `https`, `mongo`, `mysql`, `redis`, …): never parsed.
    Tcp,
    /// Not declared: sniff.
    Unknown,
}

impl PortProtocol {
    pub fn select(port_name: &str, app_protocol: &str) -> PortProtocol {
        fn of(p: &str) -> Option<PortProtocol> {
            match p.to_ascii_lowercase().as_str() {
                "http" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(PortProtocol::Http),
                "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c" => {
                    Some(PortProtocol::Http2)
                }
                "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "udp" => {
                    Some(PortProtocol::Tcp)
                }
                _ => None,
            }
        }
        if let Some(p) = of(app_protocol) {
            return p;
        }
        let prefix = port_name.split('-').next().unwrap_or("");
        of(prefix).unwrap_or(PortProtocol::Unknown)
    }
}

/// A meshed pod reachable by IP (from the address books and service endpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub name: String,
    /// Canonical workload name (from the pod's labels when known, else the pod name).
    pub workload: String,
    pub identity: String,
}

#[derive(Default)]
pub struct MeshState {
    pub trust_domain: String,
    pub roots: Option<Arc<RootCertStore>>,
    /// AuthorizationPolicies and PeerAuthentications streamed to this node.
    pub policies: crate::policy::PolicyIndex,
    /// This node's meshed workloads by UID (their policy lists, namespace and labels).
    pub workloads: HashMap<String, mesh_common::proto::config::Workload>,
    services: HashMap<SocketAddr, Arc<ServicePort>>,
    /// The same service ports by (hostname, port): route destinations name hosts.
    by_host: HashMap<(String, u16), Arc<ServicePort>>,
    /// Service ports by one of their endpoints (`<podIP>:<targetPort>`; the first wins): the
    /// server side learns the protocol and service of a port of its pod.
    by_endpoint: HashMap<SocketAddr, Arc<ServicePort>>,
    meshed_pods: HashMap<IpAddr, PodInfo>,
    /// Compiled route tables by service hostname.
    routes: HashMap<String, Arc<crate::l7::CompiledTable>>,
    /// DestinationRule policies by service hostname.
    destinations: HashMap<String, Arc<mesh_common::proto::config::DestinationPolicy>>,
}

impl std::fmt::Debug for MeshState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshState")
            .field("trust_domain", &self.trust_domain)
            .field("services", &self.services.len())
            .field("meshed_pods", &self.meshed_pods.len())
            .field("policies", &self.policies.len())
            .finish()
    }
}

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Upstream {
    /// Through the mTLS tunnel: `<podIP>:15008`, CONNECT `<podIP>:<targetPort>`.
    Hbone {
        via: SocketAddr,
        authority: SocketAddr,
        identity: String,
        /// `namespace/name` of the service when the destination was a service VIP.
        service: Option<String>,
    },
    /// Plain TCP (a destination outside the mesh).
    Plain(SocketAddr),
    /// A service with no endpoints: refuse, as kube-proxy does.
    NoEndpoints(String),
}

impl MeshState {
    /// Builds the state from every streamed resource; the first bad one fails it (→ NACK).
    pub fn from_resources<'a>(
        resources: impl IntoIterator<Item = &'a Resource> + Clone,
    ) -> Result<Self, String> {
        let mut me = Self {
            policies: crate::policy::PolicyIndex::from_resources(resources.clone())
                .map_err(|e| e.to_string())?,
            ..Self::default()
        };
        for r in resources {
            match &r.kind {
                Some(Kind::Workload(w)) if w.mesh => {
                    me.workloads.insert(w.uid.clone(), w.clone());
                }
                Some(Kind::Service(s)) => {
                    let mut eps_by_port: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
                    for e in &s.endpoints {
                        let ip: IpAddr = e.ip.parse().map_err(|_| {
                            format!("{}: endpoint {}: bad ip {:?}", r.name, e.name, e.ip)
                        })?;
                        if e.mesh {
                            if !e.identity.starts_with("spiffe://") {
                                return Err(format!(
                                    "{}: endpoint {}: meshed without a SPIFFE identity",
                                    r.name, e.name
                                ));
                            }
                            me.meshed_pods.insert(
                                ip,
                                PodInfo {
                                    name: e.name.clone(),
                                    workload: crate::state::workload::canonical_name(
                                        &e.labels
                                            .iter()
                                            .map(|(k, v)| (k.clone(), v.clone()))
                                            .collect(),
                                        &e.name,
                                    ),
                                    identity: e.identity.clone(),
                                },
                            );
                        }
                        for (sp, tp) in &e.ports {
                            let (sp, tp) = (port(&r.name, *sp)?, port(&r.name, *tp)?);
                            eps_by_port.entry(sp).or_default().push(Endpoint {
                                uid: e.workload_uid.clone(),
                                name: e.name.clone(),
                                ip,
                                port: tp,
                                mesh: e.mesh,
                                identity: e.identity.clone(),
                                labels: e
                                    .labels
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect(),
                            });
                        }
                    }
                    let mut vips = vec![];
                    for a in &s.addresses {
                        let vip: IpAddr = a
                            .parse()
                            .map_err(|_| format!("{}: bad address {a:?}", r.name))?;
                        vips.push(vip);
                    }
                    for p in &s.ports {
                        let sp = port(&r.name, p.port)?;
                        let mut endpoints = eps_by_port.get(&sp).cloned().unwrap_or_default();
                        // A stable order: balancers and hash rings index endpoints.
                        endpoints.sort_by_key(|e| (e.ip, e.port));
                        let sp_arc = Arc::new(ServicePort {
                            namespace: s.namespace.clone(),
                            name: s.name.clone(),
                            hostname: s.hostname.clone(),
                            port: sp,
                            endpoints,
                            protocol: PortProtocol::select(&p.name, &p.app_protocol),
                            next: AtomicUsize::new(0),
                        });
                        for e in &sp_arc.endpoints {
                            me.by_endpoint
                                .entry(SocketAddr::new(e.ip, e.port))
                                .or_insert_with(|| sp_arc.clone());
                        }
                        for vip in &vips {
                            me.services
                                .insert(SocketAddr::new(*vip, sp), sp_arc.clone());
                        }
                        me.by_host.insert((s.hostname.clone(), sp), sp_arc);
                    }
                }
                Some(Kind::AddressBook(book)) => {
                    for p in &book.pods {
                        let ip: IpAddr = p.ip.parse().map_err(|_| {
                            format!(
                                "{}: pod {}/{}: bad ip {:?}",
                                r.name, p.namespace, p.name, p.ip
                            )
                        })?;
                        if !p.identity.starts_with("spiffe://") {
                            return Err(format!(
                                "{}: pod {}/{}: no SPIFFE identity",
                                r.name, p.namespace, p.name
                            ));
                        }
                        me.meshed_pods.entry(ip).or_insert_with(|| PodInfo {
                            name: p.name.clone(),
                            workload: if p.workload.is_empty() {
                                p.name.clone()
                            } else {
                                p.workload.clone()
                            },
                            identity: p.identity.clone(),
                        });
                    }
                }
                Some(Kind::RouteTable(t)) => {
                    let table = crate::l7::CompiledTable::new(t.clone())
                        .map_err(|e| format!("{}: {e}", r.name))?;
                    me.routes.insert(t.host.clone(), Arc::new(table));
                }
                Some(Kind::DestinationPolicy(d)) => {
                    me.destinations.insert(d.host.clone(), Arc::new(d.clone()));
                }
                Some(Kind::TrustBundle(b)) => {
                    let roots = crate::hbone::tls::roots_from_pem(&b.roots_pem)
                        .map_err(|e| format!("{}: {e}", r.name))?;
                    me.trust_domain = b.trust_domain.clone();
                    me.roots = Some(Arc::new(roots));
                }
                _ => {}
            }
        }
        Ok(me)
    }

    /// The inbound decision for a connection to this node's pod `uid` (AuthorizationPolicy, and
    /// PeerAuthentication STRICT for plaintext). A pod the controller did not describe is allowed
    /// only while no policy can apply to it (local/lab sources).
    pub fn check_inbound(
        &self,
        uid: &str,
        src_identity: Option<&str>,
        src_ip: IpAddr,
        dst: SocketAddr,
    ) -> Result<(), String> {
        let Some(w) = self.workloads.get(uid) else {
            return Ok(());
        };
        let conn = crate::policy::Conn::new(src_identity, src_ip, dst);
        let d = self.policies.check_workload(w, &conn);
        for a in &d.audited {
            tracing::info!(pod = %format!("{}/{}", w.namespace, w.name), src = ?src_identity, %dst, "{a}");
        }
        for r in &d.dry_run_reports {
            tracing::info!(pod = %format!("{}/{}", w.namespace, w.name), src = ?src_identity, %dst, "dry-run: {r}");
        }
        d.into_result()
    }

    /// For the admin endpoint.
    pub fn dump(&self) -> serde_json::Value {
        let mut services: Vec<serde_json::Value> = self
            .services
            .iter()
            .map(|(vip, s)| {
                serde_json::json!({
                    "address": vip.to_string(),
                    "service": format!("{}/{}", s.namespace, s.name),
                    "hostname": s.hostname,
                    "protocol": format!("{:?}", s.protocol),
                    "endpoints": s.endpoints.iter().map(|e| serde_json::json!({
                        "pod": e.name, "address": SocketAddr::new(e.ip, e.port).to_string(),
                        "hbone": e.mesh, "identity": e.identity, "labels": e.labels,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        services.sort_by_key(|v| v["address"].as_str().unwrap_or("").to_string());
        let mut pods: Vec<serde_json::Value> = self
            .meshed_pods
            .iter()
            .map(|(ip, p)| serde_json::json!({"ip": ip.to_string(), "pod": p.name, "workload": p.workload, "identity": p.identity}))
            .collect();
        pods.sort_by_key(|v| v["ip"].as_str().unwrap_or("").to_string());
        serde_json::json!({
            "policies": self.policies.len(),
            "route_tables": sorted(self.routes.keys()),
            "destination_policies": sorted(self.destinations.keys()),
            "trust_domain": self.trust_domain,
            "trust_bundle": self.roots.as_ref().map(|r| r.len()).unwrap_or(0),
            "services": services,
            "meshed_pods": pods,
        })
    }

    pub fn service(&self, vip: &SocketAddr) -> Option<&Arc<ServicePort>> {
        self.services.get(vip)
    }

    pub fn meshed_pod(&self, ip: &IpAddr) -> Option<&PodInfo> {
        self.meshed_pods.get(ip)
    }

    /// A service port one of whose endpoints is `ep` (`<podIP>:<targetPort>`).
    pub fn service_of_endpoint(&self, ep: &SocketAddr) -> Option<&Arc<ServicePort>> {
        self.by_endpoint.get(ep)
    }

    /// A service port by hostname (route destinations).
    pub fn service_by_host(&self, host: &str, port: u16) -> Option<&Arc<ServicePort>> {
        self.by_host.get(&(host.to_string(), port))
    }

    /// The compiled route table of a service hostname, if any route applies to it.
    pub fn routes(&self, host: &str) -> Option<&Arc<crate::l7::CompiledTable>> {
        self.routes.get(host)
    }

    /// The DestinationRule policy of a service hostname.
    pub fn destination(
        &self,
        host: &str,
    ) -> Option<&Arc<mesh_common::proto::config::DestinationPolicy>> {
        self.destinations.get(host)
    }

    /// Where a connection to `dst` goes: a service VIP picks an endpoint (round robin); a meshed
    /// endpoint is reached over HBONE, anything else directly.
    pub fn resolve(&self, dst: SocketAddr) -> Upstream {
        self.resolve_from(dst, None, "", &BTreeMap::new())
    }

    /// [`Self::resolve`] for a client in namespace `src_ns` with pod labels `src_labels`: a
    /// service whose route table has `tcp[]` routes sends the connection to the first matching
    /// route's weighted destination (and its DestinationRule subset).
    pub fn resolve_from(
        &self,
        dst: SocketAddr,
        src_ip: Option<IpAddr>,
        src_ns: &str,
        src_labels: &BTreeMap<String, String>,
    ) -> Upstream {
        if let Some(vip_svc) = self.services.get(&dst) {
            let mut svc = vip_svc;
            let mut subset_eps: Option<Vec<&Endpoint>> = None;
            if let Some(table) = self.routes.get(&vip_svc.hostname)
                && let Some((_, route)) = table.select_tcp(&crate::l7::TcpInfo {
                    dst_ip: dst.ip(),
                    dst_port: dst.port(),
                    src_ip,
                    src_namespace: src_ns,
                    src_labels,
                })
                && let Some(d) = crate::l7::pick_random(&route.destinations)
            {
                let port = if d.port == 0 {
                    dst.port()
                } else {
                    d.port as u16
                };
                let Some(target) = self.by_host.get(&(d.host.clone(), port)) else {
                    return Upstream::NoEndpoints(d.host.clone());
                };
                svc = target;
                match crate::l7::subset_endpoints(
                    &d.host,
                    self.destinations.get(&d.host).map(|p| p.as_ref()),
                    &d.subset,
                    &target.endpoints,
                ) {
                    Ok(eps) => subset_eps = Some(eps),
                    Err(_) => {
                        return Upstream::NoEndpoints(format!("{} subset {}", d.host, d.subset));
                    }
                }
            }
            let eps: Vec<&Endpoint> = subset_eps.unwrap_or_else(|| svc.endpoints.iter().collect());
            if eps.is_empty() {
                return Upstream::NoEndpoints(format!("{}/{}", svc.namespace, svc.name));
            }
            let i = svc.next.fetch_add(1, Ordering::Relaxed) % eps.len();
            let ep = eps[i];
            let to = SocketAddr::new(ep.ip, ep.port);
            return if ep.mesh {
                Upstream::Hbone {
                    via: SocketAddr::new(ep.ip, HBONE),
                    authority: to,
                    identity: ep.identity.clone(),
                    service: Some(format!("{}/{}", svc.namespace, svc.name)),
                }
            } else {
                Upstream::Plain(to)
            };
        }
        match self.meshed_pods.get(&dst.ip()) {
            Some(p) => Upstream::Hbone {
                via: SocketAddr::new(dst.ip(), HBONE),
                authority: dst,
                identity: p.identity.clone(),
                service: None,
            },
            None => Upstream::Plain(dst),
        }
    }
}

fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut v: Vec<_> = keys.collect();
    v.sort();
    v
}

fn port(resource: &str, p: u32) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{resource}: port {p} out of range"))
}

/// The current state, swapped as a whole on every accepted update.
#[derive(Default)]
pub struct SharedMesh(RwLock<Arc<MeshState>>);

impl SharedMesh {
    pub fn load(&self) -> Arc<MeshState> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn store(&self, m: Arc<MeshState>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::proto::config::{
        self as pc, Endpoint as PEp, Service as PSvc, ServicePort as PPort,
    };

    fn svc(name: &str, vip: &str, eps: Vec<PEp>) -> Resource {
        Resource {
            name: format!("service/demo/{name}"),
            kind: Some(Kind::Service(PSvc {
                name: name.into(),
                namespace: "demo".into(),
                hostname: format!("{name}.demo.svc.cluster.local"),
                addresses: vec![vip.into()],
                ports: vec![PPort {
                    name: "http".into(),
                    port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                endpoints: eps,
            })),
        }
    }

    fn ep(name: &str, ip: &str, mesh: bool) -> PEp {
        PEp {
            workload_uid: format!("u-{name}"),
            ip: ip.into(),
            node: "n".into(),
            ports: [(80, 8080)].into(),
            mesh,
            identity: if mesh {
                format!("spiffe://cluster.local/ns/demo/sa/{name}")
            } else {
                String::new()
            },
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn resolve_table() {
        let res = [
            svc(
                "meshed",
                "10.96.0.1",
                vec![ep("a", "10.244.1.2", true), ep("b", "10.244.2.2", true)],
            ),
            svc("plain", "10.96.0.2", vec![ep("p", "10.244.1.9", false)]),
            svc("empty", "10.96.0.3", vec![]),
        ];
        let book = Resource {
            name: "addresses/n".into(),
            kind: Some(Kind::AddressBook(pc::AddressBook {
                node: "n".into(),
                pods: vec![pc::PeerAddress {
                    uid: "u-solo".into(),
                    name: "solo".into(),
                    namespace: "demo".into(),
                    ip: "10.244.3.3".into(),
                    identity: "spiffe://cluster.local/ns/demo/sa/solo".into(),
                    workload: "solo".into(),
                }],
            })),
        };
        let m = MeshState::from_resources(res.iter().chain([&book])).unwrap();
        // A meshed pod behind no service, by IP.
        assert!(matches!(
            m.resolve("10.244.3.3:7000".parse().unwrap()),
            Upstream::Hbone { identity, service: None, .. } if identity.ends_with("/sa/solo")
        ));
        let a: SocketAddr = "10.96.0.1:80".parse().unwrap();
        // Round robin over both meshed endpoints, over HBONE with the endpoint's identity.
        let picks: Vec<Upstream> = (0..2).map(|_| m.resolve(a)).collect();
        assert!(picks.contains(&Upstream::Hbone {
            via: "10.244.1.2:15008".parse().unwrap(),
            authority: "10.244.1.2:8080".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/demo/sa/a".into(),
            service: Some("demo/meshed".into()),
        }));
        assert!(picks.iter().any(
            |u| matches!(u, Upstream::Hbone { via, .. } if via.ip().to_string() == "10.244.2.2")
        ));
        assert_eq!(
            m.resolve("10.96.0.2:80".parse().unwrap()),
            Upstream::Plain("10.244.1.9:8080".parse().unwrap())
        );
        assert_eq!(
            m.resolve("10.96.0.3:80".parse().unwrap()),
            Upstream::NoEndpoints("demo/empty".into())
        );
        // A meshed pod by IP: HBONE to the port asked for.
        assert!(matches!(
            m.resolve("10.244.2.2:9000".parse().unwrap()),
            Upstream::Hbone { authority, .. } if authority.port() == 9000
        ));
        // Anything else: plain.
        let out: SocketAddr = "192.0.2.1:443".parse().unwrap();
        assert_eq!(m.resolve(out), Upstream::Plain(out));
    }

    #[test]
    fn tcp_routes_pick_weighted_subsets_and_http_ports_are_detected() {
        let mut v1 = ep("a", "10.244.1.2", true);
        v1.labels = [("version".to_string(), "v1".to_string())].into();
        let mut v2 = ep("b", "10.244.2.2", true);
        v2.labels = [("version".to_string(), "v2".to_string())].into();
        let host = "meshed.demo.svc.cluster.local";
        let routes = Resource {
            name: "routes/demo/meshed".into(),
            kind: Some(Kind::RouteTable(pc::RouteTable {
                host: host.into(),
                tcp: vec![pc::TcpRoute {
                    destinations: vec![pc::WeightedDestination {
                        host: host.into(),
                        subset: "v2".into(),
                        weight: 100,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let dr = Resource {
            name: "destination/demo/meshed".into(),
            kind: Some(Kind::DestinationPolicy(pc::DestinationPolicy {
                host: host.into(),
                subsets: vec![pc::Subset {
                    name: "v2".into(),
                    labels: [("version".to_string(), "v2".to_string())].into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let res = [svc("meshed", "10.96.0.1", vec![v1, v2]), routes, dr];
        let m = MeshState::from_resources(res.iter()).unwrap();
        let a: SocketAddr = "10.96.0.1:80".parse().unwrap();
        for _ in 0..4 {
            assert!(matches!(
                m.resolve(a),
                Upstream::Hbone { via, .. } if via.ip().to_string() == "10.244.2.2"
            ));
        }
        // The port is named "http": the L7 path; the endpoint index finds the service.
        assert_eq!(m.service(&a).unwrap().protocol, PortProtocol::Http);
        assert_eq!(
            m.service_of_endpoint(&"10.244.1.2:8080".parse().unwrap())
                .map(|s| s.name.as_str()),
            Some("meshed")
        );
        assert!(m.routes(host).is_some() && m.destination(host).is_some());
    }

    #[test]
    fn port_protocol_selection() {
        let cases = [
            ("http", "", PortProtocol::Http),
            ("http-web", "", PortProtocol::Http),
            ("HTTP2", "", PortProtocol::Http2),
            ("grpc-api", "", PortProtocol::Http2),
            ("tcp-db", "", PortProtocol::Tcp),
            ("https", "", PortProtocol::Tcp),
            ("web", "", PortProtocol::Unknown),
            ("", "", PortProtocol::Unknown),
            ("web", "http", PortProtocol::Http),
            ("http", "tcp", PortProtocol::Tcp),
            ("x", "kubernetes.io/h2c", PortProtocol::Http2),
            ("httpx", "", PortProtocol::Unknown),
        ];
        for (name, app, want) in cases {
            assert_eq!(PortProtocol::select(name, app), want, "{name} {app}");
        }
    }

    #[test]
    fn bad_resources_fail_the_update() {
        let mut bad = ep("a", "10.244.1.2", true);
        bad.identity = String::new();
        assert!(
            MeshState::from_resources([svc("s", "10.96.0.1", vec![bad])].iter())
                .unwrap_err()
                .contains("SPIFFE")
        );
        assert!(
            MeshState::from_resources([svc("s", "not-an-ip", vec![])].iter())
                .unwrap_err()
                .contains("bad address")
        );
        let tb = Resource {
            name: "trust-bundle".into(),
            kind: Some(Kind::TrustBundle(pc::TrustBundle {
                trust_domain: "cluster.local".into(),
                roots_pem: vec!["garbage".into()],
            })),
        };
        assert!(MeshState::from_resources([tb].iter()).is_err());
    }
}
