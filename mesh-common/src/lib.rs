//! The ABI shared by Weft's eBPF programs (`mesh-ebpf`) and userspace (`mesh-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree byte for byte; flags are
//! `u32`, never `bool`. Layout is pinned by the size/offset tests at the bottom of this file. Nothing but
//! ABI lives here.
// no_std for the eBPF programs; the `proto` feature (userspace binaries only) needs std.
#![cfg_attr(not(feature = "proto"), no_std)]

/// The controller ↔ agent config stream types (`proto/weft/config/v1/config.proto`).
#[cfg(feature = "proto")]
pub mod proto {
    #[allow(clippy::all, missing_docs)]
    pub mod config {
        tonic::include_proto!("weft.config.v1");
    }
    /// `istio.v1.auth.IstioCertificateService` (the CA, port 15012).
    #[allow(clippy::all, missing_docs)]
    pub mod ca {
        tonic::include_proto!("istio.v1.auth");
    }
}

/// Well-known ports (DESIGN.md §5).
pub mod ports {
    /// Outbound capture listener, `127.0.0.1` inside each pod netns.
    pub const OUTBOUND: u16 = 15001;
    /// Inbound plaintext capture listener inside each pod netns.
    pub const INBOUND: u16 = 15006;
    /// Inbound HBONE (mTLS, HTTP/2 CONNECT) on the pod IP.
    pub const HBONE: u16 = 15008;
    /// Agent admin (node, localhost).
    pub const ADMIN: u16 = 15000;
    /// Agent metrics (node).
    pub const METRICS: u16 = 15020;
    /// Controller config stream (gRPC).
    pub const XDS: u16 = 15010;
    /// Controller certificate service (gRPC).
    pub const CA: u16 = 15012;

    /// True for ports the mesh itself owns: never captured.
    pub const fn is_mesh_port(port: u16) -> bool {
        matches!(
            port,
            OUTBOUND | INBOUND | HBONE | ADMIN | METRICS | XDS | CA
        )
    }
}

/// `SO_MARK` set on every socket the proxy creates (same value as Istio's in-pod mark, 1337).
pub const MESH_MARK: u32 = 0x539;

/// `AF_INET` / `AF_INET6` as stored in [`OrigDst::family`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Operator-requested fail-open: connect hooks stop redirecting, sk_lookup stops steering/dropping.
    pub const BYPASS: u32 = 1 << 0;
}

/// Node-wide settings written by the agent into the single-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// cgroup v2 id of the agent/proxy: connects from it are never redirected.
    pub proxy_cgroup_id: u64,
    /// `SO_MARK` of proxy sockets ([`MESH_MARK`]).
    pub proxy_mark: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
}

/// Per enrolled pod, keyed by the pod's network-namespace cookie in `MESHED_NETNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    /// Agent-assigned pod index (names the pod in `mesh-agent bpf` output).
    pub pod_index: u32,
    /// [`pod_flags`] bits.
    pub flags: u32,
}

/// Bits of [`PodEntry::flags`].
pub mod pod_flags {
    /// The pod is enrolled: its in-pod listeners were opened. Its connects are redirected and inbound
    /// connections without a live listener are dropped (fail closed) until it is un-enrolled.
    pub const ENROLLED: u32 = 1 << 0;
    /// Same-node sk_msg fast path enabled for this pod.
    pub const FAST_PATH: u32 = 1 << 1;
}

/// An original destination recorded by the connect hooks.
///
/// `addr` holds the address in network byte order: IPv4 in `addr[0]`, IPv6 in all four words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: [u32; 4],
    /// Destination port, host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    pub _pad: u32,
}

/// Key under which sock_ops re-files an original destination once the connection is established:
/// what the proxy can compute after `accept()` (netns cookie via `SO_NETNS_COOKIE`, the peer address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcKey {
    pub netns_cookie: u64,
    /// Client source address, network byte order (IPv4 in `addr[0]`).
    pub addr: [u32; 4],
    /// Client source port, host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Indexes into the per-CPU `STATS` array: one counter per decision the programs take.
pub mod stats {
    pub const CONNECT_REDIRECTED: u32 = 0;
    pub const CONNECT_SKIP_NOT_TCP: u32 = 1;
    pub const CONNECT_SKIP_PROXY: u32 = 2;
    pub const CONNECT_SKIP_LOOPBACK: u32 = 3;
    pub const CONNECT_SKIP_MESH_PORT: u32 = 4;
    pub const CONNECT_SKIP_NOT_ENROLLED: u32 = 5;
    pub const CONNECT_SKIP_BYPASS: u32 = 6;
    pub const CONNECT_SKIP_EXCLUDED: u32 = 7;
    pub const CONNECT_ERR_MAP_FULL: u32 = 8;
    pub const SOCKOPS_ORIG_MOVED: u32 = 9;
    pub const SOCKOPS_ORIG_MISSED: u32 = 10;
    pub const SOCKOPS_ORIG_CLEANED: u32 = 11;
    pub const SOCKOPS_FAST_PATH_ADDED: u32 = 12;
    pub const LOOKUP_STEERED: u32 = 13;
    pub const LOOKUP_SKIP_LOOPBACK: u32 = 14;
    pub const LOOKUP_SKIP_NOT_POD: u32 = 15;
    pub const LOOKUP_SKIP_MESH_PORT: u32 = 16;
    pub const LOOKUP_SKIP_EXCLUDED: u32 = 17;
    pub const LOOKUP_SKIP_PROBE: u32 = 18;
    pub const LOOKUP_SKIP_HAIRPIN: u32 = 19;
    pub const LOOKUP_SKIP_BYPASS: u32 = 20;
    pub const LOOKUP_DROP_NO_LISTENER: u32 = 21;
    pub const FAST_PATH_REDIRECTED: u32 = 22;
    pub const FAST_PATH_MISSED: u32 = 23;
    pub const LOOKUP_SKIP_NOT_TCP: u32 = 24;
    /// Number of counters; size of the `STATS` array.
    pub const COUNT: u32 = 32;

