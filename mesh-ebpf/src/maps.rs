//! Maps shared by the programs. Names must match `mesh_common::maps`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use mesh_common::{Config, MAX_INFLIGHT_CONNECTS, MAX_PODS, OrigDst, PodEntry, stats};

/// Node settings, one entry (index 0).
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Enrolled pods by network-namespace cookie. Written by the agent once the pod's listeners exist.
#[map(name = "MESHED_NETNS")]
pub static MESHED_NETNS: HashMap<u64, PodEntry> = HashMap::with_max_entries(MAX_PODS, 0);

/// Original destinations by socket cookie, written at connect(). LRU: a connect that never
/// establishes must not leak an entry.
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT_CONNECTS, 0);

/// Decision counters (`mesh_common::stats`).
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

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
