//! The corpus of compose files edge users write (agent/tests/corpus/, see its README):
//! every file passes `skiff validate` unchanged, with the warnings it must give; and the
//! files this machine can run are run by a real agent in a network namespace of the test's,
//! each image replaced by a busybox stand-in that does what the service does at the level
//! skiff sees (it listens on the service's ports, writes into its volumes as its user, and
//! answers its health check's URL): every service runs, the ones with a prompt health check
//! turn healthy, and every published TCP port answers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skiff::manifest::{self, HealthTest, Manifest, MountKind, Protocol};
use skiff_tests::agent::{all_running, service, Agent, WAIT};
use skiff_tests::netns::{http_get, TestNetns};
use skiff_tests::registry::{http_request, Registry, BUSYBOX_OCI};
use skiff_tests::skip;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// The warnings each file must get from `skiff validate` (a piece of each), and no others.
fn expected_warnings(file: &str) -> &'static [&'static str] {
    match file {
        "home-assistant.yaml" => &["the system bus", "privileged"],
        "balena-multicontainer.yaml" => &["privileged"],
        "monitoring.yaml" => &["binding `/proc`", "binding `/sys`"],
        "traefik.yaml" => &["no Docker API on a skiff box"],
        // A clone's files are 0644: the secrets' files should be root's alone.
        "nextcloud.yaml" => {
            &["db_root_password.txt is readable by every user", "db_password.txt is readable by every user"]
        }
        // No Zigbee stick on a test machine.
        "zigbee2mqtt.yaml" => &["/dev/ttyACM0 does not exist on this host now"],
        _ => &[],
    }
}

