//! End-to-end tests of the agent's bridge networking (issue 5): addresses, names, outbound
//! NAT, published ports.
//!
//! Every test creates a network namespace of its own and runs the agent inside it
//! (`nsenter --net=`; the mount namespace stays the host's, so the test sees the agent's
//! mounts and `skiff down` works as usual). The bridge, the veths, the NAT table and the
//! published ports live there; every request the test makes is sent from a thread that joined
//! that namespace ([`TestNetns::enter`]), to its loopback or to addresses on the bridge the
//! agent made there. Nothing reaches the host's network.
//!
//! Timing: health checks run every few hundred ms so the file runs in about a minute or two;
//! no assertion depends on how fast the machine is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skiff_tests::agent::{all_running, pids, replica, replica_ids, service, Agent, WAIT};
use skiff_tests::netns::{http_get, TestNetns};
use skiff_tests::registry::{http_request, Registry, BUSYBOX_OCI};
use skiff_tests::skip;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

/// The namespace, and an agent with the test image pulled (the test registry listens on the
/// host's loopback, out of the namespace's reach) that will run inside it with its bridge.
/// `None` (the test is skipped) when a tool is missing.
fn setup() -> Option<(TestNetns, Agent)> {
    setup_with_env(&[])
}

/// [`setup`], the agent started with `env` (`NAME=VALUE`) added to its environment.
fn setup_with_env(env: &[&str]) -> Option<(TestNetns, Agent)> {
    for tool in ["ip", "nsenter", "nft"] {
        if skiff_tests::which(tool).is_none() {
            skip(&format!("{tool} is not installed"));
            return None;
        }
    }
    let Some(ns) = TestNetns::new() else {
        skip("ip netns add failed");
        return None;
    };
    let mut a = Agent::new(SKIFF);
    let out = a.skiff(&["pull", &image()]);
    assert!(out.success(), "{out}");
    let mut prefix: Vec<String> = vec!["env".into()];
    prefix.extend(env.iter().map(|e| e.to_string()));
    prefix.extend(["nsenter".to_string(), ns.nsenter_arg()]);
    a.wrap(prefix).with_bridge();
    Some((ns, a))
}

/// `GET /v1/status` from inside the namespace (the agent's endpoint is on its loopback).
fn status(ns: &TestNetns, a: &Agent) -> Value {
    let listen = a.listen();
    let r = ns.enter(move || http_request(&listen, "GET", "/v1/status", &[], b""));
    match r {
        Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Waits until the status satisfies `cond`; the last status.
#[track_caller]
fn wait_status(ns: &TestNetns, a: &Agent, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let mut st = Value::Null;
    let mut ok = false;
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        st = status(ns, a);
        if st.is_object() && cond(&st) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "timed out waiting for {what}; status:\n{st:#}\n{}", a.log_tail());
    st
}

fn address(st: &Value, id: &str) -> Ipv4Addr {
    let s = replica(st, id)["address"].as_str().unwrap_or_else(|| panic!("{id} has no address: {st:#}")).to_string();
    s.parse().unwrap_or_else(|e| panic!("{id} address {s:?}: {e}"))
}

/// The status of `service`'s published port whose mapping is `mapping` (`8080:80/tcp`); Null
/// when it has none.
fn port<'a>(st: &'a Value, service_name: &str, mapping: &str) -> &'a Value {
    service(st, service_name)["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["mapping"] == mapping))
        .unwrap_or(&Value::Null)
}

/// Whether every replica of `name` is running and healthy.
fn all_healthy(st: &Value, name: &str, n: usize) -> bool {
    all_running(st, name, n)
        && service(st, name)["replicas"].as_array().is_some_and(|rs| rs.iter().all(|r| r["health"] == "healthy"))
}

/// Answers by replica, and failures.
type Answers = (BTreeMap<String, usize>, Vec<String>);

/// Counts one answer (a replica's page) or failure.
fn tally(a: &mut Answers, r: Result<String, String>) {
    match r {
        Ok(body) => *a.0.entry(body).or_insert(0) += 1,
        Err(e) => a.1.push(e),
    }
}

/// A client inside `ns` that opens a new connection to `addr` every 10 ms until `stop`,
/// counting what answered into `seen`.
fn client_loop(
    ns: &TestNetns,
    addr: &str,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Answers>>,
) -> std::thread::JoinHandle<()> {
    let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.parse::<SocketAddr>().unwrap());
    ns.spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let r = http_get(addr);
            tally(&mut seen.lock().unwrap(), r);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// `n` requests to `addr` from inside the namespace: how many each replica answered, and the
/// failures.
fn spread(ns: &TestNetns, addr: SocketAddr, n: usize) -> Answers {
    ns.enter(move || {
        let mut a = Answers::default();
        for _ in 0..n {
            tally(&mut a, http_get(addr));
        }
        a
    })
}

/// A web service: busybox httpd serving its hostname (= its replica id), healthy when it
/// answers.
fn web(replicas: u32, ports: &str, health: &str) -> String {
    format!(
        r#"  web:
    image: {img}
    user: root
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    healthcheck:
      test: {health}
      interval: 400ms
      timeout: 2s
      retries: 2
    ports: {ports}
    deploy:
      replicas: {replicas}
"#,
        img = image()
    )
}

/// The health check of [`web`]: its own page over loopback.
const SERVES: &str =
    r#"["CMD-SHELL", "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 127.0.0.1 80 | grep -qx $$(hostname)"]"#;

/// A second namespace of the test's, "another machine" at 192.0.2.2, joined by a veth pair to
/// the agent's namespace (192.0.2.1 there), with no route to the bridge subnet.
fn outside_of(ns: &TestNetns) -> TestNetns {
    let Some(outside) = TestNetns::new() else { panic!("ip netns add failed") };
    let link = format!("ip -n {} link add skout0 type veth peer name skout1 netns {}", ns.name(), outside.name());
    assert!(std::process::Command::new("sh").args(["-c", &link]).status().is_ok_and(|s| s.success()), "{link}");
    assert!(ns.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "skout0"]).0);
    assert!(ns.run(&["ip", "link", "set", "skout0", "up"]).0);
    assert!(outside.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "skout1"]).0);
    assert!(outside.run(&["ip", "link", "set", "skout1", "up"]).0);
    outside
}

