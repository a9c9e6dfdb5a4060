use mesh_common::proto::config::{AuthzRule, AuthzSource, authorization::Action, peer_authn};

use super::*;

fn authz(
    ns: &str,
    name: &str,
    action: Action,
    scope: PolicyScope,
    rules: Vec<AuthzRule>,
) -> Resource {
    Resource {
        name: format!("authz/{ns}/{name}"),
        kind: Some(Kind::Authorization(Authorization {
            name: name.into(),
            namespace: ns.into(),
            action: action as i32,
            scope: scope as i32,
            selector: if scope == PolicyScope::WorkloadSelector {
                HashMap::from([("app".to_string(), "reviews".to_string())])
            } else {
                HashMap::new()
            },
            rules,
            ..Default::default()
        })),
    }
}

fn pa(ns: &str, name: &str, scope: PolicyScope, mode: peer_authn::Mode) -> Resource {
    Resource {
        name: format!("peerauthn/{ns}/{name}"),
        kind: Some(Kind::PeerAuthn(PeerAuthn {
            name: name.into(),
            namespace: ns.into(),
            scope: scope as i32,
            selector: if scope == PolicyScope::WorkloadSelector {
                HashMap::from([("app".to_string(), "reviews".to_string())])
            } else {
                HashMap::new()
            },
            mode: mode as i32,
            port_level_mtls: HashMap::new(),
        })),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn reviews() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), "reviews".to_string())])
}

fn resources() -> BTreeMap<String, Resource> {
    let only_pp = vec![AuthzRule {
        from: vec![AuthzSource {
            principals: names(&["cluster.local/ns/demo/sa/productpage"]),
            ..Default::default()
        }],
        ..Default::default()
    }];
    [
        authz(
            "demo",
            "allow-pp",
            Action::Allow,
            PolicyScope::WorkloadSelector,
            only_pp,
        ),
        authz(
            "other",
            "deny-all",
            Action::Deny,
            PolicyScope::Namespace,
            vec![AuthzRule::default()],
        ),
        pa(
            "istio-system",
            "default",
            PolicyScope::Mesh,
            peer_authn::Mode::Strict,
        ),
        pa(
            "demo",
            "reviews",
            PolicyScope::WorkloadSelector,
            peer_authn::Mode::Permissive,
        ),
        // Both kinds under one name.
        authz(
            "demo",
            "both",
            Action::Audit,
            PolicyScope::Namespace,
            vec![AuthzRule::default()],
        ),
        pa(
            "demo",
            "both",
            PolicyScope::Namespace,
            peer_authn::Mode::Unset,
        ),
        Resource {
            name: "workload/uid-1".into(),
            kind: Some(Kind::Workload(Workload::default())),
        },
    ]
    .into_iter()
    .map(|r| (r.name.clone(), r))
    .collect()
}

fn conn(id: Option<&str>, port: u16) -> Conn {
    Conn::new(
        id,
        "10.0.0.5".parse().expect("ip"),
        std::net::SocketAddr::new("10.0.1.7".parse().expect("ip"), port),
    )
}

#[test]
fn lookups() {
    let idx = PolicyIndex::from_resources(resources().values()).expect("index");
    assert_eq!(idx.len(), 6);
    let listed = names(&[
        "istio-system/default",
        "demo/reviews",
        "demo/allow-pp",
        "demo/both",
    ]);
    let (az, pas) = idx.for_workload(&listed, "demo", &reviews());
    let az: Vec<&str> = az.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(az, ["allow-pp", "both"]);
    let pas: Vec<&str> = pas.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pas, ["both", "reviews", "default"]);
    // A policy whose own scope excludes the workload is left out (other namespace, labels).
    let ratings = BTreeMap::from([("app".to_string(), "ratings".to_string())]);
    let listed = names(&["other/deny-all", "demo/allow-pp", "demo/reviews"]);
    let (az, pas) = idx.for_workload(&listed, "demo", &ratings);
    assert!(az.is_empty() && pas.is_empty(), "{az:?} {pas:?}");
    assert!(idx.missing(&listed).is_empty());
    assert_eq!(
        idx.missing(&names(&["demo/gone", "demo/both"])),
        ["demo/gone"]
    );
}

