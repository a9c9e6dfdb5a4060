//! L7 traffic-management end-to-end tests (root) in the lab, one per acceptance bullet of the L7
//! issue: Istio VirtualService / DestinationRule and Gateway API HTTPRoute / GRPCRoute applied
//! exactly as a user would `kubectl apply` them, traffic from meshed clients (mesh-client) to
//! mesh-echo backends through the node proxies, telemetry scraped from the agents on :15020.
//! Fixture: `fixtures/l7.yaml` (namespace `l7`).
//!
//! Statistical checks state their tolerance where they make them. Policies propagate
//! asynchronously: every VirtualService carries a first route `probe` (header
//! `x-weft-probe: <generation>` → fault abort 418) so a test knows when *that* generation is
//! active; DestinationRule-only changes are polled for by their effect. Every wait is bounded.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const NS: &str = "l7";
const NODES: [&str; 2] = ["node-a", "node-b"];
const NODE_A_PODS: [&str; 7] = [
    "client-a",
    "backend-v1-a",
    "backend-v2-a",
    "flaky-good-1",
    "flaky-bad-2",
    "halfbad-1",
    "lb-fast-1",
];
const NODE_B_PODS: [&str; 8] = [
    "client-b",
    "backend-v1-b",
    "backend-v2-b",
    "flaky-good-2",
    "flaky-bad-1",
    "halfbad-2",
    "lb-fast-2",
    "lb-slow",
];
const BACKEND: &str = "http://backend:8080";

// ---------------------------------------------------------------------------------------------
// Lab, load and metrics helpers

/// A lab with `fixtures/l7.yaml` applied, every pod enrolled and serving, and both clients'
/// node proxies handling `backend` at L7.
fn l7_lab() -> LabGuard {
    let lab = LabGuard::up();
    ok(&["lab", "apply", "-f", &fixture("l7.yaml")]);
    wait_enrolled("node-a", &NODE_A_PODS);
    wait_enrolled("node-b", &NODE_B_PODS);
    for pod in NODE_A_PODS.iter().chain(&NODE_B_PODS) {
        if pod.starts_with("client") {
            continue;
        }
        let url = format!("http://{}:8080/healthz", pod_ip(NS, pod));
        eventually(&format!("{pod} serving"), Duration::from_secs(15), || {
            let (ok, out) = try_exec_ns(NS, "client-a", &["curl", "-sf", "--max-time", "2", &url]);
            if ok { Ok(()) } else { Err(out) }
        });
    }
    for client in ["client-a", "client-b"] {
        wait_l7(client, &format!("{BACKEND}/"));
    }
    lab
}

/// Polls `f` (every 200 ms, at most `within`) until it returns `Ok`; panics with the last error.
fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(t) => return t,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One mesh-client run in a pod of `l7` (no retries: the measurement is what it is).
fn load(pod: &str, args: &[&str]) -> Value {
    let mut cmd = vec!["mesh-client", "--json"];
    cmd.extend_from_slice(args);
    let out = exec_ns(NS, pod, &cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("mesh-client {args:?}: {e}: {out}"))
}

/// `summary[map][key]` (0 when absent).
fn n(v: &Value, map: &str, key: &str) -> u64 {
    v[map][key].as_u64().unwrap_or(0)
}

fn total(v: &Value) -> u64 {
    v["total"].as_u64().unwrap()
}

/// The fraction of the run's requests counted under `summary[map][key]`.
fn share(v: &Value, map: &str, key: &str) -> f64 {
    n(v, map, key) as f64 / total(v).max(1) as f64
}

/// The keys of `summary[map]` with a non-zero count.
fn keys(v: &Value, map: &str) -> BTreeSet<String> {
    v[map]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, c)| c.as_u64().unwrap_or(0) > 0)
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that every request of the run got a 200 and no transport error.
fn assert_all_ok(v: &Value, what: &str) {
    assert_eq!(n(v, "status", "200"), total(v), "{what}: all 200: {v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{what}: no errors: {v}");
}