#[test]
fn every_file_of_the_corpus_validates_unchanged() {
    let files = files();
    assert!(files.len() >= 12, "the corpus: {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let out = Command::new(SKIFF).arg("validate").arg(f).env_remove("SKIFF_PROFILES").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            failures.push(format!("{name}: skiff validate failed:\n{err}"));
            continue;
        }
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
        let want = expected_warnings(&name);
        for w in want {
            if !warnings.iter().any(|l| l.contains(w)) {
                failures.push(format!("{name}: no warning with `{w}` in {warnings:#?}"));
            }
        }
        if warnings.len() != want.len() {
            failures.push(format!("{name}: {} warnings, want {}: {warnings:#?}", warnings.len(), want.len()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What a stand-in must do for one service.
#[derive(Default, Debug)]
struct StandIn {
    /// TCP ports to listen on (its ports' targets, and its health check's URLs').
    ports: Vec<u16>,
    /// Paths its health check asks for.
    paths: Vec<String>,
    /// Its volumes' targets.
    volumes: Vec<String>,
    /// The service gives no `user:`: the stand-in runs as root, as the real images do (the
    /// test image's own user is not root).
    root: bool,
}

/// The URLs in a health check: (port, path).
fn urls(test: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for part in test.split(['"', '\'', ' ']) {
        let Some(rest) = part.strip_prefix("http://") else { continue };
        let (host, path) = rest.split_once('/').map_or((rest, String::from("/")), |(h, p)| (h, format!("/{p}")));
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        out.push((port, path));
    }
    out
}

fn stand_ins(m: &Manifest) -> BTreeMap<String, StandIn> {
    let mut out = BTreeMap::new();
    for (name, s) in &m.services {
        let mut st = StandIn { root: s.user.is_none(), ..StandIn::default() };
        for p in &s.ports {
            if p.protocol == Protocol::Tcp {
                st.ports.extend(p.target.start..=p.target.end);
            }
        }
        let test = match s.healthcheck.as_ref().and_then(|h| h.test.as_ref()) {
            Some(HealthTest::Cmd(v)) => v.join(" "),
            Some(HealthTest::Shell(t)) => t.clone(),
            None => String::new(),
        };
        for (port, path) in urls(&test) {
            st.ports.push(port);
            st.paths.push(path);
        }
        st.ports.sort();
        st.ports.dedup();
        for mnt in &s.mounts {
            if matches!(mnt.kind, MountKind::Volume { .. } | MountKind::Anonymous) && !mnt.read_only {
                st.volumes.push(mnt.target.clone());
            }
        }
        out.insert(name.clone(), st);
    }
    out
}

/// The stand-in's shell script (for `sh -c`), `$` doubled for the manifest's interpolation.
fn script(st: &StandIn) -> String {
    let mut s = String::from("mkdir -p /tmp/www && echo standin > /tmp/www/index.html; ");
    for p in &st.paths {
        let file = if p.ends_with('/') { format!("/tmp/www{p}index.html") } else { format!("/tmp/www{p}") };
        s.push_str(&format!("mkdir -p \"$(dirname '{file}')\" && echo ok > '{file}'; "));
    }
    for port in &st.ports {
        s.push_str(&format!("httpd -p {port} -h /tmp/www; "));
    }
    for v in &st.volumes {
        s.push_str(&format!("touch '{v}/.standin' 2>/dev/null && echo wrote {v}; "));
    }
    s.push_str("exec sleep 1000000");
    s.replace('$', "$$")
}

/// The file with every service's image replaced by the stand-in and its entrypoint by the
/// stand-in's script (the service's command, if any, becomes the script's ignored arguments).
fn with_stand_ins(text: &str, m: &Manifest, image: &str) -> String {
    let stand_ins = stand_ins(m);
    let mut out = String::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line.starts_with("services:");
            current = None;
        } else if in_services && line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':') {
            current = Some(line.trim().trim_end_matches(':').to_string());
        }
        let trimmed = line.trim_start();
        if let (true, Some(svc), true) = (in_services, &current, trimmed.starts_with("image:")) {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}image: {image}\n"));
            if let Some(st) = stand_ins.get(svc) {
                out.push_str(&format!("{indent}entrypoint: [\"/bin/sh\", \"-c\", {:?}, \"standin\"]\n", script(st)));
                if st.root {
                    out.push_str(&format!("{indent}user: \"0\"\n"));
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Files that cannot run here, and why (each is still validated).
fn not_runnable(file: &str) -> Option<&'static str> {
    match file {
        "traefik.yaml" => Some("its Docker provider needs Docker's API socket"),
        "zigbee2mqtt.yaml" => Some("no /dev/ttyACM0 on this machine (the device is checked in its own test below)"),
        _ => None,
    }
}

fn status(ns: &TestNetns, a: &Agent) -> Value {
    let listen = a.listen();
    match ns.enter(move || http_request(&listen, "GET", "/v1/status", &[], b"")) {
        Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn wait(ns: &TestNetns, a: &Agent, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Result<Value, String> {
    let start = std::time::Instant::now();
    let mut st = Value::Null;
    while start.elapsed() < WAIT {
        st = status(ns, a);
        if st.is_object() && cond(&st) {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("timed out waiting for {what}; status:\n{st:#}\n{}", a.log_tail()))
}

/// Runs one file; an error says what did not happen.
fn run_one(file: &Path, image: &str) -> Result<(), String> {
    let report = manifest::load(file).map_err(|e| e.to_string())?;
    let m = report.manifest.ok_or("invalid")?;
    let text = std::fs::read_to_string(file).unwrap();
    let Some(ns) = TestNetns::new() else {
        skip("ip netns add failed");
        return Ok(());
    };
    let mut a = Agent::new(SKIFF);
    let pulled = a.skiff(&["pull", image]);
    if !pulled.success() {
        return Err(format!("pull: {pulled}"));
    }
    // Beside the manifest: the files it names (secrets).
    for f in ["db_password.txt", "db_root_password.txt"] {
        std::fs::copy(corpus().join(f), a.manifest_path().parent().unwrap().join(f)).unwrap();
    }
    a.write_manifest(&with_stand_ins(&text, &m, image));
    a.wrap(["nsenter".to_string(), ns.nsenter_arg()]).with_bridge();
    a.spawn(); // its endpoint is on the namespace's loopback: waited for below
    let result = (|| {
        let st = wait(&ns, &a, "every service running", |st| {
            m.services.iter().all(|(n, s)| all_running(st, n, s.replicas as usize))
        })?;
        // Prompt health checks pass (the others would take minutes: their first check
        // comes after their interval).
        let prompt: Vec<&String> = m
            .services
            .iter()
            .filter(|(_, s)| {
                s.healthcheck.as_ref().is_some_and(|h| h.test.is_some() && h.interval <= Duration::from_secs(30))
            })
            .map(|(n, _)| n)
            .collect();
        wait(&ns, &a, "prompt health checks passing", |st| {
            prompt.iter().all(|n| {
                service(st, n)["replicas"].as_array().is_some_and(|rs| rs.iter().all(|r| r["health"] == "healthy"))
            })
        })?;
        // Every published TCP port answers (on the agent's loopback, in the namespace).
        for (name, s) in &m.services {
            for p in s.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
                let Some(published) = p.published else { continue };
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, published.start));
                // Its rules come in right after the replica runs; a few tries.
                let mut answer = Err(String::new());
                for _ in 0..50 {
                    answer = ns.enter(move || http_get(addr));
                    if answer.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Err(e) = answer {
                    return Err(format!("{name}: port {addr}: {e}\n{st:#}"));
                }
            }
        }
        Ok(())
    })();
    a.down();
    result
}

#[test]
fn the_runnable_files_run_with_stand_in_images() {
    for tool in ["ip", "nsenter", "nft"] {
        if skiff_tests::which(tool).is_none() {
            skip(&format!("{tool} is not installed"));
            return;
        }
    }
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in files() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if let Some(why) = not_runnable(&name) {
            eprintln!("{name}: not run: {why}");
            continue;
        }
        eprintln!("{name}: running");
        ran += 1;
        if let Err(e) = run_one(&f, &image) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(ran >= 10, "ran {ran}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn stand_in_scripts_listen_where_the_service_does() {
    let m = manifest::parse_str(
        "services:\n  a:\n    image: x\n    ports: [\"8080:80\", \"53:53/udp\"]\n    volumes: [d:/data]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"wget -q -O /dev/null http://localhost:9090/-/healthy || exit 1\"]\nvolumes:\n  d: {}\n",
        Path::new("/"),
    )
    .manifest
    .unwrap();
    let st = &stand_ins(&m)["a"];
    assert_eq!(st.ports, [80, 9090]);
    assert_eq!(st.paths, ["/-/healthy"]);
    assert_eq!(st.volumes, ["/data"]);
    let t = with_stand_ins("services:\n  a:\n    image: x\n    ports: [\"8080:80\"]\n", &m, "IMG");
    assert!(t.contains("    image: IMG\n    entrypoint: [\"/bin/sh\", \"-c\", \"mkdir"), "{t}");
}
