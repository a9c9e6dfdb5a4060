//! CRD generation and parsing tests.
use serde_json::{Value, json};

use super::*;

fn yaml(s: &str) -> Value {
    serde_yaml::from_str(s).expect("yaml")
}

/// Every schema node must have a type (or preserve-unknown-fields / int-or-string), and no
/// `anyOf`/`oneOf`/`$ref` may survive: the API server rejects non-structural schemas.
fn assert_structural(schema: &Value, path: &str) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    for bad in ["$ref", "anyOf", "oneOf", "allOf", "definitions", "$defs"] {
        assert!(!obj.contains_key(bad), "{path}: has {bad}: {schema}");
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    assert!(
        obj.get("type").is_some_and(Value::is_string) || preserve || int_or_string,
        "{path}: no type: {schema}"
    );
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(ap, &format!("{path}{{}}"));
    }
}

#[test]
fn crds_have_all_versions_and_structural_schemas() {
    let crds = all_crds();
    assert_eq!(crds.len(), 7);
    let names: Vec<_> = crds
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for crd in &crds {
        let expected: &[&str] = if crd.spec.group == NETWORKING_GROUP {
            NETWORKING_VERSIONS
        } else {
            SECURITY_VERSIONS
        };
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, expected, "{:?}", crd.metadata.name);
        let storage: Vec<_> = crd.spec.versions.iter().filter(|v| v.storage).collect();
        assert_eq!(storage.len(), 1);
        assert_eq!(storage[0].name, "v1");
        assert!(crd.spec.versions.iter().all(|v| v.served));
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json");
        let spec = &schema["properties"]["spec"];
        assert_structural(spec, "spec");
    }
}

#[test]
fn crds_yaml_is_stable_and_has_cel_rules() {
    let a = crds_yaml();
    assert_eq!(a, crds_yaml());
    assert_eq!(a.matches("---\n").count(), 7);
    assert!(a.contains("duration(self) >= duration('1ms')"));
    assert!(a.contains("portLevelMtls requires selector"));
    assert!(a.contains("only one of targetRefs or selector can be set"));
    assert!(a.contains("name: virtualservices.networking.istio.io"));
    assert!(a.contains("- vs"));
    // Each document parses back as a CRD.
    for doc in serde_yaml::Deserializer::from_str(&a) {
        let v = serde_json::Value::deserialize(doc).expect("doc");
        let _: CustomResourceDefinition = serde_json::from_value(v).expect("crd");
    }
}
use serde::Deserialize;

#[test]
fn weight_minimum_and_http_status_range_in_schema() {
    let vs = serde_json::to_string(&VirtualService::crd()).expect("json");
    assert!(
        vs.contains(r#""weight":{"format":"int32","minimum":0"#) || vs.contains(r#""minimum":0"#)
    );
    assert!(vs.contains(r#""maximum":599"#));
    assert!(vs.contains("x-kubernetes-preserve-unknown-fields"));
}

const REVIEWS_VS: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: demo
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx"}
    timeout: 1.5s
    corsPolicy: {allowOrigins: [{exact: "https://x"}]}
"#;

#[test]
fn parses_virtual_service_any_version() {
    let r = parse_resource(&yaml(REVIEWS_VS))
        .expect("mesh kind")
        .expect("valid");
    let MeshResource::VirtualService(vs) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(r.display_name(), "VirtualService demo/reviews");
    assert_eq!(vs.spec.http.len(), 2);
    assert_eq!(
        vs.spec.http[0].matches[0].headers["end-user"]
            .exact
            .as_deref(),
        Some("jason")
    );
    assert_eq!(vs.spec.http[1].route[1].weight, Some(50));
    assert_eq!(
        vs.spec.http[1].timeout.as_ref().map(|d| d.parse()),
        Some(Ok(std::time::Duration::from_millis(1500)))
    );
    assert!(vs.spec.http[1].cors_policy.is_some());
}

#[test]
fn not_a_mesh_kind() {
    for v in [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}),
        json!({"apiVersion": "example.com/v1", "kind": "VirtualService"}),
        json!({"kind": "VirtualService"}),
        json!("scalar"),
    ] {
        assert!(parse_resource(&v).is_none(), "{v}");
    }
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"r"},
               "spec":{"http":[{"route":[{"destination":{"host":"a"}},{"destination":{"host":"b"},"weight":"x"}]}]}}"#,
            "spec.http[0].route[1].weight: invalid type: string \"x\"",
        ),
        (
            r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"r"},
               "spec":{"http":[{"route":[{"destination":{"subset":"v1"}}]}]}}"#,
            "spec.http[0].route[0].destination: missing field `host`",
        ),
        (
            r#"{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"r"},
               "spec":{"mtls":{"mode":"STRICTEST"}}}"#,
            "spec.mtls.mode: unknown variant `STRICTEST`",
        ),
        (
            r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"r"},
               "spec":{"http":[{"rout":[]}, {"rooute":[{"a":1}]}]}}"#,
            "spec.http[1].rooute: unknown field \"rooute\"",
        ),
        (
            r#"{"apiVersion":"networking.istio.io/v2","kind":"VirtualService","metadata":{"name":"r"},"spec":{}}"#,
            "apiVersion: VirtualService is served as networking.istio.io/v1",
        ),
    ];
    for (input, want) in cases {
        let v: Value = serde_json::from_str(input).expect("json");
        let err = parse_resource(&v).expect("mesh kind").expect_err("invalid");
        assert!(err.starts_with(want), "got {err:?}, want prefix {want:?}");
    }
}