/// `skiff down` (the fixture checks that no container, mount or process is left), then: no
/// veth, no bridge, no NAT table in the namespace, no namespace file of a replica left.
#[track_caller]
fn down_leaves_no_network(ns: &TestNetns, a: &mut Agent, bridge: &str) {
    a.down();
    skiff_tests::wait_until("the veths to go", WAIT, || {
        let (ok, out) = ns.run(&["ip", "-o", "link", "show", "type", "veth"]);
        ok && out.trim().is_empty()
    });
    assert!(!ns.run(&["ip", "link", "show", bridge]).0, "skiff down removed the bridge {bridge}");
    let (ok, tables) = ns.run(&["nft", "list", "tables"]);
    assert!(ok && !tables.contains("skiff"), "skiff down removed the NAT table: {tables}");
    let left: Vec<String> = std::fs::read_dir(a.run_dir().join("netns"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "skiff down left network namespaces: {left:?}");
    assert!(!a.root().join("network").join("bridge.json").exists(), "the bridge record is gone");
    let addrs = held_addresses(a);
    assert!(addrs.is_empty(), "skiff down released every address: {addrs:?}");
}

/// The address files under `<root>/network/ipam/<subnet>/` (one per address held).
fn held_addresses(a: &Agent) -> Vec<String> {
    std::fs::read_dir(a.root().join("network").join("ipam"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

// ---------------------------------------------------------------------------------------

/// Bridged replicas (compose's default network mode) get distinct addresses on the manifest's
/// bridge subnet, reach each other by service name through /etc/hosts (rewritten in place in
/// running containers when a replica comes), and reach the outside through the NAT table.
#[test]
fn bridged_replicas_get_addresses_and_reach_each_other_by_service_name() {
    const BRIDGE: &str = "sktest0";
    let on_host =
        || std::process::Command::new("ip").args(["link", "show", BRIDGE]).output().is_ok_and(|o| o.status.success());
    assert!(!on_host(), "the host has a link {BRIDGE} already: this test would not tell whether it made it");
    let Some((ns, mut a)) = setup() else { return };
    let img = image();
    let manifest = |web_replicas: u32| {
        format!(
            r#"x-skiff:
  bridge: {BRIDGE}
  subnet: 10.123.0.0/24
services:
  web:
    image: {img}
    user: root
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    deploy:
      replicas: {web_replicas}
  client:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    extra_hosts: ["db.example:192.0.2.7"]
    dns: [192.0.2.53]
"#
        )
    };
    a.write_manifest(&manifest(2));
    a.spawn();
    let mut st = wait_status(&ns, &a, "web (2) and client running", |st| {
        all_running(st, "web", 2) && all_running(st, "client", 1)
    });
    let mut seen = BTreeSet::new();
    for id in ["web-1", "web-2", "client-1"] {
        let addr = address(&st, id);
        let o = addr.octets();
        assert_eq!(o[..3], [10, 123, 0], "{id} {addr} is in 10.123.0.0/24");
        assert!(o[3] >= 2 && o[3] < 255, "{id} {addr}: not the network, gateway or broadcast address");
        assert!(seen.insert(addr), "{id} {addr}: addresses are distinct: {seen:?}");
        // The container's eth0 has it, and its default route is the bridge.
        let out = a.rt(&["exec", id, "ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(out.success() && out.stdout.contains(&format!("{addr}/24")), "{id}: {out}");
        let out = a.rt(&["exec", id, "ip", "route"]);
        assert!(out.stdout.contains("default via 10.123.0.1"), "{id}: {out}");
    }

    // `client` reaches `web` by its service name (/etc/hosts) over the bridge. (nc, not wget:
    // the static busybox wget of the test image segfaults in a bare root filesystem.)
    let mut got = String::new();
    skiff_tests::wait_until("client to fetch http://web/", WAIT, || {
        let get = r#"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 web 80"#;
        let out = a.rt(&["exec", "client-1", "sh", "-c", get]);
        got = out.stdout.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_string()).unwrap_or_default();
        out.success() && !got.is_empty()
    });
    assert!(got == "web-1" || got == "web-2", "the page of a web replica, got {got:?}");
    let hosts = a.rt(&["exec", "client-1", "cat", "/etc/hosts"]).stdout;
    for id in ["web-1", "web-2"] {
        assert!(hosts.contains(&format!("{}\tweb\n", address(&st, id))), "{id} listed as web:\n{hosts}");
    }
    assert!(hosts.contains("192.0.2.7\tdb.example\n"), "extra_hosts:\n{hosts}");
    assert!(hosts.contains(&format!("{}\tclient-1", address(&st, "client-1"))), "its own name:\n{hosts}");
    // The bridge's name server is the nameserver (it forwards to `dns:`).
    let resolv = a.rt(&["exec", "client-1", "cat", "/etc/resolv.conf"]).stdout;
    assert!(resolv.contains("nameserver 10.123.0.1\n") && !resolv.contains("192.0.2.53"), "dns:\n{resolv}");

    // Outbound: a second namespace of the test's ("the outside", 192.0.2.2) joined to the
    // agent's by a veth pair, with no route back to the bridge subnet: the client's connection
    // only works masqueraded, and arrives from the agent's namespace's address.
    let outside = outside_of(&ns);
    let listener = outside.enter(|| std::net::TcpListener::bind("192.0.2.2:9999").expect("bind 192.0.2.2:9999"));
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let out = a.rt(&["exec", "client-1", "sh", "-c", "echo hi | nc -w 3 192.0.2.2 9999"]);
    assert!(out.success(), "client reaches an address outside the bridge: {out}");
    let peer = accept.join().expect("accept thread").expect("accept");
    assert_eq!(peer.ip().to_string(), "192.0.2.1", "masqueraded to the agent's namespace's address");
    assert!(ns.run(&["nft", "list", "table", "ip", "skiff"]).1.contains("masquerade"));
    assert_eq!(ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"]).1.trim(), "1");
    drop(outside);

    // The bridge has route_localnet (the host's connections to 127.0.0.1:PORT are DNATed to
    // replicas through it): a container that routes 127.0.0.1 to the gateway must still not
    // reach the host's loopback. A datagram needs no answer, so it would be enough to talk to
    // a loopback-only UDP service of the host; the NAT table's rule drops it, and counts it.
    let private = ns.enter(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:9997").expect("bind 127.0.0.1:9997");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        s
    });
    let client_ns = a.run_dir().join("netns").join("client-1");
    let in_client = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", client_ns.display()))
            .args(args)
            .output()
            .expect("nsenter");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    in_client(&["ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"]);
    in_client(&["ip", "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local"]);
    in_client(&["ip", "route", "add", "127.0.0.1/32", "via", "10.123.0.1", "dev", "eth0"]);
    let ns_file = std::fs::File::open(&client_ns).expect("open client-1's network namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("join client-1's namespace");
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..3 {
            s.send_to(b"to the host's loopback", "127.0.0.1:9997").expect("send");
        }
    })
    .join()
    .expect("sender thread");
    let mut buf = [0u8; 64];
    let got = private.recv_from(&mut buf);
    assert!(got.is_err(), "a container reached the host's loopback: {got:?}");
    let table = ns.run(&["nft", "list", "table", "ip", "skiff"]).1;
    assert!(
        table.contains("ip daddr 127.0.0.0/8 counter packets 3 "),
        "the datagrams reached the host and were dropped by the NAT table's rule:\n{table}"
    );

    // A third web replica: the running client's /etc/hosts is rewritten in place.
    a.write_manifest(&manifest(3));
    st = wait_status(&ns, &a, "web-3 running", |st| all_running(st, "web", 3));
    let w3 = address(&st, "web-3");
    assert!(!seen.contains(&w3), "web-3 {w3} has an address of its own: {seen:?}");
    skiff_tests::wait_until("client's /etc/hosts to list web-3", WAIT, || {
        a.rt(&["exec", "client-1", "cat", "/etc/hosts"]).stdout.contains(&format!("{w3}\tweb\n"))
    });
    assert!(!on_host(), "the host's namespace has no {BRIDGE}");
    down_leaves_no_network(&ns, &mut a, BRIDGE);
}

/// Two replicas behind one published port both take connections, round-robin; a container
/// port alone gets a host port chosen by the kernel, shown in status. After the agent is
/// SIGKILLed and started again, the replicas run on (same pids, same addresses), and the
/// ports come back, the chosen one on the same host port.
#[test]
fn a_published_port_spreads_over_replicas_and_comes_back_after_agent_sigkill() {
    let Some((ns, mut a)) = setup() else { return };
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest1\n  subnet: 10.123.1.0/24\nservices:\n{}",
        web(2, r#"["8080:80", "127.0.0.1::80", "9000-9001:80-81"]"#, SERVES)
    ));
    a.spawn();
    let st = wait_status(&ns, &a, "web (2) healthy behind 8080 and the chosen port", |st| {
        all_healthy(st, "web", 2)
            && port(st, "web", "8080:80/tcp")["backends"] == 2
            && port(st, "web", "127.0.0.1::80/tcp")["backends"] == 2
    });
    let p = port(&st, "web", "8080:80/tcp");
    assert_eq!(p["host_port"], 8080, "{p}");
    assert!(p.get("error").is_none(), "{p}");
    // 127.0.0.1 (the kernel's rules, once they are in) and [::1] (the agent's proxy).
    skiff_tests::wait_until("the DNAT rule for 8080", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("tcp dport 8080 dnat to numgen inc mod 2")
    });
    for addr in ["127.0.0.1:8080", "[::1]:8080"] {
        let (by, errors) = spread(&ns, addr.parse().unwrap(), 20);
        assert!(errors.is_empty(), "every request through {addr} answered: {errors:?}");
        assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["web-1", "web-2"], "{addr}: both answered: {by:?}");
        assert!(by.values().all(|n| *n == 10), "{addr}: round-robin: {by:?}");
    }
    // The range: 9000 → 80 (served), 9001 → 81 (nothing listens there: closed, not hung).
    assert_eq!(port(&st, "web", "9000:80/tcp")["host_port"], 9000);
    assert_eq!(port(&st, "web", "9001:81/tcp")["host_port"], 9001);
    let (by9000, _) = spread(&ns, "127.0.0.1:9000".parse().unwrap(), 2);
    assert_eq!(by9000.values().sum::<usize>(), 2, "{by9000:?}");
    let (_, errors9001) = spread(&ns, "127.0.0.1:9001".parse().unwrap(), 1);
    assert_eq!(errors9001.len(), 1, "port 81 has no server");
    // The chosen port.
    let chosen = port(&st, "web", "127.0.0.1::80/tcp");
    assert_eq!(chosen["host_ip"], "127.0.0.1", "{chosen}");
    let chosen_port = chosen["host_port"].as_u64().unwrap_or_else(|| panic!("no host port chosen: {chosen}")) as u16;
    let (by, errors) = spread(&ns, SocketAddr::from(([127, 0, 0, 1], chosen_port)), 4);
    assert!(errors.is_empty() && by.values().sum::<usize>() == 4, "{by:?} {errors:?}");
    let before_pids = pids(&st, "web");
    let before_addrs: Vec<Ipv4Addr> = ["web-1", "web-2"].iter().map(|id| address(&st, id)).collect();

    // SIGKILL: the proxies die with the agent; the containers do not.
    a.stop_with(libc::SIGKILL);
    a.spawn();
    let st = wait_status(&ns, &a, "the ports back with both replicas", |st| {
        all_healthy(st, "web", 2)
            && port(st, "web", "8080:80/tcp")["backends"] == 2
            && port(st, "web", "127.0.0.1::80/tcp")["backends"] == 2
    });
    assert_eq!(pids(&st, "web"), before_pids, "adopted, not restarted");
    let after_addrs: Vec<Ipv4Addr> = ["web-1", "web-2"].iter().map(|id| address(&st, id)).collect();
    assert_eq!(after_addrs, before_addrs, "same addresses");
    assert_eq!(port(&st, "web", "127.0.0.1::80/tcp")["host_port"], chosen_port, "the chosen port is kept");
    for addr in ["127.0.0.1:8080", "[::1]:8080"] {
        let (by, errors) = spread(&ns, addr.parse().unwrap(), 10);
        assert!(errors.is_empty(), "{addr}: {errors:?}");
        assert_eq!(by.len(), 2, "{addr}: both replicas answer after the restart: {by:?}");
    }

    // A third replica after the restart gets an address of its own (no duplicate).
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest1\n  subnet: 10.123.1.0/24\nservices:\n{}",
        web(3, r#"["8080:80", "127.0.0.1::80", "9000-9001:80-81"]"#, SERVES)
    ));
    let st = wait_status(&ns, &a, "web-3 healthy", |st| all_healthy(st, "web", 3));
    assert!(!before_addrs.contains(&address(&st, "web-3")), "web-3 has an address of its own");
    down_leaves_no_network(&ns, &mut a, "sktest1");
}

/// A replica that fails its health check never gets a connection through the published port,
/// although it runs and serves on its own address.
#[test]
fn an_unhealthy_replica_gets_no_traffic() {
    let Some((ns, mut a)) = setup() else { return };
    // Healthy only in web-1 (web-2 is replaced after its failed checks, and again...).
    let only_web1 = r#"["CMD-SHELL", "test $$(hostname) = web-1"]"#;
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest2\n  subnet: 10.123.2.0/24\nservices:\n{}",
        web(2, r#"["8080:80"]"#, only_web1)
    ));
    a.spawn();
    wait_status(&ns, &a, "web-1 healthy and web-2 running", |st| {
        replica(st, "web-1")["health"] == "healthy" && replica(st, "web-2")["state"] == "running"
    });
    // web-2 serves when asked directly: it would take traffic if it were sent any.
    let mut direct = Err(String::new());
    skiff_tests::wait_until("web-2 to answer on its own address", WAIT, || {
        let st = status(&ns, &a);
        let Some(addr) = st.is_object().then(|| replica(&st, "web-2")["address"].as_str().map(String::from)).flatten()
        else {
            return false;
        };
        let Ok(ip) = addr.parse::<Ipv4Addr>() else { return false };
        direct = ns.enter(move || http_get(SocketAddr::from((ip, 80))));
        direct.is_ok()
    });
    assert_eq!(direct.as_deref(), Ok("web-2"));
    let (by, errors) = spread(&ns, "127.0.0.1:8080".parse().unwrap(), 30);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["web-1"], "only the healthy replica answers: {by:?}");
    let st = status(&ns, &a);
    assert_eq!(port(&st, "web", "8080:80/tcp")["backends"], 1, "{st:#}");
    assert_ne!(replica(&st, "web-2")["health"], "healthy");
    down_leaves_no_network(&ns, &mut a, "sktest2");
}

