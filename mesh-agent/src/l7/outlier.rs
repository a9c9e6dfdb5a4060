//! Outlier detection (Envoy's consecutive-5xx and consecutive-gateway-failure detectors with
//! Istio's settings): per endpoint of one cluster, eject after N consecutive errors for
//! `base_ejection_time × times ejected` (capped at `max_ejection_time`, 300 s as Istio sets it),
//! never beyond `max_ejection_percent` of the hosts (but the first host always can be), re-admit
//! at the sweep `interval`; below `min_health_percent` healthy hosts, ignore ejections (panic).
//! Pure: the caller passes `now` and wraps a [`Detector`] in a mutex.
//!
//! # Semantics (checked against Envoy's `outlier_detection_impl.cc`)
//! - **Counting** (no `split_external_local_origin_errors`, as Istio configures it; the caller
//!   maps connect failure / reset → 503 and timeout → 504): a status 500–599 increments the
//!   5xx counter; 502/503/504 also increment the gateway counter, any *other* 5xx resets the
//!   gateway counter; a status below 500 resets both.
//! - **Detection** fires when a counter *reaches* its threshold (`==`, Envoy); 0 = detector off.
//!   The gateway detector is evaluated first. After the attempt the fired counter is reset,
//!   whether or not the ejection was allowed, so an overflowed host needs a fresh run of errors.
//!   A host that is already ejected is not ejected again and its counters keep counting until
//!   re-admission resets them.
//! - **Ejection percentage**: Envoy up to 1.30 allowed an ejection while
//!   `ejected × 100 < max_ejection_percent × hosts`, so the first host could always be ejected
//!   (unless the percentage is 0) ("if no hosts have been ejected, Envoy will eject the host immediately").
//!   **Envoy ≥ 1.31 changed it** to `(ejected + 1) × 100 ≤ percent × hosts` plus an opt-in
//!   `always_eject_one_host` (default off, which Istio does not set): with Istio's 10% and fewer
//!   than 10 endpoints, a current Envoy ejects nothing. Weft uses that rule **with**
//!   `always_eject_one_host` (the first host can always be ejected, as every Envoy did before
//!   1.31 and as Istio's docs describe); [`Detector::strict_max_ejection_percent`]`(false)`
//!   selects the ≤ 1.30 rule.
//! - **Ejection time**: `min(base × m, max(base, max_ejection))`, where the multiplier `m`
//!   ([`Ejection::times`]) grows by one per ejection while `m × base < max + base` (Envoy's cap)
//!   and decays by one at every sweep for a host re-admitted at least one interval earlier and
//!   not ejected since.
//! - **Sweeps** run every `interval`, starting from the first `now` the detector sees ([`Detector::new`]
//!   has no clock). A host is re-admitted at the first sweep at or after its ejection expired,
//!   so re-admission lags the expiry by up to one interval (Envoy's behaviour); its counters
//!   restart at 0. Sweeps that fell due between calls are replayed in closed form at their own
//!   instants, so a detector that is rarely asked behaves as one driven by a timer.
//! - **Panic** ([`Detector::health`]): when `healthy × 100 < min_health_percent × hosts`, every
//!   host counts as healthy (Envoy's panic threshold; Istio's default 0 disables it).
//!
//! # Deviations
//! - No ejection-time jitter (Istio does not set `max_ejection_time_jitter`, default 0).
//! - The host count for the percentage is the `hosts` slice passed with the report; Envoy uses
//!   its host set, which is the same list.
//! - An `interval` below 1 ms is treated as 1 ms (Envoy requires a positive interval).
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_common::proto::config::OutlierDetection;

/// Istio's `max_ejection_time` (used when the config leaves it 0).
pub const ISTIO_MAX_EJECTION: Duration = Duration::from_secs(300);

const MIN_INTERVAL: Duration = Duration::from_millis(1);

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
        OutlierConfig {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: Duration::from_millis(o.interval_ms),
            base_ejection: Duration::from_millis(o.base_ejection_time_ms),
            max_ejection: match o.max_ejection_time_ms {
                0 => ISTIO_MAX_EJECTION,
                ms => Duration::from_millis(ms),
            },
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }
    }
}

