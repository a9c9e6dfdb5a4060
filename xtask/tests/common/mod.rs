//! Helpers shared by the lab end-to-end tests: drive `cargo xtask lab …` (the xtask binary) as a
//! user does, one lab at a time.
#![allow(dead_code, clippy::unwrap_used)] // test code: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running xtask")
}

pub fn ok(args: &[&str]) -> String {
    let out = xtask(args);
    assert!(
        out.status.success(),
        "xtask {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A lab for one test; torn down (and checked clean) on drop.
pub struct LabGuard;

impl LabGuard {
    pub fn up() -> LabGuard {
        assert!(
            nix::unistd::geteuid().is_root(),
            "lab tests need root: run them through `cargo xtask test`"
        );
        ok(&["lab", "down"]);
        ok(&["lab", "up"]);
        LabGuard
    }

    /// `lab up` with extra environment (e.g. `WEFT_LAB_CERT_TTL`) for the controller and agents.
    pub fn up_with_env(env: &[(&str, &str)]) -> LabGuard {
        assert!(
            nix::unistd::geteuid().is_root(),
            "lab tests need root: run them through `cargo xtask test`"
        );
        ok(&["lab", "down"]);
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["lab", "up"])
            .envs(env.iter().copied())
            .current_dir(root())
            .output()
            .expect("running xtask");
        assert!(
            out.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LabGuard
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = xtask(&["lab", "down"]);
        if !std::thread::panicking() {
            assert!(
                out.status.success(),
                "lab down: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn status() -> Value {
    serde_json::from_str(&ok(&["lab", "status", "--json"])).expect("status JSON")
}

pub fn pods_with(app: &str) -> Vec<Value> {
    status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter(|p| p["labels"]["app"] == app)
        .cloned()
        .collect()
}

pub fn client_pod() -> String {
    pods_with("client")[0]["name"]
        .as_str()
        .expect("client name")
        .to_string()
}

pub fn exec(pod: &str, cmd: &[&str]) -> String {
    exec_ns("demo", pod, cmd)
}

pub fn exec_ns(ns: &str, pod: &str, cmd: &[&str]) -> String {
    let mut args = vec!["lab", "exec", pod, "-n", ns, "--"];
    args.extend_from_slice(cmd);
    ok(&args)
}

/// mesh-client inside the client pod, retried (bounded) until every request got a 200.
pub fn client_json(pod: &str, args: &[&str]) -> Value {
    client_json_ns("demo", pod, args)
}

/// mesh-client inside a pod of namespace `ns`, retried (bounded) until every request succeeded.
pub fn client_json_ns(ns: &str, pod: &str, args: &[&str]) -> Value {
    let ok_key = if args.contains(&"--tcp") { "ok" } else { "200" };
    let mut last = Value::Null;
    for _ in 0..50 {
        let mut cmd = vec!["mesh-client"];
        cmd.extend_from_slice(args);
        cmd.push("--json");
        let v: Value =
            serde_json::from_str(exec_ns(ns, pod, &cmd).trim()).expect("mesh-client JSON");
        if v["status"][ok_key] == v["total"] {
            return v;
        }
        last = v;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("requests kept failing: {last}");
}

pub fn lab_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("wlab-"))
                .collect()
        })
        .unwrap_or_default()
}

pub fn cgroup_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(p).join("cgroup.procs").exists() {
            return Path::new(p).join("weft-lab");
        }
    }
    panic!("no cgroup v2 mount");
}

pub fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weft-e2e-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Live (non-zombie) processes whose cgroup is inside the lab's.
pub fn lab_processes() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains("/weft-lab/"))
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `mesh-agent bpf <what> --json` for a lab node (reads the node's pins).
pub fn bpf(what: &str, node: &str) -> Value {
    let out = Command::new(root().join("target/debug/mesh-agent"))
        .args([
            "bpf",
            what,
            "--json",
            "--node",
            node,
            "--state-dir",
            &format!("/run/weft-lab/agents/{node}"),
        ])
        .output()
        .expect("running mesh-agent bpf");
    assert!(
        out.status.success(),
        "mesh-agent bpf {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpf JSON")
}

pub fn stat(node: &str, counter: &str) -> u64 {
    bpf("stats", node)[counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {counter}"))
}

/// Runs `cmd` in a pod and returns (exit success, stdout).
pub fn try_exec_ns(ns: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["lab", "exec", pod, "-n", ns, "--"];
    args.extend_from_slice(cmd);
    let out = xtask(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn fixture(name: &str) -> String {
    root()
        .join("xtask/tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The IP of a lab pod.
pub fn pod_ip(ns: &str, name: &str) -> String {
    status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits (bounded) until the node agent enrolled `pods`.
pub fn wait_enrolled(node: &str, pods: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = bpf("pods", node);
        let enrolled: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["enrolled"] == true)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        if pods.iter().all(|p| enrolled.iter().any(|e| e == p)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pods {pods:?} not enrolled on {node}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP request from a pod; returns the echo JSON.
pub fn curl(ns: &str, pod: &str, url: &str) -> Value {
    let (ok, out) = try_exec_ns(ns, pod, &["curl", "-sf", "--max-time", "5", url]);
    assert!(ok, "curl {url} from {ns}/{pod} failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{url}: {e}: {out}"))
}
