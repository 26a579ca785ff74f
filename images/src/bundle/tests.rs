//! Unit tests of bundle generation: a synthetic image config and a rootfs directory holding
//! only /etc/passwd and /etc/group (no root needed).

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
# a comment
user:x:1000:1000:user:/home/user:/bin/sh
other:x:1001:1001:other:/home/other:/bin/sh
nohome:x:1002:1002:::/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

const GROUP: &str = "root:x:0:
wheel:x:10:root,user
tty:x:5:
audio:x:29:user, other
user:x:1000:
other:x:1001:
nogroup:x:65534:
";

const CONFIG: &str = r#"{
  "architecture": "amd64",
  "os": "linux",
  "config": {
    "User": "user",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8080": {}, "9000-9002/tcp": {}},
    "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "KEEP=1"],
    "Entrypoint": ["/entry.sh"],
    "Cmd": ["serve", "--port", "80"],
    "Volumes": {"/data": {}, "/var/log/app": {}},
    "WorkingDir": "/srv/app",
    "Labels": {"org.example.a": "b", "empty": null},
    "StopSignal": "SIGQUIT"
  },
  "rootfs": {"type": "layers", "diff_ids": []}
}"#;

struct Rootfs(tempfile::TempDir);

impl Rootfs {
    fn new() -> Rootfs {
        let t = tempfile::Builder::new().prefix("skiff-bundle-test").tempdir().expect("tempdir");
        fs::create_dir_all(t.path().join("etc")).expect("mkdir etc");
        fs::write(t.path().join("etc/passwd"), PASSWD).expect("passwd");
        fs::write(t.path().join("etc/group"), GROUP).expect("group");
        Rootfs(t)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn image() -> ImageRunConfig {
    ImageRunConfig::parse(CONFIG.as_bytes(), "example.com/app:1").expect("config parses")
}

fn spec_json(spec: &Spec) -> Value {
    serde_json::to_value(spec).expect("spec serializes")
}

fn build(img: &ImageRunConfig, o: &BundleOverrides) -> (Value, BundleInfo, Rootfs) {
    let r = Rootfs::new();
    let (spec, info) = build_spec(img, r.path(), o).expect("build_spec");
    (spec_json(&spec), info, r)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x.as_str().expect("string").to_string()).collect()
}

#[test]
fn parses_image_config() {
    let c = image();
    assert_eq!(c.user.as_deref(), Some("user"));
    assert_eq!(c.entrypoint, Some(vec!["/entry.sh".to_string()]));
    assert_eq!(c.cmd, Some(vec!["serve".to_string(), "--port".into(), "80".into()]));
    assert_eq!(c.volumes, ["/data", "/var/log/app"]);
    assert_eq!(c.exposed_ports, ["53/udp", "80/tcp", "8080", "9000-9002/tcp"]);
    assert_eq!(c.labels.get("empty").map(String::as_str), Some(""));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));

    // Nulls and a missing config are "nothing set".
    let c = ImageRunConfig::parse(br#"{"config":{"Env":null,"Cmd":null,"User":""}}"#, "x").expect("nulls");
    assert_eq!((c.env.len(), c.cmd, c.user), (0, None, None));
    let c = ImageRunConfig::parse(br#"{"architecture":"arm64"}"#, "x").expect("no config");
    assert_eq!(c, ImageRunConfig { name: "x".into(), ..Default::default() });

    let e = ImageRunConfig::parse(b"{not json", "busybox").unwrap_err().to_string();
    assert!(e.starts_with("image config of busybox: not a valid image config"), "{e}");
}

#[test]
fn args_follow_docker() {
    let img = image();
    let run = |ep: Option<&[&str]>, cmd: Option<&[&str]>| {
        let o = BundleOverrides {
            entrypoint: ep.map(|v| v.iter().map(|s| s.to_string()).collect()),
            cmd: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        args(&img, &o).map_err(|e| e.to_string())
    };
    assert_eq!(run(None, None).unwrap(), ["/entry.sh", "serve", "--port", "80"]);
    assert_eq!(run(None, Some(&["sh"])).unwrap(), ["/entry.sh", "sh"]);
    // A new entrypoint drops the image's Cmd...
    assert_eq!(run(Some(&["/bin/sh"]), None).unwrap(), ["/bin/sh"]);
    // ...unless a cmd is given as well.
    assert_eq!(run(Some(&["/bin/sh"]), Some(&["-c", "id"])).unwrap(), ["/bin/sh", "-c", "id"]);
    // An empty entrypoint clears it.
    assert_eq!(run(Some(&[]), Some(&["id"])).unwrap(), ["id"]);
    let e = run(Some(&[]), None).unwrap_err();
    assert_eq!(e, "nothing to run: image example.com/app:1 has neither Entrypoint nor Cmd; give a command");

    let bare = ImageRunConfig { cmd: Some(vec!["sh".into()]), ..Default::default() };
    assert_eq!(args(&bare, &BundleOverrides::default()).unwrap(), ["sh"]);
}

#[test]
fn env_merges() {
    let o = BundleOverrides {
        env: vec!["LANG=de_DE.UTF-8".into(), "NEW=x=y".into(), "KEEP".into()],
        terminal: true,
        hostname: Some("web-1".into()),
        ..Default::default()
    };
    let (v, _, _r) = build(&image(), &o);
    assert_eq!(
        strs(&v["process"]["env"]),
        ["PATH=/usr/bin:/bin", "LANG=de_DE.UTF-8", "NEW=x=y", "HOSTNAME=web-1", "HOME=/home/user", "TERM=xterm"]
    );
    assert_eq!(v["hostname"], "web-1");

    // No PATH in the image: docker's; an image HOME wins over passwd's.
    let img = ImageRunConfig { cmd: Some(vec!["sh".into()]), env: vec!["HOME=/h".into()], ..Default::default() };
    let (v, _, _r) = build(&img, &BundleOverrides::default());
    assert_eq!(strs(&v["process"]["env"]), [format!("PATH={DEFAULT_PATH}").as_str(), "HOME=/h", "HOSTNAME=skiff"]);

    let bad = BundleOverrides { env: vec!["=x".into()], ..Default::default() };
    let e = build_spec(&image(), Rootfs::new().path(), &bad).unwrap_err().to_string();
    assert_eq!(e, "environment: \"=x\" is not NAME=VALUE");
}

fn user_of(spec_user: &str) -> Result<User, String> {
    let r = Rootfs::new();
    let root = open_root(r.path()).expect("root");
    resolve_user(&root, r.path(), spec_user, "example.com/app:1").map_err(|e| e.to_string())
}

fn u(uid: u32, gid: u32, gids: &[u32], home: Option<&str>) -> User {
    User { uid, gid, additional_gids: gids.to_vec(), home: home.map(str::to_string) }
}

#[test]
fn users_resolve_like_runc() {
    assert_eq!(user_of(""), Ok(u(0, 0, &[10], Some("/root"))));
    assert_eq!(user_of("root"), Ok(u(0, 0, &[10], Some("/root"))));
    assert_eq!(user_of("user"), Ok(u(1000, 1000, &[10, 29], Some("/home/user"))));
    assert_eq!(user_of("1000"), Ok(u(1000, 1000, &[10, 29], Some("/home/user"))));
    assert_eq!(user_of("other"), Ok(u(1001, 1001, &[29], Some("/home/other"))));
    assert_eq!(user_of("nohome"), Ok(u(1002, 1002, &[], None)));
    // An explicit group: that gid, and no supplementary groups.
    assert_eq!(user_of("user:audio"), Ok(u(1000, 29, &[], Some("/home/user"))));
    assert_eq!(user_of("1000:5"), Ok(u(1000, 5, &[], Some("/home/user"))));
    assert_eq!(user_of("user:4321"), Ok(u(1000, 4321, &[], Some("/home/user"))));
    // Numeric ids need no entry.
    assert_eq!(user_of("4242"), Ok(u(4242, 0, &[], None)));
    assert_eq!(user_of("4242:4343"), Ok(u(4242, 4343, &[], None)));
    assert_eq!(user_of("ghost"), Err("user \"ghost\" not found in /etc/passwd of image example.com/app:1".into()));
    assert_eq!(
        user_of("user:ghosts"),
        Err("group \"ghosts\" not found in /etc/group of image example.com/app:1".into())
    );
    assert_eq!(
        user_of("99999999999"),
        Err("user \"99999999999\" for image example.com/app:1: 99999999999 is out of range (0 to 2147483647)".into())
    );
}

#[test]
fn users_without_account_files() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = open_root(t.path()).expect("root");
    assert_eq!(resolve_user(&root, t.path(), "", "img").ok(), Some(u(0, 0, &[], None)));
    assert_eq!(resolve_user(&root, t.path(), "7:8", "img").ok(), Some(u(7, 8, &[], None)));
    let e = resolve_user(&root, t.path(), "app", "img").unwrap_err().to_string();
    assert_eq!(e, "user \"app\" not found in /etc/passwd of image img");
}

#[test]
fn account_files_are_read_inside_the_rootfs() {
    // /etc/passwd -> /alt/passwd (absolute): the rootfs's /alt/passwd, not the host's.
    let r = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(r.path().join("etc")).expect("mkdir");
    fs::create_dir_all(r.path().join("alt")).expect("mkdir");
    fs::write(r.path().join("alt/passwd"), "alt:x:77:88::/alt:/bin/sh\n").expect("write");
    std::os::unix::fs::symlink("/alt/passwd", r.path().join("etc/passwd")).expect("symlink");
    let root = open_root(r.path()).expect("root");
    assert_eq!(resolve_user(&root, r.path(), "alt", "img").ok(), Some(u(77, 88, &[], Some("/alt"))));
    // /etc/group -> ../../../../../../etc/group would be the host's group file; inside the
    // rootfs the `..` stop at its root, so it is the link itself: a loop, not the host's file.
    std::os::unix::fs::symlink("../../../../../../../etc/group", r.path().join("etc/group")).expect("symlink");
    let e = resolve_user(&root, r.path(), "alt:root", "img").unwrap_err().to_string();
    assert!(e.starts_with("reading ") && e.contains("etc/group: Too many levels of symbolic links"), "{e}");
}

#[test]
fn user_and_groups_in_spec() {
    let (v, _, _r) = build(&image(), &BundleOverrides::default());
    assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}));
    let o = BundleOverrides { user: Some("4242".into()), ..Default::default() };
    let (v, _, _r) = build(&image(), &o);
    assert_eq!(v["process"]["user"], json!({"uid": 4242, "gid": 0}));
    assert!(strs(&v["process"]["env"]).contains(&"HOME=/".to_string()));
}

