//! The benchmark baseline: the same relay behind iptables `REDIRECT` + `SO_ORIGINAL_DST`, the way
//! sidecar meshes capture. Used only by `cargo xtask bench capture` (variant d), run inside the
//! client pod's netns with `iptables -t nat -A OUTPUT … -j REDIRECT --to-ports <port>`; upstream
//! sockets carry the mesh mark so the rule can skip them.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
};

use mesh_common::MESH_MARK;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::warn;

use super::relay;
use crate::ebpf::netns;

const SO_ORIGINAL_DST: libc::c_int = 80;

/// The pre-NAT destination of a REDIRECTed connection.
pub fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_in is valid; length and pointer match.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddr::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
        u16::from_be(addr.sin_port),
    ))
}

pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let dst = match original_dst(&client) {
                Ok(d) => d,
                Err(e) => {
                    warn!("SO_ORIGINAL_DST: {e}");
                    return;
                }
            };
            let up = async {
                let s = TcpSocket::new_v4()?;
                netns::set_mark(s.as_raw_fd(), MESH_MARK)?;
                s.set_nodelay(true)?;
                s.connect(dst).await
            };
            match up.await {
                Ok(upstream) => {
                    let _ = client.set_nodelay(true);
                    relay::relay(client, upstream).await;
                }
                Err(_) => relay::reset(&client),
            }
        });
    }
}
