//! `DestinationPolicy`s: DestinationRules compiled per service host, every default resolved.
//!
//! - Host resolution as for routes: short names in the rule's namespace; wildcards expand over the
//!   model's services; an exact host takes precedence over wildcards.
//! - Several DestinationRules for one host are merged oldest first (Istio merges same-host rules
//!   the same way): the first top-level `trafficPolicy` wins, subsets are added by name (the first
//!   definition of a name wins).
//! - DestinationRules with a `workloadSelector` are not compiled (not supported yet; they would
//!   apply to some clients only).
//! - Subset policies follow Istio's `MergeTrafficPolicy`: each of loadBalancer, connectionPool,
//!   outlierDetection, tls set on the subset replaces the top-level one; port-level settings
//!   replace all four fields for their port and do not inherit.
use std::collections::{BTreeMap, BTreeSet};

use mesh_common::proto::config::{
    ClientTls, ConnectionPool, ConsistentHash, DestinationPolicy, HashCookie, LoadBalancer,
    OutlierDetection, PortTrafficPolicy, Resource, Subset, TrafficPolicy, client_tls,
    consistent_hash, load_balancer, resource::Kind,
};

use super::{fqdn, millis, millis_str, object_ref, resolve_host, target_services};
use crate::{
    crd::{
        MeshResource,
        networking::{
            ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings,
            OutlierDetection as IstioOutlier, SimpleLb, TrafficPolicy as IstioPolicy,
        },
    },
    model::Service,
};

/// Istio's "unlimited" for connection pool limits.
pub const UNLIMITED: u32 = u32::MAX;
/// Default TCP connect timeout (10 s).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default HTTP idle timeout (1 h).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Default ring hash minimum size.
pub const DEFAULT_RING_SIZE: u64 = 1024;
/// Default Maglev table size.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

/// One policy per service with a DestinationRule; sorted by resource name.
pub fn destination_policies(drs: &[MeshResource], services: &[Service]) -> Vec<Resource> {
    let mut by_svc: BTreeMap<(String, String), Vec<(u8, &MeshResource)>> = BTreeMap::new();
    for obj in drs {
        let MeshResource::DestinationRule(dr) = obj else {
            continue;
        };
        if dr.spec.workload_selector.is_some() {
            continue;
        }
        let host = resolve_host(&dr.spec.host, obj.namespace());
        for (svc, spec) in target_services(&host, services) {
            by_svc.entry(svc).or_default().push((spec, obj));
        }
    }
    by_svc
        .into_iter()
        .map(|((ns, svc), mut rules)| {
            rules.sort_by_key(|(spec, _)| *spec);
            let rules: Vec<&MeshResource> = rules.into_iter().map(|(_, r)| r).collect();
            Resource {
                name: format!("destination/{ns}/{svc}"),
                kind: Some(Kind::DestinationPolicy(merge(&ns, &svc, &rules))),
            }
        })
        .collect()
}

/// The policy for one service from its DestinationRules in precedence order.
pub fn merge(ns: &str, svc: &str, rules: &[&MeshResource]) -> DestinationPolicy {
    let mut top: Option<&IstioPolicy> = None;
    let mut subsets = vec![];
    let mut names = BTreeSet::new();
    let mut sources = vec![];
    for obj in rules {
        let MeshResource::DestinationRule(dr) = obj else {
            continue;
        };
        sources.push(object_ref(obj));
        if top.is_none() {
            top = dr.spec.traffic_policy.as_ref();
        }
        for s in &dr.spec.subsets {
            if names.insert(s.name.clone()) {
                subsets.push(s);
            }
        }
    }
    DestinationPolicy {
        host: fqdn(svc, ns),
        namespace: ns.into(),
        service: svc.into(),
        sources,
        traffic_policy: Some(resolve(top)),
        subsets: subsets
            .into_iter()
            .map(|s| Subset {
                name: s.name.clone(),
                labels: s.labels.clone().into_iter().collect(),
                traffic_policy: Some(merge_subset(top, s.traffic_policy.as_ref())),
            })
            .collect(),
    }
}

