//! The in-agent L4 proxy for published ports; the agent drives it from `daemon::ports`.
//!
//! One [`PortProxy`] serves one published host `address:port` over TCP, UDP or both, and
//! spreads clients round-robin over a list of backend addresses that the agent publishes
//! through a [`watch`] channel (the running and healthy replicas; empty = no backend).
//!
//! # TCP
//!
//! Each accepted connection takes the next backend of the list *as it is at accept time*;
//! the connect has a short timeout ([`Limits::connect_timeout`]) and when it fails the next
//! backend is tried, each at most once (and only while it is still in the list), before the
//! client is closed. With an empty list the client is closed at once. Bytes are then copied
//! both ways with [`tokio::io::copy_bidirectional`] (one fixed 8 KiB buffer per direction,
//! half-close passed on: when one side ends its writes, the other side's write half is
//! shut down and the opposite direction keeps going). A connection in progress is never cut
//! by a change of the list: the agent ends a stopping replica's connections by stopping it.
//!
//! # Caps: what a flood may cost the agent
//!
//! A proxied TCP connection holds two file descriptors (client and backend), a UDP session
//! one. Every proxy of the agent draws them from one shared [`FdBudget`] (the agent sizes it
//! below its `RLIMIT_NOFILE`, keeping the rest for its own work: see `daemon::fds`), and each
//! port has its own caps besides ([`Limits::max_connections`], [`Limits::max_udp_sessions`]),
//! so that one flooded port leaves room for the others.
//!
//! A connection over a cap is accepted and closed at once, rather than left in the listen
//! backlog: the accept costs one fd for a moment (taken from the agent's reserve, one at a
//! time: the proxies run on one thread), the client gets a prompt close instead of a hang,
//! and the backlog never fills with connections that would be served long after their client
//! gave up — the moment a slot is free, the next new client gets it. Refusals are logged at
//! most once a minute per port. A new UDP client over a cap has its datagrams dropped (UDP
//! is allowed to lose them) until sessions expire.
//!
//! # UDP
//!
//! Per client address a session: a socket of its own, connected to the backend chosen
//! round-robin when the session starts; datagrams from the client go to it, datagrams from
//! it go back to that client from the published socket. A session ends after
//! [`Limits::udp_idle`] without a datagram either way, when its backend has left the list
//! (checked at each client datagram: the next one starts a session on a current backend, so
//! UDP traffic stops reaching a stopping replica at once), or when sending to the backend
//! fails (e.g. a refused port).
//!
//! # Errors, shutdown
//!
//! Binding errors come out of [`PortProxy::bind`] in words fit for the service's status
//! (`host port 8080/tcp is already in use`). [`PortProxy::stop`] (or dropping the proxy)
//! closes the listener and the UDP socket and ends the UDP sessions; established TCP
//! connections run on until one side closes them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Which protocols a published port carries (Compose `ports: "8080:80/udp"`; TCP by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Both,
}

/// Bounds and timeouts of a [`PortProxy`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open TCP connections of this port at most; over it a new connection is closed at once.
    pub max_connections: usize,
    /// How long a connect to one backend may take before the next one is tried.
    pub connect_timeout: Duration,
    /// UDP sessions of this port at most; datagrams of a new client over it are dropped.
    pub max_udp_sessions: usize,
    /// A UDP session without a datagram either way for this long ends.
    pub udp_idle: Duration,
    /// The file descriptors of every proxy that shares it (clones share it).
    pub fds: FdBudget,
}

impl Limits {
    /// Limits for proxies that share `fds` file descriptors: a port may hold half of them
    /// (at most 4096 TCP connections and 1024 UDP sessions).
    pub fn with_fd_budget(fds: usize) -> Limits {
        Limits {
            max_connections: (fds / 4).clamp(1, 4096),
            connect_timeout: Duration::from_secs(2),
            max_udp_sessions: (fds / 2).clamp(1, 1024),
            udp_idle: Duration::from_secs(30),
            fds: FdBudget::new(fds),
        }
    }
}

