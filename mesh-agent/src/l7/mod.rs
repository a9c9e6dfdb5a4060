//! L7 routing decisions for the node proxy: pure functions over the controller's IR (no I/O).
//!
//! The controller (`mesh-controller/src/ir/routes.rs`) has already resolved precedence (Istio list
//! order, Gateway API specificity), short host names, Istio defaults and weights; this module only
//! evaluates. Per request, the proxy:
//!
//! 1. builds a [`RequestInfo`] ([`request`]) from the request head, the original destination port
//!    and the client workload;
//! 2. asks the service's [`CompiledTable`] ([`route`]) for a [`Selection`]: the first route in
//!    table order with a matching block, or [`Unmatched`] — Istio's default route to the whole
//!    service for VirtualService tables, 404 (flag `NR`) for Gateway API tables ("requests that do
//!    not match at least one of the Routes will be rejected");
//! 3. picks one of the route's weighted destinations ([`weights`]): `weight / sum of weights`,
//!    relative, no sum-to-100 rule, weight 0 gets nothing, total 0 → none (Gateway API: 500);
//! 4. narrows the destination's endpoints to its DestinationRule subset ([`subset`]); a subset
//!    that no DestinationRule defines → 503 `NC`, one selecting no endpoint → 503 `UH`.
//!
//! # Match semantics (Istio `HTTPMatchRequest`, as Envoy evaluates it)
//! - Conditions within a match block are ANDed, a route's blocks are ORed, a route with no block
//!   matches every request ("The first rule matching an incoming request is used").
//! - String matches: `exact`, `prefix`, `regex`; regexes are RE2 syntax with **full-match**
//!   semantics (compiled as `^(?:…)$` with the `regex` crate, whose syntax is RE2's). They are
//!   compiled once per table; an invalid one fails the table with an error naming the table,
//!   route, match block and field ([`CompileError`]) — the agent NACKs the update.
//! - `uri` is matched against the path without the query string. `ignore_uri_case` applies to
//!   exact and prefix only (Istio), ASCII case folding. Istio prefixes are plain string prefixes;
//!   Gateway API `PathPrefix` (`uri_prefix_by_segment`) matches whole segments.
//! - `headers`: lower-case names; a header sent several times is matched as its values joined
//!   with `,` (Envoy); a header match with no variant set means "present" (empty values count);
//!   an absent header never matches. `without_headers` is the negation (Envoy `invert_match`): the
//!   request must not match, so an absent header satisfies it.
//! - `query_params`: names are case-sensitive, values percent-decoded, the first occurrence is
//!   matched (Envoy); no variant set = present (with or without a value).
//! - Header names `:authority`, `:method`, `:path` (with the query, as received) and `:scheme`
//!   are answered from the request line, like Envoy's pseudo-headers.
//! - `method`, `scheme`: exact/prefix/regex on the request's method (case-sensitive) and scheme.
//! - `authority`: matched against `:authority` / `Host` **as sent**, so `exact: reviews` does not
//!   match `reviews:9080` (Envoy matches the `:authority` header literally; use a prefix or a
//!   regex such as `reviews(:[0-9]+)?`).
//! - `port`: the original destination port (0 = any).
//! - `source_labels` (subset of the client pod's labels) and `source_namespace`: Istio applies
//!   them as workload selectors when generating each client's config; here they are evaluated per
//!   request against the client the proxy identified, which is equivalent. A client that is not a
//!   known pod has no labels and namespace "", so it matches no block that sets either.
//!
//! # TCP routes
//! [`CompiledTable::select_tcp`] picks the first `tcp[]` route whose `L4Match` blocks match a
//! connection ([`TcpInfo`]): `destination_subnets` (an IP or `IP/prefix`, ORed; empty = any;
//! a malformed one fails the table), `port`, `source_labels`, `source_namespace`. None matching
//! = the whole service.
//!
//! # Deviations and limits
//! - The path is not normalised (Istio normalises by default: `..`, `//`, percent-decoding); the
//!   caller should normalise before building the [`RequestInfo`] if it wants Istio's behaviour.
//! - Gateway API tables are evaluated in list order too: the controller sorted them by
//!   specificity already.
//! - Weighted picks take the roll from the caller ([`weights::pick`]) so tests are deterministic;
//!   [`weights::pick_random`] uses `fastrand`. Rolls are `u64` (a sum of `u32` weights can exceed
//!   `u32`).
pub mod cors;
pub mod lb;
pub mod limits;
pub mod outlier;
pub mod path;
pub mod request;
pub mod retry;
pub mod route;
pub mod subset;
pub mod weights;

