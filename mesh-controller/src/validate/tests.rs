//! Table tests: one case per check.
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::crd::parse_resource;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo}
spec:
  selector: {app: reviews}
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: demo}
spec:
  selector: {app: ratings}
  ports: [{port: 9080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: demo}
spec:
  template:
    metadata: {labels: {app: reviews, version: v1}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-abc, namespace: demo, labels: {app: reviews, version: v2}}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-v1-abc, namespace: demo, labels: {app: ratings, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// Runs `validate` over CLUSTER plus `yaml`, returning the diagnostics whose severity is not Info
/// as `(severity, code, field)`, and all diagnostics.
fn run(yaml: &str) -> (Vec<(Severity, &'static str, String)>, Vec<Diagnostic>) {
    let mut cluster = ClusterView::default();
    let mut resources = Vec::new();
    let text = format!("{CLUSTER}\n---\n{yaml}");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).expect("yaml");
        if v.is_null() || cluster.add_object(&v) {
            continue;
        }
        let r = parse_resource(&v)
            .expect("mesh kind")
            .unwrap_or_else(|e| panic!("parse: {e}"));
        resources.push(r);
    }
    let all = validate(&resources, &cluster);
    let main = all
        .iter()
        .filter(|d| d.severity != Severity::Info)
        .map(|d| (d.severity, d.code, d.field.clone()))
        .collect();
    (main, all)
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: demo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

/// `(severity, code, field)` of one expected non-Info diagnostic.
type Expect = (Severity, &'static str, &'static str);

const E: Severity = Severity::Error;
const W: Severity = Severity::Warning;

#[test]
fn table() {
    let cases: Vec<(&str, String, Vec<Expect>)> = vec![
        (
            "valid split",
            vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v2}, weight: 50}\n"),
            vec![],
        ),
        (
            "single destination weight 0 is fine",
            vs("  - route:\n    - {destination: {host: reviews}, weight: 0}\n"),
            vec![],
        ),
        (
            "negative weight",
            vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: -10}\n    - {destination: {host: reviews, subset: v2}, weight: 110}\n"),
            vec![(E, "IST0106", "spec.http[0].route[0].weight")],
        ),
        (
            "total weight 0",
            vs("  - route:\n    - {destination: {host: reviews, subset: v1}}\n    - {destination: {host: reviews, subset: v2}, weight: 0}\n"),
            vec![(E, "IST0106", "spec.http[0].route")],
        ),
        (
            "route and redirect",
            vs("  - route:\n    - {destination: {host: reviews}}\n    redirect: {uri: /x}\n"),
            vec![(E, "IST0106", "spec.http[0]")],
        ),
        (
            "route and directResponse",
            vs("  - route:\n    - {destination: {host: reviews}}\n    directResponse: {status: 503}\n"),
            vec![(E, "IST0106", "spec.http[0]")],
        ),
        (
            "no action",
            vs("  - timeout: 1s\n"),
            vec![(E, "IST0106", "spec.http[0]")],
        ),
        (
            "fault without delay and abort",
            vs("  - route:\n    - {destination: {host: reviews}}\n    fault: {}\n"),
            vec![(E, "IST0106", "spec.http[0].fault")],
        ),
        (
            "abort status 700",
            vs("  - route:\n    - {destination: {host: reviews}}\n    fault: {abort: {httpStatus: 700, percentage: {value: 10}}}\n"),
            vec![(E, "IST0106", "spec.http[0].fault.abort.httpStatus")],
        ),
        (
            "fault without percentage",
            vs("  - route:\n    - {destination: {host: reviews}}\n    fault: {delay: {fixedDelay: 7s}}\n"),
            vec![(W, "WEFT0003", "spec.http[0].fault.delay.percentage")],
        ),
        (
            "percentage out of range",
            vs("  - route:\n    - {destination: {host: reviews}}\n    fault: {delay: {fixedDelay: 7s, percentage: {value: 150}}}\n"),
            vec![(E, "IST0106", "spec.http[0].fault.delay.percentage.value")],
        ),
        (
            "uri and uriRegexRewrite",
            vs("  - route:\n    - {destination: {host: reviews}}\n    rewrite: {uri: /a, uriRegexRewrite: {match: '^/b', rewrite: /c}}\n"),
            vec![(E, "IST0106", "spec.http[0].rewrite")],
        ),
        (
            "uriRegexRewrite without match, with a bad escape",
            vs("  - route:\n    - {destination: {host: reviews}}\n    rewrite: {uriRegexRewrite: {rewrite: '/\\q'}}\n"),
            vec![
                (E, "IST0106", "spec.http[0].rewrite.uriRegexRewrite.match"),
                (E, "IST0106", "spec.http[0].rewrite.uriRegexRewrite.rewrite"),
            ],
        ),
        (
            "uriRegexRewrite naming a missing group",
            vs("  - route:\n    - {destination: {host: reviews}}\n    rewrite: {uriRegexRewrite: {match: '^/(a)/(b)', rewrite: '/\\3'}}\n"),
            vec![(E, "IST0106", "spec.http[0].rewrite.uriRegexRewrite.rewrite")],
        ),
        (
            "uriRegexRewrite ok",
            vs("  - route:\n    - {destination: {host: reviews}}\n    rewrite: {uriRegexRewrite: {match: '^/(a)/(b)', rewrite: '/\\2/\\1'}}\n"),
            vec![],
        ),
        (
            "deprecated integer percent out of range",
            vs("  - route:\n    - {destination: {host: reviews}}\n    fault: {delay: {fixedDelay: 7s, percent: 101}}\n    mirror: {host: reviews}\n    mirrorPercent: 101\n"),
            vec![
                (E, "IST0106", "spec.http[0].fault.delay.percent"),
                (E, "IST0106", "spec.http[0].mirrorPercent"),
            ],
        ),
        (
            "negative attempts",
            vs("  - route:\n    - {destination: {host: reviews}}\n    retries: {attempts: -1}\n"),
            vec![(E, "IST0106", "spec.http[0].retries.attempts")],
        ),
        (
            "bad retryOn",
            vs("  - route:\n    - {destination: {host: reviews}}\n    retries: {attempts: 2, retryOn: \"5xx,bogus\"}\n"),
            vec![(E, "IST0106", "spec.http[0].retries.retryOn")],
        ),
        (
            "bad duration",
            vs("  - route:\n    - {destination: {host: reviews}}\n    timeout: 10 seconds\n"),
            vec![(E, "IST0106", "spec.http[0].timeout")],
        ),
        (
            "duration below 1ms",
            vs("  - route:\n    - {destination: {host: reviews}}\n    retries: {attempts: 1, perTryTimeout: 500us}\n"),
            vec![(E, "IST0106", "spec.http[0].retries.perTryTimeout")],
        ),
        (
            "bad regex",
            vs("  - match:\n    - uri: {regex: \"/api/(v1\"}\n    route:\n    - {destination: {host: reviews}}\n"),
            vec![(E, "IST0106", "spec.http[0].match[0].uri.regex")],
        ),
        (
            "uppercase header",
            vs("  - match:\n    - headers: {End-User: {exact: jason}}\n    route:\n    - {destination: {host: reviews}}\n"),
            vec![(E, "IST0106", "spec.http[0].match[0].headers.End-User")],
        ),
        (
            "two string match kinds",
            vs("  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - {destination: {host: reviews}}\n"),
            vec![(E, "IST0106", "spec.http[0].match[0].uri")],
        ),
        (
            "unknown subset",
            vs("  - route:\n    - {destination: {host: reviews, subset: v9}}\n"),
            vec![(E, "IST0101", "spec.http[0].route[0].destination.subset")],
        ),
        (
            "unknown host",
            vs("  - route:\n    - {destination: {host: nope}}\n"),
            vec![(E, "IST0101", "spec.http[0].route[0].destination.host")],
        ),
        (
            "unreachable after no-match rule",
            vs("  - route:\n    - {destination: {host: reviews}}\n  - match:\n    - uri: {prefix: /a}\n    route:\n    - {destination: {host: reviews}}\n"),
            vec![(W, "IST0131", "spec.http[1]")],
        ),
        (
            "unreachable after prefix / rule",
            vs("  - match:\n    - uri: {prefix: /}\n    route:\n    - {destination: {host: reviews}}\n  - route:\n    - {destination: {host: reviews}}\n"),
            vec![(W, "IST0131", "spec.http[1]")],
        ),
        (
            "catch-all last is fine",
            vs("  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - {destination: {host: reviews, subset: v2}}\n  - route:\n    - {destination: {host: reviews, subset: v1}}\n"),
            vec![],
        ),
        (
            "conflicting virtual services",
            format!(
                "{}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews-2, namespace: demo}}\nspec:\n  hosts: [reviews.demo.svc.cluster.local]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n",
                vs("  - route:\n    - {destination: {host: reviews}}\n")
            ),
            vec![(W, "IST0109", "spec.hosts")],
        ),
        (
            "virtual service shadowed by a GAMMA route",
            format!(
                "{}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: demo}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: reviews}}]\n  rules: [{{backendRefs: [{{name: reviews, port: 9080}}]}}]\n",
                vs("  - route:\n    - {destination: {host: reviews}}\n")
            ),
            vec![(W, "WEFT0004", "spec.hosts[0]")],
        ),
        (
            "subset selects no pods",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: demo}\nspec:\n  host: ratings\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n".to_string(),
            vec![(W, "IST0173", "spec.subsets[1].labels")],
        ),
        (
            "dr bad duration and lb conflict",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r2, namespace: demo}\nspec:\n  host: ratings\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}\n    outlierDetection: {interval: 1x}\n".to_string(),
            vec![
                (E, "IST0106", "spec.trafficPolicy.loadBalancer"),
                (E, "IST0106", "spec.trafficPolicy.outlierDetection.interval"),
            ],
        ),
        (
            "pa portLevelMtls without selector",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: demo}\nspec:\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n".to_string(),
            vec![(E, "IST0106", "spec.portLevelMtls")],
        ),
        (
            "empty selector",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: demo}\nspec:\n  selector: {matchLabels: {}}\n  mtls: {mode: STRICT}\n".to_string(),
            vec![(W, "IST0106", "spec.selector.matchLabels")],
        ),
        (
            "ap selector and targetRefs",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules: [{}]\n".to_string(),
            vec![(E, "IST0106", "spec.selector")],
        ),
        (
            "ap custom without provider",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  action: CUSTOM\n  rules: [{}]\n".to_string(),
            vec![(E, "IST0106", "spec.provider")],
        ),
        (
            "ap bad when key and port",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - to: [{operation: {ports: [\"http\"]}}]\n    when: [{key: source.color, values: [red]}]\n".to_string(),
            vec![
                (E, "IST0106", "spec.rules[0].to[0].operation.ports[0]"),
                (E, "IST0106", "spec.rules[0].when[0].key"),
            ],
        ),
        (
            "ap serviceAccounts with namespaces",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - from: [{source: {serviceAccounts: [demo/x], namespaces: [demo]}}]\n".to_string(),
            vec![(E, "IST0106", "spec.rules[0].from[0].source")],
        ),
        (
            "ra jwks and jwksUri",
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  jwtRules:\n  - {issuer: x, jwks: \"{}\", jwksUri: \"https://x\"}\n".to_string(),
            vec![(E, "IST0106", "spec.jwtRules[0]")],
        ),
        (
            "httproute valid",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: h, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  rules:\n  - backendRefs: [{name: reviews, port: 9080}]\n    timeouts: {request: 10s, backendRequest: 2s}\n".to_string(),
            vec![],
        ),
        (
            "httproute problems",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: h, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: nope}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: reviews}]\n    timeouts: {request: 1s, backendRequest: 2s}\n".to_string(),
            vec![
                (E, "IST0101", "spec.parentRefs[0].name"),
                (E, "IST0106", "spec.rules[0].matches[0].path.value"),
                (E, "IST0106", "spec.rules[0].backendRefs[0].port"),
                (E, "IST0106", "spec.rules[0].timeouts"),
            ],
        ),
    ];
    for (name, yaml, want) in cases {
        let (got, all) = run(&yaml);
        let want: Vec<(Severity, &str, String)> = want
            .into_iter()
            .map(|(s, c, f)| (s, c, f.to_string()))
            .collect();
        assert_eq!(got, want, "case {name:?}: all diagnostics: {all:#?}");
    }
}

