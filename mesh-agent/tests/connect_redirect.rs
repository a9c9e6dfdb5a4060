//! Privileged test (root): the real `weft_connect4` program, loaded from the object embedded by
//! build.rs, redirects an enrolled pod netns's TCP connect to the pod-local outbound listener and
//! records the original destination; an un-enrolled netns is left alone.
//!
//! Runs in a network namespace and cgroup it creates itself; panics (never skips) when it cannot.
use std::{
    io::{ErrorKind, Read},
    net::TcpListener,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use mesh_agent::ebpf::{Datapath, Enrolment, pins::PinLayout};

const SO_NETNS_COOKIE: libc::c_int = 71;

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("spawning {cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed: {st}");
}

fn cgroup2_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(p).join("cgroup.procs").exists()
            && Path::new(p).join("cgroup.subtree_control").exists()
        {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup v2 mount found (run `cargo xtask setup`)");
}

struct Fixture {
    netns: String,
    cgroup: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (eBPF, netns, cgroups): run it through `cargo xtask test`"
        );
        let id = std::process::id();
        let netns = format!("weft-t-connect-{id}");
        let cgroup = cgroup2_root().join(format!("weft-t-connect-{id}"));
        let f = Fixture { netns, cgroup };
        run("ip", &["netns", "add", &f.netns]);
        run("ip", &["-n", &f.netns, "link", "set", "lo", "up"]);
        // A non-127/8 address for the "remote" destination (no dummy module on this kernel).
        run(
            "ip",
            &["-n", &f.netns, "addr", "add", "10.250.0.1/32", "dev", "lo"],
        );
        std::fs::create_dir(&f.cgroup).expect("creating test cgroup");
        f
    }

    /// Opens `127.0.0.1:15001` inside the netns; returns it with the netns cookie.
    fn outbound_listener(&self) -> (TcpListener, u64) {
        self.listener_on("127.0.0.1:15001")
    }

    fn listener_on(&self, addr: &'static str) -> (TcpListener, u64) {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind(addr).expect("bind in netns");
            l.set_nonblocking(true).expect("nonblocking");
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: valid fd, out-pointer and length for SO_NETNS_COOKIE (u64).
            let rc = unsafe {
                libc::getsockopt(
                    l.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    &mut cookie as *mut u64 as *mut libc::c_void,
                    &mut len,
                )
            };
            assert_eq!(
                rc,
                0,
                "SO_NETNS_COOKIE: {}",
                std::io::Error::last_os_error()
            );
            (l, cookie)
        })
        .join()
        .expect("listener thread")
    }

    /// A process in the netns *and* the cgroup connects to 10.250.0.1:8080 and sends "hello".
    fn pod_connect(&self) -> bool {
        self.pod_connect_port(8080)
    }

    fn pod_connect_port(&self, port: u16) -> bool {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec 3<>/dev/tcp/10.250.0.1/{port} && echo hello >&3",
            self.cgroup.display()
        );
        Command::new("nsenter")
            .args([
                &format!("--net=/run/netns/{}", self.netns),
                "bash",
                "-c",
                &script,
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("spawning nsenter")
            .success()
    }
}

struct Unpin(PathBuf);
impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn accept_within(l: &TcpListener, d: Duration) -> Option<String> {
    let deadline = Instant::now() + d;
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = String::new();
                s.read_to_string(&mut buf).expect("read");
                return Some(buf);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn stat(p: &Datapath, name: &str) -> u64 {
    p.stats()
        .expect("stats")
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn connect4_redirects_enrolled_pods_only() {
    let f = Fixture::new();
    let (listener, cookie) = f.outbound_listener();
    assert_ne!(cookie, 0);

    let pins = PinLayout::new(format!("/sys/fs/bpf/weft-t-connect-{}", std::process::id()));
    let _unpin = Unpin(pins.root.clone());
    let mut progs = Datapath::open(pins.clone()).expect("load eBPF object");
    progs.set_config(0).expect("config");
    let report = progs
        .attach_cgroup_hooks(&f.cgroup, None)
        .expect("attach to test cgroup");
    assert_eq!(report.attached.len(), 4, "{report:?}");

    // Not enrolled yet: the connect goes to 10.250.0.1:8080, where nothing listens.
    assert!(
        !f.pod_connect(),
        "un-enrolled connect must not be redirected"
    );
    assert!(accept_within(&listener, Duration::from_millis(200)).is_none());
    assert!(stat(&progs, "connect_skip_not_enrolled") >= 1);

    // Enrolment needs the inbound listener; sk_lookup attaches to the test netns.
    let (inbound, _) = f.listener_on("0.0.0.0:15006");
    let netns = std::fs::File::open(format!("/run/netns/{}", f.netns)).expect("netns");
    let enrolment = Enrolment {
        uid: "test-pod".into(),
        netns_cookie: cookie,
        ip: std::net::Ipv4Addr::new(10, 250, 0, 2),
        pod_index: 1,
        fast_path: false,
        exclude_outbound_ports: vec![9999],
        exclude_inbound_ports: vec![],
        exclude_outbound_cidrs: vec![],
    };
    progs
        .enroll(&enrolment, inbound.as_raw_fd(), &netns)
        .expect("enroll");
    assert!(pins.sk_lookup_link("test-pod").exists());

    assert!(
        f.pod_connect(),
        "enrolled connect must reach the outbound listener"
    );
    let got = accept_within(&listener, Duration::from_secs(5)).expect("redirected connection");
    assert_eq!(got, "hello\n");
    assert!(stat(&progs, "connect_redirected") >= 1);
    // sock_ops re-filed the original destination under (netns cookie, client address, port).
    assert!(stat(&progs, "sockops_orig_moved") >= 1);
    let table = mesh_agent::ebpf::OrigDstTable::open(&pins).expect("orig table");
    assert_eq!(table.len(), 1, "one re-filed original destination");

    // An excluded port is not redirected.
    assert!(!f.pod_connect_port(9999));
    assert!(stat(&progs, "connect_skip_excluded") >= 1);

    progs.unenroll(&enrolment).expect("unenroll");
    assert!(!pins.sk_lookup_link("test-pod").exists());
    assert!(
        !f.pod_connect(),
        "after un-enrolment the connect is not redirected"
    );
    assert!(accept_within(&listener, Duration::from_millis(200)).is_none());
}
