use super::*;
use crate::ir::{sorted, testutil::resources};

fn svc(ns: &str, name: &str) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        cluster_ip: None,
        selector: Default::default(),
        ports: vec![],
    }
}

/// Route tables by resource name.
fn tables(yaml: &str) -> BTreeMap<String, RouteTable> {
    let services = [
        svc("demo", "reviews"),
        svc("demo", "ratings"),
        svc("other", "x"),
    ];
    route_tables(&sorted(resources(yaml)), &services)
        .into_iter()
        .map(|r| match r.kind {
            Some(Kind::RouteTable(t)) => (r.name, t),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn one(yaml: &str) -> RouteTable {
    let t = tables(yaml);
    assert_eq!(t.len(), 1, "{:?}", t.keys());
    t.into_values().next().unwrap()
}

fn exact(s: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(string_match::Kind::Exact(s.into())),
    })
}
fn prefix(s: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(string_match::Kind::Prefix(s.into())),
    })
}
fn regex(s: &str) -> Option<StringMatch> {
    Some(StringMatch {
        kind: Some(string_match::Kind::Regex(s.into())),
    })
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: demo}\n";

/// Destinations of each http route: (host, subset, weight).
fn dests(t: &RouteTable) -> Vec<Vec<(String, String, u32)>> {
    t.http
        .iter()
        .map(|r| {
            r.destinations
                .iter()
                .map(|d| (d.host.clone(), d.subset.clone(), d.weight))
                .collect()
        })
        .collect()
}

#[test]
fn first_match_order_subsets_and_short_hosts() {
    let t = one(&format!(
        "{VS_HEAD}spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: rest
    route: [{{destination: {{host: reviews, subset: v1}}}}]
"
    ));
    assert_eq!(t.host, "reviews.demo.svc.cluster.local");
    assert!(!t.gateway_api, "VirtualService: unmatched → default route");
    assert_eq!(t.sources, vec!["VirtualService/demo/reviews"]);
    let names: Vec<_> = t.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["jason", "rest"], "first match order kept");
    let fq = "reviews.demo.svc.cluster.local".to_string();
    assert_eq!(
        dests(&t),
        vec![
            vec![(fq.clone(), "v2".into(), 100)],
            vec![(fq, "v1".into(), 100)]
        ]
    );
    assert_eq!(
        t.http[0].matches[0].headers,
        vec![KeyMatch {
            name: "end-user".into(),
            value: exact("jason")
        }]
    );
    assert_eq!(t.http[1].matches, vec![], "no match = every request");
    assert_eq!(
        t.http[1].origin,
        Some(Origin {
            object: "VirtualService/demo/reviews".into(),
            rule: 1,
            r#match: 0
        })
    );
}

#[test]
fn relative_weights() {
    let cases: [(&str, Vec<u32>); 4] = [
        (
            "[{destination: {host: reviews, subset: v1}, weight: 90}, {destination: {host: reviews, subset: v2}, weight: 10}]",
            vec![90, 10],
        ),
        ("[{destination: {host: reviews}}]", vec![100]),
        ("[{destination: {host: reviews}, weight: 0}]", vec![100]),
        (
            "[{destination: {host: reviews, subset: a}, weight: 1}, {destination: {host: reviews, subset: b}, weight: 1}, {destination: {host: reviews, subset: c}, weight: 2}]",
            vec![1, 1, 2],
        ),
    ];
    for (route, want) in cases {
        let t = one(&format!(
            "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: {route}\n"
        ));
        let got: Vec<u32> = t.http[0].destinations.iter().map(|d| d.weight).collect();
        assert_eq!(got, want, "{route}");
    }
}