impl Default for Limits {
    /// [`Limits::with_fd_budget`] of 8192 fds, not shared with other proxies.
    fn default() -> Limits {
        Limits::with_fd_budget(8192)
    }
}

/// File descriptors that proxies may hold together: a TCP connection takes two, a UDP session
/// one, given back when it ends. Clones share the count.
#[derive(Clone, Debug)]
pub struct FdBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl FdBudget {
    pub fn new(total: usize) -> FdBudget {
        FdBudget { permits: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))), total }
    }

    /// How many fds it holds in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// How many are taken now.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.permits.available_permits())
    }

    /// `n` fds, or `None` when fewer are left.
    fn take(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_many_owned(n).ok()
    }
}

/// Counts refusals and logs them at most once a minute.
struct Refusals {
    what: String,
    count: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Refusals {
    fn new(what: String) -> Refusals {
        Refusals { what, count: AtomicU64::new(0), last_log: Mutex::new(None) }
    }

    fn note(&self, why: impl FnOnce() -> String) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = lock(&self.last_log);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            warn(&format!("{}: {}; {n} refused so far", self.what, why()));
        }
    }
}

/// Backend addresses as the agent publishes them; empty = no backend.
pub type Backends = watch::Receiver<Vec<SocketAddr>>;

/// The proxy of one published port. Dropping it is [`PortProxy::stop`] without the wait.
pub struct PortProxy {
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for PortProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortProxy").field("tcp", &self.tcp).field("udp", &self.udp).finish()
    }
}

impl PortProxy {
    /// Binds `addr` for `proto` and starts serving. With port 0 and [`Proto::Both`], UDP gets
    /// the port the kernel chose for TCP. Must be called inside a tokio runtime (it spawns the
    /// serving tasks on the current one); binding a socket address never blocks, so the
    /// agent's reconcile loop calls it directly. The TCP listener has `SO_REUSEADDR` (Rust's
    /// std sets it), so a restarted agent binds its ports again while old connections linger
    /// in TIME_WAIT.
    pub fn bind(addr: SocketAddr, proto: Proto, backends: Backends, limits: Limits) -> Result<PortProxy> {
        let mut proxy = PortProxy { tcp: None, udp: None, tasks: Vec::new() };
        let mut udp_addr = addr;
        if matches!(proto, Proto::Tcp | Proto::Both) {
            let std_listener = std::net::TcpListener::bind(addr).map_err(|e| bind_error(addr, "tcp", e))?;
            std_listener.set_nonblocking(true).map_err(|e| bind_error(addr, "tcp", e))?;
            let listener = TcpListener::from_std(std_listener).map_err(|e| bind_error(addr, "tcp", e))?;
            let local = listener.local_addr().map_err(|e| bind_error(addr, "tcp", e))?;
            udp_addr = local;
            proxy.tcp = Some(local);
            let tcp = Tcp {
                backends: backends.clone(),
                next: AtomicUsize::new(0),
                permits: Arc::new(Semaphore::new(limits.max_connections)),
                max_connections: limits.max_connections,
                fds: limits.fds.clone(),
                connect_timeout: limits.connect_timeout,
                refused: Refusals::new(format!("published port {local}/tcp")),
            };
            proxy.tasks.push(tokio::spawn(tcp.serve(listener)));
        }
        if matches!(proto, Proto::Udp | Proto::Both) {
            // On an error here `proxy` is dropped, which ends the TCP listener again.
            let std_socket = std::net::UdpSocket::bind(udp_addr).map_err(|e| bind_error(udp_addr, "udp", e))?;
            std_socket.set_nonblocking(true).map_err(|e| bind_error(udp_addr, "udp", e))?;
            let socket = UdpSocket::from_std(std_socket).map_err(|e| bind_error(udp_addr, "udp", e))?;
            let local = socket.local_addr().map_err(|e| bind_error(udp_addr, "udp", e))?;
            proxy.udp = Some(local);
            let udp = Udp {
                refused: Refusals::new(format!("published port {local}/udp")),
                reply_buf: Mutex::new(vec![0u8; 65536]),
                socket: Arc::new(socket),
                backends,
                next: AtomicUsize::new(0),
                sessions: Mutex::new(HashMap::new()),
                ids: AtomicU64::new(0),
                epoch: Instant::now(),
                limits,
            };
            proxy.tasks.push(tokio::spawn(Arc::new(udp).serve()));
        }
        Ok(proxy)
    }

