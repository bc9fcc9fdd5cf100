//! A small internet in network namespaces: hosts with addresses of their
//! own on a shared bridge, some of them behind NAT routers, links shaped
//! by the kernel (`tc` token-bucket filters).
//!
//! ```text
//!            ┌──────────── ns "inet": bridge br0 ────────────┐
//!            │     11.0.0.1       11.0.0.2       11.0.0.10  … │
//!            └─────┬───────────────┬───────────────┬─────────┘
//!              public host     public host     router (MASQUERADE)
//!                                                  │ 10.10.0.1
//!                                              home host 10.10.0.2
//! ```
//!
//! Public hosts and routers sit on 11.0.0.0/24 (see `NET`: nothing in
//! the namespaces can reach beyond the bridge). A home host reaches the
//! rest only through its router, which masquerades what goes out and
//! drops what comes in unasked, as home routers do: no reply at all, so
//! that a hole-punching SYN arriving a moment early is retried rather
//! than reset. A router may run a real UPnP IGD (miniupnpd), which maps
//! ports on request.
//!
//! Everything lives in namespaces named `sluice-<pid>-…`, removed when
//! the [`Internet`] drops (on errors and panics too); namespaces left by a
//! process that no longer runs (killed) are removed by the next
//! [`Internet::new`], with anything still running in them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The shared network's first three octets: a public-looking range, since
/// UPnP gateways (miniupnpd) and libp2p refuse documentation and private
/// ranges as external addresses. Nothing leaves the namespaces: the
/// bridge has no way out, and nobody in them has a route beyond it.
const NET: [u8; 3] = [11, 0, 0];

/// One host: a namespace with an address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace (`ip netns exec NS …`).
    pub ns: String,
    /// The host's own address.
    pub ip: Ipv4Addr,
    /// The address others see it from: its own, or its router's.
    pub public_ip: Ipv4Addr,
    /// Its router's namespace, when behind NAT.
    pub router: Option<String>,
    /// The interface its traffic leaves by (in `ns`), and the one it
    /// arrives by (in the namespace at the other end), for shaping.
    uplink: (String, String),
}

impl Host {
    pub fn behind_nat(&self) -> bool {
        self.router.is_some()
    }

    /// `program` run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// The same as a tokio command (for processes a runtime waits on).
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

/// The namespaces of one small internet; dropped, they are removed.
#[derive(Debug)]
pub struct Internet {
    prefix: String,
    /// Every namespace made, the bridge's first.
    namespaces: Vec<String>,
    hosts: u8,
    homes: u8,
    links: u32,
    /// UPnP daemons in routers, killed on drop; their files' directories.
    daemons: Vec<std::process::Child>,
    dirs: Vec<tempfile::TempDir>,
}

/// Why namespaces cannot be made here, or `None` if they can: the
/// testnet refuses with this line rather than half-building a network.
pub fn unavailable() -> Option<String> {
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "cannot make network namespaces (needs root or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            if Command::new("iptables").arg("--version").output().is_err() {
                return Some(
                    "cannot run `iptables` for the NAT routers (apt-get install iptables)".into(),
                );
            }
            None
        }
    }
}

