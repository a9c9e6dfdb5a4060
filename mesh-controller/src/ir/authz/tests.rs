use super::*;
use crate::ir::{sorted, testutil::resources};

const AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

fn compile(yaml: &str) -> Vec<ScopedPolicy> {
    let services = [Service {
        name: "reviews".into(),
        namespace: "demo".into(),
        cluster_ip: None,
        selector: BTreeMap::from([("app".into(), "reviews".into())]),
        ports: vec![],
    }];
    authorizations(&sorted(resources(yaml)), &services, "istio-system")
}

fn authz(p: &ScopedPolicy) -> Authorization {
    match &p.resource.kind {
        Some(Kind::Authorization(a)) => a.clone(),
        other => panic!("{other:?}"),
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

#[test]
fn scopes() {
    let ps = compile(&format!(
        "{AP}metadata: {{name: mesh, namespace: istio-system}}\nspec: {{}}
---
{AP}metadata: {{name: ns, namespace: demo}}\nspec: {{action: DENY, rules: [{{}}]}}
---
{AP}metadata: {{name: sel, namespace: demo}}\nspec: {{selector: {{matchLabels: {{app: reviews}}}}, rules: [{{}}]}}
---
{AP}metadata: {{name: root-sel, namespace: istio-system}}\nspec: {{selector: {{matchLabels: {{app: reviews}}}}}}
---
{AP}metadata: {{name: target, namespace: demo}}\nspec: {{targetRefs: [{{group: '', kind: Service, name: reviews}}, {{group: gateway.networking.k8s.io, kind: Gateway, name: wp}}]}}
"
    ));
    let by_name: BTreeMap<String, &ScopedPolicy> = ps.iter().map(|p| (p.name.clone(), p)).collect();
    let cases = [
        ("istio-system/mesh", PolicyScope::Mesh),
        ("demo/ns", PolicyScope::Namespace),
        ("demo/sel", PolicyScope::WorkloadSelector),
        ("istio-system/root-sel", PolicyScope::WorkloadSelector),
        ("demo/target", PolicyScope::TargetRefs),
    ];
    for (name, scope) in cases {
        assert_eq!(authz(by_name[name]).scope, scope as i32, "{name}");
    }
    // Which workloads (namespace, app) each policy applies to.
    let workloads = [
        ("demo", "reviews"),
        ("demo", "ratings"),
        ("other", "reviews"),
    ];
    let applies = |name: &str| -> Vec<bool> {
        workloads
            .iter()
            .map(|(ns, app)| by_name[name].applies.applies(ns, &labels(app)))
            .collect()
    };
    assert_eq!(applies("istio-system/mesh"), [true, true, true]);
    assert_eq!(applies("demo/ns"), [true, true, false]);
    assert_eq!(applies("demo/sel"), [true, false, false]);
    assert_eq!(
        applies("istio-system/root-sel"),
        [true, false, true],
        "root namespace selector: every namespace"
    );
    assert_eq!(applies("demo/target"), [true, false, false]);
    assert_eq!(
        authz(by_name["demo/target"]).target_refs,
        ["Service/demo/reviews", "Gateway/demo/wp"]
    );
    assert_eq!(by_name["demo/ns"].resource.name, "authz/demo/ns");
}

#[test]
fn actions_and_empty_policies() {
    let ps = compile(&format!(
        "{AP}metadata: {{name: deny-all, namespace: demo}}\nspec: {{}}
---
{AP}metadata: {{name: allow-all, namespace: demo}}\nspec: {{rules: [{{}}]}}
---
{AP}metadata: {{name: deny, namespace: demo, annotations: {{istio.io/dry-run: 'true'}}}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [bad]}}}}]}}]}}
---
{AP}metadata: {{name: audit, namespace: demo}}\nspec: {{action: AUDIT, rules: [{{}}]}}
---
{AP}metadata: {{name: custom, namespace: demo}}\nspec: {{action: CUSTOM, provider: {{name: ext}}, rules: [{{}}]}}
"
    ));
    let got: Vec<(String, i32, usize, bool)> = ps
        .iter()
        .map(|p| {
            let a = authz(p);
            (a.name, a.action, a.rules.len(), a.dry_run)
        })
        .collect();
    use authorization::Action::*;
    assert_eq!(
        got,
        [
            ("allow-all".into(), Allow as i32, 1, false),
            ("audit".into(), Audit as i32, 1, false),
            ("custom".into(), Custom as i32, 1, false),
            ("deny".into(), Deny as i32, 1, true),
            // spec: {} = ALLOW with no rules: never matches, so denies everything in scope.
            ("deny-all".into(), Allow as i32, 0, false),
        ]
    );
    assert_eq!(authz(&ps[2]).provider, "ext");
}

#[test]
fn rules_and_l7_flag() {
    let ps = compile(&format!(
        "{AP}metadata: {{name: p, namespace: demo}}
spec:
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/web/sa/web]
        notNamespaces: [bad]
        ipBlocks: [10.0.0.0/8]
        notIpBlocks: [10.1.0.0/16]
        remoteIpBlocks: [1.2.3.4]
    to: [{{operation: {{ports: ['8080', 'x'], notPorts: ['9090']}}}}]
    when: [{{key: source.namespace, values: [web]}}]
  - to: [{{operation: {{methods: [GET], paths: [/api/*], notHosts: [a]}}}}]
  - from: [{{source: {{requestPrincipals: ['iss/sub']}}}}]
  - when: [{{key: 'request.headers[x-a]', values: ['1'], notValues: ['2']}}]
"
    ));
    let a = authz(&ps[0]);
    let l7: Vec<bool> = a.rules.iter().map(|r| r.l7).collect();
    assert_eq!(l7, [false, true, true, true]);
    let r0 = &a.rules[0];
    assert_eq!(r0.from[0].principals, ["cluster.local/ns/web/sa/web"]);
    assert_eq!(r0.from[0].not_namespaces, ["bad"]);
    assert_eq!(r0.from[0].ip_blocks, ["10.0.0.0/8"]);
    assert_eq!(r0.from[0].not_ip_blocks, ["10.1.0.0/16"]);
    assert_eq!(r0.from[0].remote_ip_blocks, ["1.2.3.4"]);
    assert_eq!(r0.to[0].ports, [8080], "invalid ports dropped");
    assert_eq!(r0.to[0].not_ports, [9090]);
    assert!(!r0.when[0].l7);
    assert_eq!(a.rules[1].to[0].methods, ["GET"]);
    assert_eq!(a.rules[1].to[0].paths, ["/api/*"]);
    assert_eq!(a.rules[1].to[0].not_hosts, ["a"]);
    assert_eq!(a.rules[2].from[0].request_principals, ["iss/sub"]);
    assert_eq!(a.rules[3].when[0].not_values, ["2"]);
}
