//! Registry fixtures for the image tests: a real registry with the test images, and a
//! fault-injecting proxy in front of it.
//!
//! * [`Registry`] runs Debian's `docker-registry` (distribution 2.8) on a free
//!   `127.0.0.1` port with its own config and storage in a scratch directory, optionally
//!   behind htpasswd basic auth ([`Registry::with_basic_auth`]). It starts holding the
//!   test images of `hack/build-test-images` ([`BUSYBOX_OCI`], [`BUSYBOX_DOCKER`],
//!   [`LAYERS`], [`MULTIARCH`], [`MULTIARCH_DOCKER`]; see that script for what is in
//!   them), or nothing ([`Registry::empty`]). Dropping it (also while a test panics) kills
//!   the registry process it started and removes its directory; a registry also dies with
//!   the test process (`PR_SET_PDEATHSIG`).
//! * The test images are built once per test process ([`test_images`], an OCI layout) and
//!   pushed once with skopeo to a template registry whose storage every later registry
//!   starts from (a copy: a few milliseconds instead of a push per registry).
//! * [`FaultProxy`] listens on its own `127.0.0.1` port and forwards to a registry. It can
//!   cut, stall or corrupt the bodies of blob responses, or answer requests with an error
//!   status, on the first N matching requests ([`Fault`]), and it records every request
//!   it saw ([`Seen`]: method, path, Range header, status, bytes forwarded).
//! * [`http_request`] is a tiny HTTP/1.1 client for checks on the registry itself.
//!
//! Nothing here leaves 127.0.0.1.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{base_dir, copy_tree, host, require_root, run_command, Out, Scratch, TIMEOUT};

/// OCI manifest, single busybox layer; config with Entrypoint, Cmd, Env, User "app",
/// WorkingDir "/srv", ExposedPorts, Volumes {"/data"}, StopSignal SIGINT, Labels.
pub const BUSYBOX_OCI: &str = "skiff-test/busybox:oci";
/// [`BUSYBOX_OCI`] as a Docker schema2 manifest (same layer blob, Docker media types).
pub const BUSYBOX_DOCKER: &str = "skiff-test/busybox:docker";
/// OCI, 5 layers: busybox, /fixtures, whiteouts + mode change + file<->dir, opaque dir,
/// a file re-created over its whiteout. Hardlink and symlinks in layer 2.
pub const LAYERS: &str = "skiff-test/layers:latest";
/// OCI image index: linux/amd64 (= [`BUSYBOX_OCI`]'s manifest), linux/arm64 and
/// linux/arm/v7 (one layer each with `/arch` = "arm64\n" / "arm/v7\n").
pub const MULTIARCH: &str = "skiff-test/multiarch:latest";
/// [`MULTIARCH`] as a Docker manifest list of schema2 manifests.
pub const MULTIARCH_DOCKER: &str = "skiff-test/multiarch:docker";
/// Every test image, as `repository:tag`.
pub const TEST_IMAGES: [&str; 5] = [BUSYBOX_OCI, BUSYBOX_DOCKER, LAYERS, MULTIARCH, MULTIARCH_DOCKER];

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An Accept header for manifests of every kind. distribution 2.8 answers 404
/// MANIFEST_UNKNOWN for an OCI manifest or index unless Accept names its media type.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The registry server binary (Debian package docker-registry).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn hack(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack").join(script)
}

/// The OCI image layout with the test images (tags `busybox-oci`, `layers`, `multiarch`,
/// `multiarch-arm64`, `multiarch-armv7`), built by `hack/build-test-images` once per
/// test process.
pub fn test_images() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        require_root();
        let dir = base_dir().join("test-images");
        let script = hack("build-test-images");
        let mut cmd = Command::new(&script);
        cmd.arg("--quiet").arg(&dir).stdin(Stdio::null());
        let desc = format!("{} --quiet {}", script.display(), dir.display());
        run_command(cmd, desc, &io_dir(), TIMEOUT).ok();
        assert!(dir.join("index.json").is_file(), "hack/build-test-images made no layout in {}", dir.display());
        dir
    })
}

