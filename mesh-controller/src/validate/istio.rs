//! Checks for `networking.istio.io` kinds, plus helpers shared with the other kinds.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::cluster::{ClusterView, host_matches, resolve_host};
use super::{Diagnostic, Severity, Sink, codes};
use crate::crd::networking::{
    Destination, HttpMatchRequest, HttpRoute, LoadBalancerSettings, TrafficPolicy,
};
use crate::crd::{
    DestinationRule, Gateway, GoDuration, MeshResource, Percent, ServiceEntry, StringMatch,
    VirtualService,
};

/// Cross-object lookups: DestinationRule subsets and ServiceEntry hosts by resolved host.
pub(crate) struct Index<'a> {
    pub(crate) cluster: &'a ClusterView,
    subsets: BTreeMap<String, BTreeSet<String>>,
    se_hosts: Vec<String>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(resources: &[MeshResource], cluster: &'a ClusterView) -> Self {
        let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut se_hosts = Vec::new();
        for r in resources {
            match r {
                MeshResource::DestinationRule(dr) => {
                    let host = resolve_host(&dr.spec.host, r.namespace());
                    let set = subsets.entry(host).or_default();
                    set.extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
                }
                MeshResource::ServiceEntry(se) => {
                    se_hosts.extend(se.spec.hosts.iter().map(|h| resolve_host(h, r.namespace())));
                }
                _ => {}
            }
        }
        Self {
            cluster,
            subsets,
            se_hosts,
        }
    }

    /// Whether `fqdn` names a Service or a ServiceEntry host. Without any Service in the view
    /// this cannot be decided and is assumed known.
    pub(crate) fn host_known(&self, fqdn: &str) -> bool {
        fqdn.contains('*')
            || self.cluster.services.is_empty()
            || self.cluster.service_for_fqdn(fqdn).is_some()
            || self.se_hosts.iter().any(|p| host_matches(p, fqdn))
    }

    fn check_destination(&self, d: &Destination, ns: &str, field: &str, sink: &mut Sink<'_>) {
        let fqdn = resolve_host(&d.host, ns);
        if d.host.is_empty() {
            sink.schema(format!("{field}.host"), "destination host is required");
            return;
        }
        if !self.host_known(&fqdn) {
            sink.push(
                codes::NOT_FOUND,
                Severity::Error,
                format!("{field}.host"),
                format!("Referenced host not found: {:?}", d.host),
            );
            return;
        }
        if let Some(subset) = &d.subset {
            let defined = self.subsets.get(&fqdn).is_some_and(|s| s.contains(subset));
            if !defined {
                sink.push(
                    codes::NOT_FOUND,
                    Severity::Error,
                    format!("{field}.subset"),
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                        d.host
                    ),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

pub(crate) fn check_duration(d: &Option<GoDuration>, field: String, sink: &mut Sink<'_>) {
    if let Some(d) = d
        && let Err(e) = d.parse()
    {
        sink.schema(field, e.to_string());
    }
}

pub(crate) fn check_regex(re: &str, field: String, sink: &mut Sink<'_>) {
    // Istio/Envoy use RE2; the `regex` crate accepts nearly the same syntax (see module docs).
    if let Err(e) = regex::Regex::new(re) {
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or_default().trim().to_string();
        sink.schema(field, format!("invalid regex {re:?}: {last}"));
    }
}

pub(crate) fn check_string_match(m: &StringMatch, field: &str, sink: &mut Sink<'_>) {
    if m.set_count() > 1 {
        sink.schema(field, "only one of exact, prefix or regex can be set");
    }
    if let Some(re) = &m.regex {
        check_regex(re, format!("{field}.regex"), sink);
    }
}

fn check_percent(p: &Option<Percent>, field: String, sink: &mut Sink<'_>) {
    if let Some(p) = p
        && !(0.0..=100.0).contains(&p.value)
    {
        sink.schema(
            field,
            format!(
                "percentage {} is neither 0.0, nor in range [0.0001, 100.0]",
                p.value
            ),
        );
    }
}

/// Reports every present field matching one of `patterns` (`http[].delegate`, relative to
/// `spec`; `[]` iterates an array) as not supported.
pub(crate) fn report_unsupported<T: Serialize>(spec: &T, patterns: &[&str], sink: &mut Sink<'_>) {
    let Ok(value) = serde_json::to_value(spec) else {
        return;
    };
    for pattern in patterns {
        let segments: Vec<&str> = pattern.split('.').collect();
        walk(&value, &segments, "spec".to_string(), sink);
    }
}

fn walk(v: &Value, segments: &[&str], path: String, sink: &mut Sink<'_>) {
    let Some((first, rest)) = segments.split_first() else {
        let empty = match v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            sink.unsupported(path, "");
        }
        return;
    };
    let (key, iterate) = match first.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (*first, false),
    };
    let Some(child) = v.get(key) else {
        return;
    };
    let path = format!("{path}.{key}");
    if iterate {
        for (i, item) in child.as_array().into_iter().flatten().enumerate() {
            walk(item, rest, format!("{path}[{i}]"), sink);
        }
    } else {
        walk(child, rest, path, sink);
    }
}

fn check_weights(weights: &[Option<i32>], field: &str, sink: &mut Sink<'_>) {
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        let w = w.unwrap_or(0);
        if w < 0 {
            sink.schema(format!("{field}[{i}].weight"), format!("weight {w} < 0"));
        }
        total += i64::from(w.max(0));
    }
    // A single destination gets 100% whatever its weight; only a split can total 0.
    if weights.len() > 1 && total == 0 && weights.iter().all(|w| w.unwrap_or(0) >= 0) {
        sink.schema(field, "total destination weight = 0");
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------------

const VS_UNSUPPORTED: &[&str] = &[
    "tls",
    "exportTo",
    "http[].delegate",
    "http[].retries.retryRemoteLocalities",
    "http[].fault.delay.exponentialDelay",
    "http[].fault.abort.http2Error",
    "http[].match[].gateways",
    "http[].match[].statPrefix",
    "tcp[].match[].gateways",
];

/// Whether a VirtualService applies to sidecar/mesh traffic (`gateways` unset or has `mesh`).
pub(crate) fn binds_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

pub(crate) fn virtual_service(vs: &VirtualService, index: &Index<'_>, sink: &mut Sink<'_>) {
    let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
    let spec = &vs.spec;
    if spec.hosts.is_empty() {
        sink.schema("spec.hosts", "virtual service must have at least one host");
    }
    let mut seen = BTreeSet::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        if !seen.insert(resolve_host(h, ns)) {
            sink.schema(
                format!("spec.hosts[{i}]"),
                "duplicate hosts in virtual service",
            );
        }
        if h == "*" && binds_to_mesh(vs) {
            sink.schema(
                format!("spec.hosts[{i}]"),
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
        }
    }
    for (i, g) in spec.gateways.iter().enumerate() {
        if g != "mesh" {
            sink.unsupported(
                format!("spec.gateways[{i}]"),
                "Weft runs no gateways; only `mesh` applies",
            );
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        sink.schema(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }

    let mut catch_all: Option<usize> = None;
    for (i, rule) in spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        if let Some(first) = catch_all {
            sink.push(
                codes::UNREACHABLE,
                Severity::Warning,
                field.clone(),
                format!(
                    "virtualService rule {} not used: rule {} (spec.http[{first}]) matches every request",
                    rule_label(rule, i),
                    rule_label(&spec.http[first], first),
                ),
            );
        } else if rule.matches.is_empty() || rule.matches.iter().any(HttpMatchRequest::is_catch_all)
        {
            catch_all = Some(i);
        }
        http_rule(rule, ns, &field, index, sink);
    }

    for (i, rule) in spec.tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        if rule.route.is_empty() {
            sink.schema(format!("{field}.route"), "TCP route is required");
        }
        let weights: Vec<_> = rule.route.iter().map(|r| r.weight).collect();
        check_weights(&weights, &format!("{field}.route"), sink);
        for (j, r) in rule.route.iter().enumerate() {
            index.check_destination(
                &r.destination,
                ns,
                &format!("{field}.route[{j}].destination"),
                sink,
            );
        }
    }
    report_unsupported(spec, VS_UNSUPPORTED, sink);
}

fn rule_label(rule: &HttpRoute, i: usize) -> String {
    match &rule.name {
        Some(name) => format!("{i} ({name:?})"),
        None => i.to_string(),
    }
}

fn http_rule(rule: &HttpRoute, ns: &str, field: &str, index: &Index<'_>, sink: &mut Sink<'_>) {
    let has_route = !rule.route.is_empty();
    let has_redirect = rule.redirect.is_some();
    let has_direct = rule.direct_response.is_some();
    if has_route && has_redirect {
        sink.schema(field, "HTTP route cannot contain both route and redirect");
    }
    if has_route && has_direct {
        sink.schema(
            field,
            "HTTP route cannot contain both route and direct_response",
        );
    }
    if has_redirect && has_direct {
        sink.schema(
            field,
            "HTTP route cannot contain both redirect and direct_response",
        );
    }
    if !has_route && !has_redirect && !has_direct && rule.delegate.is_none() {
        sink.schema(field, "HTTP route, redirect or direct_response is required");
    }
    if has_redirect && rule.rewrite.is_some() {
        sink.schema(
            field,
            "HTTP route rule cannot contain both rewrite and redirect",
        );
    }
    if has_redirect && rule.fault.is_some() {
        sink.schema(field, "HTTP route cannot contain both fault and redirect");
    }
    if let Some(rw) = &rule.rewrite {
        let rf = format!("{field}.rewrite");
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            sink.schema(
                rf.clone(),
                "rewrite may only contain one of URI or UriRegexRewrite",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            let rrf = format!("{rf}.uriRegexRewrite");
            match rr.match_.as_deref() {
                None | Some("") => sink.schema(
                    format!("{rrf}.match"),
                    "UriRegexRewrite requires Match to be set",
                ),
                Some(re) => check_regex(re, format!("{rrf}.match"), sink),
            }
            match rr.rewrite.as_deref() {
                None | Some("") => sink.schema(
                    format!("{rrf}.rewrite"),
                    "UriRegexRewrite requires Rewrite to be set",
                ),
                Some(s) => {
                    if let Err(e) = crate::ir::routes::regex_substitution(s) {
                        sink.schema(format!("{rrf}.rewrite"), e);
                    } else if let Some(Ok(re)) = rr.match_.as_deref().map(regex::Regex::new) {
                        // RE2 rejects a rewrite naming a group the pattern does not have.
                        let groups = re.captures_len() - 1;
                        let bad = s
                            .split('\\')
                            .skip(1)
                            .filter_map(|t| t.chars().next()?.to_digit(10))
                            .find(|n| *n as usize > groups);
                        if let Some(n) = bad {
                            sink.schema(
                                format!("{rrf}.rewrite"),
                                format!("rewrite {s:?} uses group \\{n} but the match has {groups} groups"),
                            );
                        }
                    }
                }
            }
        }
    }

    for (m, block) in rule.matches.iter().enumerate() {
        http_match(block, &format!("{field}.match[{m}]"), sink);
    }

    let weights: Vec<_> = rule.route.iter().map(|r| r.weight).collect();
    check_weights(&weights, &format!("{field}.route"), sink);
    for (j, r) in rule.route.iter().enumerate() {
        index.check_destination(
            &r.destination,
            ns,
            &format!("{field}.route[{j}].destination"),
            sink,
        );
    }

    if let Some(redirect) = &rule.redirect
        && let Some(code) = redirect.redirect_code
        && !(300..=399).contains(&code)
    {
        sink.schema(
            format!("{field}.redirect.redirectCode"),
            format!("redirect code {code} must be in range 300-399"),
        );
    }
    if let Some(dr) = &rule.direct_response
        && !(200..=599).contains(&dr.status)
    {
        sink.schema(
            format!("{field}.directResponse.status"),
            format!("status {} must be in range 200-599", dr.status),
        );
    }

    check_duration(&rule.timeout, format!("{field}.timeout"), sink);
    if let Some(retries) = &rule.retries {
        let rf = format!("{field}.retries");
        if let Some(a) = retries.attempts
            && a < 0
        {
            sink.schema(format!("{rf}.attempts"), "attempts cannot be negative");
        }
        check_duration(
            &retries.per_try_timeout,
            format!("{rf}.perTryTimeout"),
            sink,
        );
        check_duration(&retries.backoff, format!("{rf}.backoff"), sink);
        if let Some(on) = &retries.retry_on {
            for policy in on.split(',').map(str::trim) {
                let known = RETRY_ON.contains(&policy) || policy.parse::<u16>().is_ok();
                if !known {
                    sink.schema(
                        format!("{rf}.retryOn"),
                        format!("{policy:?} is not a valid retryOn policy"),
                    );
                }
            }
        }
    }
    if let Some(fault) = &rule.fault {
        let ff = format!("{field}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            sink.schema(
                ff.clone(),
                "fault must contain at least one of delay or abort",
            );
        }
        if let Some(delay) = &fault.delay {
            if delay.fixed_delay.is_none() && delay.exponential_delay.is_none() {
                sink.schema(format!("{ff}.delay"), "delay must specify fixedDelay");
            }
            check_duration(&delay.fixed_delay, format!("{ff}.delay.fixedDelay"), sink);
            check_percent(
                &delay.percentage,
                format!("{ff}.delay.percentage.value"),
                sink,
            );
            if let Some(p) = delay.percent
                && !(0..=100).contains(&p)
            {
                sink.schema(
                    format!("{ff}.delay.percent"),
                    format!("percent {p} must be in range [0, 100]"),
                );
            }
            if delay.percentage.is_none() && delay.percent.is_none() {
                fault_without_percentage(&format!("{ff}.delay"), "delayed", sink);
            }
        }
        if let Some(abort) = &fault.abort {
            match abort.http_status {
                Some(s) if !(200..=599).contains(&s) => sink.schema(
                    format!("{ff}.abort.httpStatus"),
                    format!("invalid abort http status {s}: must be in range 200-599"),
                ),
                None if abort.grpc_status.is_none() && abort.http2_error.is_none() => sink.schema(
                    format!("{ff}.abort"),
                    "abort must specify httpStatus, grpcStatus or http2Error",
                ),
                _ => {}
            }
            check_percent(
                &abort.percentage,
                format!("{ff}.abort.percentage.value"),
                sink,
            );
            if abort.percentage.is_none() {
                fault_without_percentage(&format!("{ff}.abort"), "aborted", sink);
            }
        }
    }
    if let Some(mirror) = &rule.mirror {
        index.check_destination(mirror, ns, &format!("{field}.mirror"), sink);
    }
    check_percent(
        &rule.mirror_percentage,
        format!("{field}.mirrorPercentage.value"),
        sink,
    );
    if let Some(p) = rule.mirror_percent
        && p > 100
    {
        sink.schema(
            format!("{field}.mirrorPercent"),
            format!("mirror percent {p} must be in range [0, 100]"),
        );
    }
}

fn fault_without_percentage(field: &str, what: &str, sink: &mut Sink<'_>) {
    sink.push(
        codes::FAULT_NO_PERCENTAGE,
        Severity::Warning,
        format!("{field}.percentage"),
        format!("percentage is not set: no request will be {what} (Istio treats unset as 0%)"),
    );
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn http_match(m: &HttpMatchRequest, field: &str, sink: &mut Sink<'_>) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(sm, &format!("{field}.{name}"), sink);
        }
    }
    for (name, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
        ("queryParams", &m.query_params),
    ] {
        for (key, sm) in map {
            let f = format!("{field}.{name}.{key}");
            if name != "queryParams" && key.chars().any(|c| c.is_ascii_uppercase()) {
                sink.schema(f.clone(), format!("header name {key:?} must be lowercase"));
            }
            check_string_match(sm, &f, sink);
        }
    }
    if m.ignore_uri_case == Some(true) && m.uri.as_ref().is_some_and(|u| u.regex.is_some()) {
        sink.schema(
            format!("{field}.ignoreUriCase"),
            "ignoreUriCase applies to exact and prefix uri matches only",
        );
    }
}

