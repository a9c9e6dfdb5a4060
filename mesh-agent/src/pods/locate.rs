//! Locating a pod on this node: its cgroup (kubelet layout, `…/pod<UID>` with cgroupfs or
//! `…-pod<UID_with_underscores>.slice` with systemd), a process in it, and its network namespace.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no cgroup for pod UID {0} under {1}")]
    NoCgroup(String, String),
    #[error("no process in cgroup {0} yet")]
    NoProcess(String),
    #[error("opening the netns of pid {pid}: {source}")]
    Netns {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Searches `root` (the pods cgroup subtree) for the pod's cgroup, at most 4 levels deep.
pub fn find_cgroup(root: &Path, uid: &str) -> Result<PathBuf, LocateError> {
    let plain = format!("pod{uid}");
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name == plain || name.ends_with(&systemd) {
                return Ok(e.path());
            }
            if depth < 4 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    Err(LocateError::NoCgroup(
        uid.into(),
        root.display().to_string(),
    ))
}

/// A process of the pod (the cgroup or any child cgroup, e.g. a container's).
pub fn first_pid(cgroup: &Path) -> Result<i32, LocateError> {
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs"))
            && let Some(pid) = procs.lines().find_map(|l| l.trim().parse::<i32>().ok())
        {
            return Ok(pid);
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    Err(LocateError::NoProcess(cgroup.display().to_string()))
}

pub fn open_netns(pid: i32) -> Result<File, LocateError> {
    File::open(format!("/proc/{pid}/ns/net")).map_err(|source| LocateError::Netns { pid, source })
}

/// The cgroup v2 id of a cgroup directory (its inode number), as `bpf_get_current_cgroup_id` sees it.
pub fn cgroup_id(cgroup: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(cgroup)?.ino())
}

/// The cgroup v2 directory of this process (`0::/path` in /proc/self/cgroup).
pub fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = cgroup2_root()?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// The cgroup v2 mount: `/sys/fs/cgroup/unified` (hybrid) or `/sys/fs/cgroup` (unified).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find_map(|cand| {
            mounts
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1) == Some(&cand) && f.get(2) == Some(&"cgroup2")
                })
                .then(|| PathBuf::from(cand))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroupfs_and_systemd_layouts() {
        let root = std::env::temp_dir().join(format!("weft-locate-{}", std::process::id()));
        let a = root.join("burstable/pod1234-ab");
        let b = root.join("kubepods-besteffort.slice/kubepods-besteffort-pod99_cd.slice");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(find_cgroup(&root, "1234-ab").unwrap(), a);
        assert_eq!(find_cgroup(&root, "99-cd").unwrap(), b);
        assert!(find_cgroup(&root, "nope").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
