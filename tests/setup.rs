//! `scripts/system_deps.sh`, which `make run`/`make build`/`make test` and `.ci/run` share: with
//! everything installed it does nothing; as a non-root user missing a package it stops at once
//! with the exact command to run (a fresh machine used to fail deep inside a cargo build).

mod common;

use std::process::Command;

fn deps(what: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(common::root().join("scripts/system_deps.sh"))
        .arg(what);
    c
}

#[test]
fn with_everything_installed_it_does_nothing() {
    // The test suite itself needs these, so they are installed wherever it runs.
    let out = deps("test").output().unwrap();
    common::assert_success(&out);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_user_missing_a_package_gets_the_command_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let mut c = if unsafe { libc::geteuid() } == 0 {
        // Run as `nobody`, so the script cannot install and must explain instead (the script
        // comes on stdin: the checkout may not be readable by nobody).
        let script = std::fs::File::open(common::root().join("scripts/system_deps.sh")).unwrap();
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-s",
            "build",
        ])
        .stdin(script);
        c
    } else {
        deps("build")
    };
    // An empty pkg-config search path: libopus looks missing.
    let out = c.env("PKG_CONFIG_LIBDIR", empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudo apt-get install -y --no-install-recommends libopus-dev"),
        "{err}"
    );
}
