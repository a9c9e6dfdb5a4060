//! Maps shared by the programs. Names must match `mesh_common::maps`. Every map is pinned by name
//! under the agent's pin directory, so the data path survives agent restarts.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use mesh_common::{
    CidrKey, Config, MAX_EXCLUSIONS, MAX_FAST_SOCKETS, MAX_INFLIGHT_CONNECTS, MAX_PODS,
    MAX_PROBE_SOURCES, OrigDst, PodEntry, PortKey, SockKey, SrcKey, stats,
};

/// Node settings, one entry (index 0).
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Enrolled pods by network-namespace cookie (outbound side).
#[map(name = "MESHED_NETNS")]
pub static MESHED_NETNS: HashMap<u64, PodEntry> = HashMap::pinned(MAX_PODS, 0);

/// Enrolled pods by IPv4 address, network order (inbound side). Separate from `INBOUND` because a
/// closed listener silently leaves the SockHash: this map is what makes "no listener" fail closed.
#[map(name = "POD_IPS")]
pub static POD_IPS: HashMap<u32, PodEntry> = HashMap::pinned(MAX_PODS, 0);

/// Original destinations by socket cookie, written at connect(). LRU, and cleaned on close.
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_INFLIGHT_CONNECTS, 0);

/// Original destinations re-filed at ACTIVE_ESTABLISHED under what the proxy sees after accept().
/// The proxy deletes each entry it reads; LRU bounds what a crashed proxy leaves behind.
#[map(name = "ORIG_BY_SRC")]
pub static ORIG_BY_SRC: LruHashMap<SrcKey, OrigDst> = LruHashMap::pinned(MAX_INFLIGHT_CONNECTS, 0);

/// Ports a pod keeps out of the mesh, per direction.
#[map(name = "EXCLUDED_PORTS")]
pub static EXCLUDED_PORTS: HashMap<PortKey, u32> = HashMap::pinned(MAX_EXCLUSIONS, 0);

/// Outbound IPv4 CIDRs a pod keeps out of the mesh (prefix = 64 cookie bits + CIDR bits).
#[map(name = "EXCLUDED_CIDRS")]
pub static EXCLUDED_CIDRS: LpmTrie<CidrKey, u32> = LpmTrie::pinned(MAX_EXCLUSIONS, 0);

/// Node addresses whose connections are kubelet probes: never steered.
#[map(name = "PROBE_SOURCES")]
pub static PROBE_SOURCES: HashMap<u32, u32> = HashMap::pinned(MAX_PROBE_SOURCES, 0);

/// Pod IPv4 (network order) → that pod's `:15006` listener.
#[map(name = "INBOUND")]
pub static INBOUND: SockHash<u32> = SockHash::pinned(MAX_PODS, 0);

/// Fast-path sockets by their own 4-tuple.
#[map(name = "FAST_SOCKS")]
pub static FAST_SOCKS: SockHash<SockKey> = SockHash::pinned(MAX_FAST_SOCKETS, 0);

/// Decision counters (`mesh_common::stats`).
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(v) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}