/// Storage of a registry holding the pushed test images, made once per test process.
fn template_storage() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let layout = test_images();
        let mut reg = Registry::builder().images(false).start();
        let script = hack("build-test-images");
        let mut cmd = Command::new(&script);
        cmd.args(["--quiet", "--no-build", "--push", &reg.host()]).arg(layout).stdin(Stdio::null());
        let desc = format!("{} --no-build --push {} {}", script.display(), reg.host(), layout.display());
        let out = run_command(cmd, desc, &io_dir(), TIMEOUT);
        assert!(out.success(), "pushing the test images failed:\n{out}\n--- registry log ---\n{}", reg.log());
        reg.stop();
        let t = base_dir().join("registry-template");
        copy_tree(&reg.storage(), &t);
        t
    })
}

/// A containers-policy.json that accepts anything, for `skopeo --policy` (so that no
/// system or user policy file matters).
pub fn skopeo_policy() -> &'static Path {
    static POLICY: OnceLock<PathBuf> = OnceLock::new();
    POLICY.get_or_init(|| {
        let p = base_dir().join("skopeo-policy.json");
        fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        p
    })
}

fn io_dir() -> PathBuf {
    let d = base_dir().join("registry-io");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Spawns `cmd` from a thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG` = SIGKILL: the child dies with the test process, even when that is
/// killed, but not when the test thread that asked for it ends.
fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    type Req = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("skiff-tests-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().unwrap().send((cmd, reply_tx)).expect("spawner thread is gone");
    reply_rx.recv().expect("spawner thread is gone")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

/// How to start a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    auth: Option<(String, String)>,
    images: bool,
}

impl RegistryBuilder {
    /// htpasswd (bcrypt) basic auth with this one user.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// Whether the registry starts with the test images (default true).
    pub fn images(mut self, yes: bool) -> Self {
        self.images = yes;
        self
    }

    pub fn start(self) -> Registry {
        Registry::start_with(self)
    }
}

/// A running docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: Scratch,
    auth: Option<(String, String)>,
}

impl Registry {
    /// A registry holding the test images, no auth.
    pub fn start() -> Registry {
        Registry::builder().start()
    }

    /// A registry with no images, no auth.
    pub fn empty() -> Registry {
        Registry::builder().images(false).start()
    }

    /// A registry holding the test images behind htpasswd basic auth.
    pub fn with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::builder().basic_auth(user, password).start()
    }

    pub fn builder() -> RegistryBuilder {
        RegistryBuilder { auth: None, images: true }
    }

    /// One registry with the test images, shared by the tests of this process: for tests
    /// that only read from it (pulls). It lives until the process exits.
    pub fn shared() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(Registry::start)
    }

    fn start_with(b: RegistryBuilder) -> Registry {
        require_root();
        assert!(Path::new(REGISTRY_BIN).is_file(), "{REGISTRY_BIN} not found: install docker-registry (hack/setup)");
        let template = if b.images { Some(template_storage()) } else { None };
        let mut dir = Scratch::new(&format!("registry-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let storage = dir.join("storage");
        match template {
            Some(t) => copy_tree(t, &storage),
            None => fs::create_dir_all(&storage).unwrap(),
        }
        let auth_yaml = match &b.auth {
            None => String::new(),
            Some((user, pass)) => {
                let out = host(&["htpasswd", "-Bbn", user, pass]);
                assert!(out.success(), "htpasswd failed (install apache2-utils: hack/setup):\n{out}");
                let htpasswd = dir.join("htpasswd");
                fs::write(&htpasswd, out.stdout.trim_end().to_string() + "\n").unwrap();
                format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", htpasswd.display())
            }
        };
        let config = dir.join("config.yml");
        let log = dir.join("registry.log");
        let mut last_err = String::new();
        // The port is free when picked, but another process may take it before the
        // registry binds it: then try another.
        for _ in 0..5 {
            let port = free_port();
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  formatter: text\n\
                     storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: skiff-test-{port}\n\
                     health:\n  storagedriver:\n    enabled: false\n\
                     {auth_yaml}",
                    storage = storage.display()
                ),
            )
            .unwrap();
            let log_file = fs::File::create(&log).unwrap();
            let mut cmd = Command::new(REGISTRY_BIN);
            // The registry reads REGISTRY_* variables as config overrides (REGISTRY_AUTH_FILE
            // would be taken for `auth: file:`): give it a clean environment.
            cmd.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .arg("serve")
                .arg(&config)
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file);
            let child = spawn_owned(cmd).unwrap_or_else(|e| panic!("spawn {REGISTRY_BIN}: {e}"));
            let mut reg = Registry { child: Some(child), port, dir, auth: b.auth.clone() };
            match reg.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return reg,
                Err(e) => {
                    reg.stop();
                    last_err = format!("{e}\n--- registry log ---\n{}", reg.log());
                    if !last_err.contains("address already in use") {
                        break;
                    }
                    // Take the directory back for the next try (Registry has a Drop).
                    dir = std::mem::replace(&mut reg.dir, Scratch::new("registry-unused"));
                }
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!("docker-registry exited: {st}"));
                }
            }
            // Any answer from a registry will do (401 when auth is on). Should another
            // server have taken the port meanwhile, ours exits ("address already in use").
            if let Ok(r) = http_request(&self.host(), "GET", "/v2/", &[], b"") {
                if r.header("docker-distribution-api-version") == Some("registry/2.0") {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                return Err(format!("docker-registry did not answer GET /v2/ within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the registry process (ours: its pid cannot be reused before we reap it).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An image reference on this registry, e.g. `image(BUSYBOX_OCI)` =
    /// `127.0.0.1:PORT/skiff-test/busybox:oci`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// The basic-auth user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// pid of the docker-registry process (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The registry's scratch directory (config.yml, registry.log, htpasswd, storage/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The filesystem storage root (`docker/registry/v2/blobs/...`): tests may corrupt it.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        crate::read(self.dir.join("registry.log"))
    }

    /// An `Authorization` header value for the credentials, if any.
    pub fn authorization(&self) -> Option<String> {
        self.credentials().map(|(u, p)| basic_auth(u, p))
    }

    /// A request to this registry (with its credentials, if any).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let auth = self.authorization();
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        http_request(&self.host(), method, path, &h, b"")
            .unwrap_or_else(|e| panic!("{method} {} {path}: {e}", self.host()))
    }

    /// `GET /v2/<repo>/manifests/<reference>` with [`ACCEPT_MANIFESTS`]: the manifest
    /// bytes, its media type (Content-Type) and digest (Docker-Content-Digest).
    #[track_caller]
    pub fn manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String, String) {
        let r = self.request("GET", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", ACCEPT_MANIFESTS)]);
        assert_eq!(r.status, 200, "GET manifest {repo}:{reference}: {r}");
        let ct = r.header("content-type").unwrap_or_default().to_string();
        let digest = r.header("docker-content-digest").unwrap_or_default().to_string();
        (r.body, ct, digest)
    }

    /// `skopeo copy` to this registry (plain HTTP, the registry's credentials), e.g.
    /// `push("oci:/path/layout:tag", "mine/image:1", &["--format", "oci"])`.
    pub fn push(&self, source: &str, dest: &str, extra: &[&str]) -> Out {
        let mut args = vec![
            "skopeo".to_string(),
            "--policy".into(),
            skopeo_policy().display().to_string(),
            "copy".into(),
            "--quiet".into(),
            "--dest-tls-verify=false".into(),
        ];
        if let Some((u, p)) = self.credentials() {
            args.push("--dest-creds".into());
            args.push(format!("{u}:{p}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(source.to_string());
        args.push(format!("docker://{}", self.image(dest)));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        host(&a)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // self.dir (a Scratch) removes the directory.
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("host", &self.host()).field("pid", &self.pid()).finish()
    }
}

/// `Basic base64(user:password)`
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// A response read by [`http_request`].
#[derive(Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        let body = self.text();
        write!(f, "\n{}", if body.len() > 2000 { &body[..2000] } else { &body })
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One HTTP/1.1 request to `host` (`127.0.0.1:PORT`) with `Connection: close`; reads the
/// whole response (10 s timeouts).
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let head = read_head(&mut r)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = parse_status(&head.first)?;
    let mut raw = Vec::new();
    if method != "HEAD" {
        r.read_to_end(&mut raw)?;
    }
    let body = if is_chunked(&head.headers) { dechunk(&raw)? } else { raw };
    Ok(HttpResponse { status, headers: head.headers, body })
}

fn parse_status(first: &str) -> io::Result<u16> {
    first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {first:?}")))
}

fn dechunk(mut raw: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked body");
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let line = std::str::from_utf8(&raw[..eol]).map_err(|_| bad())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad())?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 message heads
// ---------------------------------------------------------------------------------------

struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// Reads a request or response head (start line and headers). None on EOF before any
/// byte (a client that closed an idle connection).
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut first = String::new();
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        total += n;
        if n == 0 {
            if first.is_empty() && headers.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside an HTTP head"));
        }
        if total > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head over 64 KiB"));
        }
        let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
        if first.is_empty() {
            if line.is_empty() {
                continue; // tolerated before a request line (RFC 9112 2.2)
            }
            first = line;
        } else if line.is_empty() {
            return Ok(Some(Head { first, headers }));
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn write_head(w: &mut impl Write, first: &str, headers: &[(String, String)]) -> io::Result<()> {
    let mut s = format!("{first}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    w.write_all(s.as_bytes())
}

/// Headers minus the hop-by-hop connection management ones, plus `Connection: close`.
fn close_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            !["connection", "keep-alive", "proxy-connection", "expect"].iter().any(|n| k.eq_ignore_ascii_case(n))
        })
        .cloned()
        .collect();
    h.push(("Connection".into(), "close".into()));
    h
}

/// Copies exactly `n` bytes.
fn copy_exact(r: &mut impl Read, w: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied != n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than announced"));
    }
    Ok(())
}

/// Copies a request body as it is framed (Content-Length or chunked), framing included.
fn copy_request_body(r: &mut impl BufRead, w: &mut impl Write, headers: &[(String, String)]) -> io::Result<()> {
    if is_chunked(headers) {
        loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in a chunked body"));
            }
            w.write_all(&line)?;
            let text = String::from_utf8_lossy(&line);
            let size = u64::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t)? == 0 {
                        return Ok(());
                    }
                    w.write_all(&t)?;
                    if t == b"\r\n" || t == b"\n" {
                        return Ok(());
                    }
                }
            }
            copy_exact(r, w, size + 2)?;
        }
    } else if let Some(n) = header(headers, "content-length") {
        let n: u64 = n.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        copy_exact(r, w, n)
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// FaultProxy
// ---------------------------------------------------------------------------------------

/// Which requests a [`Fault`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `GET /v2/<name>/blobs/<digest>` (any digest, or only this one).
    BlobGet(Option<String>),
    /// `GET /v2/<name>/manifests/<reference>` (any reference).
    ManifestGet,
    /// Any request whose path (with query) contains this text.
    PathContains(String),
}

/// What a [`Fault`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward the response head and this many bytes of body (raw bytes after the head),
    /// then close the client connection: the client sees a short body.
    CutAfter(u64),
    /// Forward this many bytes of body, then send nothing for the duration (or until the
    /// proxy is dropped), then close: for read-timeout tests.
    StallAfter(u64, Duration),
    /// Flip (xor 0xff) the body byte at this offset: the content no longer matches its digest.
    CorruptAt(u64),
    /// Answer with this status and a registry-style JSON error, without asking upstream.
    Status(u16),
    /// Answer with this, without asking upstream (a hostile registry: error bodies with
    /// terminal escapes, huge bodies, odd `WWW-Authenticate` headers).
    Answer(Answer),
}

/// A whole response of [`Action::Answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Extra header lines (names and values as bytes go on the wire: any byte but CR/LF).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, sent `repeat` times (so a huge body costs the proxy no memory).
    pub body: Vec<u8>,
    pub repeat: u64,
    /// Send `Content-Length` (else the body ends when the connection closes).
    pub length: bool,
}

