//! The bridge's name server: service names over DNS, as Docker's embedded resolver
//! (127.0.0.11) gives them, for clients that read only resolv.conf (an nginx `resolver`, Go's
//! netgo resolver, busybox `nslookup`).
//!
//! One [`Server`] per bridge, on `GATEWAY:53` (UDP and TCP), with a [`Table`] of its own. The
//! bridged containers' resolv.conf names the gateway ([`super::files::resolv_conf_gateway`]).
//!
//! - **Not an open resolver.** The sockets are bound to the bridge device (`SO_BINDTODEVICE`):
//!   the kernel delivers them only what arrived on the bridge, so a query from another
//!   interface of the host (routed to the gateway address) or from the host itself gets a
//!   port-unreachable, never an answer. Forwarded queries leave from unbound sockets of the
//!   agent's namespace, which is why a loopback upstream (systemd-resolved's 127.0.0.53) works.
//! - **Answers.** A names of the table (service names, replica ids `web-1`, hostnames; ASCII
//!   case-insensitive) get every address, rotated per query (round-robin), TTL [`TTL`]. Other
//!   types for those names get NODATA (NOERROR, no answer: clients fall back to A), PTR of a
//!   replica's address its name. Anything else is forwarded.
//! - **Forwarding.** To the client's service's `dns:` servers when it set them (the client is
//!   known by its source address), else to the nameservers of the agent's /etc/resolv.conf
//!   (read again when it changes). Each upstream gets [`UPSTREAM_TIMEOUT`]; at most
//!   [`MAX_UPSTREAMS`] are tried. The query goes with an id of our own (random), the client's
//!   is put back in the reply; UDP stays UDP and TCP stays TCP. At most [`MAX_IN_FLIGHT`]
//!   queries are forwarded at a time; beyond, UDP queries are dropped (the client retries)
//!   and TCP ones get SERVFAIL, so memory stays bounded under a flood.
//! - **Sizes.** A UDP answer longer than the client's limit (512 bytes, or its EDNS size up to
//!   [`MAX_UDP`]) is cut to the question with TC set: the client asks again over TCP. TCP
//!   connections: at most [`MAX_TCP`] at a time, each closed after [`TCP_IDLE`] without a
//!   complete query.
//! - **Parsing** is a small bounded reader of the few parts needed (header, one question, an
//!   OPT record), not a crate: names are at most 255 bytes, compression pointers must point
//!   backwards and are followed at most [`MAX_HOPS`] times; a packet it cannot read is dropped
//!   (no question) or answered FORMERR. Responses (QR set) are never answered.
//!
//! The servers run on a thread of their own (the caller's runtime handle), so no reconcile step
//! delays an answer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::daemon::reconcile::log;

/// TTL of our answers: short, as replicas come and go.
pub const TTL: u32 = 5;
/// The largest UDP answer we send, whatever EDNS size a client offers.
pub const MAX_UDP: usize = 4096;
/// Forwarded queries in flight, over UDP and TCP together.
pub const MAX_IN_FLIGHT: usize = 256;
/// TCP connections at a time.
pub const MAX_TCP: usize = 64;
/// A TCP connection without a complete query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long one upstream server gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How many upstream servers a query is tried on.
pub const MAX_UPSTREAMS: usize = 3;
/// Compression pointers followed in one name.
pub const MAX_HOPS: usize = 16;
/// The longest name on the wire (RFC 1035).
const MAX_NAME: usize = 255;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NOTIMP: u8 = 4;

// ---------------------------------------------------------------------------------------
// Wire format

/// What a query packet holds that we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The header's second word (opcode, RD, ...).
    pub flags: u16,
    /// The question's name, ASCII lowercase, labels joined by `.`, no trailing dot; `None`
    /// when a label holds a byte that is not a letter, digit, `-` or `_` (never one of ours).
    pub name: Option<String>,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section (the question is `packet[12..question_end]`).
    pub question_end: usize,
    /// The client's EDNS UDP size, when it sent an OPT record.
    pub edns: Option<u16>,
}

/// Why a packet gets no normal handling.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not worth an answer: too short for a header, or a response.
    Drop,
    /// Answered with this rcode and no question: a malformed question (FORMERR), another
    /// opcode than QUERY (NOTIMP).
    Answer(u16, u16, u8),
}