#[test]
fn secure_defaults() {
    let (v, info, r) = build(&image(), &BundleOverrides::default());
    let p = &v["process"];
    assert_eq!(p["noNewPrivileges"], true);
    assert_eq!(p["terminal"], false);
    let mut want: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    want.sort();
    for set in ["bounding", "effective", "permitted"] {
        let mut got = strs(&p["capabilities"][set]);
        got.sort();
        assert_eq!(got, want, "{set}");
    }
    assert!(p["capabilities"].get("inheritable").is_none_or(Value::is_null));
    assert!(p["capabilities"].get("ambient").is_none_or(Value::is_null));
    assert_eq!(p["rlimits"], json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]));
    assert_eq!(v["root"], json!({"path": r.path(), "readonly": false}));

    let l = &v["linux"];
    assert_eq!(strs(&l["maskedPaths"]), MASKED_PATHS);
    assert_eq!(strs(&l["readonlyPaths"]), READONLY_PATHS);
    for p in ["/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/timer_list"] {
        assert!(MASKED_PATHS.contains(&p), "{p}");
    }
    let ns: Vec<&str> = l["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
    let devices = l["resources"]["devices"].as_array().unwrap();
    assert_eq!(devices[0], json!({"allow": false, "access": "rwm"}));
    let allowed: Vec<(i64, Option<i64>)> = devices
        .iter()
        .filter(|d| d["allow"] == true && d["access"] == "rwm")
        .map(|d| (d["major"].as_i64().unwrap(), d["minor"].as_i64()))
        .collect();
    for dev in
        [(1, Some(3)), (1, Some(5)), (1, Some(7)), (1, Some(8)), (1, Some(9)), (5, Some(0)), (5, Some(2)), (136, None)]
    {
        assert!(allowed.contains(&dev), "{dev:?} not allowed: {allowed:?}");
    }
    assert!(l["resources"].get("memory").is_none_or(Value::is_null));

    let dests: Vec<&str> = v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
    assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]);
    let sys = &v["mounts"][5];
    assert!(strs(&sys["options"]).contains(&"ro".to_string()));
    assert!(strs(&v["mounts"][6]["options"]).contains(&"ro".to_string()));

    // StopSignal: annotation and info.
    assert_eq!(v["annotations"][STOP_SIGNAL_ANNOTATION], "SIGQUIT");
    assert_eq!((info.stop_signal.as_str(), info.stop_signal_number), ("SIGQUIT", libc::SIGQUIT));
    assert_eq!(info.volumes, ["/data", "/var/log/app"]);
    let ports: Vec<(u16, &str)> = info.ports.iter().map(|p| (p.port, p.protocol.as_str())).collect();
    assert_eq!(ports, [(53, "udp"), (80, "tcp"), (8080, "tcp"), (9000, "tcp"), (9001, "tcp"), (9002, "tcp")]);
    assert_eq!(info.labels.get("org.example.a").map(String::as_str), Some("b"));
}

