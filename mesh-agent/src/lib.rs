//! Weft's per-node agent.
//!
//! - [`ebpf`]: loading the embedded eBPF object (`mesh-ebpf`), attaching it, and reading its maps.
//!
//! Pod enrolment, the node proxy, identity and the config client arrive with later issues
//! (see `docs/` and the issue tracker); nothing here pretends to do them.
pub mod ebpf;