/// Waits until `client`'s node proxy handles `url` at L7 (its responses carry
/// `x-envoy-upstream-service-time`), so telemetry and routes apply from then on.
fn wait_l7(client: &str, url: &str) {
    eventually(
        &format!("{client} → {url} proxied at L7"),
        Duration::from_secs(20),
        || {
            let v = load(
                client,
                &[
                    "-n",
                    "5",
                    "--count-header",
                    "x-envoy-upstream-service-time",
                    url,
                ],
            );
            let proxied: u64 = v["headers"]["x-envoy-upstream-service-time"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            if proxied == 5 && n(&v, "status", "200") == 5 {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
}

/// Waits until the VirtualService generation `generation` (its `probe` route) is active for `client`.
fn wait_probe(client: &str, url: &str, generation: &str) {
    let header = format!("x-weft-probe: {generation}");
    eventually(
        &format!("VirtualService generation {generation} active for {client}"),
        Duration::from_secs(20),
        || {
            let v = load(client, &["-n", "5", "-H", &header, url]);
            if n(&v, "status", "418") == 5 {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
}

/// Waits until a batch of 20 requests (with `args`) all succeed (e.g. DestinationRule subsets
/// known) — before a measurement, never instead of one.
fn wait_all_ok(client: &str, args: &[&str]) {
    let mut a = vec!["-n", "20"];
    a.extend_from_slice(args);
    eventually(
        &format!("{client}: {args:?} all 200"),
        Duration::from_secs(20),
        || {
            let v = load(client, &a);
            if n(&v, "status", "200") == 20 {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
}

/// Applies `yaml` to the lab (as `kubectl apply -f` would).
fn apply(yaml: &str) {
    let f = tempdir().join("policy.yaml");
    std::fs::write(&f, yaml).unwrap();
    ok(&["lab", "apply", "-f", &f.to_string_lossy()]);
}

fn scrape(node: &str) -> String {
    ok(&[
        "lab",
        "exec-node",
        node,
        "--",
        "curl",
        "-sf",
        "http://127.0.0.1:15020/metrics",
    ])
}

/// The samples of a Prometheus / OpenMetrics text page: (name, labels, value).
fn parse_samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = vec![];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            // k="v",k2="v2"} value — values may contain escaped quotes, commas and braces.
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            loop {
                let key: String = chars
                    .by_ref()
                    .take_while(|&(_, c)| c != '=')
                    .map(|(_, c)| c)
                    .collect();
                let key = key.trim_start_matches(',').trim().to_string();
                if key.starts_with('}') || key.is_empty() {
                    break;
                }
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "metric line {line}"
                );
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => {}
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                match chars.peek() {
                    Some(&(i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            rest = &body[end..];
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            out.push((name, labels, v));
        }
    }
    out
}

/// The sum over `nodes` of the samples of `name` whose labels include every `(label, value)`.
fn metric(nodes: &[&str], name: &str, labels: &[(&str, &str)]) -> f64 {
    nodes
        .iter()
        .flat_map(|node| parse_samples(&scrape(node)))
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Waits (bounded: telemetry is recorded when a response body ends) until the metric has grown
/// by at least `want` over `base`; returns the growth (which the caller compares exactly).
fn metric_growth(nodes: &[&str], name: &str, labels: &[(&str, &str)], base: f64, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grown = metric(nodes, name, labels) - base;
        if grown >= want || Instant::now() >= deadline {
            return grown;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const REQUESTS: &str = "istio_requests_total";

// ---------------------------------------------------------------------------------------------
// The policies (the YAML a user applies)

/// The `probe` route every test VirtualService starts with (see the module comment).
fn probe_route(generation: &str, host: &str) -> String {
    format!(
        r#"  - name: probe
    match: [{{headers: {{x-weft-probe: {{exact: "{generation}"}}}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: {host}}}}}]
"#
    )
}

/// A VirtualService for `host` (named after it): the probe route, then `routes` (YAML list items
/// of `http:`, indented by two spaces).
fn virtual_service(host: &str, generation: &str, routes: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {host}\n  namespace: {NS}\nspec:\n  hosts: [{host}]\n  http:\n{}{routes}",
        probe_route(generation, host)
    )
}

/// DestinationRule `backend` with the version subsets.
fn backend_subsets() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: backend
  namespace: {NS}
spec:
  host: backend
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"#
    )
}

/// A weighted split between the subsets.
fn split(generation: &str, v1: u32, v2: u32) -> String {
    virtual_service(
        "backend",
        generation,
        &format!(
            r#"  - name: split
    route:
    - destination: {{host: backend, subset: v1}}
      weight: {v1}
    - destination: {{host: backend, subset: v2}}
      weight: {v2}
"#
        ),
    )
}

fn matches_vs() -> String {
    virtual_service(
        "backend",
        "matches",
        r#"  - name: dark-launch
    match:
    - headers: {end-user: {exact: jason}}
    route: [{destination: {host: backend, subset: v2}}]
  - name: canary-stable   # also matches /canary below; listed first, so it wins
    match:
    - uri: {prefix: /canary/stable}
    route: [{destination: {host: backend, subset: v1}}]
  - name: canary
    match:
    - uri: {prefix: /canary}
    route: [{destination: {host: backend, subset: v2}}]
  - name: items
    match:
    - uri: {regex: "/items/[0-9]+"}
    route: [{destination: {host: backend, subset: v2}}]
  - name: beta-track
    match:
    - queryParams: {track: {exact: beta}}
    route: [{destination: {host: backend, subset: v2}}]
  - name: writes
    match:
    - method: {exact: POST}
    route: [{destination: {host: backend, subset: v2}}]
  - name: default
    route: [{destination: {host: backend, subset: v1}}]
"#,
    )
}

fn faults_vs() -> String {
    virtual_service(
        "backend",
        "faults",
        r#"  - name: abort
    match:
    - headers: {x-fault: {exact: abort}}
    fault:
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: backend}}]
  - name: delay
    match:
    - headers: {x-fault: {exact: delay}}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 100}}
    route: [{destination: {host: backend}}]
  - name: half-abort
    match:
    - headers: {x-fault: {exact: half}}
    fault:
      abort: {httpStatus: 503, percentage: {value: 50}}
    route: [{destination: {host: backend}}]
  - name: default
    route: [{destination: {host: backend}}]
"#,
    )
}

fn timeouts_vs() -> String {
    virtual_service(
        "backend",
        "timeouts",
        r#"  - name: timeout
    match:
    - headers: {x-test: {exact: timeout}}
    timeout: 0.5s
    route: [{destination: {host: backend}}]
  - name: retry-5xx
    match:
    - headers: {x-test: {exact: retry}}
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: backend}}]
  - name: default
    route: [{destination: {host: backend}}]
"#,
    )
}

/// `halfbad` fails half of its requests: 10 retries on 5xx leave 0.5^11 ≈ 0.05% failing.
fn halfbad_retries_vs() -> String {
    virtual_service(
        "halfbad",
        "retries",
        r#"  - name: retry-5xx
    retries: {attempts: 10, retryOn: 5xx}
    route: [{destination: {host: halfbad}}]
"#,
    )
}

fn outlier_dr(host: &str, base_ejection: &str, max_percent: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {host}
  namespace: {NS}
spec:
  host: {host}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: {base_ejection}
      maxEjectionPercent: {max_percent}
"#
    )
}

fn backend_policy(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: backend\n  namespace: {NS}\nspec:\n  host: backend\n  trafficPolicy:\n{traffic_policy}"
    )
}

fn pool_dr() -> String {
    backend_policy(
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n",
    )
}

fn hash_dr() -> String {
    backend_policy("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n")
}

fn lb_dr(simple: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: lb\n  namespace: {NS}\nspec:\n  host: lb\n  trafficPolicy:\n    loadBalancer: {{simple: {simple}}}\n"
    )
}

fn http_route_split() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: backend-split
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: backend, port: 8080}}
  rules:
  - matches:
    - headers: [{{name: x-weft-probe, value: httproute}}]
    backendRefs:
    - {{name: backend-v2, port: 8080}}
  - backendRefs:
    - {{name: backend-v1, port: 8080, weight: 90}}
    - {{name: backend-v2, port: 8080, weight: 10}}
"#
    )
}

/// The first rule matches another method of the same service: if method matching were ignored,
/// it would take every call (to v1).
fn grpc_route() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: backend-grpc
  namespace: {NS}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: backend, port: 9090}}
  rules:
  - matches:
    - method: {{service: weft.echo.v1.Echo, method: Shout}}
    backendRefs:
    - {{name: backend-v1, port: 9090}}
  - matches:
    - method: {{service: weft.echo.v1.Echo, method: Echo}}
    backendRefs:
    - {{name: backend-v2, port: 9090}}
