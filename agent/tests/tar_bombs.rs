//! Tar extension headers as memory bombs, end to end: a layer whose GNU long name (`L`), GNU
//! long link name (`K`), PAX header (`x`) or PAX global header (`g`) announces 128 MiB
//! (about 128 KiB gzipped), and a layer with a 3 KiB entry name full of terminal escapes,
//! through `skiff load` (inside an OCI archive, and as an entry of the archive itself),
//! `skiff pull` from a real registry, and an agent service that keeps retrying the pull.
//!
//! Each must fail with one short line (< 512 bytes, control characters escaped), store
//! nothing, and stay small: peak RSS under 64 MB (`/usr/bin/time`'s %M; the agent's
//! `VmHWM`). Every command runs in a memory cgroup of its own capped at 512 MiB, so that a
//! bomb that works (old code, a regression) is OOM-killed there instead of taking the
//! machine's memory: that shows as a failure too. The agent's `/v1/status` stays small and
//! its log does not grow with the retries beyond a short line now and then. Run as root.
//!
//! `SKIFF_TEST_SKIFF=/path/to/skiff` runs them against another skiff binary (an old build,
//! to see them fail).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use skiff_tests::agent::{replicas, Agent};
use skiff_tests::memcap::{run_peak, Measured, MemCap};
use skiff_tests::registry::{Registry, OCI_INDEX, OCI_MANIFEST};
use skiff_tests::{blob_digest, oci_arch, Scratch};
use tar::{EntryType, Header};

const TIMEOUT: Duration = Duration::from_secs(300);
/// What each bomb announces.
const BOMB: u64 = 128 << 20;
/// The memory cgroup cap of every command (a working bomb is killed here).
const CAP: u64 = 512 << 20;
/// The peak RSS allowed.
const PEAK_KIB: u64 = 64 << 10;
/// The longest error line allowed.
const LINE: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bomb {
    LongName,
    LongLink,
    Pax,
    PaxGlobal,
    /// Not a bomb: a 3 KiB name with terminal escapes and a `..`, which the unpacker
    /// refuses, quoting the name.
    HostileName,
}

const BOMBS: [Bomb; 5] = [Bomb::LongName, Bomb::LongLink, Bomb::Pax, Bomb::PaxGlobal, Bomb::HostileName];

impl Bomb {
    fn name(self) -> &'static str {
        match self {
            Bomb::LongName => "gnu-long-name",
            Bomb::LongLink => "gnu-long-link",
            Bomb::Pax => "pax-header",
            Bomb::PaxGlobal => "pax-global-header",
            Bomb::HostileName => "hostile-name",
        }
    }
}

/// Terminal escapes: set the window title, clear the screen, a C1 CSI, a bidi override.
const ESCAPES: &[u8] = b"\x1b]0;pwned\x07\x1b[2J\xc2\x9b31m\xe2\x80\xae";

// ---------------------------------------------------------------------------------------
// The layers (streamed through gzip: the bombs are never in memory)
// ---------------------------------------------------------------------------------------

/// Writes the uncompressed layer into a `gzip -1` process while hashing it.
struct Gz {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
    sha: Sha256,
}

impl Gz {
    fn new() -> Gz {
        let mut child = Command::new("gzip")
            .args(["-c", "-1", "-n"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn gzip");
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            out.read_to_end(&mut v).expect("read gzip's output");
            v
        });
        Gz { stdin: child.stdin.take(), child, reader: Some(reader), sha: Sha256::new() }
    }

    fn put(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.stdin.as_mut().unwrap().write_all(data).expect("write to gzip");
    }

    fn header(&mut self, name: &[u8], kind: u8, size: u64) {
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(EntryType::new(kind));
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(946_684_800);
        h.set_size(size);
        h.set_cksum();
        self.put(h.as_bytes());
    }

