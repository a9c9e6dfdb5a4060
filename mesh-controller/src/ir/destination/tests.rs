use super::*;
use crate::ir::{sorted, testutil::resources};

const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n";

fn policies(yaml: &str) -> BTreeMap<String, DestinationPolicy> {
    let services = [Service {
        name: "reviews".into(),
        namespace: "demo".into(),
        cluster_ip: None,
        selector: Default::default(),
        ports: vec![],
    }];
    destination_policies(&sorted(resources(yaml)), &services)
        .into_iter()
        .map(|r| match r.kind {
            Some(Kind::DestinationPolicy(p)) => (r.name, p),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn defaults_pool() -> ConnectionPool {
    ConnectionPool {
        max_connections: UNLIMITED,
        connect_timeout_ms: 10_000,
        http1_max_pending_requests: UNLIMITED,
        http2_max_requests: UNLIMITED,
        max_requests_per_connection: 0,
        max_retries: UNLIMITED,
        idle_timeout_ms: 3_600_000,
        max_connection_duration_ms: 0,
    }
}

#[test]
fn defaults_resolved() {
    let p = policies(&format!(
        "{DR}metadata: {{name: r, namespace: demo}}\nspec:\n  host: reviews\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
    ));
    let p = &p["destination/demo/reviews"];
    assert_eq!(p.host, "reviews.demo.svc.cluster.local");
    assert_eq!(p.sources, ["DestinationRule/demo/r"]);
    let tp = p.traffic_policy.clone().unwrap();
    assert_eq!(
        tp.load_balancer.unwrap().simple,
        load_balancer::Simple::LeastRequest as i32,
        "Istio's default LB"
    );
    assert_eq!(tp.connection_pool, Some(defaults_pool()));
    assert_eq!(
        tp.outlier_detection, None,
        "no outlier detection unless configured"
    );
    assert_eq!(p.subsets[0].name, "v1");
    assert_eq!(p.subsets[0].labels["version"], "v1");
}

#[test]
fn circuit_breaker_sample_and_outlier_defaults() {
    let p = policies(&format!(
        "{DR}metadata: {{name: httpbin, namespace: demo}}
spec:
  host: reviews.demo.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1, maxConnectionDuration: 90s}}
      http: {{http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionTime: 10m, maxEjectionPercent: 100}}
  subsets:
  - name: od-defaults
    trafficPolicy: {{outlierDetection: {{}}}}
"
    ));
    let p = &p["destination/demo/reviews"];
    let tp = p.traffic_policy.clone().unwrap();
    let pool = tp.connection_pool.unwrap();
    assert_eq!(
        (
            pool.max_connections,
            pool.http1_max_pending_requests,
            pool.max_requests_per_connection,
            pool.http2_max_requests,
            pool.max_connection_duration_ms
        ),
        (1, 1, 1, UNLIMITED, 90_000)
    );
    assert_eq!(
        tp.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 1,
            consecutive_gateway_errors: 0,
            interval_ms: 1000,
            base_ejection_time_ms: 180_000,
            max_ejection_percent: 100,
            min_health_percent: 0,
            max_ejection_time_ms: 600_000,
        })
    );
    let sub = p.subsets[0].traffic_policy.clone().unwrap();
    assert_eq!(
        sub.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
            max_ejection_time_ms: 300_000,
        }),
        "subset outlierDetection replaces the top-level one; Istio defaults"
    );
    assert_eq!(
        sub.connection_pool.unwrap().max_connections,
        1,
        "fields the subset does not set are inherited"
    );
}

#[test]
fn load_balancers() {
    let cases: [(&str, i32, Option<ConsistentHash>); 5] = [
        (
            "{simple: ROUND_ROBIN}",
            load_balancer::Simple::RoundRobin as i32,
            None,
        ),
        (
            "{simple: LEAST_CONN}",
            load_balancer::Simple::LeastRequest as i32,
            None,
        ),
        (
            "{consistentHash: {httpHeaderName: X-User}}",
            0,
            Some(ConsistentHash {
                key: Some(consistent_hash::Key::HeaderName("x-user".into())),
                algorithm: Some(consistent_hash::Algorithm::RingHashMinimumRingSize(1024)),
            }),
        ),
        (
            "{consistentHash: {httpCookie: {name: s, path: /, ttl: 0s}, maglev: {tableSize: 7}}}",
            0,
            Some(ConsistentHash {
                key: Some(consistent_hash::Key::Cookie(HashCookie {
                    name: "s".into(),
                    path: "/".into(),
                    ttl_ms: Some(0),
                })),
                algorithm: Some(consistent_hash::Algorithm::MaglevTableSize(7)),
            }),
        ),
        (
            "{consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 64}}}",
            0,
            Some(ConsistentHash {
                key: Some(consistent_hash::Key::UseSourceIp(true)),
                algorithm: Some(consistent_hash::Algorithm::RingHashMinimumRingSize(64)),
            }),
        ),
    ];
    for (lb, simple, hash) in cases {
        let p = policies(&format!(
            "{DR}metadata: {{name: r, namespace: demo}}\nspec:\n  host: reviews\n  trafficPolicy: {{loadBalancer: {lb}}}\n"
        ));
        let got = p["destination/demo/reviews"]
            .traffic_policy
            .clone()
            .unwrap()
            .load_balancer
            .unwrap();
        assert_eq!((got.simple, got.consistent_hash), (simple, hash), "{lb}");
    }
}

