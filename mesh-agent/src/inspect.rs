//! `mesh-agent bpf …`: the operator's bpftool, decoded into mesh terms. Everything is read from the
//! node's pins (and the agent's `pods.json`), so it works against a running or a stopped agent.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, SockHash};
use mesh_common::{
    CidrKey, Config, OrigDst, PodEntry, PortKey, SockKey, SrcKey, config_flags, maps,
};
use serde_json::{Value, json};

use crate::{
    agent::PodRecord,
    ebpf::{EbpfError, pins::PinLayout},
    proxy::outbound::orig_addr,
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "no Weft data path pinned at {0} (is the agent for this node running or was it uninstalled?)"
    )]
    NotPinned(String),
    #[error("map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("bpftool: {0}")]
    Bpftool(String),
}

fn open(pins: &PinLayout, name: &str) -> Result<MapData, InspectError> {
    MapData::from_pin(pins.map(name)).map_err(|source| InspectError::Map {
        name: name.into(),
        source,
    })
}

fn merr(name: &str) -> impl Fn(aya::maps::MapError) -> InspectError + '_ {
    move |source| InspectError::Map {
        name: name.into(),
        source,
    }
}

pub fn check_pinned(pins: &PinLayout) -> Result<(), InspectError> {
    if !pins.exists() {
        return Err(InspectError::NotPinned(pins.root.display().to_string()));
    }
    Ok(())
}

pub fn read_pods(state_dir: &Path) -> Vec<PodRecord> {
    std::fs::read(state_dir.join("pods.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn ip_be(v: u32) -> String {
    Ipv4Addr::from(u32::from_be(v)).to_string()
}

/// Counters summed over CPUs.
pub fn stats(pins: &PinLayout) -> Result<Vec<(&'static str, u64)>, InspectError> {
    check_pinned(pins)?;
    let arr: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pins, maps::STATS)?))
            .map_err(merr(maps::STATS))?;
    Ok(crate::ebpf::datapath_stats(&arr)?)
}

pub fn config(pins: &PinLayout) -> Result<Config, InspectError> {
    check_pinned(pins)?;
    let arr: Array<MapData, Config> =
        Array::try_from(Map::Array(open(pins, maps::CONFIG)?)).map_err(merr(maps::CONFIG))?;
    arr.get(&0, 0).map_err(merr(maps::CONFIG))
}

/// Turns the node's bypass switch on or off (fail open on purpose).
pub fn set_bypass(pins: &PinLayout, on: bool) -> Result<Config, InspectError> {
    check_pinned(pins)?;
    let mut arr: Array<MapData, Config> =
        Array::try_from(Map::Array(open(pins, maps::CONFIG)?)).map_err(merr(maps::CONFIG))?;
    let mut cfg = arr.get(&0, 0).map_err(merr(maps::CONFIG))?;
    if on {
        cfg.flags |= config_flags::BYPASS;
    } else {
        cfg.flags &= !config_flags::BYPASS;
    }
    arr.set(0, cfg, 0).map_err(merr(maps::CONFIG))?;
    Ok(cfg)
}

