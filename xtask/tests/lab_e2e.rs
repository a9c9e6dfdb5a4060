//! Lab end-to-end tests (root). They drive `cargo xtask lab …` exactly as a user does, with the
//! workspace binaries prebuilt by `cargo xtask test` (WEFT_LAB_NO_BUILD=1). One lab at a time:
//! run with `--test-threads=1`. Each test starts from `lab down` and leaves nothing behind.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use common::*;
use serde_json::Value;

#[test]
fn example_app_serves_across_nodes_and_spreads_over_backends() {
    let _lab = LabGuard::up();
    ok(&["lab", "apply", "-f", "examples/"]);

    let st = status();
    let nodes: BTreeSet<&str> = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "pods are scheduled on both nodes: {st}");
    let backends = pods_with("backend");
    assert_eq!(backends.len(), 3);
    let backend_names: BTreeSet<String> = backends
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();

    // Each pod lives in a kubelet-style cgroup and its own netns.
    for p in st["pods"].as_array().unwrap() {
        let cg = p["cgroup"].as_str().unwrap();
        assert!(
            cg.contains(&format!(
                "/weft-lab/{}/kubepods/pod{}",
                p["node"].as_str().unwrap(),
                p["uid"].as_str().unwrap()
            )),
            "{cg}"
        );
        assert!(Path::new(cg).join("cgroup.procs").exists());
    }

    let client = client_pod();
    // curl through the ClusterIP by short name returns a backend's echo JSON.
    let v = client_json(&client, &["-n", "1", "http://backend:8080/"]);
    let pod = v["pods"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert!(backend_names.contains(&pod), "{pod} is a backend pod");
    let body = exec(&client, &["curl", "-sf", "http://backend:8080/hello?x=1"]);
    let echo: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["namespace"], "demo");
    let client_ip = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == client.as_str())
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        echo["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{client_ip}:")),
        "the server sees the client pod's IP: {echo}"
    );

    // Every name form resolves.
    for host in [
        "backend",
        "backend.demo",
        "backend.demo.svc",
        "backend.demo.svc.cluster.local",
    ] {
        client_json(&client, &["-n", "1", &format!("http://{host}:8080/")]);
    }

    // New connections spread over all backend pods (kube-proxy picks per connection).
    let v = client_json(
        &client,
        &[
            "-n",
            "300",
            "-c",
            "4",
            "-H",
            "connection: close",
            "http://backend:8080/",
        ],
    );
    let served: BTreeSet<String> = v["pods"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(served, backend_names, "all backend pods served: {v}");
    let versions: BTreeMap<String, u64> = serde_json::from_value(v["versions"].clone()).unwrap();
    assert!(versions["v1"] > 0 && versions["v2"] > 0, "{versions:?}");

    // The frontend calls the backend (two hops through ClusterIPs).
    let v = client_json(
        &client,
        &[
            "-n",
            "60",
            "-H",
            "connection: close",
            "http://frontend:8080/",
        ],
    );
    let up: u64 = v["upstream_pods"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(up, 60, "{v}");

    // TCP service port, and the ClusterIP from a node's own netns (kube-proxy's output chain).
    client_json(&client, &["--tcp", "-n", "5", "tcp://backend:9000"]);
    let svc_ip = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "backend")
        .unwrap()["cluster_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ok(&[
        "lab",
        "exec-node",
        "node-a",
        "--",
        "curl",
        "-sf",
        &format!("http://{svc_ip}:8080/"),
    ]);
    assert!(out.contains("\"namespace\":\"demo\""), "{out}");
}

