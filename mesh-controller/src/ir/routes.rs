//! `RouteTable`s: VirtualServices and GAMMA HTTPRoutes/GRPCRoutes compiled per destination
//! service.
//!
//! Decisions (see docs/controller.md "The IR"):
//! - Istio VirtualService: first match wins, in `http[]` order. Several mesh-bound VirtualServices
//!   for one host (IST0109, "undefined behavior" in Istio) are concatenated oldest first; those
//!   naming the host exactly come before wildcard ones.
//! - Gateway API: each match of each rule is one route, sorted by the Gateway API precedence
//!   (exact path > longest prefix > regex > method > most headers > most query params > oldest
//!   route > `namespace/name` > rule order > match order). Unmatched requests get 404.
//! - When both target one service, the Gateway API routes win (Weft's primary routing API; Istio
//!   does not support mixing them for a node proxy) and the VirtualServices are ignored for it.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
};

use mesh_common::proto::config::{
    DirectResponse, Fault, FaultAbort, FaultDelay, HeaderOps, HttpMatch, HttpRoute, KeyMatch,
    L4Match, Mirror, Origin, Redirect, Resource, RetryPolicy, Rewrite, RouteTable, StringMatch,
    TcpRoute, WeightedDestination, fault_abort, resource::Kind, string_match,
};

use super::{age_key, fqdn, millis, millis_str, object_ref, resolve_host, target_services};
use crate::{
    crd::{
        GRPCRoute, HTTPRoute, MeshResource, Opaque, Percent, StringMatch as IstioMatch,
        VirtualService,
        gateway_api::{
            GrpcRouteMatch, HeaderModifier, HttpBackendRef, HttpHeaderMatch, HttpPathModifier,
            HttpRouteFilter, HttpRouteMatch,
        },
        networking::{
            Destination, Headers, HttpMatchRequest, HttpRetry, HttpRoute as VsHttpRoute,
            TcpRoute as VsTcpRoute,
        },
    },
    model::Service,
};

/// Istio's default `retryOn` (`core/route/retry/retry.go`).
pub const DEFAULT_RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];
/// Istio's default number of retries.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Envoy's base retry back-off as Istio configures it.
pub const RETRY_BACKOFF_BASE_MS: u64 = 25;

/// A Gateway API route attached to a service, with the parentRef's port (`None` = every port).
pub type GwParent<'a> = (&'a MeshResource, Option<u32>);

/// One route table per destination service with routes; sorted by resource name.
pub fn route_tables(objs: &[MeshResource], services: &[Service]) -> Vec<Resource> {
    // (namespace, service) → VirtualServices (specificity, object), oldest first within a group.
    let mut vs_by_svc: BTreeMap<(String, String), Vec<(u8, &MeshResource)>> = BTreeMap::new();
    // (namespace, service) → Gateway API routes with the parent's port (None = every port).
    let mut gw_by_svc: BTreeMap<(String, String), Vec<GwParent<'_>>> = BTreeMap::new();
    for obj in objs {
        match obj {
            MeshResource::VirtualService(vs) if binds_to_mesh(vs) => {
                let hosts: BTreeSet<String> = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| resolve_host(h, obj.namespace()))
                    .collect();
                let mut seen = BTreeSet::new();
                for h in hosts {
                    for (svc, spec) in target_services(&h, services) {
                        if seen.insert(svc.clone()) {
                            vs_by_svc.entry(svc).or_default().push((spec, obj));
                        }
                    }
                }
            }
            MeshResource::HttpRoute(HTTPRoute { spec, .. }) => {
                for p in spec.parent_refs.iter().filter(|p| p.is_service()) {
                    let ns = p.namespace.as_deref().unwrap_or(obj.namespace());
                    let port = p.port.and_then(|p| u32::try_from(p).ok());
                    gw_by_svc
                        .entry((ns.to_string(), p.name.clone()))
                        .or_default()
                        .push((obj, port));
                }
            }
            MeshResource::GrpcRoute(GRPCRoute { spec, .. }) => {
                for p in spec.parent_refs.iter().filter(|p| p.is_service()) {
                    let ns = p.namespace.as_deref().unwrap_or(obj.namespace());
                    let port = p.port.and_then(|p| u32::try_from(p).ok());
                    gw_by_svc
                        .entry((ns.to_string(), p.name.clone()))
                        .or_default()
                        .push((obj, port));
                }
            }
            _ => {}
        }
    }
    let keys: BTreeSet<(String, String)> =
        vs_by_svc.keys().chain(gw_by_svc.keys()).cloned().collect();
    keys.into_iter()
        .map(|(ns, svc)| {
            let key = (ns.clone(), svc.clone());
            let table = match gw_by_svc.get(&key) {
                Some(routes) => gateway_table(&ns, &svc, routes),
                None => {
                    let mut vss = vs_by_svc.get(&key).cloned().unwrap_or_default();
                    // Stable: keeps oldest-first within exact and wildcard groups.
                    vss.sort_by_key(|(spec, _)| *spec);
                    let vss: Vec<&MeshResource> = vss.into_iter().map(|(_, o)| o).collect();
                    virtual_service_table(&ns, &svc, &vss)
                }
            };
            Resource {
                name: format!("routes/{ns}/{svc}"),
                kind: Some(Kind::RouteTable(table)),
            }
        })
        .collect()
}

