//! `Authorization`s: AuthorizationPolicies with their scope resolved to an [`Applicability`].
//!
//! Scope (Istio): no selector in the root namespace = every workload of the mesh; no selector
//! elsewhere = the namespace; `selector` = matching workloads of the namespace (in the root
//! namespace: of every namespace); `targetRef(s)` to a core Service = the workloads its selector
//! picks (other target kinds — Gateway, ServiceEntry — select no workload: Weft has no waypoints).
//! `spec: {}` (ALLOW, no rules) therefore denies everything in its scope.
use std::{collections::BTreeMap, sync::Arc};

use mesh_common::proto::config::{
    Authorization, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource, PolicyScope, Resource,
    authorization, resource::Kind,
};

use super::{Applicability, ScopedPolicy};
use crate::{
    crd::{
        MeshResource,
        security::{AuthorizationAction, Condition, Operation, Rule, Source},
    },
    model::Service,
};

/// Annotation that makes a policy log-only.
pub const DRY_RUN: &str = "istio.io/dry-run";

/// `when` keys that are evaluated on the connection (L4); every other key needs HTTP.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Compiles every AuthorizationPolicy (oldest first).
pub fn authorizations(
    aps: &[MeshResource],
    services: &[Service],
    root_namespace: &str,
) -> Vec<ScopedPolicy> {
    aps.iter()
        .filter_map(|obj| {
            let MeshResource::AuthorizationPolicy(ap) = obj else {
                return None;
            };
            let ns = obj.namespace();
            let name = obj.name();
            let spec = &ap.spec;
            let selector = spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let targets: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).collect();
            let root = ns == root_namespace;
            let (scope, applies) = if !targets.is_empty() {
                let selectors = targets
                    .iter()
                    .filter(|t| matches!(t.group.as_deref(), None | Some("") | Some("core")))
                    .filter(|t| t.kind == "Service")
                    .filter_map(|t| {
                        let tns = t.namespace.as_deref().unwrap_or(ns);
                        services
                            .iter()
                            .find(|s| s.namespace == tns && s.name == t.name)
                            .filter(|s| !s.selector.is_empty())
                            .map(|s| s.selector.clone())
                    })
                    .collect();
                (
                    PolicyScope::TargetRefs,
                    Applicability {
                        namespace: Some(ns.to_string()),
                        selectors: Some(selectors),
                    },
                )
            } else if spec.selector.is_some() {
                (
                    PolicyScope::WorkloadSelector,
                    Applicability {
                        namespace: (!root).then(|| ns.to_string()),
                        selectors: Some(vec![selector.clone()]),
                    },
                )
            } else if root {
                (
                    PolicyScope::Mesh,
                    Applicability {
                        namespace: None,
                        selectors: None,
                    },
                )
            } else {
                (
                    PolicyScope::Namespace,
                    Applicability {
                        namespace: Some(ns.to_string()),
                        selectors: None,
                    },
                )
            };
            let action = match spec.action.unwrap_or_default() {
                AuthorizationAction::Allow => authorization::Action::Allow,
                AuthorizationAction::Deny => authorization::Action::Deny,
                AuthorizationAction::Audit => authorization::Action::Audit,
                AuthorizationAction::Custom => authorization::Action::Custom,
            };
            let dry_run = obj
                .metadata()
                .annotations
                .as_ref()
                .and_then(|a| a.get(DRY_RUN))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let authz = Authorization {
                name: name.into(),
                namespace: ns.into(),
                action: action as i32,
                scope: scope as i32,
                selector: selector.into_iter().collect(),
                target_refs: targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{}/{}/{}",
                            t.kind,
                            t.namespace.as_deref().unwrap_or(ns),
                            t.name
                        )
                    })
                    .collect(),
                rules: spec.rules.iter().flatten().map(rule).collect(),
                dry_run,
                provider: spec
                    .provider
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
            };
            Some(ScopedPolicy {
                name: format!("{ns}/{name}"),
                resource: Arc::new(Resource {
                    name: format!("authz/{ns}/{name}"),
                    kind: Some(Kind::Authorization(authz)),
                }),
                applies,
            })
        })
        .collect()
}

/// One rule, with its L7 flag (Istio's TCP fail-safe needs it).
pub fn rule(r: &Rule) -> AuthzRule {
    let from: Vec<AuthzSource> = r
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .map(source)
        .collect();
    let to: Vec<AuthzOperation> =
        r.to.iter()
            .filter_map(|t| t.operation.as_ref())
            .map(operation)
            .collect();
    let when: Vec<AuthzCondition> = r.when.iter().map(condition).collect();
    let l7 = from
        .iter()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
        || to.iter().any(|o| {
            !(o.hosts.is_empty()
                && o.not_hosts.is_empty()
                && o.methods.is_empty()
                && o.not_methods.is_empty()
                && o.paths.is_empty()
                && o.not_paths.is_empty())
        })
        || when.iter().any(|c| c.l7);
    AuthzRule { from, to, when, l7 }
}

fn source(s: &Source) -> AuthzSource {
    AuthzSource {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        service_accounts: s.service_accounts.clone(),
        not_service_accounts: s.not_service_accounts.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
    }
}

/// Ports are strings in Istio; ones that are not 1–65535 never match and are dropped (the
/// validator reports them).
fn ports(p: &[String]) -> Vec<u32> {
    p.iter()
        .filter_map(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0)
        .map(u32::from)
        .collect()
}

fn operation(o: &Operation) -> AuthzOperation {
    AuthzOperation {
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

fn condition(c: &Condition) -> AuthzCondition {
    AuthzCondition {
        key: c.key.clone(),
        values: c.values.clone(),
        not_values: c.not_values.clone(),
        l7: !L4_CONDITION_KEYS.contains(&c.key.as_str()),
    }
}

/// `namespace/name` of the policies (of `policies`) that apply to a workload.
pub fn applying<'a>(
    policies: &'a [ScopedPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> impl Iterator<Item = &'a ScopedPolicy> {
    policies
        .iter()
        .filter(move |p| p.applies.applies(namespace, labels))
}

#[cfg(test)]
mod tests;