/// An ejection that just happened (the caller logs it and counts it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub host: SocketAddr,
    /// `consecutive_5xx` or `consecutive_gateway_failure`.
    pub reason: &'static str,
    /// The ejection multiplier after this ejection (1 for a first ejection; decays while the
    /// host stays healthy).
    pub times: u32,
    pub duration: Duration,
}

/// Per-host state.
#[derive(Clone, Debug, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// `(ejected at, for)`.
    ejected: Option<(Instant, Duration)>,
    /// The ejection multiplier (Envoy's `ejectTimeBackoff`).
    times: u32,
    /// The sweep that last re-admitted the host.
    last_uneject: Option<Instant>,
}

/// The detector state of one cluster.
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierConfig,
    hosts: HashMap<SocketAddr, HostState>,
    /// The next sweep; `None` until the first `now` is seen.
    next_sweep: Option<Instant>,
    /// Envoy ≥ 1.31's `(ejected + 1) / hosts ≤ percent` rule.
    strict_percent: bool,
}

impl Detector {
    pub fn new(cfg: OutlierConfig) -> Detector {
        Detector {
            cfg,
            hosts: HashMap::new(),
            next_sweep: None,
            strict_percent: true,
        }
    }

    /// `true` (the default): Envoy ≥ 1.31's ejection-percentage rule with
    /// `always_eject_one_host` — the first host always, then only while
    /// `(ejected + 1) × 100 ≤ max_ejection_percent × hosts`. `false`: Envoy ≤ 1.30's
    /// `ejected × 100 < max_ejection_percent × hosts` (see the module documentation).
    pub fn strict_max_ejection_percent(mut self, strict: bool) -> Detector {
        self.strict_percent = strict;
        self
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
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
        self.sweep(now);
        let (c5xx, cgw) = (self.cfg.consecutive_5xx, self.cfg.consecutive_gateway);
        let st = self.hosts.entry(host).or_default();
        let (mut fire_gateway, mut fire_5xx) = (false, false);
        if (500..=599).contains(&status) {
            if matches!(status, 502..=504) {
                st.consecutive_gateway = st.consecutive_gateway.saturating_add(1);
                fire_gateway = cgw != 0 && st.consecutive_gateway == cgw;
            } else {
                st.consecutive_gateway = 0;
            }
            st.consecutive_5xx = st.consecutive_5xx.saturating_add(1);
            fire_5xx = c5xx != 0 && st.consecutive_5xx == c5xx;
        } else {
            st.consecutive_5xx = 0;
            st.consecutive_gateway = 0;
        }

        let mut ejection = None;
        for (fired, reason) in [
            (fire_gateway, "consecutive_gateway_failure"),
            (fire_5xx, "consecutive_5xx"),
        ] {
            if !fired || self.is_ejected(&host) {
                // Envoy ignores detections for an ejected host (counters untouched).
                continue;
            }
            let allowed = self.may_eject(hosts);
            let (base, max) = self.ejection_bounds();
            let Some(st) = self.hosts.get_mut(&host) else {
                continue;
            };
            if allowed {
                if u128::from(st.times) * base.as_nanos() < max.as_nanos() + base.as_nanos() {
                    st.times = st.times.saturating_add(1);
                }
                let duration = base.checked_mul(st.times).unwrap_or(Duration::MAX).min(max);
                st.ejected = Some((now, duration));
                ejection = Some(Ejection {
                    host,
                    reason,
                    times: st.times,
                    duration,
                });
            }
            match reason {
                "consecutive_gateway_failure" => st.consecutive_gateway = 0,
                _ => st.consecutive_5xx = 0,
            }
        }
        ejection
    }

    /// Health of each of `hosts` (same order) at `now`: runs any interval sweep that is due
    /// (re-admitting hosts whose ejection expired, decaying the ejection multiplier of hosts
    /// healthy for a whole interval), forgets hosts no longer listed, and applies
    /// min_health_percent (below it every host counts as healthy).
    pub fn health(&mut self, hosts: &[SocketAddr], now: Instant) -> Vec<bool> {
        self.sweep(now);
        let listed: HashSet<&SocketAddr> = hosts.iter().collect();
        self.hosts.retain(|addr, _| listed.contains(addr));
        let mut out: Vec<bool> = hosts.iter().map(|h| !self.is_ejected(h)).collect();
        let healthy = out.iter().filter(|h| **h).count() as u64;
        let min = u64::from(self.cfg.min_health_percent);
        if min > 0 && healthy * 100 < min * hosts.len() as u64 {
            out.iter_mut().for_each(|h| *h = true);
        }
        out
    }