#[test]
fn working_dir_is_created_inside_the_rootfs() {
    let (v, _, r) = build(&image(), &BundleOverrides::default());
    assert_eq!(v["process"]["cwd"], "/srv/app");
    let md = fs::metadata(r.path().join("srv/app")).expect("created");
    assert!(md.is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);

    let o = BundleOverrides { working_dir: Some("/a/./b/../c/".into()), ..Default::default() };
    let (v, _, r) = build(&image(), &o);
    assert_eq!(v["process"]["cwd"], "/a/c");
    assert!(r.path().join("a/c").is_dir());

    // A symlink to an absolute path is followed inside the rootfs.
    let r = Rootfs::new();
    fs::create_dir_all(r.path().join("real")).expect("mkdir");
    std::os::unix::fs::symlink("/real", r.path().join("lnk")).expect("symlink");
    let o = BundleOverrides { working_dir: Some("/lnk/sub".into()), ..Default::default() };
    build_spec(&image(), r.path(), &o).expect("build");
    assert!(r.path().join("real/sub").is_dir());

    // A dangling symlink towards the host is not followed out of the rootfs: an error.
    let host = tempfile::tempdir().expect("tempdir");
    let target = host.path().join("victim");
    std::os::unix::fs::symlink(&target, r.path().join("escape")).expect("symlink");
    let o = BundleOverrides { working_dir: Some("/escape/x".into()), ..Default::default() };
    let e = build_spec(&image(), r.path(), &o).unwrap_err().to_string();
    assert!(e.starts_with("creating the working directory"), "{e}");
    assert!(!target.exists(), "created on the host");

    let o = BundleOverrides { working_dir: Some("rel".into()), ..Default::default() };
    let e = build_spec(&image(), r.path(), &o).unwrap_err().to_string();
    assert_eq!(e, "working directory: \"rel\" is not an absolute path");
    // A relative WorkingDir of an image is taken from /.
    let img = ImageRunConfig { working_dir: Some("rel/dir".into()), ..image() };
    let (v, _, _r) = build(&img, &BundleOverrides::default());
    assert_eq!(v["process"]["cwd"], "/rel/dir");
}

