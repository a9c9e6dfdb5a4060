//! Semantic validation of mesh resources with `istioctl analyze`-style output.
//!
//! [`validate`] is pure: typed resources plus a minimal [`ClusterView`] in, [`Diagnostic`]s out.
//! [`analyze_dir`] runs it offline over a directory of YAML (`mesh-controller analyze`).
//!
//! Codes follow `istioctl analyze` where Istio has the check:
//! - `IST0106` (Error): what Istio's webhook / CRD schema would reject (weights, exclusive route
//!   actions, fault, durations, regexes, selectors, ...). Parse errors use it too.
//! - `IST0101` (Error): referenced host or subset not found.
//! - `IST0109` (Warning): two VirtualServices for one host in one namespace on the mesh gateway.
//! - `IST0131` (Warning): an http rule that can never match (after a catch-all rule).
//! - `IST0173` (Warning): a DestinationRule subset that selects no pods (requests get 503).
//! - `WEFT0001` (Info): a field Weft does not support yet (kept, not enforced).
//! - `WEFT0002` (Info): PeerAuthentication `DISABLE`, treated as `PERMISSIVE`.
//! - `WEFT0003` (Warning): a fault without `percentage` (Istio injects nothing).
//! - `WEFT0004` (Warning): a VirtualService for a Service that Gateway API routes are attached to
//!   (the HTTPRoutes win; the VirtualService is ignored for it).
//! - `WEFT0010` (Error): a file or YAML document that cannot be read.
//!
//! Regexes are checked with the `regex` crate; Istio/Envoy use RE2. Both reject backreferences
//! and look-around and agree on common syntax, but a few constructs differ (e.g. RE2's `\C`,
//! Rust's class set operations like `[a&&b]`), and Envoy additionally caps RE2 program size.
mod analyze;
mod cluster;
mod gateway_api;
mod istio;
mod security;

use std::fmt;

use crate::crd::MeshResource;

pub use analyze::analyze_dir;
pub use cluster::{ClusterPod, ClusterService, ClusterView};

/// How bad a [`Diagnostic`] is (`istioctl analyze` levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "Error",
            Self::Warning => "Warning",
            Self::Info => "Info",
        })
    }
}

/// One finding: `Error [IST0106] (VirtualService demo/reviews) spec.http[0].route: total
/// destination weight = 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// `IST0106`-style code (see the module docs).
    pub code: &'static str,
    pub severity: Severity,
    /// `Kind namespace/name`.
    pub object: String,
    /// Path of the offending field (`spec.http[1].route[0].weight`), may be empty.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({})", self.severity, self.code, self.object)?;
        if !self.field.is_empty() {
            write!(f, " {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Codes (see the module docs).
pub mod codes {
    pub const SCHEMA: &str = "IST0106";
    pub const NOT_FOUND: &str = "IST0101";
    pub const HOST_CONFLICT: &str = "IST0109";
    pub const UNREACHABLE: &str = "IST0131";
    pub const SUBSET_NO_PODS: &str = "IST0173";
    pub const NOT_SUPPORTED: &str = "WEFT0001";
    pub const MTLS_DISABLE: &str = "WEFT0002";
    pub const FAULT_NO_PERCENTAGE: &str = "WEFT0003";
    pub const SHADOWED_BY_GATEWAY_API: &str = "WEFT0004";
    /// AuthorizationPolicy rule with HTTP attributes (fail-safe on non-HTTP connections).
    pub const HTTP_ATTRIBUTES_AT_L4: &str = "WEFT0005";
    pub const UNREADABLE: &str = "WEFT0010";
}

/// Collects diagnostics for one object.
pub(crate) struct Sink<'a> {
    out: &'a mut Vec<Diagnostic>,
    object: String,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(out: &'a mut Vec<Diagnostic>, object: String) -> Self {
        Self { out, object }
    }

    pub(crate) fn push(
        &mut self,
        code: &'static str,
        severity: Severity,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.out.push(Diagnostic {
            code,
            severity,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// `IST0106` error.
    pub(crate) fn schema(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(codes::SCHEMA, Severity::Error, field, message);
    }

    /// `WEFT0001` info.
    pub(crate) fn unsupported(&mut self, field: impl Into<String>, what: &str) {
        let what = if what.is_empty() {
            String::new()
        } else {
            format!(" ({what})")
        };
        self.push(
            codes::NOT_SUPPORTED,
            Severity::Info,
            field,
            format!("not supported by Weft yet; the field is kept but not enforced{what}"),
        );
    }
}

/// Validates `resources` against each other and `cluster`. Output order: by object, in input
/// order, then the cross-object checks (host conflicts).
pub fn validate(resources: &[MeshResource], cluster: &ClusterView) -> Vec<Diagnostic> {
    let index = istio::Index::new(resources, cluster);
    let mut out = Vec::new();
    for r in resources {
        let mut sink = Sink::new(&mut out, r.display_name());
        match r {
            MeshResource::VirtualService(vs) => istio::virtual_service(vs, &index, &mut sink),
            MeshResource::DestinationRule(dr) => istio::destination_rule(dr, &index, &mut sink),
            MeshResource::ServiceEntry(se) => istio::service_entry(se, &mut sink),
            MeshResource::Gateway(gw) => istio::gateway(gw, &mut sink),
            MeshResource::PeerAuthentication(pa) => security::peer_authentication(pa, &mut sink),
            MeshResource::AuthorizationPolicy(ap) => security::authorization_policy(ap, &mut sink),
            MeshResource::RequestAuthentication(ra) => {
                security::request_authentication(ra, &mut sink)
            }
            MeshResource::HttpRoute(hr) => gateway_api::http_route(hr, &index, &mut sink),
            MeshResource::GrpcRoute(gr) => gateway_api::grpc_route(gr, &index, &mut sink),
        }
    }
    istio::host_conflicts(resources, &mut out);
    gateway_api::shadowed_virtual_services(resources, &mut out);
    out
}

#[cfg(test)]
mod tests;

/// Validates every mesh resource of a model (the running controller's view, whatever its source):
/// parse errors and semantic findings, one diagnostic each.
pub fn validate_model(model: &crate::model::Model) -> Vec<Diagnostic> {
    let mut cluster = ClusterView::default();
    let mut resources = vec![];
    let mut out = vec![];
    for objs in model.objects.values() {
        for v in objs.values() {
            cluster.add_object(v);
            match crate::crd::parse_resource(v) {
                Some(Ok(r)) => resources.push(r),
                Some(Err(message)) => out.push(Diagnostic {
                    code: codes::SCHEMA,
                    severity: Severity::Error,
                    object: format!(
                        "{} {}/{}",
                        v.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
                        v.pointer("/metadata/namespace")
                            .and_then(|k| k.as_str())
                            .unwrap_or("default"),
                        v.pointer("/metadata/name")
                            .and_then(|k| k.as_str())
                            .unwrap_or("?")
                    ),
                    field: String::new(),
                    message,
                }),
                None => {}
            }
        }
    }
    out.extend(validate(&resources, &cluster));
    out
}
