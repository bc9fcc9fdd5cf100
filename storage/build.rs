//! Probes for the reference implementation the interop test compares
//! with, so that a machine without it shows that test as skipped (ignored)
//! rather than passed. With `SLUICE_REQUIRE_LIBTORRENT=1` (CI) a missing
//! libtorrent fails the build instead.

#![allow(
    clippy::print_stdout,
    reason = "cargo reads what a build script prints"
)]

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sluice_no_libtorrent)");
    println!("cargo::rerun-if-env-changed=SLUICE_REQUIRE_LIBTORRENT");
    // Installing or removing the Debian package changes these.
    println!("cargo::rerun-if-changed=/usr/lib/python3/dist-packages");
    println!("cargo::rerun-if-changed=/usr/bin/python3");
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_LIBTORRENT").is_none(),
            "SLUICE_REQUIRE_LIBTORRENT is set but /usr/bin/python3 cannot import libtorrent \
             (apt-get install python3-libtorrent)"
        );
        println!("cargo::rustc-cfg=sluice_no_libtorrent");
    }
}