impl Answer {
    /// `status` with `body` once, with its length.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer { status, headers: Vec::new(), body: body.into(), repeat: 1, length: true }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn repeat(mut self, n: u64) -> Answer {
        self.repeat = n;
        self
    }

    /// No `Content-Length`: the body runs to the end of the connection.
    pub fn without_length(mut self) -> Answer {
        self.length = false;
        self
    }
}

/// A fault the proxy injects into the next `times` requests that match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub matches: Match,
    pub action: Action,
    pub times: usize,
}

impl Fault {
    /// Cut blob GET responses after `after` bytes of body.
    pub fn cut_blobs(after: u64) -> Fault {
        Fault { matches: Match::BlobGet(None), action: Action::CutAfter(after), times: 1 }
    }

    pub fn new(matches: Match, action: Action) -> Fault {
        Fault { matches, action, times: 1 }
    }

    /// Only for the blob with this digest (`sha256:...`).
    pub fn digest(mut self, digest: &str) -> Fault {
        self.matches = Match::BlobGet(Some(digest.to_string()));
        self
    }

    /// Applies to the first `n` matching requests (default 1).
    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }
}

/// A request the proxy saw, and what became of it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The Range header, if any.
    pub range: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The response status sent to the client (None when the exchange failed before).
    pub status: Option<u16>,
    /// Body bytes (raw, after the head) sent to the client.
    pub body_bytes: u64,
    /// The fault injected, if any.
    pub fault: Option<Action>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && blob_digest(&self.path).is_some()
    }
}