#[test]
fn parses_security_kinds() {
    let pa = yaml(
        r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: p, namespace: demo}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"#,
    );
    let r = parse_resource(&pa).expect("kind").expect("valid");
    let MeshResource::PeerAuthentication(pa) = r else {
        panic!()
    };
    assert_eq!(pa.spec.port_level_mtls.len(), 1);
    assert!(pa.spec.port_level_mtls.contains_key(&8080));

    let ap = yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [demo], ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {methods: [POST], notPaths: ["/health*"], ports: ["8080"]}}]
    when: [{key: "request.headers[x-token]", values: ["a"]}]
"#,
    );
    let r = parse_resource(&ap).expect("kind").expect("valid");
    let MeshResource::AuthorizationPolicy(ap) = r else {
        panic!()
    };
    assert_eq!(ap.spec.action, Some(security::AuthorizationAction::Deny));
    assert_eq!(ap.spec.rules.as_ref().map(Vec::len), Some(1));

    let ra = yaml(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: x}}
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://example.com/jwks.json"
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
"#,
    );
    let r = parse_resource(&ra).expect("kind").expect("valid");
    assert_eq!(r.namespace(), "default");
}

#[test]
fn parses_destination_rule_and_service_entry() {
    let dr = yaml(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 1024}}
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 30ms, tcpKeepalive: {time: 7200s}}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, idleTimeout: 1h}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"#,
    );
    let r = parse_resource(&dr).expect("kind").expect("valid");
    let MeshResource::DestinationRule(dr) = r else {
        panic!()
    };
    let tp = dr.spec.traffic_policy.expect("tp");
    assert_eq!(
        tp.outlier_detection.and_then(|o| o.consecutive_5xx_errors),
        Some(1)
    );
    assert!(
        tp.connection_pool
            .and_then(|c| c.tcp)
            .and_then(|t| t.tcp_keepalive)
            .is_some()
    );

    let se = yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google}
spec:
  hosts: [www.googleapis.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
  location: MESH_EXTERNAL
"#,
    );
    assert!(parse_resource(&se).expect("kind").is_ok());
}

#[test]
fn parses_gamma_http_route() {
    let hr = yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: demo}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: end-user, value: jason}]
      queryParams: [{type: RegularExpression, name: q, value: "^a.*"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-b]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 80}, percent: 10}
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - name: reviews-v2
      port: 9080
      weight: 10
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {add: [{name: x-v, value: "2"}]}
    timeouts: {request: 10s, backendRequest: 2s}
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /x}}
"#,
    );
    let r = parse_resource(&hr).expect("kind").expect("valid");
    let MeshResource::HttpRoute(hr) = r else {
        panic!()
    };
    assert!(hr.spec.parent_refs[0].is_service());
    assert_eq!(hr.spec.rules[0].backend_refs[1].weight, Some(10));

    let gr = yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: foo.Bar, method: Baz}}]
    backendRefs: [{name: echo-v1, port: 7070}]
"#,
    );
    assert!(parse_resource(&gr).expect("kind").is_ok());
}

#[test]
fn serialization_round_trips() {
    let v = yaml(REVIEWS_VS);
    let r = parse_resource(&v).expect("kind").expect("valid");
    let MeshResource::VirtualService(vs) = r else {
        panic!()
    };
    let back = serde_json::to_value(&vs).expect("json");
    assert_eq!(back["spec"], v["spec"]);
    assert_eq!(back["apiVersion"], "networking.istio.io/v1");
}

#[test]
fn durations() {
    for (s, ok) in [
        ("1.5s", true),
        ("300ms", true),
        ("1h30m", true),
        ("1ms", true),
        ("999us", false),
        ("0s", false),
        ("-1s", false),
        ("10", false),
        ("abc", false),
    ] {
        assert_eq!(GoDuration::from(s).parse().is_ok(), ok, "{s}");
    }
}

#[test]
fn status_written_by_controllers_is_not_user_input() {
    // Weft's own status conditions come back on every watched object in kube mode.
    let v = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "demo"},
        "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}], "observedGeneration": 2}
    });
    assert!(matches!(
        crate::crd::parse_resource(&v),
        Some(Ok(crate::crd::MeshResource::VirtualService(_)))
    ));
    let crds = crate::crd::crds_yaml();
    assert_eq!(
        crds.matches("subresources:").count(),
        4 * 3 + 3 * 2,
        "status subresource on every served version"
    );
}
