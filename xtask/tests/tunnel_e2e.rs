//! HBONE end-to-end tests (root) in the lab: traffic between meshed pods — across nodes, on one
//! node, through a Service — travels in mTLS tunnels on :15008 carrying each pod's SPIFFE identity;
//! the underlay sees TLS, never the payload; certificates rotate under traffic without a failure.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/secure/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/secure/sa/server";

fn tunnel_lab(env: &[(&str, &str)]) -> LabGuard {
    let lab = LabGuard::up_with_env(env);
    ok(&["lab", "apply", "-f", &fixture("tunnel.yaml")]);
    wait_enrolled("node-a", &["client", "intruder", "server-a"]);
    wait_enrolled("node-b", &["server-b"]);
    lab
}

fn metrics(node: &str) -> String {
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

/// The value of the first sample of `name` whose labels contain every `label="value"`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn meshed_traffic_is_tunnelled_with_each_pods_identity() {
    let _lab = tunnel_lab(&[]);
    let opened = |node: &str, reporter: &str| {
        sample(
            &metrics(node),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", reporter),
                ("source_principal", CLIENT_ID),
                ("destination_principal", SERVER_ID),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    for (what, url, server_node, pod) in [
        (
            "other-node pod",
            format!("http://{}:8080/", pod_ip("secure", "server-b")),
            "node-b",
            Some("server-b"),
        ),
        (
            "same-node pod",
            format!("http://{}:8080/", pod_ip("secure", "server-a")),
            "node-a",
            Some("server-a"),
        ),
    ] {
        let (src_before, dst_before) = (
            opened("node-a", "source"),
            opened(server_node, "destination"),
        );
        let echo = curl("secure", "client", &url);
        if let Some(p) = pod {
            assert_eq!(echo["pod"], p, "{what}: {echo}");
        }
        assert!(
            opened("node-a", "source") > src_before,
            "{what}: the client's node tunnelled it as {CLIENT_ID}"
        );
        assert!(
            opened(server_node, "destination") > dst_before,
            "{what}: {server_node} received it over mTLS from {CLIENT_ID}:\n{}",
            metrics(server_node)
        );
    }
    // Through the Service: both endpoints, each over HBONE, the service named in the telemetry.
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let echo = curl("secure", "client", "http://server.secure:8080/");
        pods.insert(echo["pod"].as_str().unwrap().to_string());
    }
    assert_eq!(pods.len(), 2, "both endpoints served: {pods:?}");
    assert!(
        sample(
            &metrics("node-a"),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_service", "server.secure.svc.cluster.local"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 20.0
    );
    // The certificate of each identity is on its node, and not expiring (gauges refresh every 5 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics("node-a");
        if sample(
            &m,
            "weft_certificate_expiry_seconds",
            &[("identity", CLIENT_ID)],
        ) > 3600.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate gauge for {CLIENT_ID}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The admin endpoint shows the certificate, the mesh state and the pooled tunnels.
    let agent = root().join("target/debug/mesh-agent");
    let admin = |what: &str| -> Value {
        let out = ok(&[
            "lab",
            "exec-node",
            "node-a",
            "--",
            agent.to_str().unwrap(),
            what,
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("mesh-agent {what}: {e}: {out}"))
    };
    let certs = admin("certs");
    let c = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == CLIENT_ID)
        .unwrap_or_else(|| panic!("{certs}"));
    assert_eq!(c["state"], "valid", "{c}");
    assert!(c["chain_pem"].as_array().unwrap().len() >= 2, "{c}");
    let config = admin("config");
    assert!(
        config["mesh"]["meshed_pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["identity"] == SERVER_ID),
        "{config}"
    );
    let conns = admin("connections");
    assert!(
        conns["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["dst_identity"] == SERVER_ID),
        "{conns}"
    );
    // Plaintext from outside the mesh still reaches a (PERMISSIVE) meshed pod, marked as such.
    let echo = curl(
        "plain",
        "outsider",
        &format!("http://{}:8080/", pod_ip("secure", "server-b")),
    );
    assert_eq!(echo["pod"], "server-b");
    assert!(
        sample(
            &metrics("node-b"),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "none")
            ],
        ) >= 1.0
    );
}

/// Runs the sniffer on the underlay bridge while `traffic` runs; returns its JSON report.
fn sniff(marker: &str, traffic: impl FnOnce()) -> Value {
    let mut child = Command::new("ip")
        .args(["netns", "exec", "wlab-underlay", "python3"])
        .arg(fixture("sniff.py"))
        .args(["6", marker])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the sniffer");
    let mut ready = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "sniffer did not start: {ready}");
    traffic();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sniffer failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_underlay_carries_tls_never_the_payload() {
    let _lab = tunnel_lab(&[]);
    let server_b = pod_ip("secure", "server-b");
    let target = format!("tcp://{server_b}:9000");
    // Meshed client → meshed server on the other node: TLS on :15008 only.
    let marker = "WEFT-SECRET-PAYLOAD-7f3a";
    let report = sniff(marker, || {
        let out = exec_ns(
            "secure",
            "client",
            &[
                "mesh-client",
                "--tcp",
                "-n",
                "20",
                "--data",
                marker,
                "--json",
                &target,
            ],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"]["ok"], 20, "{v}");
    });
    assert!(
        report["hbone"].as_u64().unwrap() > 0,
        "went over :15008: {report}"
    );
    assert_eq!(
        report["marked"], 0,
        "the payload never appears in clear: {report}"
    );
    // Control: the same payload from a pod outside the mesh is visible, so the sniffer works.
    let marker = "WEFT-PLAIN-PAYLOAD-91c2";
    let report = sniff(marker, || {
        let out = exec_ns(
            "plain",
            "outsider",
            &[
                "mesh-client",
                "--tcp",
                "-n",
                "5",
                "--data",
                marker,
                "--json",
                &target,
            ],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"]["ok"], 5, "{v}");
    });
    assert!(report["marked"].as_u64().unwrap() > 0, "control: {report}");
}

#[test]
fn certificates_rotate_under_traffic_without_a_failed_request() {
    // 4 s certificates: renewed every ~2 s.
    let _lab = tunnel_lab(&[("WEFT_LAB_CERT_TTL", "4s")]);
    let target = format!("tcp://{}:9000", pod_ip("secure", "server-b"));
    // One new tunnel stream per request (TCP mode), 10 s at 20/s: ~5 rotations on each side.
    let out = exec_ns(
        "secure",
        "client",
        &[
            "mesh-client",
            "--tcp",
            "-d",
            "10s",
            "--qps",
            "20",
            "--json",
            &target,
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let total = v["total"].as_u64().unwrap();
    assert!(total >= 150, "{v}");
    assert_eq!(
        v["status"]["ok"].as_u64(),
        Some(total),
        "no failed request: {v}"
    );
    for (node, id) in [("node-a", CLIENT_ID), ("node-b", SERVER_ID)] {
        let m = metrics(node);
        let rotations = sample(&m, "weft_certificate_rotations", &[("identity", id)]);
        assert!(
            rotations >= 2.0,
            "{node}: {id} rotated {rotations} times:\n{m}"
        );
    }
}

/// Applies `yaml` (policies) to the lab; returns the file (for `lab delete`).
fn apply(yaml: &str) -> String {
    let f = tempdir().join("policy.yaml");
    std::fs::write(&f, yaml).unwrap();
    let f = f.to_string_lossy().into_owned();
    ok(&["lab", "apply", "-f", &f]);
    f
}

/// Whether an HTTP request from `pod` to `url` succeeds (one try, 3 s).
fn reaches(ns: &str, pod: &str, url: &str) -> bool {
    try_exec_ns(ns, pod, &["curl", "-sf", "--max-time", "3", url]).0
}

/// Waits (bounded) until `pod` can / cannot reach `url`: policies propagate asynchronously.
fn eventually(ns: &str, pod: &str, url: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while reaches(ns, pod, url) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: {ns}/{pod} → {url} should be {}",
            if want { "allowed" } else { "refused" }
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    let _lab = tunnel_lab(&[]);
    let url = format!("http://{}:8080/", pod_ip("secure", "server-b"));
    assert!(
        reaches("plain", "outsider", &url),
        "PERMISSIVE (default) accepts plaintext"
    );
    let f = apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: secure}\nspec: {mtls: {mode: STRICT}}\n",
    );
    eventually("plain", "outsider", &url, false, "STRICT");
    assert!(
        reaches("secure", "client", &url),
        "mTLS still accepted under STRICT"
    );
    ok(&["lab", "delete", "-f", &f]);
    eventually("plain", "outsider", &url, true, "back to PERMISSIVE");
}

#[test]
fn authorization_policies_allow_deny_deny_all_and_ports() {
    let _lab = tunnel_lab(&[]);
    let ip = pod_ip("secure", "server-b");
    let (http, tcp) = (format!("http://{ip}:8080/"), format!("tcp://{ip}:9000"));
    // ALLOW by principal: the client only.
    let f = apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-client, namespace: secure}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/secure/sa/client]}}]\n",
    );
    eventually("secure", "intruder", &http, false, "ALLOW by principal");
    assert!(reaches("secure", "client", &http), "the allowed principal");
    let denied = sample(
        &metrics("node-b"),
        "weft_proxy_connections_total",
        &[("direction", "Inbound"), ("result", "denied")],
    );
    assert!(denied >= 1.0, "denials are counted");
    ok(&["lab", "delete", "-f", &f]);
    // ALLOW by namespace.
    let f = apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ns, namespace: secure}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{source: {namespaces: [secure]}}]\n",
    );
    eventually("secure", "intruder", &http, true, "ALLOW by namespace");
    eventually(
        "plain",
        "outsider",
        &http,
        false,
        "ALLOW by namespace refuses plaintext",
    );
    // DENY wins over ALLOW.
    let g = apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-intruder, namespace: secure}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/secure/sa/intruder]}}]\n",
    );
    eventually("secure", "intruder", &http, false, "DENY precedence");
    assert!(reaches("secure", "client", &http));
    ok(&["lab", "delete", "-f", &f]);
    ok(&["lab", "delete", "-f", &g]);
    eventually("secure", "intruder", &http, true, "policies removed");
    // `spec: {}` denies everything in its scope.
    let f = apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: secure}\nspec: {}\n",
    );
    eventually("secure", "client", &http, false, "spec: {} denies all");
    ok(&["lab", "delete", "-f", &f]);
    eventually("secure", "client", &http, true, "deny-all removed");
    // A port-only rule: 9000 allowed, 8080 not.
    let f = apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: tcp-only, namespace: secure}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{operation: {ports: [\"9000\"]}}]\n",
    );
    eventually("secure", "client", &http, false, "port 8080 not allowed");
    let out = exec_ns(
        "secure",
        "client",
        &["mesh-client", "--tcp", "-n", "3", "--json", &tcp],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["ok"], 3, "port 9000 allowed: {v}");
    assert!(!reaches("secure", "client", &http), "and 8080 still not");
    ok(&["lab", "delete", "-f", &f]);
}

#[test]
fn a_deny_closes_an_open_connection() {
    let _lab = tunnel_lab(&[]);
    let ip = pod_ip("secure", "server-b");
    // A long-lived connection pinging every 100 ms for 8 s.
    let hold = std::thread::spawn(move || {
        exec_ns(
            "secure",
            "client",
            &["python3", &fixture("hold.py"), &ip, "9000", "8"],
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: cut, namespace: secure}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/secure/sa/client]}}]\n",
    );
    let v: Value = serde_json::from_str(&hold.join().unwrap()).unwrap();
    assert!(
        v["ok"].as_u64().unwrap() >= 10,
        "worked before the DENY: {v}"
    );
    assert!(
        !v["errors"].as_array().unwrap().is_empty(),
        "the DENY closed the open connection: {v}"
    );
}
