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
//! # Deviations and limits
//! - The path is not normalised (Istio normalises by default: `..`, `//`, percent-decoding); the
//!   caller should normalise before building the [`RequestInfo`] if it wants Istio's behaviour.
//! - Gateway API tables are evaluated in list order too: the controller sorted them by
//!   specificity already.
//! - Weighted picks take the roll from the caller ([`weights::pick`]) so tests are deterministic;
//!   [`weights::pick_random`] uses `fastrand`. Rolls are `u64` (a sum of `u32` weights can exceed
//!   `u32`).
pub mod request;
pub mod route;
pub mod subset;
pub mod weights;

pub use request::RequestInfo;
pub use route::{CompileError, CompiledTable, Selection, Unmatched};
pub use subset::{SubsetSelector, UnknownSubset, subset_endpoints};
pub use weights::{pick, pick_random, total_weight};