#[test]
fn infos_for_unsupported_fields_and_disable() {
    let (main, all) = run(&format!(
        "{}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: demo}}\nspec:\n  mtls: {{mode: DISABLE}}\n",
        vs(
            "  - route:\n    - {destination: {host: reviews}}\n    corsPolicy: {allowOrigins: [{exact: \"https://a\"}]}\n    mirror: {host: ratings}\n    mirrors: [{destination: {host: ratings}}]\n    mirrorPercent: 5\n    retries: {attempts: 2, retryRemoteLocalities: true}\n"
        )
    ));
    assert!(main.is_empty(), "{all:#?}");
    let infos: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(
        infos.contains(
            &"Info [WEFT0001] (VirtualService demo/reviews) spec.http[0].retries.retryRemoteLocalities: not supported by Weft yet; the field is kept but not enforced"
                .to_string()
        ),
        "{infos:#?}"
    );
    assert!(
        !infos.iter().any(|s| s.contains("spec.http[0].mirror:")
            || s.contains("mirrors")
            || s.contains("mirrorPercent")
            || s.contains("corsPolicy")),
        "mirror, mirrors, mirrorPercent and corsPolicy are enforced: {infos:#?}"
    );
    assert!(infos.iter().any(|s| s.starts_with("Info [WEFT0002] (PeerAuthentication demo/p) spec.mtls.mode: mTLS mode DISABLE is not supported by Weft (treated as PERMISSIVE")));
}