/// A VirtualService applies to the node proxies when `gateways` is empty or names `mesh`.
fn binds_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

// ---------------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------------

/// The table for one service from its VirtualServices (already in precedence order): their
/// `http[]` and `tcp[]` rules concatenated, first match wins.
pub fn virtual_service_table(ns: &str, svc: &str, vss: &[&MeshResource]) -> RouteTable {
    let mut table = RouteTable {
        host: fqdn(svc, ns),
        namespace: ns.into(),
        service: svc.into(),
        gateway_api: false,
        ..Default::default()
    };
    for obj in vss {
        let MeshResource::VirtualService(vs) = obj else {
            continue;
        };
        let origin = object_ref(obj);
        table.sources.push(origin.clone());
        for (i, rule) in vs.spec.http.iter().enumerate() {
            if let Some(r) = vs_http_route(rule, obj.namespace(), &origin, i) {
                table.http.push(r);
            }
        }
        for (i, rule) in vs.spec.tcp.iter().enumerate() {
            if let Some(r) = vs_tcp_route(rule, obj.namespace(), &origin, i) {
                table.tcp.push(r);
            }
        }
    }
    table
}

/// One `http[]` rule. `None` when it cannot apply to the mesh: a `delegate` (not supported), or
/// every match block bound to other gateways.
pub fn vs_http_route(r: &VsHttpRoute, ns: &str, origin: &str, index: usize) -> Option<HttpRoute> {
    if r.delegate.is_some() {
        return None;
    }
    let mesh_matches: Vec<&HttpMatchRequest> = r
        .matches
        .iter()
        .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        .collect();
    if !r.matches.is_empty() && mesh_matches.is_empty() {
        return None;
    }
    let (request_headers, response_headers) = header_ops(r.headers.as_ref());
    let single = r.route.len() == 1;
    Some(HttpRoute {
        name: r.name.clone().unwrap_or_default(),
        origin: Some(Origin {
            object: origin.into(),
            rule: index as u32,
            r#match: 0,
        }),
        matches: mesh_matches.into_iter().map(vs_match).collect(),
        destinations: r
            .route
            .iter()
            .map(|d| {
                let (rq, rs) = header_ops(d.headers.as_ref());
                WeightedDestination {
                    request_headers: rq,
                    response_headers: rs,
                    ..destination(&d.destination, ns, istio_weight(d.weight, single))
                }
            })
            .collect(),
        rewrite: r.rewrite.as_ref().map(|rw| {
            let regex = rw.uri_regex_rewrite.as_ref();
            Rewrite {
                uri: rw.uri.clone().unwrap_or_default(),
                full_path: String::new(),
                authority: rw.authority.clone().unwrap_or_default(),
                regex_match: regex.and_then(|x| x.match_.clone()).unwrap_or_default(),
                // Validated before compiling; an unusable one here leaves the path alone.
                regex_substitution: regex
                    .and_then(|x| x.rewrite.as_deref())
                    .and_then(|s| regex_substitution(s).ok())
                    .unwrap_or_default(),
            }
        }),
        redirect: r.redirect.as_ref().map(|rd| Redirect {
            path: rd.uri.clone().unwrap_or_default(),
            path_prefix: String::new(),
            authority: rd.authority.clone().unwrap_or_default(),
            port: rd.port.unwrap_or(0),
            port_from_request: rd.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
            scheme: rd.scheme.clone().unwrap_or_default(),
            code: rd.redirect_code.unwrap_or(301),
        }),
        direct_response: r.direct_response.as_ref().map(|d| DirectResponse {
            status: d.status,
            body: d
                .body
                .as_ref()
                .and_then(|b| match (&b.string, &b.bytes) {
                    (Some(s), _) => Some(s.clone().into_bytes()),
                    (None, Some(b64)) => base64_decode(b64),
                    _ => None,
                })
                .unwrap_or_default(),
        }),
        request_headers,
        response_headers,
        mirror: r.mirror.as_ref().map(|m| Mirror {
            host: resolve_host(&m.host, ns),
            subset: m.subset.clone().unwrap_or_default(),
            port: m.port.as_ref().map(|p| p.number).unwrap_or(0),
            // Istio: `mirrorPercentage` wins over the deprecated `mirrorPercent`; neither = 100 %.
            percentage: match (&r.mirror_percentage, r.mirror_percent) {
                (Some(p), _) => p.value.clamp(0.0, 100.0),
                (None, Some(p)) => f64::from(p.min(100)),
                (None, None) => 100.0,
            },
        }),
        mirrors: r
            .mirrors
            .iter()
            .map(|m| Mirror {
                host: resolve_host(&m.destination.host, ns),
                subset: m.destination.subset.clone().unwrap_or_default(),
                port: m.destination.port.as_ref().map(|p| p.number).unwrap_or(0),
                percentage: m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
            })
            .collect(),
        timeout_ms: millis(r.timeout.as_ref()),
        retries: Some(retry_policy(r.retries.as_ref())),
        fault: r.fault.as_ref().map(|f| Fault {
            delay: f.delay.as_ref().map(|d| FaultDelay {
                fixed_delay_ms: millis(d.fixed_delay.as_ref()).unwrap_or(0),
                percentage: match (&d.percentage, d.percent) {
                    (None, Some(p)) => f64::from(p.clamp(0, 100)),
                    (p, _) => fault_percent(p.as_ref()),
                },
            }),
            abort: f.abort.as_ref().map(|a| FaultAbort {
                status: match (a.http_status, &a.grpc_status) {
                    (Some(s), _) => Some(fault_abort::Status::HttpStatus(s.max(0) as u32)),
                    (None, Some(g)) => grpc_code(g).map(fault_abort::Status::GrpcStatus),
                    _ => None,
                },
                percentage: fault_percent(a.percentage.as_ref()),
            }),
        }),
        cors_policy_json: opaque_json(r.cors_policy.as_ref()),
    })
}