/// Scaling 1 → 3 → 1 while a client loops over the published port: once the first replica is
/// healthy, no request fails — new replicas take traffic once healthy, leaving ones stop
/// getting it before they are stopped.
#[test]
fn scaling_while_a_client_loops_never_fails_a_request() {
    // The bridge from the agent's environment (SKIFF_BRIDGE, SKIFF_SUBNET: --bridge, --subnet).
    let Some((ns, mut a)) = setup_with_env(&["SKIFF_BRIDGE=sktest3", "SKIFF_SUBNET=10.123.3.0/24"]) else { return };
    let manifest = |n: u32| format!("services:\n{}", web(n, r#"["8080:80"]"#, SERVES));
    a.write_manifest(&manifest(1));
    a.spawn();
    let st = wait_status(&ns, &a, "web-1 healthy behind 8080", |st| {
        all_healthy(st, "web", 1) && port(st, "web", "8080:80/tcp")["backends"] == 1
    });
    assert!(address(&st, "web-1").to_string().starts_with("10.123.3."), "{st:#}");
    assert!(ns.run(&["ip", "link", "show", "sktest3"]).0, "the bridge of SKIFF_BRIDGE");
    // Three clients loop: two on the host's loopback, over IPv4 (the kernel's DNAT rules,
    // output hook) and IPv6 (the agent's proxy), and one from another machine (DNAT,
    // prerouting hook); the rules for web-1 go in in the background.
    let outside = outside_of(&ns);
    skiff_tests::wait_until("the DNAT rule for 8080", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("tcp dport 8080 dnat")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Answers>> = Arc::default();
    let seen_v6: Arc<Mutex<Answers>> = Arc::default();
    let seen_outside: Arc<Mutex<Answers>> = Arc::default();
    let client = |ns: &TestNetns, addr: &str, seen: &Arc<Mutex<Answers>>| client_loop(ns, addr, &stop, seen);
    let clients = [
        client(&ns, "127.0.0.1:8080", &seen),
        client(&ns, "[::1]:8080", &seen_v6),
        client(&outside, "192.0.2.1:8080", &seen_outside),
    ];
    let answered_by = |id: &str| {
        let n = |s: &Arc<Mutex<Answers>>| s.lock().unwrap().0.get(id).copied().unwrap_or(0);
        n(&seen).min(n(&seen_v6)).min(n(&seen_outside))
    };
    a.write_manifest(&manifest(3));
    wait_status(&ns, &a, "3 healthy replicas behind 8080", |st| {
        all_healthy(st, "web", 3) && port(st, "web", "8080:80/tcp")["backends"] == 3
    });
    skiff_tests::wait_until("every replica to answer the client", WAIT, || {
        ["web-1", "web-2", "web-3"].iter().all(|id| answered_by(id) > 0)
    });
    a.write_manifest(&manifest(1));
    wait_status(&ns, &a, "only web-1 left", |st| {
        service(st, "web")["replicas"].as_array().is_some_and(|r| r.len() == 1)
            && port(st, "web", "8080:80/tcp")["backends"] == 1
    });
    let after = answered_by("web-1");
    skiff_tests::wait_until("more answers from web-1", WAIT, || answered_by("web-1") > after + 20);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    for (what, seen) in [("loopback", &seen), ("IPv6 loopback", &seen_v6), ("another machine", &seen_outside)] {
        let (by, errors) = seen.lock().unwrap().clone();
        let n = by.values().sum::<usize>();
        assert!(
            errors.is_empty(),
            "{what}: {} failed requests (of {n}): {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }
    drop(outside);
    down_leaves_no_network(&ns, &mut a, "sktest3");
}

/// Issue 12: rolling updates of 4 replicas behind a published port while clients loop (a new
/// connection every 10 ms on 127.0.0.1 through the kernel's DNAT, on [::1] through the proxy,
/// and from another machine): start-first, then stop-first. Start-first fails no request (a new
/// replica takes traffic after its first passing check; an old one leaves the backends before
/// it is signalled); stop-first runs one replica short at a time and fails none either; and a
/// start-first update with the agent SIGKILLed and restarted in the middle fails none through
/// the kernel (IPv6 goes through the agent's proxy, which is down while the agent is).
#[test]
fn rolling_updates_under_a_client_loop_fail_no_request() {
    let Some((ns, mut a)) = setup_with_env(&["SKIFF_BRIDGE=sktest12", "SKIFF_SUBNET=10.123.12.0/24"]) else { return };
    let manifest = |gen: u32, order: &str| {
        let svc = web(4, r#"["8080:80"]"#, SERVES).replace(
            "    deploy:\n",
            &format!(
                "    environment: {{GEN: \"{gen}\"}}\n    deploy:\n      update_config: {{order: {order}, parallelism: 1, monitor: 500ms}}\n"
            ),
        );
        format!("services:\n{svc}")
    };
    let on = |st: &Value, rev: u64| {
        all_healthy(st, "web", 4)
            && service(st, "web")["replicas"].as_array().is_some_and(|rs| rs.iter().all(|r| r["revision"] == rev))
            && service(st, "web")["update"]["state"].as_str().is_none_or(|s| s == "completed")
            && port(st, "web", "8080:80/tcp")["backends"] == 4
    };
    a.write_manifest(&manifest(1, "start-first"));
    a.spawn();
    wait_status(&ns, &a, "4 healthy replicas behind 8080", |st| on(st, 1));
    let outside = outside_of(&ns);
    skiff_tests::wait_until("the DNAT rule for 8080", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("tcp dport 8080 dnat")
    });
    for (rev, order, kill) in [(2u64, "start-first", false), (3, "stop-first", false), (4, "start-first", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: [Arc<Mutex<Answers>>; 3] = Default::default();
        let client = |ns: &TestNetns, addr: &str, seen: &Arc<Mutex<Answers>>| client_loop(ns, addr, &stop, seen);
        let clients = [
            client(&ns, "127.0.0.1:8080", &seen[0]),
            client(&ns, "[::1]:8080", &seen[1]),
            client(&outside, "192.0.2.1:8080", &seen[2]),
        ];
        std::thread::sleep(Duration::from_millis(300));
        a.write_manifest(&manifest(rev as u32, order));
        if kill {
            // SIGKILL the agent once the first new replica serves, and start it again: the kernel
            // keeps serving meanwhile, and the next agent goes on with the update.
            wait_status(&ns, &a, "the first slot done", |st| {
                service(st, "web")["update"]["updated"].as_u64().is_some_and(|n| n >= 1)
                    && service(st, "web")["update"]["to"] == rev
            });
            a.stop_with(libc::SIGKILL);
            a.spawn();
        }
        let st = wait_status(&ns, &a, &format!("the {order} update to revision {rev} completed"), |st| on(st, rev));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client thread");
        }
        let ids: Vec<String> = replica_ids(&st, "web");
        // The service's name lists every replica, whatever its container id (`web-N.b`).
        let hosts =
            std::fs::read_to_string(a.root().join("containers").join(&ids[0]).join("hosts")).unwrap_or_default();
        let named = hosts.lines().filter(|l| l.split_whitespace().nth(1) == Some("web")).count();
        assert_eq!(named, 4, "{order}: `web` names every replica in {}'s hosts:\n{hosts}", ids[0]);
        for (what, seen) in ["loopback", "IPv6 loopback", "another machine"].iter().zip(&seen) {
            let (by, errors) = seen.lock().unwrap().clone();
            let n = by.values().sum::<usize>();
            eprintln!(
                "{order}{}: {what}: {n} requests, {} failed, answered by {by:?}",
                if kill { " + agent SIGKILL" } else { "" },
                errors.len()
            );
            if kill && *what == "IPv6 loopback" {
                continue; // the proxy is the agent's: it does not serve while the agent is dead
            }
            assert!(
                errors.is_empty(),
                "{order} update, {what}: {} failed requests (of {n}): {:?}",
                errors.len(),
                &errors[..errors.len().min(5)]
            );
            assert!(
                ids.iter().any(|id| by.contains_key(id)),
                "{order}, {what}: no answer from the new replicas {ids:?}: {by:?}"
            );
        }
    }
    drop(outside);
    down_leaves_no_network(&ns, &mut a, "sktest12");
}

/// A host port already in use is an error on that port of that service (in status), the rest
/// runs and is published; once the port is free it is published (retried). A bridge subnet
/// that overlaps a network of the host is an error on the bridged service, which creates
/// nothing, and services on other network modes run.
#[test]
fn a_busy_host_port_and_an_overlapping_subnet_are_errors_on_their_service_only() {
    let Some((ns, mut a)) = setup() else { return };
    let squatter = ns.enter(|| std::net::TcpListener::bind("0.0.0.0:8090").expect("bind 0.0.0.0:8090"));
    let other = web(1, r#"["8091:80"]"#, SERVES).replace("  web:", "  other:");
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest4\n  subnet: 10.123.4.0/24\nservices:\n{}{other}",
        web(1, r#"["8090:80"]"#, SERVES)
    ));
    a.spawn();
    let st = wait_status(&ns, &a, "8090 in error and 8091 published", |st| {
        port(st, "web", "8090:80/tcp").get("error").is_some() && port(st, "other", "8091:80/tcp")["backends"] == 1
    });
    let err = port(&st, "web", "8090:80/tcp")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("host port 8090/tcp is already in use"), "{err}");
    let (by, errors) = spread(&ns, "127.0.0.1:8091".parse().unwrap(), 2);
    assert!(errors.is_empty() && by.contains_key("other-1"), "{by:?} {errors:?}");
    drop(squatter);
    wait_status(&ns, &a, "8090 published once free", |st| {
        port(st, "web", "8090:80/tcp").get("error").is_none() && port(st, "web", "8090:80/tcp")["backends"] == 1
    });
    let (by, errors) = spread(&ns, "127.0.0.1:8090".parse().unwrap(), 2);
    assert!(errors.is_empty() && by.contains_key("web-1"), "{by:?} {errors:?}");

    // No bridged service left: the agent removes the bridge and the NAT table itself.
    a.write_manifest(&format!(
        "services:\n  alone:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    network_mode: none\n",
        image()
    ));
    wait_status(&ns, &a, "only alone running", |st| {
        all_running(st, "alone", 1) && service(st, "web").is_null() && service(st, "other").is_null()
    });
    skiff_tests::wait_until("the bridge and the NAT table to go", WAIT, || {
        !ns.run(&["ip", "link", "show", "sktest4"]).0 && !ns.run(&["nft", "list", "tables"]).1.contains("skiff")
    });
    down_leaves_no_network(&ns, &mut a, "sktest4");

    // An overlapping subnet: another interface of the namespace (a veth: this kernel may lack
    // the dummy driver) has 10.123.5.7/16.
    assert!(ns.run(&["ip", "link", "add", "skother0", "type", "veth", "peer", "name", "skother1"]).0);
    assert!(ns.run(&["ip", "addr", "add", "10.123.5.7/16", "dev", "skother0"]).0);
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest5\n  subnet: 10.123.6.0/24\nservices:\n{}  alone:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    network_mode: none\n",
        web(1, r#"["8092:80"]"#, SERVES),
        image()
    ));
    a.spawn();
    let st = wait_status(&ns, &a, "web failing with the overlap, alone running", |st| {
        all_running(st, "alone", 1) && replica(st, "web-1")["message"].as_str().is_some_and(|m| m.contains("overlaps"))
    });
    let msg = replica(&st, "web-1")["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("10.123.6.0/24 overlaps 10.123.5.7/16 on skother0") && msg.contains("x-skiff"), "{msg}");
    assert!(!ns.run(&["ip", "link", "show", "sktest5"]).0, "no bridge was made");
    assert!(!ns.run(&["nft", "list", "tables"]).1.contains("skiff"), "no NAT table was made");
    a.down();
}

/// From another machine (a second namespace of the test's, joined by a veth), a published
/// port is served by the kernel: DNAT round-robin over the healthy replicas, kept in line by
/// the agent. So it keeps working while the agent is frozen or dead, and a connection
/// established through it survives an agent SIGKILL and restart.
#[test]
fn from_another_machine_published_ports_go_through_the_kernel_and_outlive_the_agent() {
    let Some((ns, mut a)) = setup() else { return };
    let outside = outside_of(&ns);
    // web-3 never passes its check: it must never get a connection.
    let not_web3 = r#"["CMD-SHELL", "test $$(hostname) != web-3"]"#;
    a.write_manifest(&format!(
        r#"x-skiff:
  bridge: sktest6
  subnet: 10.123.7.0/24
services:
{}  echo:
    image: {}
    user: root
    command: ["nc", "-ll", "-p", "7", "-e", "cat"]
    ports: ["7007:7"]
    stop_grace_period: 1s
"#,
        web(3, r#"["8080:80"]"#, not_web3),
        image()
    ));
    a.spawn();
    wait_status(&ns, &a, "web-1, web-2 healthy behind 8080 and echo behind 7007", |st| {
        port(st, "web", "8080:80/tcp")["backends"] == 2 && port(st, "echo", "7007:7/tcp")["backends"] == 1
    });
    // The rules go in in the background.
    skiff_tests::wait_until("the DNAT rules for 8080 (2 backends) and 7007", WAIT, || {
        let t = ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1;
        t.contains("tcp dport 8080 dnat to numgen inc mod 2") && t.contains("tcp dport 7007 dnat")
    });
    let from_outside = |n: usize| spread(&outside, "192.0.2.1:8080".parse().unwrap(), n);
    let (by, errors) = from_outside(20);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["web-1", "web-2"], "healthy replicas only: {by:?}");
    assert!(by.values().all(|n| *n == 10), "round-robin: {by:?}");

    // A connection through the published port, established now.
    use std::io::{BufRead, BufReader, Write};
    let conn = outside.enter(|| std::net::TcpStream::connect("192.0.2.1:7007").expect("connect to 192.0.2.1:7007"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut echo = |word: &str| -> String {
        (&conn).write_all(format!("{word}\n").as_bytes()).expect("write to the echo server");
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the echo");
        line
    };
    assert_eq!(echo("before"), "before\n");

    // The agent frozen: its proxy cannot answer, the kernel still does.
    a.signal(libc::SIGSTOP);
    let (by, errors) = from_outside(10);
    assert!(errors.is_empty() && by.values().sum::<usize>() == 10, "served with the agent frozen: {by:?} {errors:?}");
    // From the agent's own host to its own addresses, 127.0.0.1 included: the output hook's
    // rules (the frozen proxy, which also listens there, cannot be what answers).
    for own in ["192.0.2.1:8080", "127.0.0.1:8080"] {
        let got = ns.enter(move || http_get(own.parse().unwrap()));
        assert!(matches!(got.as_deref(), Ok("web-1") | Ok("web-2")), "{own}: {got:?}");
    }
    // Killed (while frozen) and started again: the established connection carries on.
    a.stop_with(libc::SIGKILL);
    assert_eq!(echo("agent-dead"), "agent-dead\n");
    a.spawn();
    wait_status(&ns, &a, "the ports back", |st| {
        port(st, "web", "8080:80/tcp")["backends"] == 2 && port(st, "echo", "7007:7/tcp")["backends"] == 1
    });
    assert_eq!(echo("agent-back"), "agent-back\n");
    let (by, errors) = from_outside(10);
    assert!(errors.is_empty() && !by.contains_key("web-3"), "{by:?} {errors:?}");
    drop(reader);
    drop(conn);
    drop(outside); // its end of the pair goes with it, and so the pair
    down_leaves_no_network(&ns, &mut a, "sktest6");
}

/// One datagram to `addr` from a new socket (so a new flow: a new proxy session, a new
/// conntrack entry), from the calling thread's namespace; the answering replica's name, after
/// checking that the payload came back.
fn udp_ask(addr: SocketAddr, payload: &str) -> Result<String, String> {
    let any: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("an address");
    let socket = std::net::UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| format!("timeout: {e}"))?;
    socket.send_to(payload.as_bytes(), addr).map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("no answer from {addr}: {e}"))?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    match reply.split_once(' ') {
        Some((name, echoed)) if echoed == payload && from == addr => Ok(name.to_string()),
        _ => Err(format!("{addr} answered {reply:?} from {from}")),
    }
}

/// `n` datagrams to `addr`, each from a new socket, from inside `ns`: how many each replica
/// answered, and the failures.
fn udp_spread(ns: &TestNetns, addr: SocketAddr, n: usize) -> Answers {
    ns.enter(move || {
        let mut a = Answers::default();
        for i in 0..n {
            tally(&mut a, udp_ask(addr, &format!("ping-{i}")));
        }
        a
    })
}

/// Builds tests/fixtures/udp-hostname.rs, statically linked so that it runs in the busybox
/// test image, into `dir`.
fn udp_server(dir: &std::path::Path) -> std::path::PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/udp-hostname.rs");
    let out = dir.join("udp-hostname");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = std::process::Command::new(&rustc)
        .args(["--edition", "2021", "-C", "opt-level=1", "-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("running {rustc:?} (to build {src}): {e}"));
    assert!(built.status.success(), "building {src}: {}", String::from_utf8_lossy(&built.stderr));
    out
}

/// A published UDP port: every new flow goes to the next replica, over both paths (the
/// proxy on IPv6, the kernel's DNAT on IPv4 from this host and from another machine), and a
/// replica scaled away gets none afterwards.
#[test]
fn a_published_udp_port_spreads_flows_over_replicas_on_both_paths() {
    let Some((ns, mut a)) = setup() else { return };
    let outside = outside_of(&ns);
    let server = udp_server(a.dir());
    let manifest = |replicas: u32| {
        format!(
            r#"x-skiff:
  bridge: sktest7
  subnet: 10.123.8.0/24
services:
  names:
    image: {img}
    user: root
    command: ["/udp-hostname", "53"]
    volumes: ["{server}:/udp-hostname:ro"]
    ports: ["5353:53/udp"]
    stop_grace_period: 1s
    deploy:
      replicas: {replicas}
"#,
            img = image(),
            server = server.display()
        )
    };
    a.write_manifest(&manifest(2));
    a.spawn();
    let st = wait_status(&ns, &a, "names (2) behind 5353/udp", |st| port(st, "names", "5353:53/udp")["backends"] == 2);
    assert_eq!(port(&st, "names", "5353:53/udp")["host_port"], 5353);
    // No health check: a replica is a backend once it runs, maybe before its server has bound
    // its socket. Each is asked on its own address until it answers.
    for id in ["names-1", "names-2"] {
        let direct = SocketAddr::new(address(&st, id).into(), 53);
        skiff_tests::wait_until(&format!("{id} to answer on {direct}"), WAIT, || {
            ns.enter(move || udp_ask(direct, "ready")).as_deref() == Ok(id)
        });
    }

    // IPv6 loopback: the agent's proxy, a session per client socket, round-robin.
    let (by, errors) = udp_spread(&ns, "[::1]:5353".parse().unwrap(), 20);
    assert!(errors.is_empty(), "every datagram through [::1]:5353 answered: {errors:?}");
    assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["names-1", "names-2"], "{by:?}");
    assert!(by.values().all(|n| *n == 10), "round-robin over the proxy: {by:?}");
    // IPv4, from this host and from another machine: the kernel's rules.
    skiff_tests::wait_until("the DNAT rule for 5353/udp (2 backends)", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("udp dport 5353 dnat to numgen inc mod 2")
    });
    for (from, addr) in [(&ns, "127.0.0.1:5353"), (&outside, "192.0.2.1:5353")] {
        let (by, errors) = udp_spread(from, addr.parse().unwrap(), 20);
        assert!(errors.is_empty(), "every datagram through {addr} answered: {errors:?}");
        assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["names-1", "names-2"], "{addr}: {by:?}");
        assert!(by.values().all(|n| *n == 10), "{addr}: round-robin by the kernel: {by:?}");
    }

    // Scaled to one: names-2 gets no new flow on either path.
    a.write_manifest(&manifest(1));
    wait_status(&ns, &a, "names-2 gone", |st| {
        all_running(st, "names", 1) && port(st, "names", "5353:53/udp")["backends"] == 1
    });
    skiff_tests::wait_until("the DNAT rule for 5353/udp (1 backend)", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("udp dport 5353 dnat to numgen inc mod 1")
    });
    for (from, addr) in [(&ns, "[::1]:5353"), (&ns, "127.0.0.1:5353"), (&outside, "192.0.2.1:5353")] {
        let (by, errors) = udp_spread(from, addr.parse().unwrap(), 10);
        assert!(errors.is_empty(), "{addr}: {errors:?}");
        assert_eq!(by.get("names-1"), Some(&10), "{addr}: only names-1 is left: {by:?}");
    }
    drop(outside);
    down_leaves_no_network(&ns, &mut a, "sktest7");
}