#[test]
fn subset_and_port_level_merge() {
    let p = policies(&format!(
        "{DR}metadata: {{name: r, namespace: demo}}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {{simple: RANDOM}}
    connectionPool: {{tcp: {{maxConnections: 10}}}}
    portLevelSettings:
    - port: {{number: 80}}
      loadBalancer: {{simple: ROUND_ROBIN}}
  subsets:
  - name: v1
    trafficPolicy:
      connectionPool: {{tcp: {{maxConnections: 5}}}}
  - name: v2
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 81}}
        connectionPool: {{tcp: {{maxConnections: 3}}}}
"
    ));
    let p = &p["destination/demo/reviews"];
    let lb = |tp: &Option<LoadBalancer>| tp.as_ref().map(|l| l.simple).unwrap();
    let maxc = |cp: &Option<ConnectionPool>| cp.as_ref().map(|c| c.max_connections).unwrap();
    let top = p.traffic_policy.clone().unwrap();
    assert_eq!(lb(&top.load_balancer), load_balancer::Simple::Random as i32);
    assert_eq!(top.port_level.len(), 1);
    assert_eq!(
        (
            top.port_level[0].port,
            lb(&top.port_level[0].load_balancer),
            maxc(&top.port_level[0].connection_pool)
        ),
        (80, load_balancer::Simple::RoundRobin as i32, UNLIMITED),
        "port-level settings do not inherit the top-level fields"
    );
    let v1 = p.subsets[0].traffic_policy.clone().unwrap();
    assert_eq!(
        (lb(&v1.load_balancer), maxc(&v1.connection_pool)),
        (load_balancer::Simple::Random as i32, 5),
        "subset overrides per field"
    );
    assert_eq!(
        (
            lb(&v1.port_level[0].load_balancer),
            maxc(&v1.port_level[0].connection_pool)
        ),
        (load_balancer::Simple::RoundRobin as i32, 5),
        "top-level port 80 entry, then the subset's fields on top (MergeTrafficPolicy)"
    );
    let v2 = p.subsets[1].traffic_policy.clone().unwrap();
    let ports: Vec<_> = v2
        .port_level
        .iter()
        .map(|e| (e.port, lb(&e.load_balancer), maxc(&e.connection_pool)))
        .collect();
    assert_eq!(
        ports,
        [
            (80, load_balancer::Simple::RoundRobin as i32, UNLIMITED),
            (81, load_balancer::Simple::LeastRequest as i32, 3),
        ]
    );
}

#[test]
fn several_rules_merge_oldest_first_and_workload_selector_skipped() {
    let p = policies(&format!(
        "{DR}metadata: {{name: new, namespace: demo, creationTimestamp: '2026-02-01T00:00:00Z'}}
spec:
  host: reviews
  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}
  subsets: [{{name: v1, labels: {{version: new}}}}, {{name: v3, labels: {{version: v3}}}}]
---
{DR}metadata: {{name: old, namespace: demo, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
{DR}metadata: {{name: sel, namespace: demo}}
spec:
  host: reviews
  workloadSelector: {{matchLabels: {{app: x}}}}
  subsets: [{{name: v9}}]
---
{DR}metadata: {{name: ext, namespace: demo}}
spec:
  host: api.example.com
"
    ));
    assert_eq!(p.len(), 1);
    let p = &p["destination/demo/reviews"];
    assert_eq!(
        p.sources,
        ["DestinationRule/demo/old", "DestinationRule/demo/new"]
    );
    let subsets: Vec<_> = p
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(subsets, [("v1", "v1"), ("v3", "v3")]);
    assert_eq!(
        p.traffic_policy
            .clone()
            .unwrap()
            .load_balancer
            .unwrap()
            .simple,
        load_balancer::Simple::Random as i32,
        "the first rule with a top-level policy"
    );
}
