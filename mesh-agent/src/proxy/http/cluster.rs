//! Per-client cluster state: what Envoy keeps per upstream cluster (`outbound|port|subset|host`)
//! — the balancer, the connection-pool breaker, outlier detection and requests in flight per
//! endpoint. One [`Clusters`] per client pod (Istio applies these settings in each client's
//! proxy); a cluster is rebuilt when its effective traffic policy changes and survives every
//! other config update.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use mesh_common::proto::config::{DestinationPolicy, Subset, TrafficPolicy};

use crate::l7::{
    lb::{Algorithm, Balancer, Candidate, HashKey},
    limits::{Breaker, PoolLimits},
    outlier::{Detector, Ejection, OutlierConfig},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub subset: String,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "outbound|{}|{}|{}", self.port, self.subset, self.host)
    }
}

/// The effective policy for traffic to `port` of a host, subset `subset` (`None` = whole
/// service): the subset's merged policy (the controller merged it with the top level) or the
/// top-level one, then the port-level entry for `port`, which replaces every field.
pub fn effective_policy(
    policy: Option<&DestinationPolicy>,
    subset: Option<&Subset>,
    port: u16,
) -> TrafficPolicy {
    let base = match subset {
        Some(s) => s.traffic_policy.clone(),
        None => policy.and_then(|p| p.traffic_policy.clone()),
    }
    .unwrap_or_default();
    match base.port_level.iter().find(|p| p.port == u32::from(port)) {
        Some(pl) => TrafficPolicy {
            load_balancer: pl.load_balancer.clone(),
            connection_pool: pl.connection_pool,
            outlier_detection: pl.outlier_detection,
            tls: pl.tls.clone(),
            port_level: vec![],
        },
        None => TrafficPolicy {
            port_level: vec![],
            ..base
        },
    }
}

pub struct Cluster {
    pub key: ClusterKey,
    policy: TrafficPolicy,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    pub breaker: Arc<Breaker>,
    outlier: Option<Mutex<Detector>>,
    active: Mutex<HashMap<SocketAddr, u32>>,
}

impl Cluster {
    fn new(key: ClusterKey, policy: TrafficPolicy) -> Cluster {
        let lb = policy.load_balancer.as_ref();
        Cluster {
            key,
            balancer: Balancer::new(Algorithm::from_policy(lb)),
            hash_key: HashKey::from_policy(lb),
            breaker: Breaker::new(PoolLimits::from(policy.connection_pool.as_ref())),
            outlier: policy
                .outlier_detection
                .as_ref()
                .map(|o| Mutex::new(Detector::new(OutlierConfig::from(o)))),
            active: Mutex::default(),
            policy,
        }
    }

    pub fn limits(&self) -> &PoolLimits {
        self.breaker.limits()
    }

    /// The balancer's view of `endpoints` (health from outlier detection).
    pub fn candidates(&self, endpoints: &[SocketAddr], now: Instant) -> Vec<Candidate> {
        let health = match &self.outlier {
            Some(d) => d
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .health(endpoints, now),
            None => vec![true; endpoints.len()],
        };
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .iter()
            .zip(health)
            .map(|(a, healthy)| Candidate {
                addr: *a,
                active_requests: active.get(a).copied().unwrap_or(0),
                healthy,
            })
            .collect()
    }

    /// Counts a request in flight to `addr` until the guard drops.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> InFlight {
        *self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_insert(0) += 1;
        InFlight {
            cluster: self.clone(),
            addr,
        }
    }

    /// Feeds outlier detection with the status of one finished attempt (local-origin failures
    /// mapped to 503/504 by the caller).
    pub fn report(
        &self,
        addr: SocketAddr,
        status: u16,
        endpoints: &[SocketAddr],
    ) -> Option<Ejection> {
        let d = self.outlier.as_ref()?;
        d.lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(addr, status, endpoints, Instant::now())
    }

    pub fn dump(&self) -> serde_json::Value {
        let now = Instant::now();
        let ejected: Vec<String> = self
            .outlier
            .as_ref()
            .map(|d| {
                d.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ejected(now)
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "cluster": self.key.to_string(),
            "lb": format!("{:?}", self.balancer.algorithm()),
            "requests_in_flight": self.breaker.active_requests(),
            "pending": self.breaker.pending(),
            "ejected": ejected,
        })
    }
}

/// A request in flight to one endpoint (LEAST_REQUEST counts these).
pub struct InFlight {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut active = self
            .cluster
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = active.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.addr);
            }
        }
    }
}

/// One client pod's clusters.
#[derive(Default)]
pub struct Clusters {
    map: Mutex<HashMap<ClusterKey, Arc<Cluster>>>,
}

impl Clusters {
    /// The cluster for `key` under `policy`: the existing one while its policy is unchanged.
    pub fn get(&self, key: ClusterKey, policy: TrafficPolicy) -> Arc<Cluster> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key)
            && c.policy == policy
        {
            return c.clone();
        }
        let c = Arc::new(Cluster::new(key.clone(), policy));
        map.insert(key, c.clone());
        c
    }

    pub fn dump(&self) -> Vec<serde_json::Value> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().map(|c| c.dump()).collect();
        v.sort_by_key(|c| c["cluster"].as_str().unwrap_or("").to_string());
        v
    }
}

#[cfg(test)]
mod tests {
    use mesh_common::proto::config::{ConnectionPool, PortTrafficPolicy};

    use super::*;

    #[test]
    fn port_level_replaces_and_subset_wins() {
        let top = TrafficPolicy {
            connection_pool: Some(ConnectionPool {
                max_connections: 7,
                ..Default::default()
            }),
            port_level: vec![PortTrafficPolicy {
                port: 9080,
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = DestinationPolicy {
            traffic_policy: Some(top),
            ..Default::default()
        };
        assert_eq!(
            effective_policy(Some(&p), None, 80)
                .connection_pool
                .map(|c| c.max_connections),
            Some(7)
        );
        // The port-level entry replaces every field (no inheritance).
        assert_eq!(effective_policy(Some(&p), None, 9080).connection_pool, None);
        let s = Subset {
            name: "v2".into(),
            traffic_policy: Some(TrafficPolicy::default()),
            ..Default::default()
        };
        assert_eq!(
            effective_policy(Some(&p), Some(&s), 80),
            TrafficPolicy::default()
        );
        assert_eq!(effective_policy(None, None, 80), TrafficPolicy::default());
    }
}
