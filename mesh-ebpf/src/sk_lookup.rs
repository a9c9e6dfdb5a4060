//! `sk_lookup`, attached to each enrolled pod's network namespace.
//!
//! Inbound TCP to an enrolled pod's IP that arrived on a non-loopback interface is steered to the
//! pod's `:15006` listener (`INBOUND`); the accepted socket's local address is the original
//! destination. Left alone: loopback (what the proxy delivers to the app), the mesh's own ports
//! (`:15008` HBONE), excluded ports, kubelet probes (source = a node address), a pod talking to its
//! own IP. An enrolled pod without a live listener is dropped: fail closed, never plaintext to the
//! app behind the proxy's back, unless the node's bypass switch is on.
//!
//! Return value: SK_PASS (1, normal lookup or the assigned socket) or SK_DROP (0, refused).
use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_common::{PortKey, config_flags, direction, pod_flags, ports, stats};

use crate::maps::{EXCLUDED_PORTS, INBOUND, POD_IPS, PROBE_SOURCES, config, count};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    try_lookup(&ctx)
}

#[inline(always)]
fn try_lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel hands us a valid bpf_sk_lookup.
    let l = unsafe { &*ctx.lookup };
    if l.family != AF_INET || l.protocol != IPPROTO_TCP {
        count(stats::LOOKUP_SKIP_NOT_TCP);
        return SK_PASS;
    }
    if l.ingress_ifindex == LOOPBACK_IFINDEX {
        count(stats::LOOKUP_SKIP_LOOPBACK);
        return SK_PASS;
    }
    // Map keys must live on the stack (the verifier refuses pointers into the context).
    // SAFETY: plain loads from the context.
    let local_ip4: u32 = unsafe { core::ptr::read_volatile(&l.local_ip4) };
    let remote_ip4: u32 = unsafe { core::ptr::read_volatile(&l.remote_ip4) };
    // SAFETY: read-only lookup.
    let pod = match unsafe { POD_IPS.get(&local_ip4) } {
        Some(p) if p.flags & pod_flags::ENROLLED != 0 => *p,
        _ => {
            count(stats::LOOKUP_SKIP_NOT_POD);
            return SK_PASS;
        }
    };
    let _ = pod;
    if remote_ip4 == local_ip4 {
        count(stats::LOOKUP_SKIP_HAIRPIN);
        return SK_PASS;
    }
    let port = l.local_port as u16;
    if ports::is_mesh_port(port) {
        count(stats::LOOKUP_SKIP_MESH_PORT);
        return SK_PASS;
    }
    if config().flags & config_flags::BYPASS != 0 {
        count(stats::LOOKUP_SKIP_BYPASS);
        return SK_PASS;
    }
    // SAFETY: read-only lookups.
    if unsafe { PROBE_SOURCES.get(&remote_ip4) }.is_some() {
        count(stats::LOOKUP_SKIP_PROBE);
        return SK_PASS;
    }
    let pk = PortKey {
        scope: local_ip4 as u64,
        port,
        direction: direction::INBOUND,
        _pad: 0,
    };
    if unsafe { EXCLUDED_PORTS.get(&pk) }.is_some() {
        count(stats::LOOKUP_SKIP_EXCLUDED);
        return SK_PASS;
    }
    match INBOUND.redirect_sk_lookup(ctx, local_ip4, 0) {
        Ok(()) => {
            count(stats::LOOKUP_STEERED);
            SK_PASS
        }
        Err(_) => {
            count(stats::LOOKUP_DROP_NO_LISTENER);
            SK_DROP
        }
    }
}