fn u16_at(p: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(off)?, *p.get(off + 1)?]))
}

/// Reads the name at `off`: its text (see [`Query::name`]) and where the name ends in the
/// packet (after its first pointer, if any); `None` when it is malformed.
pub fn read_name(p: &[u8], off: usize) -> Option<(Option<String>, usize)> {
    let mut pos = off;
    let mut end = None;
    let mut hops = 0;
    let mut wire_len = 1; // the root label
    let mut text = String::new();
    let mut plain = true;
    // Pointers must go strictly backwards, to before the name's first label (no loop), and
    // not into the header.
    let mut limit = off;
    loop {
        let len = *p.get(pos)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                return Some((plain.then_some(text), end));
            }
            0x00 => {
                let label = p.get(pos + 1..pos + 1 + len)?;
                wire_len += 1 + len;
                if wire_len > MAX_NAME {
                    return None;
                }
                if !text.is_empty() {
                    text.push('.');
                }
                for &b in label {
                    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                        text.push(b.to_ascii_lowercase() as char);
                    } else {
                        plain = false;
                    }
                }
                pos += 1 + len;
            }
            0xC0 => {
                let target = (u16_at(p, pos)? & 0x3FFF) as usize;
                hops += 1;
                if hops > MAX_HOPS || target >= limit || target < 12 {
                    return None;
                }
                if end.is_none() {
                    end = Some(pos + 2);
                }
                limit = target;
                pos = target;
            }
            _ => return None, // 0x40, 0x80: extended label types, not in use
        }
    }
}

/// Reads a query packet.
pub fn parse_query(p: &[u8]) -> Result<Query, Bad> {
    if p.len() < 12 {
        return Err(Bad::Drop);
    }
    let id = u16_at(p, 0).ok_or(Bad::Drop)?;
    let flags = u16_at(p, 2).ok_or(Bad::Drop)?;
    if flags & 0x8000 != 0 {
        return Err(Bad::Drop); // a response: never answer one (no reflection loops)
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Bad::Answer(id, flags, RCODE_NOTIMP));
    }
    let count = |i: usize| u16_at(p, 4 + 2 * i).unwrap_or(0);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    let formerr = Bad::Answer(id, flags, RCODE_FORMERR);
    if qd != 1 {
        return Err(formerr);
    }
    let (name, end) = read_name(p, 12).ok_or(Bad::Answer(id, flags, RCODE_FORMERR))?;
    let (Some(qtype), Some(qclass)) = (u16_at(p, end), u16_at(p, end + 2)) else {
        return Err(formerr);
    };
    let question_end = end + 4;
    // EDNS: an OPT record (root name, type 41) as the first additional record of a query
    // with no answer or authority records; anything else there is ignored.
    let mut edns = None;
    if an == 0 && ns == 0 && ar >= 1 && p.get(question_end) == Some(&0) && u16_at(p, question_end + 1) == Some(TYPE_OPT)
    {
        edns = u16_at(p, question_end + 3);
    }
    Ok(Query { id, flags, name, qtype, qclass, question_end, edns })
}

/// The most a UDP answer to `q` may take.
pub fn udp_limit(q: &Query) -> usize {
    q.edns.map_or(512, |s| (s as usize).clamp(512, MAX_UDP))
}