/// Every map, entries decoded; pods named through `pods.json`.
pub fn maps_json(pins: &PinLayout, state_dir: &Path) -> Result<Value, InspectError> {
    check_pinned(pins)?;
    let pods = read_pods(state_dir);
    let by_cookie: BTreeMap<u64, String> = pods
        .iter()
        .map(|p| (p.netns_cookie, format!("{}/{}", p.namespace, p.name)))
        .collect();
    let by_ip: BTreeMap<Ipv4Addr, String> = pods
        .iter()
        .map(|p| (p.ip, format!("{}/{}", p.namespace, p.name)))
        .collect();
    let name_cookie = |c: u64| by_cookie.get(&c).cloned().unwrap_or_else(|| "?".into());
    let name_ip = |ip: Ipv4Addr| by_ip.get(&ip).cloned().unwrap_or_else(|| "?".into());
    let mut out = serde_json::Map::new();

    let cfg = config(pins)?;
    out.insert(maps::CONFIG.into(), json!({"proxy_cgroup_id": cfg.proxy_cgroup_id, "proxy_mark": format!("{:#x}", cfg.proxy_mark), "bypass": cfg.flags & config_flags::BYPASS != 0}));

    let m: HashMap<MapData, u64, PodEntry> =
        HashMap::try_from(Map::HashMap(open(pins, maps::MESHED_NETNS)?))
            .map_err(merr(maps::MESHED_NETNS))?;
    out.insert(maps::MESHED_NETNS.into(), Value::Array(m.iter().filter_map(Result::ok).map(|(c, e)| json!({"netns_cookie": c, "pod": name_cookie(c), "pod_index": e.pod_index, "flags": flags(e.flags)})).collect()));

    let m: HashMap<MapData, u32, PodEntry> =
        HashMap::try_from(Map::HashMap(open(pins, maps::POD_IPS)?)).map_err(merr(maps::POD_IPS))?;
    out.insert(
        maps::POD_IPS.into(),
        Value::Array(
            m.iter()
                .filter_map(Result::ok)
                .map(|(ip, e)| {
                    let a = Ipv4Addr::from(u32::from_be(ip));
                    json!({"ip": a.to_string(), "pod": name_ip(a), "flags": flags(e.flags)})
                })
                .collect(),
        ),
    );

    let m: HashMap<MapData, u64, OrigDst> =
        HashMap::try_from(Map::LruHashMap(open(pins, maps::ORIG_BY_COOKIE)?))
            .map_err(merr(maps::ORIG_BY_COOKIE))?;
    out.insert(
        maps::ORIG_BY_COOKIE.into(),
        Value::Array(
            m.iter()
                .filter_map(Result::ok)
                .map(
                    |(c, o)| json!({"socket_cookie": c, "original_dst": orig_addr(&o).to_string()}),
                )
                .collect(),
        ),
    );

    let m: HashMap<MapData, SrcKey, OrigDst> =
        HashMap::try_from(Map::LruHashMap(open(pins, maps::ORIG_BY_SRC)?))
            .map_err(merr(maps::ORIG_BY_SRC))?;
    out.insert(maps::ORIG_BY_SRC.into(), Value::Array(m.iter().filter_map(Result::ok).map(|(k, o)| {
        let src = orig_addr(&OrigDst { addr: k.addr, port: k.port, family: k.family, _pad: 0 });
        json!({"pod": name_cookie(k.netns_cookie), "netns_cookie": k.netns_cookie, "client": src.to_string(), "original_dst": orig_addr(&o).to_string()})
    }).collect()));

    let m: HashMap<MapData, PortKey, u32> =
        HashMap::try_from(Map::HashMap(open(pins, maps::EXCLUDED_PORTS)?))
            .map_err(merr(maps::EXCLUDED_PORTS))?;
    out.insert(maps::EXCLUDED_PORTS.into(), Value::Array(m.iter().filter_map(Result::ok).map(|(k, _)| {
        if k.direction == mesh_common::direction::INBOUND {
            let ip = Ipv4Addr::from(u32::from_be(k.scope as u32));
            json!({"direction": "inbound", "pod": name_ip(ip), "port": k.port})
        } else {
            json!({"direction": "outbound", "pod": name_cookie(k.scope), "port": k.port})
        }
    }).collect()));

    let m: LpmTrie<MapData, CidrKey, u32> =
        LpmTrie::try_from(Map::LpmTrie(open(pins, maps::EXCLUDED_CIDRS)?))
            .map_err(merr(maps::EXCLUDED_CIDRS))?;
    out.insert(maps::EXCLUDED_CIDRS.into(), Value::Array(m.iter().filter_map(Result::ok).map(|(k, _)| {
        let d = k.data();
        let cookie = d.netns_cookie;
        json!({"pod": name_cookie(cookie), "cidr": format!("{}/{}", ip_be(d.addr), k.prefix_len().saturating_sub(64))})
    }).collect()));

    let m: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(open(pins, maps::PROBE_SOURCES)?))
            .map_err(merr(maps::PROBE_SOURCES))?;
    out.insert(
        maps::PROBE_SOURCES.into(),
        Value::Array(
            m.keys()
                .filter_map(Result::ok)
                .map(|k| json!(ip_be(k)))
                .collect(),
        ),
    );

    let m: SockHash<MapData, u32> = SockHash::try_from(Map::SockHash(open(pins, maps::INBOUND)?))
        .map_err(merr(maps::INBOUND))?;
    out.insert(maps::INBOUND.into(), Value::Array(m.keys().filter_map(Result::ok).map(|k| {
        let a = Ipv4Addr::from(u32::from_be(k));
        json!({"pod_ip": a.to_string(), "pod": name_ip(a), "listener": format!("0.0.0.0:{}", mesh_common::ports::INBOUND)})
    }).collect()));

    let m: SockHash<MapData, SockKey> =
        SockHash::try_from(Map::SockHash(open(pins, maps::FAST_SOCKS)?))
            .map_err(merr(maps::FAST_SOCKS))?;
    out.insert(maps::FAST_SOCKS.into(), Value::Array(m.keys().filter_map(Result::ok).map(|k| json!({"local": format!("{}:{}", ip_be(k.local_ip), k.local_port), "remote": format!("{}:{}", ip_be(k.remote_ip), k.remote_port)})).collect()));

    let st: serde_json::Map<String, Value> = stats(pins)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    out.insert(maps::STATS.into(), Value::Object(st));
    Ok(Value::Object(out))
}