/// IST0109: several mesh-bound VirtualServices for one host in one namespace.
pub(crate) fn host_conflicts(resources: &[MeshResource], out: &mut Vec<Diagnostic>) {
    let mut by_host: BTreeMap<(String, String), Vec<&MeshResource>> = BTreeMap::new();
    for r in resources {
        let MeshResource::VirtualService(vs) = r else {
            continue;
        };
        if !binds_to_mesh(vs) {
            continue;
        }
        let hosts: BTreeSet<String> = vs
            .spec
            .hosts
            .iter()
            .map(|h| resolve_host(h, r.namespace()))
            .collect();
        for h in hosts {
            by_host
                .entry((r.namespace().to_string(), h))
                .or_default()
                .push(r);
        }
    }
    for ((_, host), mut group) in by_host {
        if group.len() < 2 {
            continue;
        }
        group.sort_by_key(|r| r.name().to_string());
        let names: Vec<String> = group
            .iter()
            .map(|r| format!("{}/{}", r.namespace(), r.name()))
            .collect();
        let Some(first) = group.first() else {
            continue;
        };
        out.push(Diagnostic {
            code: codes::HOST_CONFLICT,
            severity: Severity::Warning,
            object: first.display_name(),
            field: "spec.hosts".into(),
            message: format!(
                "The VirtualServices {} associated with mesh gateway define the same host {host} \
                 which can lead to undefined behavior. This can be fixed by merging the \
                 conflicting VirtualServices into a single resource.",
                names.join(",")
            ),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------------------

const TRAFFIC_POLICY_UNSUPPORTED: &[&str] = &[
    "loadBalancer.localityLbSetting",
    "loadBalancer.warmupDurationSecs",
    "loadBalancer.warmup",
    "loadBalancer.consistentHash.httpCookie.attributes",
    "connectionPool.tcp.tcpKeepalive",
    "connectionPool.tcp.idleTimeout",
    "connectionPool.http.h2UpgradePolicy",
    "connectionPool.http.useClientProtocol",
    "connectionPool.http.maxConcurrentStreams",
    "outlierDetection.splitExternalLocalOriginErrors",
    "outlierDetection.consecutiveLocalOriginFailures",
    "outlierDetection.consecutiveErrors",
    "tunnel",
    "proxyProtocol",
];

pub(crate) fn destination_rule(dr: &DestinationRule, index: &Index<'_>, sink: &mut Sink<'_>) {
    let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
    let spec = &dr.spec;
    if spec.host.is_empty() {
        sink.schema("spec.host", "host is required");
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", sink);
    }
    let fqdn = resolve_host(&spec.host, ns);
    let service = index.cluster.service_for_fqdn(&fqdn);
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            sink.schema(format!("{field}.name"), "subset name is required");
        } else if !names.insert(subset.name.as_str()) {
            sink.schema(
                format!("{field}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(tp, &format!("{field}.trafficPolicy"), sink);
        }
        if let Some(svc) = service
            && !svc.selector.is_empty()
            && !index.cluster.pods.is_empty()
        {
            let selectors = [&svc.selector, &subset.labels];
            if index
                .cluster
                .pods_matching(ns_of(svc), &selectors)
                .next()
                .is_none()
            {
                let labels: Vec<String> = subset
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                sink.push(
                    codes::SUBSET_NO_PODS,
                    Severity::Warning,
                    format!("{field}.labels"),
                    format!(
                        "subset {:?} selects no pods of service {}/{} (labels {}): requests \
                         routed to it will fail with 503 (no healthy upstream)",
                        subset.name,
                        svc.namespace,
                        svc.name,
                        labels.join(",")
                    ),
                );
            }
        }
    }
    if let Some(sel) = &spec.workload_selector
        && sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
    {
        sink.push(
            codes::SCHEMA,
            Severity::Warning,
            "spec.workloadSelector",
            "workloadSelector has no matchLabels: it selects every workload in the namespace",
        );
    }
    let mut patterns: Vec<String> = vec!["exportTo".into(), "workloadSelector".into()];
    for prefix in [
        "trafficPolicy",
        "trafficPolicy.portLevelSettings[]",
        "subsets[].trafficPolicy",
        "subsets[].trafficPolicy.portLevelSettings[]",
    ] {
        for p in TRAFFIC_POLICY_UNSUPPORTED {
            patterns.push(format!("{prefix}.{p}"));
        }
    }
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    report_unsupported(spec, &patterns, sink);
}

fn ns_of(svc: &super::ClusterService) -> &str {
    &svc.namespace
}

fn traffic_policy(tp: &TrafficPolicy, field: &str, sink: &mut Sink<'_>) {
    policy_parts(
        &tp.load_balancer,
        &tp.connection_pool,
        &tp.outlier_detection,
        &tp.tls,
        field,
        sink,
    );
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{field}.portLevelSettings[{i}]");
        if pls.port.is_none() {
            sink.schema(format!("{pf}.port"), "port must be specified");
        }
        policy_parts(
            &pls.load_balancer,
            &pls.connection_pool,
            &pls.outlier_detection,
            &pls.tls,
            &pf,
            sink,
        );
    }
}

fn policy_parts(
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<crate::crd::networking::ConnectionPoolSettings>,
    outlier: &Option<crate::crd::networking::OutlierDetection>,
    tls: &Option<crate::crd::networking::ClientTlsSettings>,
    field: &str,
    sink: &mut Sink<'_>,
) {
    if let Some(lb) = lb {
        let lf = format!("{field}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            sink.schema(
                lf.clone(),
                "only one of simple or consistentHash can be set",
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.is_some(),
                ch.http_query_parameter_name.is_some(),
            ];
            let n = keys.iter().filter(|k| **k).count();
            if n != 1 {
                sink.schema(
                    format!("{lf}.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp or \
                     httpQueryParameterName must be set",
                );
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                sink.schema(
                    format!("{lf}.consistentHash"),
                    "only one of ringHash or maglev can be set",
                );
            }
            if let Some(cookie) = &ch.http_cookie {
                if cookie.name.is_empty() {
                    sink.schema(
                        format!("{lf}.consistentHash.httpCookie.name"),
                        "name is required",
                    );
                }
                if let Some(ttl) = &cookie.ttl
                    && crate::crd::parse_go_duration(ttl).is_none()
                {
                    sink.schema(
                        format!("{lf}.consistentHash.httpCookie.ttl"),
                        format!("invalid duration {ttl:?}"),
                    );
                }
            }
        }
    }
    if let Some(pool) = pool {
        let pf = format!("{field}.connectionPool");
        if let Some(tcp) = &pool.tcp {
            check_duration(
                &tcp.connect_timeout,
                format!("{pf}.tcp.connectTimeout"),
                sink,
            );
            check_duration(
                &tcp.max_connection_duration,
                format!("{pf}.tcp.maxConnectionDuration"),
                sink,
            );
            if tcp.max_connections.is_some_and(|n| n < 0) {
                sink.schema(format!("{pf}.tcp.maxConnections"), "must be >= 0");
            }
        }
        if let Some(http) = &pool.http {
            check_duration(&http.idle_timeout, format!("{pf}.http.idleTimeout"), sink);
            for (name, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
            ] {
                if v.is_some_and(|n| n < 0) {
                    sink.schema(format!("{pf}.http.{name}"), "must be >= 0");
                }
            }
        }
    }
    if let Some(od) = outlier {
        let of = format!("{field}.outlierDetection");
        check_duration(&od.interval, format!("{of}.interval"), sink);
        check_duration(
            &od.base_ejection_time,
            format!("{of}.baseEjectionTime"),
            sink,
        );
        check_duration(&od.max_ejection_time, format!("{of}.maxEjectionTime"), sink);
        for (name, v) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if v.is_some_and(|p| !(0..=100).contains(&p)) {
                sink.schema(format!("{of}.{name}"), "must be in range [0, 100]");
            }
        }
    }
    if let Some(tls) = tls
        && tls.mode == Some(crate::crd::networking::ClientTlsMode::IstioMutual)
        && (tls.client_certificate.is_some()
            || tls.private_key.is_some()
            || tls.ca_certificates.is_some()
            || tls.credential_name.is_some())
    {
        sink.schema(
            format!("{field}.tls"),
            "ISTIO_MUTUAL TLS cannot have associated client certificates, private key, CA \
             certificates or credentialName",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry, Gateway
// ---------------------------------------------------------------------------------------------

pub(crate) fn service_entry(se: &ServiceEntry, sink: &mut Sink<'_>) {
    let spec = &se.spec;
    if spec.hosts.is_empty() {
        sink.schema("spec.hosts", "ServiceEntry must have at least one host");
    }
    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        sink.schema(
            "spec",
            "only one of WorkloadSelector or Endpoints can be set",
        );
    }
    let mut ports = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if !ports.insert(p.number) {
            sink.schema(
                format!("spec.ports[{i}].number"),
                format!("port number {} must be unique", p.number),
            );
        }
    }
    report_unsupported(
        spec,
        &["workloadSelector", "subjectAltNames", "exportTo"],
        sink,
    );
}

pub(crate) fn gateway(_gw: &Gateway, sink: &mut Sink<'_>) {
    sink.unsupported(
        "spec",
        "Istio ingress/egress Gateways need a gateway deployment; Weft runs none",
    );
}