pub use request::RequestInfo;
pub use route::{CompileError, CompiledTable, Selection, TcpInfo, Unmatched};
pub use subset::{SubsetSelector, UnknownSubset, subset_endpoints};
pub use weights::{pick, pick_random, total_weight};

#[cfg(test)]
mod tests {
    //! Bookinfo's `virtual-service-reviews-test-v2` + `-90-10` + `destination-rule-all` through the
    //! whole pipeline: route, weighted destination, subset endpoints.
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr},
    };

    use mesh_common::proto::config::{
        DestinationPolicy, HttpMatch, HttpRoute, KeyMatch, RouteTable, StringMatch, Subset,
        WeightedDestination, string_match::Kind,
    };

    use super::*;
    use crate::state::mesh::Endpoint;

    const HOST: &str = "reviews.default.svc.cluster.local";

    fn dest(subset: &str, weight: u32) -> WeightedDestination {
        WeightedDestination {
            host: HOST.into(),
            subset: subset.into(),
            weight,
            ..Default::default()
        }
    }

    fn ep(name: &str, version: &str) -> Endpoint {
        Endpoint {
            uid: name.into(),
            name: name.into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 9080,
            mesh: true,
            identity: String::new(),
            labels: BTreeMap::from([
                ("app".to_string(), "reviews".to_string()),
                ("version".to_string(), version.to_string()),
            ]),
        }
    }

    #[test]
    fn bookinfo_reviews() {
        let table = CompiledTable::new(RouteTable {
            host: HOST.into(),
            http: vec![
                HttpRoute {
                    name: "jason".into(),
                    matches: vec![HttpMatch {
                        headers: vec![KeyMatch {
                            name: "end-user".into(),
                            value: Some(StringMatch {
                                kind: Some(Kind::Exact("jason".into())),
                            }),
                        }],
                        ..Default::default()
                    }],
                    destinations: vec![dest("v2", 100)],
                    ..Default::default()
                },
                HttpRoute {
                    name: "rest".into(),
                    destinations: vec![dest("v1", 90), dest("v3", 10)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .expect("compiles");
        let policy = DestinationPolicy {
            host: HOST.into(),
            subsets: ["v1", "v2", "v3"]
                .iter()
                .map(|v| Subset {
                    name: v.to_string(),
                    labels: [("version".to_string(), v.to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let endpoints = vec![ep("r1", "v1"), ep("r2", "v2"), ep("r3", "v3")];

        let parts = |user: Option<&str>| {
            let mut b = http::Request::get("/reviews/0").header("host", "reviews:9080");
            if let Some(u) = user {
                b = b.header("end-user", u);
            }
            b.body(()).expect("request").into_parts().0
        };
        let labels = BTreeMap::from([("app".to_string(), "productpage".to_string())]);
        // Which pod serves the request for this roll.
        let serve = |user: Option<&str>, roll: u64| -> String {
            let req = RequestInfo::from_parts(&parts(user), 9080, "default", &labels);
            let Selection::Route { route, .. } = table.select(&req) else {
                panic!("a route matches");
            };
            let d = pick(&route.destinations, roll).expect("a destination");
            let eps = subset_endpoints(&d.host, Some(&policy), &d.subset, &endpoints)
                .expect("known subset");
            assert_eq!(eps.len(), 1);
            eps[0].name.clone()
        };
        for roll in [0, 50, 89, 90, 99] {
            assert_eq!(serve(Some("jason"), roll), "r2");
        }
        assert_eq!(serve(None, 0), "r1");
        assert_eq!(serve(None, 89), "r1");
        assert_eq!(serve(None, 90), "r3");
        assert_eq!(serve(Some("alice"), 99), "r3");
        // Before the DestinationRule exists (make-before-break violated): 503 NC.
        assert!(subset_endpoints(HOST, None, "v2", &endpoints).is_err());
    }
}
