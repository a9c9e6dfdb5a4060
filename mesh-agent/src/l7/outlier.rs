//! Outlier detection (Envoy's consecutive-5xx and consecutive-gateway-failure detectors with
//! Istio's settings): per endpoint of one cluster, eject after N consecutive errors for
//! `base_ejection_time × times ejected` (capped at `max_ejection_time`, 300 s as Istio sets it),
//! never beyond `max_ejection_percent` of the hosts (but the first host always can be), re-admit
//! at the sweep `interval`; below `min_health_percent` healthy hosts, ignore ejections (panic).
//! Pure: the caller passes `now` and wraps a [`Detector`] in a mutex.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_common::proto::config::OutlierDetection;

/// Resolved settings (from the IR, Istio defaults already filled in by the controller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 0 = this detector is off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl From<&OutlierDetection> for OutlierConfig {
    fn from(o: &OutlierDetection) -> Self {
        let _ = o;
        todo!()
    }
}

/// An ejection that just happened (the caller logs it and counts it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub host: SocketAddr,
    /// `consecutive_5xx` or `consecutive_gateway_failure`.
    pub reason: &'static str,
    pub times: u32,
    pub duration: Duration,
}

/// The detector state of one cluster.
#[derive(Debug)]
pub struct Detector {
    _todo: (),
}

impl Detector {
    pub fn new(cfg: OutlierConfig) -> Detector {
        let _ = cfg;
        todo!()
    }

    pub fn config(&self) -> &OutlierConfig {
        todo!()
    }

    /// Records the result of one request to `host`: the HTTP status the caller returned or got;
    /// local-origin failures are passed mapped as Envoy does without split_external_local_origin_errors
    /// (connect failure / reset → 503, timeout → 504). `hosts`: the cluster's current endpoints
    /// (for max_ejection_percent). Returns the ejection this result caused, if any.
    pub fn report(
        &mut self,
        host: SocketAddr,
        status: u16,
        hosts: &[SocketAddr],
        now: Instant,
    ) -> Option<Ejection> {
        let _ = (host, status, hosts, now);
        todo!()
    }

    /// Health of each of `hosts` (same order) at `now`: runs any interval sweep that is due
    /// (re-admitting hosts whose ejection expired, decaying the ejection multiplier of hosts
    /// healthy for a whole interval), forgets hosts no longer listed, and applies
    /// min_health_percent (below it every host counts as healthy).
    pub fn health(&mut self, hosts: &[SocketAddr], now: Instant) -> Vec<bool> {
        let _ = (hosts, now);
        todo!()
    }

    /// Hosts ejected at `now` (admin output).
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let _ = now;
        todo!()
    }
}
