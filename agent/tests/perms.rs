//! Issue 11: what a local user gets from skiff's directories — nothing. The attacker is `nobody`
//! (`setpriv --reuid=65534 --regid=65534 --clear-groups`); every attack is made for real against
//! a running agent and its store: listing the store, executing a setuid-root binary of an image
//! layer and one a root container dropped in its upper directory, opening a device node a
//! container made, reading a service's environment from any file, holding the agent's lock.
//! Also: an older skiff's 0755/0644 store is narrowed by any command and by an agent start (and
//! a lock a user took on the old 0644 file does not keep the agent from starting); `skiff load
//! DIR` never follows a symlink out of the directory; the log directories of replicas gone from
//! the manifest are removed.
//!
//! `SKIFF_TEST_SKIFF` runs these tests against another skiff binary (an older build, to see
//! them fail).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest as _, Sha256};
use skiff_tests::agent::{all_running, replica_ids, service, Agent, WAIT};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};
use skiff_tests::{host, kind, skip_part, wait_until, Kind, Out, Scratch};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The skiff under test: `SKIFF_TEST_SKIFF`, else this build's.
fn skiff_bin() -> PathBuf {
    std::env::var_os("SKIFF_TEST_SKIFF").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SKIFF))
}

fn agent() -> Agent {
    Agent::new(skiff_bin())
}

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

const NOBODY: [&str; 5] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];

/// `args` run as nobody. Through a shell that execs them: setpriv's own execve still resolves
/// the program's path with root's DAC override (it drops the capabilities only as that execve
/// completes), so `setpriv ... /0700-dir/prog` would run a program nobody cannot reach.
fn as_nobody(args: &[&str]) -> Out {
    let mut v: Vec<&str> = NOBODY.to_vec();
    v.extend_from_slice(&["/bin/sh", "-c", "exec \"$@\"", "sh"]);
    v.extend_from_slice(args);
    host(&v)
}

/// As nobody, `args` must fail with EACCES (not because the path is missing: that would prove
/// nothing).
#[track_caller]
fn denied(args: &[&str]) {
    let out = as_nobody(args);
    assert!(
        !out.success() && out.stderr.contains("Permission denied"),
        "as nobody, `{}` must fail with Permission denied:\n{out}",
        args.join(" ")
    );
}

/// What got through, all of it (a test reports every breach, not only the first).
#[derive(Default)]
struct Breaches(Vec<String>);

impl Breaches {
    /// As nobody, `args` must fail with EACCES.
    fn denied(&mut self, args: &[&str]) {
        let out = as_nobody(args);
        if out.success() || !out.stderr.contains("Permission denied") {
            let said = format!("{}{}", out.stdout.trim(), out.stderr.trim());
            let said: String = said.chars().take(300).collect();
            self.0.push(format!("as nobody `{}` was not refused: {said}", args.join(" ")));
        }
    }

