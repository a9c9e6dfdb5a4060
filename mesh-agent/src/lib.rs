//! Weft's per-node agent.
//!
//! - [`ebpf`]: the embedded eBPF object; loading, attaching, pinning and adopting it; typed maps.
//! - [`state`]: pure decisions (which pods to enrol, what changed).
//! - [`sources`]: where workloads come from (`--local-config`, the lab's cluster view).
//! - [`pods`]: locating a pod's cgroup/netns; a per-pod thread creating sockets in its netns.
//! - [`proxy`]: the L4 node proxy (outbound `:15001`, inbound `:15006`).
//! - [`hbone`]: the mTLS tunnel between node proxies (HTTP/2 CONNECT, `:15008`).
//! - [`identity`]: workload certificates (per-identity keys, CSRs to the controller CA, rotation).
//! - [`policy`]: inbound AuthorizationPolicy (L4) and PeerAuthentication evaluation (pure).
//! - [`l7`]: HTTP route selection over the controller's `RouteTable`s: matching, weighted
//!   destinations, DestinationRule subsets (pure).
//! - [`agent`]: the run loop tying them together; [`inspect`]: `mesh-agent bpf …`; [`admin`]: the
//!   localhost admin endpoint (`config`, `certs`, `connections`).
pub mod admin;
pub mod agent;
pub mod ebpf;
pub mod hbone;
pub mod identity;
pub mod inspect;
pub mod l7;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod sources;
pub mod state;