/// Istio relative weights: a single destination gets 100% whatever its weight; otherwise the
/// weight as written (unset = 0; negative ones are rejected by validation and treated as 0).
pub fn istio_weight(weight: Option<i32>, single: bool) -> u32 {
    if single {
        100
    } else {
        weight.unwrap_or(0).max(0) as u32
    }
}

/// Translates an RE2 rewrite string (Envoy `regex_rewrite.substitution`: `\N` = capture group
/// N, `\\` = a backslash, any other escape is invalid) into the regex crate's replacement syntax
/// (`${N}`, with `$` escaped as `$$`).
pub fn regex_substitution(re2: &str) -> Result<String, String> {
    let mut out = String::with_capacity(re2.len() + 8);
    let mut chars = re2.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('\\') => out.push('\\'),
                Some(other) => {
                    return Err(format!(
                        "invalid rewrite {re2:?}: \\{other} is not a capture group (use \\0-\\9 or \\\\)"
                    ));
                }
                None => return Err(format!("invalid rewrite {re2:?}: trailing backslash")),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Istio fault percentage: unset = 0% ("If left unspecified, no request will be delayed").
pub fn fault_percent(p: Option<&Percent>) -> f64 {
    p.map(|p| p.value.clamp(0.0, 100.0)).unwrap_or(0.0)
}

/// `destination{host, subset, port}` with the host resolved in the VirtualService's namespace.
fn destination(d: &Destination, ns: &str, weight: u32) -> WeightedDestination {
    WeightedDestination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone().unwrap_or_default(),
        port: d.port.as_ref().map(|p| p.number).unwrap_or(0),
        weight,
        ..Default::default()
    }
}