#[test]
fn overrides() {
    let o = BundleOverrides {
        mounts: vec![
            bind_mount("/srv/data", "/data", false),
            bind_mount("/srv/shm", "/dev/shm", true),
            bind_mount("/srv/conf/app.yaml", "/etc/app/app.yaml", true),
            bind_mount("/srv/conf", "/etc/app", true),
        ],
        memory_limit: Some(64 << 20),
        readonly_rootfs: true,
        cap_add: vec!["net_admin".into()],
        cap_drop: vec!["CAP_MKNOD".into(), "net_raw".into()],
        network: NetworkNamespace::Path("/run/netns/skiff-1".into()),
        cgroups_path: Some("/skiff/web-1".into()),
        annotations: [("a".to_string(), "b".to_string())].into(),
        ..Default::default()
    };
    let (v, _, _r) = build(&image(), &o);
    let dests: Vec<&str> = v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/data",
            "/dev/shm",
            "/etc/app",
            "/etc/app/app.yaml"
        ]
    );
    let shm = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/dev/shm").unwrap();
    assert_eq!(
        *shm,
        json!({"destination": "/dev/shm", "type": "bind", "source": "/srv/shm", "options": ["rbind", "rprivate", "ro"]})
    );
    assert_eq!(v["linux"]["resources"]["memory"], json!({"limit": 64 << 20}));
    assert_eq!(v["root"]["readonly"], true);
    let caps = strs(&v["process"]["capabilities"]["bounding"]);
    assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
    assert!(!caps.contains(&"CAP_MKNOD".to_string()) && !caps.contains(&"CAP_NET_RAW".to_string()));
    assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 1);
    assert_eq!(v["linux"]["namespaces"][1], json!({"type": "network", "path": "/run/netns/skiff-1"}));
    assert_eq!(v["linux"]["cgroupsPath"], "/skiff/web-1");
    assert_eq!(v["annotations"]["a"], "b");

    // A mount on /dev replaces all the default /dev mounts.
    let o = BundleOverrides {
        mounts: vec![bind_mount("/dev", "/dev", false)],
        network: NetworkNamespace::Host,
        ..Default::default()
    };
    let (v, _, _r) = build(&image(), &o);
    let dests: Vec<&str> = v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
    assert_eq!(dests, ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]);
    assert!(!v["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"));

    let caps = capabilities(&["ALL".into()], &["all".into()]).unwrap();
    assert_eq!(caps.len(), ALL_CAPABILITIES.len());
    assert_eq!(capabilities(&["chown".into()], &["ALL".into()]).unwrap(), ["CAP_CHOWN"]);
    assert_eq!(
        capabilities(&["CAP_FLY".into()], &[]).unwrap_err().to_string(),
        "capability: \"CAP_FLY\" is not a Linux capability"
    );
}

