//! The pull pipeline against a scripted HTTP server on 127.0.0.1: the registry behaviours a
//! real registry does not show on demand (ignored Range, a wrong Content-Range, redirects to
//! another host, the bearer token flow, hostile manifests).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use skiff_images::auth::AuthConfig;
use skiff_images::pull::NoProgress;
use skiff_images::{Client, ClientOptions, Error, PullOptions, Reference, Store};

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: HashMap<String, String>,
}

impl Req {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(&n.to_ascii_lowercase()).map(String::as_str)
    }
}

#[derive(Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes (Content-Length still says all), then close.
    cut_after: Option<usize>,
}

fn resp(status: u16, body: Vec<u8>) -> Resp {
    Resp { status, body, ..Default::default() }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(handler: Arc<Handler>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, s) = (handler.clone(), seen2.clone());
                std::thread::spawn(move || serve(conn, &*h, &s));
            }
        });
        Server { port, seen, stop }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, h: &Handler, seen: &Mutex<Vec<Req>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Req { path, headers };
    seen.lock().unwrap().push(req.clone());
    let res = h(&req);
    let mut out = conn;
    let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", res.status, res.body.len());
    for (k, v) in &res.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let n = res.cut_after.unwrap_or(res.body.len()).min(res.body.len());
    let _ = out.write_all(&res.body[..n]);
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// A one-layer image: (manifest, config, layer blob), with the layer's file content.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
    content: Vec<u8>,
}

