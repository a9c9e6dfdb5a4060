//! Network-namespace helpers: the netns cookie, and running a closure on a thread inside a netns.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, RawFd},
};

const SO_NETNS_COOKIE: libc::c_int = 71;

/// `SO_NETNS_COOKIE` of a socket: the cookie of the netns it was created in (what
/// `bpf_get_netns_cookie` returns for it).
pub fn netns_cookie(fd: RawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Enters `netns` on the calling thread (only this thread moves).
pub fn enter(netns: &File) -> std::io::Result<()> {
    nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(std::io::Error::from)
}

/// Sets `SO_MARK` (the mesh mark) on a socket so the data path never captures it.
pub fn set_mark(fd: RawFd, mark: u32) -> std::io::Result<()> {
    // SAFETY: valid pointer and length for a u32 option.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The netns cookie of the namespace `netns` refers to (via a throwaway socket on a thread).
pub fn cookie_of(netns: &File) -> std::io::Result<u64> {
    let ns = netns.try_clone()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            enter(&ns)?;
            let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
            netns_cookie(sock.as_raw_fd())
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    })
}