#[test]
fn bad_overrides() {
    let r = Rootfs::new();
    let err = |o: BundleOverrides| build_spec(&image(), r.path(), &o).unwrap_err().to_string();
    assert_eq!(
        err(BundleOverrides { mounts: vec![bind_mount("/x", "rel", false)], ..Default::default() }),
        "mount: destination rel is not an absolute path"
    );
    assert_eq!(
        err(BundleOverrides { mounts: vec![bind_mount("/x", "/a/../../etc", false)], ..Default::default() }),
        "mount: destination /a/../../etc contains '..'"
    );
    assert_eq!(
        err(BundleOverrides { memory_limit: Some(0), ..Default::default() }),
        "memory limit: 0 bytes: give a positive number of bytes"
    );
    assert_eq!(
        err(BundleOverrides { hostname: Some("a b".into()), ..Default::default() }),
        "hostname: \"a b\" is not a valid hostname"
    );
    let img = ImageRunConfig { volumes: vec!["data".into()], ..image() };
    let e = build_spec(&img, r.path(), &BundleOverrides::default()).unwrap_err().to_string();
    assert_eq!(e, "image example.com/app:1: VOLUME \"data\": not an absolute path");
    let img = ImageRunConfig { volumes: vec!["/../../tmp/x\u{1b}]0;t\u{7}".into()], ..image() };
    let e = build_spec(&img, r.path(), &BundleOverrides::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "image example.com/app:1: VOLUME \"/../../tmp/x\\u{1b}]0;t\\u{7}\": contains '..': a volume path must be \
         a plain absolute path inside the image"
    );
    let img = ImageRunConfig { stop_signal: Some("SIGNOPE".into()), ..image() };
    let e = build_spec(&img, r.path(), &BundleOverrides::default()).unwrap_err().to_string();
    assert_eq!(e, "image config of example.com/app:1: StopSignal \"SIGNOPE\" is not a signal");
    let e = build_spec(&image(), &r.path().join("missing"), &BundleOverrides::default()).unwrap_err().to_string();
    assert!(e.starts_with("opening the rootfs ") && e.contains("No such file"), "{e}");
}