/// The four fields a traffic policy (or a port-level entry) sets.
#[derive(Clone, Copy, Default)]
struct Fields<'a> {
    lb: Option<&'a LoadBalancerSettings>,
    pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a IstioOutlier>,
    tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Fields<'a> {
    fn of(p: Option<&'a IstioPolicy>) -> Self {
        p.map(|p| Fields {
            lb: p.load_balancer.as_ref(),
            pool: p.connection_pool.as_ref(),
            outlier: p.outlier_detection.as_ref(),
            tls: p.tls.as_ref(),
        })
        .unwrap_or_default()
    }

    /// Port-level settings of `p` for `port` (all four fields, no inheritance).
    fn port(p: Option<&'a IstioPolicy>, port: u32) -> Option<Self> {
        p?.port_level_settings
            .iter()
            .find(|s| s.port.as_ref().map(|p| p.number) == Some(port))
            .map(|s| Fields {
                lb: s.load_balancer.as_ref(),
                pool: s.connection_pool.as_ref(),
                outlier: s.outlier_detection.as_ref(),
                tls: s.tls.as_ref(),
            })
    }

    /// `self` with every field `over` sets replacing ours.
    fn overridden_by(self, over: Fields<'a>) -> Self {
        Fields {
            lb: over.lb.or(self.lb),
            pool: over.pool.or(self.pool),
            outlier: over.outlier.or(self.outlier),
            tls: over.tls.or(self.tls),
        }
    }
}

fn ports_of(p: Option<&IstioPolicy>) -> Vec<u32> {
    p.map(|p| {
        p.port_level_settings
            .iter()
            .filter_map(|s| s.port.as_ref().map(|p| p.number))
            .collect()
    })
    .unwrap_or_default()
}

fn resolved(f: Fields<'_>) -> TrafficPolicy {
    TrafficPolicy {
        load_balancer: Some(load_balancer(f.lb)),
        connection_pool: Some(connection_pool(f.pool)),
        outlier_detection: f.outlier.map(outlier_detection),
        tls: f.tls.map(client_tls),
        port_level: vec![],
    }
}

fn port_entry(port: u32, f: Fields<'_>) -> PortTrafficPolicy {
    let r = resolved(f);
    PortTrafficPolicy {
        port,
        load_balancer: r.load_balancer,
        connection_pool: r.connection_pool,
        outlier_detection: r.outlier_detection,
        tls: r.tls,
    }
}

/// The top-level policy (traffic not sent to a subset).
pub fn resolve(top: Option<&IstioPolicy>) -> TrafficPolicy {
    let mut out = resolved(Fields::of(top));
    let ports: BTreeSet<u32> = ports_of(top).into_iter().collect();
    out.port_level = ports
        .into_iter()
        .filter_map(|p| Fields::port(top, p).map(|f| port_entry(p, f)))
        .collect();
    out
}

/// Istio's `MergeTrafficPolicy(top, subset, port)` for the subset and each port either names.
pub fn merge_subset(top: Option<&IstioPolicy>, sub: Option<&IstioPolicy>) -> TrafficPolicy {
    let sub_fields = Fields::of(sub);
    let mut out = resolved(Fields::of(top).overridden_by(sub_fields));
    let ports: BTreeSet<u32> = ports_of(top).into_iter().chain(ports_of(sub)).collect();
    out.port_level = ports
        .into_iter()
        .filter_map(|p| {
            let f = match Fields::port(sub, p) {
                Some(f) => f,
                None => Fields::port(top, p)?.overridden_by(sub_fields),
            };
            Some(port_entry(p, f))
        })
        .collect();
    out
}