#[test]
fn matches_translated() {
    let t = one(&format!(
        "{VS_HEAD}spec:
  hosts: [reviews.demo.svc.cluster.local]
  http:
  - match:
    - uri: {{prefix: /api}}
      ignoreUriCase: true
      method: {{exact: GET}}
      headers: {{x-a: {{regex: 'v[0-9]+'}}, x-present: {{}}}}
      withoutHeaders: {{x-b: {{prefix: no}}}}
      queryParams: {{q: {{exact: '1'}}}}
      authority: {{exact: reviews:9080}}
      port: 9080
      sourceLabels: {{app: productpage}}
      sourceNamespace: web
    - uri: {{regex: '/v[12]/.*'}}
    - uri: {{exact: /x}}
    route: [{{destination: {{host: ratings}}}}]
"
    ));
    let m = &t.http[0].matches;
    assert_eq!(m.len(), 3, "match blocks are ORed, one entry each");
    assert_eq!(m[0].uri, prefix("/api"));
    assert!(m[0].ignore_uri_case);
    assert!(
        !m[0].uri_prefix_by_segment,
        "Istio prefix is a string prefix"
    );
    assert_eq!(m[0].method, exact("GET"));
    assert_eq!(m[0].authority, exact("reviews:9080"));
    assert_eq!(
        m[0].headers,
        vec![
            KeyMatch {
                name: "x-a".into(),
                value: regex("v[0-9]+")
            },
            KeyMatch {
                name: "x-present".into(),
                value: Some(StringMatch { kind: None })
            },
        ]
    );
    assert_eq!(m[0].without_headers[0].value, prefix("no"));
    assert_eq!(m[0].query_params[0].value, exact("1"));
    assert_eq!(m[0].port, 9080);
    assert_eq!(m[0].source_labels["app"], "productpage");
    assert_eq!(m[0].source_namespace, "web");
    assert_eq!(m[1].uri, regex("/v[12]/.*"));
    assert_eq!(m[2].uri, exact("/x"));
    assert_eq!(
        t.http[0].destinations[0].host, "ratings.demo.svc.cluster.local",
        "short destination host resolved in the VirtualService's namespace"
    );
}

#[test]
fn short_hosts_resolve_in_the_virtual_service_namespace() {
    let t = tables(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: other}
spec:
  hosts: [reviews, reviews.demo.svc.cluster.local, api.example.com]
  http:
  - route: [{destination: {host: reviews}}]
",
    );
    let names: Vec<_> = t.keys().cloned().collect();
    assert_eq!(
        names,
        ["routes/demo/reviews", "routes/other/reviews"],
        "short name = other's reviews; FQDN = demo's; non-cluster hosts get no table"
    );
    assert_eq!(
        t["routes/demo/reviews"].http[0].destinations[0].host,
        "reviews.other.svc.cluster.local"
    );
}

#[test]
fn retries_defaults_and_attempts_zero() {
    let default_on: Vec<String> = DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect();
    type Case = (&'static str, u32, Vec<String>, Vec<u32>, Option<u64>);
    let cases: [Case; 5] = [
        ("", 2, default_on.clone(), vec![], None),
        ("    retries: {attempts: 0}\n", 0, vec![], vec![], None),
        (
            "    retries: {perTryTimeout: 1s}\n",
            0,
            vec![],
            vec![],
            None,
        ),
        (
            "    retries: {attempts: 3, perTryTimeout: 2s}\n",
            3,
            default_on,
            vec![],
            Some(2000),
        ),
        (
            "    retries: {attempts: 1, retryOn: '5xx,503,reset'}\n",
            1,
            vec![
                "5xx".into(),
                "reset".into(),
                "retriable-status-codes".into(),
            ],
            vec![503],
            None,
        ),
    ];
    for (retries, attempts, on, codes, per_try) in cases {
        let t = one(&format!(
            "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n{retries}"
        ));
        let r = t.http[0].retries.clone().unwrap();
        assert_eq!(
            (
                r.attempts,
                r.retry_on,
                r.retriable_status_codes,
                r.per_try_timeout_ms
            ),
            (attempts, on, codes, per_try),
            "{retries}"
        );
        assert_eq!(r.backoff_base_ms, 25);
        assert!(
            r.ignore_previous_hosts.is_none(),
            "Istio default: avoid tried hosts unless consistent hashing (decided by the agent)"
        );
    }
}

#[test]
fn retry_backoff_and_previous_hosts() {
    let t = one(&format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n    retries: {{attempts: 3, backoff: 100ms, retryIgnorePreviousHosts: false}}\n  - route: [{{destination: {{host: reviews}}}}]\n    retries: {{attempts: 3, retryIgnorePreviousHosts: true}}\n"
    ));
    let r = t.http[0].retries.clone().unwrap();
    assert_eq!(
        (r.backoff_base_ms, r.ignore_previous_hosts),
        (100, Some(false))
    );
    let r = t.http[1].retries.clone().unwrap();
    assert_eq!(
        (r.backoff_base_ms, r.ignore_previous_hosts),
        (25, Some(true))
    );
}