/// A header-only answer with `rcode` (FORMERR, NOTIMP, SERVFAIL without a question).
pub fn error_reply(id: u16, flags: u16, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&reply_flags(flags, rcode, false).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// The flags of our reply to a query with `flags`: QR, its opcode and RD, RA, and `rcode`.
fn reply_flags(flags: u16, rcode: u8, authoritative: bool) -> u16 {
    let keep = flags & (0x7800 | 0x0100); // opcode, RD
    0x8000 | keep | if authoritative { 0x0400 } else { 0 } | 0x0080 | rcode as u16
}

/// An answer to `q` (from packet `p`) with `rcode` and `records` (each a complete resource
/// record whose name points at the question's): header, the question as asked, the records,
/// and an OPT record when the client sent one. Over `limit` bytes: the question only, TC set.
pub fn reply(p: &[u8], q: &Query, rcode: u8, records: &[Vec<u8>], limit: usize) -> Vec<u8> {
    let question = &p[12..q.question_end];
    let opt: &[u8] =
        if q.edns.is_some() { &[0, 0, 41, (MAX_UDP >> 8) as u8, MAX_UDP as u8, 0, 0, 0, 0, 0, 0] } else { &[] };
    let size = 12 + question.len() + records.iter().map(Vec::len).sum::<usize>() + opt.len();
    let fits = size <= limit;
    let mut out = Vec::with_capacity(if fits { size } else { 12 + question.len() + opt.len() });
    out.extend_from_slice(&q.id.to_be_bytes());
    let tc = if fits { 0 } else { 0x0200 };
    out.extend_from_slice(&(reply_flags(q.flags, rcode, rcode == 0) | tc).to_be_bytes());
    let an = if fits { records.len().min(u16::MAX as usize) as u16 } else { 0 };
    for n in [1, an, 0, u16::from(!opt.is_empty())] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(question);
    if fits {
        for r in records {
            out.extend_from_slice(r);
        }
    }
    out.extend_from_slice(opt);
    out
}

/// A resource record named by a pointer to the question's name (offset 12).
fn record(rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(12 + rdata.len());
    r.extend_from_slice(&[0xC0, 12]);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&TTL.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// `name` (checked: [`Table`] names) in wire format.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// The address of a reverse name `d.c.b.a.in-addr.arpa`.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest.split('.').map(|s| s.parse().ok()).collect::<Option<_>>()?;
    match parts[..] {
        [d, c, b, a] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Names

/// One replica as the table knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub addr: Ipv4Addr,
    /// Its names: replica id, service, hostname, aliases (any case; a trailing dot is ignored).
    /// The first is the one PTR answers.
    pub names: Vec<String>,
    /// The service's `dns:` servers (empty: the host's).
    pub upstreams: Vec<IpAddr>,
    /// The tables of the other networks this replica is on: as a client, it finds their names
    /// too (weak: two networks' tables name each other).
    pub also: Vec<std::sync::Weak<Table>>,
}

#[derive(Debug, Default)]
struct Names {
    by_name: HashMap<String, Vec<Ipv4Addr>>,
    by_addr: HashMap<Ipv4Addr, (String, Vec<IpAddr>)>,
    also: HashMap<Ipv4Addr, Vec<std::sync::Weak<Table>>>,
}

/// The names of one bridge, replaced as a whole when replicas come and go; read by its server.
#[derive(Debug, Default)]
pub struct Table {
    names: RwLock<Arc<Names>>,
    /// Turns the order of addresses per query.
    turn: AtomicU64,
}

/// What the server does with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Answer with these records (none: NODATA).
    Records(Vec<Vec<u8>>),
    /// Not ours: forward it.
    Forward,
}

impl Table {
    /// Replaces the names with `entries`.
    pub fn set(&self, entries: &[Entry]) {
        let mut n = Names::default();
        for e in entries {
            for name in &e.names {
                let key = name.trim_end_matches('.').to_ascii_lowercase();
                if key.is_empty() {
                    continue;
                }
                let addrs = n.by_name.entry(key).or_default();
                if !addrs.contains(&e.addr) {
                    addrs.push(e.addr);
                }
            }
            if !e.also.is_empty() {
                n.also.entry(e.addr).or_insert_with(|| e.also.clone());
            }
            if let Some(first) = e.names.first() {
                n.by_addr
                    .entry(e.addr)
                    .or_insert_with(|| (first.trim_end_matches('.').to_string(), e.upstreams.clone()));
            }
        }
        for addrs in n.by_name.values_mut() {
            addrs.sort();
        }
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(n);
    }

    fn current(&self) -> Arc<Names> {
        self.names.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `dns:` servers of the replica at `addr` (empty: none set, or not ours).
    pub fn upstreams_of(&self, addr: IpAddr) -> Vec<IpAddr> {
        let IpAddr::V4(a) = addr else { return Vec::new() };
        self.current().by_addr.get(&a).map(|(_, u)| u.clone()).unwrap_or_default()
    }

    /// What to answer to `q` from the client at `src`: this table's names, then those of the
    /// other networks the client is on.
    pub fn lookup_from(&self, q: &Query, src: IpAddr) -> Lookup {
        let own = self.lookup(q);
        if own != Lookup::Forward {
            return own;
        }
        let IpAddr::V4(a) = src else { return own };
        let also = self.current().also.get(&a).cloned().unwrap_or_default();
        for t in also.iter().filter_map(std::sync::Weak::upgrade) {
            let other = t.lookup(q);
            if other != Lookup::Forward {
                return other;
            }
        }
        own
    }

    /// What to answer to `q`.
    pub fn lookup(&self, q: &Query) -> Lookup {
        let Some(name) = q.name.as_deref() else { return Lookup::Forward };
        if q.qclass != CLASS_IN {
            return Lookup::Forward;
        }
        let names = self.current();
        if let Some(addrs) = names.by_name.get(name) {
            if !matches!(q.qtype, TYPE_A | TYPE_ANY) || addrs.is_empty() {
                return Lookup::Records(Vec::new());
            }
            let turn = (self.turn.fetch_add(1, Ordering::Relaxed) % addrs.len() as u64) as usize;
            let records =
                addrs.iter().cycle().skip(turn).take(addrs.len()).map(|a| record(TYPE_A, &a.octets())).collect();
            return Lookup::Records(records);
        }
        if q.qtype == TYPE_PTR {
            if let Some((owner, _)) = reverse_v4(name).and_then(|a| names.by_addr.get(&a)) {
                return Lookup::Records(vec![record(TYPE_PTR, &wire_name(owner))]);
            }
        }
        Lookup::Forward
    }
}

// ---------------------------------------------------------------------------------------
// Upstreams

/// The nameservers of the agent's /etc/resolv.conf, read again when the file changes
/// (checked at most once a second).
#[derive(Debug)]
pub struct HostResolvers {
    path: PathBuf,
    state: Mutex<HostState>,
}

#[derive(Debug, Default)]
struct HostState {
    checked: Option<Instant>,
    stamp: Option<(SystemTime, u64, u64)>,
    servers: Vec<IpAddr>,
}

impl HostResolvers {
    pub fn new(path: impl Into<PathBuf>) -> HostResolvers {
        HostResolvers { path: path.into(), state: Mutex::new(HostState::default()) }
    }

    /// The nameservers now.
    pub fn servers(&self) -> Vec<IpAddr> {
        use std::os::unix::fs::MetadataExt;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st.checked.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return st.servers.clone();
        }
        st.checked = Some(now);
        let meta = std::fs::metadata(&self.path).ok();
        let stamp = meta.as_ref().and_then(|m| Some((m.modified().ok()?, m.ino(), m.len())));
        if stamp != st.stamp || stamp.is_none() {
            st.stamp = stamp;
            st.servers = read_bounded(&self.path).map(|t| nameservers(&t)).unwrap_or_default();
        }
        st.servers.clone()
    }
}

fn read_bounded(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(64 << 10).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The `nameserver` addresses of a resolv.conf (a scoped IPv6 one is skipped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()?.parse().ok())?
        })
        .collect()
}