    /// `n` bytes of `byte`, in 1 MiB pieces.
    fn fill(&mut self, byte: u8, n: u64) {
        let chunk = vec![byte; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            self.put(&chunk[..k]);
            left -= k as u64;
        }
    }

    /// The zeros after `size` bytes of data, to the next block.
    fn pad(&mut self, size: u64) {
        self.put(&vec![0u8; ((512 - size % 512) % 512) as usize]);
    }

    fn record(&mut self, name: &[u8], kind: u8, data: &[u8]) {
        self.header(name, kind, data.len() as u64);
        self.put(data);
        self.put(&vec![0u8; (512 - data.len() % 512) % 512]);
    }

    /// (gzipped layer, diff_id)
    fn finish(mut self) -> (Vec<u8>, String) {
        self.put(&[0u8; 1024]);
        drop(self.stdin.take());
        let gz = self.reader.take().unwrap().join().expect("gzip reader");
        assert!(self.child.wait().expect("wait for gzip").success());
        let hex: String = self.sha.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
        (gz, format!("sha256:{hex}"))
    }
}

fn bomb_layer(b: Bomb) -> &'static (Vec<u8>, String) {
    static LAYERS: [OnceLock<(Vec<u8>, String)>; 5] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = BOMBS.iter().position(|x| *x == b).unwrap();
    LAYERS[i].get_or_init(|| {
        let mut g = Gz::new();
        g.record(b"ok", b'0', b"fine\n");
        match b {
            Bomb::LongName | Bomb::LongLink => {
                g.header(b"././@LongLink", if b == Bomb::LongName { b'L' } else { b'K' }, BOMB + 1);
                // The name's bytes (terminal escapes, then 'a's), its NUL, the padding.
                g.put(ESCAPES);
                g.fill(b'a', BOMB - ESCAPES.len() as u64);
                g.put(b"\0");
                g.pad(BOMB + 1);
                if b == Bomb::LongName {
                    g.record(b"short", b'0', b"x");
                } else {
                    g.header(b"link", b'2', 0);
                }
            }
            Bomb::Pax | Bomb::PaxGlobal => {
                let kind = if b == Bomb::Pax { b'x' } else { b'g' };
                let key = if b == Bomb::Pax { "path" } else { "comment" };
                // One record of BOMB bytes: "<len> key=aaa...\n". Written by hand so the
                // newline lands at the end: header, prefix, fill, "\n", padding.
                let prefix = format!("{BOMB} {key}=");
                g.header(b"PaxHeaders/bomb", kind, BOMB);
                g.put(prefix.as_bytes());
                g.fill(b'a', BOMB - prefix.len() as u64 - 1);
                g.put(b"\n");
                g.pad(BOMB);
                g.record(b"after", b'0', b"x");
            }
            Bomb::HostileName => {
                let name = [ESCAPES, &b"a".repeat(3000), b"/../escape"].concat();
                g.record(b"././@LongLink", b'L', &[&name[..], b"\0"].concat());
                g.record(&name, b'0', b"x");
            }
        }
        g.finish()
    })
}

// ---------------------------------------------------------------------------------------
// Images: an OCI layout, an OCI archive of it, a push to the registry
// ---------------------------------------------------------------------------------------

/// A one-layer image as an OCI layout in `dir`, tagged `1` (named `name` for `skiff load`).
fn layout(dir: &Path, b: Bomb) -> PathBuf {
    let (gz, diff_id) = bomb_layer(b);
    let l = dir.join(format!("layout-{}", b.name()));
    fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = blob_digest(data);
        fs::write(l.join("blobs/sha256").join(d.trim_start_matches("sha256:")), data).unwrap();
        (d, data.len())
    };
    let (layer, layer_size) = put(gz);
    let config = json!({
        "architecture": oci_arch(), "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let (m, m_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m, "size": m_size, "annotations": {
            "org.opencontainers.image.ref.name": "1",
            "io.containerd.image.name": format!("localhost/bomb/{}:1", b.name()),
        }}],
    });
    fs::write(l.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    l
}

