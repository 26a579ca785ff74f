//! The short scenarios of `hack/vm-test` (a Debian bookworm VM with systemd and pure cgroup v2,
//! under qemu, no network): skiff installed with `hack/install --enable` from the binaries under
//! test (this package's skiff and skiff-shim, and the runtime under test, which must be
//! skiff-runtime), on the edge OS it is made for. Each test runs one scenario and fails with the lines of
//! its failed checks. The long ones (reboots and resets) run with `hack/vm-test --all`.
//!
//! Without qemu or mmdebstrap the tests are skipped, except under CI=true (hack/setup installs
//! them). The VM image is built once (about two minutes, cached under target/vm/).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use skiff_tests::{runtime_bin, skip, skip_unless_skiff, which};

/// One VM at a time: they share the image build, and two emulated VMs on a small CI machine
/// would only slow each other down.
static VM: Mutex<()> = Mutex::new(());

fn scenario(name: &str) {
    let _one = VM.lock().unwrap_or_else(|e| e.into_inner());
    for tool in ["qemu-system-x86_64", "mmdebstrap"] {
        if which(tool).is_none() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{tool} is not installed, but CI=true: hack/setup installs it");
            }
            skip(&format!("{tool} is not installed (hack/setup installs it)"));
            return;
        }
    }
    if skip_unless_skiff("the VM scenarios install skiff-runtime") {
        return;
    }
    // The three binaries under test, as hack/vm-test --bin wants them.
    let bin = tempfile::tempdir().expect("a temporary directory");
    for (exe, name) in [
        (Path::new(env!("CARGO_BIN_EXE_skiff")), "skiff"),
        (Path::new(env!("CARGO_BIN_EXE_skiff-shim")), "skiff-shim"),
        (runtime_bin(), "skiff-runtime"),
    ] {
        symlink(exe, bin.path().join(name)).expect("a symlink to a binary under test");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/vm-test");
    let out = Command::new(&script)
        .arg("--bin")
        .arg(bin.path())
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if !out.status.success() {
        let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        panic!(
            "hack/vm-test {name} failed ({}):\n{}\n--- its stderr (end):\n{}",
            out.status,
            if failed.is_empty() { "no check line failed: see stderr".to_string() } else { failed.join("\n") },
            tail.join("\n")
        );
    }
}

#[test]
fn vm_pure_cgroup_v2_under_systemd() {
    scenario("cgroup-v2");
}

#[test]
fn vm_memory_controller_off() {
    scenario("memory-off");
}

#[test]
fn vm_systemd_cgroup_driver() {
    scenario("systemd-cgroup");
}