#[test]
fn signals() {
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    assert_eq!(parse_signal("SIGTERM"), Some(("SIGTERM".into(), libc::SIGTERM)));
    assert_eq!(parse_signal("term"), Some(("SIGTERM".into(), libc::SIGTERM)));
    assert_eq!(parse_signal("9"), Some(("SIGKILL".into(), 9)));
    assert_eq!(parse_signal("SIGRTMIN+3"), Some(("SIGRTMIN+3".into(), rtmin + 3)));
    assert_eq!(parse_signal("RTMAX-1"), Some(("SIGRTMAX-1".into(), rtmax - 1)));
    assert_eq!(parse_signal(&(rtmin + 3).to_string()), Some(("SIGRTMIN+3".into(), rtmin + 3)));
    assert_eq!(parse_signal("RTMIN"), Some(("SIGRTMIN".into(), rtmin)));
    for bad in ["", "0", "SIGNOPE", "RTMIN-1", "RTMAX+1", "RTMIN+99", "99"] {
        assert_eq!(parse_signal(bad), None, "{bad}");
    }
    // No StopSignal: SIGTERM.
    let img = ImageRunConfig { stop_signal: None, ..image() };
    let (v, info, _r) = build(&img, &BundleOverrides::default());
    assert_eq!((info.stop_signal.as_str(), info.stop_signal_number), ("SIGTERM", libc::SIGTERM));
    assert_eq!(v["annotations"][STOP_SIGNAL_ANNOTATION], "SIGTERM");
}

#[test]
fn port_specs() {
    assert_eq!(
        ports(&["80".into(), "80/tcp".into(), "5000/SCTP".into()]).unwrap(),
        [ExposedPort { port: 80, protocol: "tcp".into() }, ExposedPort { port: 5000, protocol: "sctp".into() }]
    );
    for bad in ["x/tcp", "0", "80/icmp", "90-80", "70000"] {
        assert!(ports(&[bad.into()]).is_err(), "{bad}");
    }
}

#[test]
fn writes_config_json_atomically() {
    let r = Rootfs::new();
    let (spec, _) = build_spec(&image(), r.path(), &BundleOverrides::default()).expect("build");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b");
    write_bundle(&bundle, &spec).expect("write");
    write_bundle(&bundle, &spec).expect("overwrite");
    let names: Vec<String> =
        fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["config.json"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(bundle.join("config.json")).unwrap().permissions().mode() & 0o777, 0o600);
    let back = Spec::load(bundle.join("config.json")).expect("loads");
    assert_eq!(back, spec);
}