    /// Hosts ejected at `now` (admin output), sorted; accounts for sweeps due by `now` without
    /// running them.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let due = self.due_sweeps(now);
        let mut out: Vec<SocketAddr> = self
            .hosts
            .iter()
            .filter(|(_, st)| match (st.ejected, due) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some((at, dur)), Some((first, last))) => {
                    readmission_sweep(first, self.interval(), at, dur).is_none_or(|u| u > last)
                }
            })
            .map(|(addr, _)| *addr)
            .collect();
        out.sort();
        out
    }

    fn is_ejected(&self, host: &SocketAddr) -> bool {
        self.hosts.get(host).is_some_and(|st| st.ejected.is_some())
    }

    fn interval(&self) -> Duration {
        self.cfg.interval.max(MIN_INTERVAL)
    }

    /// `(base, max)` of the ejection time, `max ≥ base`.
    fn ejection_bounds(&self) -> (Duration, Duration) {
        let base = self.cfg.base_ejection;
        (base, self.cfg.max_ejection.max(base))
    }

    /// May one more of `hosts` be ejected?
    fn may_eject(&self, hosts: &[SocketAddr]) -> bool {
        let n = hosts.len().max(1) as u64;
        let ejected = hosts
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|h| self.is_ejected(h))
            .count() as u64;
        let percent = u64::from(self.cfg.max_ejection_percent.min(100));
        if self.strict_percent {
            // The first host can always go (Envoy's `always_eject_one_host`, and what Envoy did
            // before 1.31): otherwise Istio's 10% default would never eject in a small service.
            (ejected == 0 && percent > 0) || (ejected + 1) * 100 <= percent * n
        } else {
            ejected * 100 < percent * n
        }
    }

    /// The sweeps due by `now`: `(first, last)` instants, `None` when none is.
    fn due_sweeps(&self, now: Instant) -> Option<(Instant, Instant)> {
        let first = self.next_sweep?;
        if now < first {
            return None;
        }
        let iv = self.interval().as_nanos();
        let k = (now - first).as_nanos() / iv;
        Some((first, add_nanos(first, k * iv)?))
    }

    /// Runs the sweeps due by `now` (in closed form, each at its own instant).
    fn sweep(&mut self, now: Instant) {
        let iv = self.interval();
        if self.next_sweep.is_none() {
            // The first `now` starts the sweep clock.
            self.next_sweep = now.checked_add(iv);
            return;
        }
        let Some((first, last)) = self.due_sweeps(now) else {
            return;
        };
        let ivn = iv.as_nanos();
        for st in self.hosts.values_mut() {
            if let Some((at, dur)) = st.ejected {
                match readmission_sweep(first, iv, at, dur) {
                    Some(u) if u <= last => {
                        st.ejected = None;
                        st.consecutive_5xx = 0;
                        st.consecutive_gateway = 0;
                        st.last_uneject = Some(u);
                        // Decay at the later sweeps of this batch (a whole interval healthy).
                        st.times = st.times.saturating_sub(count((last - u).as_nanos() / ivn));
                    }
                    _ => {}
                }
            } else if let Some(l) = st.last_uneject {
                // Sweeps at least one interval after the re-admission decay the multiplier.
                if let Some(start) = l
                    .checked_add(iv)
                    .and_then(|t| sweep_at_or_after(first, iv, t))
                    && start <= last
                {
                    st.times = st
                        .times
                        .saturating_sub(count((last - start).as_nanos() / ivn + 1));
                }
            }
        }
        self.next_sweep = last.checked_add(iv);
    }
}

/// The first sweep (`first + j·iv`, j ≥ 0) at or after the expiry of an ejection at `at` for
/// `dur`; `None` if unrepresentable (never).
fn readmission_sweep(first: Instant, iv: Duration, at: Instant, dur: Duration) -> Option<Instant> {
    sweep_at_or_after(first, iv, at.checked_add(dur)?)
}

