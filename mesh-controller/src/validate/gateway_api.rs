//! Checks for Gateway API HTTPRoute / GRPCRoute (GAMMA: Service parents).
use std::collections::BTreeMap;

use super::cluster::resolve_host;
use super::istio::{Index, binds_to_mesh, check_regex};
use super::{Diagnostic, Severity, Sink, codes};
use crate::crd::gateway_api::{HttpBackendRef, HttpHeaderMatch, HttpRouteFilter, ParentReference};
use crate::crd::{GRPCRoute, HTTPRoute, MeshResource};

fn parents(parents: &[ParentReference], ns: &str, index: &Index<'_>, sink: &mut Sink<'_>) {
    if parents.is_empty() {
        sink.unsupported(
            "spec.parentRefs",
            "a route without parentRefs attaches to nothing",
        );
    }
    for (i, p) in parents.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        if !p.is_service() {
            sink.unsupported(f, "Weft supports Service parents (GAMMA) only");
            continue;
        }
        let pns = p.namespace.as_deref().unwrap_or(ns);
        if !index.host_known(&resolve_host(&p.name, pns)) {
            sink.push(
                codes::NOT_FOUND,
                Severity::Error,
                format!("{f}.name"),
                format!("Referenced service not found: \"{pns}/{}\"", p.name),
            );
        }
    }
}

fn backends(
    refs: &[HttpBackendRef],
    ns: &str,
    field: &str,
    index: &Index<'_>,
    sink: &mut Sink<'_>,
) {
    for (i, b) in refs.iter().enumerate() {
        let f = format!("{field}.backendRefs[{i}]");
        let core = matches!(b.group.as_deref(), None | Some("") | Some("core"));
        let service = core && matches!(b.kind.as_deref(), None | Some("Service"));
        if !service {
            sink.unsupported(f.clone(), "only Service backends are supported");
        } else {
            if b.port.is_none() {
                sink.schema(
                    format!("{f}.port"),
                    "port is required when backendRef refers to a Service",
                );
            }
            let bns = b.namespace.as_deref().unwrap_or(ns);
            if !index.host_known(&resolve_host(&b.name, bns)) {
                sink.push(
                    codes::NOT_FOUND,
                    Severity::Error,
                    format!("{f}.name"),
                    format!("Referenced service not found: \"{bns}/{}\"", b.name),
                );
            }
            if bns != ns {
                sink.unsupported(
                    format!("{f}.namespace"),
                    "cross-namespace backends need a ReferenceGrant",
                );
            }
        }
        if b.weight.is_some_and(|w| w < 0) {
            sink.schema(format!("{f}.weight"), "weight must be >= 0");
        }
        filters(&b.filters, &f, sink);
    }
}

fn header_matches(list: &[HttpHeaderMatch], field: &str, sink: &mut Sink<'_>) {
    for (i, h) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match h.match_type.as_deref() {
            None | Some("Exact") => {}
            Some("RegularExpression") => check_regex(&h.value, format!("{f}.value"), sink),
            Some(other) => {
                sink.schema(format!("{f}.type"), format!("unsupported value: {other:?}"))
            }
        }
    }
}

fn filters(list: &[HttpRouteFilter], field: &str, sink: &mut Sink<'_>) {
    let mut redirect = false;
    let mut rewrite = false;
    for (i, flt) in list.iter().enumerate() {
        let f = format!("{field}.filters[{i}]");
        let present = match flt.filter_type.as_str() {
            "RequestHeaderModifier" => flt.request_header_modifier.is_some(),
            "ResponseHeaderModifier" => flt.response_header_modifier.is_some(),
            "RequestRedirect" => {
                redirect = true;
                flt.request_redirect.is_some()
            }
            "URLRewrite" => {
                rewrite = true;
                flt.url_rewrite.is_some()
            }
            "RequestMirror" => flt.request_mirror.is_some(),
            "CORS" => flt.cors.is_some(),
            "ExternalAuth" => {
                sink.unsupported(f.clone(), "ExternalAuth filter");
                flt.external_auth.is_some()
            }
            "ExtensionRef" => {
                sink.unsupported(f.clone(), "ExtensionRef filter");
                flt.extension_ref.is_some()
            }
            other => {
                sink.schema(
                    format!("{f}.type"),
                    format!("unsupported filter type {other:?}"),
                );
                true
            }
        };
        if !present {
            sink.schema(
                f.clone(),
                format!(
                    "filter type {} requires its matching field",
                    flt.filter_type
                ),
            );
        }
        if let Some(r) = &flt.request_redirect
            && let Some(code) = r.status_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            sink.schema(
                format!("{f}.requestRedirect.statusCode"),
                format!("unsupported value: {code}: supported values: 301, 302, 303, 307, 308"),
            );
        }
    }
    if redirect && rewrite {
        sink.schema(
            format!("{field}.filters"),
            "may specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, \
             but not both",
        );
    }
}

