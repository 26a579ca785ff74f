//! `include:`, `extends:`, `profiles:`, `container_name` and `~`: the keys that bring in
//! other files or leave services out.

use std::path::Path;

use super::*;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let d = Dir(tempfile::tempdir().unwrap());
        for (name, text) in files {
            let p = d.0.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    /// `compose.yaml` loaded, with its diagnostics rendered (DIR for the directory).
    fn load(&self) -> (Option<Manifest>, Vec<String>) {
        let r = load(&self.path().join("compose.yaml")).unwrap();
        let d = self.path().display().to_string();
        let lines = r.diagnostics.iter().map(|x| x.render("compose.yaml").replace(&d, "DIR")).collect();
        (r.manifest, lines)
    }
}

#[test]
fn include_merges_services_and_volumes_with_paths_from_their_own_directory() {
    let d = Dir::new(&[
        (
            "compose.yaml",
            "include:\n  - db/compose.yaml\n  - path: mqtt.yaml\nservices:\n  web:\n    image: busybox\n    depends_on: [db]\n    volumes: [data:/data]\n",
        ),
        (
            "db/compose.yaml",
            "services:\n  db:\n    image: postgres:16\n    env_file: db.env\n    volumes: [data:/var/lib/postgresql/data, ./init:/docker-entrypoint-initdb.d:ro]\nvolumes:\n  data: {}\n",
        ),
        ("db/db.env", "POSTGRES_PASSWORD=x\n"),
        ("mqtt.yaml", "services:\n  mqtt:\n    image: eclipse-mosquitto:2\n"),
    ]);
    let (m, diags) = d.load();
    assert!(diags.is_empty(), "{diags:#?}");
    let m = m.unwrap();
    assert_eq!(m.services.keys().collect::<Vec<_>>(), ["db", "mqtt", "web"]);
    let db = &m.services["db"];
    assert_eq!(db.env_file[0].path, d.path().join("db/db.env"));
    let MountKind::Bind { source, .. } = &db.mounts[1].kind else { panic!("{:?}", db.mounts) };
    assert_eq!(source, &d.path().join("db/init"));
    assert!(m.volumes.contains_key("data"));
}

#[test]
fn include_errors_name_the_file_and_the_place() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("compose.yaml", "include: [gone.yaml]\nservices: {}\n")],
            "compose.yaml:1:11: error: include: DIR/gone.yaml does not exist",
        ),
        (
            &[
                ("compose.yaml", "include: [a.yaml]\nservices: {}\n"),
                ("a.yaml", "services:\n  x:\n    image: busybox\n    bogus: [\n"),
            ],
            "DIR/a.yaml:",
        ),
        (
            &[
                ("compose.yaml", "include: [a.yaml]\nservices: {}\n"),
                ("a.yaml", "services:\n  x:\n    image: busybox\n    mem_limit: lots\n"),
            ],
            "DIR/a.yaml:4:16: error: x.mem_limit",
        ),
        (
            &[
                ("compose.yaml", "include: [a.yaml]\n"),
                ("a.yaml", "include: [b.yaml]\nservices: {}\n"),
                ("b.yaml", "include: [a.yaml]\nservices: {}\n"),
            ],
            "includes itself",
        ),
        (
            &[
                ("compose.yaml", "include: [a.yaml]\nservices:\n  x:\n    image: busybox\n"),
                ("a.yaml", "services:\n  x:\n    image: busybox\n"),
            ],
            "compose.yaml:3:3: error: service `x` is also defined in an included file",
        ),
        (
            &[("compose.yaml", "include:\n  - path: [a.yaml, b.yaml]\nservices: {}\n")],
            "skiff includes one file per entry",
        ),
        (&[("compose.yaml", "include: [/dev/zero]\nservices: {}\n")], "not a regular file"),
    ];
    for (files, want) in cases {
        let d = Dir::new(files);
        let (m, diags) = d.load();
        assert!(m.is_none() && diags.iter().any(|l| l.contains(want)), "want {want}: {diags:#?}");
    }
}

