//! Checks for `security.istio.io` kinds.
use std::collections::BTreeMap;

use super::istio::check_duration;
use super::{Severity, Sink, codes};
use crate::crd::security::{AuthorizationAction, MtlsMode};
use crate::crd::{
    AuthorizationPolicy, PeerAuthentication, PolicyTargetReference, RequestAuthentication,
    WorkloadSelector,
};

/// Selector / targetRef misuse shared by the policy kinds.
fn check_targeting(
    selector: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    sink: &mut Sink<'_>,
) {
    let has_refs = target_ref.is_some() || !target_refs.is_empty();
    if selector.is_some() && has_refs {
        sink.schema(
            "spec.selector",
            "only one of targetRefs or selector can be set",
        );
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        sink.schema(
            "spec.targetRef",
            "only one of targetRef or targetRefs can be set",
        );
    }
    if target_refs.len() > 16 {
        sink.schema("spec.targetRefs", "at most 16 targetRefs can be set");
    }
    if let Some(sel) = selector {
        check_selector(sel, sink);
    }
    if has_refs {
        let field = if target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        sink.unsupported(field, "targetRefs attach policies to waypoints/gateways");
    }
}

fn check_selector(sel: &WorkloadSelector, sink: &mut Sink<'_>) {
    let labels = sel.match_labels.as_ref();
    if labels.is_none_or(BTreeMap::is_empty) {
        sink.push(
            codes::SCHEMA,
            Severity::Warning,
            "spec.selector.matchLabels",
            "selector has no matchLabels: it selects every workload in the namespace (the same \
             as no selector); remove it or add labels",
        );
    }
    for (k, v) in labels.into_iter().flatten() {
        if k.is_empty() || k.contains('*') {
            sink.schema(
                format!("spec.selector.matchLabels.{k}"),
                "wildcard or empty label key is not allowed in matchLabels",
            );
        }
        if v.contains('*') {
            sink.schema(
                format!("spec.selector.matchLabels.{k}"),
                "wildcard is not allowed in matchLabels values",
            );
        }
    }
}

pub(crate) fn peer_authentication(pa: &PeerAuthentication, sink: &mut Sink<'_>) {
    let spec = &pa.spec;
    if let Some(sel) = &spec.selector {
        check_selector(sel, sink);
    }
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        sink.schema("spec.portLevelMtls", "portLevelMtls requires selector");
    }
    let mut modes = Vec::new();
    if let Some(mode) = spec.mtls.as_ref().and_then(|m| m.mode) {
        modes.push(("spec.mtls.mode".to_string(), mode));
    }
    for (port, m) in &spec.port_level_mtls {
        if *port == 0 || *port > 65535 {
            sink.schema(
                format!("spec.portLevelMtls.{port}"),
                "port must be in range 1-65535",
            );
        }
        if let Some(mode) = m.mode {
            modes.push((format!("spec.portLevelMtls.{port}.mode"), mode));
        }
    }
    for (field, mode) in modes {
        if mode == MtlsMode::Disable {
            sink.push(
                codes::MTLS_DISABLE,
                Severity::Info,
                field,
                "mTLS mode DISABLE is not supported by Weft (treated as PERMISSIVE as in Istio \
                 ambient)",
            );
        }
    }
}

/// `when` keys Istio accepts (prefix match for the bracketed ones).
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];
const WHEN_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