"#
    )
}

/// Every policy the tests apply, in the sets that are applied together.
fn all_policies() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("split 90/10", vec![backend_subsets(), split("g", 90, 10)]),
        ("split 0/100", vec![backend_subsets(), split("g", 0, 100)]),
        ("matches", vec![backend_subsets(), matches_vs()]),
        ("faults", vec![faults_vs()]),
        ("timeouts", vec![timeouts_vs()]),
        ("halfbad retries", vec![halfbad_retries_vs()]),
        (
            "outlier detection",
            vec![
                outlier_dr("flaky", "5s", 100),
                outlier_dr("flaky-two", "30s", 34),
            ],
        ),
        ("pool", vec![pool_dr()]),
        ("hash", vec![hash_dr()]),
        ("lb", vec![lb_dr("ROUND_ROBIN")]),
        ("lb", vec![lb_dr("LEAST_REQUEST")]),
        ("gateway api", vec![http_route_split(), grpc_route()]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Offline (no lab, no root): the policies are valid for the controller.

/// `mesh-controller analyze` (Istio's codes) accepts every policy with the fixture, one at a time.
#[test]
fn policies_pass_the_controllers_analysis() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let controller = target.join("debug/mesh-controller");
    assert!(
        controller.exists(),
        "{} not built (cargo build --bins)",
        controller.display()
    );
    for (what, docs) in all_policies() {
        let dir = tempdir();
        std::fs::copy(fixture("l7.yaml"), dir.join("00-l7.yaml")).unwrap();
        for (i, doc) in docs.iter().enumerate() {
            std::fs::write(dir.join(format!("1{i}-policy.yaml")), doc).unwrap();
        }
        let yaml = docs.join("---\n");
        let out = std::process::Command::new(&controller)
            .args(["analyze", "-f"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: mesh-controller analyze: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn metric_lines_parse() {
    let text = "# TYPE istio_requests counter\nistio_requests_total{reporter=\"source\",response_flags=\"-\",x=\"a\\\"b,}\"} 12\nistio_request_duration_milliseconds_bucket{le=\"0.5\"} 3\nweft_up 1\n# EOF\n";
    let s = parse_samples(text);
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(s[0].0, "istio_requests_total");
    assert_eq!(s[0].1["reporter"], "source");
    assert_eq!(s[0].1["response_flags"], "-");
    assert_eq!(s[0].1["x"], "a\"b,}");
    assert_eq!(s[0].2, 12.0);
    assert_eq!(s[1].1["le"], "0.5");
    assert_eq!((s[2].0.as_str(), s[2].2), ("weft_up", 1.0));
}

// ---------------------------------------------------------------------------------------------
// Lab tests

/// 90/10 and 50/50 subset splits within ±5 percentage points over 1 000 requests; weights
/// changed under load take effect without a failed request.
///
/// Tolerance: binomial, n = 1 000. At 10 % the standard deviation is 0.95 pp (±5 pp ≈ 5.3 σ);
/// at 50 % it is 1.58 pp (±5 pp ≈ 3.2 σ, a false failure about once in 700 runs).
#[test]
fn weighted_splits_and_live_weight_changes() {
    let _lab = l7_lab();
    let url = format!("{BACKEND}/");
    apply(&backend_subsets());
    apply(&split("split-90", 90, 10));
    wait_probe("client-a", &url, "split-90");
    wait_all_ok("client-a", &[&url]);
    let v = load("client-a", &["-n", "1000", &url]);
    assert_all_ok(&v, "90/10");
    let v2 = share(&v, "versions", "v2");
    assert!((0.05..=0.15).contains(&v2), "90/10: v2 got {v2:.3}: {v}");
    assert_eq!(n(&v, "versions", "v1") + n(&v, "versions", "v2"), 1000);

    // 50/50, from the client on the other node.
    apply(&split("split-50", 50, 50));
    wait_probe("client-b", &url, "split-50");
    let v = load("client-b", &["-n", "1000", &url]);
    assert_all_ok(&v, "50/50");
    let v2 = share(&v, "versions", "v2");
    assert!((0.45..=0.55).contains(&v2), "50/50: v2 got {v2:.3}: {v}");

    // Live: 100/0 → 50/50 → 0/100 while 4 workers send 100 requests/s for 9 s.
    apply(&split("live-0", 100, 0));
    wait_probe("client-a", &url, "live-0");
    let bg = {
        let url = url.clone();
        std::thread::spawn(move || load("client-a", &["-d", "9s", "--qps", "100", "-c", "4", &url]))
    };
    std::thread::sleep(Duration::from_secs(3));
    apply(&split("live-1", 50, 50));
    std::thread::sleep(Duration::from_secs(3));
    apply(&split("live-2", 0, 100));
    let v = bg.join().unwrap();
    assert!(
        total(&v) >= 800,
        "the load kept its rate (900 planned): {v}"
    );
    assert_all_ok(&v, "weights changed under load");
    // ~3 s at v1 only, ~3 s split, ~3 s v2 only: both well represented whatever the propagation.
    for version in ["v1", "v2"] {
        assert!(
            n(&v, "versions", version) >= 100,
            "the weight changes took effect during the run: {v}"
        );
    }
    wait_probe("client-a", &url, "live-2");
    let v = load("client-a", &["-n", "100", &url]);
    assert_all_ok(&v, "0/100");
    assert_eq!(n(&v, "versions", "v2"), 100, "0/100: all to v2: {v}");
}

/// Header, URI prefix, regex, query and method matches; the first matching route wins.
#[test]
fn request_matches_route_in_first_match_order() {
    let _lab = l7_lab();
    apply(&backend_subsets());
    apply(&matches_vs());
    wait_probe("client-a", &format!("{BACKEND}/"), "matches");
    wait_all_ok("client-a", &[&format!("{BACKEND}/")]);
    // (what, extra mesh-client arguments, path, expected version)
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("no match: default route", &[], "/", "v1"),
        ("end-user: jason", &["-H", "end-user: jason"], "/", "v2"),
        ("another user", &["-H", "end-user: fred"], "/", "v1"),
        ("uri prefix /canary", &[], "/canary/new", "v2"),
        (
            "first match: /canary/stable before /canary",
            &[],
            "/canary/stable/x",
            "v1",
        ),
        (
            "first match: the header route before /canary/stable",
            &["-H", "end-user: jason"],
            "/canary/stable/x",
            "v2",
        ),
        ("uri regex", &[], "/items/42", "v2"),
        ("uri regex matches the whole path", &[], "/items/42/x", "v1"),
        ("uri regex: not digits", &[], "/items/abc", "v1"),
        ("query parameter", &[], "/?track=beta", "v2"),
        ("other query value", &[], "/?track=alpha", "v1"),
        ("method POST", &["-X", "POST", "--data", "x"], "/", "v2"),
        ("method GET", &["-X", "GET"], "/", "v1"),
    ];
    for (what, extra, path, want) in cases {
        let url = format!("{BACKEND}{path}");
        let mut args = vec!["-n", "20"];
        args.extend_from_slice(extra);
        args.push(&url);
        let v = load("client-a", &args);
        assert_all_ok(&v, what);
        assert_eq!(
            n(&v, "versions", want),
            20,
            "{what}: {path} {extra:?} → {want}: {v}"
        );
    }

    // Mirroring, rewrite and header operations: everything to v1, mirrored 100 % to v2 (whose
    // replies are discarded), the path rewritten, a request header set and a response header
    // added.
    apply(&virtual_service(
        "backend",
        "mirror",
        r#"  - name: mirrored
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    headers:
      request: {set: {x-routed-by: weft}}
      response: {add: {x-route: mirrored}}
    route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: backend, subset: v2}
    mirrorPercentage: {value: 100}
  - name: regex-rewrite
    match: [{uri: {prefix: /service/}}]
    rewrite:
      uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\2/instance/\1'}
    route: [{destination: {host: backend, subset: v1}}]
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example"}, {regex: "https://.*[.]dev[.]example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 1h
      allowCredentials: true
    route: [{destination: {host: backend, subset: v1}}]
"#,
    ));
    wait_probe("client-a", &format!("{BACKEND}/"), "mirror");
    let mirrored = [
        ("reporter", "destination"),
        ("destination_app", "backend"),
        ("destination_version", "v2"),
    ];
    let base = metric(&NODES, REQUESTS, &mirrored);
    let v = load(
        "client-a",
        &[
            "-n",
            "50",
            "--count-header",
            "x-route",
            &format!("{BACKEND}/old/page"),
        ],
    );
    assert_all_ok(&v, "mirrored route");
    assert_eq!(n(&v, "versions", "v1"), 50, "the client sees v1 only: {v}");
    assert_eq!(
        v["headers"]["x-route"]["mirrored"], 50,
        "response header added: {v}"
    );
    assert_eq!(
        metric_growth(&NODES, REQUESTS, &mirrored, base, 50.0),
        50.0,
        "v2 received every request as a shadow copy"
    );
    // Requests with a body are mirrored too (once the body has gone by, streamed meanwhile).
    let base = metric(&NODES, REQUESTS, &mirrored);
    let v = load(
        "client-a",
        &[
            "-n",
            "20",
            "-X",
            "POST",
            "--data",
            "hello mirror",
            &format!("{BACKEND}/old/page"),
        ],
    );
    assert_all_ok(&v, "mirrored POST");
    assert_eq!(n(&v, "versions", "v1"), 20, "the client sees v1 only: {v}");
    assert_eq!(
        metric_growth(&NODES, REQUESTS, &mirrored, base, 20.0),
        20.0,
        "v2 received every POST as a shadow copy"
    );
    let echo = load("client-a", &["-n", "1", &format!("{BACKEND}/old/page?q=1")]);
    assert_all_ok(&echo, "rewrite");
    let body = curl(NS, "client-a", &format!("{BACKEND}/old/page?q=1"));
    assert_eq!(body["path"], "/new/page", "rewritten path: {body}");
    assert_eq!(body["query"], "q=1", "query kept: {body}");
    assert_eq!(
        body["headers"]["x-routed-by"], "weft",
        "request header set: {body}"
    );
    // uriRegexRewrite: capture groups moved around, the query kept (Envoy's documented example).
    let body = curl(NS, "client-a", &format!("{BACKEND}/service/foo/v1/api?q=2"));
    assert_eq!(
        (body["path"].as_str(), body["query"].as_str()),
        (Some("/v1/api/instance/foo"), Some("q=2")),
        "regex rewrite: {body}"
    );
    // Paths are normalised before matching (Istio's default): /x/../old/page takes the /old route.
    let url = format!("{BACKEND}/x/%2e%2e/old/page");
    let (ok_, out) = try_exec_ns(
        NS,
        "client-a",
        &["curl", "-sf", "--max-time", "5", "--path-as-is", &url],
    );
    assert!(ok_, "{url}: {out}");
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        body["path"], "/new/page",
        "normalised, then rewritten: {body}"
    );

    // CORS: a preflight from an allowed origin is answered by the proxy; actual requests get the
    // allow-origin / credentials / expose headers; another origin gets none.
    let headers = |args: &[&str]| -> (String, String) {
        let mut a = vec!["curl", "-s", "--max-time", "5", "-D", "-"];
        a.extend_from_slice(args);
        let url = format!("{BACKEND}/cors/x");
        a.push(&url);
        let (ok_, out) = try_exec_ns(NS, "client-a", &a);
        assert!(ok_, "curl {a:?}: {out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (head.to_ascii_lowercase(), body.to_string())
    };
    let (head, body) = headers(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://shop.example",
        "-H",
        "access-control-request-method: POST",
    ]);
    assert!(head.starts_with("http/1.1 200"), "preflight: {head}");
    for want in [
        "access-control-allow-origin: https://shop.example",
        "access-control-allow-methods: get,post",
        "access-control-allow-headers: x-token",
        "access-control-max-age: 3600",
        "access-control-allow-credentials: true",
    ] {
        assert!(head.contains(want), "preflight lacks {want:?}: {head}");
    }
    assert!(
        body.is_empty(),
        "answered by the proxy, not the app: {body}"
    );
    let (head, body) = headers(&["-H", "origin: https://a.dev.example"]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://a.dev.example")
            && head.contains("access-control-expose-headers: x-trace"),
        "actual request from an allowed origin: {head}"
    );
    assert!(body.contains("backend-v1"), "reached the app: {body}");
    let (head, _) = headers(&["-H", "origin: https://evil.example"]);
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("access-control-"),
        "other origin: no CORS headers: {head}"
    );
}