#[test]
fn timeout_unset_is_none() {
    let t = one(&format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n  - route: [{{destination: {{host: reviews}}}}]\n    timeout: 1.5s\n"
    ));
    assert_eq!(t.http[0].timeout_ms, None, "Istio: no default timeout");
    assert_eq!(t.http[1].timeout_ms, Some(1500));
}

#[test]
fn fault_percentages() {
    type Case = (
        &'static str,
        Option<(u64, f64)>,
        Option<(fault_abort::Status, f64)>,
    );
    let cases: [Case; 6] = [
        (
            "{delay: {fixedDelay: 7s, percentage: {value: 100}}}",
            Some((7000, 100.0)),
            None,
        ),
        // The deprecated integer `percent` counts when `percentage` is unset …
        (
            "{delay: {fixedDelay: 7s, percent: 30}}",
            Some((7000, 30.0)),
            None,
        ),
        // … and `percentage` wins when both are set.
        (
            "{delay: {fixedDelay: 7s, percent: 30, percentage: {value: 0.5}}}",
            Some((7000, 0.5)),
            None,
        ),
        ("{delay: {fixedDelay: 7s}}", Some((7000, 0.0)), None),
        (
            "{abort: {httpStatus: 555, percentage: {value: 0.5}}}",
            None,
            Some((fault_abort::Status::HttpStatus(555), 0.5)),
        ),
        (
            "{abort: {grpcStatus: UNAVAILABLE}}",
            None,
            Some((fault_abort::Status::GrpcStatus(14), 0.0)),
        ),
    ];
    for (fault, delay, abort) in cases {
        let t = one(&format!(
            "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n    fault: {fault}\n"
        ));
        let f = t.http[0].fault.unwrap();
        assert_eq!(
            f.delay.map(|d| (d.fixed_delay_ms, d.percentage)),
            delay,
            "{fault}"
        );
        assert_eq!(
            f.abort.map(|a| (a.status.unwrap(), a.percentage)),
            abort,
            "{fault}"
        );
    }
}

#[test]
fn rewrite_redirect_direct_response_headers_mirror() {
    let t = one(&format!(
        "{VS_HEAD}spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, authority: a.example, derivePort: FROM_REQUEST_PORT}}
  - match: [{{uri: {{prefix: /gone}}}}]
    directResponse: {{status: 410, body: {{bytes: aGk=}}}}
  - rewrite: {{uri: /v2, authority: reviews-v2}}
    headers:
      request: {{set: {{x-a: '1'}}, remove: [x-b]}}
      response: {{add: {{x-c: '2'}}}}
    mirror: {{host: ratings, subset: v2}}
    mirrorPercentage: {{value: 5}}
    mirrors:
    - destination: {{host: details, port: {{number: 9080}}}}
    - destination: {{host: ratings}}
      percentage: {{value: 20}}
    corsPolicy: {{allowOrigins: [{{exact: 'https://a'}}]}}
    route:
    - destination: {{host: reviews}}
      headers: {{request: {{set: {{x-d: '3'}}}}}}
"
    ));
    let rd = t.http[0].redirect.clone().unwrap();
    assert_eq!(
        (
            rd.path.as_str(),
            rd.authority.as_str(),
            rd.port_from_request,
            rd.code
        ),
        ("/new", "a.example", true, 301)
    );
    assert_eq!(
        t.http[1].direct_response,
        Some(DirectResponse {
            status: 410,
            body: b"hi".to_vec()
        })
    );
    let r = &t.http[2];
    assert_eq!(r.rewrite.as_ref().unwrap().uri, "/v2");
    assert_eq!(r.rewrite.as_ref().unwrap().authority, "reviews-v2");
    assert_eq!(r.request_headers.as_ref().unwrap().set["x-a"], "1");
    assert_eq!(r.request_headers.as_ref().unwrap().remove, vec!["x-b"]);
    assert_eq!(r.response_headers.as_ref().unwrap().add["x-c"], "2");
    assert_eq!(
        r.destinations[0].request_headers.as_ref().unwrap().set["x-d"],
        "3"
    );
    let m = r.mirror.clone().unwrap();
    assert_eq!(
        (m.host.as_str(), m.subset.as_str(), m.percentage),
        ("ratings.demo.svc.cluster.local", "v2", 5.0)
    );
    let more: Vec<(&str, u32, f64)> = r
        .mirrors
        .iter()
        .map(|m| (m.host.as_str(), m.port, m.percentage))
        .collect();
    assert_eq!(
        more,
        vec![
            ("details.demo.svc.cluster.local", 9080, 100.0),
            ("ratings.demo.svc.cluster.local", 0, 20.0)
        ],
        "mirrors: each its own percentage, default 100"
    );
    assert!(r.cors_policy_json.contains("allowOrigins"));
}

