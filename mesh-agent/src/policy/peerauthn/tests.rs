use std::collections::{BTreeMap, HashMap};

use super::*;

use peer_authn::Mode::{Disable as D, Permissive as P, Strict as S, Unset as U};

fn pa(ns: &str, name: &str, mode: peer_authn::Mode) -> PeerAuthn {
    PeerAuthn {
        name: name.into(),
        namespace: ns.into(),
        scope: if ns == "istio-system" {
            PolicyScope::Mesh
        } else {
            PolicyScope::Namespace
        } as i32,
        mode: mode as i32,
        ..Default::default()
    }
}

fn sel(
    name: &str,
    app: &str,
    mode: peer_authn::Mode,
    ports: &[(u32, peer_authn::Mode)],
) -> PeerAuthn {
    PeerAuthn {
        name: name.into(),
        namespace: "demo".into(),
        scope: PolicyScope::WorkloadSelector as i32,
        selector: HashMap::from([("app".to_string(), app.to_string())]),
        mode: mode as i32,
        port_level_mtls: ports.iter().map(|(p, m)| (*p, *m as i32)).collect(),
    }
}

/// (name, policies, port, want mode, want decided_by)
type Case = (
    &'static str,
    Vec<PeerAuthn>,
    u16,
    Mode,
    Option<&'static str>,
);

#[test]
fn effective_modes() {
    let labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
    let cases: Vec<Case> = vec![
        ("default PERMISSIVE", vec![], 9080, Mode::Permissive, None),
        (
            "mesh STRICT",
            vec![pa("istio-system", "default", S)],
            9080,
            Mode::Strict,
            Some("istio-system/default"),
        ),
        (
            "mesh UNSET → default",
            vec![pa("istio-system", "default", U)],
            9080,
            Mode::Permissive,
            None,
        ),
        (
            "namespace overrides mesh",
            vec![pa("istio-system", "default", S), pa("demo", "ns", P)],
            9080,
            Mode::Permissive,
            Some("demo/ns"),
        ),
        (
            "namespace UNSET inherits mesh",
            vec![pa("istio-system", "default", S), pa("demo", "ns", U)],
            9080,
            Mode::Strict,
            Some("istio-system/default"),
        ),
        (
            "workload overrides namespace",
            vec![pa("demo", "ns", P), sel("w", "reviews", S, &[])],
            9080,
            Mode::Strict,
            Some("demo/w"),
        ),
        (
            "workload overrides namespace and mesh (any order)",
            vec![
                sel("w", "reviews", P, &[]),
                pa("demo", "ns", S),
                pa("istio-system", "default", S),
            ],
            9080,
            Mode::Permissive,
            Some("demo/w"),
        ),
        (
            "workload UNSET inherits namespace",
            vec![pa("demo", "ns", S), sel("w", "reviews", U, &[])],
            9080,
            Mode::Strict,
            Some("demo/ns"),
        ),
        (
            "workload UNSET, namespace UNSET inherit mesh",
            vec![
                pa("istio-system", "default", S),
                pa("demo", "ns", U),
                sel("w", "reviews", U, &[]),
            ],
            9080,
            Mode::Strict,
            Some("istio-system/default"),
        ),
        (
            "selector not matching is skipped",
            vec![pa("demo", "ns", S), sel("w", "ratings", P, &[])],
            9080,
            Mode::Strict,
            Some("demo/ns"),
        ),
        (
            "port-level override",
            vec![sel("w", "reviews", S, &[(9080, P)])],
            9080,
            Mode::Permissive,
            Some("demo/w port 9080"),
        ),
        (
            "port-level, another port keeps the workload mode",
            vec![sel("w", "reviews", S, &[(9080, P)])],
            9443,
            Mode::Strict,
            Some("demo/w"),
        ),
        (
            "port-level STRICT under an inherited PERMISSIVE",
            vec![pa("demo", "ns", P), sel("w", "reviews", U, &[(9443, S)])],
            9443,
            Mode::Strict,
            Some("demo/w port 9443"),
        ),
        (
            "port-level PERMISSIVE under an inherited mesh STRICT",
            vec![
                pa("istio-system", "default", S),
                sel("w", "reviews", U, &[(9080, P)]),
            ],
            9080,
            Mode::Permissive,
            Some("demo/w port 9080"),
        ),
        (
            "port-level UNSET inherits",
            vec![pa("demo", "ns", S), sel("w", "reviews", U, &[(9080, U)])],
            9080,
            Mode::Strict,
            Some("demo/ns"),
        ),
        (
            "port-level on a namespace policy is ignored",
            vec![{
                let mut p = pa("demo", "ns", S);
                p.port_level_mtls = HashMap::from([(9080, P as i32)]);
                p
            }],
            9080,
            Mode::Strict,
            Some("demo/ns"),
        ),
        (
            "DISABLE is reported as such",
            vec![pa("demo", "ns", D)],
            9080,
            Mode::Disable,
            Some("demo/ns"),
        ),
        (
            "two namespace policies: smallest name wins",
            vec![pa("demo", "zz", S), pa("demo", "aa", P)],
            9080,
            Mode::Permissive,
            Some("demo/aa"),
        ),
        (
            "two workload policies: smallest name wins, with its ports",
            vec![
                sel("b", "reviews", P, &[]),
                sel("a", "reviews", S, &[(9080, D)]),
            ],
            9080,
            Mode::Disable,
            Some("demo/a port 9080"),
        ),
        (
            "selector with no labels counts as namespace level",
            vec![
                PeerAuthn {
                    selector: HashMap::new(),
                    ..sel("empty-sel", "x", P, &[])
                },
                sel("w", "reviews", U, &[]),
            ],
            9080,
            Mode::Permissive,
            Some("demo/empty-sel"),
        ),
    ];
    for (name, pas, port, mode, by) in cases {
        let got = effective(&pas, &labels, port);
        assert_eq!(got.mode, mode, "{name}: {got:?}");
        assert_eq!(got.decided_by.as_deref(), by, "{name}");
        assert_eq!(effective_mode(&pas, &labels, port), mode, "{name}");
    }
}

#[test]
fn plaintext_acceptance() {
    assert!(!Mode::Strict.accepts_plaintext());
    assert!(Mode::Permissive.accepts_plaintext());
    assert!(Mode::Disable.accepts_plaintext());
    assert_eq!(Mode::Disable.as_str(), "DISABLE");
}

#[test]
fn validation() {
    assert!(validate("peerauthn/demo/w", &sel("w", "reviews", S, &[(9080, P)])).is_ok());
    let mut bad = pa("demo", "ns", S);
    bad.mode = 9;
    let e = validate("peerauthn/demo/ns", &bad).expect_err("mode");
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("peerauthn/demo/ns", "mode")
    );
    let mut bad = sel("w", "reviews", S, &[]);
    bad.port_level_mtls = HashMap::from([(9080, 7)]);
    assert_eq!(
        validate("peerauthn/demo/w", &bad)
            .expect_err("port mode")
            .field,
        "port_level_mtls[9080]"
    );
    let bad = sel("w", "reviews", S, &[(0, P)]);
    assert!(validate("peerauthn/demo/w", &bad).is_err());
}