fn flags(f: u32) -> Vec<&'static str> {
    let mut v = vec![];
    if f & mesh_common::pod_flags::ENROLLED != 0 {
        v.push("enrolled");
    }
    if f & mesh_common::pod_flags::FAST_PATH != 0 {
        v.push("fast_path");
    }
    v
}

/// Per pod: enrolled in the maps?, cgroup id, netns cookie, listeners, fast path, sk_lookup link.
pub fn pods_json(pins: &PinLayout, state_dir: &Path) -> Result<Value, InspectError> {
    check_pinned(pins)?;
    let m: HashMap<MapData, u64, PodEntry> =
        HashMap::try_from(Map::HashMap(open(pins, maps::MESHED_NETNS)?))
            .map_err(merr(maps::MESHED_NETNS))?;
    let ips: HashMap<MapData, u32, PodEntry> =
        HashMap::try_from(Map::HashMap(open(pins, maps::POD_IPS)?)).map_err(merr(maps::POD_IPS))?;
    let inbound: SockHash<MapData, u32> =
        SockHash::try_from(Map::SockHash(open(pins, maps::INBOUND)?))
            .map_err(merr(maps::INBOUND))?;
    let inbound_keys: Vec<u32> = inbound.keys().filter_map(Result::ok).collect();
    let pods = read_pods(state_dir);
    let out: Vec<Value> = pods
        .iter()
        .map(|p| {
            let ip = u32::from(p.ip).to_be();
            json!({
                "namespace": p.namespace, "name": p.name, "uid": p.uid, "ip": p.ip.to_string(),
                "enrolled": m.get(&p.netns_cookie, 0).is_ok() && ips.get(&ip, 0).is_ok(),
                "cgroup": p.cgroup, "cgroup_id": p.cgroup_id, "netns_cookie": p.netns_cookie, "pod_index": p.pod_index,
                "listeners": p.listeners,
                "inbound_listener_in_map": inbound_keys.contains(&ip),
                "sk_lookup_link": pins.sk_lookup_link(&p.uid).exists(),
                "fast_path": p.fast_path,
                "exclude_outbound_ports": p.exclude_outbound_ports, "exclude_inbound_ports": p.exclude_inbound_ports,
            })
        })
        .collect();
    Ok(Value::Array(out))
}

/// Weft's programs of this node: pinned links and programs, decoded by bpftool (JSON).
pub fn progs_json(pins: &PinLayout) -> Result<Value, InspectError> {
    check_pinned(pins)?;
    let mut links = vec![];
    let mut prog_ids = BTreeMap::new();
    for (dir, kind) in [(pins.links(), "link"), (pins.progs(), "prog")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let v = bpftool(&[kind, "show", "pinned", &p.to_string_lossy()])?;
            let pin = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if kind == "link" {
                if let Some(id) = v["prog_id"].as_u64() {
                    prog_ids.insert(id, ());
                }
                let target = v
                    .get("cgroup_id")
                    .map(|c| json!({"cgroup_id": c}))
                    .or_else(|| v.get("netns_ino").map(|n| json!({"netns_ino": n})))
                    .unwrap_or(Value::Null);
                links.push(json!({"pin": pin, "link_id": v["id"], "prog_id": v["prog_id"], "attach_type": v["attach_type"], "target": target}));
            } else if let Some(id) = v["id"].as_u64() {
                prog_ids.insert(id, ());
            }
        }
    }
    let mut progs = vec![];
    for id in prog_ids.keys() {
        let v = bpftool(&["prog", "show", "id", &id.to_string()])?;
        progs.push(json!({"id": id, "name": v["name"], "type": v["type"], "run_count": v.get("run_cnt"), "run_time_ns": v.get("run_time_ns"), "loaded_at": v["loaded_at"], "map_ids": v["map_ids"]}));
    }
    Ok(json!({"programs": progs, "links": links}))
}

fn bpftool(args: &[&str]) -> Result<Value, InspectError> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| {
            InspectError::Bpftool(format!(
                "running bpftool (install it: `cargo xtask setup`): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(InspectError::Bpftool(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| InspectError::Bpftool(format!("{args:?}: {e}")))
}

/// Removes every pin of the node (detaching all programs) and the agent's state.
pub fn uninstall(pins: &PinLayout, state_dir: &Path) -> std::io::Result<bool> {
    let existed = pins.root.exists();
    if existed {
        std::fs::remove_dir_all(&pins.root)?;
    }
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir)?;
    }
    Ok(existed)
}
