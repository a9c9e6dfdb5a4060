//! Running processes "inside a pod": its cgroup, its network namespace, and a private mount
//! namespace in which the pod's own `/etc/hosts` and `/etc/resolv.conf` are bind-mounted (that is
//! how lab pods resolve Service names). The host filesystem is otherwise shared.
use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Where a process should be placed.
pub struct PodContext {
    pub cgroup: PathBuf,
    pub netns: String,
    /// Files bind-mounted over /etc/hosts and /etc/resolv.conf (pods only; None for nodes).
    pub etc: Option<(PathBuf, PathBuf)>,
    /// UTS hostname (pods: the pod name).
    pub hostname: Option<String>,
}

/// Prepares `cmd` so that, between fork and exec, the child joins the cgroup (before creating any
/// socket), enters the netns, and gets its private /etc files and hostname.
pub fn enter(cmd: &mut Command, ctx: &PodContext) -> anyhow::Result<()> {
    let procs = OpenOptions::new()
        .write(true)
        .open(ctx.cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", ctx.cgroup.display()))?;
    let netns = File::open(format!("/run/netns/{}", ctx.netns))
        .with_context(|| format!("opening netns {}", ctx.netns))?;
    let etc = match &ctx.etc {
        Some((hosts, resolv)) => Some((cstr(hosts)?, cstr(resolv)?)),
        None => None,
    };
    let hostname = ctx.hostname.clone();
    let etc_hosts = CString::new("/etc/hosts")?;
    let etc_resolv = CString::new("/etc/resolv.conf")?;
    let root = CString::new("/")?;
    // SAFETY: the closure only makes raw syscalls on values prepared above (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process (cgroup v2).
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((hosts, resolv)) = &etc {
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (src, dst) in [(hosts, &etc_hosts), (resolv, &etc_resolv)] {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(h) = &hostname
                    && libc::sethostname(h.as_ptr().cast(), h.len()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

fn cstr(p: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(p.as_os_str().as_encoded_bytes())?)
}

/// Starts a detached container process (its own session, output appended to `log`).
pub fn spawn(mut cmd: Command, ctx: &PodContext, log: &Path) -> anyhow::Result<i32> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    enter(&mut cmd, ctx)?;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    // The child is reparented to init when we exit; nobody waits for it here.
    Ok(child.id() as i32)
}

/// Kills every process in a cgroup (`cgroup.kill`) and removes the directory.
pub fn kill_cgroup(cg: &Path) -> anyhow::Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    // Children first (depth-first), then this one.
    if let Ok(rd) = std::fs::read_dir(cg) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_cgroup(&e.path())?;
            }
        }
    }
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "processes in {} survived cgroup.kill: {}",
                cg.display(),
                procs.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // rmdir can briefly fail with EBUSY while the last task exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(cg) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("removing cgroup {}", cg.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