#[test]
fn checks() {
    let idx = PolicyIndex::from_resources(resources().values()).expect("index");
    let listed = names(&[
        "demo/allow-pp",
        "demo/both",
        "demo/reviews",
        "istio-system/default",
    ]);
    let pp = Some("spiffe://cluster.local/ns/demo/sa/productpage");
    let sleep = Some("spiffe://cluster.local/ns/demo/sa/sleep");
    let cases = [
        (
            "allowed principal",
            pp,
            9080,
            true,
            "allowed by ALLOW policy demo/allow-pp rule 0",
        ),
        (
            "other principal",
            sleep,
            9080,
            false,
            "no ALLOW policy matched (demo/allow-pp)",
        ),
        // reviews is PERMISSIVE (workload over mesh STRICT): plaintext reaches authorization.
        (
            "plaintext, PERMISSIVE",
            None,
            9080,
            false,
            "no ALLOW policy matched",
        ),
    ];
    for (name, id, port, allowed, reason) in cases {
        let d = idx.check(&listed, "demo", &reviews(), &conn(id, port));
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert!(d.reason.contains(reason), "{name}: {d:?}");
        assert_eq!(d.audited, ["audited by demo/both rule 0"], "{name}");
    }
    assert_eq!(
        idx.mtls_mode(&listed, "demo", &reviews(), 9080),
        Mode::Permissive
    );

    // Without the workload policy the mesh STRICT applies: plaintext is refused before authz.
    let strict = names(&["istio-system/default"]);
    assert_eq!(
        idx.mtls_mode(&strict, "demo", &reviews(), 9080),
        Mode::Strict
    );
    let d = idx.check(&strict, "demo", &reviews(), &conn(None, 9080));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "plaintext connection to port 9080 refused: PeerAuthentication STRICT (istio-system/default)"
    );
    assert!(
        idx.check(&strict, "demo", &reviews(), &conn(pp, 9080))
            .allowed
    );

    // A listed policy that has not arrived: fail closed.
    let d = idx.check(&names(&["demo/gone"]), "demo", &reviews(), &conn(pp, 9080));
    assert_eq!(
        d.into_result(),
        Err("policy not received yet: demo/gone (fail closed)".into())
    );

    // No policies at all: allowed, PERMISSIVE.
    let w = Workload {
        namespace: "demo".into(),
        ..Default::default()
    };
    assert!(idx.check_workload(&w, &conn(None, 80)).allowed);
    assert_eq!(idx.mtls_mode(&[], "demo", &reviews(), 80), Mode::Permissive);
}

#[test]
fn malformed_resources_are_refused() {
    let mut rs = resources();
    let mut bad = authz("demo", "bad", Action::Allow, PolicyScope::Namespace, vec![]);
    if let Some(Kind::Authorization(a)) = &mut bad.kind {
        a.rules = vec![AuthzRule {
            from: vec![AuthzSource {
                not_ip_blocks: names(&["10.0.0.0/40"]),
                ..Default::default()
            }],
            ..Default::default()
        }];
    }
    rs.insert(bad.name.clone(), bad);
    let e = PolicyIndex::from_resources(rs.values()).expect_err("bad CIDR");
    assert_eq!(
        e.to_string(),
        "authz/demo/bad: rules[0].from[0].not_ip_blocks[0]: \"10.0.0.0/40\": prefix length must be 0-32"
    );

    let mut renamed = pa(
        "demo",
        "x",
        PolicyScope::Namespace,
        peer_authn::Mode::Strict,
    );
    renamed.name = "peerauthn/demo/y".into();
    let e = PolicyIndex::from_resources([&renamed]).expect_err("name");
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("peerauthn/demo/y", "name")
    );

    let mut bad_scope = pa(
        "demo",
        "s",
        PolicyScope::Namespace,
        peer_authn::Mode::Strict,
    );
    if let Some(Kind::PeerAuthn(p)) = &mut bad_scope.kind {
        p.scope = 99;
    }
    let e = PolicyIndex::from_resources([&bad_scope]).expect_err("scope");
    assert_eq!(e.field, "scope");
}