    fn mode(&mut self, p: &Path, want: u32) {
        let m = mode(p);
        if m != want {
            self.0.push(format!("{} is {m:o}, want {want:o}", p.display()));
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        assert!(self.0.is_empty(), "{} breach(es):\n  {}", self.0.len(), self.0.join("\n  "));
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

#[track_caller]
fn assert_mode(p: &Path, want: u32) {
    let m = mode(p);
    assert_eq!(m, want, "{} is {m:o}, want {want:o}", p.display());
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every regular file under `dir` on its file system (the containers' root file systems and
/// network namespaces mounted under it are not entered).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let dev = fs::metadata(dir).expect("stat").dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else { continue };
        if md.dev() != dev {
            continue;
        }
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if md.is_file() {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The agent's runtime writes its own state (the spec, environment included) under
/// `<run>/runtime`: runc and crun choose their files' modes; only the directory is skiff's.
fn in_runtime_state(a: &Agent, p: &Path) -> bool {
    p.starts_with(a.runtime_root())
}

/// A process of nobody's that holds a shared flock on `path` (opened read-only, as any user could
/// open an 0644 file), killed on drop.
struct Holder(Child);

impl Holder {
    fn take(path: &Path) -> Holder {
        let script = format!("exec 9<'{}' && flock -s 9 && echo held && exec sleep 1000", s(path));
        let mut child = Command::new(NOBODY[0])
            .args(&NOBODY[1..])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn setpriv");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut line).expect("read");
        let holder = Holder(child);
        assert_eq!(line.trim(), "held", "nobody could not take the lock on {}", path.display());
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------

/// Items 1, 4 and 6 of issue 11 against a running agent: its store and run state are not
/// listable, readable or executable by nobody; no file holds a service's environment where
/// nobody could read it; the lock files cannot be opened. A container that runs as a non-root
/// user (the image's `app`, uid 1000) still works: it reaches its root file system and a named
/// volume through the mounts, never through the store's path.
#[test]
fn a_local_user_reaches_nothing_under_the_root_and_reads_no_secret() {
    let mut a = agent();
    let (pw, token) = ("pw-3c1f9e0a7b", "tok-9d2e4b1c55");
    // A password in a 0600 .env next to the manifest (interpolated), a token in a 0600 env_file.
    for (name, text) in [(".env", format!("PG_PW={pw}\n")), ("db.env", format!("API_TOKEN={token}\n"))] {
        let p = a.dir().join(name);
        fs::write(&p, text).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let img = image();
    a.write_manifest(&format!(
        r#"services:
  db:
    image: {img}
    user: root
    environment:
      POSTGRES_PASSWORD: ${{PG_PW}}
    env_file: [db.env]
    command: ["sh", "-c", "cp /bin/busybox /suid && chmod 4755 /suid && mknod /zero c 1 5 && chmod 666 /zero && echo \"pw=$$POSTGRES_PASSWORD token=$$API_TOKEN\" && echo made && exec sleep 1000"]
    stop_grace_period: 1s
  app:
    image: {img}
    volumes: ["data:/data"]
    command: ["sh", "-c", "id -u && ls /data >/dev/null && cat /etc/passwd >/dev/null && echo nonroot-ok && exec sleep 1000"]
    stop_grace_period: 1s
volumes:
  data: {{}}
"#
    ));
    a.start();
    a.wait_status("db and app running", |st| all_running(st, "db", 1) && all_running(st, "app", 1));
    wait_until("db to make its files and print its environment", WAIT, || a.logs(&["db"]).contains("made"));
    wait_until("app (uid 1000) to reach its rootfs and volume", WAIT, || a.logs(&["app"]).contains("nonroot-ok"));
    assert!(a.logs(&["app"]).contains("1000"), "app runs as uid 1000: {}", a.logs(&["app"]));
    assert!(a.logs(&["db"]).contains(pw), "the service got its environment");

    let root = a.root();
    let run = a.run_dir();
    let upper = root.join("containers/db-1/upper");
    assert_eq!(mode(&upper.join("suid")), 0o4755, "the container made a setuid-root binary");
    assert!(fs::metadata(upper.join("zero")).expect("stat").file_type().is_char_device(), "and a device node");
    // An image whose layer ships a setuid-root binary (the issue's `rootcat`): /usr/bin/id, so
    // that running it shows the effective uid it got.
    let layer = fs::read_dir(root.join("layers/sha256")).expect("layers").flatten().next().expect("a layer").path();
    let rootid = layer.join("usr/local/bin/rootid");
    fs::create_dir_all(rootid.parent().unwrap()).expect("mkdir");
    fs::copy("/usr/bin/id", &rootid).expect("copy id");
    fs::set_permissions(&rootid, fs::Permissions::from_mode(0o4755)).expect("chmod");

    // The attacks.
    let mut b = Breaches::default();
    for dir in [&root, &root.join("containers"), &root.join("layers/sha256"), &root.join("volumes"), &run] {
        b.denied(&["ls", s(dir)]);
    }
    b.denied(&[s(&rootid)]);
    b.denied(&[s(&upper.join("suid")), "true"]);
    b.denied(&["head", "-c", "1", s(&upper.join("zero"))]);
    b.denied(&["cat", s(&root.join("containers/db-1/replica.json"))]);
    let locks: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "lock" || n.to_string_lossy().ends_with(".lock")))
        .collect();
    assert!(locks.contains(&run.join("agent.lock")) && locks.contains(&root.join("lock")), "{locks:?}");
    for l in &locks {
        b.denied(&["flock", "-n", "-s", s(l), "true"]);
        b.mode(l, 0o600);
    }

    // Every file that holds the environment: 0600 (skiff's own), and nobody reads none of them.
    let secret_files: BTreeSet<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| fs::read(p).is_ok_and(|d| contains(&d, pw) || contains(&d, token)))
        .collect();
    for want in ["containers/db-1/replica.json", "containers/db-1/config.json", "logs/db-1/current.log"] {
        assert!(secret_files.contains(&root.join(want)), "{want} holds the environment: {secret_files:?}");
    }
    for f in &secret_files {
        b.denied(&["cat", s(f)]);
        if in_runtime_state(&a, f) && kind() != Kind::Skiff {
            if mode(f) & 0o077 != 0 {
                skip_part(&format!("{} is the runtime's own file: its mode is {:o}", f.display(), mode(f)));
            }
            continue;
        }
        b.mode(f, 0o600);
    }
    // The directories: root's alone.
    for d in ["", "containers", "containers/db-1", "volumes", "logs", "logs/db-1", "layers", "blobs", "images", "tmp"] {
        b.mode(&root.join(d), 0o700);
    }
    for d in ["", "shims", "shims/db-1", "runtime"] {
        b.mode(&run.join(d), 0o700);
    }
    // A volume keeps its own mode: the container's users see it through the bind mount.
    b.mode(&root.join("volumes/data"), 0o755);
    b.assert_none();
    a.down();
}

/// A store as an older skiff left it: every directory 0755, the lock files 0644, a log 0640.
fn make_old_store(root: &Path) {
    let dirs = [
        "blobs/sha256",
        "layers/sha256",
        "images",
        "tmp",
        "containers",
        "volumes/v",
        "logs/web-1",
        "network/ipam",
        "run/shims/old-1",
        "preload",
    ];
    let files = ["lock", "run/agent.lock", "logs/web-1/current.log"];
    {
        for d in dirs {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in files {
            fs::OpenOptions::new().create(true).append(true).open(root.join(f)).expect("create");
        }
        let mut all: Vec<PathBuf> = vec![root.to_path_buf()];
        for d in dirs {
            let mut p = PathBuf::new();
            for c in Path::new(d).components() {
                p.push(c);
                all.push(root.join(&p));
            }
        }
        for p in all {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for f in files {
            fs::set_permissions(root.join(f), fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        fs::set_permissions(root.join("logs/web-1/current.log"), fs::Permissions::from_mode(0o640)).expect("chmod");
    }
    assert!(as_nobody(&["ls", s(&root.join("layers/sha256"))]).success(), "the old store is open to nobody");
}

/// What an old store must look like once narrowed.
fn check_private(root: &Path, b: &mut Breaches) {
    b.mode(root, 0o700);
    for d in ["blobs", "layers", "images", "tmp", "containers", "volumes", "logs", "network", "run", "preload"] {
        b.mode(&root.join(d), 0o700);
    }
    b.mode(&root.join("run/shims"), 0o700);
    b.mode(&root.join("lock"), 0o600);
    b.mode(&root.join("run/agent.lock"), 0o600);
    b.denied(&["ls", s(root)]);
    b.denied(&["ls", s(&root.join("layers/sha256"))]);
    b.denied(&["flock", "-n", "-s", s(&root.join("run/agent.lock")), "true"]);
}

/// Item 1 on an upgrade: a store an older skiff left 0755/0644 is narrowed by any command that
/// opens it (here `skiff images`).
#[test]
fn an_old_store_is_made_private_by_any_command() {
    let a = agent();
    make_old_store(&a.root());
    let out = a.skiff(&["images"]);
    assert!(out.success(), "{out}");
    let mut b = Breaches::default();
    check_private(&a.root(), &mut b);
    b.assert_none();
}

/// Items 1 and 6 on an upgrade: an agent start narrows an old store, and a shared lock nobody
/// took on the old 0644 agent.lock (opened read-only before the upgrade, still held) does not
/// keep the new agent from starting; the new lock file is out of nobody's reach.
#[test]
fn an_old_store_is_made_private_by_the_agent_and_a_lock_held_by_a_user_does_not_stop_it() {
    let mut a = agent();
    let root = a.root();
    make_old_store(&root);
    let holder = Holder::take(&root.join("run/agent.lock"));
    a.write_manifest(&format!(
        "services:\n  web:\n    image: {}\n    command: [\"sh\", \"-c\", \"echo up && exec sleep 1000\"]\n    stop_grace_period: 1s\n",
        image()
    ));
    a.start();
    a.wait_running("web", 1);
    let mut b = Breaches::default();
    check_private(&root, &mut b);
    // The shim narrowed the old 0640 log (and its directory) when it opened it again.
    wait_until("web to log", WAIT, || a.logs(&["web"]).contains("up"));
    b.mode(&root.join("logs/web-1/current.log"), 0o600);
    b.mode(&root.join("logs/web-1"), 0o700);
    b.assert_none();
    drop(holder);
    a.down();
}

/// Item 6 as it stands on a fresh store: nobody cannot open the agent's lock file, so nothing
/// nobody does keeps a second start of the agent from being refused for the right reason.
#[test]
fn a_second_agent_is_refused_and_nobody_cannot_touch_the_lock() {
    let mut a = agent();
    a.write_manifest(&format!(
        "services:\n  web:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n",
        image()
    ));
    a.start();
    a.wait_running("web", 1);
    let lock = a.run_dir().join("agent.lock");
    assert_mode(&lock, 0o600);
    assert_mode(&a.run_dir(), 0o700);
    denied(&["flock", "-n", "-s", s(&lock), "true"]);
    // Another agent on the same root is refused: the lock is held by a root process.
    let out = a.skiff(&["agent", "--manifest", s(&a.manifest_path()), "--listen", "127.0.0.1:0"]);
    assert!(!out.success() && out.stderr.contains("another skiff agent runs"), "{out}");
    a.down();
}

/// Item 5: the log directory of a replica goes once the replica is gone for good (its service
/// removed from the manifest, or scaled below its index), also one an earlier agent left; a
/// stopped replica keeps its logs while it is in the manifest (`skiff logs` still shows them), a
/// replica that stays keeps them.
#[test]
fn logs_of_replicas_gone_from_the_manifest_are_removed() {
    let mut a = agent();
    let logs = a.root().join("logs");
    // Left by an earlier agent: a replica of a service that is no longer in the manifest.
    fs::create_dir_all(logs.join("ghost-1")).expect("mkdir");
    fs::write(logs.join("ghost-1/current.log"), "2000-01-01T00:00:00.000000000Z out boo\n").expect("write");
    let img = image();
    let manifest = |web: u32, job: bool| {
        let mut m = format!(
            "services:\n  web:\n    image: {img}\n    command: [\"sh\", \"-c\", \"echo hello && exec sleep 1000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {web}\n"
        );
        if job {
            m.push_str(&format!("  job:\n    image: {img}\n    command: [\"echo\", \"done\"]\n    restart: \"no\"\n"));
        }
        m
    };
    a.write_manifest(&manifest(2, true));
    a.start();
    let st = a.wait_status("web (2) running, job exited", |st| {
        all_running(st, "web", 2) && service(st, "job")["replicas"][0]["state"] == "exited"
    });
    assert_eq!(replica_ids(&st, "web"), ["web-1", "web-2"]);
    wait_until("the ghost's logs to go", WAIT, || !logs.join("ghost-1").exists());
    // A stopped replica's logs stay while it is in the manifest.
    assert!(a.logs(&["job"]).contains("done"), "{}", a.logs(&["job"]));
    wait_until("web-2 to log", WAIT, || a.logs(&["web/2"]).contains("hello"));

    a.write_manifest(&manifest(1, false));
    a.wait_status("web scaled to 1 and job gone", |st| {
        replica_ids(st, "web") == ["web-1"] && st["services"].as_array().is_some_and(|s| s.len() == 1)
    });
    wait_until("the logs of web-2 and job-1 to go", WAIT, || {
        !logs.join("web-2").exists() && !logs.join("job-1").exists()
    });
    assert!(logs.join("web-1").is_dir(), "web-1 is still there: its logs stay");
    assert!(a.logs(&["web"]).contains("hello"));
    a.down();
    // `skiff down` keeps the logs of what the manifest still has.
    assert!(logs.join("web-1").is_dir(), "skiff down keeps the logs");
}

/// "Also" of issue 11: `skiff load DIR` opens every file beneath the directory. A layer (or the
/// manifest) that is a symlink to a root-only file outside — absolute, or through `..` — makes
/// the load fail with one clear line, and nothing of that file is stored. A symlink that stays
/// inside the directory (as skopeo writes docker-save layouts) is fine.
#[test]
fn load_of_a_directory_never_follows_a_symlink_out_of_it() {
    skiff_tests::require_root();
    let t = Scratch::new("perms-load");
    let sha = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    let tar_of = |name: &str, content: &[u8]| -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, name, content).expect("tar");
        b.into_inner().expect("tar")
    };
    // The canary: a root-only layer tar in a root-only directory.
    let secret = t.join("secret");
    fs::create_dir(&secret).expect("mkdir");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).expect("chmod");
    let canary = tar_of("etc/shadow-copy", b"root:$6$CANARY:19000:0:99999:7:::\n");
    let canary_path = secret.join("canary.tar");
    fs::write(&canary_path, &canary).expect("write");
    fs::set_permissions(&canary_path, fs::Permissions::from_mode(0o600)).expect("chmod");
    let benign = tar_of("etc/hello", b"hello\n");

    let arch = skiff_images::Platform::host().architecture;
    let layout = |name: &str, layer: &[u8], link: Option<&str>, manifest_link: Option<&str>| -> PathBuf {
        let d = t.join(name);
        fs::create_dir_all(d.join("l1")).expect("mkdir");
        let cfg = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux", "created": "2000-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(layer))]},
        }))
        .expect("json");
        let cfg_name = format!("{}.json", sha(&cfg));
        fs::write(d.join(&cfg_name), &cfg).expect("write");
        let manifest =
            format!(r#"[{{"Config":"{cfg_name}","RepoTags":["example.com/{name}:1"],"Layers":["l1/layer.tar"]}}]"#);
        match manifest_link {
            Some(target) => {
                fs::write(secret.join(format!("{name}-manifest.json")), &manifest).expect("write");
                std::os::unix::fs::symlink(target, d.join("manifest.json")).expect("symlink");
            }
            None => fs::write(d.join("manifest.json"), &manifest).expect("write"),
        }
        match link {
            Some(target) => std::os::unix::fs::symlink(target, d.join("l1/layer.tar")).expect("symlink"),
            None => {
                fs::create_dir_all(d.join("l0")).expect("mkdir");
                fs::write(d.join("l0/real.tar"), layer).expect("write");
                std::os::unix::fs::symlink("../l0/real.tar", d.join("l1/layer.tar")).expect("symlink");
            }
        }
        d
    };
    let root = t.join("root");
    let load = |dir: &Path| -> Out {
        let mut cmd = Command::new(skiff_bin());
        cmd.env_remove("SKIFF_ROOT").arg("--root").arg(&root).arg("load").arg(dir).stdin(Stdio::null());
        skiff_tests::run_command(cmd, format!("skiff load {}", dir.display()), t.path(), skiff_tests::TIMEOUT)
    };
    let canary_stored = || {
        root.join("blobs/sha256").join(sha(&canary)).exists() || root.join("layers/sha256").join(sha(&canary)).exists()
    };

    // Inside the directory: loads.
    let ok = layout("inside", &benign, None, None);
    let out = load(&ok);
    assert!(out.success(), "a symlink inside the directory is followed: {out}");
    assert!(root.join("blobs/sha256").join(sha(&benign)).exists());

    let abs = s(&canary_path).to_string();
    let cases = [
        ("absolute", Some(abs.as_str()), None),
        ("dotdot", Some("../../secret/canary.tar"), None),
        ("manifest", Some(abs.as_str()), Some(format!("{}/manifest-manifest.json", s(&secret)))),
    ];
    for (name, link, manifest_link) in cases {
        let d = layout(name, &canary, link, manifest_link.as_deref());
        let out = load(&d);
        assert!(!out.success(), "{name}: the load must fail: {out}");
        let err = out.stderr.trim();
        assert!(!err.contains('\n') && err.contains("leads out of the directory"), "{name}: one clear line: {err}");
        assert!(!canary_stored(), "{name}: the canary's content was stored");
        let (images, _) = skiff_images::Store::open(&root).expect("store").images().expect("images");
        assert!(
            images.iter().all(|r| !r.reference.contains(name)),
            "{name}: no image record: {:?}",
            images.iter().map(|r| &r.reference).collect::<Vec<_>>()
        );
    }
}