    /// The TCP address listened on (the real port when 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The UDP address bound (the real port when 0 was asked for).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// Closes the listener and the UDP socket (and the UDP sessions) and waits until they are
    /// closed, so the port can be bound again when this returns. Established TCP connections
    /// keep going until one of their sides closes.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn bind_error(addr: SocketAddr, proto: &str, e: io::Error) -> anyhow::Error {
    let port = addr.port();
    match e.kind() {
        io::ErrorKind::AddrInUse => anyhow!("host port {port}/{proto} is already in use"),
        io::ErrorKind::AddrNotAvailable => {
            anyhow!("cannot publish port {port}/{proto}: host address {} is not on this machine", addr.ip())
        }
        io::ErrorKind::PermissionDenied => {
            anyhow!("cannot publish port {port}/{proto}: binding a port below 1024 needs root or CAP_NET_BIND_SERVICE")
        }
        _ => anyhow!("cannot publish port {port}/{proto} on {}: {e}", addr.ip()),
    }
}

fn warn(msg: &str) {
    crate::daemon::reconcile::log(&format!("warning: {msg}"));
}

/// The round-robin choice: the backend after the previous choice, in `list`.
fn pick(next: &AtomicUsize, list: &[SocketAddr]) -> Option<(usize, SocketAddr)> {
    if list.is_empty() {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed) % list.len();
    Some((start, list[start]))
}

struct Tcp {
    backends: Backends,
    next: AtomicUsize,
    /// This port's connections.
    permits: Arc<Semaphore>,
    max_connections: usize,
    /// Every proxy's fds.
    fds: FdBudget,
    connect_timeout: Duration,
    refused: Refusals,
}

impl Tcp {
    async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset in the backlog: wait a
                    // little rather than spinning, then go on.
                    warn(&format!("accept on {:?}: {e}", listener.local_addr().ok()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over a cap: closed at once (see the module docs).
            let Ok(slot) = this.permits.clone().try_acquire_owned() else {
                drop(client);
                this.refused.note(|| format!("at its cap of {} connections", this.max_connections));
                continue;
            };
            let Some(fds) = this.fds.take(2) else {
                drop(client);
                this.refused.note(|| {
                    format!("the published ports hold the {} file descriptors they may take", this.fds.total())
                });
                continue;
            };
            let this = this.clone();
            tokio::spawn(async move {
                // Released after `relay` has closed both sockets.
                let _held = (slot, fds);
                this.relay(client).await;
            });
        }
    }

    async fn relay(&self, mut client: TcpStream) {
        let Some(mut backend) = self.connect().await else {
            return; // no backend reachable: the client is closed
        };
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        // Errors here are the peers' business (a reset, a timeout): the connection just ends.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    }

    /// Connects to the round-robin backend of the list as it is now; on failure the next ones,
    /// each once, skipping those that left the list meanwhile.
    async fn connect(&self) -> Option<TcpStream> {
        let list = self.backends.borrow().clone();
        let (start, _) = pick(&self.next, &list)?;
        for i in 0..list.len() {
            let addr = list[(start + i) % list.len()];
            if i > 0 && !self.backends.borrow().contains(&addr) {
                continue;
            }
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(_)) | Err(_) => continue,
            }
        }
        None
    }
}

