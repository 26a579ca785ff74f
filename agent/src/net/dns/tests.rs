//! The parser and the answers, on hand-made packets.

use super::*;

/// A query for `name` of `qtype`, with an OPT record offering `edns` when given.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    p.extend_from_slice(&wire_name(name));
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    p
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn table() -> Table {
    let t = Table::default();
    let e = |addr: &str, names: &[&str], up: &[&str]| Entry {
        addr: ip(addr),
        names: names.iter().map(|s| s.to_string()).collect(),
        upstreams: up.iter().map(|s| s.parse().unwrap()).collect(),
        also: Vec::new(),
    };
    t.set(&[
        e("10.88.0.2", &["web-1", "web"], &[]),
        e("10.88.0.3", &["web-2", "web"], &[]),
        e("10.88.0.4", &["db-1", "db", "Postgres.local."], &["192.0.2.53"]),
    ]);
    t
}

/// The A addresses of an answer packet (whose records name the question by pointer).
fn addresses(r: &[u8], q: &Query) -> Vec<Ipv4Addr> {
    let an = u16_at(r, 6).unwrap() as usize;
    let mut pos = q.question_end;
    let mut out = Vec::new();
    for _ in 0..an {
        assert_eq!(&r[pos..pos + 2], &[0xC0, 12]);
        let rtype = u16_at(r, pos + 2).unwrap();
        let len = u16_at(r, pos + 10).unwrap() as usize;
        assert_eq!(u32::from_be_bytes(r[pos + 6..pos + 10].try_into().unwrap()), TTL);
        if rtype == TYPE_A {
            out.push(Ipv4Addr::new(r[pos + 12], r[pos + 13], r[pos + 14], r[pos + 15]));
        }
        pos += 12 + len;
    }
    out
}

fn answer(t: &Table, p: &[u8]) -> (Query, Vec<u8>) {
    let q = parse_query(p).unwrap();
    let Lookup::Records(records) = t.lookup(&q) else { panic!("{q:?} forwarded") };
    let r = reply(p, &q, 0, &records, udp_limit(&q));
    (q, r)
}

#[test]
fn service_names_get_every_address_rotated_per_query() {
    let t = table();
    let p = query(0xBEEF, "web", TYPE_A, None);
    let mut firsts = Vec::new();
    for _ in 0..2 {
        let (q, r) = answer(&t, &p);
        assert_eq!(&r[..2], &[0xBE, 0xEF], "the client's id");
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0F, 0, "NOERROR");
        assert_eq!(&r[12..q.question_end], &p[12..q.question_end], "the question as asked");
        let mut a = addresses(&r, &q);
        firsts.push(a[0]);
        a.sort();
        assert_eq!(a, [ip("10.88.0.2"), ip("10.88.0.3")]);
    }
    assert_ne!(firsts[0], firsts[1], "round-robin");
}

#[test]
fn names_are_case_insensitive_and_replica_names_and_aliases_resolve() {
    let t = table();
    for (name, want) in [("WEB-1", "10.88.0.2"), ("db", "10.88.0.4"), ("postgres.LOCAL", "10.88.0.4")] {
        let p = query(1, name, TYPE_A, None);
        let (q, r) = answer(&t, &p);
        assert_eq!(addresses(&r, &q), [ip(want)], "{name}");
        assert_eq!(&r[12..q.question_end], &p[12..q.question_end], "{name}: its case kept");
    }
}

#[test]
fn other_types_of_our_names_are_nodata_and_unknown_names_are_forwarded() {
    let t = table();
    let p = query(7, "db", 28, None); // AAAA
    let (q, r) = answer(&t, &p);
    assert_eq!(r[3] & 0x0F, 0, "NOERROR");
    assert_eq!(u16_at(&r, 6), Some(0), "no answer");
    assert!(addresses(&r, &q).is_empty());
    for name in ["example.com", "web.example", "we"] {
        let q = parse_query(&query(8, name, TYPE_A, None)).unwrap();
        assert_eq!(t.lookup(&q), Lookup::Forward, "{name}");
    }
}

#[test]
fn ptr_of_a_replica_address_is_its_name() {
    let t = table();
    let p = query(9, "3.0.88.10.in-addr.arpa", TYPE_PTR, None);
    let (q, r) = answer(&t, &p);
    let rdata_at = q.question_end + 12;
    assert_eq!(u16_at(&r, q.question_end + 2), Some(TYPE_PTR));
    assert_eq!(&r[rdata_at..], &wire_name("web-2")[..]);
    let q = parse_query(&query(9, "9.0.88.10.in-addr.arpa", TYPE_PTR, None)).unwrap();
    assert_eq!(t.lookup(&q), Lookup::Forward, "not ours");
}