#[test]
fn uri_regex_rewrite_translated() {
    let t = one(&format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n    rewrite: {{uriRegexRewrite: {{match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}}}\n"
    ));
    let rw = t.http[0].rewrite.clone().unwrap();
    assert_eq!(
        (rw.regex_match.as_str(), rw.regex_substitution.as_str()),
        ("^/service/([^/]+)(/.*)$", "${2}/instance/${1}")
    );
    for (re2, want) in [
        ("/a", Ok("/a".to_string())),
        ("$1\\\\\\0", Ok("$$1\\${0}".to_string())),
        ("\\x", Err(())),
        ("x\\", Err(())),
    ] {
        assert_eq!(regex_substitution(re2).map_err(|_| ()), want, "{re2}");
    }
}

#[test]
fn deprecated_mirror_percent() {
    let pct = |extra: &str| {
        one(&format!(
            "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n    mirror: {{host: ratings}}\n{extra}"
        ))
        .http[0]
            .mirror
            .clone()
            .unwrap()
            .percentage
    };
    assert_eq!(pct(""), 100.0, "neither set: everything is mirrored");
    assert_eq!(pct("    mirrorPercent: 7\n"), 7.0);
    assert_eq!(pct("    mirrorPercent: 0\n"), 0.0);
    assert_eq!(
        pct("    mirrorPercent: 7\n    mirrorPercentage: {value: 2.5}\n"),
        2.5,
        "mirrorPercentage wins"
    );
}

