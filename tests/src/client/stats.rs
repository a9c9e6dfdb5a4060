//! Result accounting for mesh-client: pure data, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a request failed without producing a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
        }
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A response arrived (whatever its status).
    Done {
        status: String,
        latency: Duration,
        version: Option<String>,
        pod: Option<String>,
        /// The reply's `upstream.body.version` / `upstream.body.pod` (a mesh-echo with
        /// `--upstream` reports the backend that answered it).
        upstream_version: Option<String>,
        upstream_pod: Option<String>,
        /// The `--count-header` headers the response carried: (lower-case name, value; several
        /// values of one header joined with ", ").
        headers: Vec<(String, String)>,
    },
    /// No response.
    Failed(ErrorKind),
}

/// Accumulated results (one per worker, merged at the end).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub total: u64,
    pub status: BTreeMap<String, u64>,
    pub versions: BTreeMap<String, u64>,
    pub pods: BTreeMap<String, u64>,
    pub upstream_versions: BTreeMap<String, u64>,
    pub upstream_pods: BTreeMap<String, u64>,
    /// `--count-header` name -> value -> count.
    pub headers: BTreeMap<String, BTreeMap<String, u64>>,
    pub errors: BTreeMap<String, u64>,
    /// Latencies of completed requests, in milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl Stats {
    pub fn record(&mut self, outcome: Outcome) {
        self.total += 1;
        match outcome {
            Outcome::Done {
                status,
                latency,
                version,
                pod,
                upstream_version,
                upstream_pod,
                headers,
            } => {
                *self.status.entry(status).or_default() += 1;
                for (name, value) in headers {
                    *self
                        .headers
                        .entry(name)
                        .or_default()
                        .entry(value)
                        .or_default() += 1;
                }
                for (map, key) in [
                    (&mut self.versions, version),
                    (&mut self.pods, pod),
                    (&mut self.upstream_versions, upstream_version),
                    (&mut self.upstream_pods, upstream_pod),
                ] {
                    if let Some(k) = key {
                        *map.entry(k).or_default() += 1;
                    }
                }
                self.latencies_ms.push(latency.as_secs_f64() * 1000.0);
            }
            Outcome::Failed(kind) => {
                *self.errors.entry(kind.as_str().to_owned()).or_default() += 1;
            }
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.total += other.total;
        for (dst, src) in [
            (&mut self.status, other.status),
            (&mut self.versions, other.versions),
            (&mut self.pods, other.pods),
            (&mut self.upstream_versions, other.upstream_versions),
            (&mut self.upstream_pods, other.upstream_pods),
            (&mut self.errors, other.errors),
        ] {
            for (k, v) in src {
                *dst.entry(k).or_default() += v;
            }
        }
        for (name, values) in other.headers {
            let dst = self.headers.entry(name).or_default();
            for (k, v) in values {
                *dst.entry(k).or_default() += v;
            }
        }
        self.latencies_ms.extend(other.latencies_ms);
    }

    /// The final summary over a run that took `elapsed`.
    pub fn summary(mut self, elapsed: Duration) -> Summary {
        self.latencies_ms.sort_by(f64::total_cmp);
        let l = &self.latencies_ms;
        let secs = elapsed.as_secs_f64();
        Summary {
            total: self.total,
            status: self.status,
            versions: self.versions,
            pods: self.pods,
            upstream_versions: self.upstream_versions,
            upstream_pods: self.upstream_pods,
            headers: self.headers,
            latency_ms: Latency {
                min: l.first().copied().unwrap_or(0.0),
                p50: percentile(l, 50.0),
                p90: percentile(l, 90.0),
                p99: percentile(l, 99.0),
                max: l.last().copied().unwrap_or(0.0),
            },
            errors: self.errors,
            duration_ms: secs * 1000.0,
            rps: if secs > 0.0 {
                self.total as f64 / secs
            } else {
                0.0
            },
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// What `--json` prints (exactly these keys).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub total: u64,
    pub status: BTreeMap<String, u64>,
    pub versions: BTreeMap<String, u64>,
    pub pods: BTreeMap<String, u64>,
    /// `upstream.body.version` -> count (empty without an upstream).
    pub upstream_versions: BTreeMap<String, u64>,
    /// `upstream.body.pod` -> count (empty without an upstream).
    pub upstream_pods: BTreeMap<String, u64>,
    /// `--count-header` name -> value -> number of responses carrying it (every requested name
    /// is present; responses without the header are not counted).
    pub headers: BTreeMap<String, BTreeMap<String, u64>>,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, u64>,
    pub duration_ms: f64,
    pub rps: f64,
}

impl Summary {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "requests  {:>10}   duration {:>10.1} ms   rate {:>10.1} req/s",
            self.total, self.duration_ms, self.rps
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency   min {:.3} ms   p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
            l.min, l.p50, l.p90, l.p99, l.max
        );
        for (title, map) in [
            ("status", &self.status),
            ("versions", &self.versions),
            ("pods", &self.pods),
            ("upstream versions", &self.upstream_versions),
            ("upstream pods", &self.upstream_pods),
            ("errors", &self.errors),
        ] {
            if map.is_empty() {
                continue;
            }
            let _ = writeln!(s, "{title}:");
            for (k, v) in map {
                let pct = 100.0 * *v as f64 / self.total.max(1) as f64;
                let _ = writeln!(s, "  {k:<30} {v:>10}  {pct:>6.2}%");
            }
        }
        for (name, values) in &self.headers {
            let _ = writeln!(s, "header {name}:");
            for (k, v) in values {
                let pct = 100.0 * *v as f64 / self.total.max(1) as f64;
                let _ = writeln!(s, "  {k:<30} {v:>10}  {pct:>6.2}%");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn record_and_merge() {
        let mut a = Stats::default();
        a.record(Outcome::Done {
            status: "200".into(),
            latency: Duration::from_millis(2),
            version: Some("v1".into()),
            pod: Some("p".into()),
            upstream_version: Some("v2".into()),
            upstream_pod: Some("b".into()),
            headers: vec![("x-envoy-overloaded".into(), "true".into())],
        });
        a.record(Outcome::Failed(ErrorKind::Connect));
        let mut b = Stats::default();
        b.record(Outcome::Done {
            status: "503".into(),
            latency: Duration::from_millis(4),
            version: None,
            pod: None,
            upstream_version: None,
            upstream_pod: None,
            headers: vec![
                ("x-envoy-overloaded".into(), "true".into()),
                ("x-echo-version".into(), "v1".into()),
            ],
        });
        b.record(Outcome::Done {
            status: "200".into(),
            latency: Duration::from_millis(3),
            version: None,
            pod: None,
            upstream_version: None,
            upstream_pod: None,
            headers: vec![],
        });
        a.merge(b);
        let s = a.summary(Duration::from_secs(1));
        assert_eq!(s.total, 4);
        assert_eq!(s.status["200"], 2);
        assert_eq!(s.status["503"], 1);
        assert_eq!(s.versions["v1"], 1);
        assert_eq!(s.upstream_versions["v2"], 1);
        assert_eq!(s.upstream_pods["b"], 1);
        assert_eq!(s.errors["connect"], 1);
        assert_eq!(s.headers["x-envoy-overloaded"]["true"], 2);
        assert_eq!(s.headers["x-echo-version"]["v1"], 1);
        assert_eq!(s.headers.len(), 2, "absent headers are not counted");
        assert_eq!(s.latency_ms.min, 2.0);
        assert_eq!(s.latency_ms.max, 4.0);
        assert_eq!(s.rps, 4.0);
        let j = serde_json::to_value(&s).unwrap();
        let mut keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "duration_ms",
                "errors",
                "headers",
                "latency_ms",
                "pods",
                "rps",
                "status",
                "total",
                "upstream_pods",
                "upstream_versions",
                "versions"
            ]
        );
    }
}