/// A session's socket and the fd it holds of the budget (given back when the socket closes).
struct SessionSocket {
    socket: UdpSocket,
    _fd: OwnedSemaphorePermit,
}

impl std::ops::Deref for SessionSocket {
    type Target = UdpSocket;
    fn deref(&self) -> &UdpSocket {
        &self.socket
    }
}

struct Session {
    id: u64,
    backend: SocketAddr,
    socket: Arc<SessionSocket>,
    /// Milliseconds since [`Udp::epoch`] of the last datagram either way.
    last: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

struct Udp {
    refused: Refusals,
    /// Where the sessions' replies are read into, one at a time.
    reply_buf: Mutex<Vec<u8>>,
    socket: Arc<UdpSocket>,
    backends: Backends,
    next: AtomicUsize,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
    ids: AtomicU64,
    epoch: Instant,
    limits: Limits,
}

/// Ends the session tasks when the published socket's task ends (stop, drop).
struct AbortSessions(Arc<Udp>);

impl Drop for AbortSessions {
    fn drop(&mut self) {
        let sessions = std::mem::take(&mut *lock(&self.0.sessions));
        for (_, session) in sessions {
            session.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Udp {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn serve(self: Arc<Udp>) {
        let _guard = AbortSessions(self.clone());
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, client) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors reported on the unconnected socket and the like: go on.
                    if e.kind() != io::ErrorKind::ConnectionRefused {
                        warn(&format!("udp receive on {:?}: {e}", self.socket.local_addr().ok()));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            };
            let Some((socket, last)) = self.session_for(client).await else {
                continue; // no backend, or too many sessions: the datagram is dropped
            };
            last.store(self.now_ms(), Ordering::Relaxed);
            if socket.send(&buf[..n]).await.is_err() {
                self.end_session(client, None);
            }
        }
    }

    /// The live session of `client`, or a new one on the next backend.
    async fn session_for(self: &Arc<Udp>, client: SocketAddr) -> Option<(Arc<SessionSocket>, Arc<AtomicU64>)> {
        let list = self.backends.borrow().clone();
        {
            let mut sessions = lock(&self.sessions);
            if let Some(s) = sessions.get(&client) {
                let idle = self.now_ms().saturating_sub(s.last.load(Ordering::Relaxed));
                let live = idle < self.limits.udp_idle.as_millis() as u64 && !s.task.is_finished();
                if live && list.contains(&s.backend) {
                    return Some((s.socket.clone(), s.last.clone()));
                }
                if let Some(s) = sessions.remove(&client) {
                    s.task.abort();
                }
            }
            if sessions.len() >= self.limits.max_udp_sessions {
                let cap = self.limits.max_udp_sessions;
                self.refused.note(|| format!("at its cap of {cap} sessions: datagrams of new clients are dropped"));
                return None;
            }
        }
        let (_, backend) = pick(&self.next, &list)?;
        let Some(fd) = self.limits.fds.take(1) else {
            let total = self.limits.fds.total();
            self.refused.note(|| {
                format!("the published ports hold the {total} file descriptors they may take: datagrams of new clients are dropped")
            });
            return None;
        };
        let local: SocketAddr = match backend.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.ok()?;
        socket.connect(backend).await.ok()?;
        let socket = Arc::new(SessionSocket { socket, _fd: fd });
        let last = Arc::new(AtomicU64::new(self.now_ms()));
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(self.clone().replies(id, client, socket.clone(), last.clone()));
        let session = Session { id, backend, socket: socket.clone(), last: last.clone(), task };
        if let Some(old) = lock(&self.sessions).insert(client, session) {
            old.task.abort();
        }
        Some((socket, last))
    }

    /// Forwards the backend's datagrams to `client` until the session has been idle too long.
    ///
    /// A datagram is read into the port's one receive buffer (no await while it is held) and
    /// copied out at its size, so an idle session costs a few hundred bytes, not 64 KiB.
    async fn replies(self: Arc<Udp>, id: u64, client: SocketAddr, socket: Arc<SessionSocket>, last: Arc<AtomicU64>) {
        let idle_ms = self.limits.udp_idle.as_millis() as u64;
        loop {
            let quiet = self.now_ms().saturating_sub(last.load(Ordering::Relaxed));
            if quiet >= idle_ms {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(idle_ms - quiet), socket.readable()).await {
                Err(_) => continue, // re-check: the client may have sent meanwhile
                Ok(Ok(())) => {
                    let datagram = {
                        let mut buf = lock(&self.reply_buf);
                        match socket.try_recv(&mut buf) {
                            Ok(n) => buf[..n].to_vec(),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(_) => break, // e.g. the backend's port refused a datagram
                        }
                    };
                    last.store(self.now_ms(), Ordering::Relaxed);
                    let _ = self.socket.send_to(&datagram, client).await;
                }
                Ok(Err(_)) => break,
            }
        }
        self.end_session(client, Some(id));
    }

    /// Removes `client`'s session (only the one with `id` when given: a newer one stays).
    fn end_session(&self, client: SocketAddr, id: Option<u64>) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&client).is_some_and(|s| id.is_none_or(|id| s.id == id)) {
            if let Some(s) = sessions.remove(&client) {
                if id.is_none() {
                    s.task.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOCAL: &str = "127.0.0.1:0";
    /// A generous bound for things that must happen; a test fails rather than hangs.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A TCP backend on 127.0.0.1: sends its name and a newline, then echoes what it reads
    /// until the client ends its writes, then closes. Its task ends with the test's runtime.
    async fn backend(name: &'static str) -> SocketAddr {
        backend_on(name, LOCAL.parse().unwrap()).await
    }

    async fn backend_on(name: &'static str, at: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// An address where nothing listens (connect refused): bound once, then released.
    fn dead_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind(LOCAL).unwrap();
        l.local_addr().unwrap()
    }

    async fn proxy(list: Vec<SocketAddr>, limits: Limits) -> (PortProxy, watch::Sender<Vec<SocketAddr>>) {
        let (tx, rx) = watch::channel(list);
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Tcp, rx, limits).unwrap();
        (p, tx)
    }

    /// Connects through the proxy and returns the stream and the name of the backend reached.
    async fn connect(addr: SocketAddr) -> (TcpStream, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let name = read_line(&mut s).await;
        (s, name)
    }

    async fn read_line(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        loop {
            let n = tokio::time::timeout(PATIENCE, s.read(&mut b)).await.expect("no reply").unwrap();
            if n == 0 || b[0] == b'\n' {
                return String::from_utf8(out).unwrap();
            }
            out.push(b[0]);
        }
    }

    /// The proxy closes `s` without a byte: EOF or a reset, never data and never a hang.
    async fn assert_closed(s: &mut TcpStream) {
        let mut b = [0u8; 16];
        match tokio::time::timeout(PATIENCE, s.read(&mut b)).await.expect("connection left open") {
            Ok(0) => {}
            Ok(n) => panic!("got {n} bytes from a connection that should be closed"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    async fn echo(s: &mut TcpStream, msg: &str) {
        s.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
        assert_eq!(read_line(s).await, msg);
    }

    #[tokio::test]
    async fn tcp_round_robin_over_three_backends() {
        let list = vec![backend("a").await, backend("b").await, backend("c").await];
        let (p, _tx) = proxy(list, Limits::default()).await;
        let mut names = Vec::new();
        for _ in 0..6 {
            let (mut s, name) = connect(p.tcp_addr().unwrap()).await;
            echo(&mut s, &format!("hello {name}")).await;
            names.push(name);
        }
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    }

    #[tokio::test]
    async fn removed_backend_gets_no_new_connection_but_keeps_established_ones() {
        let (a, b) = (backend("a").await, backend("b").await);
        let (p, tx) = proxy(vec![a, b], Limits::default()).await;
        let (mut on_a, name) = connect(p.tcp_addr().unwrap()).await;
        assert_eq!(name, "a");
        tx.send(vec![b]).unwrap();
        for _ in 0..4 {
            let (_s, name) = connect(p.tcp_addr().unwrap()).await;
            assert_eq!(name, "b");
        }
        echo(&mut on_a, "still here").await;
        // And a backend added back takes new connections again.
        tx.send(vec![a, b]).unwrap();
        let mut names: Vec<String> = Vec::new();
        for _ in 0..2 {
            names.push(connect(p.tcp_addr().unwrap()).await.1);
        }
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[tokio::test]
    async fn empty_list_closes_the_client() {
        let (p, tx) = proxy(vec![], Limits::default()).await;
        let mut s = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
        assert_closed(&mut s).await;
        // A backend published later serves the next connection.
        tx.send(vec![backend("a").await]).unwrap();
        assert_eq!(connect(p.tcp_addr().unwrap()).await.1, "a");
    }

    #[tokio::test]
    async fn dead_backend_is_skipped_and_all_dead_closes() {
        let a = backend("a").await;
        let (p, tx) = proxy(vec![dead_addr(), a, dead_addr()], Limits::default()).await;
        for _ in 0..6 {
            let (mut s, name) = connect(p.tcp_addr().unwrap()).await;
            assert_eq!(name, "a");
            echo(&mut s, "x").await;
        }
        tx.send(vec![dead_addr(), dead_addr()]).unwrap();
        let mut s = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
        assert_closed(&mut s).await;
    }

    #[tokio::test]
    async fn half_close_is_passed_on() {
        // A backend that reads until the client's EOF, then answers with the byte count.
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(format!("{}", all.len()).as_bytes()).await.unwrap();
        });
        let (p, _tx) = proxy(vec![addr], Limits::default()).await;
        let mut s = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
        s.write_all(&vec![7u8; 100_000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(PATIENCE, s.read_to_string(&mut reply)).await.unwrap().unwrap();
        assert_eq!(reply, "100000");
    }

    #[tokio::test]
    async fn port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind(LOCAL).unwrap();
        let addr = taken.local_addr().unwrap();
        let (_tx, rx) = watch::channel(vec![]);
        let e = PortProxy::bind(addr, Proto::Tcp, rx.clone(), Limits::default()).unwrap_err();
        assert_eq!(e.to_string(), format!("host port {}/tcp is already in use", addr.port()));

        let taken = std::net::UdpSocket::bind(LOCAL).unwrap();
        let addr = taken.local_addr().unwrap();
        let e = PortProxy::bind(addr, Proto::Udp, rx, Limits::default()).unwrap_err();
        assert_eq!(e.to_string(), format!("host port {}/udp is already in use", addr.port()));
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed() {
        let a = backend("a").await;
        let limits = Limits { max_connections: 2, ..Limits::default() };
        let (p, _tx) = proxy(vec![a], limits).await;
        let (mut one, _) = connect(p.tcp_addr().unwrap()).await;
        let (mut two, _) = connect(p.tcp_addr().unwrap()).await;
        let mut three = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
        assert_closed(&mut three).await;
        echo(&mut one, "1").await;
        echo(&mut two, "2").await;
        // Once one ends, its slot is free again (released when the proxy sees the close).
        drop(one);
        let mut served = false;
        for _ in 0..100 {
            let mut s = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
            let mut b = [0u8; 2];
            if tokio::time::timeout(PATIENCE, s.read(&mut b)).await.unwrap().unwrap_or(0) > 0 {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "the freed slot was never reused");
    }

    /// Two ports sharing one budget of 4 fds: two connections in all (two fds each), whichever
    /// port they come to; the others are closed at once, and a slot freed serves again.
    #[tokio::test]
    async fn ports_share_one_fd_budget() {
        let a = backend("a").await;
        let limits = Limits { max_connections: 100, ..Limits::with_fd_budget(4) };
        let (p1, _tx1) = proxy(vec![a], limits.clone()).await;
        let (p2, _tx2) = proxy(vec![a], limits.clone()).await;
        let (mut one, _) = connect(p1.tcp_addr().unwrap()).await;
        let (mut two, _) = connect(p2.tcp_addr().unwrap()).await;
        assert_eq!(limits.fds.in_use(), 4);
        for p in [&p1, &p2] {
            let mut over = TcpStream::connect(p.tcp_addr().unwrap()).await.unwrap();
            assert_closed(&mut over).await;
        }
        echo(&mut one, "1").await;
        echo(&mut two, "2").await;
        drop(one);
        let mut served = false;
        for _ in 0..100 {
            let mut s = TcpStream::connect(p2.tcp_addr().unwrap()).await.unwrap();
            let mut b = [0u8; 2];
            if tokio::time::timeout(PATIENCE, s.read(&mut b)).await.unwrap().unwrap_or(0) > 0 {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "the freed fds were never reused");
    }

    #[test]
    fn per_port_caps_are_half_the_budget() {
        let l = Limits::with_fd_budget(512);
        assert_eq!((l.max_connections, l.max_udp_sessions, l.fds.total()), (128, 256, 512));
        let l = Limits::with_fd_budget(8192);
        assert_eq!((l.max_connections, l.max_udp_sessions), (2048, 1024));
        let l = Limits::with_fd_budget(0);
        assert_eq!((l.max_connections, l.max_udp_sessions), (1, 1));
    }

    #[tokio::test]
    async fn stop_closes_the_listener_and_keeps_established_connections() {
        let a = backend("a").await;
        let (p, _tx) = proxy(vec![a], Limits::default()).await;
        let addr = p.tcp_addr().unwrap();
        let (mut s, _) = connect(addr).await;
        p.stop().await;
        let e = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        echo(&mut s, "after stop").await;
        // The port is free again.
        let (_tx, rx) = watch::channel(vec![a]);
        let p = PortProxy::bind(addr, Proto::Tcp, rx, Limits::default()).unwrap();
        assert_eq!(connect(p.tcp_addr().unwrap()).await.1, "a");
    }

    /// A UDP backend on 127.0.0.1 answering each datagram with "NAME:" + the datagram.
    async fn udp_backend(name: &'static str) -> SocketAddr {
        udp_backend_on(name, LOCAL.parse().unwrap()).await
    }

    async fn udp_backend_on(name: &'static str, at: SocketAddr) -> SocketAddr {
        let s = UdpSocket::bind(at).await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from).await;
            }
        });
        addr
    }

    async fn ask(client: &UdpSocket, msg: &str) -> String {
        client.send(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(PATIENCE, client.recv(&mut buf)).await.expect("no reply").unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    async fn udp_client(to: SocketAddr) -> UdpSocket {
        let c = UdpSocket::bind(LOCAL).await.unwrap();
        c.connect(to).await.unwrap();
        c
    }

    #[tokio::test]
    async fn udp_sessions_round_robin_and_replies_reach_their_client() {
        let (a, b) = (udp_backend("a").await, udp_backend("b").await);
        let (tx, rx) = watch::channel(vec![a, b]);
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Udp, rx, Limits::default()).unwrap();
        let to = p.udp_addr().unwrap();
        let clients = [udp_client(to).await, udp_client(to).await, udp_client(to).await];
        // Each client's first datagram starts a session on the next backend...
        let mut seen = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            seen.push(ask(c, &format!("c{i}")).await);
        }
        assert_eq!(seen, ["a:c0", "b:c1", "a:c2"]);
        // ...and its later ones stay there, the replies coming back to it alone.
        for round in 0..3 {
            for (i, c) in clients.iter().enumerate() {
                let backend = if i == 1 { "b" } else { "a" };
                assert_eq!(ask(c, &format!("c{i} r{round}")).await, format!("{backend}:c{i} r{round}"));
            }
        }
        // A backend that leaves the list gets no more datagrams: c0 moves to b.
        tx.send(vec![b]).unwrap();
        assert_eq!(ask(&clients[0], "moved").await, "b:moved");
        assert_eq!(ask(&clients[1], "stays").await, "b:stays");
    }

    #[tokio::test]
    async fn udp_idle_session_ends_and_next_datagram_picks_again() {
        let (a, b) = (udp_backend("a").await, udp_backend("b").await);
        let (_tx, rx) = watch::channel(vec![a, b]);
        let limits = Limits { udp_idle: Duration::from_millis(100), ..Limits::default() };
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Udp, rx, limits).unwrap();
        let c = udp_client(p.udp_addr().unwrap()).await;
        assert_eq!(ask(&c, "1").await, "a:1");
        // Wait until the session has certainly expired (idle time is a lower bound).
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(ask(&c, "2").await, "b:2");
    }

    #[tokio::test]
    async fn udp_session_cap_drops_new_clients_only() {
        let a = udp_backend("a").await;
        let (_tx, rx) = watch::channel(vec![a]);
        let limits = Limits { max_udp_sessions: 1, ..Limits::default() };
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Udp, rx, limits).unwrap();
        let to = p.udp_addr().unwrap();
        let (first, second) = (udp_client(to).await, udp_client(to).await);
        assert_eq!(ask(&first, "1").await, "a:1");
        second.send(b"dropped").await.unwrap();
        // The first client's reply proves the proxy handled the second's datagram before it
        // (one socket, read in order), and nothing may have come back to the second.
        assert_eq!(ask(&first, "2").await, "a:2");
        let mut buf = [0u8; 64];
        assert!(tokio::time::timeout(Duration::from_millis(200), second.recv(&mut buf)).await.is_err());
    }

    /// A UDP session holds one fd of the shared budget: with one fd, the second client's
    /// datagrams are dropped until the first session has expired; then it is served.
    #[tokio::test]
    async fn udp_sessions_take_from_the_fd_budget() {
        let a = udp_backend("a").await;
        let (_tx, rx) = watch::channel(vec![a]);
        let limits = Limits { udp_idle: Duration::from_millis(300), ..Limits::with_fd_budget(1) };
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Udp, rx, limits.clone()).unwrap();
        let to = p.udp_addr().unwrap();
        let (first, second) = (udp_client(to).await, udp_client(to).await);
        assert_eq!(ask(&first, "1").await, "a:1");
        assert_eq!(limits.fds.in_use(), 1);
        second.send(b"dropped").await.unwrap();
        assert_eq!(ask(&first, "2").await, "a:2");
        let mut buf = [0u8; 64];
        assert!(tokio::time::timeout(Duration::from_millis(200), second.recv(&mut buf)).await.is_err());
        // Once the first session has expired, its fd is back.
        let deadline = Instant::now() + PATIENCE;
        while limits.fds.in_use() > 0 {
            assert!(Instant::now() < deadline, "the expired session kept its fd");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ask(&second, "3").await, "a:3");
    }

    #[tokio::test]
    async fn both_protocols_on_one_port() {
        // One backend list per published port, as a container serves TCP and UDP on one port.
        let tcp = backend("t").await;
        let udp = udp_backend_on("u", tcp).await;
        assert_eq!(tcp, udp);
        let (_tx, rx) = watch::channel(vec![tcp]);
        let p = PortProxy::bind(LOCAL.parse().unwrap(), Proto::Both, rx, Limits::default()).unwrap();
        assert_eq!(p.tcp_addr().map(|a| a.port()), p.udp_addr().map(|a| a.port()));
        assert_eq!(connect(p.tcp_addr().unwrap()).await.1, "t");
        assert_eq!(ask(&udp_client(p.udp_addr().unwrap()).await, "x").await, "u:x");
    }
}