/// Istio's `ConvertPolicy` (`core/route/retry/retry.go`): no `retries` = the default policy
/// (2 attempts, default retryOn, no status codes); `retries` with `attempts` unset or 0 disables
/// retries; integers in `retryOn` are status codes and add `retriable-status-codes`.
pub fn retry_policy(r: Option<&HttpRetry>) -> RetryPolicy {
    let mut out = RetryPolicy {
        attempts: DEFAULT_RETRY_ATTEMPTS,
        retry_on: DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
        retriable_status_codes: vec![],
        per_try_timeout_ms: None,
        backoff_base_ms: RETRY_BACKOFF_BASE_MS,
        ignore_previous_hosts: None,
    };
    let Some(r) = r else {
        return out;
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        out.attempts = 0;
        out.retry_on.clear();
        return out;
    }
    out.attempts = attempts as u32;
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        out.retry_on.clear();
        for item in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<u32>() {
                Ok(code) => out.retriable_status_codes.push(code),
                Err(_) => out.retry_on.push(item.to_string()),
            }
        }
        if !out.retriable_status_codes.is_empty()
            && !out.retry_on.iter().any(|s| s == "retriable-status-codes")
        {
            out.retry_on.push("retriable-status-codes".into());
        }
    }
    out.per_try_timeout_ms = millis(r.per_try_timeout.as_ref());
    if let Some(base) = millis(r.backoff.as_ref()) {
        out.backoff_base_ms = base;
    }
    out.ignore_previous_hosts = r.retry_ignore_previous_hosts;
    out
}

fn string_match(m: &IstioMatch) -> StringMatch {
    let kind = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Some(string_match::Kind::Exact(e.clone())),
        (None, Some(p), _) => Some(string_match::Kind::Prefix(p.clone())),
        (None, None, Some(r)) => Some(string_match::Kind::Regex(r.clone())),
        _ => None,
    };
    StringMatch { kind }
}

fn key_matches(m: &BTreeMap<String, IstioMatch>, lowercase: bool) -> Vec<KeyMatch> {
    m.iter()
        .map(|(k, v)| KeyMatch {
            name: if lowercase {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            },
            value: Some(string_match(v)),
        })
        .collect()
}

/// One `match[]` block (all conditions ANDed).
fn vs_match(m: &HttpMatchRequest) -> HttpMatch {
    HttpMatch {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        headers: key_matches(&m.headers, true),
        without_headers: key_matches(&m.without_headers, true),
        query_params: key_matches(&m.query_params, false),
        port: m.port.unwrap_or(0),
        source_labels: m.source_labels.clone().into_iter().collect(),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
        uri_prefix_by_segment: false,
    }
}

/// `headers{request, response}` → (request ops, response ops).
fn header_ops(h: Option<&Headers>) -> (Option<HeaderOps>, Option<HeaderOps>) {
    let conv = |o: &crate::crd::networking::HeaderOperations| HeaderOps {
        set: o.set.clone().into_iter().collect(),
        add: o.add.clone().into_iter().collect(),
        remove: o.remove.clone(),
    };
    match h {
        None => (None, None),
        Some(h) => (h.request.as_ref().map(conv), h.response.as_ref().map(conv)),
    }
}