#[test]
fn display_matches_istioctl() {
    let d = Diagnostic {
        code: "IST0106",
        severity: Severity::Error,
        object: "VirtualService demo/reviews".into(),
        field: "spec.http[0].route".into(),
        message: "total destination weight = 0".into(),
    };
    assert_eq!(
        d.to_string(),
        "Error [IST0106] (VirtualService demo/reviews) spec.http[0].route: total destination weight = 0"
    );
}

#[test]
fn no_cluster_data_skips_reference_checks() {
    let text = vs("  - route:\n    - {destination: {host: anything, subset: v1}}\n");
    let v: Value = serde_yaml::from_str(&text).expect("yaml");
    let r = parse_resource(&v).expect("kind").expect("valid");
    let out = validate(&[r], &ClusterView::default());
    // The subset is still unknown (no DestinationRule), the host is not checked.
    let fields: Vec<_> = out.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.http[0].route[0].destination.subset"]);
}

#[test]
fn host_resolution() {
    use super::cluster::{host_matches, resolve_host};
    assert_eq!(
        resolve_host("reviews", "demo"),
        "reviews.demo.svc.cluster.local"
    );
    assert_eq!(
        resolve_host("reviews.other.svc.cluster.local", "demo"),
        "reviews.other.svc.cluster.local"
    );
    assert_eq!(resolve_host("www.google.com", "demo"), "www.google.com");
    assert!(host_matches("*.google.com", "www.google.com"));
    assert!(!host_matches("*.google.com", "google.org"));
}

