//! eBPF capture end-to-end tests (root) in the lab: every TCP connection a meshed pod opens or
//! receives goes through its node's proxy, with no iptables; what must not be captured is not;
//! the data path fails closed, survives agent crashes, and leaves no stale state.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn service_ip(ns: &str, name: &str) -> String {
    status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["namespace"] == ns && s["name"] == name)
        .unwrap()["cluster_ip"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sets up the fixture and waits (bounded) until the agents enrolled the meshed pods.
fn capture_lab() -> LabGuard {
    let lab = LabGuard::up();
    ok(&["lab", "apply", "-f", &fixture("capture.yaml")]);
    wait_enrolled("node-a", &["client", "excl"]);
    wait_enrolled("node-b", &["mserver"]);
    lab
}

fn wait_unenrolled(node: &str, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while bpf("pods", node)
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == pod)
    {
        assert!(Instant::now() < deadline, "{pod} still enrolled on {node}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn meshed_connections_go_through_the_proxy_and_keep_the_source_ip() {
    let _lab = capture_lab();
    let client_ip = pod_ip("meshed", "client");
    for (what, url) in [
        (
            "same-node pod",
            format!("http://{}:8080/", pod_ip("plain", "server-a")),
        ),
        (
            "other-node pod",
            format!("http://{}:8080/", pod_ip("plain", "server-b")),
        ),
        (
            "ClusterIP",
            format!("http://{}:8080/", service_ip("plain", "server")),
        ),
        ("service name", "http://server.plain:8080/".to_string()),
    ] {
        let before = stat("node-a", "connect_redirected");
        let echo = curl("meshed", "client", &url);
        assert!(
            stat("node-a", "connect_redirected") > before,
            "{what}: the proxy saw it"
        );
        assert!(
            echo["peer"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{client_ip}:")),
            "{what}: the server sees the client pod's IP: {echo}"
        );
    }
    let m = ok(&[
        "lab",
        "exec-node",
        "node-a",
        "--",
        "curl",
        "-sf",
        "http://127.0.0.1:15020/metrics",
    ]);
    assert!(
        m.lines()
            .any(|l| l
                .starts_with("weft_proxy_connections_total{direction=\"Outbound\",result=\"ok\"}")),
        "{m}"
    );
}

#[test]
fn what_must_not_be_captured_is_not() {
    let _lab = capture_lab();
    let server_b = pod_ip("plain", "server-b");
    let url = format!("http://{server_b}:8080/");
    // A pod of a non-annotated namespace, and an opted-out pod.
    for (ns, pod) in [("plain", "outsider"), ("meshed", "optout")] {
        let before = stat("node-a", "connect_redirected");
        curl(ns, pod, &url);
        assert_eq!(
            stat("node-a", "connect_redirected"),
            before,
            "{ns}/{pod} must not be captured"
        );
    }
    // Loopback inside a meshed pod.
    let before = stat("node-a", "connect_skip_loopback");
    let (_, _) = try_exec_ns(
        "meshed",
        "client",
        &["curl", "-s", "--max-time", "2", "http://127.0.0.1:9/"],
    );
    assert!(stat("node-a", "connect_skip_loopback") > before);
    assert_eq!(
        bpf("stats", "node-a")["connect_redirected"],
        bpf("stats", "node-a")["connect_redirected"]
    );
    // An excluded port: 9000 from `excl` goes direct, 8080 is captured.
    let before = (
        stat("node-a", "connect_skip_excluded"),
        stat("node-a", "connect_redirected"),
    );
    let (ok9000, _) = try_exec_ns(
        "meshed",
        "excl",
        &[
            "mesh-client",
            "--tcp",
            "-n",
            "1",
            "--json",
            &format!("tcp://{server_b}:9000"),
        ],
    );
    assert!(ok9000);
    assert!(stat("node-a", "connect_skip_excluded") > before.0);
    curl("meshed", "excl", &url);
    assert!(stat("node-a", "connect_redirected") > before.1);
}

#[test]
fn inbound_from_a_non_meshed_client_reaches_the_app_through_15006() {
    let _lab = capture_lab();
    let before = stat("node-b", "lookup_steered");
    let echo = curl(
        "plain",
        "outsider",
        &format!("http://{}:8080/", pod_ip("meshed", "mserver")),
    );
    assert_eq!(echo["pod"], "mserver");
    assert!(
        stat("node-b", "lookup_steered") > before,
        "sk_lookup steered it to :15006"
    );
    let m = ok(&[
        "lab",
        "exec-node",
        "node-b",
        "--",
        "curl",
        "-sf",
        "http://127.0.0.1:15020/metrics",
    ]);
    assert!(
        m.contains("weft_proxy_connections_total{direction=\"Inbound\",result=\"ok\"}"),
        "{m}"
    );
}

fn bulk(ns: &str, pod: &str, host: &str) {
    let (ok, out) = try_exec_ns(
        ns,
        pod,
        &[
            "python3",
            &fixture("bulk.py"),
            host,
            "9000",
            &(64 << 20).to_string(),
        ],
    );
    assert!(ok, "bulk.py failed: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["intact"], true, "64 MiB each way arrives intact: {v}");
}

#[test]
fn large_transfers_arrive_intact_with_and_without_the_fast_path() {
    let _lab = capture_lab();
    let mserver = pod_ip("meshed", "mserver");
    bulk("meshed", "client", &mserver);
    let index = |node: &str, pod: &str| {
        bpf("pods", node)
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .map(|p| p["pod_index"].clone())
    };
    let mserver_index = index("node-b", "mserver");
    // Fast path on for the namespace: the pods' maps are updated in place (listeners stay open).
    let dir = tempdir();
    let ns = dir.join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: meshed\n  annotations: {weft.dev/mesh: enabled, weft.dev/fast-path: enabled}\n").unwrap();
    ok(&["lab", "apply", "-f", ns.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let fast = |node: &str, pod: &str| {
        bpf("pods", node)
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == pod && p["fast_path"] == true && p["enrolled"] == true)
    };
    while !(fast("node-a", "client") && fast("node-b", "mserver")) {
        assert!(Instant::now() < deadline, "fast path not enabled");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        index("node-b", "mserver"),
        mserver_index,
        "mserver updated in place, not re-enrolled"
    );
    let before = stat("node-a", "fast_path_redirected");
    bulk("meshed", "client", &mserver);
    assert!(
        stat("node-a", "fast_path_redirected") > before,
        "the fast path carried the data"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn annotating_enrolls_running_pods_and_removing_it_keeps_open_connections() {
    let _lab = capture_lab();
    // `plain`'s pods are not enrolled; annotate the namespace: its running pods enrol (no restart).
    let uid_before = status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "outsider")
        .unwrap()["uid"]
        .clone();
    let dir = tempdir();
    let ns = dir.join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n  annotations: {weft.dev/mesh: enabled}\n").unwrap();
    ok(&["lab", "apply", "-f", ns.to_str().unwrap()]);
    wait_enrolled("node-a", &["outsider", "server-a"]);
    let uid_after = status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "outsider")
        .unwrap()["uid"]
        .clone();
    assert_eq!(uid_before, uid_after, "no restart");

    // A long-lived captured connection survives un-enrolment.
    let server_b = pod_ip("plain", "server-b");
    let hold = std::thread::spawn(move || {
        try_exec_ns(
            "plain",
            "outsider",
            &["python3", &fixture("hold.py"), &server_b, "9000", "3"],
        )
    });
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n",
    )
    .unwrap();
    ok(&["lab", "apply", "-f", ns.to_str().unwrap()]);
    wait_unenrolled("node-a", "outsider");
    let (ok_run, out) = hold.join().unwrap();
    assert!(ok_run, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], v["sent"], "the open connection kept working: {v}");
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    // New connections are direct again.
    let before = stat("node-a", "connect_redirected");
    curl(
        "plain",
        "outsider",
        &format!("http://{}:8080/", pod_ip("plain", "server-b")),
    );
    assert_eq!(stat("node-a", "connect_redirected"), before);
    let _ = std::fs::remove_dir_all(dir);
}

fn attached_weft_progs(cgroup: &str) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show", cgroup])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap_or("").starts_with("weft_"))
        .count()
}

#[test]
fn agent_crash_fails_closed_restart_adopts_pins_and_bypass_fails_open() {
    let _lab = capture_lab();
    let pods_cg = cgroup_root()
        .join("node-a/kubepods")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        attached_weft_progs(&pods_cg),
        3,
        "connect4, connect6, sock_ops"
    );
    let server_b = pod_ip("plain", "server-b");
    let mserver = pod_ip("meshed", "mserver");
    let url = format!("http://{server_b}:8080/");
    curl("meshed", "client", &url);

    // kill -9: meshed pods' connects are refused (outbound) and inbound to meshed ports too.
    ok(&["lab", "agent", "kill", "node-a"]);
    ok(&["lab", "agent", "kill", "node-b"]);
    let (out_ok, _) = try_exec_ns(
        "meshed",
        "client",
        &["curl", "-sf", "--max-time", "3", &url],
    );
    assert!(!out_ok, "outbound must fail closed with the proxy down");
    let (in_ok, _) = try_exec_ns(
        "plain",
        "outsider",
        &[
            "curl",
            "-sf",
            "--max-time",
            "3",
            &format!("http://{mserver}:8080/"),
        ],
    );
    assert!(!in_ok, "inbound must fail closed with the proxy down");
    assert!(stat("node-b", "lookup_drop_no_listener") > 0);

    // Bypass: deliberate fail-open.
    let bypass = |node: &str, state: &str| {
        let out = std::process::Command::new(root().join("target/debug/mesh-agent"))
            .args(["bpf", "bypass", state, "--node", node])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bypass("node-a", "on");
    bypass("node-b", "on");
    curl("meshed", "client", &url);
    curl("plain", "outsider", &format!("http://{mserver}:8080/"));
    bypass("node-a", "off");
    bypass("node-b", "off");

    // Restart: pins adopted, nothing attached twice, new connections work within 2 s.
    ok(&["lab", "agent", "start", "node-a"]);
    ok(&["lab", "agent", "start", "node-b"]);
    let log = std::fs::read_to_string("/run/weft-lab/logs/agent-node-a.log").unwrap();
    assert!(log.lines().last().is_some());
    assert!(log.contains("adopted=[\"connect4\", \"connect6\", \"sockops-pods\", \"sockops-agent\", \"fast-path\"]"), "{log}");
    assert_eq!(attached_weft_progs(&pods_cg), 3, "no duplicate attachments");
    let start = Instant::now();
    loop {
        let (ok1, _) = try_exec_ns(
            "meshed",
            "client",
            &["curl", "-sf", "--max-time", "1", &url],
        );
        if ok1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "connections work again within 2 s"
        );
    }
    curl("plain", "outsider", &format!("http://{mserver}:8080/"));
}

#[test]
fn ten_thousand_short_connections_leave_no_stale_original_destinations() {
    let _lab = capture_lab();
    let v = client_json_ns(
        "meshed",
        "client",
        &[
            "--tcp",
            "-n",
            "10000",
            "-c",
            "8",
            &format!("tcp://{}:9000", pod_ip("plain", "server-b")),
        ],
    );
    assert_eq!(v["status"]["ok"], 10000, "{v}");
    let maps = bpf("maps", "node-a");
    assert_eq!(
        maps["ORIG_BY_COOKIE"].as_array().unwrap().len(),
        0,
        "{}",
        maps["ORIG_BY_COOKIE"]
    );
    assert_eq!(
        maps["ORIG_BY_SRC"].as_array().unwrap().len(),
        0,
        "{}",
        maps["ORIG_BY_SRC"]
    );
    assert!(stat("node-a", "connect_redirected") >= 10000);
}

#[test]
fn bpf_subcommands_show_enrolled_pods_by_name() {
    let _lab = capture_lab();
    let pods = bpf("pods", "node-a");
    let names: Vec<&str> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"client") && names.contains(&"excl") && !names.contains(&"optout"),
        "{pods}"
    );
    let maps = bpf("maps", "node-a");
    let meshed: Vec<&str> = maps["MESHED_NETNS"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pod"].as_str().unwrap())
        .collect();
    assert!(meshed.contains(&"meshed/client"), "{maps}");
    assert!(
        maps["EXCLUDED_PORTS"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pod"] == "meshed/excl" && e["port"] == 9000),
        "{maps}"
    );
    let progs = bpf("progs", "node-a");
    let names: Vec<&str> = progs["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "weft_connect4",
        "weft_connect6",
        "weft_sockops",
        "weft_sk_lookup",
    ] {
        assert!(names.contains(&p), "{p} in {progs}");
    }
}

/// Kills a child process on drop.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn local_config_mode_enrolls_without_the_lab_source() {
    // No lab agents: one agent started by hand with a --local-config file, as an operator
    // debugging an agent without a controller would.
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    ok(&["lab", "down"]);
    ok(&["lab", "up", "--no-agents"]);
    let _lab = LabGuardDown;
    ok(&["lab", "apply", "-f", &fixture("capture.yaml")]);
    let st = status();
    let client = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "meshed" && p["name"] == "client")
        .unwrap();
    let dir = tempdir();
    let cfg = dir.join("workloads.yaml");
    std::fs::write(
        &cfg,
        format!(
            "workloads:\n- uid: {}\n  name: client\n  namespace: meshed\n  node: node-a\n  ip: {}\n  mesh: true\n",
            client["uid"].as_str().unwrap(),
            client["ip"].as_str().unwrap()
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let agent = Child(
        std::process::Command::new("nsenter")
            .arg("--net=/run/netns/wlab-node-a")
            .arg(root().join("target/debug/mesh-agent"))
            .args([
                "run",
                "--node",
                "node-a",
                "--metrics",
                "127.0.0.1:15020",
                "--local-config",
            ])
            .arg(&cfg)
            .arg("--pods-cgroup")
            .arg(cgroup_root().join("node-a/kubepods"))
            .arg("--state-dir")
            .arg(&state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pods: Value = std::fs::read(state.join("pods.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if pods
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == "client"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client not enrolled from --local-config"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = |c: &str| -> u64 {
        let out = std::process::Command::new(root().join("target/debug/mesh-agent"))
            .args(["bpf", "stats", "--json", "--node", "node-a"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[c]
            .as_u64()
            .unwrap()
    };
    let before = stats("connect_redirected");
    curl(
        "meshed",
        "client",
        &format!("http://{}:8080/", pod_ip("plain", "server-b")),
    );
    assert!(stats("connect_redirected") > before);
    // The excl pod is not in the local config: not captured.
    let before = stats("connect_redirected");
    curl(
        "meshed",
        "excl",
        &format!("http://{}:8080/", pod_ip("plain", "server-b")),
    );
    assert_eq!(stats("connect_redirected"), before);
    drop(agent);
    let out = std::process::Command::new(root().join("target/debug/mesh-agent"))
        .args(["uninstall", "--node", "node-a", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!std::path::Path::new("/sys/fs/bpf/weft/node-a").exists());
    let _ = std::fs::remove_dir_all(dir);
}

struct LabGuardDown;
impl Drop for LabGuardDown {
    fn drop(&mut self) {
        let _ = xtask(&["lab", "down"]);
    }
}

fn proxy_status() -> Value {
    serde_json::from_str(&ok(&["lab", "proxy-status", "--json"])).unwrap()
}

#[test]
fn agents_follow_the_controller_and_keep_their_config_while_it_is_down() {
    let _lab = capture_lab();
    // Every node is connected and has acknowledged what was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = proxy_status();
        let synced = ["node-a", "node-b"].iter().all(|n| {
            st[n]["connected"] == true
                && st[n]["last_sent_version"] == st[n]["last_acked_version"]
                && st[n]["last_nack"].is_null()
        });
        if synced {
            break;
        }
        assert!(Instant::now() < deadline, "nodes not in sync: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Controller down: agents keep serving (static stability).
    ok(&["lab", "controller", "kill"]);
    std::thread::sleep(Duration::from_millis(500));
    wait_enrolled("node-a", &["client", "excl"]);
    let before = stat("node-a", "connect_redirected");
    curl(
        "meshed",
        "client",
        &format!("http://{}:8080/", pod_ip("plain", "server-b")),
    );
    assert!(
        stat("node-a", "connect_redirected") > before,
        "capture keeps working without the controller"
    );
    // A change made while it is down arrives once it is back.
    let dir = tempdir();
    let ns = dir.join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n  annotations: {weft.dev/mesh: enabled}\n").unwrap();
    ok(&["lab", "apply", "-f", ns.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !bpf("pods", "node-a")
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "outsider"),
        "no controller, no change"
    );
    ok(&["lab", "controller", "start"]);
    wait_enrolled("node-a", &["client", "excl", "outsider"]);
    let _ = std::fs::remove_dir_all(dir);
}