#[test]
fn docker_healthcheck_is_read() {
    let cfg = br#"{"config":{"Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/"],"Interval":5000000000,"Timeout":2000000000,"Retries":4}}}"#;
    let c = ImageRunConfig::parse(cfg, "x").unwrap();
    let h = c.healthcheck.expect("a healthcheck");
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(h.interval, std::time::Duration::from_secs(5));
    assert_eq!(h.timeout, std::time::Duration::from_secs(2));
    assert_eq!(h.start_period, std::time::Duration::ZERO);
    assert_eq!(h.retries, 4);
    assert!(ImageRunConfig::parse(br#"{"config":{}}"#, "x").unwrap().healthcheck.is_none());
}

#[test]
fn limits_and_sysctls_reach_the_spec() {
    let o = BundleOverrides {
        cpus: Some(0.5),
        pids_limit: Some(64),
        rlimits: vec![("nofile".into(), 100, 200), ("RLIMIT_CORE".into(), 0, 0)],
        sysctls: [("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())].into(),
        ..Default::default()
    };
    let (v, _, _r) = build(&image(), &o);
    assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
    assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100000);
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
    assert_eq!(v["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"], "0");
    let rl = v["process"]["rlimits"].as_array().unwrap();
    assert!(rl.iter().any(|r| r["type"] == "RLIMIT_NOFILE" && r["soft"] == 100 && r["hard"] == 200));
    assert_eq!(rl.iter().filter(|r| r["type"] == "RLIMIT_NOFILE").count(), 1, "the default nofile is replaced");
    assert!(rl.iter().any(|r| r["type"] == "RLIMIT_CORE"));
    let root = Rootfs::new();
    for (bad, want) in [
        (BundleOverrides { rlimits: vec![("bogus".into(), 1, 1)], ..Default::default() }, "not a resource limit"),
        (BundleOverrides { rlimits: vec![("nofile".into(), 9, 1)], ..Default::default() }, "above the hard limit"),
        (BundleOverrides { cpus: Some(-1.0), ..Default::default() }, "not a CPU count"),
    ] {
        let err = build_spec(&image(), root.path(), &bad).expect_err("refused").to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn devices_and_their_rules() {
    let o = BundleOverrides {
        devices: vec![DeviceNode {
            path: "/dev/net/tun".into(),
            kind: 'c',
            major: 10,
            minor: 200,
            file_mode: 0o20666,
            uid: 0,
            gid: 0,
        }],
        device_rules: vec![
            DeviceAllow { kind: 'c', major: Some(10), minor: Some(200), access: "rw".into() },
            DeviceAllow { kind: 'c', major: Some(189), minor: None, access: "rwm".into() },
        ],
        ..Default::default()
    };
    let (v, _, _r) = build(&image(), &o);
    assert_eq!(
        v["linux"]["devices"],
        json!([{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666, "uid": 0, "gid": 0}])
    );
    let rules = v["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}), "deny-all first");
    let n = rules.len();
    assert_eq!(rules[n - 2], json!({"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"}));
    assert_eq!(rules[n - 1], json!({"allow": true, "type": "c", "major": 189, "access": "rwm"}));
    assert!(!rules.iter().any(|r| r["allow"] == true && r.get("type").is_none()), "no allow-all");
    assert_eq!(v["process"]["noNewPrivileges"], true);
    assert!(!v["linux"]["maskedPaths"].as_array().unwrap().is_empty());

    let twice = BundleOverrides { devices: vec![o.devices[0].clone(), o.devices[0].clone()], ..Default::default() };
    let r = Rootfs::new();
    assert!(build_spec(&image(), r.path(), &twice).unwrap_err().to_string().contains("given twice"));
    let mut rel = o.devices[0].clone();
    rel.path = "dev/x".into();
    let bad = BundleOverrides { devices: vec![rel], ..Default::default() };
    assert!(build_spec(&image(), r.path(), &bad).is_err());
}

#[test]
fn privileged_as_docker_has_it() {
    let o = BundleOverrides { privileged: true, cap_drop: vec!["ALL".into()], ..Default::default() };
    let (v, _, _r) = build(&image(), &o);
    let caps = strs(&v["process"]["capabilities"]["bounding"]);
    assert_eq!(caps.len(), privileged_capabilities().len(), "every capability held, cap_drop ignored: {caps:?}");
    assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    let set = |v: &Value| strs(v).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set(&v["process"]["capabilities"]["bounding"]), set(&v["process"]["capabilities"]["effective"]));
    assert_eq!(v["process"]["noNewPrivileges"], false);
    assert_eq!(v["linux"]["maskedPaths"], json!([]));
    assert_eq!(v["linux"]["readonlyPaths"], json!([]));
    let rules = v["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(rules.contains(&json!({"allow": true, "access": "rwm"})), "{rules:?}");
    for m in v["mounts"].as_array().unwrap() {
        if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
            assert!(!strs(&m["options"]).contains(&"ro".to_string()), "{m}");
        }
    }
    assert!(v.get("seccomp").is_none() && v["linux"].get("seccomp").is_none());
}
