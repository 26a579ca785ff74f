//! Secrets and configs, end to end (issue 13): a secret copied into a tmpfs with the owner and
//! mode the manifest asks (uid 1000, 0400: the service's user reads it, another uid does not),
//! read-only, on a tmpfs in the container; the host's copy is on a tmpfs under a root-only
//! directory (nobody cannot read it: the attack is performed with setpriv), and its bytes are
//! in no file on the disk under the agent's root; a config at a custom target; a secret from
//! the environment (`.env` next to the manifest); a changed secret file replaces the replica.
//! Run as root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use skiff_tests::agent::{pids, Agent};
use skiff_tests::host;
use skiff_tests::registry::{Registry, BUSYBOX_OCI};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

/// `sh -c SCRIPT` in replica `id` as `user` (`uid:gid`, or the container's when `None`).
fn sh(a: &Agent, id: &str, user: Option<&str>, script: &str) -> (bool, String) {
    let mut args = vec!["exec"];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.extend(["--", id, "sh", "-c", script]);
    let out = a.rt(&args);
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// Whether `needle` is in a file under `dir` on the disk (mount points below it are skipped:
/// the rootfs overlay, the files' tmpfs).
fn on_disk(dir: &Path, needle: &[u8], dev: u64) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else { return found };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            found.extend(on_disk(&p, needle, dev));
        } else if m.is_file() {
            if let Ok(data) = fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn secrets_and_configs_are_copied_with_their_owner_and_mode() {
    let mut a = Agent::new(SKIFF);
    let marker = format!("SKIFF-SECRET-{}", std::process::id());
    let secret = a.dir().join("db-password.txt");
    fs::write(&secret, format!("{marker}-1\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(a.dir().join(".env"), format!("API_TOKEN={marker}-token\n")).unwrap();
    let manifest = |comment: &str| {
        format!(
            "# {comment}\nservices:\n  app:\n    image: {img}\n    user: \"1000\"\n    command: [sleep, \"1000\"]\n    stop_grace_period: 1s\n    secrets:\n      - source: db\n        uid: \"1000\"\n        gid: \"1000\"\n        mode: 0400\n      - token\n    configs:\n      - source: conf\n        target: /etc/app/app.conf\n        gid: 1000\n        mode: 0440\nsecrets:\n  db:\n    file: ./db-password.txt\n  token:\n    environment: API_TOKEN\nconfigs:\n  conf:\n    content: |\n      listen = 8080\n",
            img = image()
        )
    };
    a.write_manifest(&manifest("first"));
    a.start();
    let st = a.wait_running("app", 1);
    let pid = pids(&st, "app")["app-1"];

    // The service's user reads it; owner and mode as asked.
    let (ok, out) = sh(&a, "app-1", None, "cat /run/secrets/db");
    assert!(ok && out == format!("{marker}-1\n"), "{out}");
    let (ok, out) = sh(&a, "app-1", None, "stat -c '%u:%g %a' /run/secrets/db /run/secrets/token /etc/app/app.conf");
    assert!(ok && out == "1000:1000 400\n0:0 444\n0:1000 440\n", "{out}");
    // Another uid does not, and nobody writes it, root included.
    let (ok, out) = sh(&a, "app-1", Some("1001:1001"), "cat /run/secrets/db");
    assert!(!ok && out.contains("Permission denied") && !out.contains(&marker), "{out}");
    let (ok, out) = sh(&a, "app-1", Some("0:0"), "echo x > /run/secrets/db");
    assert!(!ok && out.contains("Read-only file system"), "{out}");
    // On a tmpfs, read-only.
    let (ok, out) = sh(&a, "app-1", None, "grep ' /run/secrets/db ' /proc/mounts");
    assert!(ok && out.contains(" tmpfs ") && out.contains(" ro,"), "{out}");
    // From the environment, and a config at its target.
    let (ok, out) = sh(&a, "app-1", None, "cat /run/secrets/token; echo; cat /etc/app/app.conf");
    assert!(ok && out == format!("{marker}-token\nlisten = 8080\n"), "{out}");

    // The host's copy: a tmpfs under root-only directories; nobody cannot read it.
    let files = a.root().join("containers/app-1/files");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(files.to_str().unwrap())).unwrap_or_default();
    assert!(line.starts_with("skiff-files ") && line.contains(" tmpfs ") && line.contains("mode=700"), "{line:?}");
    let mut p = files.clone();
    loop {
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert!(mode & 0o007 == 0 || !p.starts_with(a.root()), "{} is open to others: {mode:o}", p.display());
        if p == a.root() || !p.pop() {
            break;
        }
    }
    let attack = host(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        &format!("cat {}/0; ls {}", files.display(), files.display()),
    ]);
    assert!(!attack.success() && !attack.stdout.contains(&marker), "nobody read the secret: {attack}");
    // Nowhere on the disk under the root (the environment's value is in the 0600 records,
    // like every environment value; the file's content is not).
    let dev = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(a.root()).unwrap().dev()
    };
    let found = on_disk(&a.root(), format!("{marker}-1").as_bytes(), dev);
    assert!(found.is_empty(), "the secret is on the disk: {found:?}");

    // A new content of the file replaces the replica: the agent watches the secret's file
    // (no edit of the manifest).
    fs::write(&secret, format!("{marker}-2\n")).unwrap();
    let st = a.wait_status("app-1 replaced", |st| {
        pids(st, "app").get("app-1").is_some_and(|p| *p != pid) && skiff_tests::agent::all_running(st, "app", 1)
    });
    let _ = st;
    let (ok, out) = sh(&a, "app-1", None, "cat /run/secrets/db");
    assert!(ok && out == format!("{marker}-2\n"), "{out}");
    a.down();
    assert!(!fs::read_to_string("/proc/self/mounts").unwrap().contains(files.to_str().unwrap()), "unmounted");
}

#[test]
fn a_missing_secret_file_is_a_manifest_error() {
    let a = Agent::new(SKIFF);
    a.write_manifest(&format!(
        "services:\n  app:\n    image: {}\n    secrets: [db]\nsecrets:\n  db:\n    file: ./nope.txt\n",
        image()
    ));
    let out = a.skiff(&["validate", a.manifest_path().to_str().unwrap()]);
    assert!(!out.success() && out.stderr.contains(":7:11: error: secrets.db.file:"), "{out}");
    assert!(out.stderr.contains("nope.txt does not exist"), "{out}");
}
