//! Loads `mesh-ebpf`'s object into the kernel, attaches programs and gives typed access to the maps.
use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use mesh_common::{Config, OrigDst, PodEntry, maps, stats};

/// The eBPF object built by `build.rs` from `mesh-ebpf` (bpfel-unknown-none).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

/// Programs in the object, in attach order.
pub const PROGRAM_NAMES: [&str; 2] = ["weft_connect4", "weft_connect6"];

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded copy of Weft's eBPF programs and maps.
///
/// Links live as long as this value (pinning arrives with the capture issue).
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads the object and every program into the kernel (the verifier runs here).
    pub fn load() -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        for name in PROGRAM_NAMES {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        Ok(Self { ebpf })
    }

    /// Loaded programs with their kernel ids.
    pub fn programs(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_string(), p.info().ok()?.id())))
            .collect()
    }

    /// Attaches the connect hooks to a cgroup v2 directory (normally the node's pods subtree).
    pub fn attach_connect(&mut self, cgroup: &Path) -> Result<(), EbpfError> {
        let dir = File::open(cgroup).map_err(|source| EbpfError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        for name in PROGRAM_NAMES {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            // `Single` is the only mode aya 0.14 passes correctly to bpf_link_create (DESIGN.md §8).
            prog.attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        Ok(())
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), EbpfError> {
        let mut arr: Array<&mut MapData, Config> = self.map_mut(maps::CONFIG)?;
        arr.set(0, config, 0).map_err(|source| EbpfError::Map {
            name: maps::CONFIG,
            source,
        })
    }

    /// Marks a pod network namespace (by cookie) as enrolled.
    pub fn enroll(&mut self, netns_cookie: u64, entry: PodEntry) -> Result<(), EbpfError> {
        let mut m: HashMap<&mut MapData, u64, PodEntry> = self.map_mut(maps::MESHED_NETNS)?;
        m.insert(netns_cookie, entry, 0)
            .map_err(|source| EbpfError::Map {
                name: maps::MESHED_NETNS,
                source,
            })
    }

    pub fn unenroll(&mut self, netns_cookie: u64) -> Result<(), EbpfError> {
        let mut m: HashMap<&mut MapData, u64, PodEntry> = self.map_mut(maps::MESHED_NETNS)?;
        match m.remove(&netns_cookie) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EbpfError::Map {
                name: maps::MESHED_NETNS,
                source,
            }),
        }
    }

    /// Original destinations recorded at connect(), by socket cookie.
    pub fn original_destinations(&self) -> Result<Vec<(u64, OrigDst)>, EbpfError> {
        let map = self
            .ebpf
            .map(maps::ORIG_BY_COOKIE)
            .ok_or(EbpfError::MissingMap(maps::ORIG_BY_COOKIE))?;
        // aya's HashMap also opens LRU hash maps.
        let m: HashMap<&MapData, u64, OrigDst> =
            HashMap::try_from(map).map_err(|source| EbpfError::Map {
                name: maps::ORIG_BY_COOKIE,
                source,
            })?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| EbpfError::Map {
                name: maps::ORIG_BY_COOKIE,
                source,
            })
    }

    /// The decision counters summed over CPUs, with their names.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, EbpfError> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or(EbpfError::MissingMap(maps::STATS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map {
                name: maps::STATS,
                source,
            })?;
        let mut out = Vec::with_capacity(stats::NAMES.len());
        for (i, name) in stats::NAMES.iter().enumerate() {
            let values = arr.get(&(i as u32), 0).map_err(|source| EbpfError::Map {
                name: maps::STATS,
                source,
            })?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, EbpfError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        M::try_from(map).map_err(|source| EbpfError::Map { name, source })
    }
}