/// A power cut: the agent, the containers and their shims die, the run state (a tmpfs) and
/// the mounts are gone, and the machine's network comes back empty: no bridge, no veth, no
/// nftables table. The next agent makes the bridge and the NAT table again, gives each
/// replica the address it had (the root, where addresses are recorded, is on disk), and
/// publishes the port again: nothing stale in the way, nothing doubled.
#[test]
fn after_a_power_cut_the_network_comes_back_as_it_was() {
    let Some((ns, mut a)) = setup() else { return };
    let img = image();
    a.write_manifest(&format!(
        r#"x-skiff:
  bridge: sktest8
  subnet: 10.123.9.0/24
services:
{}  client:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
"#,
        web(2, r#"["8080:80"]"#, SERVES)
    ));
    a.spawn();
    let ids = ["client-1", "web-1", "web-2"];
    let st = wait_status(&ns, &a, "web (2) healthy behind 8080, client running", |st| {
        port(st, "web", "8080:80/tcp")["backends"] == 2 && all_running(st, "client", 1)
    });
    let before: Vec<Ipv4Addr> = ids.iter().map(|id| address(&st, id)).collect();
    let old: Vec<i32> = ids.iter().map(|id| replica(&st, id)["pid"].as_i64().unwrap_or(0) as i32).collect();
    let dnat_for_both = || {
        skiff_tests::wait_until("the DNAT rule for 8080 (2 backends)", WAIT, || {
            ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("tcp dport 8080 dnat to numgen inc mod 2")
        })
    };
    dnat_for_both();
    let (by, errors) = spread(&ns, "127.0.0.1:8080".parse().unwrap(), 4);
    assert!(errors.is_empty() && by.len() == 2, "{by:?} {errors:?}");

    // The power cut.
    let shims = a.shim_pids();
    a.stop_with(libc::SIGKILL);
    let dead: Vec<i32> = old.iter().copied().filter(|p| *p > 0).chain(shims.values().copied()).collect();
    for p in &dead {
        if skiff_tests::agent::is_shim_of(*p, &a.root()) || old.contains(p) {
            skiff_tests::agent::kill(*p, libc::SIGKILL);
        }
    }
    for p in dead {
        skiff_tests::wait_until(&format!("process {p} to die"), WAIT, || !skiff_tests::agent::alive(p));
    }
    skiff_tests::unmount_under(&a.root().join("containers"));
    skiff_tests::safe_remove(&a.run_dir());
    skiff_tests::remove_cgroup(a.cgroup_parent());
    ns.reboot();
    assert!(!ns.run(&["ip", "link", "show", "sktest8"]).0, "the bridge went with the power");
    assert!(a.root().join("network").join("bridge.json").exists(), "the bridge record is on disk");

    a.spawn();
    let st = wait_status(&ns, &a, "web (2) healthy behind 8080 again, client running", |st| {
        all_healthy(st, "web", 2) && port(st, "web", "8080:80/tcp")["backends"] == 2 && all_running(st, "client", 1)
    });
    let after: Vec<Ipv4Addr> = ids.iter().map(|id| address(&st, id)).collect();
    assert_eq!(after, before, "each replica has the address it had ({ids:?})");
    for id in ids {
        let p = replica(&st, id)["pid"].as_i64().unwrap_or(0) as i32;
        assert!(!old.contains(&p), "{id}: pid {p} is a new container");
    }
    assert!(ns.run(&["ip", "link", "show", "sktest8"]).0, "the bridge is made again");
    assert!(ns.run(&["nft", "list", "table", "ip", "skiff"]).1.contains("masquerade"), "the NAT table again");
    dnat_for_both();
    let (by, errors) = spread(&ns, "127.0.0.1:8080".parse().unwrap(), 10);
    assert!(
        errors.is_empty(),
        "{errors:?}\n{}\n{:#}\n{}",
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1,
        status(&ns, &a),
        a.log_tail()
    );
    assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["web-1", "web-2"], "{by:?}");
    // Names still resolve over the new bridge, and no address is held twice.
    let get = r#"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 web 80"#;
    skiff_tests::wait_until("client to fetch http://web/", WAIT, || {
        a.rt(&["exec", "client-1", "sh", "-c", get]).stdout.contains("web-")
    });
    let held = held_addresses(&a);
    assert_eq!(held.len(), 3, "three addresses held: {held:?}");
    down_leaves_no_network(&ns, &mut a, "sktest8");
}

