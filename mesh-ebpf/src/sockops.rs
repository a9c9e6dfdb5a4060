//! `sock_ops`, attached to the pods cgroup subtree (and, for the fast path, the agent's cgroup).
//!
//! - TCP_CONNECT_CB: a redirected connect asks for state callbacks, so its cookie entry is removed
//!   if the connection never establishes (e.g. the proxy is down): nothing leaks under churn.
//! - ACTIVE_ESTABLISHED_CB: the original destination moves from the socket cookie to
//!   (netns cookie, client address, client port) — what the proxy computes after `accept()`.
//! - ACTIVE/PASSIVE_ESTABLISHED_CB with the fast path on: the socket joins `FAST_SOCKS`.
//!
//! Return value: always 1 (sock_ops verdicts are ignored for these callbacks).
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{AF_INET, AF_INET6, SockKey, SrcKey, pod_flags, ports, stats};

use crate::maps::{FAST_SOCKS, MESHED_NETNS, ORIG_BY_COOKIE, ORIG_BY_SRC, count};

const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    1
}

#[inline(always)]
fn try_sockops(ctx: &SockOpsContext) {
    let family = ctx.family() as u16;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    // SAFETY: sock_ops programs may pass their context to these helpers.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // SAFETY: read-only lookup.
            if unsafe { ORIG_BY_COOKIE.get(&cookie) }.is_some() {
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == TCP_CLOSE && ORIG_BY_COOKIE.remove(&cookie).is_ok() {
                count(stats::SOCKOPS_ORIG_CLEANED);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: as above.
            let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
            // SAFETY: the value is copied out at once.
            if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(&cookie) } {
                let orig = *orig;
                let mut key = SrcKey {
                    netns_cookie: netns,
                    port: ctx.local_port() as u16,
                    family,
                    ..SrcKey::default()
                };
                if family == AF_INET {
                    key.addr[0] = ctx.local_ip4();
                } else {
                    key.addr = local_ip6(ctx);
                }
                if ORIG_BY_SRC.insert(&key, &orig, 0).is_ok() {
                    count(stats::SOCKOPS_ORIG_MOVED);
                }
                let _ = ORIG_BY_COOKIE.remove(&cookie);
                fast_path(
                    ctx,
                    netns,
                    family,
                    u32::from_be(ctx.remote_port()) as u16 == ports::OUTBOUND,
                );
            } else if u32::from_be(ctx.remote_port()) as u16 == ports::OUTBOUND
                && family == AF_INET
                && u32::from_be(ctx.local_ip4()) >> 24 == 127
            {
                // An app connecting to 15001 itself: not a redirect we made.
                count(stats::SOCKOPS_ORIG_MISSED);
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if ctx.local_port() as u16 == ports::OUTBOUND {
                // SAFETY: as above.
                let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
                fast_path(ctx, netns, family, true);
            }
        }
        _ => {}
    }
}

/// The context's IPv6 address, one 32-bit load at a time (the verifier refuses wider or derived
/// context accesses).
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: in-bounds loads of the bpf_sock_ops context.
    unsafe {
        let ops = ctx.ops;
        [
            core::ptr::read_volatile(&(*ops).local_ip6[0]),
            core::ptr::read_volatile(&(*ops).local_ip6[1]),
            core::ptr::read_volatile(&(*ops).local_ip6[2]),
            core::ptr::read_volatile(&(*ops).local_ip6[3]),
        ]
    }
}

/// Adds an app↔proxy socket to `FAST_SOCKS` when its pod has the fast path on (IPv4 only).
#[inline(always)]
fn fast_path(ctx: &SockOpsContext, netns: u64, family: u16, proxy_hop: bool) {
    if !proxy_hop || family != AF_INET {
        return;
    }
    // SAFETY: read-only lookup.
    let fast = matches!(unsafe { MESHED_NETNS.get(&netns) }, Some(p) if p.flags & pod_flags::FAST_PATH != 0);
    if !fast {
        return;
    }
    let mut key = SockKey {
        local_ip: ctx.local_ip4(),
        remote_ip: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: u32::from_be(ctx.remote_port()),
    };
    // SAFETY: the kernel's bpf_sock_ops for this callback.
    if FAST_SOCKS
        .update(&mut key, unsafe { &mut *ctx.ops }, 0)
        .is_ok()
    {
        count(stats::SOCKOPS_FAST_PATH_ADDED);
    }
}
