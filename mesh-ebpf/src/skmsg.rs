//! Optional same-node fast path (off by default): `sk_msg` on `FAST_SOCKS` hands a message sent
//! on an app↔proxy socket straight to the peer socket's receive queue, skipping the TCP stack.
//! A no-op `SK_SKB` stream verdict is attached to the same map: without one, recent kernels can lose
//! epoll wake-ups for sockets in a sockmap (see docs).
//!
//! Return value: always SK_PASS; a failed redirect falls back to ordinary TCP.
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    macros::{sk_msg, stream_verdict},
    programs::{SkBuffContext, SkMsgContext},
};
use mesh_common::{SockKey, stats};

use crate::maps::{FAST_SOCKS, count};

#[sk_msg]
pub fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands us a valid sk_msg_md.
    let m = unsafe { &*ctx.msg };
    // The peer's own tuple is ours reversed.
    let mut peer = SockKey {
        local_ip: m.remote_ip4,
        remote_ip: m.local_ip4,
        local_port: u32::from_be(m.remote_port),
        remote_port: m.local_port,
    };
    if FAST_SOCKS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(stats::FAST_PATH_REDIRECTED);
    } else {
        count(stats::FAST_PATH_MISSED);
    }
    SK_PASS
}

#[stream_verdict]
pub fn weft_skb_verdict(_ctx: SkBuffContext) -> u32 {
    SK_PASS
}