/// The layout as an OCI archive (a tar of it).
fn archive(layout: &Path, out: &Path) {
    let mut t = tar::Builder::new(File::create(out).unwrap());
    t.append_dir_all(".", layout).unwrap();
    t.into_inner().unwrap().flush().unwrap();
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(Registry::empty)
}

/// Pushes the image of `b` as `bomb/<name>:1`; returns the reference to pull.
fn pushed(b: Bomb) -> String {
    static PUSHED: [OnceLock<String>; 5] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = BOMBS.iter().position(|x| *x == b).unwrap();
    PUSHED[i]
        .get_or_init(|| {
            let work = Scratch::new("bomb-push");
            let l = layout(work.path(), b);
            let repo = format!("bomb/{}", b.name());
            registry().push(&format!("oci:{}:1", l.display()), &format!("{repo}:1"), &["--preserve-digests"]).ok();
            registry().image(&format!("{repo}:1"))
        })
        .clone()
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// The skiff under test: `SKIFF_TEST_SKIFF`, else this build's.
fn skiff_bin() -> PathBuf {
    std::env::var_os("SKIFF_TEST_SKIFF").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skiff")), PathBuf::from)
}

fn skiff(cap: &MemCap, root: &Path, args: &[&str]) -> Measured {
    let mut c = cap.command(skiff_bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .env("REGISTRY_AUTH_FILE", root.with_extension("auth.json"))
        .env_remove("SKIFF_ROOT")
        .env_remove("SKIFF_INSECURE_REGISTRIES");
    run_peak(c, TIMEOUT)
}

/// No control character (a newline only at the end of lines).
fn clean(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\n')
}

/// The command failed with one short, escaped `skiff: error:` line, in bounded memory.
#[track_caller]
fn refused(what: &str, m: &Measured, cap: &MemCap) -> String {
    let err = m.stderr();
    let shown: String = err.chars().take(600).collect();
    assert_eq!(
        cap.oom_kills(),
        0,
        "{what}: OOM-killed at the {} MiB cap: the bomb worked; stderr: {shown:?}",
        CAP >> 20
    );
    assert!(!m.timed_out, "{what}: did not finish within {TIMEOUT:?}");
    assert!(
        m.peak_rss_kib < PEAK_KIB,
        "{what}: peak RSS {} MiB (limit {} MiB); stderr: {shown:?}",
        m.peak_rss_kib >> 10,
        PEAK_KIB >> 10
    );
    assert_eq!(m.output.status.code(), Some(1), "{what}: exit {:?}; stderr: {shown:?}", m.output.status);
    assert!(err.len() < LINE, "{what}: {} bytes of error (at most {LINE}): {shown:?}…", err.len());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr: {shown:?}");
    assert!(clean(&err), "{what}: control characters reach the terminal: {shown:?}");
    assert!(lines[0].starts_with("skiff: error: "), "{what}: {shown:?}");
    assert!(!err.contains("panicked"), "{what}: {shown:?}");
    lines[0].to_string()
}

/// What the error must say for each bomb.
fn says(b: Bomb, line: &str) {
    let want: &[&str] = match b {
        Bomb::LongName => &["GNU long name", "134217729 bytes", "4096"],
        Bomb::LongLink => &["GNU long link name", "134217729 bytes", "4096"],
        Bomb::Pax => &["PAX header", "134217728 bytes", "1048576"],
        Bomb::PaxGlobal => &["PAX global header", "134217728 bytes", "1048576"],
        // The name, escaped and cut.
        Bomb::HostileName => &["\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{9b}31m\\u{202e}aaa", "…", "\"..\""],
    };
    for w in want {
        assert!(line.contains(w), "{b:?}: the error says {w:?}: {line}");
    }
}

fn cap() -> MemCap {
    MemCap::new(CAP).expect("a memory cgroup (v1 memory controller or cgroup2 memory)")
}

/// The store holds no image and no layer.
#[track_caller]
fn nothing_stored(root: &Path) {
    let images: Vec<_> = fs::read_dir(root.join("images")).into_iter().flatten().flatten().collect();
    assert!(images.is_empty(), "image records: {images:?}");
    let layers: Vec<_> = fs::read_dir(root.join("layers/sha256")).into_iter().flatten().flatten().collect();
    assert!(layers.is_empty(), "layers: {layers:?}");
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// Runs `check` for every bomb, then fails with every bomb that failed (not only the first).
fn each(bombs: &[Bomb], check: impl Fn(Bomb) + std::panic::RefUnwindSafe) {
    let failed: Vec<String> = bombs
        .iter()
        .filter_map(|&b| {
            std::panic::catch_unwind(|| check(b)).err().map(|e| {
                let msg =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                format!("{}: {}", b.name(), msg.unwrap_or_default())
            })
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} bombs failed:\n{}", failed.len(), bombs.len(), failed.join("\n"));
}

/// `skiff load` of an OCI archive whose one layer is a bomb.
#[test]
fn load_refuses_each_bomb_in_a_layer_in_bounded_memory() {
    skiff_tests::require_root();
    each(&BOMBS, |b| {
        let work = Scratch::new("bomb-load");
        let file = work.join("image.tar");
        archive(&layout(work.path(), b), &file);
        let root = work.join("root");
        let c = cap();
        let m = skiff(&c, &root, &["load", file.to_str().unwrap()]);
        let line = refused(&format!("load {}", b.name()), &m, &c);
        says(b, &line);
        nothing_stored(&root);
        eprintln!("load {}: peak RSS {} KiB: {line}", b.name(), m.peak_rss_kib);
    });
}

/// `skiff load` of an archive that is itself a bomb (the outer tar's own extension records).
#[test]
fn load_refuses_an_archive_with_bomb_records_in_bounded_memory() {
    skiff_tests::require_root();
    each(&[Bomb::LongName, Bomb::LongLink, Bomb::Pax, Bomb::PaxGlobal], |b| {
        let work = Scratch::new("bomb-archive");
        // The archive is the bomb layer itself: entries "ok", then the bomb (gzipped).
        let file = work.join("archive.tar.gz");
        fs::write(&file, &bomb_layer(b).0).unwrap();
        let root = work.join("root");
        let c = cap();
        let m = skiff(&c, &root, &["load", file.to_str().unwrap()]);
        let line = refused(&format!("load archive {}", b.name()), &m, &c);
        says(b, &line);
        nothing_stored(&root);
        eprintln!("load archive {}: peak RSS {} KiB: {line}", b.name(), m.peak_rss_kib);
    });
}

/// `skiff pull` of an image whose one layer is a bomb, from a real registry.
#[test]
fn pull_refuses_each_bomb_in_bounded_memory() {
    skiff_tests::require_root();
    each(&BOMBS, |b| {
        let image = pushed(b);
        let work = Scratch::new("bomb-pull");
        let root = work.join("root");
        let c = cap();
        let m = skiff(&c, &root, &["pull", "--quiet", &image]);
        let line = refused(&format!("pull {}", b.name()), &m, &c);
        says(b, &line);
        nothing_stored(&root);
        let partial: Vec<_> = fs::read_dir(root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("unpack-"))
            .collect();
        assert!(partial.is_empty(), "pull {}: partial unpacks left: {partial:?}", b.name());
        eprintln!("pull {}: peak RSS {} KiB: {line}", b.name(), m.peak_rss_kib);
    });
}

/// The agent's log, if it is small enough to read (a bomb that works logs gigabytes).
#[track_caller]
fn small_log(a: &Agent) -> String {
    let size: u64 = fs::read_dir(a.dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(size < 64 << 10, "the agent logged {size} bytes (a line per retry must stay short and rare)");
    a.log()
}

/// An agent whose services' images are the bombs: it stays small, `/v1/status` stays small
/// and escaped, and retrying the pulls does not grow its log.
#[test]
fn agent_service_with_bomb_images_stays_small_and_quiet() {
    skiff_tests::require_root();
    let images: Vec<(Bomb, String)> = BOMBS.iter().map(|&b| (b, pushed(b))).collect();
    let c = cap();
    let mut a = Agent::new(skiff_bin());
    a.wrap(c.wrap());
    let mut yaml = String::from("services:\n");
    for (b, image) in &images {
        yaml.push_str(&format!("  {}:\n    image: {image}\n", b.name()));
    }
    a.write_manifest(&yaml);
    a.start();
    let pid = a.pid();
    // Until every pull failed once: each replica's message is more than "pulling IMAGE".
    let failed_once = |st: &Value| {
        images.iter().all(|(b, image)| {
            replicas(st, b.name()).iter().any(|r| {
                r["message"].as_str().is_some_and(|m| m.len() > format!("pulling {image}").len())
                    || r["state"].as_str() != Some("pulling")
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let st = loop {
        assert_eq!(c.oom_kills(), 0, "the agent was OOM-killed at the {} MiB cap: the bombs worked", CAP >> 20);
        assert!(a.is_running(), "the agent exited");
        let st = a.get("/v1/status").ok().and_then(|r| serde_json::from_slice::<Value>(&r.body).ok());
        if let Some(st) = st.filter(|st| failed_once(st)) {
            break st;
        }
        assert!(Instant::now() < deadline, "the pulls did not fail within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut wrong = Vec::new();
    for (b, _) in &images {
        for r in replicas(&st, b.name()) {
            let msg = r["message"].as_str().unwrap_or_default();
            let shown: String = msg.chars().take(300).collect();
            if !(msg.len() < 1024 && clean(msg) && !msg.contains('\n')) {
                wrong.push(format!("{}: status message of {} bytes: {shown:?}", b.name(), msg.len()));
            } else if let Err(e) = std::panic::catch_unwind(|| says(*b, msg)) {
                wrong.push(format!("{}: {:?}", b.name(), e.downcast_ref::<String>()));
            }
        }
    }
    assert!(wrong.is_empty(), "status messages:\n{}", wrong.join("\n"));
    // The retries: wait for a second attempt of every pull (2 s back-off, then 4 s).
    skiff_tests::wait_until("second failed attempts", Duration::from_secs(120), || {
        small_log(&a).matches("failed again, same error (2 attempts").count() >= images.len()
    });
    std::thread::sleep(Duration::from_secs(5)); // a third attempt of some
    let body = a.get("/v1/status").expect("GET /v1/status").body;
    assert!(body.len() < 16 << 10, "/v1/status is {} bytes", body.len());
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains('\u{1b}') && !text.contains("\\u001b"), "raw escapes in /v1/status: {text}");
    let st: Value = serde_json::from_slice(&body).expect("status JSON");
    assert_eq!(st["services"].as_array().map(Vec::len), Some(images.len()), "{st}");

    let hwm = status_kib(pid, "VmHWM");
    let log = small_log(&a);
    assert!(clean(&log), "control characters in the agent's log:\n{}", log.chars().take(2000).collect::<String>());
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 1100, "a log line of {longest} bytes");
    // Each image: "pulling X", one full error line, then a short line at the 2nd, 4th, ...
    // failure: a few KiB in all, however long the agent retries.
    assert!(log.len() < 32 << 10, "the agent logged {} bytes:\n{}", log.len(), a.log_tail());
    assert!(hwm < PEAK_KIB, "the agent's peak RSS is {} MiB", hwm >> 10);
    assert_eq!(c.oom_kills(), 0, "the agent was OOM-killed at the cap");
    eprintln!("agent: VmHWM {hwm} KiB, /v1/status {} bytes, log {} bytes", body.len(), log.len());
    a.down();
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    skiff_tests::status_field(&s, key).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(u64::MAX)
}
