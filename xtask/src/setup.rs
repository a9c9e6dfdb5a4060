//! `cargo xtask setup`: bring a fresh machine of this kind to a working state.
//!
//! Every step first checks, and only acts when something is missing, so running it again is cheap.
//! Nothing is downloaded from outside the package registries (Debian, crates.io) and the toolchains
//! already on the machine (rustup's nightly must be installed; rust-src is added to it).
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{output, require_root, run as run_cmd, sh};

/// Debian packages the project needs: bpftool (debugging/tests), iproute2 + nftables (the lab),
/// util-linux (nsenter), curl, protobuf-compiler (gRPC code generation), iptables (the baseline
/// benchmark), wrk + nghttp2-client (load tools).
pub const PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "nftables",
    "iptables",
    "util-linux",
    "curl",
    "protobuf-compiler",
    "nghttp2-client",
    "wrk",
    "procps",
];

/// Where the LLVM shim for bpf-linker lives (symlinks into the nightly sysroot).
const LLVM_PREFIX: &str = "/usr/local/lib/weft-llvm";
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Only what building the binaries needs — protobuf-compiler, nightly rust-src, bpf-linker —
    /// with no change to the running kernel's mounts (container image builds:
    /// deploy/docker/*.Dockerfile).
    #[arg(long)]
    pub build_only: bool,
}