/// Sends `query` to `upstream:53` over UDP with a random id; the reply with the client's id
/// put back (at most `limit` bytes, else cut to the question with TC), or `None`.
async fn ask_udp(query: &[u8], q: &Query, upstream: IpAddr, limit: usize) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = tokio::net::UdpSocket::bind(local).await.ok()?;
    sock.connect((upstream, 53)).await.ok()?;
    let our_id = random_id();
    let mut out = query.to_vec();
    out[..2].copy_from_slice(&our_id.to_be_bytes());
    sock.send(&out).await.ok()?;
    let mut buf = vec![0u8; MAX_UDP + 1];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await.ok()?.ok()?;
        if let Some(reply) = accept_reply(&buf[..n], q, our_id, n > MAX_UDP, limit, query) {
            return Some(reply);
        }
    }
}

/// Sends `query` to `upstream:53` over TCP; the reply with the client's id put back.
async fn ask_tcp(query: &[u8], q: &Query, upstream: IpAddr) -> Option<Vec<u8>> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect((upstream, 53)).await.ok()?;
        let our_id = random_id();
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&(query.len() as u16).to_be_bytes());
        out.extend_from_slice(query);
        out[2..4].copy_from_slice(&our_id.to_be_bytes());
        s.write_all(&out).await.ok()?;
        let len = s.read_u16().await.ok()? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.ok()?;
        accept_reply(&buf, q, our_id, false, usize::from(u16::MAX), query)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, work).await.ok()?
}