#[test]
fn malformed_manifests_are_refused_with_file_document_and_field() {
    let _lab = LabGuard::up();
    ok(&["lab", "apply", "-f", "examples/00-namespace.yaml"]);
    let dir = tempdir();
    let cases = [
        (
            "bad-yaml.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
            "document 1",
            "invalid YAML",
        ),
        (
            "no-selector.yaml",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: fine, namespace: demo}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\nspec:\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, command: [sleep, infinity]}]}\n",
            "document 2 (Deployment/d)",
            "field `spec.selector`",
        ),
        (
            "port-field.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  selector: {app: s}\n  ports:\n  - port: 80\n    targetPortt: 8080\n",
            "document 1 (Service/s)",
            "field `spec.ports[0].targetPortt`",
        ),
    ];
    for (file, text, doc, field) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let out = xtask(&["lab", "apply", "-f", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} must be refused");
        assert!(
            err.contains(file) && err.contains(doc) && err.contains(field),
            "{file}: message names file, document and field: {err}"
        );
    }
    // The lab keeps running; the good document of the mixed file was applied, the bad one was not.
    let st = status();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 2);
    let cluster = std::fs::read_dir("/run/weft-lab/cluster")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        cluster.iter().any(|f| f == "serviceaccount-demo-fine.yaml"),
        "{cluster:?}"
    );
    assert!(
        !cluster.iter().any(|f| f.starts_with("deployment-demo-d")),
        "{cluster:?}"
    );
    assert!(
        !cluster.iter().any(|f| f == "service-demo-s.yaml"),
        "{cluster:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rollouts_scaling_metadata_updates_and_delete() {
    let _lab = LabGuard::up();
    ok(&["lab", "apply", "-f", "examples/"]);
    let before: BTreeSet<String> = pods_with("backend")
        .iter()
        .map(|p| p["uid"].as_str().unwrap().to_string())
        .collect();

    // Annotating the namespace restarts nothing.
    let dir = tempdir();
    let ns = dir.join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  annotations: {weft.dev/mesh: enabled}\n").unwrap();
    let out = ok(&["lab", "apply", "-f", ns.to_str().unwrap()]);
    assert!(out.contains("namespace/demo configured"), "{out}");
    let after: BTreeSet<String> = pods_with("backend")
        .iter()
        .map(|p| p["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before, after, "no pod was restarted");
    assert!(
        std::fs::read_to_string("/run/weft-lab/cluster/namespace-_-demo.yaml")
            .unwrap()
            .contains("weft.dev/mesh")
    );

    // Scaling v1 to 3 adds one pod and keeps the others.
    let scaled = std::fs::read_to_string(root().join("examples/10-backend.yaml"))
        .unwrap()
        .replacen("replicas: 2", "replicas: 3", 1);
    let f = dir.join("backend.yaml");
    std::fs::write(&f, &scaled).unwrap();
    ok(&["lab", "apply", "-f", f.to_str().unwrap()]);
    let now: BTreeSet<String> = pods_with("backend")
        .iter()
        .map(|p| p["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(now.len(), 4);
    assert!(before.is_subset(&now));
    let eps = status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "backend")
        .unwrap()["ports"][0]["endpoints"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(eps, 4, "the Service's endpoints follow the pods");

    // A template change rolls the Deployment's pods.
    std::fs::write(
        &f,
        scaled.replacen(
            "{name: VERSION, value: v2}",
            "{name: VERSION, value: v2b}",
            1,
        ),
    )
    .unwrap();
    ok(&["lab", "apply", "-f", f.to_str().unwrap()]);
    let v2: Vec<Value> = pods_with("backend")
        .into_iter()
        .filter(|p| p["labels"]["version"] == "v2")
        .collect();
    assert_eq!(v2.len(), 1);
    assert!(
        !before.contains(v2[0]["uid"].as_str().unwrap()),
        "v2 pod was replaced"
    );

    // Deleting removes pods, their processes and namespaces.
    let gone = pods_with("backend");
    ok(&["lab", "delete", "-f", f.to_str().unwrap()]);
    assert!(pods_with("backend").is_empty());
    for p in gone {
        assert!(!Path::new(p["cgroup"].as_str().unwrap()).exists());
        assert!(
            !Path::new("/run/netns")
                .join(p["netns"].as_str().unwrap())
                .exists()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn up_twice_is_refused_and_down_leaves_nothing() {
    let lab = LabGuard::up();
    ok(&["lab", "apply", "-f", "examples/"]);
    let out = xtask(&["lab", "up"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    drop(lab);
    ok(&["lab", "down"]); // twice is fine
    assert!(lab_netns().is_empty(), "{:?}", lab_netns());
    assert!(!cgroup_root().exists());
    assert!(!Path::new("/run/weft-lab").exists());
    // Killed processes may still be exiting for a moment, then linger as zombies until their new
    // parent (init) reaps them: neither is a survivor. Bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let survivors = lab_processes();
        if survivors.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lab process survives `lab down`: {survivors:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
