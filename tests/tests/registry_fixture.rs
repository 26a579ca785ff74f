//! The registry fixtures work with real tools: skopeo sees every test image with the
//! manifest types it should have, umoci unpacks the layered image to the documented tree,
//! basic auth refuses strangers, and the FaultProxy cuts, fails, records and forwards.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use skiff_tests::registry::*;
use skiff_tests::*;

fn skopeo_raw(registry_host: &str, image: &str, extra: &[&str]) -> Value {
    let reference = format!("docker://{registry_host}/{image}");
    let mut args = vec!["skopeo", "inspect", "--raw", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&reference);
    let out = host(&args).ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn platforms(index: &Value) -> Vec<String> {
    let mut p: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!("{}/{}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap());
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    p.sort();
    p
}

#[test]
fn test_images_have_the_expected_manifest_types() {
    let reg = Registry::start();
    let h = reg.host();

    // skiff-test/busybox:oci: an OCI manifest (umoci leaves out the optional mediaType
    // field; the registry's Content-Type says what it is).
    let oci = skopeo_raw(&h, BUSYBOX_OCI, &[]);
    assert_eq!(oci["schemaVersion"], 2);
    assert_eq!(oci["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layers = oci["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{oci}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let busybox_layer = layers[0]["digest"].as_str().unwrap().to_string();
    let (_, ct, oci_digest) = reg.manifest("skiff-test/busybox", "oci");
    assert_eq!(ct, OCI_MANIFEST);
    assert!(oci_digest.starts_with("sha256:"), "{oci_digest}");

    // The image config, as a pull will turn it into a bundle.
    let out =
        host(&["skopeo", "inspect", "--config", "--tls-verify=false", &format!("docker://{}", reg.image(BUSYBOX_OCI))])
            .ok();
    let config: Value = serde_json::from_str(&out.stdout).unwrap();
    let c = &config["config"];
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["Entrypoint"], json!(["/entrypoint.sh"]));
    assert_eq!(c["Cmd"], json!(["echo", "hello from skiff-test"]));
    assert_eq!(c["StopSignal"], "SIGINT");
    assert!(c["Volumes"]["/data"].is_object(), "{c}");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object() && c["ExposedPorts"]["9090/udp"].is_object(), "{c}");
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for e in ["FOO=bar", "GREETING=hello world", "EMPTY="] {
        assert!(env.contains(&e), "{e} missing from {env:?}");
    }
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");

    // skiff-test/busybox:docker: the same image as Docker schema2, the same layer blob.
    let docker = skopeo_raw(&h, BUSYBOX_DOCKER, &[]);
    assert_eq!(docker["mediaType"], DOCKER_MANIFEST);
    assert_eq!(docker["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");
    assert_eq!(docker["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_eq!(docker["layers"][0]["digest"], busybox_layer.as_str());
    let out = host(&[
        "skopeo",
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{}", reg.image(BUSYBOX_DOCKER)),
    ])
    .ok();
    let dconfig: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(dconfig["config"]["User"], "app");
    assert_eq!(dconfig["config"]["StopSignal"], "SIGINT");
    assert_eq!(reg.manifest("skiff-test/busybox", "docker").1, DOCKER_MANIFEST);

    // skiff-test/layers:latest: OCI, 5 layers on top of the busybox layer.
    let l = skopeo_raw(&h, LAYERS, &[]);
    let ll = l["layers"].as_array().unwrap();
    assert_eq!(ll.len(), 5, "{l}");
    assert_eq!(ll[0]["digest"], busybox_layer.as_str());
    assert_eq!(reg.manifest("skiff-test/layers", "latest").1, OCI_MANIFEST);

    // skiff-test/multiarch:latest: an OCI index of three platforms; amd64 is busybox:oci.
    let idx = skopeo_raw(&h, MULTIARCH, &[]);
    assert_eq!(idx["mediaType"], OCI_INDEX);
    assert_eq!(platforms(&idx), ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
    let amd64 = idx["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "amd64");
    assert_eq!(amd64.unwrap()["digest"], oci_digest.as_str());
    assert_eq!(reg.manifest("skiff-test/multiarch", "latest").1, OCI_INDEX);
    // skopeo picks arm/v7 when asked to, and that image's config says so.
    let out = host(&[
        "skopeo",
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        "arm",
        "--override-variant",
        "v7",
        &format!("docker://{}", reg.image(MULTIARCH)),
    ])
    .ok();
    let armcfg: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((&armcfg["architecture"], &armcfg["variant"]), (&json!("arm"), &json!("v7")), "{armcfg}");

    // skiff-test/multiarch:docker: the same as a Docker manifest list.
    let list = skopeo_raw(&h, MULTIARCH_DOCKER, &[]);
    assert_eq!(list["mediaType"], DOCKER_MANIFEST_LIST);
    assert_eq!(platforms(&list), ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
    for m in list["manifests"].as_array().unwrap() {
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    }

    // The registry quirk pull clients must know: an OCI manifest is 404 unless asked for.
    let r = reg.request("GET", "/v2/skiff-test/busybox/manifests/oci", &[("Accept", DOCKER_MANIFEST)]);
    assert_eq!(r.status, 404, "{r}");
}

#[test]
fn layers_image_unpacks_to_the_documented_tree() {
    let reg = Registry::start();
    let dir = Scratch::new("unpack");
    let layout = dir.join("oci");
    let src = format!("docker://{}", reg.image(LAYERS));
    let dst = format!("oci:{}:layers", layout.display());
    host(&[
        "skopeo",
        "--policy",
        skopeo_policy().to_str().unwrap(),
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &src,
        &dst,
    ])
    .ok();
    let bundle = dir.join("bundle");
    host(&["umoci", "unpack", "--image", &format!("{}:layers", layout.display()), bundle.to_str().unwrap()]).ok();
    let f = bundle.join("rootfs/fixtures");

    let text = |p: &str| fs::read_to_string(f.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let gone = |p: &str| assert!(fs::symlink_metadata(f.join(p)).is_err(), "{p} should be gone");
    assert_eq!(text("keep.txt"), "keep\n");
    assert_eq!(text("delete-me.txt"), "resurrected\n");
    gone("gone-dir");
    gone("opaque/a.txt");
    gone("opaque/sub");
    assert_eq!(text("opaque/new.txt"), "new\n");
    let (data, link) = (fs::metadata(f.join("data.txt")).unwrap(), fs::metadata(f.join("hardlink.txt")).unwrap());
    assert_eq!(data.ino(), link.ino(), "hardlink.txt is a hardlink of data.txt");
    assert_eq!(fs::read_link(f.join("link-rel")).unwrap(), Path::new("keep.txt"));
    assert_eq!(fs::read_link(f.join("link-abs")).unwrap(), Path::new("/fixtures/keep.txt"));
    assert_eq!(fs::metadata(f.join("mode.sh")).unwrap().permissions().mode() & 0o7777, 0o755);
    let owned = fs::metadata(f.join("owned.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.permissions().mode() & 0o7777), (1000, 1000, 0o600));
    assert_eq!(text("file-to-dir/inner.txt"), "inner\n");
    assert_eq!(text("dir-to-file"), "a directory, a file now\n");
    // and the busybox layer below
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert!(read(bundle.join("rootfs/etc/passwd")).contains("app:x:1000:1000:"));
}

#[test]
fn basic_auth_registry_refuses_anonymous_and_accepts_credentials() {
    let reg = Registry::with_basic_auth("tester", "s3cret pass");
    assert_eq!(reg.credentials(), Some(("tester", "s3cret pass")));

    let anon = http_request(&reg.host(), "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(anon.status, 401, "{anon}");
    let challenge = anon.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic ") && challenge.contains("realm="), "{anon}");
    let wrong = basic_auth("tester", "wrong");
    let r = http_request(&reg.host(), "GET", "/v2/", &[("Authorization", &wrong)], b"").unwrap();
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(reg.request("GET", "/v2/", &[]).status, 200);

    let image = format!("docker://{}", reg.image(BUSYBOX_OCI));
    let out = host(&["skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds", &image]);
    assert!(!out.success(), "anonymous inspect should fail:\n{out}");
    assert!(out.stderr.contains("unauthorized") || out.stderr.contains("401"), "{out}");
    let out = host(&["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "tester:wrong", &image]);
    assert!(!out.success(), "inspect with a wrong password should fail:\n{out}");
    let out = host(&["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "tester:s3cret pass", &image]).ok();
    let m: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);

    // Pushing takes the credentials too (Registry::push passes them).
    let arm64 = format!("oci:{}:multiarch-arm64", test_images().display());
    reg.push(&arm64, "mine/arm64:1", &["--format", "oci"]).ok();
    let path = "/v2/mine/arm64/manifests/1";
    let anon = http_request(&reg.host(), "GET", path, &[("Accept", OCI_MANIFEST)], b"").unwrap();
    assert_eq!(anon.status, 401, "{anon}");
    assert_eq!(reg.request("GET", path, &[("Accept", OCI_MANIFEST)]).status, 200);
}

#[test]
fn fault_proxy_cuts_a_blob_and_a_ranged_retry_gets_the_rest() {
    let reg = Registry::start();
    let proxy = FaultProxy::to(&reg);
    let (m, _, _) = reg.manifest("skiff-test/busybox", "oci");
    let m: Value = serde_json::from_slice(&m).unwrap();
    let digest = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    let url = format!("{}/v2/skiff-test/busybox/blobs/{digest}", proxy.url());
    let dir = Scratch::new("cut");
    let (part1, part2) = (dir.join("part1"), dir.join("part2"));

    const CUT: u64 = 100_000;
    proxy.cut_blobs(CUT, 1);
    let out = host(&["curl", "-sS", "-o", part1.to_str().unwrap(), &url]);
    assert_eq!(out.code(), 18, "curl should report a partial transfer (18):\n{out}");
    assert_eq!(fs::metadata(&part1).unwrap().len(), CUT);
    assert!(proxy.faults_left().is_empty());

    let out = host(&[
        "curl",
        "-sS",
        "-f",
        "-r",
        &format!("{CUT}-"),
        "-o",
        part2.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &url,
    ])
    .ok();
    assert_eq!(out.out(), "206", "{out}");
    let mut all = fs::read(&part1).unwrap();
    all.extend(fs::read(&part2).unwrap());
    assert_eq!(all.len() as u64, size);
    let whole = dir.join("whole");
    fs::write(&whole, &all).unwrap();
    assert_eq!(format!("sha256:{}", sha256(&whole)), digest);

    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status, gets[0].body_bytes), (None, Some(200), CUT));
    assert_eq!(gets[0].fault, Some(Action::CutAfter(CUT)));
    assert_eq!(gets[1].range.as_deref(), Some(format!("bytes={CUT}-").as_str()), "the proxy saw the ranged request");
    assert_eq!((gets[1].status, gets[1].body_bytes, &gets[1].fault), (Some(206), size - CUT, &None));
}

#[test]
fn fault_proxy_forwards_real_clients_and_injects_errors() {
    let reg = Registry::start();
    let proxy = FaultProxy::to(&reg);

    // A whole pull through the proxy (manifests, config, layer; one connection each).
    let dir = Scratch::new("through");
    let dst = format!("oci:{}:x", dir.join("oci").display());
    let src = format!("docker://{}", proxy.image(LAYERS));
    host(&[
        "skopeo",
        "--policy",
        skopeo_policy().to_str().unwrap(),
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &src,
        &dst,
    ])
    .ok();
    let seen = proxy.requests();
    assert!(seen.iter().any(|s| s.method == "GET" && s.path.contains("/manifests/latest")), "{seen:#?}");
    assert_eq!(proxy.blob_gets().len(), 6, "config + 5 layers: {seen:#?}");
    assert!(seen.iter().all(|s| s.status.is_some_and(|c| c < 400 || c == 401)), "{seen:#?}");

    // A push through the proxy: request bodies (blob uploads, manifest PUT) pass too.
    proxy.clear_requests();
    let src = format!("oci:{}:multiarch-armv7", test_images().display());
    let dst = format!("docker://{}", proxy.image("mine/armv7:1"));
    host(&[
        "skopeo",
        "--policy",
        skopeo_policy().to_str().unwrap(),
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ])
    .ok();
    let seen = proxy.requests();
    assert!(
        seen.iter().any(|s| s.method == "PUT" && s.path.contains("/manifests/1") && s.status == Some(201)),
        "{seen:#?}"
    );
    assert_eq!(reg.manifest("mine/armv7", "1").1, OCI_MANIFEST);

    // A chunked request body (skopeo's are Content-Length framed): a blob upload by hand,
    // its Location pointing back at the proxy (the Host header is passed on).
    let post = http_request(&proxy.host(), "POST", "/v2/mine/chunky/blobs/uploads/", &[], b"").unwrap();
    assert_eq!(post.status, 202, "{post}");
    let location = post.header("location").unwrap().to_string();
    assert!(location.starts_with(&proxy.url()), "{location}");
    let blob = dir.join("chunky");
    fs::write(&blob, "x".repeat(100_000)).unwrap();
    let chunked = ["-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream"];
    let data = format!("@{}", blob.display());
    let patch = host(
        &[
            &["curl", "-sS", "-X", "PATCH", "-D", "-", "-o", "/dev/null"][..],
            &chunked,
            &["--data-binary", &data, &location],
        ]
        .concat(),
    )
    .ok();
    let location = patch.stdout.lines().find_map(|l| l.strip_prefix("Location: ")).unwrap().trim().to_string();
    let digest = format!("sha256:{}", sha256(&blob));
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = host(&[
        "curl",
        "-sS",
        "-X",
        "PUT",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{location}{sep}digest={digest}"),
    ])
    .ok();
    assert_eq!(put.out(), "201", "{put}");
    let patched =
        proxy.requests().into_iter().find(|s| s.method == "PATCH" && s.path.contains("/mine/chunky/")).unwrap();
    assert_eq!(patched.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reg.request("HEAD", &format!("/v2/mine/chunky/blobs/{digest}"), &[]).status, 200);

    // An injected 503 on the first manifest GET, then the real answer.
    proxy.clear_requests();
    proxy.inject(Fault::new(Match::ManifestGet, Action::Status(503)));
    let url = format!("{}/v2/skiff-test/busybox/manifests/oci", proxy.url());
    let curl = |url: &str| {
        host(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Accept: {ACCEPT_MANIFESTS}"),
            url,
        ])
        .ok()
        .out()
        .to_string()
    };
    assert_eq!(curl(&url), "503");
    assert_eq!(curl(&url), "200");
    let seen = proxy.requests();
    assert_eq!(seen.iter().map(|s| s.status).collect::<Vec<_>>(), [Some(503), Some(200)]);

    // A corrupted blob: same length, other digest.
    let (m, _, _) = reg.manifest("skiff-test/busybox", "oci");
    let m: Value = serde_json::from_slice(&m).unwrap();
    let digest = m["layers"][0]["digest"].as_str().unwrap();
    proxy.inject(Fault::new(Match::BlobGet(None), Action::CorruptAt(5)).digest(digest));
    let blob = dir.join("blob");
    let url = format!("{}/v2/skiff-test/busybox/blobs/{digest}", proxy.url());
    host(&["curl", "-sSf", "-o", blob.to_str().unwrap(), &url]).ok();
    assert_eq!(fs::metadata(&blob).unwrap().len(), m["layers"][0]["size"].as_u64().unwrap());
    assert_ne!(format!("sha256:{}", sha256(&blob)), digest);
    host(&["curl", "-sSf", "-o", blob.to_str().unwrap(), &url]).ok();
    assert_eq!(format!("sha256:{}", sha256(&blob)), digest, "only the first GET is corrupted");
}

#[test]
fn registry_drop_kills_the_process_and_removes_its_directory() {
    let reg = Registry::empty();
    let pid = reg.pid().unwrap();
    let dir = reg.dir().to_path_buf();
    let host_port = reg.host();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        http_request(&host_port, "GET", "/v2/_catalog", &[], b"").unwrap().text().trim(),
        r#"{"repositories":[]}"#
    );
    drop(reg);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "registry process {pid} still there");
    assert!(!dir.exists(), "{} still there", dir.display());
    assert!(http_request(&host_port, "GET", "/v2/", &[], b"").is_err());
}

#[test]
fn build_test_images_is_reproducible() {
    let dir = Scratch::new("rebuild");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-test-images");
    let out = host(&[script.to_str().unwrap(), "--quiet", dir.join("layout").to_str().unwrap()]).ok();
    assert_eq!(out.out(), dir.join("layout").display().to_string());
    let index = |p: &Path| -> Value { serde_json::from_str(&read(p.join("index.json"))).unwrap() };
    assert_eq!(index(&dir.join("layout")), index(test_images()), "the same build should give the same digests");
}