/// One `tcp[]` rule.
fn vs_tcp_route(r: &VsTcpRoute, ns: &str, origin: &str, index: usize) -> Option<TcpRoute> {
    let matches: Vec<L4Match> = r
        .matches
        .iter()
        .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        .map(|m| L4Match {
            destination_subnets: m.destination_subnets.clone(),
            port: m.port.unwrap_or(0),
            source_labels: m.source_labels.clone().into_iter().collect(),
            source_namespace: m.source_namespace.clone().unwrap_or_default(),
            source_subnet: m.source_subnet.clone().unwrap_or_default(),
        })
        .collect();
    if !r.matches.is_empty() && matches.is_empty() {
        return None;
    }
    let single = r.route.len() == 1;
    Some(TcpRoute {
        origin: Some(Origin {
            object: origin.into(),
            rule: index as u32,
            r#match: 0,
        }),
        matches,
        destinations: r
            .route
            .iter()
            .map(|d| destination(&d.destination, ns, istio_weight(d.weight, single)))
            .collect(),
    })
}

/// gRPC status code by name (`UNAVAILABLE`) or number (`"14"`).
pub fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let s = s.trim();
    s.parse::<u32>().ok().filter(|n| *n < 17).or_else(|| {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .map(|i| i as u32)
    })
}

fn opaque_json(o: Option<&Opaque>) -> String {
    o.map(|o| o.0.to_string()).unwrap_or_default()
}

/// Standard base64 (with or without padding); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Gateway API (GAMMA)
// ---------------------------------------------------------------------------------------------

/// Gateway API match precedence: exact path, then longest prefix, then regex; then a method match;
/// then most header matches; then most query parameter matches; then the oldest route, its
/// `namespace/name`, rule index and match index.
type GwKey = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    (
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        String,
        String,
    ),
    usize,
    usize,
);

fn gw_key(m: &HttpMatch, obj: &MeshResource, rule: usize, index: usize) -> GwKey {
    let (rank, len) = match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
        Some(string_match::Kind::Exact(_)) => (0, 0),
        Some(string_match::Kind::Prefix(p)) => (1, p.len()),
        Some(string_match::Kind::Regex(_)) => (2, 0),
        None => (1, 1),
    };
    (
        rank,
        Reverse(len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        age_key(obj),
        rule,
        index,
    )
}