/// An upstream's `reply` to our query (`our_id`) for the client's `q`: checked (a response to
/// the same question), its id the client's; cut to the question with TC when longer than
/// `limit` or when it did not fit our buffer (`cut`).
fn accept_reply(reply: &[u8], q: &Query, our_id: u16, cut: bool, limit: usize, query: &[u8]) -> Option<Vec<u8>> {
    if reply.len() < 12 || u16_at(reply, 0)? != our_id || reply[2] & 0x80 == 0 {
        return None;
    }
    let question = &query[12..q.question_end];
    let same = reply.get(4..6) == Some(&[0, 1])
        && reply.get(12..q.question_end).is_some_and(|r| r.eq_ignore_ascii_case(question));
    if !same {
        return None;
    }
    if cut || reply.len() > limit {
        let mut out = Vec::with_capacity(q.question_end);
        out.extend_from_slice(&q.id.to_be_bytes());
        out.push(reply[2] | 0x02); // TC
        out.push(reply[3]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(question);
        return Some(out);
    }
    let mut out = reply.to_vec();
    out[..2].copy_from_slice(&q.id.to_be_bytes());
    Some(out)
}

/// An id for a forwarded query that an off-path attacker cannot guess: SipHash of a counter
/// under keys std draws from the OS (`RandomState`), no syscall per query.
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}

// ---------------------------------------------------------------------------------------
// Server

/// Counters of one bridge's server.
#[derive(Debug, Default)]
pub struct Counters {
    /// Answered from the table (names of ours, NODATA, PTR).
    pub answered: AtomicU64,
    /// Forwarded upstream (whether it answered or not).
    pub forwarded: AtomicU64,
    /// Refused: malformed, another opcode, or over the in-flight bound.
    pub refused: AtomicU64,
    /// Forwarded with no answer from any upstream (SERVFAIL, or nothing over UDP).
    pub failed: AtomicU64,
}

struct Shared {
    table: Arc<Table>,
    host: HostResolvers,
    in_flight: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddrV4,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A socket of `ty` bound to `addr` on `device` only.
fn bound_socket(ty: nix::sys::socket::SockType, device: &str, addr: SocketAddrV4) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, ty, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(device))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

/// Starts the server of bridge `device` on `addr` (its gateway, port 53) on the runtime
/// `rt`, answering from `table` and forwarding to the nameservers of `resolv_conf` (the
/// agent's /etc/resolv.conf) unless the client's service set its own. The sockets are bound
/// here, in the caller's network namespace: an error is the bind's (address in use, no such
/// device).
pub fn start(
    rt: &tokio::runtime::Handle,
    device: &str,
    addr: SocketAddrV4,
    table: Arc<Table>,
    resolv_conf: impl Into<PathBuf>,
    counters: Arc<Counters>,
) -> io::Result<Server> {
    use nix::sys::socket::{listen, Backlog, SockType};
    let udp = bound_socket(SockType::Datagram, device, addr)?;
    let tcp = bound_socket(SockType::Stream, device, addr)?;
    listen(&tcp, Backlog::new(128).map_err(io::Error::from)?)?;
    let shared = Arc::new(Shared {
        table,
        host: HostResolvers::new(resolv_conf),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        tcp_slots: Arc::new(Semaphore::new(MAX_TCP)),
        counters,
    });
    let udp = std::net::UdpSocket::from(udp);
    let tcp = std::net::TcpListener::from(tcp);
    let s = shared.clone();
    let t1 = rt.spawn(async move {
        match tokio::net::UdpSocket::from_std(udp) {
            Ok(sock) => serve_udp(Arc::new(sock), s).await,
            Err(e) => log(&format!("dns: registering the UDP socket of {}: {e}", addr)),
        }
    });
    let t2 = rt.spawn(async move {
        match tokio::net::TcpListener::from_std(tcp) {
            Ok(l) => serve_tcp(l, shared).await,
            Err(e) => log(&format!("dns: registering the TCP socket of {}: {e}", addr)),
        }
    });
    Ok(Server { addr, tasks: vec![t1, t2] })
}