/// `loadBalancer`: unset / UNSPECIFIED / LEAST_CONN = LEAST_REQUEST (Istio's default).
fn load_balancer(lb: Option<&LoadBalancerSettings>) -> LoadBalancer {
    let simple = match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => load_balancer::Simple::RoundRobin,
        Some(SimpleLb::Random) => load_balancer::Simple::Random,
        Some(SimpleLb::Passthrough) => load_balancer::Simple::Passthrough,
        _ => load_balancer::Simple::LeastRequest,
    };
    LoadBalancer {
        simple: simple as i32,
        consistent_hash: lb.and_then(|l| l.consistent_hash.as_ref()).map(|c| {
            let key = if let Some(h) = &c.http_header_name {
                Some(consistent_hash::Key::HeaderName(h.to_ascii_lowercase()))
            } else if let Some(ck) = &c.http_cookie {
                Some(consistent_hash::Key::Cookie(HashCookie {
                    name: ck.name.clone(),
                    path: ck.path.clone().unwrap_or_default(),
                    ttl_ms: ck.ttl.as_deref().and_then(millis_str),
                }))
            } else if c.use_source_ip == Some(true) {
                Some(consistent_hash::Key::UseSourceIp(true))
            } else {
                c.http_query_parameter_name
                    .clone()
                    .map(consistent_hash::Key::QueryParameter)
            };
            let algorithm = match &c.maglev {
                Some(m) => consistent_hash::Algorithm::MaglevTableSize(
                    m.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
                ),
                None => consistent_hash::Algorithm::RingHashMinimumRingSize(
                    c.ring_hash
                        .as_ref()
                        .and_then(|r| r.minimum_ring_size)
                        .or(c.minimum_ring_size)
                        .unwrap_or(DEFAULT_RING_SIZE),
                ),
            };
            ConsistentHash {
                key,
                algorithm: Some(algorithm),
            }
        }),
    }
}

/// A limit: positive = as written, else Istio's "unlimited".
fn limit(v: Option<i32>) -> u32 {
    v.filter(|v| *v > 0).map(|v| v as u32).unwrap_or(UNLIMITED)
}

/// `connectionPool` with Istio's defaults.
fn connection_pool(p: Option<&ConnectionPoolSettings>) -> ConnectionPool {
    let tcp = p.and_then(|p| p.tcp.as_ref());
    let http = p.and_then(|p| p.http.as_ref());
    ConnectionPool {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        connect_timeout_ms: millis(tcp.and_then(|t| t.connect_timeout.as_ref()))
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
        http1_max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
        http2_max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .unwrap_or(0)
            .max(0) as u32,
        max_retries: limit(http.and_then(|h| h.max_retries)),
        idle_timeout_ms: millis(http.and_then(|h| h.idle_timeout.as_ref()))
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
        max_connection_duration_ms: millis(tcp.and_then(|t| t.max_connection_duration.as_ref()))
            .unwrap_or(0),
    }
}

/// `outlierDetection` with Istio's defaults (5 consecutive 5xx, 10 s interval, 30 s base ejection,
/// 10% max ejection, 0% min health, ejection time capped at 300 s).
fn outlier_detection(o: &IstioOutlier) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx_errors: o.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
        interval_ms: millis(o.interval.as_ref()).unwrap_or(10_000),
        base_ejection_time_ms: millis(o.base_ejection_time.as_ref()).unwrap_or(30_000),
        max_ejection_percent: o.max_ejection_percent.unwrap_or(10).clamp(0, 100) as u32,
        min_health_percent: o.min_health_percent.unwrap_or(0).clamp(0, 100) as u32,
        max_ejection_time_ms: millis(o.max_ejection_time.as_ref()).unwrap_or(300_000),
    }
}

fn client_tls(t: &ClientTlsSettings) -> ClientTls {
    let mode = match t.mode {
        None => client_tls::Mode::Unset,
        Some(ClientTlsMode::Disable) => client_tls::Mode::Disable,
        Some(ClientTlsMode::Simple) => client_tls::Mode::Simple,
        Some(ClientTlsMode::Mutual) => client_tls::Mode::Mutual,
        Some(ClientTlsMode::IstioMutual) => client_tls::Mode::IstioMutual,
    };
    ClientTls {
        mode: mode as i32,
        sni: t.sni.clone().unwrap_or_default(),
        subject_alt_names: t.subject_alt_names.clone(),
        credential_name: t.credential_name.clone().unwrap_or_default(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests;