/// The first sweep (`first + j·iv`, j ≥ 0) at or after `t`.
fn sweep_at_or_after(first: Instant, iv: Duration, t: Instant) -> Option<Instant> {
    if t <= first {
        return Some(first);
    }
    let iv = iv.as_nanos();
    let k = (t - first).as_nanos().div_ceil(iv);
    add_nanos(first, k * iv)
}

fn add_nanos(t: Instant, n: u128) -> Option<Instant> {
    let secs = u64::try_from(n / 1_000_000_000).ok()?;
    let sub = u32::try_from(n % 1_000_000_000).ok()?;
    t.checked_add(Duration::new(secs, sub))
}

fn count(n: u128) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 8080)
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n).map(addr).collect()
    }

    /// Istio's defaults with both detectors set.
    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: ISTIO_MAX_EJECTION,
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Reports `statuses` for `host`, all at `now`; returns the index and ejection of each
    /// report that ejected.
    fn run(
        d: &mut Detector,
        host: SocketAddr,
        statuses: &[u16],
        hosts: &[SocketAddr],
        now: Instant,
    ) -> Vec<(usize, Ejection)> {
        statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| d.report(host, *s, hosts, now).map(|e| (i, e)))
            .collect()
    }

    #[test]
    fn from_proto() {
        let o = OutlierDetection {
            consecutive_5xx_errors: 7,
            consecutive_gateway_errors: 3,
            interval_ms: 5_000,
            base_ejection_time_ms: 15_000,
            max_ejection_percent: 20,
            min_health_percent: 50,
            max_ejection_time_ms: 0,
        };
        let want = OutlierConfig {
            consecutive_5xx: 7,
            consecutive_gateway: 3,
            interval: secs(5),
            base_ejection: secs(15),
            max_ejection: secs(300),
            max_ejection_percent: 20,
            min_health_percent: 50,
        };
        assert_eq!(OutlierConfig::from(&o), want, "0: Istio's 300 s");
        let o = OutlierDetection {
            max_ejection_time_ms: 60_000,
            ..o
        };
        assert_eq!(
            OutlierConfig::from(&o),
            OutlierConfig {
                max_ejection: secs(60),
                ..want
            }
        );
    }

    /// `(consecutive_5xx, consecutive_gateway, statuses, expected (index, reason) ejections)`.
    type CountingCase<'a> = (u32, u32, &'a [u16], &'a [(usize, &'a str)]);

    #[test]
    fn counting_table() {
        let cases: &[CountingCase] = &[
            // Five 5xx of any kind eject at the fifth.
            (5, 0, &[500, 503, 502, 501, 599], &[(4, "consecutive_5xx")]),
            (5, 0, &[500, 500, 500, 500], &[]),
            // A success resets the run.
            (5, 0, &[500, 500, 500, 500, 200, 500, 500, 500, 500], &[]),
            (
                5,
                0,
                &[500, 500, 500, 500, 200, 500, 500, 500, 500, 500],
                &[(9, "consecutive_5xx")],
            ),
            // 4xx reset too (only ≥ 500 counts).
            (3, 0, &[500, 500, 404, 500, 500], &[]),
            // 600+ is not 5xx (Envoy is5xx: 500–599).
            (2, 0, &[500, 600, 500], &[]),
            // Gateway errors: 502/503/504 only.
            (
                0,
                3,
                &[502, 503, 504],
                &[(2, "consecutive_gateway_failure")],
            ),
            // A non-gateway 5xx resets the gateway counter…
            (0, 3, &[502, 503, 500, 504, 502], &[]),
            (
                0,
                3,
                &[502, 503, 500, 504, 502, 503],
                &[(5, "consecutive_gateway_failure")],
            ),
            // …but counts for the 5xx detector.
            (5, 3, &[502, 502, 500, 502, 502], &[(4, "consecutive_5xx")]),
            // Gateway detector first when both fire on the same response.
            (
                3,
                3,
                &[503, 503, 503],
                &[(2, "consecutive_gateway_failure")],
            ),
            // Both off: never.
            (0, 0, &[500; 20], &[]),
            // Threshold 1.
            (1, 0, &[200, 500], &[(1, "consecutive_5xx")]),
        ];
        let hosts = addrs(2);
        for (c5, cg, statuses, want) in cases {
            let mut d = Detector::new(OutlierConfig {
                consecutive_5xx: *c5,
                consecutive_gateway: *cg,
                ..cfg()
            });
            let got: Vec<(usize, &str)> = run(&mut d, addr(1), statuses, &hosts, Instant::now())
                .into_iter()
                .map(|(i, e)| (i, e.reason))
                .collect();
            assert_eq!(&got, want, "5xx {c5} gw {cg} statuses {statuses:?}");
        }
    }

    #[test]
    fn first_ejection() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(3);
        let e = run(&mut d, addr(2), &[500; 5], &hosts, t0);
        assert_eq!(
            e,
            vec![(
                4,
                Ejection {
                    host: addr(2),
                    reason: "consecutive_5xx",
                    times: 1,
                    duration: secs(30),
                }
            )]
        );
        assert_eq!(d.health(&hosts, t0), vec![true, false, true]);
        assert_eq!(d.ejected(t0), vec![addr(2)]);
        // More errors while ejected (requests in flight) do not eject again.
        assert!(run(&mut d, addr(2), &[500; 10], &hosts, t0).is_empty());
    }

    #[test]
    fn max_ejection_percent_table() {
        // (percent, hosts, strict, how many of the hosts get ejected when all fail)
        let cases: &[(u32, u8, bool, usize)] = &[
            // Envoy ≤ 1.30: the first always; then while below the percentage.
            (10, 3, false, 1),
            (10, 10, false, 1),
            (10, 11, false, 2),
            (50, 4, false, 2),
            (50, 3, false, 2),
            (34, 3, false, 2),
            (33, 3, false, 1),
            (100, 3, false, 3),
            (0, 3, false, 0),
            (250, 2, false, 2),
            // Weft's default: Envoy ≥ 1.31's rule with always_eject_one_host.
            (10, 3, true, 1),
            (10, 9, true, 1),
            (10, 10, true, 1),
            (20, 10, true, 2),
            (50, 4, true, 2),
            (50, 3, true, 1),
            (34, 3, true, 1),
            (67, 3, true, 2),
            (100, 3, true, 3),
            (0, 3, true, 0),
        ];
        for (percent, n, strict, want) in cases {
            let mut d = Detector::new(OutlierConfig {
                max_ejection_percent: *percent,
                ..cfg()
            })
            .strict_max_ejection_percent(*strict);
            let hosts = addrs(*n);
            let t0 = Instant::now();
            let mut ejected = 0;
            for h in &hosts {
                ejected += run(&mut d, *h, &[503; 5], &hosts, t0).len();
            }
            assert_eq!(
                ejected, *want,
                "percent {percent} hosts {n} strict {strict}"
            );
            assert_eq!(d.ejected(t0).len(), *want);
            assert_eq!(d.health(&hosts, t0).iter().filter(|h| !**h).count(), *want);
        }
    }

    #[test]
    fn overflowed_detection_resets_the_counter() {
        let t0 = Instant::now();
        let mut d = Detector::new(OutlierConfig {
            max_ejection_percent: 10,
            ..cfg()
        });
        let hosts = addrs(3);
        assert_eq!(run(&mut d, addr(1), &[500; 5], &hosts, t0).len(), 1);
        // Host 2 reaches 5 but may not be ejected; its counter restarts.
        assert!(run(&mut d, addr(2), &[500; 5], &hosts, t0).is_empty());
        // Host 1 re-admitted at the sweep at t0+30 s (expiry exactly on a sweep).
        assert_eq!(d.health(&hosts, t0 + secs(30)), vec![true; 3]);
        // Host 2 needs a full new run of five.
        let t = t0 + secs(31);
        assert!(run(&mut d, addr(2), &[500; 4], &hosts, t).is_empty());
        assert_eq!(run(&mut d, addr(2), &[500], &hosts, t).len(), 1);
    }

    #[test]
    fn readmission_at_sweeps() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(2);
        // The clock starts at t0 (sweeps at t0+10, +20, …).
        assert_eq!(d.health(&hosts, t0), vec![true, true]);
        // Ejected at t0+5 for 30 s: expires at t0+35, re-admitted at the t0+40 sweep.
        let e = run(&mut d, addr(1), &[500; 5], &hosts, t0 + secs(5));
        assert_eq!(e.len(), 1);
        // (instant, host 1 healthy)
        let cases: &[(Duration, bool)] = &[
            (secs(5), false),
            (secs(20), false),
            (secs(34), false),
            (secs(35), false),
            (Duration::from_millis(39_999), false),
            (secs(40), true),
            (secs(41), true),
        ];
        for (at, healthy) in cases {
            // `ejected` answers without running the sweeps…
            assert_eq!(
                d.ejected(t0 + *at).is_empty(),
                *healthy,
                "ejected() at {at:?}"
            );
        }
        for (at, healthy) in cases {
            // …`health` runs them.
            assert_eq!(
                d.health(&hosts, t0 + *at),
                vec![*healthy, true],
                "health() at {at:?}"
            );
        }
    }

    #[test]
    fn readmitted_counters_start_at_zero() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(2);
        d.health(&hosts, t0);
        assert_eq!(run(&mut d, addr(1), &[500; 5], &hosts, t0).len(), 1);
        // Four more failures while ejected.
        assert!(run(&mut d, addr(1), &[500; 4], &hosts, t0).is_empty());
        // Re-admitted at t0+30: the counter restarts, one failure does not eject.
        let t = t0 + secs(30);
        assert!(run(&mut d, addr(1), &[500], &hosts, t).is_empty());
        assert!(run(&mut d, addr(1), &[500; 3], &hosts, t).is_empty());
        assert_eq!(run(&mut d, addr(1), &[500], &hosts, t).len(), 1);
    }

    #[test]
    fn ejection_time_grows_and_caps() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(2);
        d.health(&hosts, t0);
        let mut now = t0;
        let mut got = Vec::new();
        for _ in 0..13 {
            let e = run(&mut d, addr(1), &[500; 5], &hosts, now);
            let (_, e) = e.into_iter().next().expect("ejected");
            got.push((e.times, e.duration.as_secs()));
            // Re-eject right after the re-admitting sweep (no decay in between).
            now += e.duration;
            assert_eq!(d.health(&hosts, now), vec![true, true]);
        }
        assert_eq!(
            got,
            vec![
                (1, 30),
                (2, 60),
                (3, 90),
                (4, 120),
                (5, 150),
                (6, 180),
                (7, 210),
                (8, 240),
                (9, 270),
                (10, 300),
                (11, 300),
                (11, 300),
                (11, 300),
            ]
        );
    }

    #[test]
    fn multiplier_decays_while_healthy() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(2);
        d.health(&hosts, t0);
        // times 1, re-admitted at t0+30; times 2 at t0+31 (60 s → expires t0+91, re-admitted
        // at the t0+100 sweep).
        assert_eq!(run(&mut d, addr(1), &[500; 5], &hosts, t0)[0].1.times, 1);
        assert_eq!(d.health(&hosts, t0 + secs(30)), vec![true, true]);
        let e = run(&mut d, addr(1), &[500; 5], &hosts, t0 + secs(31));
        assert_eq!((e[0].1.times, e[0].1.duration), (2, secs(60)));
        assert_eq!(d.health(&hosts, t0 + secs(99)), vec![false, true]);
        assert_eq!(d.health(&hosts, t0 + secs(100)), vec![true, true]);
        // The t0+110 sweep decays it to 1: the next ejection lasts 2 × 30 s.
        assert_eq!(d.health(&hosts, t0 + secs(110)), vec![true, true]);
        let e = run(&mut d, addr(1), &[500; 5], &hosts, t0 + secs(111));
        assert_eq!((e[0].1.times, e[0].1.duration), (2, secs(60)));
    }

    #[test]
    fn decay_to_zero_then_base_again() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(2);
        d.health(&hosts, t0);
        run(&mut d, addr(1), &[500; 5], &hosts, t0);
        d.health(&hosts, t0 + secs(30));
        let e = run(&mut d, addr(1), &[500; 5], &hosts, t0 + secs(30));
        assert_eq!(e[0].1.times, 2);
        // Re-admitted at t0+90, decayed at t0+100 and t0+110.
        d.health(&hosts, t0 + secs(90));
        d.health(&hosts, t0 + secs(110));
        let e = run(&mut d, addr(1), &[500; 5], &hosts, t0 + secs(111));
        assert_eq!((e[0].1.times, e[0].1.duration), (1, secs(30)));
    }

    #[test]
    fn sweeps_replayed_when_called_late() {
        let t0 = Instant::now();
        let run_to = |late: bool| {
            let mut d = Detector::new(cfg());
            let hosts = addrs(2);
            d.health(&hosts, t0);
            // Build up the multiplier to 3.
            let mut now = t0;
            for _ in 0..3 {
                let e = run(&mut d, addr(1), &[500; 5], &hosts, now);
                now += e[0].1.duration;
                d.health(&hosts, now);
            }
            // Ejected at now (t0+180) with times 4 → 120 s, re-admitted at t0+300; decays at
            // t0+310 … t0+340 (4 sweeps) → 0.
            let e = run(&mut d, addr(1), &[500; 5], &hosts, now);
            assert_eq!(e[0].1.times, 4);
            let end = t0 + secs(345);
            if late {
                assert_eq!(d.health(&hosts, end), vec![true, true]);
            } else {
                let mut t = now;
                while t < end {
                    t += secs(1);
                    d.health(&hosts, t);
                }
            }
            run(&mut d, addr(1), &[500; 5], &hosts, end)[0].1.clone()
        };
        let stepped = run_to(false);
        let late = run_to(true);
        assert_eq!(stepped, late);
        assert_eq!((late.times, late.duration), (1, secs(30)));
    }

    #[test]
    fn min_health_percent_table() {
        // (min_health_percent, hosts, ejected, expect panic → all healthy)
        let cases: &[(u32, u8, u8, bool)] = &[
            (0, 3, 2, false),
            (0, 3, 3, false),
            (50, 3, 1, false),
            (50, 3, 2, true),
            (50, 4, 2, false),
            (50, 4, 3, true),
            (100, 4, 1, true),
            (1, 2, 2, true),
        ];
        for (min, n, ejected, panic) in cases {
            let mut d = Detector::new(OutlierConfig {
                min_health_percent: *min,
                ..cfg()
            });
            let hosts = addrs(*n);
            let t0 = Instant::now();
            for h in hosts.iter().take(usize::from(*ejected)) {
                assert_eq!(run(&mut d, *h, &[500; 5], &hosts, t0).len(), 1);
            }
            let health = d.health(&hosts, t0);
            if *panic {
                assert_eq!(
                    health,
                    vec![true; usize::from(*n)],
                    "min {min} n {n} ej {ejected}"
                );
            } else {
                let want: Vec<bool> = (0..*n).map(|i| i >= *ejected).collect();
                assert_eq!(health, want, "min {min} n {n} ej {ejected}");
            }
            // Panic does not re-admit: the state is unchanged.
            assert_eq!(d.ejected(t0).len(), usize::from(*ejected));
        }
    }

    #[test]
    fn forgets_unlisted_hosts() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        let hosts = addrs(3);
        run(&mut d, addr(3), &[500; 5], &hosts, t0);
        run(&mut d, addr(2), &[500; 4], &hosts, t0);
        assert_eq!(d.ejected(t0), vec![addr(3)]);
        // Host 3 leaves the endpoint set; host 2 stays with its counter.
        assert_eq!(d.health(&addrs(2), t0), vec![true, true]);
        assert!(d.ejected(t0).is_empty());
        // Host 3 comes back fresh.
        assert_eq!(d.health(&hosts, t0), vec![true, true, true]);
        assert!(run(&mut d, addr(3), &[500; 4], &hosts, t0).is_empty());
        assert_eq!(run(&mut d, addr(2), &[500], &hosts, t0).len(), 1);
    }

    #[test]
    fn tiny_and_zero_intervals() {
        let t0 = Instant::now();
        let mut d = Detector::new(OutlierConfig {
            interval: Duration::ZERO,
            base_ejection: Duration::ZERO,
            ..cfg()
        });
        let hosts = addrs(1);
        d.health(&hosts, t0);
        assert_eq!(run(&mut d, addr(1), &[500; 5], &hosts, t0).len(), 1);
        assert_eq!(d.health(&hosts, t0), vec![false]);
        // Zero-length ejection, 1 ms sweeps.
        assert_eq!(d.health(&hosts, t0 + Duration::from_millis(1)), vec![true]);
    }

    #[test]
    fn detector_is_send() {
        fn check<T: Send + Sync>() {}
        check::<Detector>();
    }
}
