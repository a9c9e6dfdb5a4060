//! `cgroup/connect4` and `cgroup/connect6`, attached to the node's pods cgroup subtree.
//!
//! A meshed pod's TCP `connect()` is rewritten to the pod-local outbound listener
//! (`127.0.0.1:15001` / `[::1]:15001` inside the pod's own netns) and the original destination is
//! recorded under the socket cookie. Return value: always 1 (allow the connect; we only rewrite).
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{
    AF_INET, AF_INET6, CidrKey, OrigDst, PortKey, config_flags, direction, pod_flags, ports, stats,
};

use crate::maps::{EXCLUDED_CIDRS, EXCLUDED_PORTS, MESHED_NETNS, ORIG_BY_COOKIE, config, count};

const SOCK_STREAM: u32 = 1;
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u16) {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        count(stats::CONNECT_SKIP_NOT_TCP);
        return;
    }
    let cfg = config();
    if cfg.flags & config_flags::BYPASS != 0 {
        count(stats::CONNECT_SKIP_BYPASS);
        return;
    }
    // SAFETY: helper without preconditions.
    if cfg.proxy_cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } == cfg.proxy_cgroup_id {
        count(stats::CONNECT_SKIP_PROXY);
        return;
    }
    // SAFETY: `sk` is always set for connect hooks.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && cfg.proxy_mark != 0 && unsafe { (*sk).mark } == cfg.proxy_mark {
        count(stats::CONNECT_SKIP_PROXY);
        return;
    }
    let port = u16::from_be(sa.user_port as u16);
    let mut addr = [0u32; 4];
    let loopback = if family == AF_INET {
        addr[0] = sa.user_ip4;
        u32::from_be(sa.user_ip4) >> 24 == 127
    } else {
        addr = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        // ::1, or a v4-mapped 127/8 address.
        (addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && u32::from_be(addr[3]) == 1)
            || (addr[0] == 0
                && addr[1] == 0
                && u32::from_be(addr[2]) == 0xffff
                && u32::from_be(addr[3]) >> 24 == 127)
    };
    if loopback {
        count(stats::CONNECT_SKIP_LOOPBACK);
        return;
    }
    if ports::is_mesh_port(port) {
        count(stats::CONNECT_SKIP_MESH_PORT);
        return;
    }
    // SAFETY: sock_addr programs may call bpf_get_netns_cookie with their context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) };
    match unsafe { MESHED_NETNS.get(&netns) } {
        Some(p) if p.flags & pod_flags::ENROLLED != 0 => {}
        _ => {
            count(stats::CONNECT_SKIP_NOT_ENROLLED);
            return;
        }
    }
    let pk = PortKey {
        scope: netns,
        port,
        direction: direction::OUTBOUND,
        _pad: 0,
    };
    // SAFETY: read-only lookup.
    if unsafe { EXCLUDED_PORTS.get(&pk) }.is_some() {
        count(stats::CONNECT_SKIP_EXCLUDED);
        return;
    }
    if family == AF_INET {
        let key = Key::new(
            96,
            CidrKey {
                netns_cookie: netns,
                addr: addr[0],
            },
        );
        if EXCLUDED_CIDRS.get(&key).is_some() {
            count(stats::CONNECT_SKIP_EXCLUDED);
            return;
        }
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let orig = OrigDst {
        addr,
        port,
        family,
        _pad: 0,
    };
    if ORIG_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
        count(stats::CONNECT_ERR_MAP_FULL);
        return;
    }
    let outbound = (ports::OUTBOUND.to_be()) as u32;
    if family == AF_INET {
        sa.user_ip4 = 0x7f00_0001u32.to_be();
    } else {
        sa.user_ip6 = [0, 0, 0, 1u32.to_be()];
    }
    sa.user_port = outbound;
    count(stats::CONNECT_REDIRECTED);
}