/// Gateway API duration: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
fn gateway_duration(s: &str) -> Option<std::time::Duration> {
    let re = regex::Regex::new(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$").ok()?;
    if !re.is_match(s) {
        return None;
    }
    crate::crd::parse_go_duration(s)
}

pub(crate) fn http_route(hr: &HTTPRoute, index: &Index<'_>, sink: &mut Sink<'_>) {
    let ns = hr.metadata.namespace.as_deref().unwrap_or("default");
    parents(&hr.spec.parent_refs, ns, index, sink);
    for (i, rule) in hr.spec.rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (m, mm) in rule.matches.iter().enumerate() {
            let mf = format!("{rf}.matches[{m}]");
            if let Some(path) = &mm.path {
                let value = path.value.as_deref().unwrap_or("/");
                match path.match_type.as_deref() {
                    None | Some("PathPrefix") | Some("Exact") => {
                        if !value.starts_with('/') {
                            sink.schema(
                                format!("{mf}.path.value"),
                                "value must be an absolute path",
                            );
                        }
                    }
                    Some("RegularExpression") => {
                        check_regex(value, format!("{mf}.path.value"), sink);
                    }
                    Some(other) => sink.schema(
                        format!("{mf}.path.type"),
                        format!("unsupported value: {other:?}"),
                    ),
                }
            }
            header_matches(&mm.headers, &format!("{mf}.headers"), sink);
            header_matches(&mm.query_params, &format!("{mf}.queryParams"), sink);
        }
        filters(&rule.filters, &rf, sink);
        backends(&rule.backend_refs, ns, &rf, index, sink);
        if let Some(t) = &rule.timeouts {
            let mut parsed = [None, None];
            for (k, (name, v)) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(v) = v {
                    match gateway_duration(v) {
                        Some(d) => parsed[k] = Some(d),
                        None => sink.schema(
                            format!("{rf}.timeouts.{name}"),
                            format!("invalid duration {v:?}"),
                        ),
                    }
                }
            }
            if let [Some(req), Some(backend)] = parsed
                && !req.is_zero()
                && backend > req
            {
                sink.schema(
                    format!("{rf}.timeouts"),
                    "backendRequest timeout cannot be longer than request timeout",
                );
            }
        }
        if rule.retry.is_some() {
            sink.unsupported(format!("{rf}.retry"), "");
        }
        if rule.session_persistence.is_some() {
            sink.unsupported(format!("{rf}.sessionPersistence"), "");
        }
    }
}

pub(crate) fn grpc_route(gr: &GRPCRoute, index: &Index<'_>, sink: &mut Sink<'_>) {
    let ns = gr.metadata.namespace.as_deref().unwrap_or("default");
    parents(&gr.spec.parent_refs, ns, index, sink);
    for (i, rule) in gr.spec.rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (m, mm) in rule.matches.iter().enumerate() {
            let mf = format!("{rf}.matches[{m}]");
            if let Some(method) = &mm.method {
                if method.service.is_none() && method.method.is_none() {
                    sink.schema(
                        format!("{mf}.method"),
                        "one or both of service or method must be specified",
                    );
                }
                if method.match_type.as_deref() == Some("RegularExpression") {
                    for (name, v) in [("service", &method.service), ("method", &method.method)] {
                        if let Some(v) = v {
                            check_regex(v, format!("{mf}.method.{name}"), sink);
                        }
                    }
                }
            }
            header_matches(&mm.headers, &format!("{mf}.headers"), sink);
        }
        filters(&rule.filters, &rf, sink);
        backends(&rule.backend_refs, ns, &rf, index, sink);
        if rule.session_persistence.is_some() {
            sink.unsupported(format!("{rf}.sessionPersistence"), "");
        }
    }
}

/// WEFT0004: a mesh-bound VirtualService whose host is a Service with Gateway API routes attached.
/// The IR compiles the Gateway API routes for that Service and ignores the VirtualService.
pub(crate) fn shadowed_virtual_services(resources: &[MeshResource], out: &mut Vec<Diagnostic>) {
    let mut attached: BTreeMap<String, String> = BTreeMap::new();
    for r in resources {
        let parents = match r {
            MeshResource::HttpRoute(hr) => &hr.spec.parent_refs,
            MeshResource::GrpcRoute(gr) => &gr.spec.parent_refs,
            _ => continue,
        };
        for p in parents.iter().filter(|p| p.is_service()) {
            let ns = p.namespace.as_deref().unwrap_or(r.namespace());
            attached
                .entry(resolve_host(&p.name, ns))
                .or_insert_with(|| format!("{} {}/{}", r.kind(), r.namespace(), r.name()));
        }
    }
    for r in resources {
        let MeshResource::VirtualService(vs) = r else {
            continue;
        };
        if !binds_to_mesh(vs) {
            continue;
        }
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let host = resolve_host(h, r.namespace());
            if let Some(route) = attached.get(&host) {
                out.push(Diagnostic {
                    code: codes::SHADOWED_BY_GATEWAY_API,
                    severity: Severity::Warning,
                    object: r.display_name(),
                    field: format!("spec.hosts[{i}]"),
                    message: format!(
                        "host {host} also has Gateway API routes ({route}); Weft uses the Gateway \
                         API routes for it and ignores this VirtualService"
                    ),
                });
            }
        }
    }
}