impl Internet {
    /// A bridge, and nothing on it yet. Removes namespaces that a killed
    /// run left behind first.
    pub fn new() -> Result<Self> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        sweep_stale();
        // Unique to this process and this `Internet` (tests make several
        // in one process).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let mut net = Self {
            namespaces: Vec::new(),
            prefix,
            hosts: 0,
            homes: 0,
            links: 0,
            daemons: Vec::new(),
            dirs: Vec::new(),
        };
        let inet = net.namespace("inet")?;
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        ip(&["-n", &inet, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    fn inet(&self) -> &str {
        &self.namespaces[0]
    }

    fn namespace(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns]).with_context(|| format!("making namespace {ns}"))?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair from `a` (named `a_if` there) to `b` (named `b_if`),
    /// made straight into the two namespaces: nothing appears on the
    /// host's own network, even for a moment or after a failure.
    fn link(&mut self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        self.links += 1;
        ip(&[
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        ip(&["-n", a, "link", "set", a_if, "up"])?;
        ip(&["-n", b, "link", "set", b_if, "up"])?;
        Ok(())
    }

    /// Attaches `ns` to the bridge as `eth0` with the next public
    /// address; returns it and the bridge-side interface.
    fn attach(&mut self, ns: &str) -> Result<(Ipv4Addr, String)> {
        self.hosts = self
            .hosts
            .checked_add(1)
            .filter(|&n| n < 250)
            .context("at most 249 hosts and routers")?;
        let addr = Ipv4Addr::new(NET[0], NET[1], NET[2], self.hosts);
        let port = format!("p{}", self.hosts);
        let inet = self.inet().to_owned();
        self.link(ns, "eth0", &inet, &port)?;
        ip(&["-n", &inet, "link", "set", &port, "master", "br0"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        Ok((addr, port))
    }

    /// A host with a public address.
    pub fn public_host(&mut self, name: &str) -> Result<Host> {
        let ns = self.namespace(name)?;
        let (addr, port) = self.attach(&ns)?;
        Ok(Host {
            ns,
            ip: addr,
            public_ip: addr,
            router: None,
            uplink: ("eth0".into(), port),
        })
    }

    /// A host behind its own NAT router (a home network of one); with
    /// `upnp`, the router runs miniupnpd on its LAN side.
    pub fn home_host(&mut self, name: &str, upnp: bool) -> Result<Host> {
        self.homes = self
            .homes
            .checked_add(1)
            .filter(|&n| n < 200)
            .context("at most 199 homes")?;
        let n = self.homes;
        let router = self.namespace(&format!("{name}-router"))?;
        let (public, _) = self.attach(&router)?;
        let ns = self.namespace(name)?;
        self.link(&ns, "eth0", &router, "lan")?;
        let (gw, addr) = (Ipv4Addr::new(10, n, 0, 1), Ipv4Addr::new(10, n, 0, 2));
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
        in_ns(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Out: masqueraded (Linux keeps the source port when it is free,
        // as most home routers do: hole punching relies on it). In: only
        // what answers something sent out; the rest is dropped unanswered.
        for rule in [
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-j",
                "MASQUERADE",
            ][..],
            &["-A", "FORWARD", "-i", "lan", "-o", "eth0", "-j", "ACCEPT"],
            &[
                "-A",
                "FORWARD",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &["-P", "FORWARD", "DROP"],
            &[
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &["-A", "INPUT", "-i", "eth0", "-j", "DROP"],
        ] {
            in_ns(&router, "iptables", rule)?;
        }
        if upnp {
            self.upnp_gateway(&router, n)?;
        }
        Ok(Host {
            ns,
            ip: addr,
            public_ip: public,
            router: Some(router),
            uplink: ("eth0".into(), "lan".into()),
        })
    }

    /// miniupnpd in `router` (home `n`): its own nftables table (with
    /// accepting policies: the iptables rules above still decide the
    /// rest), and what it forwards let through.
    fn upnp_gateway(&mut self, router: &str, n: u8) -> Result<()> {
        // A directory of our own (not names others could guess in /tmp).
        let dir = tempfile::Builder::new()
            .prefix("sluice-upnp-")
            .tempdir()
            .context("making a directory for miniupnpd's files")?;
        let nft = dir.path().join("rules.nft");
        let conf = dir.path().join("miniupnpd.conf");
        let pid = dir.path().join("miniupnpd.pid");
        self.dirs.push(dir);
        std::fs::write(
            &nft,
            "table inet sluice_upnp {\n\
             chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
             chain miniupnpd { }\n\
             chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
             chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n\
             chain prerouting_miniupnpd { }\n\
             chain postrouting_miniupnpd { }\n\
             }\n",
        )
        .context("writing the UPnP gateway's nftables rules")?;
        in_ns(router, "nft", &["-f", &nft.to_string_lossy()])?;
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=eth0\nlistening_ip=lan\nport=0\nenable_upnp=yes\nenable_natpmp=yes\n\
                 secure_mode=yes\nsystem_uptime=yes\nupnp_table_name=sluice_upnp\n\
                 upnp_nat_table_name=sluice_upnp\nupnp_forward_chain=miniupnpd\n\
                 upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 uuid=5e1ce000-0000-4000-8000-{n:012}\n\
                 allow 1024-65535 10.{n}.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )
        .context("writing the UPnP gateway's configuration")?;
        // Connections it forwards are new ones arriving from outside.
        in_ns(
            router,
            "iptables",
            &[
                "-I",
                "FORWARD",
                "1",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "ACCEPT",
            ],
        )?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", router, "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(&pid)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        stop_with_parent(&mut command);
        let child = command
            .spawn()
            .context("starting miniupnpd (apt-get install miniupnpd)")?;
        self.daemons.push(child);
        Ok(())
    }

    /// Shapes a host's link with token-bucket filters: `up` bytes/s out
    /// of it, `down` bytes/s into it (`None`: unshaped).
    pub fn shape(&self, host: &Host, up: Option<u64>, down: Option<u64>) -> Result<()> {
        let far = host.router.as_deref().unwrap_or(self.inet());
        for (ns, dev, rate) in [
            (&host.ns[..], &host.uplink.0, up),
            (far, &host.uplink.1, down),
        ] {
            let Some(rate) = rate else { continue };
            // A burst of at least one MTU-sized packet and ~10 ms of
            // traffic; a queue of ~100 ms before packets drop.
            let burst = (rate / 100).max(16 * 1024);
            let limit = (rate / 10).max(64 * 1024);
            in_ns(
                ns,
                "tc",
                &[
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{}bit", rate * 8),
                    "burst",
                    &burst.to_string(),
                    "limit",
                    &limit.to_string(),
                ],
            )?;
        }
        Ok(())
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Hosts before the bridge: deleting a namespace deletes its veths.
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Connects to API addresses from inside namespace `ns` (a TCP socket
/// keeps the namespace it was made in): how the testnet, in the root
/// namespace, reads each node's API on the node's own 127.0.0.1.
pub fn connector(ns: &str) -> sluice_node::api::Connector {
    let ns = ns.to_owned();
    Arc::new(move |addr| {
        let ns = ns.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own, which ends after the connect: the
            // namespace switch is per thread.
            std::thread::Builder::new()
                .name("netns-connect".into())
                .spawn(move || {
                    let _ = tx.send(connect_in(&ns, addr));
                })?;
            let stream = rx
                .await
                .map_err(|_| io::Error::other("the connecting thread ended"))??;
            tokio::net::TcpStream::from_std(stream)
        })
    })
}

#[allow(unsafe_code, reason = "setns(2): no safe wrapper in std or tokio")]
fn connect_in(ns: &str, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) gets an fd we hold open and a flag; it moves only
    // this thread, which ends once the socket is made.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// What every namespace this module makes is called first, then the
/// pid of the process that made it.
pub const PREFIX: &str = "sluice-";

/// Removes the namespaces of runs whose process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// Stops whatever still runs in `ns` (a miniupnpd whose testnet was
/// killed keeps the namespace alive), then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Ends the child (miniupnpd) when the thread that started it ends, a
/// killed testnet's included (`PR_SET_PDEATHSIG`).
#[allow(unsafe_code, reason = "prctl(2) in the child before exec")]
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe calls (prctl); it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args), "ip", args)
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args),
        program,
        args,
    )
}

fn run(c: &mut Command, program: &str, args: &[&str]) -> Result<Output> {
    let out = c.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