/// The table for a service from its Gateway API routes (each with the parentRef's port).
///
/// GAMMA producer/consumer routes: a route in the Service's namespace applies to every client; a
/// route in another namespace (consumer route) applies only to clients in that namespace and, for
/// them, replaces the producer routes — so its matches carry `source_namespace` and are followed by
/// a 404 catch-all for that namespace.
pub fn gateway_table(ns: &str, svc: &str, routes: &[GwParent<'_>]) -> RouteTable {
    let mut producer: Vec<(GwKey, HttpRoute)> = vec![];
    let mut consumer: BTreeMap<String, Vec<(GwKey, HttpRoute)>> = BTreeMap::new();
    let mut sources = vec![];
    for (obj, port) in routes {
        let origin = object_ref(obj);
        if !sources.contains(&origin) {
            sources.push(origin.clone());
        }
        let compiled = match obj {
            MeshResource::HttpRoute(r) => http_route_entries(r, obj, &origin),
            MeshResource::GrpcRoute(r) => grpc_route_entries(r, obj, &origin),
            _ => vec![],
        };
        let consumer_ns = (obj.namespace() != ns).then(|| obj.namespace().to_string());
        for (key, mut route) in compiled {
            for m in &mut route.matches {
                m.port = port.unwrap_or(0);
                if let Some(c) = &consumer_ns {
                    m.source_namespace = c.clone();
                }
            }
            match &consumer_ns {
                Some(c) => consumer.entry(c.clone()).or_default().push((key, route)),
                None => producer.push((key, route)),
            }
        }
    }
    let mut http = vec![];
    for (cns, mut entries) in consumer {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // The 404 catch-all covers the ports the consumer routes attach to (parentRef `port`;
        // 0 = every port), so the Service's other ports keep their default route.
        let ports: BTreeSet<u32> = entries
            .iter()
            .flat_map(|(_, r)| r.matches.iter().map(|m| m.port))
            .collect();
        let ports: Vec<u32> = if ports.contains(&0) || ports.is_empty() {
            vec![0]
        } else {
            ports.into_iter().collect()
        };
        http.extend(entries.into_iter().map(|(_, r)| r));
        http.push(HttpRoute {
            name: format!("consumer-{cns}-not-found"),
            matches: ports
                .into_iter()
                .map(|port| HttpMatch {
                    source_namespace: cns.clone(),
                    port,
                    ..Default::default()
                })
                .collect(),
            direct_response: Some(DirectResponse {
                status: 404,
                body: vec![],
            }),
            ..Default::default()
        });
    }
    producer.sort_by(|a, b| a.0.cmp(&b.0));
    http.extend(producer.into_iter().map(|(_, r)| r));
    RouteTable {
        host: fqdn(svc, ns),
        namespace: ns.into(),
        service: svc.into(),
        gateway_api: true,
        http,
        tcp: vec![],
        sources,
    }
}

/// Each (rule, match) of an HTTPRoute as one route with its precedence key. No `rules` = one rule
/// matching PathPrefix `/` with no backends; no `matches` = PathPrefix `/`.
fn http_route_entries(r: &HTTPRoute, obj: &MeshResource, origin: &str) -> Vec<(GwKey, HttpRoute)> {
    let default_rule = [Default::default()];
    let rules = if r.spec.rules.is_empty() {
        &default_rule[..]
    } else {
        &r.spec.rules[..]
    };
    let mut out = vec![];
    for (i, rule) in rules.iter().enumerate() {
        let default_match = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        let base = gw_actions(
            &rule.filters,
            &rule.backend_refs,
            obj.namespace(),
            rule.timeouts.as_ref().and_then(|t| t.request.as_deref()),
            rule.timeouts
                .as_ref()
                .and_then(|t| t.backend_request.as_deref()),
        );
        for (j, m) in matches.iter().enumerate() {
            let hm = gw_http_match(m);
            let key = gw_key(&hm, obj, i, j);
            out.push((
                key,
                HttpRoute {
                    name: rule.name.clone().unwrap_or_default(),
                    origin: Some(Origin {
                        object: origin.into(),
                        rule: i as u32,
                        r#match: j as u32,
                    }),
                    matches: vec![hm],
                    ..base.clone()
                },
            ));
        }
    }
    out
}

/// Each (rule, match) of a GRPCRoute: the method match becomes a path match on
/// `/<service>/<method>` (exact when both are given, a `/<service>/` prefix for a service only,
/// a regex otherwise).
fn grpc_route_entries(r: &GRPCRoute, obj: &MeshResource, origin: &str) -> Vec<(GwKey, HttpRoute)> {
    let mut out = vec![];
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let default_match = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        let base = gw_actions(
            &rule.filters,
            &rule.backend_refs,
            obj.namespace(),
            None,
            None,
        );
        for (j, m) in matches.iter().enumerate() {
            let hm = grpc_match(m);
            let key = grpc_key(m, &hm, obj, i, j);
            out.push((
                key,
                HttpRoute {
                    name: rule.name.clone().unwrap_or_default(),
                    origin: Some(Origin {
                        object: origin.into(),
                        rule: i as u32,
                        r#match: j as u32,
                    }),
                    matches: vec![hm],
                    ..base.clone()
                },
            ));
        }
    }
    out
}

fn gw_header_matches(hs: &[HttpHeaderMatch], lowercase: bool) -> Vec<KeyMatch> {
    hs.iter()
        .map(|h| KeyMatch {
            name: if lowercase {
                h.name.to_ascii_lowercase()
            } else {
                h.name.clone()
            },
            value: Some(StringMatch {
                kind: Some(match h.match_type.as_deref() {
                    Some("RegularExpression") => string_match::Kind::Regex(h.value.clone()),
                    _ => string_match::Kind::Exact(h.value.clone()),
                }),
            }),
        })
        .collect()
}