fn blob_digest(path: &str) -> Option<&str> {
    let p = path.split('?').next().unwrap_or("");
    let (_, d) = p.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
    (d.contains(':') && !d.contains('/')).then_some(d)
}

fn is_manifest_get(method: &str, path: &str) -> bool {
    method == "GET" && path.strip_prefix("/v2/").is_some_and(|p| p.contains("/manifests/"))
}

impl Match {
    fn matches(&self, method: &str, path: &str) -> bool {
        match self {
            Match::BlobGet(d) => method == "GET" && blob_digest(path).is_some_and(|b| d.as_deref().unwrap_or(b) == b),
            Match::ManifestGet => is_manifest_get(method, path),
            Match::PathContains(s) => path.contains(s.as_str()),
        }
    }
}

struct ProxyState {
    upstream: String,
    faults: Mutex<Vec<Fault>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Live connections (client side, upstream side), to shut down on drop.
    conns: Mutex<HashMap<usize, Vec<TcpStream>>>,
    next_conn: AtomicUsize,
}

/// A TCP proxy on 127.0.0.1 in front of a registry that injects faults (see [`Fault`])
/// and records the requests it forwards (see [`Seen`]). One request per client
/// connection: it forwards with `Connection: close` and tells the client so, which every
/// HTTP/1.1 client honours by reconnecting. Request and response heads are forwarded
/// unchanged otherwise (Host included, so the registry's upload Locations point back at
/// the proxy). Dropping it closes every connection and joins its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`HOST:PORT`, on 127.0.0.1).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_string(),
            faults: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicUsize::new(0),
        });
        let handlers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (st, hs) = (state.clone(), handlers.clone());
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let st2 = st.clone();
                    let h = std::thread::Builder::new()
                        .name("fault-proxy-conn".into())
                        .spawn(move || handle_conn(&st2, conn))
                        .expect("spawn a proxy thread");
                    let mut hs = hs.lock().unwrap();
                    hs.retain(|h| !h.is_finished());
                    hs.push(h);
                }
            })
            .expect("spawn the proxy thread");
        FaultProxy { addr, state, accept: Some(accept), handlers }
    }

    /// A proxy in front of `registry`.
    pub fn to(registry: &Registry) -> FaultProxy {
        FaultProxy::start(&registry.host())
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An image reference through the proxy, e.g. `127.0.0.1:PORT/skiff-test/busybox:oci`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Adds a fault (faults are tried in the order they were added; the first that
    /// matches a request and has times left applies, once).
    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push(fault);
    }

    /// Cuts the next `times` blob GET responses after `after` bytes of body.
    pub fn cut_blobs(&self, after: u64, times: usize) {
        self.inject(Fault::cut_blobs(after).times(times));
    }

    /// Answers the next `times` requests whose path contains `path_part` with `status`.
    pub fn fail_requests(&self, path_part: &str, status: u16, times: usize) {
        self.inject(Fault::new(Match::PathContains(path_part.into()), Action::Status(status)).times(times));
    }

    /// Faults with times left.
    pub fn faults_left(&self) -> Vec<Fault> {
        self.state.faults.lock().unwrap().iter().filter(|f| f.times > 0).cloned().collect()
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The blob GETs seen so far.
    pub fn blob_gets(&self) -> Vec<Seen> {
        self.requests().into_iter().filter(Seen::is_blob_get).collect()
    }

    pub fn clear_requests(&self) {
        self.state.seen.lock().unwrap().clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes up accept()
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for s in self.state.conns.lock().unwrap().values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handlers = std::mem::take(&mut *self.handlers.lock().unwrap());
        for h in handlers {
            let _ = h.join();
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).field("upstream", &self.state.upstream).finish()
    }
}

fn handle_conn(st: &ProxyState, client: TcpStream) {
    if st.stop.load(Ordering::SeqCst) {
        return;
    }
    let id = st.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(c) = client.try_clone() {
        st.conns.lock().unwrap().insert(id, vec![c]);
    }
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = proxy_one(st, id, &client);
    let _ = client.shutdown(Shutdown::Both);
    st.conns.lock().unwrap().remove(&id);
}

/// Forwards one request and its response (or injects a fault).
fn proxy_one(st: &ProxyState, id: usize, client: &TcpStream) -> io::Result<()> {
    let mut cr = BufReader::new(client.try_clone()?);
    let mut cw = client.try_clone()?;
    // Clients that were told tls-verify=false try TLS first (skopeo, containers/image):
    // answer a TLS handshake (record type 0x16) the way Go's HTTP server does, so they
    // fall back to plain HTTP at once instead of waiting for a ServerHello.
    if cr.fill_buf()?.first() == Some(&0x16) {
        let msg = "Client sent an HTTP request to an HTTPS server.\n";
        cw.write_all(format!("HTTP/1.0 400 Bad Request\r\n\r\n{msg}").as_bytes())?;
        return Ok(());
    }
    let Some(req) = read_head(&mut cr)? else { return Ok(()) };
    let mut parts = req.first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();

    let fault = {
        let mut faults = st.faults.lock().unwrap();
        faults.iter_mut().find(|f| f.times > 0 && f.matches.matches(&method, &path)).map(|f| {
            f.times -= 1;
            f.action.clone()
        })
    };
    let idx = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: header(&req.headers, "range").map(str::to_string),
            headers: req.headers.clone(),
            fault: fault.clone(),
            ..Seen::default()
        });
        seen.len() - 1
    };
    let set = |f: &dyn Fn(&mut Seen)| {
        if let Some(s) = st.seen.lock().unwrap().get_mut(idx) {
            f(s)
        }
    };

    if let Some(Action::Answer(a)) = &fault {
        if !header(&req.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            copy_request_body(&mut cr, &mut io::sink(), &req.headers)?;
        }
        let mut head = format!("HTTP/1.1 {} {}\r\n", a.status, reason(a.status)).into_bytes();
        for (k, v) in &a.headers {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        let total = a.body.len() as u64 * a.repeat;
        if a.length {
            head.extend_from_slice(format!("Content-Length: {total}\r\n").as_bytes());
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        set(&|s| s.status = Some(a.status));
        cw.write_all(&head)?;
        if method != "HEAD" {
            let mut w = io::BufWriter::with_capacity(64 * 1024, &mut cw);
            for i in 0..a.repeat {
                // A client that stopped reading ends it (the write fails).
                w.write_all(&a.body)?;
                set(&|s| s.body_bytes = (i + 1) * a.body.len() as u64);
            }
            w.flush()?;
        }
        return Ok(());
    }

    if let Some(Action::Status(code)) = fault {
        // Read the request body (closing with unread data would reset the connection),
        // unless the client waits for a 100 Continue: it gets the final answer instead.
        if !header(&req.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            copy_request_body(&mut cr, &mut io::sink(), &req.headers)?;
        }
        let body = format!(
            r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected by FaultProxy: status {code}","detail":null}}]}}"#
        );
        let head = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
             Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n",
            reason(code),
            body.len()
        );
        set(&|s| {
            s.status = Some(code);
            s.body_bytes = if method == "HEAD" { 0 } else { body.len() as u64 };
        });
        cw.write_all(head.as_bytes())?;
        if method != "HEAD" {
            cw.write_all(body.as_bytes())?;
        }
        return Ok(());
    }

    let upstream = TcpStream::connect(&st.upstream)?;
    if let Ok(u) = upstream.try_clone() {
        if let Some(v) = st.conns.lock().unwrap().get_mut(&id) {
            v.push(u);
        }
    }
    let mut uw = upstream.try_clone()?;
    let mut ur = BufReader::new(upstream);

    // The proxy reads the request body itself, so it answers an Expect itself.
    if header(&req.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        cw.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut out = io::BufWriter::new(&mut uw);
    write_head(&mut out, &req.first, &close_headers(&req.headers))?;
    copy_request_body(&mut cr, &mut out, &req.headers)?;
    out.flush()?;
    drop(out);

    let resp = read_head(&mut ur)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed without an answer"))?;
    let status = parse_status(&resp.first)?;
    // The record is updated before the client gets what it records: once a client has
    // its answer, a test may look at what the proxy saw.
    set(&|s| s.status = Some(status));
    write_head(&mut cw, &resp.first, &close_headers(&resp.headers))?;

    // The upstream closes after the body (Connection: close): copy until EOF, applying the fault.
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let limit = match fault {
        Some(Action::CutAfter(n)) | Some(Action::StallAfter(n, _)) => Some(n),
        _ => None,
    };
    loop {
        let want = match limit {
            Some(n) if sent >= n => break,
            Some(n) => buf.len().min((n - sent) as usize),
            None => buf.len(),
        };
        let got = match ur.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(Action::CorruptAt(at)) = fault {
            if at >= sent && at < sent + got as u64 {
                buf[(at - sent) as usize] ^= 0xff;
            }
        }
        set(&|s| s.body_bytes = sent + got as u64);
        if let Err(e) = cw.write_all(&buf[..got]) {
            set(&|s| s.body_bytes = sent);
            return Err(e);
        }
        sent += got as u64;
    }
    cw.flush()?;
    if let Some(Action::StallAfter(_, d)) = fault {
        let until = Instant::now() + d;
        while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}
