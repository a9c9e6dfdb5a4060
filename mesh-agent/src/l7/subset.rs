//! DestinationRule subsets: which endpoints of a service a route's `subset` selects.
use std::collections::BTreeMap;

use mesh_common::proto::config::{DestinationPolicy, Subset};

use crate::state::mesh::Endpoint;

/// A route names a subset that no DestinationRule defines for the host.
///
/// The caller answers **503 with response flag `NC`** ("upstream cluster not found"): in Istio
/// the route points at the cluster `outbound|<port>|<subset>|<host>`, which istiod does not create
/// without the subset, and Envoy (≥ 1.18; `NR` before) fails such requests with its
/// `cluster_not_found_response_code`, 503 by default. This is the "make-before-break" window of
/// the Istio deploy guidelines. A subset that exists but selects no endpoint is not an error
/// ([`SubsetSelector::filter`] returns nothing): that is 503 `UH` (no healthy upstream, IST0173).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown subset {subset:?} for {host}: no DestinationRule defines it (503 NC)")]
pub struct UnknownSubset {
    pub host: String,
    pub subset: String,
}

/// The label selector of one subset (or of the whole service).
#[derive(Debug, Clone, Copy)]
pub struct SubsetSelector<'a> {
    /// `None` = every endpoint (no subset named).
    subset: Option<&'a Subset>,
}

impl<'a> SubsetSelector<'a> {
    /// The selector for `subset` of `host` ("" = the whole service, whatever the policy).
    /// `policy` is the host's `DestinationPolicy`, if any.
    pub fn new(
        host: &str,
        policy: Option<&'a DestinationPolicy>,
        subset: &str,
    ) -> Result<SubsetSelector<'a>, UnknownSubset> {
        if subset.is_empty() {
            return Ok(SubsetSelector { subset: None });
        }
        policy
            .and_then(|p| p.subsets.iter().find(|s| s.name == subset))
            .map(|s| SubsetSelector { subset: Some(s) })
            .ok_or_else(|| UnknownSubset {
                host: host.to_string(),
                subset: subset.to_string(),
            })
    }

    /// The subset definition (its merged traffic policy), `None` for the whole service.
    pub fn subset(&self) -> Option<&'a Subset> {
        self.subset
    }

    /// An endpoint belongs to the subset when its labels include all of the subset's labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.subset.is_none_or(|s| {
            s.labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        })
    }

    /// The endpoints in the subset, in their order.
    pub fn filter<'e>(&self, endpoints: &'e [Endpoint]) -> Vec<&'e Endpoint> {
        endpoints
            .iter()
            .filter(|e| self.matches(&e.labels))
            .collect()
    }
}

/// Shorthand: the endpoints of `subset` ("" = all) among `endpoints` of `host`.
pub fn subset_endpoints<'e>(
    host: &str,
    policy: Option<&DestinationPolicy>,
    subset: &str,
    endpoints: &'e [Endpoint],
) -> Result<Vec<&'e Endpoint>, UnknownSubset> {
    Ok(SubsetSelector::new(host, policy, subset)?.filter(endpoints))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    const HOST: &str = "reviews.default.svc.cluster.local";

    fn ep(name: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            uid: format!("uid-{name}"),
            name: name.into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 9080,
            mesh: true,
            identity: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn policy() -> DestinationPolicy {
        let subset = |name: &str, labels: &[(&str, &str)]| Subset {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        DestinationPolicy {
            host: HOST.into(),
            subsets: vec![
                subset("v1", &[("version", "v1")]),
                subset("v2", &[("version", "v2")]),
                subset("v2-canary", &[("version", "v2"), ("track", "canary")]),
                subset("empty", &[("version", "v9")]),
                subset("all", &[]),
            ],
            ..Default::default()
        }
    }

    fn names(r: Result<Vec<&Endpoint>, UnknownSubset>) -> Vec<String> {
        r.expect("known subset")
            .into_iter()
            .map(|e| e.name.clone())
            .collect()
    }

    #[test]
    fn filters_by_labels() {
        let eps = vec![
            ep("r1", &[("app", "reviews"), ("version", "v1")]),
            ep("r2", &[("app", "reviews"), ("version", "v2")]),
            ep(
                "r2c",
                &[("app", "reviews"), ("version", "v2"), ("track", "canary")],
            ),
            ep("r3", &[("app", "reviews"), ("version", "v3")]),
            ep("bare", &[]),
        ];
        let p = policy();
        let get = |s| names(subset_endpoints(HOST, Some(&p), s, &eps));
        assert_eq!(get("v1"), ["r1"]);
        assert_eq!(get("v2"), ["r2", "r2c"]);
        assert_eq!(get("v2-canary"), ["r2c"]);
        // Exists but selects nothing: not an error (503 UH for the caller).
        assert!(get("empty").is_empty());
        // No labels: every endpoint.
        assert_eq!(get("all"), ["r1", "r2", "r2c", "r3", "bare"]);
        // No subset named: the whole service, with or without a policy.
        assert_eq!(get("").len(), 5);
        assert_eq!(names(subset_endpoints(HOST, None, "", &eps)).len(), 5);
        let sel = SubsetSelector::new(HOST, Some(&p), "v2-canary").expect("known");
        assert_eq!(sel.subset().map(|s| s.name.as_str()), Some("v2-canary"));
        assert!(
            SubsetSelector::new(HOST, Some(&p), "")
                .expect("whole")
                .subset()
                .is_none()
        );
    }

    #[test]
    fn unknown_subset_is_an_error() {
        let eps = vec![ep("r1", &[("version", "v1")])];
        let p = policy();
        let e = subset_endpoints(HOST, Some(&p), "v4", &eps).expect_err("unknown");
        assert_eq!(
            e,
            UnknownSubset {
                host: HOST.into(),
                subset: "v4".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown subset \"v4\" for reviews.default.svc.cluster.local: no DestinationRule \
             defines it (503 NC)"
        );
        // No DestinationRule at all.
        assert!(subset_endpoints(HOST, None, "v1", &eps).is_err());
    }
}