/// A Gateway API HTTPRoute match (path default PathPrefix `/`, segment-wise).
fn gw_http_match(m: &HttpRouteMatch) -> HttpMatch {
    let (ty, value) = match &m.path {
        Some(p) => (
            p.match_type.as_deref().unwrap_or("PathPrefix"),
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
        None => ("PathPrefix", "/".into()),
    };
    let uri = match ty {
        "Exact" => string_match::Kind::Exact(value),
        "RegularExpression" => string_match::Kind::Regex(value),
        _ => string_match::Kind::Prefix(value),
    };
    HttpMatch {
        uri: Some(StringMatch { kind: Some(uri) }),
        uri_prefix_by_segment: ty != "Exact" && ty != "RegularExpression",
        method: m.method.as_ref().map(|v| StringMatch {
            kind: Some(string_match::Kind::Exact(v.clone())),
        }),
        headers: gw_header_matches(&m.headers, true),
        query_params: gw_header_matches(&m.query_params, false),
        ..Default::default()
    }
}

/// GRPCRoute precedence (Gateway API): most characters in the matching service, then in the
/// matching method, then most header matches; then age, name, rule and match index. Encoded in
/// [`GwKey`] (rank 1, the "length" service-major) so a method-less catch-all sorts last.
fn grpc_key(
    m: &GrpcRouteMatch,
    hm: &HttpMatch,
    obj: &MeshResource,
    rule: usize,
    index: usize,
) -> GwKey {
    let (service, method) = m.method.as_ref().map_or((0, 0), |mm| {
        (
            mm.service.as_deref().map_or(0, str::len),
            mm.method.as_deref().map_or(0, str::len),
        )
    });
    (
        1,
        Reverse(service.saturating_mul(1 << 16).saturating_add(method)),
        Reverse(false),
        Reverse(hm.headers.len()),
        Reverse(0),
        age_key(obj),
        rule,
        index,
    )
}

fn grpc_match(m: &GrpcRouteMatch) -> HttpMatch {
    let uri = m.method.as_ref().and_then(|mm| {
        let regex = mm.match_type.as_deref() == Some("RegularExpression");
        match (mm.service.as_deref(), mm.method.as_deref(), regex) {
            (None, None, _) => None,
            (Some(s), Some(m), false) => Some(string_match::Kind::Exact(format!("/{s}/{m}"))),
            (Some(s), None, false) => Some(string_match::Kind::Prefix(format!("/{s}/"))),
            (s, m, is_regex) => {
                let part = |p: Option<&str>| match p {
                    Some(p) if is_regex => p.to_string(),
                    Some(p) => regex_escape(p),
                    None => "[^/]+".into(),
                };
                Some(string_match::Kind::Regex(format!(
                    "/{}/{}",
                    part(s),
                    part(m)
                )))
            }
        }
    });
    HttpMatch {
        uri: uri.map(|k| StringMatch { kind: Some(k) }),
        headers: gw_header_matches(&m.headers, true),
        ..Default::default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn modifier(m: &HeaderModifier) -> HeaderOps {
    HeaderOps {
        set: m
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn path_modifier(p: &HttpPathModifier) -> (String, String) {
    match p.modifier_type.as_str() {
        "ReplacePrefixMatch" => (
            String::new(),
            p.replace_prefix_match.clone().unwrap_or_default(),
        ),
        _ => (
            p.replace_full_path.clone().unwrap_or_default(),
            String::new(),
        ),
    }
}

/// Filters, backends, timeouts of a Gateway API rule (everything but the matches).
///
/// - No valid backend (none listed, or only non-Service kinds) and no redirect: 500.
/// - Backend weight default 1 (relative); backend `filters` become destination header ops.
/// - `timeouts.request` = route timeout, `timeouts.backendRequest` = per-try timeout (`0s` = none).
/// - Retries: Istio's default policy (Istio compiles HTTPRoutes to VirtualServices the same way).
fn gw_actions(
    filters: &[HttpRouteFilter],
    backends: &[HttpBackendRef],
    ns: &str,
    request_timeout: Option<&str>,
    backend_timeout: Option<&str>,
) -> HttpRoute {
    let mut route = HttpRoute::default();
    for f in filters {
        match f.filter_type.as_str() {
            "RequestHeaderModifier" => {
                route.request_headers = f.request_header_modifier.as_ref().map(modifier)
            }
            "ResponseHeaderModifier" => {
                route.response_headers = f.response_header_modifier.as_ref().map(modifier)
            }
            "RequestRedirect" => {
                route.redirect = f.request_redirect.as_ref().map(|r| {
                    let (path, path_prefix) =
                        r.path.as_ref().map(path_modifier).unwrap_or_default();
                    Redirect {
                        path,
                        path_prefix,
                        authority: r.hostname.clone().unwrap_or_default(),
                        port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                        port_from_request: false,
                        scheme: r.scheme.clone().unwrap_or_default(),
                        code: r
                            .status_code
                            .and_then(|c| u32::try_from(c).ok())
                            .unwrap_or(302),
                    }
                })
            }
            "URLRewrite" => {
                route.rewrite = f.url_rewrite.as_ref().map(|r| {
                    let (full_path, uri) = r.path.as_ref().map(path_modifier).unwrap_or_default();
                    Rewrite {
                        uri,
                        full_path,
                        authority: r.hostname.clone().unwrap_or_default(),
                        ..Default::default()
                    }
                })
            }
            "RequestMirror" => {
                let mirror = f.request_mirror.as_ref().and_then(|m| {
                    let b = &m.backend_ref;
                    if !is_service_backend(b.group.as_deref(), b.kind.as_deref()) {
                        return None;
                    }
                    let percentage = match (&m.fraction, m.percent) {
                        (Some(f), _) => {
                            let den = f.denominator.unwrap_or(100).max(1);
                            f64::from(f.numerator.max(0)) * 100.0 / f64::from(den)
                        }
                        (None, Some(p)) => f64::from(p.clamp(0, 100)),
                        (None, None) => 100.0,
                    };
                    Some(Mirror {
                        host: fqdn(&b.name, b.namespace.as_deref().unwrap_or(ns)),
                        subset: String::new(),
                        port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                        percentage,
                    })
                });
                if let Some(m) = mirror {
                    // Gateway API allows several RequestMirror filters: all of them mirror.
                    if route.mirror.is_none() {
                        route.mirror = Some(m);
                    } else {
                        route.mirrors.push(m);
                    }
                }
            }
            "CORS" => route.cors_policy_json = opaque_json(f.cors.as_ref()),
            _ => {}
        }
    }
    route.destinations = backends
        .iter()
        .filter(|b| is_service_backend(b.group.as_deref(), b.kind.as_deref()))
        .map(|b| {
            let mut d = WeightedDestination {
                host: fqdn(&b.name, b.namespace.as_deref().unwrap_or(ns)),
                port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                weight: b.weight.unwrap_or(1).max(0) as u32,
                ..Default::default()
            };
            for f in &b.filters {
                match f.filter_type.as_str() {
                    "RequestHeaderModifier" => {
                        d.request_headers = f.request_header_modifier.as_ref().map(modifier)
                    }
                    "ResponseHeaderModifier" => {
                        d.response_headers = f.response_header_modifier.as_ref().map(modifier)
                    }
                    _ => {}
                }
            }
            d
        })
        .collect();
    if route.destinations.is_empty() && route.redirect.is_none() {
        route.direct_response = Some(DirectResponse {
            status: 500,
            body: vec![],
        });
    }
    route.timeout_ms = request_timeout.and_then(millis_str).filter(|ms| *ms > 0);
    let mut retries = retry_policy(None);
    retries.per_try_timeout_ms = backend_timeout.and_then(millis_str).filter(|ms| *ms > 0);
    route.retries = Some(retries);
    route
}

/// A backend reference to a core Service (`group: ""`, `kind: Service`, the defaults).
fn is_service_backend(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core")) && matches!(kind, None | Some("Service"))
}

#[cfg(test)]
mod tests;