/// Shapes of Istio's own Bookinfo samples (`samples/bookinfo/networking/`), validated without a
/// cluster view.
#[test]
fn istio_bookinfo_samples() {
    let samples: [(&str, Vec<(&str, &str)>); 3] = [
        (
            // fault-injection-details-v1.yaml: the second rule can never match.
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: details}\nspec:\n  hosts: [details]\n  http:\n  - fault:\n      abort:\n        httpStatus: 555\n        percentage: {value: 100.0}\n    route:\n    - destination: {host: details, subset: v1}\n  - route:\n    - destination: {host: details, subset: v1}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: details}\nspec:\n  host: details\n  subsets:\n  - name: v1\n    labels: {version: v1}\n",
            vec![("IST0131", "spec.http[1]")],
        ),
        (
            // bookinfo-gateway.yaml: a gateway-bound VS with host "*".
            "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: bookinfo}\nspec:\n  hosts: [\"*\"]\n  gateways: [bookinfo-gateway]\n  http:\n  - match:\n    - uri: {exact: /productpage}\n    - uri: {prefix: /static}\n    route:\n    - destination:\n        host: productpage\n        port: {number: 9080}\n",
            vec![],
        ),
        (
            // destination-rule-all-mtls.yaml (one of its rules).
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n",
            vec![],
        ),
    ];
    for (yaml, want) in samples {
        let mut resources = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).expect("yaml");
            resources.push(parse_resource(&v).expect("kind").expect("valid"));
        }
        let got: Vec<(&str, String)> = validate(&resources, &ClusterView::default())
            .into_iter()
            .filter(|d| d.severity != Severity::Info)
            .map(|d| (d.code, d.field))
            .collect();
        let want: Vec<(&str, String)> = want.into_iter().map(|(c, f)| (c, f.to_string())).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn http_attributes_in_authorization_rules_are_reported() {
    let (main, all) = run(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n  - to: [{operation: {ports: [\"8080\"]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: demo}\nspec:\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n",
    );
    assert!(main.is_empty(), "{all:#?}");
    let infos: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(infos.iter().any(|s| s.starts_with("Info [WEFT0005] (AuthorizationPolicy demo/a) spec.rules[0]: uses HTTP attributes: on connections the proxy does not parse as HTTP this DENY rule applies without")), "{infos:#?}");
    assert!(
        !infos.iter().any(|s| s.contains("demo/a) spec.rules[1]")),
        "a port-only rule is L4: {infos:#?}"
    );
    assert!(infos.iter().any(|s| s.starts_with("Info [WEFT0005] (AuthorizationPolicy demo/b) spec.rules[0]: uses HTTP attributes: on connections the proxy does not parse as HTTP this ALLOW rule never matches")), "{infos:#?}");
}