#[test]
fn several_virtual_services_oldest_first_exact_before_wildcard() {
    let t = tables(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-new, namespace: demo, creationTimestamp: '2026-01-02T00:00:00Z'}
spec:
  hosts: [reviews]
  http: [{name: new, route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: demo, creationTimestamp: '2025-01-01T00:00:00Z'}
spec:
  hosts: ['*.demo.svc.cluster.local']
  http: [{name: wild, route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: z-old, namespace: demo, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  hosts: [reviews]
  http: [{name: old, route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gw, namespace: demo}
spec:
  hosts: [reviews]
  gateways: [ingress]
  http: [{name: gateway-only, route: [{destination: {host: reviews}}]}]
",
    );
    let names: Vec<_> = t["routes/demo/reviews"]
        .http
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["old", "new", "wild"]);
    let wild: Vec<_> = t["routes/demo/ratings"]
        .http
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(wild, ["wild"], "wildcards expand over the model's services");
    assert!(!t.contains_key("routes/other/x"));
}

#[test]
fn tcp_routes() {
    let t = one(&format!(
        "{VS_HEAD}spec:
  hosts: [reviews]
  tcp:
  - match: [{{port: 5432, destinationSubnets: [10.0.0.0/8], sourceSubnet: 10.244.9.0/24}}]
    route:
    - {{destination: {{host: reviews, subset: a, port: {{number: 5433}}}}, weight: 80}}
    - {{destination: {{host: reviews, subset: b}}, weight: 20}}
"
    ));
    let r = &t.tcp[0];
    assert_eq!(r.matches[0].port, 5432);
    assert_eq!(r.matches[0].destination_subnets, vec!["10.0.0.0/8"]);
    assert_eq!(r.matches[0].source_subnet, "10.244.9.0/24");
    let w: Vec<_> = r
        .destinations
        .iter()
        .map(|d| (d.subset.as_str(), d.port, d.weight))
        .collect();
    assert_eq!(w, [("a", 5433, 80), ("b", 0, 20)]);
}

const HR: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n";

#[test]
fn gateway_api_precedence() {
    let t = one(&format!(
        "{HR}metadata: {{name: b, namespace: demo, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews}}]
  rules:
  - name: prefix-short
    matches: [{{path: {{type: PathPrefix, value: /a}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
  - name: prefix-long-and-exact
    matches:
    - path: {{type: PathPrefix, value: /a/b}}
    - path: {{type: Exact, value: /z}}
    backendRefs: [{{name: reviews, port: 9080}}]
  - name: method
    matches: [{{path: {{value: /a}}, method: GET}}]
    backendRefs: [{{name: reviews, port: 9080}}]
  - name: headers2
    matches: [{{path: {{value: /a}}, method: GET, headers: [{{name: X-A, value: '1'}}, {{name: x-b, value: '2'}}]}}]
    backendRefs: [{{name: reviews, port: 9080}}]
  - name: query
    matches: [{{path: {{value: /a}}, method: GET, headers: [{{name: x-a, value: '1'}}, {{name: x-b, value: '2'}}], queryParams: [{{name: q, value: '1'}}]}}]
    backendRefs: [{{name: reviews, port: 9080}}]
---
{HR}metadata: {{name: a-older, namespace: demo, creationTimestamp: '2025-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews}}]
  rules:
  - name: older-same-key
    matches: [{{path: {{type: PathPrefix, value: /a}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
"
    ));
    assert!(t.gateway_api, "HTTPRoutes attached: unmatched → 404");
    let got: Vec<(String, u32)> = t
        .http
        .iter()
        .map(|r| (r.name.clone(), r.origin.as_ref().unwrap().r#match))
        .collect();
    let want: Vec<(String, u32)> = [
        ("prefix-long-and-exact", 1), // exact /z
        ("prefix-long-and-exact", 0), // prefix /a/b
        ("query", 0),
        ("headers2", 0),
        ("method", 0),
        ("older-same-key", 0), // same key as prefix-short, older route
        ("prefix-short", 0),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_string(), m))
    .collect();
    assert_eq!(got, want);
    assert_eq!(t.sources, ["HTTPRoute/demo/a-older", "HTTPRoute/demo/b"]);
    let h = &t.http[2].matches[0];
    assert_eq!(h.headers[0].name, "x-a", "header names lowercased");
    assert!(h.uri_prefix_by_segment, "PathPrefix matches whole segments");
}

#[test]
fn gateway_api_backends_filters_and_defaults() {
    let t = one(&format!(
        "{HR}metadata: {{name: r, namespace: demo}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
  - backendRefs:
    - {{name: reviews-v1, port: 9080, weight: 90}}
    - name: reviews-v2
      port: 9080
      weight: 10
      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-V, value: '2'}}]}}}}]
    - {{name: reviews-v3, port: 9080}}
    filters:
    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}}}
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow-a, port: 9080}}}}}}
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow-b, port: 9080}}, percent: 25}}}}
    timeouts: {{request: 3s, backendRequest: 1s}}
  - matches: [{{path: {{type: Exact, value: /r}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: b.example}}}}]
  - matches: [{{path: {{type: Exact, value: /none}}}}]
"
    ));
    // Exact paths first.
    let redirect = t.http[0].redirect.clone().unwrap();
    assert_eq!(
        (redirect.authority.as_str(), redirect.code),
        ("b.example", 302)
    );
    assert_eq!(
        t.http[1].direct_response.as_ref().map(|d| d.status),
        Some(500),
        "no backends → 500"
    );
    let r = &t.http[2];
    let mirrors: Vec<(&str, f64)> = r
        .mirror
        .iter()
        .chain(&r.mirrors)
        .map(|m| (m.host.as_str(), m.percentage))
        .collect();
    assert_eq!(
        mirrors,
        [
            ("shadow-a.demo.svc.cluster.local", 100.0),
            ("shadow-b.demo.svc.cluster.local", 25.0)
        ],
        "two RequestMirror filters: both mirror"
    );
    assert_eq!(r.matches[0].uri, prefix("/"), "no matches = PathPrefix /");
    assert_eq!(
        r.matches[0].port, 9080,
        "parentRef port restricts the route"
    );
    let w: Vec<_> = r
        .destinations
        .iter()
        .map(|d| (d.host.as_str(), d.port, d.weight))
        .collect();
    assert_eq!(
        w,
        [
            ("reviews-v1.demo.svc.cluster.local", 9080, 90),
            ("reviews-v2.demo.svc.cluster.local", 9080, 10),
            ("reviews-v3.demo.svc.cluster.local", 9080, 1),
        ]
    );
    assert_eq!(
        r.destinations[1].request_headers.as_ref().unwrap().set["x-v"],
        "2"
    );
    assert_eq!(r.rewrite.as_ref().unwrap().uri, "/v2");
    assert_eq!(r.timeout_ms, Some(3000));
    let retries = r.retries.clone().unwrap();
    assert_eq!(
        (retries.attempts, retries.per_try_timeout_ms),
        (2, Some(1000))
    );
}