pub(crate) fn authorization_policy(ap: &AuthorizationPolicy, sink: &mut Sink<'_>) {
    let spec = &ap.spec;
    check_targeting(&spec.selector, &spec.target_ref, &spec.target_refs, sink);
    let action = spec.action.unwrap_or_default();
    match (action, &spec.provider) {
        (AuthorizationAction::Custom, None) => {
            sink.schema("spec.provider", "CUSTOM action requires provider");
        }
        (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
            sink.schema("spec.provider.name", "CUSTOM action requires provider.name");
        }
        (AuthorizationAction::Custom, Some(_)) => {
            sink.unsupported("spec.action", "CUSTOM (external authorization)");
        }
        (_, Some(_)) => {
            sink.schema(
                "spec.provider",
                "provider must only be used with CUSTOM action",
            );
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let rf = format!("spec.rules[{i}]");
        let http = rule
            .from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
            || rule
                .to
                .iter()
                .filter_map(|t| t.operation.as_ref())
                .any(|o| {
                    !o.hosts.is_empty()
                        || !o.not_hosts.is_empty()
                        || !o.methods.is_empty()
                        || !o.not_methods.is_empty()
                        || !o.paths.is_empty()
                        || !o.not_paths.is_empty()
                })
            || rule
                .when
                .iter()
                .any(|c| c.key.starts_with("request.") || c.key.starts_with("experimental."));
        if http {
            let effect = match action {
                AuthorizationAction::Deny | AuthorizationAction::Audit => {
                    "on connections the proxy does not parse as HTTP this DENY rule applies without its HTTP attributes (Istio's fail-safe)"
                }
                _ => {
                    "on connections the proxy does not parse as HTTP this ALLOW rule never matches (Istio's fail-safe)"
                }
            };
            sink.push(
                codes::HTTP_ATTRIBUTES_AT_L4,
                Severity::Info,
                rf.clone(),
                format!("uses HTTP attributes: {effect}; Weft enforces them only at L7"),
            );
        }
        for (j, from) in rule.from.iter().enumerate() {
            let ff = format!("{rf}.from[{j}].source");
            let Some(src) = &from.source else {
                sink.schema(ff, "source is required in from");
                continue;
            };
            let with_sa = !src.service_accounts.is_empty() || !src.not_service_accounts.is_empty();
            let with_other = !src.principals.is_empty()
                || !src.not_principals.is_empty()
                || !src.namespaces.is_empty()
                || !src.not_namespaces.is_empty();
            if with_sa && with_other {
                sink.schema(
                    ff.clone(),
                    "serviceAccounts cannot be used with principals or namespaces",
                );
            }
            let lists = [
                &src.principals,
                &src.not_principals,
                &src.request_principals,
                &src.not_request_principals,
                &src.namespaces,
                &src.not_namespaces,
                &src.service_accounts,
                &src.not_service_accounts,
                &src.ip_blocks,
                &src.not_ip_blocks,
                &src.remote_ip_blocks,
                &src.not_remote_ip_blocks,
            ];
            if lists.iter().all(|l| l.is_empty()) {
                sink.schema(ff, "source must not be empty");
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tf = format!("{rf}.to[{j}].operation");
            let Some(op) = &to.operation else {
                sink.schema(tf, "operation is required in to");
                continue;
            };
            let lists = [
                &op.hosts,
                &op.not_hosts,
                &op.ports,
                &op.not_ports,
                &op.methods,
                &op.not_methods,
                &op.paths,
                &op.not_paths,
            ];
            if lists.iter().all(|l| l.is_empty()) {
                sink.schema(tf.clone(), "operation must not be empty");
            }
            for (k, port) in op.ports.iter().chain(&op.not_ports).enumerate() {
                if port.parse::<u16>().map_or(true, |p| p == 0) {
                    sink.schema(
                        format!("{tf}.ports[{k}]"),
                        format!("invalid port {port:?}: must be in range 1-65535"),
                    );
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let wf = format!("{rf}.when[{j}]");
            let known = WHEN_KEYS.contains(&cond.key.as_str())
                || WHEN_PREFIXES.iter().any(|p| cond.key.starts_with(p));
            if !known {
                sink.schema(
                    format!("{wf}.key"),
                    format!("unknown attribute ({})", cond.key),
                );
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                sink.schema(wf, "at least one of values or notValues must be set");
            }
        }
    }
}

pub(crate) fn request_authentication(ra: &RequestAuthentication, sink: &mut Sink<'_>) {
    let spec = &ra.spec;
    check_targeting(&spec.selector, &spec.target_ref, &spec.target_refs, sink);
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            sink.schema(format!("{f}.issuer"), "issuer must be set");
        }
        if rule.jwks.is_some() && rule.jwks_uri.is_some() {
            sink.schema(f.clone(), "only one of jwks or jwksUri can be set");
        }
        check_duration(&rule.timeout, format!("{f}.timeout"), sink);
    }
}