#[test]
fn extends_merges_by_compose_rules_across_files() {
    let d = Dir::new(&[
        (
            "compose.yaml",
            r#"
services:
  base:
    image: busybox
    environment: [A=1, B=2]
    volumes: ["./a:/data", "/x:/keep"]
    cap_add: [NET_ADMIN]
    command: [sleep, "1"]
    deploy: {resources: {limits: {memory: 64m, cpus: "0.5"}}}
    healthcheck: {test: [CMD, "true"], interval: 5s}
  web:
    extends: base
    environment: {B: "3", C: "4"}
    volumes: ["./b:/data"]
    cap_add: [CHOWN, NET_ADMIN]
    command: [sleep, "2"]
    deploy: {resources: {limits: {memory: 128m}}}
    healthcheck: {test: [CMD, "false"]}
  sensor:
    extends: {file: common/base.yaml, service: edge}
    labels: {room: kitchen}
"#,
        ),
        ("common/base.yaml", "services:\n  root:\n    image: alpine:3\n    env_file: root.env\n  edge:\n    extends: root\n    volumes: [./state:/state]\n    labels: {tier: edge}\n"),
        ("common/root.env", "X=1\n"),
    ]);
    let (m, diags) = d.load();
    assert!(diags.is_empty(), "{diags:#?}");
    let m = m.unwrap();
    let web = &m.services["web"];
    let env: Vec<_> = web.environment.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or(""))).collect();
    assert_eq!(env, ["A=1", "B=3", "C=4"]);
    let targets: Vec<_> = web.mounts.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(targets, ["/keep", "/data"]);
    let MountKind::Bind { source, .. } = &web.mounts[1].kind else { panic!() };
    assert_eq!(source, &d.path().join("b"));
    assert_eq!(web.cap_add, ["CAP_NET_ADMIN", "CAP_CHOWN"]);
    assert_eq!(web.command.as_deref(), Some(&["sleep".to_string(), "2".into()][..]));
    assert_eq!(web.resources.memory, Some(128 << 20));
    assert_eq!(web.resources.cpus, m.services["base"].resources.cpus);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.interval, std::time::Duration::from_secs(5));
    // Across files: paths relative to the file they are written in, chains followed.
    let s = &m.services["sensor"];
    assert_eq!(s.image, "alpine:3");
    assert_eq!(s.env_file[0].path, d.path().join("common/root.env"));
    let MountKind::Bind { source, .. } = &s.mounts[0].kind else { panic!() };
    assert_eq!(source, &d.path().join("common/state"));
    assert_eq!(s.labels.keys().collect::<Vec<_>>(), ["room", "tier"]);
}

#[test]
fn extends_errors() {
    let cases = [
        (
            "services:\n  a:\n    extends: b\n    image: x\n",
            "3:14: error: a.extends: there is no service `b` in this file",
        ),
        ("services:\n  a:\n    extends: b\n  b:\n    extends: a\n", "extends itself"),
        ("services:\n  a:\n    extends: a\n    image: x\n", "extends itself"),
        (
            "services:\n  a:\n    extends: {file: nope.yaml, service: b}\n",
            "3:21: error: a.extends.file: DIR/nope.yaml does not exist",
        ),
        ("services:\n  a:\n    extends: {file: compose.yaml}\n", "a.extends needs service:"),
    ];
    for (src, want) in cases {
        let d = Dir::new(&[("compose.yaml", src)]);
        let (m, diags) = d.load();
        assert!(m.is_none() && diags.iter().any(|l| l.contains(want)), "want {want}: {diags:#?}");
    }
}