/// Fault injection: abort 100 % (503 at once, flag FI, the backend never reached), delay 2 s for
/// one header value only (flag DI), abort 50 % within ±5 pp over 1 000 requests (3.2 σ).
#[test]
fn fault_injection_abort_delay_and_percentage() {
    let _lab = l7_lab();
    let url = format!("{BACKEND}/");
    apply(&faults_vs());
    wait_probe("client-a", &url, "faults");
    let source = |code: &'static str, flags: &'static str| {
        vec![
            ("reporter", "source"),
            ("destination_service_name", "backend"),
            ("response_code", code),
            ("response_flags", flags),
        ]
    };

    // Abort at 100 %.
    let base = metric(&["node-a"], REQUESTS, &source("503", "FI"));
    let v = load(
        "client-a",
        &["-n", "100", "-c", "4", "-H", "x-fault: abort", &url],
    );
    assert_eq!(n(&v, "status", "503"), 100, "abort 100%: {v}");
    assert!(keys(&v, "versions").is_empty(), "no backend answered: {v}");
    let p99 = v["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99 < 250.0, "aborted at once (p99 {p99} ms): {v}");
    let fi = metric_growth(&["node-a"], REQUESTS, &source("503", "FI"), base, 100.0);
    assert_eq!(fi, 100.0, "every abort reported as 503 FI");

    // Delay 2 s at 100 %, only for `x-fault: delay`.
    let base = metric(&["node-a"], REQUESTS, &source("200", "DI"));
    let v = load(
        "client-a",
        &["-n", "4", "-c", "4", "-H", "x-fault: delay", &url],
    );
    assert_all_ok(&v, "delayed");
    let (min, max) = (
        v["latency_ms"]["min"].as_f64().unwrap(),
        v["latency_ms"]["max"].as_f64().unwrap(),
    );
    assert!(
        (1990.0..3500.0).contains(&min) && max < 3500.0,
        "delayed by 2 s: {v}"
    );
    let di = metric_growth(&["node-a"], REQUESTS, &source("200", "DI"), base, 4.0);
    assert_eq!(di, 4.0, "every delay reported as DI");
    let v = load("client-a", &["-n", "20", "-H", "x-fault: other", &url]);
    assert_all_ok(&v, "other header value");
    let max = v["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        max < 1000.0,
        "not delayed without the header ({max} ms): {v}"
    );

    // Abort at 50 %.
    let base = metric(&["node-a"], REQUESTS, &source("503", "FI"));
    let v = load(
        "client-a",
        &["-n", "1000", "-c", "4", "-H", "x-fault: half", &url],
    );
    let (aborted, passed) = (n(&v, "status", "503"), n(&v, "status", "200"));
    assert_eq!(aborted + passed, 1000, "only aborts and successes: {v}");
    assert!(
        (450..=550).contains(&aborted),
        "50% abort: {aborted} of 1000: {v}"
    );
    let fi = metric_growth(
        &["node-a"],
        REQUESTS,
        &source("503", "FI"),
        base,
        aborted as f64,
    );
    assert_eq!(fi, aborted as f64, "each abort reported as FI");
}

/// Route timeout 0.5 s against a 2 s backend → 504 `UT` after 0.4–1.0 s; `retryOn: 5xx` makes a
/// backend failing 50 % of requests succeed ≥ 99 %; a non-retriable status (404) gets exactly one
/// attempt (counted by the destination side), a retriable one (503) 1 + attempts.
#[test]
fn timeouts_and_retries() {
    let _lab = l7_lab();
    let url = format!("{BACKEND}/");
    apply(&timeouts_vs());
    wait_probe("client-a", &url, "timeouts");

    // Timeout.
    let ut = [
        ("reporter", "source"),
        ("destination_service_name", "backend"),
        ("response_code", "504"),
        ("response_flags", "UT"),
    ];
    let base = metric(&["node-a"], REQUESTS, &ut);
    let v = load(
        "client-a",
        &[
            "-n",
            "4",
            "-c",
            "4",
            "-H",
            "x-test: timeout",
            &format!("{BACKEND}/?delay=2000"),
        ],
    );
    assert_eq!(n(&v, "status", "504"), 4, "timed out: {v}");
    let (min, max) = (
        v["latency_ms"]["min"].as_f64().unwrap(),
        v["latency_ms"]["max"].as_f64().unwrap(),
    );
    assert!(
        min >= 400.0 && max <= 1000.0,
        "504 after ~0.5 s (min {min} ms, max {max} ms): {v}"
    );
    assert_eq!(metric_growth(&["node-a"], REQUESTS, &ut, base, 4.0), 4.0);

    // Not retried: 404 under retryOn 5xx — one attempt per request at the destination.
    let dest = |code: &'static str| {
        vec![
            ("reporter", "destination"),
            ("destination_app", "backend"),
            ("destination_workload_namespace", NS),
            ("response_code", code),
        ]
    };
    let base = metric(&NODES, REQUESTS, &dest("404"));
    let v = load(
        "client-a",
        &[
            "-n",
            "50",
            "-H",
            "x-test: retry",
            &format!("{BACKEND}/?status=404"),
        ],
    );
    assert_eq!(n(&v, "status", "404"), 50, "{v}");
    let attempts = metric_growth(&NODES, REQUESTS, &dest("404"), base, 50.0);
    assert_eq!(attempts, 50.0, "one attempt per 404 (no retry)");
    // Retried: 503 with attempts 2 — three attempts each, the last answer passed on (URX).
    let base = metric(&NODES, REQUESTS, &dest("503"));
    let urx = [
        ("reporter", "source"),
        ("destination_service_name", "backend"),
        ("response_code", "503"),
        ("response_flags", "URX"),
    ];
    let base_urx = metric(&["node-a"], REQUESTS, &urx);
    let v = load(
        "client-a",
        &[
            "-n",
            "20",
            "-H",
            "x-test: retry",
            &format!("{BACKEND}/?status=503"),
        ],
    );
    assert_eq!(n(&v, "status", "503"), 20, "{v}");
    let attempts = metric_growth(&NODES, REQUESTS, &dest("503"), base, 60.0);
    assert_eq!(attempts, 60.0, "1 + 2 retries per request");
    assert_eq!(
        metric_growth(&["node-a"], REQUESTS, &urx, base_urx, 20.0),
        20.0,
        "retries exhausted: URX"
    );

    // A backend failing half of its requests: ~50 % 503 without retries (Istio's default policy
    // retries no status code), ≥ 99 % success with `retries: {attempts: 10, retryOn: 5xx}`.
    let half = "http://halfbad:8080/";
    let v = load("client-a", &["-n", "200", half]);
    let failed = share(&v, "status", "503");
    assert!(
        (0.35..=0.65).contains(&failed),
        "the backend fails about half (n = 200, ±15 pp ≈ 4 σ): {v}"
    );
    apply(&halfbad_retries_vs());
    wait_probe("client-a", half, "retries");
    let dest_503 = [
        ("reporter", "destination"),
        ("destination_app", "halfbad"),
        ("response_code", "503"),
    ];
    let base = metric(&NODES, REQUESTS, &dest_503);
    let v = load("client-a", &["-n", "1000", "-c", "4", half]);
    assert!(
        n(&v, "status", "200") >= 990,
        "retries hide the failures (expected ≈ 0.5 of 1000 left): {v}"
    );
    // About one failed attempt per request (geometric, mean 1) was retried.
    let failed_attempts = metric_growth(&NODES, REQUESTS, &dest_503, base, 700.0);
    assert!(
        failed_attempts >= 700.0,
        "the backend kept failing ({failed_attempts} failed attempts), retries absorbed it"
    );
}