#[test]
fn the_clients_dns_servers_are_known_by_its_address() {
    let t = table();
    assert_eq!(t.upstreams_of("10.88.0.4".parse().unwrap()), ["192.0.2.53".parse::<IpAddr>().unwrap()]);
    assert!(t.upstreams_of("10.88.0.2".parse().unwrap()).is_empty());
    assert!(t.upstreams_of("10.88.0.200".parse().unwrap()).is_empty());
}

#[test]
fn too_many_addresses_for_udp_set_tc_and_edns_raises_the_limit() {
    let t = Table::default();
    let entries: Vec<Entry> = (2..100)
        .map(|i| Entry {
            addr: Ipv4Addr::new(10, 88, 0, i),
            names: vec!["big".into()],
            upstreams: Vec::new(),
            also: Vec::new(),
        })
        .collect();
    t.set(&entries);
    let p = query(3, "big", TYPE_A, None);
    let (q, r) = answer(&t, &p);
    assert!(r.len() <= 512, "{}", r.len());
    assert_eq!(r[2] & 0x02, 0x02, "TC");
    assert_eq!(u16_at(&r, 6), Some(0), "no partial answer");
    assert_eq!(r.len(), q.question_end);
    let p = query(3, "big", TYPE_A, Some(4000));
    let (q, r) = answer(&t, &p);
    assert_eq!(r[2] & 0x02, 0, "no TC");
    assert_eq!(addresses(&r, &q).len(), 98);
    assert_eq!(u16_at(&r, 10), Some(1), "an OPT record in return");
    assert_eq!(&r[r.len() - 11..r.len() - 8], &[0, 0, 41]);
}

