//! Weft's cluster controller.
//!
//! - [`sources`]: where Kubernetes objects come from (a watched directory of YAML, or the Kubernetes
//!   API through kube-runtime watchers) → one shared [`model::Store`].
//! - [`auth`]: agent credential → node (bootstrap tokens, or TokenReview).
//! - [`translate`]: pure translation of the model into each node's config (workloads with the mesh
//!   decision made, services with endpoints), and per-node diffs.
//! - [`server`]: the config stream (gRPC, snapshot + deltas, ACK/NACK) and per-node status.
//! - [`ca`]: the certificate authority (node-scoped signing of SPIFFE identities).
//! - [`admin`]: the HTTP admin endpoint behind `mesh-controller proxy-status`.
//! - [`ir`]: routes and policies compiled into the config stream's resolved types.
//! - [`crd`]: the resources users apply (Istio, Gateway API) with CRD generation.
//! - [`validate`]: semantic checks with Istio's wording (`mesh-controller analyze`).
pub mod admin;
pub mod auth;
pub mod bench;
pub mod ca;
pub mod crd;
pub mod ir;
pub mod model;
pub mod server;
pub mod sources;
pub mod status;
pub mod translate;
pub mod validate;
