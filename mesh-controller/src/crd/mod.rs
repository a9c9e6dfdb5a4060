//! The resources users `kubectl apply`: Istio `networking.istio.io` / `security.istio.io` v1 kinds
//! (with CRD generation, served as v1/v1beta1[/v1alpha3] like Istio) and Gateway API
//! `HTTPRoute`/`GRPCRoute` (types only; the upstream CRDs are used).
//!
//! - [`parse_resource`] turns one decoded object into a typed [`MeshResource`], rejecting fields
//!   neither Istio nor Gateway API define (as `kubectl apply`'s strict field validation does) and
//!   naming the offending field (`spec.http[0].route[1].weight: invalid type: ...`).
//! - [`all_crds`] / [`crds_yaml`] produce the 7 Istio CRDs for `deploy/crds/`.
//!
//! Fields Istio defines that Weft does not model are kept as [`Opaque`] JSON, never dropped, so
//! `analyze` can report them as not supported.
pub mod common;
pub mod gateway_api;
pub mod networking;
pub mod security;

mod parse;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{
    DurationError, GoDuration, Opaque, Percent, PolicyTargetReference, PortSelector, StringMatch,
    WorkloadSelector, parse_go_duration,
};
pub use gateway_api::{GRPCRoute, GRPCRouteSpec, HTTPRoute, HTTPRouteSpec};
pub use networking::{
    DestinationRule, DestinationRuleSpec, Gateway, GatewaySpec, ServiceEntry, ServiceEntrySpec,
    VirtualService, VirtualServiceSpec,
};
pub use parse::parse_resource;
pub use security::{
    AuthorizationPolicy, AuthorizationPolicySpec, PeerAuthentication, PeerAuthenticationSpec,
    RequestAuthentication, RequestAuthenticationSpec,
};

/// `networking.istio.io`.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// `security.istio.io`.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// `gateway.networking.k8s.io`.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Versions served for `networking.istio.io` kinds (v1 first: the storage version).
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// Versions served for `security.istio.io` kinds (v1 first: the storage version).
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Gateway API versions accepted for HTTPRoute (GRPCRoute: v1 and v1alpha2).
pub const HTTPROUTE_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Gateway API versions accepted for GRPCRoute.
pub const GRPCROUTE_VERSIONS: &[&str] = &["v1", "v1alpha2"];

/// Any resource Weft reads from users, typed.
///
/// Unboxed on purpose: objects are parsed once and kept in a `Vec`; plain variants keep pattern
/// matching simple for the translator.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum MeshResource {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    ServiceEntry(ServiceEntry),
    Gateway(Gateway),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    HttpRoute(HTTPRoute),
    GrpcRoute(GRPCRoute),
}

impl MeshResource {
    /// The Kubernetes kind (`VirtualService`, `HTTPRoute`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VirtualService(_) => "VirtualService",
            Self::DestinationRule(_) => "DestinationRule",
            Self::ServiceEntry(_) => "ServiceEntry",
            Self::Gateway(_) => "Gateway",
            Self::PeerAuthentication(_) => "PeerAuthentication",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Self::RequestAuthentication(_) => "RequestAuthentication",
            Self::HttpRoute(_) => "HTTPRoute",
            Self::GrpcRoute(_) => "GRPCRoute",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &kube::core::ObjectMeta {
        match self {
            Self::VirtualService(o) => &o.metadata,
            Self::DestinationRule(o) => &o.metadata,
            Self::ServiceEntry(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::PeerAuthentication(o) => &o.metadata,
            Self::AuthorizationPolicy(o) => &o.metadata,
            Self::RequestAuthentication(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::GrpcRoute(o) => &o.metadata,
        }
    }

    /// `metadata.name` (empty if unset).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`, `default` if unset (as `kubectl apply` without `-n` would do).
    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("default")
    }

    /// `VirtualService demo/reviews`, as `istioctl analyze` names objects.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.name())
    }
}

/// Copies the single version of `crd` under each extra name (served, not stored): all versions
/// share one schema, as in Istio.
fn with_versions(mut crd: CustomResourceDefinition, versions: &[&str]) -> CustomResourceDefinition {
    let Some(first) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    let mut all = Vec::with_capacity(versions.len());
    for (i, name) in versions.iter().enumerate() {
        let mut v = first.clone();
        v.name = (*name).to_string();
        v.served = true;
        v.storage = i == 0;
        all.push(v);
    }
    crd.spec.versions = all;
    crd
}

/// The 7 Istio CRDs Weft serves, each with all its versions (v1 = storage), sorted by name.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        with_versions(VirtualService::crd(), NETWORKING_VERSIONS),
        with_versions(DestinationRule::crd(), NETWORKING_VERSIONS),
        with_versions(ServiceEntry::crd(), NETWORKING_VERSIONS),
        with_versions(Gateway::crd(), NETWORKING_VERSIONS),
        with_versions(PeerAuthentication::crd(), SECURITY_VERSIONS),
        with_versions(AuthorizationPolicy::crd(), SECURITY_VERSIONS),
        with_versions(RequestAuthentication::crd(), SECURITY_VERSIONS),
    ];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// [`all_crds`] as multi-document YAML (stable order, `---` separated) for `deploy/crds/`.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in all_crds() {
        // Serializing these plain data types cannot fail; keep going rather than panic if it did.
        match serde_yaml::to_string(&crd) {
            Ok(doc) => {
                out.push_str("---\n");
                out.push_str(&doc);
            }
            Err(e) => {
                out.push_str(&format!("# error serializing CRD: {e}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