#[test]
fn profiles_leave_services_out_unless_active() {
    let src = "services:\n  web:\n    image: busybox\n  debug:\n    image: busybox\n    profiles: [debug]\n  tools:\n    image: busybox\n    profiles: [debug, tools]\n";
    let d = Dir::new(&[("compose.yaml", src)]);
    let m = d.load().0.unwrap();
    assert_eq!(m.services.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(m.inactive["tools"], ["debug", "tools"]);
    // x-skiff activates; SKIFF_PROFILES (here from .env) overrides it.
    let d = Dir::new(&[("compose.yaml", &format!("{src}x-skiff: {{profiles: [tools]}}\n"))]);
    assert_eq!(d.load().0.unwrap().services.keys().collect::<Vec<_>>(), ["tools", "web"]);
    let d = Dir::new(&[
        ("compose.yaml", &format!("{src}x-skiff: {{profiles: [tools]}}\n")),
        (".env", "SKIFF_PROFILES=debug\n"),
    ]);
    assert_eq!(d.load().0.unwrap().services.keys().collect::<Vec<_>>(), ["debug", "tools", "web"]);
    let d = Dir::new(&[("compose.yaml", src), (".env", "COMPOSE_PROFILES=*\n")]);
    assert_eq!(d.load().0.unwrap().services.len(), 3);
    // A running service cannot need one left out; an optional dependency is dropped.
    let dep = "services:\n  web:\n    image: busybox\n    depends_on: [debug]\n  debug:\n    image: busybox\n    profiles: [debug]\n";
    let (m, diags) = Dir::new(&[("compose.yaml", dep)]).load();
    assert!(
        m.is_none()
            && diags[0].starts_with(
                "compose.yaml:4:18: error: service `web` depends on `debug`, which runs only with profile debug"
            ),
        "{diags:#?}"
    );
    let opt = "services:\n  web:\n    image: busybox\n    depends_on: {debug: {condition: service_started, required: false}}\n  debug:\n    image: busybox\n    profiles: [debug]\n";
    let m = Dir::new(&[("compose.yaml", opt)]).load().0.unwrap();
    assert!(m.services["web"].depends_on.is_empty());
    let (_, diags) =
        Dir::new(&[("compose.yaml", "services:\n  a:\n    image: x\n    profiles: [\"no way\"]\n")]).load();
    assert!(diags[0].contains("is not a profile name"), "{diags:#?}");
}

#[test]
fn container_name_is_the_host_name_and_needs_one_replica() {
    let d = Dir::new(&[("compose.yaml", "services:\n  ha:\n    image: busybox\n    container_name: homeassistant\n")]);
    let m = d.load().0.unwrap();
    assert_eq!(m.services["ha"].container_name.as_deref(), Some("homeassistant"));
    assert_eq!(crate::daemon::network::hostname(&m.services["ha"], "ha-1"), "homeassistant");
    let (m, diags) = Dir::new(&[(
        "compose.yaml",
        "services:\n  ha:\n    image: busybox\n    container_name: ha\n    deploy: {replicas: 2}\n",
    )])
    .load();
    assert!(
        m.is_none() && diags[0].contains("4:21: error: ha.container_name: a container name is unique"),
        "{diags:#?}"
    );
    let (_, diags) =
        Dir::new(&[("compose.yaml", "services:\n  ha:\n    image: busybox\n    container_name: \"-bad name\"\n")])
            .load();
    assert!(diags[0].contains("is not a valid container name"), "{diags:#?}");
}

#[test]
fn tilde_is_the_home_of_the_user_skiff_runs_as() {
    let home = super::convert::home_dir_for_tests().unwrap();
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  a:\n    image: busybox\n    volumes: [\"~/media:/media\", \"~:/home\"]\n",
    )]);
    let m = d.load().0.unwrap();
    let sources: Vec<_> = m.services["a"]
        .mounts
        .iter()
        .map(|m| match &m.kind {
            MountKind::Bind { source, .. } => source.clone(),
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(sources, [home.join("media"), home]);
    let (_, diags) =
        Dir::new(&[("compose.yaml", "services:\n  a:\n    image: busybox\n    volumes: [\"~bob/x:/x\"]\n")]).load();
    assert!(diags[0].contains("only `~`"), "{diags:#?}");
}