/// When the published ports' DNAT rules cannot be applied (here: an `nft` in the agent's PATH
/// that passes everything to the real one but fails any script for `table ip skiff_ports`
/// while a flag file exists), the ports are still served, by the agent's proxy, and status
/// says so on each of them; the rules are tried again, and once they apply the warning goes
/// and the kernel serves (checked with the agent frozen).
#[test]
fn when_the_dnat_rules_cannot_be_applied_the_proxy_serves_and_status_says_so() {
    let real = skiff_tests::which("nft");
    let Some(real) = real else {
        skip("nft is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("fail-skiff_ports");
    let wrapper = dir.path().join("nft");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# Fault injection (skiff's network tests): fails scripts for table ip skiff_ports while {flag} exists.
if [ -e '{flag}' ] && [ "$1" = "-f" ]; then
  script=$(cat)
  case "$script" in
    *skiff_ports*) echo "Error: injected by the test: Could not process rule" >&2; exit 1 ;;
  esac
  printf '%s\n' "$script" | exec '{real}' "$@"
fi
exec '{real}' "$@"
"#,
            flag = flag.display(),
            real = real.display()
        ),
    )
    .expect("write the nft wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(&flag, "").expect("flag");
    let path = format!("PATH={}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let Some((ns, mut a)) = setup_with_env(&[&path]) else { return };
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest9\n  subnet: 10.123.10.0/24\nservices:\n{}",
        web(2, r#"["8080:80"]"#, SERVES)
    ));
    a.spawn();
    let st = wait_status(&ns, &a, "8080 with 2 backends and a warning", |st| {
        let p = port(st, "web", "8080:80/tcp");
        p["backends"] == 2 && p["warning"].as_str().is_some_and(|w| w.contains("injected by the test"))
    });
    let w = port(&st, "web", "8080:80/tcp")["warning"].as_str().unwrap_or_default().to_string();
    assert!(w.contains("served by the agent's proxy alone"), "{w}");
    assert!(port(&st, "web", "8080:80/tcp").get("error").is_none(), "published all the same: {st:#}");
    let tables = ns.run(&["nft", "list", "tables"]).1;
    assert!(tables.contains("table ip skiff\n") && !tables.contains("skiff_ports"), "{tables}");
    let (by, errors) = spread(&ns, "127.0.0.1:8080".parse().unwrap(), 10);
    assert!(errors.is_empty() && by.len() == 2, "the proxy serves 127.0.0.1 meanwhile: {by:?} {errors:?}");
    let logged = a.log().lines().filter(|l| l.contains("injected by the test")).count();
    assert!(logged >= 1, "the failure is logged:\n{}", a.log());

    // The fault goes: the next try (within seconds) applies the rules, the warning goes.
    std::fs::remove_file(&flag).expect("remove the flag");
    wait_status(&ns, &a, "the warning gone", |st| {
        let p = port(st, "web", "8080:80/tcp");
        p["backends"] == 2 && p.get("warning").is_none()
    });
    assert!(ns
        .run(&["nft", "list", "table", "ip", "skiff_ports"])
        .1
        .contains("tcp dport 8080 dnat to numgen inc mod 2"));
    assert_eq!(
        a.log().lines().filter(|l| l.contains("injected by the test")).count(),
        logged,
        "the same failure is logged once, not at every try:\n{}",
        a.log()
    );
    assert!(a.log().contains("the DNAT rules are applied now"), "{}", a.log());
    a.signal(libc::SIGSTOP);
    let got = ns.enter(|| http_get("127.0.0.1:8080".parse().unwrap()));
    a.signal(libc::SIGCONT);
    assert!(matches!(got.as_deref(), Ok("web-1") | Ok("web-2")), "the kernel serves now: {got:?}");
    down_leaves_no_network(&ns, &mut a, "sktest9");
}