impl Image {
    fn new() -> Image {
        // 300 kB that gzip cannot shrink, so cuts land mid-stream.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let content: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "data.bin", &content[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"2001-02-03T04:05:06Z","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha(&tar)
        )
        .into_bytes();
        let manifest = Image::manifest_for(&config, &sha(&layer), layer.len());
        Image { manifest, config, layer, content }
    }

    fn manifest_for(config: &[u8], layer_digest: &str, layer_size: usize) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{layer_size}}}]}}"#,
            sha(config),
            config.len()
        )
        .into_bytes()
    }

    /// Answers manifest and config requests; None for the layer (and anything else).
    fn common(&self, req: &Req) -> Option<Resp> {
        if req.path.ends_with("/manifests/latest") || req.path.ends_with(&format!("/manifests/{}", sha(&self.manifest)))
        {
            let mut r = resp(200, self.manifest.clone());
            r.headers.push(("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()));
            return Some(r);
        }
        if req.path.ends_with(&format!("/blobs/{}", sha(&self.config))) {
            return Some(resp(200, self.config.clone()));
        }
        None
    }

    fn is_layer(&self, req: &Req) -> bool {
        let path = req.path.split('?').next().unwrap_or("");
        path.ends_with(&format!("/blobs/{}", sha(&self.layer)))
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    Env { _dir: dir, store }
}

fn pull(store: &Store, image: &str, auth: AuthConfig) -> Result<skiff_images::Pulled, Error> {
    let client = Arc::new(Client::new(ClientOptions { auth, ..Default::default() }).unwrap());
    let opts = PullOptions { backoff: Duration::from_millis(10), ..Default::default() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(skiff_images::pull(store, client, &Reference::parse(image).unwrap(), &opts, Arc::new(NoProgress)))
}

fn check_layer(store: &Store, p: &skiff_images::Pulled, img: &Image) {
    let layer = store.layer_path(&p.record.layers[0].diff_id);
    assert_eq!(std::fs::read(layer.join("data.bin")).unwrap(), img.content);
    assert!(store.has_blob(&p.record.layers[0].digest));
}

#[test]
fn range_ignored_falls_back_to_skipping() {
    let img = Arc::new(Image::new());
    let n = Arc::new(AtomicUsize::new(0));
    let (i2, n2) = (img.clone(), n.clone());
    let server = Server::start(Arc::new(move |req: &Req| {
        if let Some(r) = i2.common(req) {
            return r;
        }
        if i2.is_layer(req) {
            // The first answer is cut after 100 kB; every answer ignores Range (200, whole).
            let first = n2.fetch_add(1, Ordering::SeqCst) == 0;
            return Resp {
                status: 200,
                body: i2.layer.clone(),
                cut_after: first.then_some(100_000),
                ..Default::default()
            };
        }
        resp(404, vec![])
    }));
    let e = env();
    let p = pull(&e.store, &format!("{}/test/img:latest", server.host()), AuthConfig::default()).unwrap();
    check_layer(&e.store, &p, &img);
    let layer_gets: Vec<Req> = server.seen().into_iter().filter(|r| img.is_layer(r)).collect();
    assert_eq!(layer_gets.len(), 2);
    assert_eq!(layer_gets[1].header("range"), Some("bytes=100000-"));
}

#[test]
fn wrong_content_range_means_a_whole_download() {
    let img = Arc::new(Image::new());
    let n = Arc::new(AtomicUsize::new(0));
    let (i2, n2) = (img.clone(), n.clone());
    let server = Server::start(Arc::new(move |req: &Req| {
        if let Some(r) = i2.common(req) {
            return r;
        }
        if i2.is_layer(req) {
            let k = n2.fetch_add(1, Ordering::SeqCst);
            if k == 0 {
                return Resp { status: 200, body: i2.layer.clone(), cut_after: Some(50_000), ..Default::default() };
            }
            if req.header("range").is_some() {
                // A 206 that starts at the wrong offset.
                let total = i2.layer.len();
                let mut r = resp(206, i2.layer[10..].to_vec());
                r.headers.push(("Content-Range".into(), format!("bytes 10-{}/{total}", total - 1)));
                return r;
            }
            return resp(200, i2.layer.clone());
        }
        resp(404, vec![])
    }));
    let e = env();
    let p = pull(&e.store, &format!("{}/test/img:latest", server.host()), AuthConfig::default()).unwrap();
    check_layer(&e.store, &p, &img);
    let ranges: Vec<Option<String>> =
        server.seen().into_iter().filter(|r| img.is_layer(r)).map(|r| r.header("range").map(str::to_string)).collect();
    assert_eq!(ranges, vec![None, Some("bytes=50000-".to_string()), None]);
}

#[test]
fn bearer_tokens_and_redirects_keep_credentials_home() {
    let img = Arc::new(Image::new());
    // The "CDN": another origin (another port) the registry redirects blobs to.
    let i3 = img.clone();
    let cdn = Server::start(Arc::new(
        move |req: &Req| {
            if i3.is_layer(req) {
                resp(200, i3.layer.clone())
            } else {
                resp(404, vec![])
            }
        },
    ));
    let cdn_host = cdn.host();
    let port = Arc::new(Mutex::new(0u16));
    let (i2, p2) = (img.clone(), port.clone());
    let server = Server::start(Arc::new(move |req: &Req| {
        let me = format!("127.0.0.1:{}", *p2.lock().unwrap());
        if req.path.starts_with("/token?") {
            // Credentials from the auth file come to the token service as Basic.
            assert_eq!(req.header("authorization"), Some("Basic dXNlcjpwYXNz"));
            assert!(req.path.contains("scope=repository%3Atest%2Fimg%3Apull"), "{}", req.path);
            return resp(200, br#"{"token":"tok123","expires_in":300}"#.to_vec());
        }
        if req.header("authorization") != Some("Bearer tok123") {
            let mut r =
                resp(401, br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec());
            r.headers.push((
                "WWW-Authenticate".into(),
                format!(r#"Bearer realm="http://{me}/token",service="fake",scope="repository:test/img:pull""#),
            ));
            return r;
        }
        if let Some(r) = i2.common(req) {
            return r;
        }
        if i2.is_layer(req) {
            let mut r = resp(307, vec![]);
            r.headers.push(("Location".into(), format!("http://{cdn_host}{}?sig=secret", req.path)));
            return r;
        }
        resp(404, vec![])
    }));
    *port.lock().unwrap() = server.port;
    let auth = AuthConfig::parse(
        format!(r#"{{"auths":{{"{}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#, server.host()).as_bytes(),
        std::path::Path::new("auth.json"),
    )
    .unwrap();
    let e = env();
    let p = pull(&e.store, &format!("{}/test/img:latest", server.host()), auth).unwrap();
    check_layer(&e.store, &p, &img);
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen.len(), 1);
    assert_eq!(cdn_seen[0].header("authorization"), None, "no Authorization to another host");
    // One token for the repository, reused.
    assert_eq!(server.seen().iter().filter(|r| r.path.starts_with("/token?")).count(), 1);
}

#[test]
fn hostile_manifests_are_refused_before_any_path_is_used() {
    let img = Arc::new(Image::new());
    let bad = Image::manifest_for(&img.config, "sha256:../../../../../tmp/skiff-escape", 10);
    let i2 = img.clone();
    let server = Server::start(Arc::new(move |req: &Req| {
        if req.path.ends_with("/manifests/latest") {
            let mut r = resp(200, bad.clone());
            r.headers.push(("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()));
            return r;
        }
        if req.path.ends_with("/manifests/huge") {
            return resp(200, vec![b' '; 5 << 20]);
        }
        if req.path.ends_with("/manifests/lies") {
            // The layer is bigger than the manifest says.
            let mut r = resp(200, Image::manifest_for(&i2.config, &sha(&i2.layer), 1000));
            r.headers.push(("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()));
            return r;
        }
        if let Some(r) = i2.common(req) {
            return r;
        }
        if i2.is_layer(req) {
            return resp(200, i2.layer.clone());
        }
        resp(404, vec![])
    }));
    let e = env();
    let err = pull(&e.store, &format!("{}/test/img:latest", server.host()), AuthConfig::default()).unwrap_err();
    assert!(err.to_string().contains("invalid digest") && err.to_string().contains("skiff-escape"), "{err}");
    let err = pull(&e.store, &format!("{}/test/img:huge", server.host()), AuthConfig::default()).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = pull(&e.store, &format!("{}/test/img:lies", server.host()), AuthConfig::default()).unwrap_err();
    assert!(err.to_string().contains("more than the 1000 bytes"), "{err}");
    // A manifest whose digest is not the one asked for.
    let other = format!("sha256:{}", "0".repeat(64));
    let server2 = Server::start(Arc::new(move |req: &Req| {
        let mut r = resp(200, img.manifest.clone());
        r.headers.push(("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()));
        if req.path.contains("/manifests/") {
            r
        } else {
            resp(404, vec![])
        }
    }));
    let err = pull(&e.store, &format!("{}/test/img@{other}", server2.host()), AuthConfig::default()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(e.store.images().unwrap().0.is_empty());
    assert!(std::fs::read_dir(e.store.root().join("layers/sha256")).unwrap().next().is_none());
    assert!(!std::path::Path::new("/tmp/skiff-escape").exists());
}