    /// Human names, index = counter id.
    pub const NAMES: [&str; 25] = [
        "connect_redirected",
        "connect_skip_not_tcp",
        "connect_skip_proxy",
        "connect_skip_loopback",
        "connect_skip_mesh_port",
        "connect_skip_not_enrolled",
        "connect_skip_bypass",
        "connect_skip_excluded",
        "connect_err_map_full",
        "sockops_orig_moved",
        "sockops_orig_missed",
        "sockops_orig_cleaned",
        "sockops_fast_path_added",
        "lookup_steered",
        "lookup_skip_loopback",
        "lookup_skip_not_pod",
        "lookup_skip_mesh_port",
        "lookup_skip_excluded",
        "lookup_skip_probe",
        "lookup_skip_hairpin",
        "lookup_skip_bypass",
        "lookup_drop_no_listener",
        "fast_path_redirected",
        "fast_path_missed",
        "lookup_skip_not_tcp",
    ];
}

/// Map names as they appear in the object file and under the pin directory.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const MESHED_NETNS: &str = "MESHED_NETNS";
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_SRC: &str = "ORIG_BY_SRC";
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    pub const EXCLUDED_CIDRS: &str = "EXCLUDED_CIDRS";
    pub const POD_IPS: &str = "POD_IPS";
    pub const PROBE_SOURCES: &str = "PROBE_SOURCES";
    pub const INBOUND: &str = "INBOUND";
    pub const FAST_SOCKS: &str = "FAST_SOCKS";
    pub const STATS: &str = "STATS";
    /// Every map, in the order `mesh-agent bpf maps` shows them.
    pub const ALL: [&str; 11] = [
        CONFIG,
        MESHED_NETNS,
        POD_IPS,
        ORIG_BY_COOKIE,
        ORIG_BY_SRC,
        EXCLUDED_PORTS,
        EXCLUDED_CIDRS,
        PROBE_SOURCES,
        INBOUND,
        FAST_SOCKS,
        STATS,
    ];
}

/// Key of `EXCLUDED_PORTS`: a port a pod keeps out of the mesh, in one direction.
///
/// Outbound entries are scoped by the pod's netns cookie, inbound ones by its IPv4 address
/// (network order, zero-extended): that is what each hook can see.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortKey {
    pub scope: u64,
    /// Host byte order.
    pub port: u16,
    /// [`direction::OUTBOUND`] or [`direction::INBOUND`].
    pub direction: u16,
    pub _pad: u32,
}

pub mod direction {
    pub const OUTBOUND: u16 = 1;
    pub const INBOUND: u16 = 2;
}

/// Data of an `EXCLUDED_CIDRS` LPM-trie key: the pod's netns cookie then an IPv4 prefix (network
/// order). The trie's prefix length counts the 64 cookie bits plus the CIDR's bits.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    pub netns_cookie: u64,
    pub addr: u32,
}

/// Key of `FAST_SOCKS`: a socket's own 4-tuple (IPv4, network order addresses, host order ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    pub local_ip: u32,
    pub remote_ip: u32,
    pub local_port: u32,
    pub remote_port: u32,
}

/// Capacities of the maps.
pub const MAX_PODS: u32 = 4096;
pub const MAX_INFLIGHT_CONNECTS: u32 = 65536;
pub const MAX_EXCLUSIONS: u32 = 16384;
pub const MAX_FAST_SOCKETS: u32 = 65536;
pub const MAX_PROBE_SOURCES: u32 = 64;

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all are #[repr(C)] plain-old-data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PodEntry {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for SrcKey {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn abi_layout_is_pinned() {
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(offset_of!(Config, proxy_mark), 8);
        assert_eq!(offset_of!(Config, flags), 12);

        assert_eq!(size_of::<PodEntry>(), 8);
        assert_eq!(offset_of!(PodEntry, flags), 4);

        assert_eq!(size_of::<OrigDst>(), 24);
        assert_eq!(offset_of!(OrigDst, port), 16);
        assert_eq!(offset_of!(OrigDst, family), 18);

        assert_eq!(size_of::<SrcKey>(), 32);
        assert_eq!(offset_of!(SrcKey, addr), 8);
        assert_eq!(offset_of!(SrcKey, port), 24);
        assert_eq!(offset_of!(SrcKey, family), 26);

        assert_eq!(size_of::<PortKey>(), 16);
        assert_eq!(offset_of!(PortKey, port), 8);
        assert_eq!(offset_of!(PortKey, direction), 10);

        assert_eq!(size_of::<CidrKey>(), 12);
        assert_eq!(offset_of!(CidrKey, addr), 8);

        assert_eq!(size_of::<SockKey>(), 16);
        assert_eq!(offset_of!(SockKey, remote_port), 12);
    }

    #[test]
    fn mesh_ports_are_recognised() {
        for p in [15001, 15006, 15008, 15000, 15020, 15010, 15012] {
            assert!(ports::is_mesh_port(p), "{p}");
        }
        for p in [80, 8080, 15002, 15021] {
            assert!(!ports::is_mesh_port(p), "{p}");
        }
    }

    #[test]
    fn stat_names_cover_every_counter() {
        assert_eq!(stats::NAMES.len() as u32, stats::LOOKUP_SKIP_NOT_TCP + 1);
        assert!(stats::NAMES.len() as u32 <= stats::COUNT);
    }
}