/// What to do with one query from `src`: an answer now, or a forward.
enum Step {
    Reply(Vec<u8>),
    Forward(Query),
    Nothing,
}

fn step(shared: &Shared, p: &[u8], src: IpAddr, limit_of: impl Fn(&Query) -> usize) -> Step {
    let c = &shared.counters;
    match parse_query(p) {
        Err(Bad::Drop) => {
            c.refused.fetch_add(1, Ordering::Relaxed);
            Step::Nothing
        }
        Err(Bad::Answer(id, flags, rcode)) => {
            c.refused.fetch_add(1, Ordering::Relaxed);
            Step::Reply(error_reply(id, flags, rcode))
        }
        Ok(q) => match shared.table.lookup_from(&q, src) {
            Lookup::Records(records) => {
                c.answered.fetch_add(1, Ordering::Relaxed);
                Step::Reply(reply(p, &q, 0, &records, limit_of(&q)))
            }
            Lookup::Forward => Step::Forward(q),
        },
    }
}

/// The upstreams for a client at `src`.
fn upstreams(shared: &Shared, src: IpAddr) -> Vec<IpAddr> {
    let mut list = shared.table.upstreams_of(src);
    if list.is_empty() {
        list = shared.host.servers();
    }
    list.truncate(MAX_UPSTREAMS);
    list
}

async fn serve_udp(sock: Arc<tokio::net::UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // ICMP errors and the like: nothing to do but go on (briefly, not in a spin).
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let q = match step(&shared, &buf[..n], src.ip(), udp_limit) {
            Step::Reply(r) => {
                let _ = sock.try_send_to(&r, src);
                continue;
            }
            Step::Nothing => continue,
            Step::Forward(q) => q,
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let (sock, shared, query) = (sock.clone(), shared.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            let _permit = permit;
            let limit = udp_limit(&q);
            for up in upstreams(&shared, src.ip()) {
                if let Some(r) = ask_udp(&query, &q, up, limit).await {
                    let _ = sock.send_to(&r, src).await;
                    return;
                }
            }
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send_to(&reply(&query, &q, RCODE_SERVFAIL, &[], limit), src).await;
        });
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((conn, src)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await; // out of fds: not in a spin
            continue;
        };
        let Ok(slot) = shared.tcp_slots.clone().try_acquire_owned() else {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue; // dropped: closed
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_conn(conn, src.ip(), &shared).await;
        });
    }
}

/// Queries of one TCP connection, one after the other, until it closes or idles.
async fn serve_conn(mut conn: tokio::net::TcpStream, src: IpAddr, shared: &Shared) {
    loop {
        let read = async {
            let len = conn.read_u16().await.ok()? as usize;
            let mut msg = vec![0u8; len];
            conn.read_exact(&mut msg).await.ok()?;
            Some(msg)
        };
        let Ok(Some(msg)) = tokio::time::timeout(TCP_IDLE, read).await else { return };
        let answer = match step(shared, &msg, src, |_| usize::from(u16::MAX)) {
            Step::Reply(r) => r,
            Step::Nothing => return,
            Step::Forward(q) => {
                let Ok(_permit) = shared.in_flight.try_acquire() else {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let r = reply(&msg, &q, RCODE_SERVFAIL, &[], usize::from(u16::MAX));
                    if write_msg(&mut conn, &r).await.is_err() {
                        return;
                    }
                    continue;
                };
                shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let mut got = None;
                for up in upstreams(shared, src) {
                    got = ask_tcp(&msg, &q, up).await;
                    if got.is_some() {
                        break;
                    }
                }
                got.unwrap_or_else(|| {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    reply(&msg, &q, RCODE_SERVFAIL, &[], usize::from(u16::MAX))
                })
            }
        };
        if write_msg(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}

async fn write_msg(conn: &mut tokio::net::TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&msg[..msg.len().min(u16::MAX as usize)]);
    tokio::time::timeout(TCP_IDLE, conn.write_all(&out)).await.map_err(|_| io::ErrorKind::TimedOut)?
}

#[cfg(test)]
mod tests;