#[test]
fn malformed_packets_are_dropped_or_formerr_and_never_panic() {
    assert_eq!(parse_query(&[]), Err(Bad::Drop));
    assert_eq!(parse_query(&[0; 11]), Err(Bad::Drop));
    let mut resp = query(5, "web", TYPE_A, None);
    resp[2] |= 0x80;
    assert_eq!(parse_query(&resp), Err(Bad::Drop), "a response is never answered");
    let mut notify = query(5, "web", TYPE_A, None);
    notify[2] |= 4 << 3;
    assert!(matches!(parse_query(&notify), Err(Bad::Answer(5, _, RCODE_NOTIMP))));
    let formerr = |p: &[u8]| assert!(matches!(parse_query(p), Err(Bad::Answer(_, _, RCODE_FORMERR))), "{p:?}");
    // no question, two questions
    let mut p = query(5, "web", TYPE_A, None);
    p[5] = 0;
    formerr(&p);
    p[5] = 2;
    formerr(&p);
    // cut anywhere in the question
    let full = query(5, "web", TYPE_A, None);
    for n in 12..full.len() {
        formerr(&full[..n]);
    }
    // a pointer to itself, a forward pointer, a loop of two
    let mut p = full[..12].to_vec();
    p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    formerr(&p);
    let mut p = full[..12].to_vec();
    p.extend_from_slice(&[0xC0, 14, 3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
    formerr(&p);
    let mut p = full[..12].to_vec();
    p.extend_from_slice(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
    formerr(&p);
    // a label of type 0x40, and a name over 255 bytes
    let mut p = full[..12].to_vec();
    p.extend_from_slice(&[0x41, b'a', 0, 0, 1, 0, 1]);
    formerr(&p);
    let mut p = full[..12].to_vec();
    for _ in 0..5 {
        p.push(63);
        p.extend_from_slice(&[b'a'; 63]);
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(&p);
    // Random junk: whatever the result, no panic, and an answer only with a header's worth.
    let mut seed = 0x1234_5678u32;
    for len in 0..2000usize {
        let mut p = Vec::with_capacity(len % 300);
        for _ in 0..len % 300 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            p.push((seed >> 16) as u8);
        }
        if p.len() > 4 && len % 2 == 0 {
            p[2] &= 0x07; // a query of opcode 0 more often
            p[4] = 0;
            p[5] = 1;
        }
        if let Ok(q) = parse_query(&p) {
            let t = table();
            if let Lookup::Records(r) = t.lookup(&q) {
                let out = reply(&p, &q, 0, &r, udp_limit(&q));
                assert!(out.len() <= udp_limit(&q).max(q.question_end + 11));
            }
        }
    }
}

#[test]
fn compressed_question_names_are_read_through_backward_pointers() {
    // In a question, the only place before the name is the header: a pointer there is refused.
    let mut p = query(5, "web", TYPE_A, None)[..12].to_vec();
    p.extend_from_slice(&[3, b'w', b'e', b'b', 0xC0, 5, 0, 1, 0, 1]);
    assert!(matches!(parse_query(&p), Err(Bad::Answer(_, _, RCODE_FORMERR))));
    // read_name on its own: a pointer back to an earlier name.
    let mut pkt = vec![0u8; 12];
    pkt.extend_from_slice(&[3, b'f', b'o', b'o', 0, 3, b'b', b'a', b'r', 0xC0, 12]);
    assert_eq!(read_name(&pkt, 17), Some((Some("bar.foo".to_string()), 23)));
}

#[test]
fn odd_bytes_in_a_name_are_forwarded_not_matched() {
    let t = table();
    let mut p = query(5, "web", TYPE_A, None);
    p[13] = b'.'; // "w.b" as one label: not the name "w.b" of two labels, nor "web"
    let q = parse_query(&p).unwrap();
    assert_eq!(q.name, None);
    assert_eq!(t.lookup(&q), Lookup::Forward);
}

#[test]
fn upstream_replies_get_the_clients_id_and_are_cut_when_too_long() {
    let p = query(0x0102, "example.com", TYPE_A, None);
    let q = parse_query(&p).unwrap();
    let mut up = p.clone();
    up[..2].copy_from_slice(&0x7777u16.to_be_bytes());
    up[2] |= 0x80;
    up[7] = 1;
    up.extend_from_slice(&record(TYPE_A, &[192, 0, 2, 1]));
    assert_eq!(accept_reply(&up, &q, 0x1111, false, 512, &p), None, "another id");
    let r = accept_reply(&up, &q, 0x7777, false, 512, &p).unwrap();
    assert_eq!(&r[..2], &[1, 2]);
    assert_eq!(&r[2..], &up[2..]);
    let r = accept_reply(&up, &q, 0x7777, false, 20, &p).unwrap();
    assert_eq!(r[2] & 0x02, 0x02, "TC");
    assert_eq!(r.len(), q.question_end);
    let mut other = up.clone();
    other[13] = b'x';
    assert_eq!(accept_reply(&other, &q, 0x7777, false, 512, &p), None, "another question");
    let mut not_resp = up.clone();
    not_resp[2] &= 0x7F;
    assert_eq!(accept_reply(&not_resp, &q, 0x7777, false, 512, &p), None);
}

#[test]
fn resolv_conf_nameservers() {
    let text =
        "# x\nnameserver 127.0.0.53\nnameserver  fd00::1\nnameserver fe80::1%eth0\nnameserver bogus\nsearch lan\n";
    assert_eq!(nameservers(text), ["127.0.0.53".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
}

#[tokio::test(flavor = "current_thread")]
async fn forwarded_queries_reach_an_upstream_and_come_back_with_the_clients_id() {
    // A tiny upstream on 127.0.0.1:53 needs root and a free port: use ask_udp's parts instead,
    // through a socket the test owns, on an ephemeral port.
    let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let p = query(0x4242, "example.com", TYPE_A, None);
    let q = parse_query(&p).unwrap();
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(up_addr).await.unwrap();
    let mut out = p.clone();
    out[..2].copy_from_slice(&0x9999u16.to_be_bytes());
    client.send(&out).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = up.recv_from(&mut buf).await.unwrap();
    let mut r = buf[..n].to_vec();
    r[2] |= 0x80;
    up.send_to(&r, from).await.unwrap();
    let n = client.recv(&mut buf).await.unwrap();
    let back = accept_reply(&buf[..n], &q, 0x9999, false, 512, &p).unwrap();
    assert_eq!(&back[..2], &[0x42, 0x42]);
}

/// A client on two networks finds the names of both through the server of either; a client
/// on one network does not find the other's.
#[test]
fn a_client_on_two_networks_finds_the_names_of_both() {
    let front = Arc::new(Table::default());
    let back = Arc::new(Table::default());
    back.set(&[Entry {
        addr: ip("10.90.0.2"),
        names: vec!["db-1".into(), "db".into()],
        upstreams: Vec::new(),
        also: Vec::new(),
    }]);
    front.set(&[
        Entry {
            addr: ip("10.89.0.2"),
            names: vec!["api-1".into(), "api".into()],
            upstreams: Vec::new(),
            also: vec![Arc::downgrade(&back)],
        },
        Entry {
            addr: ip("10.89.0.3"),
            names: vec!["web-1".into(), "web".into()],
            upstreams: Vec::new(),
            also: Vec::new(),
        },
    ]);
    let q = parse_query(&query(7, "db", TYPE_A, None)).unwrap();
    assert!(matches!(front.lookup_from(&q, "10.89.0.2".parse().unwrap()), Lookup::Records(r) if r.len() == 1));
    assert_eq!(front.lookup_from(&q, "10.89.0.3".parse().unwrap()), Lookup::Forward);
    drop(back);
    assert_eq!(front.lookup_from(&q, "10.89.0.2".parse().unwrap()), Lookup::Forward, "a network gone is not asked");
}