/// A firewall reload (`flush ruleset`, as `/etc/nftables.conf` starts with) deletes every
/// table, the agent's too: it notices at once (nftables notifications) and puts back the NAT
/// table, with its drop of containers' packets to the host's loopback, and the published
/// ports' rules, which serve again without the agent (checked frozen). What the agent removes
/// itself, when no bridged service is left, stays removed.
#[test]
fn tables_deleted_by_a_firewall_reload_come_back() {
    let Some((ns, mut a)) = setup() else { return };
    let outside = outside_of(&ns);
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest10\n  subnet: 10.123.11.0/24\nservices:\n{}",
        web(2, r#"["8080:80"]"#, SERVES)
    ));
    a.spawn();
    wait_status(&ns, &a, "web (2) behind 8080", |st| port(st, "web", "8080:80/tcp")["backends"] == 2);
    let tables_whole = || {
        let nat = ns.run(&["nft", "list", "table", "ip", "skiff"]).1;
        let ports = ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1;
        nat.contains("masquerade")
            && nat.contains("ip daddr 127.0.0.0/8 counter")
            && ports.contains("tcp dport 8080 dnat to numgen inc mod 2")
    };
    skiff_tests::wait_until("the NAT table and the DNAT rule (2 backends)", WAIT, tables_whole);

    let (ok, _) = ns.run(&["nft", "flush", "ruleset"]);
    assert!(ok, "nft flush ruleset");
    skiff_tests::wait_until("both tables back", WAIT, tables_whole);
    let log = a.log();
    for table in ["table ip skiff (the bridge's NAT) was deleted", "table ip skiff_ports was deleted"] {
        assert!(log.contains(table), "the agent says what it put back ({table}):\n{log}");
    }
    a.signal(libc::SIGSTOP);
    let (by, errors) = spread(&outside, "192.0.2.1:8080".parse().unwrap(), 10);
    let own = ns.enter(|| http_get("127.0.0.1:8080".parse().unwrap()));
    a.signal(libc::SIGCONT);
    assert!(errors.is_empty() && by.len() == 2, "the kernel serves again: {by:?} {errors:?}");
    assert!(matches!(own.as_deref(), Ok("web-1") | Ok("web-2")), "127.0.0.1: {own:?}");

    // No bridged service left: the agent removes its tables, and they stay removed.
    a.write_manifest(&format!(
        "services:\n  alone:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    network_mode: none\n",
        image()
    ));
    let gone = || !ns.run(&["nft", "list", "tables"]).1.contains("skiff");
    skiff_tests::wait_until("the tables to go", WAIT, gone);
    std::thread::sleep(Duration::from_secs(1));
    assert!(gone(), "what the agent removed came back: {}", ns.run(&["nft", "list", "tables"]).1);
    drop(outside);
    a.down();
}

/// Another firewall whose forward chain drops by policy (as Docker's `FORWARD` does) blocks
/// the bridge whatever the agent's own table accepts: each bridged service shows a warning
/// that names the chain and the rules that let the bridge through; with those rules in, the
/// replicas reach other networks, and the warning goes (the agent hears of the change).
#[test]
fn a_firewall_that_drops_forwarding_is_a_warning_that_says_what_to_run() {
    let Some((ns, mut a)) = setup() else { return };
    let docker_like = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority 0; policy drop;\n\t\toifname \"docker0\" accept\n\t}\n}\n";
    nft_in(&ns, docker_like);
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest11\n  subnet: 10.123.12.0/24\nservices:\n  client:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n",
        image()
    ));
    a.spawn();
    let warned = |st: &Value| {
        service(st, "client")["warnings"]
            .as_array()
            .and_then(|w| w.iter().filter_map(|w| w.as_str()).find(|w| w.contains("dropped by another firewall")))
            .map(str::to_string)
    };
    let st = wait_status(&ns, &a, "client running with a firewall warning", |st| {
        all_running(st, "client", 1) && warned(st).is_some()
    });
    let w = warned(&st).unwrap_or_default();
    let rules = [
        "nft insert rule ip filter FORWARD iifname \"sktest11\" accept",
        "nft insert rule ip filter FORWARD oifname \"sktest11\" ct state established,related accept",
        "nft insert rule ip filter FORWARD oifname \"sktest11\" ct status dnat accept",
    ];
    assert!(w.contains("table ip filter, chain FORWARD") && rules.iter().all(|r| w.contains(r)), "{w}");

    // The warning is true: the client cannot reach another machine...
    let outside = outside_of(&ns);
    let listener = outside.enter(|| std::net::TcpListener::bind("192.0.2.2:9999").expect("bind 192.0.2.2:9999"));
    let reach = || a.rt(&["exec", "client-1", "sh", "-c", "echo hi | nc -w 2 192.0.2.2 9999"]).success();
    assert!(!reach(), "the client got through a dropping FORWARD chain");
    // ...until the rules it names are in; then the warning goes.
    for r in rules {
        let args: Vec<&str> = shell_words(r);
        assert!(ns.run(&args).0, "{r}");
    }
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    assert!(reach(), "the client reaches another machine with the rules in");
    assert_eq!(accept.join().expect("accept").expect("accepted").ip().to_string(), "192.0.2.1");
    wait_status(&ns, &a, "the firewall warning gone", |st| warned(st).is_none());
    drop(outside);
    down_leaves_no_network(&ns, &mut a, "sktest11");
}

/// A host firewall that drops what the host receives (an input chain with policy drop, as a
/// hardened box has) drops the replicas' queries to the bridge's name server: a warning names
/// the chain and the two rules to run; it is true (nslookup fails), and once the rules are in
/// names resolve and the warning goes.
#[test]
fn a_host_firewall_that_drops_input_is_a_warning_for_the_name_server() {
    let Some((ns, mut a)) = setup() else { return };
    let hardened = "table inet host {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t\tiifname \"lo\" accept\n\t\tct state established,related accept\n\t}\n}\n";
    nft_in(&ns, hardened);
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest12\n  subnet: 10.123.13.0/24\nservices:\n  client:\n    image: {}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n",
        image()
    ));
    a.spawn();
    let warned = |st: &Value| {
        service(st, "client")["warnings"]
            .as_array()
            .and_then(|w| w.iter().filter_map(|w| w.as_str()).find(|w| w.contains("name server")))
            .map(str::to_string)
    };
    let st = wait_status(&ns, &a, "client running with a name-server warning", |st| {
        all_running(st, "client", 1) && warned(st).is_some()
    });
    let w = warned(&st).unwrap_or_default();
    let rules = [
        "nft insert rule inet host input iifname \"sktest12\" udp dport 53 accept",
        "nft insert rule inet host input iifname \"sktest12\" tcp dport 53 accept",
    ];
    assert!(w.contains("table inet host, chain input") && rules.iter().all(|r| w.contains(r)), "{w}");
    let client = address(&st, "client-1");
    let out = nslookup(&a, "client");
    assert!(!out.contains(&format!("Address: {client}")), "the query got through a dropping input chain:\n{out}");
    for r in rules {
        assert!(ns.run(&shell_words(r)).0, "{r}");
    }
    let mut out = String::new();
    skiff_tests::wait_until("nslookup client to answer with the rules in", WAIT, || {
        out = nslookup(&a, "client");
        out.contains(&format!("Address: {client}"))
    });
    // The ruleset changed: the agent looks again (notifications) and the warning goes.
    wait_status(&ns, &a, "the name-server warning gone", |st| warned(st).is_none());
    down_leaves_no_network(&ns, &mut a, "sktest12");
}

/// Applies the nftables `script` in `ns` (another firewall's tables, for the warning tests).
fn nft_in(ns: &TestNetns, script: &str) {
    let mut nft = std::process::Command::new("nsenter")
        .arg(ns.nsenter_arg())
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(&mut nft.stdin.take().expect("stdin"), script.as_bytes()).expect("write");
    assert!(nft.wait().expect("nft").success(), "nft -f: {script}");
}

/// `s` split at spaces, with `"quoted"` words kept whole and unquoted (enough for the rules
/// the warning gives).
fn shell_words(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            out.push(&q[..end]);
            rest = q.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// DNS on the bridge (issue 13)

/// A DNS query for `name` (type A, id `id`), as a client sends it.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// A tiny upstream name server on 127.0.0.1:53 of `ns`, for the service's `dns:`: it answers
/// `known.example` (A 192.0.2.99; NODATA for other types) and nothing else, until `stop`.
/// Returns how many queries it saw.
fn tiny_upstream(ns: &TestNetns, stop: &Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Arc<Mutex<usize>>) {
    let sock = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53 in the test namespace"));
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (stop, seen) = (stop.clone(), Arc::new(Mutex::new(0)));
    let counter = seen.clone();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let want = dns_query(0, "known.example");
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
            *counter.lock().unwrap() += 1;
            let q = &buf[..n];
            // the question (case-insensitively) is known.example; its type decides the answer
            let qend = want.len() - 4;
            if n < want.len() || !q[12..qend].eq_ignore_ascii_case(&want[12..qend]) {
                continue;
            }
            let mut r = q[..want.len()].to_vec();
            r[2] |= 0x80;
            r[3] = 0x80;
            r[10] = 0;
            r[11] = 0; // no OPT in return
            if q[qend..qend + 2] == [0, 1] {
                r[7] = 1;
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 99]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    (h, seen)
}

/// `nslookup NAME` in client-1 (busybox: DNS only): its output.
fn nslookup(a: &Agent, name: &str) -> String {
    let out = a.rt(&["exec", "client-1", "nslookup", name]);
    format!("{}{}", out.stdout, out.stderr)
}

/// Runs `f` on a thread that joined replica `id`'s network namespace.
fn in_replica<T: Send + 'static>(a: &Agent, id: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = a.run_dir().join("netns").join(id);
    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("join the replica's namespace");
        f()
    })
    .join()
    .expect("the thread in the replica's namespace panicked")
}