/// Outlier detection: one bad pod of three (500 every time) is ejected after 3 consecutive 5xx,
/// gets nothing for baseEjectionTime (5 s), then comes back; with two bad of three and
/// maxEjectionPercent 34 only one is ejected, so failures continue from the other.
#[test]
fn outlier_detection_ejects_restores_and_caps() {
    let _lab = l7_lab();
    let flaky = "http://flaky:8080/";
    let v = load("client-a", &["-n", "30", flaky]);
    assert!(
        n(&v, "pods", "flaky-bad-1") > 0 && n(&v, "status", "500") > 0,
        "before: the bad pod serves (and fails): {v}"
    );
    apply(&outlier_dr("flaky", "5s", 100));

    // Batches of 30 (round robin over 3: ~10 each) until one has no 500 — the bad pod is out.
    // The ejection happened after the start of the previous batch (which still saw a 500) and
    // before the start of the clean one.
    let mut prev_start = Instant::now();
    let clean_start = eventually("the bad pod ejected", Duration::from_secs(20), || {
        let start = Instant::now();
        let v = load("client-a", &["-n", "30", flaky]);
        if n(&v, "status", "500") == 0 {
            assert_all_ok(&v, "after the ejection");
            Ok(start)
        } else {
            prev_start = start;
            Err(v.to_string())
        }
    });
    // Batches of 10 until the bad pod answers again.
    let mut last_clean_start = clean_start;
    let (back_end, v) = eventually("the bad pod back", Duration::from_secs(20), || {
        let start = Instant::now();
        let v = load("client-a", &["-n", "10", flaky]);
        if n(&v, "status", "500") > 0 {
            Ok((Instant::now(), v))
        } else {
            assert!(
                n(&v, "pods", "flaky-bad-1") == 0,
                "ejected: no request reached it: {v}"
            );
            last_clean_start = start;
            Err(v.to_string())
        }
    });
    assert!(n(&v, "pods", "flaky-bad-1") > 0, "it came back: {v}");
    // Ejected for at least (last clean batch start − clean start) and at most (back − previous
    // start): 5 s base ejection, re-admitted at the next 1 s sweep.
    let at_least = last_clean_start.duration_since(clean_start).as_secs_f64();
    let at_most = back_end.duration_since(prev_start).as_secs_f64();
    assert!(
        at_least >= 3.0,
        "out for ~5 s, not less: no traffic for {at_least:.1} s after the ejection"
    );
    assert!(
        at_most <= 9.0,
        "re-admitted after ~5–6 s, not later: back within {at_most:.1} s"
    );

    // Two bad of three, maxEjectionPercent 34: one ejection (33 %) allowed, a second (67 %) not.
    // A long base ejection time keeps the first one out for the rest of the test.
    let two = "http://flaky-two:8080/";
    apply(&outlier_dr("flaky-two", "30s", 34));
    let ejected = eventually("one bad pod ejected", Duration::from_secs(20), || {
        let v = load("client-a", &["-n", "30", two]);
        let bad: Vec<&str> = ["flaky-bad-1", "flaky-bad-2"]
            .into_iter()
            .filter(|p| n(&v, "pods", p) == 0)
            .collect();
        match bad[..] {
            [one] => Ok(one.to_string()),
            _ => Err(v.to_string()),
        }
    });
    for _ in 0..3 {
        let v = load("client-a", &["-n", "30", two]);
        assert_eq!(n(&v, "pods", &ejected), 0, "{ejected} stays ejected: {v}");
        assert!(
            n(&v, "status", "500") >= 5,
            "the other bad pod is not ejected (cap), failures continue (~15 of 30): {v}"
        );
    }
    // Control: with maxEjectionPercent 100 both bad pods go.
    apply(&outlier_dr("flaky-two", "30s", 100));
    eventually("both bad pods ejected", Duration::from_secs(20), || {
        let v = load("client-a", &["-n", "30", two]);
        if n(&v, "status", "500") == 0 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
}

/// Connection pool (maxConnections 1, http1MaxPendingRequests 1): 3 concurrent clients → some
/// 503 `x-envoy-overloaded` (UO), 1 client → none. Consistent hash by header: a user stays on
/// one pod (100 requests, from either node). LEAST_REQUEST prefers idle pods over a slow one.
#[test]
fn connection_pool_and_load_balancing() {
    let _lab = l7_lab();
    let slow = format!("{BACKEND}/?delay=200");

    // Connection pool.
    apply(&pool_dr());
    let c3 = [
        "-n",
        "60",
        "-c",
        "3",
        "--count-header",
        "x-envoy-overloaded",
        &slow,
    ];
    eventually("the pool limit active", Duration::from_secs(20), || {
        let v = load("client-a", &["-n", "15", "-c", "3", &slow]);
        if n(&v, "status", "503") > 0 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let uo = [
        ("reporter", "source"),
        ("destination_service_name", "backend"),
        ("response_code", "503"),
        ("response_flags", "UO"),
    ];
    let base = metric(&["node-a"], REQUESTS, &uo);
    let v = load("client-a", &c3);
    let (overflow, served) = (n(&v, "status", "503"), n(&v, "status", "200"));
    assert!(overflow > 0 && served > 0, "3 clients: some overflow: {v}");
    assert_eq!(overflow + served, 60, "{v}");
    assert_eq!(
        n(&v["headers"], "x-envoy-overloaded", "true"),
        overflow,
        "every overflow says x-envoy-overloaded: {v}"
    );
    let flagged = metric_growth(&["node-a"], REQUESTS, &uo, base, overflow as f64);
    assert_eq!(flagged, overflow as f64, "overflows reported as 503 UO");
    let v = load(
        "client-a",
        &[
            "-n",
            "10",
            "-c",
            "1",
            "--count-header",
            "x-envoy-overloaded",
            &slow,
        ],
    );
    assert_all_ok(&v, "1 client");
    assert_eq!(
        v["headers"]["x-envoy-overloaded"],
        serde_json::json!({}),
        "{v}"
    );

    // Consistent hash on x-user (replaces the pool policy).
    apply(&hash_dr());
    let url = format!("{BACKEND}/");
    let pod_of = |client: &str, user: &str, requests: &str| -> Value {
        load(
            client,
            &[
                "-n",
                requests,
                "-c",
                "2",
                "-H",
                &format!("x-user: {user}"),
                &url,
            ],
        )
    };
    eventually("consistent hashing active", Duration::from_secs(20), || {
        let v = pod_of("client-a", "alice", "20");
        if keys(&v, "pods").len() == 1 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let mut homes = BTreeMap::new();
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let v = pod_of("client-a", user, "100");
        assert_all_ok(&v, user);
        let pods = keys(&v, "pods");
        assert_eq!(pods.len(), 1, "{user} stays on one pod: {v}");
        homes.insert(user, pods.into_iter().next().unwrap());
    }
    let distinct: BTreeSet<&String> = homes.values().collect();
    assert!(
        distinct.len() >= 2,
        "users spread over the pods (8 users all on one of 4 pods: p ≈ 4^-7): {homes:?}"
    );
    let v = pod_of("client-b", "alice", "100");
    assert_eq!(
        keys(&v, "pods"),
        BTreeSet::from([homes["alice"].clone()]),
        "the other node's proxy hashes alice to the same pod: {v}"
    );

    // LEAST_REQUEST vs ROUND_ROBIN over two fast pods and one slowed by 100 ms per request, 4
    // workers for 2-3 s. Round robin sends the slow pod 1/3 of the requests; power-of-two-choices
    // only when it is picked twice (1/9) or is not busier — here it always has requests queued.
    let lb = "http://lb:8080/";
    let slow_share = |v: &Value| share(v, "pods", "lb-slow");
    apply(&lb_dr("ROUND_ROBIN"));
    eventually("ROUND_ROBIN active", Duration::from_secs(30), || {
        let v = load("client-a", &["-d", "2s", "-c", "4", lb]);
        if slow_share(&v) >= 0.25 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    apply(&lb_dr("LEAST_REQUEST"));
    eventually("LEAST_REQUEST active", Duration::from_secs(30), || {
        let v = load("client-a", &["-d", "2s", "-c", "4", lb]);
        if slow_share(&v) < 0.2 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let v = load("client-a", &["-d", "3s", "-c", "4", lb]);
    assert_all_ok(&v, "LEAST_REQUEST");
    let fast = share(&v, "pods", "lb-fast-1") + share(&v, "pods", "lb-fast-2");
    assert!(
        total(&v) >= 200 && fast >= 0.8,
        "the idle pods get clearly more: fast {fast:.3} (≈ 0.89 expected; round robin: 0.67): {v}"
    );
}

/// Gateway API: an HTTPRoute weight split (90/10 within ±5 pp over 1 000 requests, 5.3 σ), a
/// GRPCRoute routing by method, and a WebSocket echo through the mesh (with and without a route).
#[test]
fn gateway_api_routes_grpc_and_websocket() {
    let _lab = l7_lab();
    let websocket = |what: &str| {
        let out = exec_ns(
            NS,
            "client-a",
            &["python3", &fixture("ws.py"), "backend", "8080", "/ws", "5"],
        );
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["status"], 101, "{what}: upgraded: {v}");
        assert_eq!(v["accept_ok"], true, "{what}: {v}");
        assert_eq!(v["echoed"], 5, "{what}: every message echoed: {v}");
    };
    websocket("no route");

    // A request body still being sent (a bidirectional stream, like gRPC bidi) reaches the
    // server at once, although the route retries (Istio's default retries are on) and so keeps
    // a copy of the body: the duplex echo streams "ping" back while the body is unfinished.
    let out = exec_ns(
        NS,
        "client-a",
        &[
            "python3",
            &fixture("duplex.py"),
            "backend",
            "8080",
            "/d?duplex=1",
            "3",
        ],
    );
    assert_eq!(
        out.trim(),
        "ping",
        "streamed both ways before the body ended"
    );

    // HTTPRoute split between the per-version Services.
    let url = format!("{BACKEND}/");
    apply(&http_route_split());
    eventually("HTTPRoute active", Duration::from_secs(20), || {
        let v = load(
            "client-a",
            &["-n", "20", "-H", "x-weft-probe: httproute", &url],
        );
        // Without the route half go to v2: 20 of 20 by chance is p ≈ 1e-6.
        if n(&v, "versions", "v2") == 20 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let v = load("client-a", &["-n", "1000", &url]);
    assert_all_ok(&v, "HTTPRoute split");
    let v2 = share(&v, "versions", "v2");
    assert!(
        (0.05..=0.15).contains(&v2),
        "HTTPRoute 90/10: v2 got {v2:.3}: {v}"
    );
    websocket("through the HTTPRoute");

    // GRPCRoute by method.
    let grpc = "http://backend:9090";
    let v = load("client-a", &["--grpc", "-n", "40", grpc]);
    assert_eq!(n(&v, "status", "OK"), 40, "{v}");
    assert_eq!(keys(&v, "versions").len(), 2, "before: both versions: {v}");
    apply(&grpc_route());
    eventually("GRPCRoute active", Duration::from_secs(20), || {
        let v = load("client-a", &["--grpc", "-n", "20", grpc]);
        if n(&v, "versions", "v2") == 20 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    // Envoy reports the service of the cluster the request went to: the backendRef's.
    let labels = [
        ("reporter", "source"),
        ("destination_service_name", "backend-v2"),
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
        ("destination_version", "v2"),
    ];
    let base = metric(&["node-a"], REQUESTS, &labels);
    let v = load("client-a", &["--grpc", "-n", "200", "-c", "2", grpc]);
    assert_eq!(n(&v, "status", "OK"), 200, "{v}");
    assert_eq!(n(&v, "versions", "v2"), 200, "Echo/Echo → backend-v2: {v}");
    assert_eq!(
        metric_growth(&["node-a"], REQUESTS, &labels, base, 200.0),
        200.0,
        "reported as gRPC OK to v2"
    );
}

/// `istio_requests_total` (source: the client's node; destination: summed over the nodes) equals
/// the clients' own counts per response_code and destination_version; proxied responses carry
/// `x-envoy-upstream-service-time`, and `x-request-id` reaches the backend (kept, or generated).
#[test]
fn telemetry_matches_the_client() {
    let _lab = l7_lab();
    // (client, its node, path, requests)
    let runs = [
        ("client-a", "node-a", "/", "300"),
        ("client-a", "node-a", "/?status=418", "60"),
        ("client-b", "node-b", "/", "200"),
        ("client-b", "node-b", "/?status=418", "40"),
    ];
    // (node, or "*" for the destination side summed over the nodes; code; version) → growth
    let versions = ["v1", "v2"];
    let codes = ["200", "418"];
    let key_labels = |(node, code, version): (&str, &'static str, &'static str)| {
        let reporter = if node == "*" { "destination" } else { "source" };
        let nodes: Vec<&str> = if node == "*" {
            NODES.to_vec()
        } else {
            NODES.iter().copied().filter(|n| *n == node).collect()
        };
        // The destination side identifies the backend by its pod's app label: a pod behind
        // several Services (backend, backend-v1, …) cannot tell which one a request was for.
        let service = if node == "*" {
            ("destination_app", "backend")
        } else {
            ("destination_service_name", "backend")
        };
        let labels = [
            ("reporter", reporter),
            service,
            ("source_workload_namespace", NS),
            ("response_code", code),
            ("destination_version", version),
        ];
        (nodes, labels)
    };
    let mut base = BTreeMap::new();
    for node in ["node-a", "node-b", "*"] {
        for code in codes {
            for version in versions {
                let (nodes, labels) = key_labels((node, code, version));
                base.insert((node, code, version), metric(&nodes, REQUESTS, &labels));
            }
        }
    }
    let duration_base = metric(
        &NODES,
        "istio_request_duration_milliseconds_count",
        &[
            ("reporter", "source"),
            ("destination_service_name", "backend"),
        ],
    );
    let mut want: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
    for (client, node, path, requests) in runs {
        let v = load(client, &["-n", requests, &format!("{BACKEND}{path}")]);
        let code = if path.contains("418") { "418" } else { "200" };
        assert_eq!(
            n(&v, "status", code).to_string(),
            requests,
            "{client} {path}: {v}"
        );
        for version in versions {
            let c = n(&v, "versions", version) as f64;
            *want.entry((node, code, version)).or_default() += c;
            *want.entry(("*", code, version)).or_default() += c;
        }
    }
    for (key, expected) in &want {
        let (nodes, labels) = key_labels(*key);
        let grown = metric_growth(&nodes, REQUESTS, &labels, base[key], *expected);
        assert_eq!(
            grown, *expected,
            "istio_requests_total {labels:?} on {nodes:?}"
        );
    }
    let sent: f64 = runs.iter().map(|r| r.3.parse::<f64>().unwrap()).sum();
    let durations = metric(
        &NODES,
        "istio_request_duration_milliseconds_count",
        &[
            ("reporter", "source"),
            ("destination_service_name", "backend"),
        ],
    ) - duration_base;
    assert_eq!(durations, sent, "one duration observation per request");
    let mtls = metric(
        &NODES,
        REQUESTS,
        &[
            ("reporter", "destination"),
            ("destination_app", "backend"),
            ("connection_security_policy", "mutual_tls"),
            ("request_protocol", "http"),
        ],
    );
    assert!(mtls >= sent, "destination side: mutual_tls, http ({mtls})");

    // Headers.
    let (ok_, out) = try_exec_ns(
        NS,
        "client-a",
        &[
            "curl",
            "-s",
            "-i",
            "--max-time",
            "5",
            "-H",
            "x-request-id: weft-e2e-42",
            &format!("{BACKEND}/"),
        ],
    );
    assert!(ok_, "curl: {out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let service_time = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-envoy-upstream-service-time")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-envoy-upstream-service-time: {head}"));
    assert!(service_time.parse::<u64>().is_ok(), "{service_time}");
    let echo: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        echo["headers"]["x-request-id"], "weft-e2e-42",
        "x-request-id propagated: {echo}"
    );
    let echo = curl(NS, "client-a", &format!("{BACKEND}/"));
    assert!(
        !echo["headers"]["x-request-id"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "x-request-id generated: {echo}"
    );

    // A client that gives up before the response head is reported as Envoy does: code 0, DC.
    let dc = [
        ("reporter", "source"),
        ("destination_service_name", "backend"),
        ("response_code", "0"),
        ("response_flags", "DC"),
    ];
    let base = metric(&["node-a"], REQUESTS, &dc);
    let (ok_, out) = try_exec_ns(
        NS,
        "client-a",
        &[
            "curl",
            "-s",
            "--max-time",
            "0.5",
            &format!("{BACKEND}/?delay=2000"),
        ],
    );
    assert!(!ok_, "curl gave up: {out}");
    assert_eq!(
        metric_growth(&["node-a"], REQUESTS, &dc, base, 1.0),
        1.0,
        "one DC request reported"
    );
}
