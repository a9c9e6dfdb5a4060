//! Loads `mesh-ebpf`'s object, attaches and pins it under the node's pin directory, and adopts
//! what an earlier agent pinned instead of attaching twice.
//!
//! Pins (see [`PinLayout`]): `maps/<NAME>` (every map, reused on restart through aya's by-name
//! pinning), `progs/<name>` (programs shared by many attachments), `links/<name>` (cgroup hooks,
//! one sk_lookup link per pod netns). Removing the directory detaches everything.
use std::{collections::BTreeSet, fs::File, net::Ipv4Addr, os::fd::RawFd, path::Path, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, SockHash, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SkMsg, SkSkb, SockOps, links::FdLink},
};
use mesh_common::{
    CidrKey, Config, OrigDst, PodEntry, PortKey, SrcKey, config_flags, direction, maps, pod_flags,
    stats,
};

use super::pins::PinLayout;

/// The eBPF object built by `build.rs` from `mesh-ebpf` (bpfel-unknown-none).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

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
        source: MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("link {name}: {source}")]
    Link {
        name: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> EbpfError {
    move |source| EbpfError::Program { name, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EbpfError {
    let what = what.into();
    move |source| EbpfError::Io { what, source }
}

/// What `attach_cgroup_hooks` did for each hook.
#[derive(Debug, Default, Clone)]
pub struct AttachReport {
    pub attached: Vec<String>,
    pub adopted: Vec<String>,
}

/// The maps' view of one enrolled pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub uid: String,
    pub netns_cookie: u64,
    pub ip: Ipv4Addr,
    pub pod_index: u32,
    pub fast_path: bool,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// (network address, prefix length)
    pub exclude_outbound_cidrs: Vec<(Ipv4Addr, u8)>,
}

impl Enrolment {
    /// `EXCLUDED_PORTS` keys: outbound scoped by netns cookie, inbound by pod IP.
    fn port_keys(&self) -> Vec<PortKey> {
        let ip = u64::from(u32::from(self.ip).to_be());
        let out = self
            .exclude_outbound_ports
            .iter()
            .map(|p| (self.netns_cookie, *p, direction::OUTBOUND));
        let inb = self
            .exclude_inbound_ports
            .iter()
            .map(|p| (ip, *p, direction::INBOUND));
        out.chain(inb)
            .map(|(scope, port, direction)| PortKey {
                scope,
                port,
                direction,
                _pad: 0,
            })
            .collect()
    }

    /// `EXCLUDED_CIDRS` keys: 64 cookie bits + the prefix.
    fn cidr_keys(&self) -> Vec<Key<CidrKey>> {
        self.exclude_outbound_cidrs
            .iter()
            .map(|(addr, len)| {
                Key::new(
                    64 + u32::from(*len),
                    CidrKey {
                        netns_cookie: self.netns_cookie,
                        addr: u32::from(*addr).to_be(),
                    },
                )
            })
            .collect()
    }

    fn entry(&self) -> PodEntry {
        PodEntry {
            pod_index: self.pod_index,
            flags: pod_flags::ENROLLED
                | if self.fast_path {
                    pod_flags::FAST_PATH
                } else {
                    0
                },
        }
    }
}

/// One node's loaded and attached data path.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinLayout,
    sk_lookup: SkLookup,
}

const CGROUP_HOOKS: [(&str, &str); 3] = [
    ("connect4", "weft_connect4"),
    ("connect6", "weft_connect6"),
    ("sockops-pods", "weft_sockops"),
];

impl Datapath {
    /// Loads the object with its maps pinned (or reused) under `pins`, and the sk_lookup program
    /// (from its pin when an earlier agent left one).
    pub fn open(pins: PinLayout) -> Result<Self, EbpfError> {
        for d in [pins.maps(), pins.progs(), pins.links()] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .load(OBJECT)?;
        let pin = pins.prog("weft_sk_lookup");
        let sk_lookup = if pin.exists() {
            SkLookup::from_pin(&pin).map_err(prog_err("weft_sk_lookup"))?
        } else {
            let prog: &mut SkLookup = program(&mut ebpf, "weft_sk_lookup")?;
            prog.load().map_err(prog_err("weft_sk_lookup"))?;
            prog.pin(&pin).map_err(|e| EbpfError::Pin {
                path: pin.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
            SkLookup::from_pin(&pin).map_err(prog_err("weft_sk_lookup"))?
        };
        Ok(Self {
            ebpf,
            pins,
            sk_lookup,
        })
    }

    /// Loads every program into the kernel (the verifier runs) and returns (name, id).
    pub fn load_all(&mut self) -> Result<Vec<(String, u32)>, EbpfError> {
        let names: Vec<String> = self.ebpf.programs().map(|(n, _)| n.to_string()).collect();
        let mut out = vec![];
        for name in names {
            let Some(p) = self.ebpf.program_mut(&name) else {
                continue;
            };
            if p.fd().is_err() {
                load_any(p)
                    .map_err(|source| EbpfError::Program { name: "?", source })
                    .map_err(|e| match e {
                        EbpfError::Program { source, .. } => EbpfError::Io {
                            what: format!("loading {name}"),
                            source: std::io::Error::other(source.to_string()),
                        },
                        other => other,
                    })?;
            }
            let id = p.info().map(|i| i.id()).unwrap_or(0);
            out.push((name, id));
        }
        out.sort();
        Ok(out)
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Attaches connect4/6 and sock_ops to the pods cgroup subtree (and sock_ops to the agent's own
    /// cgroup, for the fast path's proxy-side sockets), plus the fast-path programs on `FAST_SOCKS`.
    /// Hooks whose link is already pinned are adopted, never attached twice.
    pub fn attach_cgroup_hooks(
        &mut self,
        pods_cgroup: &Path,
        agent_cgroup: Option<&Path>,
    ) -> Result<AttachReport, EbpfError> {
        let mut report = AttachReport::default();
        let pods = File::open(pods_cgroup)
            .map_err(io_err(format!("opening cgroup {}", pods_cgroup.display())))?;
        let mut hooks: Vec<(&str, &'static str, &File)> =
            CGROUP_HOOKS.iter().map(|(l, p)| (*l, *p, &pods)).collect();
        let agent = match agent_cgroup {
            Some(p) => {
                Some(File::open(p).map_err(io_err(format!("opening cgroup {}", p.display())))?)
            }
            None => None,
        };
        if let Some(a) = &agent {
            hooks.push(("sockops-agent", "weft_sockops", a));
        }
        for (link, prog_name, cgroup) in hooks {
            let path = self.pins.link(link);
            if path.exists() {
                report.adopted.push(link.to_string());
                continue;
            }
            let fd_link: FdLink = match prog_name {
                "weft_sockops" => {
                    let p: &mut SockOps = program(&mut self.ebpf, prog_name)?;
                    if p.fd().is_err() {
                        p.load().map_err(prog_err(prog_name))?;
                    }
                    let id = p
                        .attach(cgroup, CgroupAttachMode::Single)
                        .map_err(prog_err(prog_name))?;
                    p.take_link(id)
                        .map_err(prog_err(prog_name))?
                        .try_into()
                        .map_err(|source| EbpfError::Link {
                            name: link.into(),
                            source,
                        })?
                }
                _ => {
                    let p: &mut CgroupSockAddr = program(&mut self.ebpf, prog_name)?;
                    if p.fd().is_err() {
                        p.load().map_err(prog_err(prog_name))?;
                    }
                    // `Single` is the only mode aya 0.14 passes correctly to bpf_link_create.
                    let id = p
                        .attach(cgroup, CgroupAttachMode::Single)
                        .map_err(prog_err(prog_name))?;
                    p.take_link(id)
                        .map_err(prog_err(prog_name))?
                        .try_into()
                        .map_err(|source| EbpfError::Link {
                            name: link.into(),
                            source,
                        })?
                }
            };
            fd_link.pin(&path).map_err(|e| EbpfError::Pin {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
            report.attached.push(link.to_string());
        }
        // Fast path: sk_msg + a no-op stream verdict on FAST_SOCKS. Both are attached to the map
        // (prog_attach), which lives as long as its pin: pinned programs mean "already attached".
        let msg_pin = self.pins.prog("weft_sk_msg");
        if msg_pin.exists() {
            report.adopted.push("fast-path".into());
        } else {
            let map = self
                .ebpf
                .map(maps::FAST_SOCKS)
                .ok_or(EbpfError::MissingMap(maps::FAST_SOCKS))?;
            let socks: SockHash<&MapData, mesh_common::SockKey> =
                SockHash::try_from(map).map_err(map_err(maps::FAST_SOCKS))?;
            let fd = socks.fd().try_clone().map_err(|e| EbpfError::Map {
                name: maps::FAST_SOCKS,
                source: MapError::IoError(e),
            })?;
            let verdict: &mut SkSkb = program(&mut self.ebpf, "weft_skb_verdict")?;
            verdict.load().map_err(prog_err("weft_skb_verdict"))?;
            verdict.attach(&fd).map_err(prog_err("weft_skb_verdict"))?;
            pin_prog(verdict, &self.pins.prog("weft_skb_verdict"))?;
            let msg: &mut SkMsg = program(&mut self.ebpf, "weft_sk_msg")?;
            msg.load().map_err(prog_err("weft_sk_msg"))?;
            msg.attach(&fd).map_err(prog_err("weft_sk_msg"))?;
            pin_prog(msg, &msg_pin)?;
            report.attached.push("fast-path".into());
        }
        Ok(report)
    }

    pub fn config(&self) -> Result<Config, EbpfError> {
        let map = self
            .ebpf
            .map(maps::CONFIG)
            .ok_or(EbpfError::MissingMap(maps::CONFIG))?;
        let arr: Array<&MapData, Config> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
        arr.get(&0, 0).map_err(map_err(maps::CONFIG))
    }

    /// Sets the node config, keeping the bypass bit as the operator left it.
    pub fn set_config(&mut self, proxy_cgroup_id: u64) -> Result<(), EbpfError> {
        let old = self.config().unwrap_or_default();
        let cfg = Config {
            proxy_cgroup_id,
            proxy_mark: mesh_common::MESH_MARK,
            flags: old.flags & config_flags::BYPASS,
        };
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or(EbpfError::MissingMap(maps::CONFIG))?;
        let mut arr: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(map_err(maps::CONFIG))?;
        arr.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    /// Replaces the set of kubelet-probe source addresses.
    pub fn set_probe_sources(&mut self, addrs: &[Ipv4Addr]) -> Result<(), EbpfError> {
        let map = self
            .ebpf
            .map_mut(maps::PROBE_SOURCES)
            .ok_or(EbpfError::MissingMap(maps::PROBE_SOURCES))?;
        let mut m: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(map).map_err(map_err(maps::PROBE_SOURCES))?;
        let want: BTreeSet<u32> = addrs.iter().map(|a| u32::from(*a).to_be()).collect();
        let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for k in have.into_iter().filter(|k| !want.contains(k)) {
            let _ = m.remove(&k);
        }
        for k in want {
            m.insert(k, 1, 0).map_err(map_err(maps::PROBE_SOURCES))?;
        }
        Ok(())
    }

    /// Writes a pod into the maps and attaches sk_lookup to its netns (once; the link is pinned).
    /// `inbound_listener` is the pod's `:15006` listener. Call only once the listeners are open.
    pub fn enroll(
        &mut self,
        e: &Enrolment,
        inbound_listener: RawFd,
        netns: &File,
    ) -> Result<(), EbpfError> {
        let ip_be = u32::from(e.ip).to_be();
        {
            let map = self
                .ebpf
                .map_mut(maps::EXCLUDED_PORTS)
                .ok_or(EbpfError::MissingMap(maps::EXCLUDED_PORTS))?;
            let mut m: HashMap<&mut MapData, PortKey, u32> =
                HashMap::try_from(map).map_err(map_err(maps::EXCLUDED_PORTS))?;
            for key in e.port_keys() {
                m.insert(key, 1, 0).map_err(map_err(maps::EXCLUDED_PORTS))?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut(maps::EXCLUDED_CIDRS)
                .ok_or(EbpfError::MissingMap(maps::EXCLUDED_CIDRS))?;
            let mut m: LpmTrie<&mut MapData, CidrKey, u32> =
                LpmTrie::try_from(map).map_err(map_err(maps::EXCLUDED_CIDRS))?;
            for key in e.cidr_keys() {
                m.insert(&key, 1, 0)
                    .map_err(map_err(maps::EXCLUDED_CIDRS))?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut(maps::INBOUND)
                .ok_or(EbpfError::MissingMap(maps::INBOUND))?;
            let mut m: SockHash<&mut MapData, u32> =
                SockHash::try_from(map).map_err(map_err(maps::INBOUND))?;
            m.insert(ip_be, inbound_listener, 0)
                .map_err(map_err(maps::INBOUND))?;
        }
        self.hash_insert(maps::POD_IPS, ip_be, e.entry())?;
        self.hash_insert(maps::MESHED_NETNS, e.netns_cookie, e.entry())?;
        let link = self.pins.sk_lookup_link(&e.uid);
        if !link.exists() {
            let id = self
                .sk_lookup
                .attach(netns)
                .map_err(prog_err("weft_sk_lookup"))?;
            let l: FdLink = self
                .sk_lookup
                .take_link(id)
                .map_err(prog_err("weft_sk_lookup"))?
                .into();
            l.pin(&link).map_err(|err| EbpfError::Pin {
                path: link.display().to_string(),
                source: std::io::Error::other(err.to_string()),
            })?;
        }
        Ok(())
    }

    /// Changes an enrolled pod's fast path and exclusions in place (same netns, IP and listeners):
    /// new entries are written before stale ones are removed, so capture never lapses.
    pub fn update(&mut self, old: &Enrolment, new: &Enrolment) -> Result<(), EbpfError> {
        let ip_be = u32::from(new.ip).to_be();
        {
            let map = self
                .ebpf
                .map_mut(maps::EXCLUDED_PORTS)
                .ok_or(EbpfError::MissingMap(maps::EXCLUDED_PORTS))?;
            let mut m: HashMap<&mut MapData, PortKey, u32> =
                HashMap::try_from(map).map_err(map_err(maps::EXCLUDED_PORTS))?;
            for key in new.port_keys() {
                m.insert(key, 1, 0).map_err(map_err(maps::EXCLUDED_PORTS))?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut(maps::EXCLUDED_CIDRS)
                .ok_or(EbpfError::MissingMap(maps::EXCLUDED_CIDRS))?;
            let mut m: LpmTrie<&mut MapData, CidrKey, u32> =
                LpmTrie::try_from(map).map_err(map_err(maps::EXCLUDED_CIDRS))?;
            for key in new.cidr_keys() {
                m.insert(&key, 1, 0)
                    .map_err(map_err(maps::EXCLUDED_CIDRS))?;
            }
        }
        self.hash_insert(maps::POD_IPS, ip_be, new.entry())?;
        self.hash_insert(maps::MESHED_NETNS, new.netns_cookie, new.entry())?;
        let keep = new.port_keys();
        for key in old.port_keys().into_iter().filter(|k| !keep.contains(k)) {
            self.hash_remove::<PortKey, u32>(maps::EXCLUDED_PORTS, key)?;
        }
        let keep: BTreeSet<(Ipv4Addr, u8)> = new.exclude_outbound_cidrs.iter().copied().collect();
        let stale = Enrolment {
            exclude_outbound_cidrs: old
                .exclude_outbound_cidrs
                .iter()
                .copied()
                .filter(|c| !keep.contains(c))
                .collect(),
            ..old.clone()
        };
        let map = self
            .ebpf
            .map_mut(maps::EXCLUDED_CIDRS)
            .ok_or(EbpfError::MissingMap(maps::EXCLUDED_CIDRS))?;
        let mut m: LpmTrie<&mut MapData, CidrKey, u32> =
            LpmTrie::try_from(map).map_err(map_err(maps::EXCLUDED_CIDRS))?;
        for key in stale.cidr_keys() {
            ignore_missing(m.remove(&key)).map_err(map_err(maps::EXCLUDED_CIDRS))?;
        }
        Ok(())
    }

    /// Removes a pod from the maps and detaches its sk_lookup link. Connections already proxied
    /// are not touched.
    pub fn unenroll(&mut self, e: &Enrolment) -> Result<(), EbpfError> {
        let ip_be = u32::from(e.ip).to_be();
        self.hash_remove::<u64, PodEntry>(maps::MESHED_NETNS, e.netns_cookie)?;
        self.hash_remove::<u32, PodEntry>(maps::POD_IPS, ip_be)?;
        {
            let map = self
                .ebpf
                .map_mut(maps::INBOUND)
                .ok_or(EbpfError::MissingMap(maps::INBOUND))?;
            let mut m: SockHash<&mut MapData, u32> =
                SockHash::try_from(map).map_err(map_err(maps::INBOUND))?;
            ignore_missing(m.remove(&ip_be)).map_err(map_err(maps::INBOUND))?;
        }
        for key in e.port_keys() {
            self.hash_remove::<PortKey, u32>(maps::EXCLUDED_PORTS, key)?;
        }
        {
            let map = self
                .ebpf
                .map_mut(maps::EXCLUDED_CIDRS)
                .ok_or(EbpfError::MissingMap(maps::EXCLUDED_CIDRS))?;
            let mut m: LpmTrie<&mut MapData, CidrKey, u32> =
                LpmTrie::try_from(map).map_err(map_err(maps::EXCLUDED_CIDRS))?;
            for key in e.cidr_keys() {
                ignore_missing(m.remove(&key)).map_err(map_err(maps::EXCLUDED_CIDRS))?;
            }
        }
        self.detach_sk_lookup(&e.uid)
    }

    /// Unpins (and so detaches) a pod's sk_lookup link.
    pub fn detach_sk_lookup(&mut self, uid: &str) -> Result<(), EbpfError> {
        let link = self.pins.sk_lookup_link(uid);
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("unpinning {}", link.display()))(e)),
        }
    }

    /// Drops map entries and sk_lookup links an earlier agent left for pods that are not in
    /// `keep` (by netns cookie, IP and UID): pods deleted while no agent ran.
    pub fn forget_others(
        &mut self,
        keep_cookies: &BTreeSet<u64>,
        keep_ips: &BTreeSet<Ipv4Addr>,
        keep_uids: &BTreeSet<String>,
    ) -> Result<Vec<String>, EbpfError> {
        let mut dropped = vec![];
        let cookies: Vec<u64> = self.hash_keys::<u64, PodEntry>(maps::MESHED_NETNS)?;
        for c in cookies.into_iter().filter(|c| !keep_cookies.contains(c)) {
            self.hash_remove::<u64, PodEntry>(maps::MESHED_NETNS, c)?;
            dropped.push(format!("netns cookie {c}"));
        }
        let ips: Vec<u32> = self.hash_keys::<u32, PodEntry>(maps::POD_IPS)?;
        for ip in ips {
            let addr = Ipv4Addr::from(u32::from_be(ip));
            if !keep_ips.contains(&addr) {
                self.hash_remove::<u32, PodEntry>(maps::POD_IPS, ip)?;
                dropped.push(format!("pod IP {addr}"));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.pins.links()) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(uid) = name.strip_prefix("sklookup-")
                    && !keep_uids.iter().any(|u| u.replace('.', "_") == uid)
                {
                    let _ = std::fs::remove_file(entry.path());
                    dropped.push(format!("sk_lookup link of pod {uid}"));
                }
            }
        }
        Ok(dropped)
    }

    /// The decision counters summed over CPUs, with their names.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, EbpfError> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or(EbpfError::MissingMap(maps::STATS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(maps::STATS))?;
        read_stats(&arr)
    }

    fn hash_insert<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        k: K,
        v: V,
    ) -> Result<(), EbpfError> {
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
        m.insert(k, v, 0).map_err(map_err(name))
    }

    fn hash_remove<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        k: K,
    ) -> Result<(), EbpfError> {
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
        ignore_missing(m.remove(&k)).map_err(map_err(name))
    }

    fn hash_keys<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<K>, EbpfError> {
        let map = self.ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
        let m: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
        Ok(m.keys().filter_map(Result::ok).collect())
    }
}

pub fn read_stats<T: std::borrow::Borrow<MapData>>(
    arr: &PerCpuArray<T, u64>,
) -> Result<Vec<(&'static str, u64)>, EbpfError> {
    let mut out = Vec::with_capacity(stats::NAMES.len());
    for (i, name) in stats::NAMES.iter().enumerate() {
        let values = arr.get(&(i as u32), 0).map_err(map_err(maps::STATS))?;
        out.push((*name, values.iter().sum()));
    }
    Ok(out)
}

fn load_any(p: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program as P;
    match p {
        P::CgroupSockAddr(p) => p.load(),
        P::SockOps(p) => p.load(),
        P::SkLookup(p) => p.load(),
        P::SkMsg(p) => p.load(),
        P::SkSkb(p) => p.load(),
        _ => Ok(()),
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn pin_prog<P>(p: &mut P, path: &Path) -> Result<(), EbpfError>
where
    P: PinnableProgram,
{
    p.pin_at(path).map_err(|e| EbpfError::Pin {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })
}

trait PinnableProgram {
    fn pin_at(&mut self, path: &Path) -> Result<(), String>;
}
impl PinnableProgram for SkMsg {
    fn pin_at(&mut self, path: &Path) -> Result<(), String> {
        self.pin(path).map_err(|e| e.to_string())
    }
}
impl PinnableProgram for SkSkb {
    fn pin_at(&mut self, path: &Path) -> Result<(), String> {
        self.pin(path).map_err(|e| e.to_string())
    }
}

/// The proxy's handle on original destinations (`ORIG_BY_SRC`), opened from its pin.
pub struct OrigDstTable {
    map: Mutex<HashMap<MapData, SrcKey, OrigDst>>,
}

impl OrigDstTable {
    pub fn open(pins: &PinLayout) -> Result<Self, EbpfError> {
        let md =
            MapData::from_pin(pins.map(maps::ORIG_BY_SRC)).map_err(map_err(maps::ORIG_BY_SRC))?;
        let map = HashMap::try_from(aya::maps::Map::LruHashMap(md))
            .map_err(map_err(maps::ORIG_BY_SRC))?;
        Ok(Self {
            map: Mutex::new(map),
        })
    }

    /// Reads and deletes the original destination of an accepted connection.
    pub fn take(&self, key: &SrcKey) -> Result<Option<OrigDst>, EbpfError> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key, 0) {
            Ok(v) => {
                let _ = m.remove(key);
                Ok(Some(v))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(EbpfError::Map {
                name: maps::ORIG_BY_SRC,
                source,
            }),
        }
    }

    /// Number of entries (for tests and `bpf maps`).
    pub fn len(&self) -> usize {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