/// Bridged replicas find services over DNS on the bridge's gateway (busybox `nslookup` asks
/// DNS only, never /etc/hosts): every replica's address, a new one after scaling, replica
/// names; other names go to the service's `dns:` server (a tiny one of the test's on the
/// agent's loopback, which a container could not reach itself). The gateway's port 53 answers
/// nothing that arrives from outside the bridge; a flood of 50k queries from a replica leaves
/// the agent's memory bounded and it answers after; after a SIGKILL the adopted replicas are
/// answered again.
#[test]
fn services_resolve_over_dns_on_the_gateway_and_nowhere_else() {
    const BRIDGE: &str = "sktest7";
    let Some((ns, mut a)) = setup() else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let (upstream, upstream_seen) = tiny_upstream(&ns, &stop);
    let img = image();
    let manifest = |db: u32| {
        format!(
            r#"x-skiff:
  bridge: {BRIDGE}
  subnet: 10.124.0.0/24
services:
  db:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    hostname: database
    deploy:
      replicas: {db}
  client:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    dns: [127.0.0.1]
"#
        )
    };
    a.write_manifest(&manifest(1));
    a.spawn();
    let st =
        wait_status(&ns, &a, "db and client running", |st| all_running(st, "db", 1) && all_running(st, "client", 1));
    let db1 = address(&st, "db-1");
    let resolv = a.rt(&["exec", "client-1", "cat", "/etc/resolv.conf"]).stdout;
    assert!(resolv.contains("nameserver 10.124.0.1\n") && resolv.contains("options ndots:0"), "{resolv}");
    assert_eq!(resolv.matches("nameserver").count(), 1, "the gateway only:\n{resolv}");
    let mut out = String::new();
    skiff_tests::wait_until("nslookup db to answer", WAIT, || {
        out = nslookup(&a, "db");
        out.contains(&format!("Address: {db1}"))
    });
    assert!(out.contains("Server:") && out.contains("10.124.0.1"), "asked the gateway:\n{out}");
    for name in ["db-1", "DB", "database"] {
        let out = nslookup(&a, name);
        assert!(out.contains(&format!("Address: {db1}")), "{name}:\n{out}");
    }

    // Scaling up: the new replica is answered too.
    a.write_manifest(&manifest(2));
    let st = wait_status(&ns, &a, "db-2 running", |st| all_running(st, "db", 2));
    let db2 = address(&st, "db-2");
    skiff_tests::wait_until("nslookup db to give db-2 too", WAIT, || {
        out = nslookup(&a, "db");
        out.contains(&format!("Address: {db1}")) && out.contains(&format!("Address: {db2}"))
    });

    // Other names are forwarded to the client's `dns:` server.
    let before = *upstream_seen.lock().unwrap();
    let out = nslookup(&a, "known.example");
    assert!(out.contains("Address: 192.0.2.99"), "forwarded to the dns: server:\n{out}");
    assert!(*upstream_seen.lock().unwrap() > before, "the upstream was asked");

    // From outside the bridge: a second namespace routed to the gateway address gets refused
    // (the kernel's port unreachable / reset: no socket takes it), never an answer.
    let outside = outside_of(&ns);
    assert!(outside.run(&["ip", "route", "add", "10.124.0.0/24", "via", "192.0.2.1"]).0);
    let (udp, tcp) = outside.enter(|| {
        let s = std::net::UdpSocket::bind("192.0.2.2:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.connect("10.124.0.1:53").unwrap();
        s.send(&dns_query(77, "db")).unwrap();
        let mut buf = [0u8; 512];
        let udp = s.recv(&mut buf).map(|n| buf[..n].to_vec());
        let tcp = std::net::TcpStream::connect_timeout(&"10.124.0.1:53".parse().unwrap(), Duration::from_secs(3));
        (udp, tcp.map(drop))
    });
    let udp_err = udp.expect_err("an answer to a query from outside the bridge");
    assert_eq!(udp_err.kind(), std::io::ErrorKind::ConnectionRefused, "reached the namespace, no socket: {udp_err}");
    let tcp_err = tcp.expect_err("a TCP connection to the gateway's port 53 from outside the bridge");
    assert_eq!(tcp_err.kind(), std::io::ErrorKind::ConnectionRefused, "{tcp_err}");
    drop(outside);

    // Over TCP too (a client retries there after a truncated answer).
    let tcp_answer = in_replica(&a, "client-1", || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect("10.124.0.1:53").expect("connect to the gateway's port 53");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let q = dns_query(0x5151, "db");
        let mut msg = (q.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        c.write_all(&msg).unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut r).unwrap();
        r
    });
    assert_eq!(&tcp_answer[..2], &[0x51, 0x51], "the query's id");
    assert_eq!(u16::from_be_bytes([tcp_answer[6], tcp_answer[7]]), 2, "both db addresses over TCP");
    assert!(tcp_answer.windows(4).any(|w| w == db2.octets()), "db-2's address in the answer");

    // A flood from client-1: 50k queries, half for names the agent answers, half forwarded
    // to an upstream that never answers them. The agent's memory stays bounded and it answers.
    let agent_pid = a.pid();
    let rss_before = skiff_tests::agent::rss_kib(agent_pid);
    let answered = in_replica(&a, "client-1", || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("10.124.0.1:53").unwrap();
        s.set_nonblocking(true).unwrap();
        let (mut answered, mut buf) = (0usize, [0u8; 1500]);
        for i in 0..50_000u32 {
            let name = if i % 2 == 0 { "db".to_string() } else { format!("flood-{i}.example") };
            let _ = s.send(&dns_query(i as u16, &name));
            while s.recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
        answered
    });
    let rss_after = skiff_tests::agent::rss_kib(agent_pid);
    eprintln!("flood: {answered} answers read; agent RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(answered > 0, "some of the flood was answered");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the agent's RSS stays bounded under the flood: {rss_before} KiB before, {rss_after} KiB after"
    );
    skiff_tests::wait_until("nslookup db to answer after the flood", WAIT, || {
        nslookup(&a, "db").contains(&format!("Address: {db1}"))
    });

    // After a SIGKILL the adopted replicas are answered by the new agent's server.
    a.stop_with(libc::SIGKILL);
    a.spawn();
    wait_status(&ns, &a, "db and client adopted", |st| all_running(st, "db", 2) && all_running(st, "client", 1));
    skiff_tests::wait_until("nslookup db after the agent restart", WAIT, || {
        let out = nslookup(&a, "db");
        out.contains(&format!("Address: {db1}")) && out.contains(&format!("Address: {db2}"))
    });
    assert!(nslookup(&a, "known.example").contains("Address: 192.0.2.99"), "the client's dns: is known again");

    stop.store(true, Ordering::SeqCst);
    upstream.join().expect("upstream thread");
    down_leaves_no_network(&ns, &mut a, BRIDGE);
}

/// `container_name` is the replica's host name and one more name for it on the bridge, in
/// the other replicas' hosts files and over DNS.
#[test]
fn a_container_name_is_a_name_on_the_bridge() {
    const BRIDGE: &str = "sktest8";
    let Some((ns, mut a)) = setup() else { return };
    let img = image();
    a.write_manifest(&format!(
        r#"x-skiff:
  bridge: {BRIDGE}
  subnet: 10.125.0.0/24
services:
  ha:
    image: {img}
    container_name: homeassistant
    command: ["sleep", "1000"]
    stop_grace_period: 1s
  client:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
"#
    ));
    a.spawn();
    let st =
        wait_status(&ns, &a, "ha and client running", |st| all_running(st, "ha", 1) && all_running(st, "client", 1));
    let ha = address(&st, "ha-1");
    assert_eq!(a.rt(&["exec", "ha-1", "hostname"]).stdout.trim(), "homeassistant");
    let mut hosts = String::new();
    skiff_tests::wait_until("client's hosts file to name homeassistant", WAIT, || {
        hosts = a.rt(&["exec", "client-1", "cat", "/etc/hosts"]).stdout;
        hosts.contains(&format!("{ha}\thomeassistant\n"))
    });
    let out = nslookup(&a, "homeassistant");
    assert!(out.contains(&format!("Address: {ha}")), "{out}");
    down_leaves_no_network(&ns, &mut a, BRIDGE);
}

/// An httpd serving its hostname (= its replica id), for the user-defined networks' test.
fn httpd_service(name: &str, extra: &str) -> String {
    format!(
        r#"  {name}:
    image: {img}
    user: root
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
{extra}"#,
        img = image()
    )
}