/// Debian packages a build needs (`--build-only`).
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// `cargo xtask setup --build-only`: the toolchain to build the workspace, nothing else.
pub fn build_only() -> anyhow::Result<()> {
    require_root("setup")?;
    println!("weft setup (build only):");
    let mut r = Report {
        mode: Mode::Full,
        did: vec![],
    };
    install_packages(&mut r, BUILD_PACKAGES)?;
    nightly(&mut r)?;
    bpf_linker(&mut r)?;
    println!("build setup complete ({} changes)", r.did.len());
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo xtask setup`: report every step.
    Full,
    /// Implicit from `demo`/`test`: quiet unless something had to be done.
    Ensure,
}

struct Report {
    mode: Mode,
    did: Vec<String>,
}

impl Report {
    fn ok(&self, what: &str) {
        if self.mode == Mode::Full {
            println!("  ok    {what}");
        }
    }
    fn did(&mut self, what: String) {
        println!("  done  {what}");
        self.did.push(what);
    }
}

pub fn run(mode: Mode) -> anyhow::Result<()> {
    require_root("setup")?;
    if mode == Mode::Full {
        println!("weft setup:");
    }
    let mut r = Report { mode, did: vec![] };
    packages(&mut r)?;
    nightly(&mut r)?;
    bpf_linker(&mut r)?;
    cargo_deny(&mut r)?;
    kubectl(&mut r)?;
    bpffs(&mut r)?;
    let cg = cgroup2_root().context(
        "no cgroup v2 hierarchy found at /sys/fs/cgroup/unified or /sys/fs/cgroup; \
         boot with cgroup v2 (unified or hybrid) enabled",
    )?;
    r.ok(&format!("cgroup v2 at {}", cg.display()));
    kernel_features(&mut r)?;
    if mode == Mode::Full {
        println!(
            "setup complete ({} change{})",
            r.did.len(),
            if r.did.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn packages(r: &mut Report) -> anyhow::Result<()> {
    install_packages(r, PACKAGES)
}

fn install_packages(r: &mut Report, packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        r.ok(&format!("Debian packages ({})", packages.join(", ")));
        return Ok(());
    }
    println!("  ...   installing Debian packages: {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed: is the Debian package mirror reachable?")?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed")?;
    r.did(format!("installed {}", missing.join(" ")));
    Ok(())
}

fn nightly(r: &mut Report) -> anyhow::Result<()> {
    let toolchains = sh("rustup", ["toolchain", "list"])
        .context("rustup not found: Weft needs rustup with a stable and a nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain: the eBPF programs need one (`rustup toolchain install nightly \
             --component rust-src`); this machine kind ships it preinstalled"
        );
    }
    let comps = sh(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        r.ok("nightly toolchain with rust-src");
    } else {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("adding rust-src to the nightly toolchain")?;
        r.did("added rust-src to the nightly toolchain".into());
    }
    Ok(())
}

/// The nightly sysroot's libLLVM (`libLLVM.so.<ver>-rust-<ver>-nightly`) and LLVM major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let vv = sh("rustc", ["+nightly", "-vV"])?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok())
        .context("`rustc +nightly -vV` shows no LLVM version")?;
    let sysroot = PathBuf::from(sh("rustc", ["+nightly", "--print", "sysroot"])?.trim());
    let lib = sysroot.join("lib");
    let so = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    Ok((so, major))
}

fn bpf_linker(r: &mut Report) -> anyhow::Result<()> {
    let (so, major) = nightly_llvm()?;
    let soname = so
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    // The shim prefix bpf-linker links against (and records as rpath), plus the SONAME in the
    // system library path so bpf-linker also runs outside rustup.
    let prefix_lib = Path::new(LLVM_PREFIX).join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let mut links_changed = false;
    for link in [
        prefix_lib.join("libLLVM.so"),
        prefix_lib.join(&soname),
        Path::new("/usr/local/lib").join(&soname),
    ] {
        if fs::read_link(&link).ok().as_deref() != Some(so.as_path()) {
            let _ = fs::remove_file(&link);
            symlink(&so, &link).with_context(|| format!("symlinking {}", link.display()))?;
            links_changed = true;
        }
    }
    if links_changed {
        run_cmd(&mut Command::new("ldconfig"))?;
        r.did(format!(
            "linked {} into {LLVM_PREFIX} and /usr/local/lib",
            so.display()
        ));
    }
    let works = Command::new("bpf-linker")
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    let llvm_ok = works
        && output(Command::new("ldd").arg(which("bpf-linker")?))
            .map(|l| l.contains(&*soname.to_string_lossy()) && !l.contains("not found"))
            .unwrap_or(false);
    if llvm_ok {
        r.ok(&format!(
            "bpf-linker {BPF_LINKER_VERSION} (LLVM {major}, {})",
            soname.to_string_lossy()
        ));
        return Ok(());
    }
    println!(
        "  ...   building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about a minute)"
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("building bpf-linker failed")?;
    r.did(format!(
        "installed bpf-linker {BPF_LINKER_VERSION} (llvm-{major})"
    ));
    Ok(())
}

/// cargo-deny checks licences, bans and sources in `cargo xtask test` (a crates.io package).
const CARGO_DENY_VERSION: &str = "0.20.2";

fn cargo_deny(r: &mut Report) -> anyhow::Result<()> {
    let have = Command::new("cargo-deny")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY_VERSION))
        .unwrap_or(false);
    if have {
        r.ok(&format!("cargo-deny {CARGO_DENY_VERSION}"));
        return Ok(());
    }
    println!("  ...   building cargo-deny {CARGO_DENY_VERSION} (about 3 minutes)");
    run_cmd(Command::new("cargo").args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY_VERSION,
    ]))
    .context("building cargo-deny failed")?;
    r.did(format!("installed cargo-deny {CARGO_DENY_VERSION}"));
    Ok(())
}

/// `cargo xtask test` checks deploy/ with kubectl (kustomize, client dry-run). It is not in
/// Debian's archive (the `kubectl` package comes from the Kubernetes / Google Cloud apt
/// repositories), so setup only checks for it.
fn kubectl(r: &mut Report) -> anyhow::Result<()> {
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            r.ok(&format!(
                "kubectl ({})",
                v.lines().next().unwrap_or("").trim()
            ));
            Ok(())
        }
        _ => bail!(
            "kubectl is missing: `cargo xtask test` checks deploy/ with it (`kubectl kustomize`, \
             `kubectl apply --dry-run=client`). Install the `kubectl` package (Kubernetes or Google \
             Cloud apt repository) or put a kubectl >= 1.27 binary on PATH"
        ),
    }
}

fn which(prog: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("{prog} not on PATH"))
}

fn mounts() -> String {
    fs::read_to_string("/proc/mounts").unwrap_or_default()
}

fn bpffs(r: &mut Report) -> anyhow::Result<()> {
    let mounted = mounts().lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    });
    if mounted {
        r.ok("bpffs at /sys/fs/bpf");
        return Ok(());
    }
    fs::create_dir_all("/sys/fs/bpf").ok();
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf (kernel without CONFIG_BPF_SYSCALL?)")?;
    r.did("mounted bpffs at /sys/fs/bpf".into());
    Ok(())
}

/// The cgroup v2 mount: hybrid `/sys/fs/cgroup/unified` or unified `/sys/fs/cgroup`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let m = mounts();
    for cand in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&cand) && f.get(2) == Some(&"cgroup2")
        }) {
            return Some(PathBuf::from(cand));
        }
    }
    None
}

fn kernel_features(r: &mut Report) -> anyhow::Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "the kernel exposes no BTF (/sys/kernel/btf/vmlinux): Weft needs CONFIG_DEBUG_INFO_BTF"
        );
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release.trim().split(['.', '-']);
    let (maj, min) = (
        it.next().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
        it.next().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
    );
    // sk_lookup needs 5.9, bpf_get_netns_cookie in sock_ops 5.15, cgroup.kill 5.14.
    if (maj, min) < (5, 15) {
        bail!(
            "kernel {} is too old: Weft needs Linux >= 5.15",
            release.trim()
        );
    }
    r.ok(&format!("kernel {} with BTF", release.trim()));
    Ok(())
}
