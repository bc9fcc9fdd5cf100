//! Probes for what some CLI tests drive, so that a machine without it
//! shows those tests as skipped (ignored) rather than passed: `tmux` (a
//! real terminal for `sluice top`), libtorrent (the BitTorrent interop
//! tests' peer), Transmission (another), opentracker (their tracker),
//! Chromium (the web UI test's browser), a Docker daemon (the image
//! tests), and
//! network and mount namespaces
//! (`ip`, `unshare` and the right to use them: the mDNS and full-disk
//! tests). With
//! `SLUICE_REQUIRE_TMUX=1` / `SLUICE_REQUIRE_LIBTORRENT=1` /
//! `SLUICE_REQUIRE_OPENTRACKER=1` / `SLUICE_REQUIRE_TRANSMISSION=1` /
//! `SLUICE_REQUIRE_CHROMIUM=1` / `SLUICE_REQUIRE_DOCKER=1` /
//! `SLUICE_REQUIRE_NAMESPACES=1` (CI) a missing
//! one fails the build instead.

#![allow(
    clippy::print_stdout,
    reason = "cargo reads what a build script prints"
)]

use std::process::Command;

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sluice_no_tmux)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_libtorrent)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_opentracker)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_transmission)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_chromium)");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_CHROMIUM");
    println!("cargo::rerun-if-changed=/usr/bin/chromium");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_TRANSMISSION");
    println!("cargo::rerun-if-changed=/usr/bin/transmission-cli");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_OPENTRACKER");
    println!("cargo::rerun-if-changed=/usr/bin/opentracker");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_LIBTORRENT");
    println!("cargo::rerun-if-changed=/usr/lib/python3/dist-packages");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_namespaces)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_nat)");
    println!("cargo::rustc-check-cfg=cfg(sluice_no_docker)");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_DOCKER");
    println!("cargo::rerun-if-changed=/var/run/docker.sock");
    println!("cargo::rerun-if-changed=/usr/sbin/iptables");
    println!("cargo::rerun-if-changed=/usr/sbin/miniupnpd");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_TMUX");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_NAMESPACES");
    for bin in [
        "/usr/bin/tmux",
        "/usr/sbin/ip",
        "/bin/ip",
        "/usr/bin/unshare",
    ] {
        println!("cargo::rerun-if-changed={bin}");
    }
    if !runs("tmux", &["-V"]) {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_TMUX").is_none(),
            "SLUICE_REQUIRE_TMUX is set but tmux is not installed"
        );
        println!("cargo::rustc-cfg=sluice_no_tmux");
    }
    // libtorrent (Debian's python3-libtorrent) is the BitTorrent peer the
    // interop tests trade with.
    if !runs("/usr/bin/python3", &["-c", "import libtorrent"]) {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_LIBTORRENT").is_none(),
            "SLUICE_REQUIRE_LIBTORRENT is set but /usr/bin/python3 cannot import libtorrent \
             (apt-get install python3-libtorrent)"
        );
        println!("cargo::rustc-cfg=sluice_no_libtorrent");
    }
    // opentracker is the real tracker the tracker tests announce to.
    if !std::path::Path::new("/usr/bin/opentracker").exists() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_OPENTRACKER").is_none(),
            "SLUICE_REQUIRE_OPENTRACKER is set but opentracker is not installed \
             (apt-get install opentracker)"
        );
        println!("cargo::rustc-cfg=sluice_no_opentracker");
    }
    // Transmission 3 (v1 torrents only) is the second BitTorrent client.
    if !std::path::Path::new("/usr/bin/transmission-cli").exists() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_TRANSMISSION").is_none(),
            "SLUICE_REQUIRE_TRANSMISSION is set but transmission-cli is not installed \
             (apt-get install transmission-cli)"
        );
        println!("cargo::rustc-cfg=sluice_no_transmission");
    }
    // Chromium (headless) drives the web UI test.
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_CHROMIUM").is_none(),
            "SLUICE_REQUIRE_CHROMIUM is set but chromium is not installed (apt-get install chromium)"
        );
        println!("cargo::rustc-cfg=sluice_no_chromium");
    }
    // Making (and at once dropping) a network and a mount namespace tells
    // whether the tests can: root alone is not enough in a container
    // without CAP_SYS_ADMIN.
    let able = runs("ip", &["-V"]) && runs("unshare", &["-n", "-m", "true"]);
    if !able {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_NAMESPACES").is_none(),
            "SLUICE_REQUIRE_NAMESPACES is set but this machine cannot make network and mount namespaces (root, `ip`, `unshare`)"
        );
        println!("cargo::rustc-cfg=sluice_no_namespaces");
    }
    // NAT routers in namespaces (the reachability tests) need iptables
    // too, and the UPnP one miniupnpd (with its nftables backend).
    let routers = runs("iptables", &["--version"])
        && runs("nft", &["--version"])
        && std::path::Path::new("/usr/sbin/miniupnpd").exists();
    if !able || !routers {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_NAMESPACES").is_none(),
            "SLUICE_REQUIRE_NAMESPACES is set but the NAT routers' tools are missing (apt-get install iptables nftables miniupnpd)"
        );
        println!("cargo::rustc-cfg=sluice_no_nat");
    }
    // The image tests need a Docker daemon that answers (a client alone
    // is not enough).
    if !runs("docker", &["info"]) {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_DOCKER").is_none(),
            "SLUICE_REQUIRE_DOCKER is set but no Docker daemon answers (apt-get install docker.io; start dockerd)"
        );
        println!("cargo::rustc-cfg=sluice_no_docker");
    }
}