/// `GET /` from replica `from` to `host` (a name or an address) with nc: the page, or an error
/// with what nc said.
fn fetch(a: &Agent, from: &str, host: &str) -> Result<String, String> {
    let get = format!(r#"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 {host} 80"#);
    let out = a.rt(&["exec", from, "sh", "-c", &get]);
    match out.stdout.split_once("\r\n\r\n") {
        Some((_, body)) if out.success() && !body.trim().is_empty() => Ok(body.trim().to_string()),
        _ => Err(format!("{out}")),
    }
}

/// The IPv4 address of `ifname` in replica `id` (from `ip -o -4 addr`).
fn addr_in(a: &Agent, id: &str, ifname: &str) -> Ipv4Addr {
    let out = a.rt(&["exec", id, "ip", "-o", "-4", "addr", "show", ifname]);
    let word = out.stdout.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap_or_default();
    word.split('/').next().unwrap_or_default().parse().unwrap_or_else(|_| panic!("{id} {ifname}: {out}"))
}

/// User-defined networks (compose's top-level `networks:`): `web` on front, `db` on an
/// internal back network with a fixed subnet, `api` on both (aliases, a fixed address, a
/// published port), `plain` on the default network. Each network is a bridge of its own;
/// names resolve only between services that share a network; nothing crosses from one network
/// to another (by address either); the internal network has no way out; `skiff down` leaves
/// no bridge, veth or table.
#[test]
fn user_defined_networks_isolate_their_services_and_resolve_names_per_network() {
    let Some((ns, mut a)) = setup() else { return };
    let manifest = format!(
        "x-skiff:\n  bridge: sktest1\n  subnet: 10.124.0.0/24\nservices:\n{}{}{}{}networks:\n  front: {{}}\n  back:\n    internal: true\n    ipam:\n      config:\n        - subnet: 10.125.2.0/24\n",
        httpd_service("web", "    networks: [front]\n"),
        httpd_service(
            "api",
            "    ports: [\"8080:80\"]\n    networks:\n      front:\n        aliases: [api-front]\n      back:\n        aliases: [backend]\n        ipv4_address: 10.125.2.10\n"
        ),
        httpd_service("db", "    networks: [back]\n"),
        httpd_service("plain", ""),
    );
    a.write_manifest(&manifest);
    a.spawn();
    let st = wait_status(&ns, &a, "web, api, db and plain running", |st| {
        ["web", "api", "db", "plain"].iter().all(|s| all_running(st, s, 1))
    });

    // Each network has its bridge; api has one interface per network, in order.
    for bridge in ["sk-front", "sk-back", "sktest1"] {
        assert!(ns.run(&["ip", "link", "show", bridge]).0, "bridge {bridge}");
    }
    let api_back = addr_in(&a, "api-1", "eth1");
    assert_eq!(api_back, Ipv4Addr::new(10, 125, 2, 10), "ipv4_address is honoured");
    let api_front = addr_in(&a, "api-1", "eth0");
    assert_eq!(address(&st, "api-1"), api_front, "published ports go to the address on the non-internal network");
    let web = addr_in(&a, "web-1", "eth0");
    let db = addr_in(&a, "db-1", "eth0");
    let plain = address(&st, "plain-1");
    assert_eq!(db.octets()[..3], [10, 125, 2], "db {db} in back's subnet");
    assert_eq!(plain.octets()[..3], [10, 124, 0], "plain {plain} on the default bridge");
    let front_gw = Ipv4Addr::from(u32::from(api_front) & 0xffff_ff00 | 1);
    let route = a.rt(&["exec", "api-1", "ip", "route"]).stdout;
    assert!(route.contains(&format!("default via {front_gw} dev eth0")), "api's default route via front:\n{route}");
    let route = a.rt(&["exec", "db-1", "ip", "route"]).stdout;
    assert!(!route.contains("default"), "an internal network gives no default route:\n{route}");

    // Names: api reaches web, db and db's alias; web reaches api and its front alias.
    let mut got = Ok(String::new());
    for (from, host, want) in [
        ("api-1", "web", "web-1"),
        ("api-1", "db", "db-1"),
        ("web-1", "api", "api-1"),
        ("web-1", "api-front", "api-1"),
        ("db-1", "backend", "api-1"),
    ] {
        skiff_tests::wait_until(&format!("{from} to fetch http://{host}/"), WAIT, || {
            got = fetch(&a, from, host);
            got.as_deref() == Ok(want)
        });
    }
    let hosts = |id: &str| a.rt(&["exec", id, "cat", "/etc/hosts"]).stdout;
    let (web_hosts, db_hosts, api_hosts) = (hosts("web-1"), hosts("db-1"), hosts("api-1"));
    assert!(
        web_hosts.contains(&format!("{api_front}\tapi\n")) && !web_hosts.contains(&api_back.to_string()),
        "{web_hosts}"
    );
    assert!(
        !web_hosts.contains("\tdb") && !web_hosts.contains("backend") && !web_hosts.contains("plain"),
        "{web_hosts}"
    );
    assert!(db_hosts.contains(&format!("{api_back}\tbackend\n")) && !db_hosts.contains("\tweb"), "{db_hosts}");
    assert!(api_hosts.contains(&format!("{db}\tdb\n")) && api_hosts.contains(&format!("{web}\tweb\n")), "{api_hosts}");
    assert!(!api_hosts.contains("plain"), "api shares no network with plain:\n{api_hosts}");

    // The same names over DNS (busybox nslookup asks DNS only): each network's name server
    // answers its own names, and api (on both) finds the names of both through its first
    // network's server; web does not find db's, nor db's internal server anything outside.
    let ask = |id: &str, name: &str| {
        let out = a.rt(&["exec", id, "nslookup", name]);
        format!("{}{}", out.stdout, out.stderr)
    };
    for (from, name, addr) in [
        ("api-1", "db", db),
        ("api-1", "backend", api_back),
        ("api-1", "web", web),
        ("web-1", "api-front", api_front),
        ("db-1", "backend", api_back),
    ] {
        let mut out = String::new();
        skiff_tests::wait_until(&format!("{from}: nslookup {name}"), WAIT, || {
            out = ask(from, name);
            out.contains(&format!("Address: {addr}"))
        });
    }
    for (from, name, addr) in [("web-1", "db", db), ("db-1", "web", web), ("web-1", "plain", plain)] {
        let out = ask(from, name);
        assert!(!out.contains(&format!("Address: {addr}")), "{from} found {name} over DNS:\n{out}");
    }

    // Isolation by address: no network reaches another (user-defined or default), both ways.
    for (from, to) in
        [("web-1", db), ("db-1", web), ("web-1", plain), ("plain-1", web), ("plain-1", db), ("db-1", plain)]
    {
        let r = fetch(&a, from, &to.to_string());
        assert!(r.is_err(), "{from} reached {to} on a network it is not on: {r:?}");
    }
    assert_eq!(fetch(&a, "api-1", &db.to_string()).as_deref(), Ok("db-1"), "on a shared network, by address too");

    // Outbound: from the default and the front network it works, from the internal one not.
    let outside = outside_of(&ns);
    let listener = outside.enter(|| std::net::TcpListener::bind("192.0.2.2:9999").expect("bind 192.0.2.2:9999"));
    listener.set_nonblocking(true).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut peers, start) = (Vec::new(), std::time::Instant::now());
        while peers.len() < 2 && start.elapsed() < WAIT {
            match listener.accept() {
                Ok((_, p)) => peers.push(p.ip().to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        peers
    });
    for from in ["plain-1", "web-1"] {
        let out = a.rt(&["exec", from, "sh", "-c", "echo hi | nc -w 3 192.0.2.2 9999"]);
        assert!(out.success(), "{from} reaches an address outside: {out}");
    }
    let peers = accept.join().expect("accept thread");
    assert_eq!(peers, ["192.0.2.1", "192.0.2.1"], "both connections arrived, masqueraded");
    let out = a.rt(&["exec", "db-1", "sh", "-c", "echo hi | nc -w 2 192.0.2.2 9999"]);
    assert!(!out.success(), "the internal network has no way out: {out}");
    // Not even with a default route of its own: the table drops what leaves the bridge.
    let db_ns = a.run_dir().join("netns").join("db-1");
    let st_route = std::process::Command::new("nsenter")
        .arg(format!("--net={}", db_ns.display()))
        .args(["ip", "route", "add", "default", "via", "10.125.2.1"])
        .status()
        .expect("nsenter");
    assert!(st_route.success());
    let out = a.rt(&["exec", "db-1", "sh", "-c", "echo hi | nc -w 2 192.0.2.2 9999"]);
    assert!(!out.success(), "the internal network forwards nothing out: {out}");

    // The published port of the two-network service: from the namespace's loopback (DNAT in
    // output) and from "another machine" (DNAT in prerouting, forwarded into front).
    let (from_lo, _) = spread(&ns, "127.0.0.1:8080".parse().unwrap(), 3);
    assert_eq!(from_lo.get("api-1"), Some(&3), "{from_lo:?}");
    let mut page = Err(String::new());
    skiff_tests::wait_until("api's port from outside", WAIT, || {
        page = outside.enter(|| http_get("192.0.2.1:8080".parse().unwrap()));
        page.as_deref() == Ok("api-1")
    });
    drop(outside);

    a.down();
    skiff_tests::wait_until("the veths to go", WAIT, || {
        let (ok, out) = ns.run(&["ip", "-o", "link", "show", "type", "veth"]);
        ok && out.trim().is_empty()
    });
    for bridge in ["sk-front", "sk-back", "sktest1"] {
        assert!(!ns.run(&["ip", "link", "show", bridge]).0, "skiff down removed the bridge {bridge}");
    }
    let (ok, tables) = ns.run(&["nft", "list", "tables"]);
    assert!(ok && !tables.contains("skiff"), "skiff down removed every table: {tables}");
    assert!(held_addresses(&a).is_empty(), "every address released");
    let records: Vec<_> = std::fs::read_dir(a.root().join("network").join("networks"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "no network record left: {records:?}");
}

/// A user-defined network without a subnet gets a /24 of the pool that stays its own across an
/// agent restart (the replicas are adopted, and a new one joins the same subnet); when no
/// service is on it any more, its bridge, table and record go while the agent runs.
#[test]
fn a_network_keeps_its_subnet_across_restarts_and_goes_when_unused() {
    let Some((ns, mut a)) = setup() else { return };
    let on_solo = |n: u32| {
        format!(
            "x-skiff:\n  bridge: sktest2\n  subnet: 10.126.0.0/24\nservices:\n{}networks:\n  solo:\n",
            httpd_service("x", &format!("    networks: [solo]\n    deploy:\n      replicas: {n}\n"))
        )
    };
    a.write_manifest(&on_solo(1));
    a.spawn();
    let st = wait_status(&ns, &a, "x-1 running", |st| all_running(st, "x", 1));
    let x1 = address(&st, "x-1");
    assert!(ns.run(&["ip", "link", "show", "sk-solo"]).0, "the network's bridge");
    assert!(!ns.run(&["ip", "link", "show", "sktest2"]).0, "no default bridge: no service is on it");
    let record = a.root().join("network").join("networks").join("sk-solo.json");
    let rec = std::fs::read_to_string(&record).expect("the network's record");
    let subnet = serde_json::from_str::<Value>(&rec).unwrap()["subnet"].as_str().unwrap().to_string();
    assert!(subnet.starts_with("10.89.") && subnet.ends_with("/24"), "from the pool: {rec}");
    assert!(ns.run(&["nft", "list", "table", "ip", "skiff_net_sk_solo"]).0, "its table");

    a.stop_with(libc::SIGKILL);
    a.write_manifest(&on_solo(2));
    a.spawn();
    let st = wait_status(&ns, &a, "x-1 and x-2 running", |st| all_running(st, "x", 2));
    assert_eq!(address(&st, "x-1"), x1, "adopted with its address");
    let x2 = address(&st, "x-2");
    assert_eq!(x2.octets()[..3], x1.octets()[..3], "x-2 {x2} on the same subnet as x-1 {x1}");
    let again = std::fs::read_to_string(&record).expect("the record");
    assert!(again.contains(&subnet), "the same subnet after the restart: {again}");
    skiff_tests::wait_until("x-1 to reach x-2 by name", WAIT, || {
        a.rt(&["exec", "x-1", "cat", "/etc/hosts"]).stdout.contains(&format!("{x2}\tx\n"))
    });

    // Off the network: x moves to the default one; solo's bridge, table and record go.
    a.write_manifest(&format!(
        "x-skiff:\n  bridge: sktest2\n  subnet: 10.126.0.0/24\nservices:\n{}",
        httpd_service("x", "")
    ));
    skiff_tests::wait_until("solo's bridge, table and record to go", WAIT, || {
        !ns.run(&["ip", "link", "show", "sk-solo"]).0
            && !ns.run(&["nft", "list", "table", "ip", "skiff_net_sk_solo"]).0
            && !record.exists()
    });
    let st = wait_status(&ns, &a, "x-1 on the default bridge", |st| {
        all_running(st, "x", 1) && replica(st, "x-1")["address"].as_str().is_some_and(|s| s.starts_with("10.126.0."))
    });
    drop(st);
    down_leaves_no_network(&ns, &mut a, "sktest2");
}