#[test]
fn gateway_api_wins_over_virtual_service_and_consumer_routes() {
    let t = tables(&format!(
        "{VS_HEAD}spec:
  hosts: [reviews, ratings]
  http: [{{name: vs, route: [{{destination: {{host: reviews}}}}]}}]
---
{HR}metadata: {{name: producer, namespace: demo}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews}}]
  rules: [{{backendRefs: [{{name: reviews, port: 80}}]}}]
---
{HR}metadata: {{name: consumer, namespace: web}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, namespace: demo}}]
  rules: [{{matches: [{{path: {{type: Exact, value: /x}}}}], backendRefs: [{{name: reviews, namespace: demo, port: 80}}]}}]
"
    ));
    let reviews = &t["routes/demo/reviews"];
    assert!(reviews.gateway_api);
    let got: Vec<_> = reviews
        .http
        .iter()
        .map(|r| {
            (
                r.origin
                    .as_ref()
                    .map(|o| o.object.clone())
                    .unwrap_or_default(),
                r.matches[0].source_namespace.clone(),
                r.direct_response.as_ref().map(|d| d.status),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "HTTPRoute/web/consumer".to_string(),
                "web".to_string(),
                None
            ),
            (String::new(), "web".into(), Some(404)),
            ("HTTPRoute/demo/producer".into(), String::new(), None),
        ]
    );
    assert!(
        !t["routes/demo/ratings"].gateway_api,
        "the VirtualService still routes ratings"
    );
}

#[test]
fn consumer_catch_all_keeps_to_the_parent_ports() {
    let catch_all_ports = |parent_port: &str| -> Vec<u32> {
        let t = tables(&format!(
            "{HR}metadata: {{name: consumer, namespace: web}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, namespace: demo{parent_port}}}]
  rules: [{{matches: [{{path: {{type: Exact, value: /x}}}}], backendRefs: [{{name: reviews, namespace: demo, port: 80}}]}}]
"
        ));
        let r = &t["routes/demo/reviews"];
        let last = r.http.last().unwrap();
        assert_eq!(last.direct_response.as_ref().map(|d| d.status), Some(404));
        last.matches
            .iter()
            .inspect(|m| assert_eq!(m.source_namespace, "web"))
            .map(|m| m.port)
            .collect()
    };
    assert_eq!(
        catch_all_ports(", port: 9080"),
        [9080],
        "only the attached port"
    );
    assert_eq!(catch_all_ports(""), [0], "no parentRef port: every port");
}

#[test]
fn grpc_route_methods() {
    let t = one("apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews, port: 50051}]   # no matches: every call, but ranked last
  - matches: [{method: {service: pkg.Svc}}]
    backendRefs: [{name: reviews, port: 50051}]
  - matches: [{method: {service: pkg.Svc, method: Get}}]
    backendRefs: [{name: reviews, port: 50051}]
  - matches: [{method: {method: Get}}]
    backendRefs: [{name: reviews, port: 50051}]
");
    let uris: Vec<_> = t.http.iter().map(|r| r.matches[0].uri.clone()).collect();
    assert_eq!(
        uris,
        [
            exact("/pkg.Svc/Get"),
            prefix("/pkg.Svc/"),
            regex("/[^/]+/Get"),
            None,
        ]
    );
}

#[test]
fn grpc_codes() {
    let cases = [
        ("UNAVAILABLE", Some(14)),
        ("unavailable", Some(14)),
        ("14", Some(14)),
        ("NOPE", None),
        ("99", None),
    ];
    for (s, want) in cases {
        assert_eq!(grpc_code(s), want, "{s}");
    }
}
