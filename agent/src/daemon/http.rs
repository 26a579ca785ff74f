//! The read-only HTTP status endpoint.
//!
//! * `GET /healthz`: `200 ok` while a manifest is loaded and the reconcile loop went round in
//!   the last [`HEALTH_MAX_TICK_AGE`], else `503` with a one-line reason.
//! * `GET /v1/status`: the [`Status`] as JSON.
//! * `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! `HEAD` works like `GET` without the body; other methods get `405` (`Allow: GET, HEAD`), unknown
//! paths `404`, requests with a body `413`. Nothing here can change the agent.
//!
//! The agent runs the endpoint on a thread of its own ([`Endpoint`]: `skiff-http`, a
//! current-thread runtime), so no request — a burst of `/metrics`, a `/v1/status` of many
//! services — ever runs on the reconcile loop's thread. The server only ever reads the newest
//! [`Snapshot`] of the watch channel (cloning its `Arc`, never holding the channel's lock across
//! an await), so the reconcile loop never waits for it either.
//!
//! What a request costs: answers are made once and kept ([`Cache`]): the status JSON once per
//! snapshot, the `/metrics` text once per snapshot and cgroup reading, and the containers'
//! cgroups are read at most once every [`STATS_MAX_AGE`] (their numbers in `/metrics` are that
//! old at most). So a flood of requests costs the agent the HTTP work alone, not a cgroup scan
//! or a serialization each; and clients reading a big answer slowly share one buffer.
//!
//! Hostile clients: request heads are bounded ([`Limits::max_buf_size`]), must arrive within
//! [`Limits::header_timeout`] (which also bounds how long an idle keep-alive connection stays
//! open), a connection lives at most [`Limits::connection_timeout`], and at most
//! [`Limits::max_connections`] are open at once (each holds a slot until its socket is closed,
//! so that is also the most file descriptors the endpoint holds, plus one for a moment). When
//! a new connection arrives at the cap, the oldest open connection is closed to make room,
//! rather than the new one refused: answering takes microseconds, so outside a flood the oldest
//! connection is one that idles or trickles its head in. So idle or slow clients can neither
//! grow the agent's memory nor take its file descriptors nor keep others out.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use super::cgstats;
use super::status::{ServiceStatus, Snapshot, Status};

/// `/healthz` fails when the reconcile loop has not gone round for this long.
pub const HEALTH_MAX_TICK_AGE: Duration = Duration::from_secs(30);

/// How old the containers' cgroup numbers in `/metrics` may be: they are read at most this
/// often, whatever the number of requests.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(1);

/// The status endpoint of the agent, on its own thread (see the module docs). Bound by
/// [`Endpoint::bind`] at start-up (so a bind error is the agent's start-up error), serving
/// once [`Endpoint::serve`] is called, until [`Endpoint::stop`] or drop.
pub struct Endpoint {
    rt: tokio::runtime::Handle,
    listener: Option<TcpListener>,
    stop: Option<oneshot::Sender<()>>,
}

impl Endpoint {
    /// Starts the `skiff-http` thread and binds `addr` there (`SO_REUSEADDR`, backlog 1024).
    /// Must be called inside a tokio runtime: where the thread cannot be started, the endpoint
    /// runs on that runtime instead.
    pub fn bind(addr: SocketAddr) -> io::Result<Endpoint> {
        let rt = match super::runtime_thread("skiff-http") {
            Ok(h) => h,
            Err(e) => {
                super::reconcile::log(&format!(
                    "starting the status endpoint's thread: {e}; it runs on the agent's thread"
                ));
                tokio::runtime::Handle::current()
            }
        };
        let listener = {
            let _in = rt.enter();
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?
        };
        Ok(Endpoint { rt, listener: Some(listener), stop: None })
    }

    /// Serves `snapshots` (once; later calls do nothing).
    pub fn serve(&mut self, snapshots: watch::Receiver<Snapshot>) {
        let Some(listener) = self.listener.take() else { return };
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.rt.spawn(serve(listener, snapshots, async move {
            let _ = stopped.await;
        }));
    }

    /// Stops serving: the listener and every open connection are closed.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.listener = None;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one client may cost the agent.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at once.
    pub max_connections: usize,
    /// Time to send a whole request head; also the longest idle time of a keep-alive connection.
    pub header_timeout: Duration,
    /// Longest life of a connection, whatever it does.
    pub connection_timeout: Duration,
    /// Read buffer of a connection: the largest request head accepted (hyper answers 431 beyond).
    pub max_buf_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_buf_size: 16 * 1024,
        }
    }
}

/// Serves the status endpoint on `listener` until `shutdown` completes, with the default
/// [`Limits`]. Open connections are closed when it returns.
pub async fn serve(listener: TcpListener, snapshots: watch::Receiver<Snapshot>, shutdown: impl Future<Output = ()>) {
    serve_with(listener, snapshots, shutdown, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    snapshots: watch::Receiver<Snapshot>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_buf_size.max(8192))
        .keep_alive(true)
        .half_close(false);
    let builder = Arc::new(builder);
    let cache = Arc::new(Cache::default());
    // A slot per open connection, held by its task until the socket is closed.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));

    let mut tasks = JoinSet::new();
    // Oldest first.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin, let it pass.
                    super::reconcile::log(&format!("warning: status endpoint: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        open.retain(|c| !c.is_finished());
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // At the cap: the oldest connection makes room. Its slot comes back as soon as
                // the runtime has dropped its task, which the abort schedules at once.
                if let Some(oldest) = open.pop_front() {
                    oldest.abort();
                }
                match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => continue, // not expected: then the new connection is closed instead
                }
            }
        };
        let rx = snapshots.clone();
        let builder = builder.clone();
        let cache = cache.clone();
        let timeout = limits.connection_timeout;
        let abort = tasks.spawn(async move {
            // Given back once the connection's socket is closed (dropped before it).
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let service = service_fn(move |req: Request<Incoming>| {
                // Clone the Arc out of the channel at once: never hold its lock.
                let snapshot = rx.borrow().clone();
                let answer = respond(&req, &snapshot, &cache);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // Errors (a client gone, a header time-out, a bad request) concern only that client.
            let _ = tokio::time::timeout(timeout, conn).await;
        });
        open.push_back(abort);
    }
    // Dropping the set aborts every connection task.
    drop(tasks);
}

type ResBody = Full<Bytes>;

/// The answers kept between requests (see the module docs).
#[derive(Default)]
struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// The status JSON, and the status it was made of.
    status: Option<(Arc<Status>, Bytes)>,
    /// The `/metrics` text, made of that status and of `stats`.
    metrics: Option<(Arc<Status>, Bytes)>,
    /// The cgroup numbers by pid, read since `stats_at` (`None`: nothing readable).
    stats: HashMap<i32, Option<cgstats::Stats>>,
    stats_at: Option<Instant>,
    /// Cgroups read so far (one per pid and scan).
    reads: u64,
}

fn lock(m: &Mutex<CacheInner>) -> std::sync::MutexGuard<'_, CacheInner> {
    // Each field is replaced whole: a panic while the lock was held leaves nothing half-made.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// The JSON of `status` (made once per status).
    fn status_json(&self, status: &Arc<Status>) -> Result<Bytes, serde_json::Error> {
        let mut c = lock(&self.inner);
        if let Some((s, body)) = &c.status {
            if Arc::ptr_eq(s, status) {
                return Ok(body.clone());
            }
        }
        let mut json = serde_json::to_vec(&**status)?;
        json.push(b'\n');
        let body = Bytes::from(json);
        c.status = Some((status.clone(), body.clone()));
        Ok(body)
    }

    /// The `/metrics` text of `status`, the cgroups read from the machine.
    fn metrics(&self, status: &Arc<Status>) -> Bytes {
        // The cgroup mounts, read once per scan (when a pid needs them).
        let mut cgroups: Option<cgstats::Cgroups> = None;
        self.metrics_with(status, Instant::now(), |pid| cgroups.get_or_insert_with(cgstats::Cgroups::load).stats(pid))
    }

    /// [`Cache::metrics`] at `now`, reading a pid's cgroup with `read`: each pid's at most
    /// once every [`STATS_MAX_AGE`], the text made once per status and reading.
    fn metrics_with(
        &self,
        status: &Arc<Status>,
        now: Instant,
        mut read: impl FnMut(i32) -> Option<cgstats::Stats>,
    ) -> Bytes {
        let mut c = lock(&self.inner);
        if c.stats_at.is_none_or(|at| now.saturating_duration_since(at) >= STATS_MAX_AGE) {
            c.stats.clear();
            c.metrics = None;
            c.stats_at = Some(now);
        }
        if let Some((s, body)) = &c.metrics {
            if Arc::ptr_eq(s, status) {
                return body.clone();
            }
        }
        let inner = &mut *c;
        let text = metrics(status, |pid| {
            *inner.stats.entry(pid).or_insert_with(|| {
                inner.reads += 1;
                read(pid)
            })
        });
        let body = Bytes::from(text);
        inner.metrics = Some((status.clone(), body.clone()));
        body
    }
}

fn respond(req: &Request<Incoming>, snapshot: &Snapshot, cache: &Cache) -> Response<ResBody> {
    let route = match req.uri().path() {
        "/healthz" => Route::Health,
        "/v1/status" => Route::Status,
        "/metrics" => Route::Metrics,
        _ => return plain(StatusCode::NOT_FOUND, "not found: try /healthz, /v1/status or /metrics\n"),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: the endpoint is read-only\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if !req.body().is_end_stream() {
        let mut r = plain(StatusCode::PAYLOAD_TOO_LARGE, "requests with a body are not accepted\n");
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    match route {
        Route::Health => match health(snapshot) {
            Ok(()) => plain(StatusCode::OK, "ok\n"),
            Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n")),
        },
        Route::Status => match cache.status_json(&snapshot.status) {
            Ok(json) => response(StatusCode::OK, "application/json", json),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding the status: {e}\n")),
        },
        Route::Metrics => {
            response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", cache.metrics(&snapshot.status))
        }
    }
}

enum Route {
    Health,
    Status,
    Metrics,
}

fn plain(status: StatusCode, text: &str) -> Response<ResBody> {
    response(status, "text/plain; charset=utf-8", Bytes::copy_from_slice(text.as_bytes()))
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ResBody> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Why the agent is not healthy, if it is not.
pub fn health(snapshot: &Snapshot) -> Result<(), String> {
    if !snapshot.manifest_loaded {
        let error = snapshot.status.manifest.error.as_deref().map(one_line).unwrap_or_default();
        return Err(if error.is_empty() {
            "no manifest loaded yet".to_string()
        } else {
            format!("no manifest loaded yet: {error}")
        });
    }
    let age = snapshot.tick.elapsed();
    if age >= HEALTH_MAX_TICK_AGE {
        return Err(format!("the reconcile loop has not run for {}s", age.as_secs()));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    skiff_images::text::one_line(s, skiff_images::text::MESSAGE_MAX)
}

/// One number of a service, for a per-service gauge.
type ServiceCount = fn(&ServiceStatus) -> u32;

/// The `/metrics` document (Prometheus text format 0.0.4). `stats` reads the cgroup of a pid
/// ([`cgstats::Cgroups::stats`] in the agent).
pub fn metrics(status: &Status, mut stats: impl FnMut(i32) -> Option<cgstats::Stats>) -> String {
    let mut out = String::with_capacity(1024);
    let services = &status.services;
    let per_service: [(&str, &str, ServiceCount); 3] = [
        ("skiff_service_replicas_desired", "Replicas of the service the manifest asks for.", |s| s.desired_replicas),
        ("skiff_service_replicas_running", "Replicas of the service that are running.", |s| s.running_replicas),
        (
            "skiff_service_replicas_healthy",
            "Replicas of the service that pass their health check (or run and have none).",
            |s| s.healthy_replicas,
        ),
    ];
    for (name, help, value) in per_service {
        family(&mut out, name, "gauge", help);
        for s in services {
            sample(&mut out, name, &[("service", &s.name)], value(s) as f64);
        }
    }
    family(&mut out, "skiff_service_revision", "gauge", "The revision of the service in force.");
    for s in services {
        if let Some(n) = s.revisions.revision {
            sample(&mut out, "skiff_service_revision", &[("service", &s.name)], f64::from(n));
        }
    }
    family(
        &mut out,
        "skiff_update_state",
        "gauge",
        "1 for the state of the service's last rollout (updating, paused, rolling_back, rolled_back, completed), 0 for the others.",
    );
    for s in services {
        if let Some(u) = &s.revisions.update {
            for st in ["updating", "paused", "rolling_back", "rolled_back", "completed"] {
                let v = if u.state == st { 1.0 } else { 0.0 };
                sample(&mut out, "skiff_update_state", &[("service", &s.name), ("state", st)], v);
            }
        }
    }
    family(
        &mut out,
        "skiff_image_update_checks_total",
        "counter",
        "Checks of the service's image tag against the registry, by result (unchanged, new, failed_before, error).",
    );
    for s in services {
        if let Some(c) = &s.image_check {
            for (i, result) in crate::daemon::status::IMAGE_CHECK_RESULTS.iter().enumerate() {
                let labels = [("service", s.name.as_str()), ("result", result)];
                sample(&mut out, "skiff_image_update_checks_total", &labels, c.counts[i] as f64);
            }
        }
    }
    family(
        &mut out,
        "skiff_port_backends",
        "gauge",
        "Replicas a published port sends connections to (0: it is not published, or none is healthy).",
    );
    for s in services {
        for p in &s.ports {
            let labels = [("service", s.name.as_str()), ("port", p.mapping.as_str())];
            let n = if p.error.is_some() { 0.0 } else { p.backends as f64 };
            sample(&mut out, "skiff_port_backends", &labels, n);
        }
    }
    if let Some(st) = &status.store {
        let store: [(&str, &str, &str, u64); 5] = [
            (
                "skiff_store_filesystem_size_bytes",
                "gauge",
                "Size of the filesystem the image store is on.",
                st.size_bytes,
            ),
            (
                "skiff_store_filesystem_used_bytes",
                "gauge",
                "Bytes used on the filesystem the image store is on.",
                st.used_bytes,
            ),
            (
                "skiff_image_gc_runs_total",
                "counter",
                "Image collections on disk pressure (past the high mark).",
                st.image_gc.runs,
            ),
            (
                "skiff_image_gc_images_removed_total",
                "counter",
                "Unused images removed on disk pressure.",
                st.image_gc.images_removed,
            ),
            (
                "skiff_image_gc_freed_bytes_total",
                "counter",
                "Bytes freed by image collections on disk pressure.",
                st.image_gc.bytes_freed,
            ),
        ];
        for (name, kind, help, v) in store {
            family(&mut out, name, kind, help);
            sample(&mut out, name, &[], v as f64);
        }
    }
    family(&mut out, "skiff_container_restarts_total", "counter", "Restarts of the replica.");
    for s in services {
        for r in &s.replicas {
            let labels = [("service", s.name.as_str()), ("replica", r.id.as_str())];
            sample(&mut out, "skiff_container_restarts_total", &labels, r.restarts as f64);
        }
    }
    // Read each cgroup once, for both families.
    let read: Vec<(&str, &str, cgstats::Stats)> = services
        .iter()
        .flat_map(|s| s.replicas.iter().map(move |r| (s, r)))
        .filter_map(|(s, r)| Some((s.name.as_str(), r.id.as_str(), stats(r.pid?)?)))
        .collect();
    family(
        &mut out,
        "skiff_container_memory_bytes",
        "gauge",
        "Memory used by the replica's container (its cgroup), in bytes.",
    );
    for (service, replica, st) in &read {
        if let Some(m) = st.memory_bytes {
            sample(&mut out, "skiff_container_memory_bytes", &[("service", service), ("replica", replica)], m as f64);
        }
    }
    family(
        &mut out,
        "skiff_container_cpu_seconds_total",
        "counter",
        "CPU time used by the replica's container (its cgroup), in seconds.",
    );
    for (service, replica, st) in &read {
        if let Some(c) = st.cpu_seconds {
            sample(&mut out, "skiff_container_cpu_seconds_total", &[("service", service), ("replica", replica)], c);
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v, true));
        }
        out.push('}');
    }
    let _ = if value.is_nan() {
        writeln!(out, " NaN")
    } else if value.is_infinite() {
        writeln!(out, " {}Inf", if value > 0.0 { "+" } else { "-" })
    } else {
        writeln!(out, " {value}")
    };
}

/// Escapes per the exposition format: `\` and newline everywhere, `"` in label values.
fn escape(s: &str, label_value: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '"' if label_value => o.push_str("\\\""),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use crate::daemon::status::{Health, ManifestStatus, ReplicaState, ReplicaStatus};

    /// A server on 127.0.0.1:0, shut down when dropped.
    struct Server {
        addr: SocketAddr,
        tx: watch::Sender<Snapshot>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(snapshot: Snapshot, limits: Limits) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = watch::channel(snapshot);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(
                listener,
                rx,
                async move {
                    let _ = stopped.await;
                },
                limits,
            ));
            Server { addr, tx, stop: Some(stop), task }
        }

        /// Sends `request` and reads the whole answer (the server closes or the request says
        /// `Connection: close`).
        async fn raw(&self, request: &[u8]) -> Vec<u8> {
            let mut s = TcpStream::connect(self.addr).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.unwrap().unwrap();
            out
        }

        async fn get(&self, method: &str, path: &str) -> Answer {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            Answer::parse(&self.raw(req.as_bytes()).await)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            self.task.abort();
        }
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: BTreeMap<String, String>,
        body: String,
    }

    impl Answer {
        fn parse(raw: &[u8]) -> Answer {
            let text = String::from_utf8_lossy(raw);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head in {text:?}"));
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            Answer { status, headers, body: body.to_string() }
        }
    }

    fn replica(id: &str, pid: Option<i32>, restarts: u32) -> ReplicaStatus {
        ReplicaStatus {
            id: id.into(),
            state: if pid.is_some() { ReplicaState::Running } else { ReplicaState::Backoff },
            pid,
            restarts,
            last_exit_code: Some(1),
            health: Health::Healthy,
            started_at: Some("2024-05-01T10:00:00Z".into()),
            next_restart_in: None,
            message: None,
            address: None,
            revision: None,
            image_digest: None,
            slot: 1,
        }
    }

    fn sample_status() -> Status {
        Status {
            manifest: ManifestStatus {
                path: "/etc/skiff/compose.yaml".into(),
                revision: Some(format!("sha256:{}", "ab".repeat(32))),
                error: None,
                warnings: vec![],
            },
            host: Default::default(),
            services: vec![
                ServiceStatus {
                    name: "web".into(),
                    revisions: Default::default(),
                    image_check: None,
                    image: "nginx:1.27".into(),
                    image_digest: None,
                    desired_replicas: 2,
                    running_replicas: 1,
                    healthy_replicas: 1,
                    warnings: vec![],
                    replicas: vec![replica("web-1", Some(4242), 0), replica("web-2", None, 3)],
                    ports: vec![crate::daemon::status::PortStatus {
                        mapping: "8080:80/tcp".into(),
                        protocol: "tcp".into(),
                        host_ip: Some("::".into()),
                        host_port: Some(8080),
                        target: 80,
                        backends: 1,
                        error: None,
                        warning: None,
                    }],
                },
                ServiceStatus {
                    name: "we\"ird\\name\nx".into(),
                    revisions: Default::default(),
                    image_check: None,
                    image: "busybox".into(),
                    desired_replicas: 1,
                    replicas: vec![replica("we\"ird\\name\nx-1", Some(7), 1)],
                    ..Default::default()
                },
            ],
            store: Some(crate::daemon::status::StoreStatus {
                size_bytes: 1 << 30,
                used_bytes: 900 << 20,
                image_gc: crate::daemon::status::ImageGcStatus {
                    enabled: true,
                    high_percent: 85,
                    low_percent: 80,
                    runs: 2,
                    images_removed: 3,
                    bytes_freed: 123 << 20,
                    last: Some("disk pressure: ...".into()),
                },
            }),
        }
    }

    fn healthy(status: Status) -> Snapshot {
        Snapshot { status: Arc::new(status), manifest_loaded: true, tick: Instant::now() }
    }

    type Series = (String, BTreeMap<String, String>, f64);

    /// A checker of the Prometheus text format 0.0.4: every sample belongs to a family declared
    /// (HELP, TYPE) before it, families are contiguous and declared once, names and labels are
    /// valid, label values are properly escaped (unescaped here), values are floats, no series
    /// repeats, the text ends with a newline.
    fn check_exposition(text: &str) -> Result<Vec<Series>, String> {
        fn valid_name(n: &str) -> bool {
            let mut c = n.chars();
            matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("no final newline".into());
        }
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut it = rest.splitn(3, ' ');
                let (kw, name, arg) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
                if kw != "HELP" && kw != "TYPE" {
                    continue;
                }
                if !valid_name(name) {
                    return Err(err("bad metric name"));
                }
                if current.as_deref() != Some(name) {
                    if let Some(c) = current.take() {
                        done.insert(c);
                    }
                    if done.contains(name) {
                        return Err(err("family declared twice"));
                    }
                    current = Some(name.to_string());
                }
                if kw == "HELP" {
                    if !helped.insert(name.to_string()) || arg.is_empty() {
                        return Err(err("HELP repeated or empty"));
                    }
                } else {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(err("bad type"));
                    }
                    if typed.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(err("TYPE repeated"));
                    }
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
            let name = &line[..name_end];
            if current.as_deref() != Some(name) || !typed.contains_key(name) {
                return Err(err("sample outside its declared family"));
            }
            let mut rest = &line[name_end..];
            let mut labels = BTreeMap::new();
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices().peekable();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == '}' {
                        end = Some(i);
                        break;
                    }
                    if c == ',' {
                        continue;
                    }
                    let mut key = String::from(c);
                    loop {
                        match chars.next() {
                            Some((_, '=')) => break,
                            Some((_, c)) => key.push(c),
                            None => return Err(err("unterminated label name")),
                        }
                    }
                    if !valid_name(&key) || key.contains(':') {
                        return Err(err("bad label name"));
                    }
                    if chars.next().map(|x| x.1) != Some('"') {
                        return Err(err("label value not quoted"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '"')) => break,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, '\\')) => value.push('\\'),
                                Some((_, '"')) => value.push('"'),
                                _ => return Err(err("bad escape in a label value")),
                            },
                            Some((_, '\n')) => return Err(err("raw newline in a label value")),
                            Some((_, c)) => value.push(c),
                            None => return Err(err("unterminated label value")),
                        }
                    }
                    if labels.insert(key, value).is_some() {
                        return Err(err("label repeated"));
                    }
                }
                let end = end.ok_or_else(|| err("unterminated label set"))?;
                rest = &r[end + 1..];
            }
            let value = rest.strip_prefix(' ').ok_or_else(|| err("no space before the value"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| err("value is not a float"))?,
            };
            if typed[name] == "counter" && (value.is_nan() || value < 0.0) {
                return Err(err("negative counter"));
            }
            if !seen.insert(format!("{name}{labels:?}")) {
                return Err(err("series repeated"));
            }
            out.push((name.to_string(), labels, value));
        }
        Ok(out)
    }

    fn find<'a>(series: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Series> {
        series.iter().find(|(n, l, _)| {
            n == name && l.len() == labels.len() && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
    }

    #[test]
    fn checker_rejects_bad_text() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
        assert!(check_exposition(good).is_ok());
        for bad in [
            "a_total 1\n",
            "# HELP a A.\n# TYPE a gauge\na{x=\"a\"b\"} 1\n",
            "# HELP a A.\n# TYPE a gauge\na{x=\"\\q\"} 1\n",
            "# HELP a A.\n# TYPE a gauge\na one\n",
            "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
            "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\nb 1\na 1\n",
            "# HELP a A.\n# TYPE a counter\na -1\n",
            "# HELP a A.\n# TYPE a gauge\na 1",
        ] {
            assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn metrics_text() {
        let status = sample_status();
        let stats = |pid: i32| match pid {
            4242 => Some(cgstats::Stats { memory_bytes: Some(1 << 20), cpu_seconds: Some(1.25) }),
            // A kernel without a memory controller.
            7 => Some(cgstats::Stats { memory_bytes: None, cpu_seconds: Some(0.5) }),
            _ => None,
        };
        let text = metrics(&status, stats);
        let series = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let weird = "we\"ird\\name\nx";
        let weird_1 = "we\"ird\\name\nx-1";
        assert!(text.contains(r#"{service="we\"ird\\name\nx"}"#), "{text}");
        let value = |name: &str, labels: &[(&str, &str)]| find(&series, name, labels).map(|s| s.2);
        assert_eq!(value("skiff_service_replicas_desired", &[("service", "web")]), Some(2.0));
        assert_eq!(value("skiff_service_replicas_running", &[("service", "web")]), Some(1.0));
        assert_eq!(value("skiff_service_replicas_healthy", &[("service", "web")]), Some(1.0));
        assert_eq!(value("skiff_port_backends", &[("service", "web"), ("port", "8080:80/tcp")]), Some(1.0));
        assert_eq!(value("skiff_service_replicas_desired", &[("service", weird)]), Some(1.0));
        let web2 = [("service", "web"), ("replica", "web-2")];
        let web1 = [("service", "web"), ("replica", "web-1")];
        assert_eq!(value("skiff_container_restarts_total", &web2), Some(3.0));
        assert_eq!(value("skiff_container_memory_bytes", &web1), Some(1048576.0));
        assert_eq!(value("skiff_container_cpu_seconds_total", &web1), Some(1.25));
        // No pid: no cgroup series.
        assert_eq!(value("skiff_container_memory_bytes", &web2), None);
        assert_eq!(value("skiff_container_cpu_seconds_total", &web2), None);
        let w = [("service", weird), ("replica", weird_1)];
        assert_eq!(value("skiff_container_memory_bytes", &w), None);
        assert_eq!(value("skiff_container_cpu_seconds_total", &w), Some(0.5));
        assert_eq!(value("skiff_container_restarts_total", &w), Some(1.0));
        assert_eq!(value("skiff_store_filesystem_size_bytes", &[]), Some(1073741824.0));
        assert_eq!(value("skiff_store_filesystem_used_bytes", &[]), Some(943718400.0));
        assert_eq!(value("skiff_image_gc_runs_total", &[]), Some(2.0));
        assert_eq!(value("skiff_image_gc_images_removed_total", &[]), Some(3.0));
        assert_eq!(value("skiff_image_gc_freed_bytes_total", &[]), Some(128974848.0));
        for family in [
            "skiff_image_gc_runs_total counter",
            "skiff_image_gc_freed_bytes_total counter",
            "skiff_service_replicas_desired gauge",
            "skiff_service_replicas_running gauge",
            "skiff_service_replicas_healthy gauge",
            "skiff_port_backends gauge",
            "skiff_container_restarts_total counter",
            "skiff_container_memory_bytes gauge",
            "skiff_container_cpu_seconds_total counter",
        ] {
            assert!(text.contains(&format!("# TYPE {family}\n")), "{family}");
        }
        // An empty status is still a valid document.
        check_exposition(&metrics(&Status::default(), |_| None)).unwrap();
    }

    #[tokio::test]
    async fn endpoints() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;

        let a = server.get("GET", "/healthz").await;
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));

        let a = server.get("GET", "/v1/status").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-type"], "application/json");
        let back: Status = serde_json::from_str(&a.body).unwrap();
        assert_eq!(back, sample_status());
        // The query string does not matter.
        assert_eq!(server.get("GET", "/v1/status?pretty=1").await.status, 200);

        let a = server.get("GET", "/metrics").await;
        assert_eq!(a.status, 200);
        assert!(a.headers["content-type"].starts_with("text/plain; version=0.0.4"), "{a:?}");
        let series = check_exposition(&a.body).unwrap();
        assert!(find(&series, "skiff_service_replicas_desired", &[("service", "web")]).is_some());

        // A new snapshot is what the next request sees.
        let mut s = sample_status();
        s.services.truncate(1);
        s.services[0].desired_replicas = 5;
        server.tx.send(healthy(s.clone())).unwrap();
        let back: Status = serde_json::from_str(&server.get("GET", "/v1/status").await.body).unwrap();
        assert_eq!(back, s);
    }

    #[tokio::test]
    async fn health_fails() {
        let server = Server::start(Snapshot::default(), Limits::default()).await;
        let a = server.get("GET", "/healthz").await;
        assert_eq!(a.status, 503);
        assert_eq!(a.body, "no manifest loaded yet\n");

        let mut status = sample_status();
        status.manifest.error = Some("compose.yaml:3:5: error: bad\nsecond line".into());
        server.tx.send(Snapshot { status: Arc::new(status), ..Snapshot::default() }).unwrap();
        let a = server.get("GET", "/healthz").await;
        assert_eq!(a.status, 503);
        assert_eq!(a.body, "no manifest loaded yet: compose.yaml:3:5: error: bad; second line\n");

        // A reconcile loop that stopped going round.
        if let Some(old) = Instant::now().checked_sub(Duration::from_secs(45)) {
            server.tx.send(Snapshot { tick: old, ..healthy(sample_status()) }).unwrap();
            let a = server.get("GET", "/healthz").await;
            assert_eq!(a.status, 503);
            assert!(a.body.starts_with("the reconcile loop has not run for 4"), "{a:?}");
            assert_eq!(a.body.lines().count(), 1);
        }
    }

    #[tokio::test]
    async fn methods_paths_and_bodies() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;

        for path in ["/healthz", "/v1/status", "/metrics"] {
            let get = server.get("GET", path).await;
            let head = server.get("HEAD", path).await;
            assert_eq!(head.status, 200, "{path}");
            assert_eq!(head.body, "", "{path}");
            assert_eq!(head.headers["content-type"], get.headers["content-type"]);
        }

        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let a = server.get(method, "/v1/status").await;
            assert_eq!(a.status, 405, "{method}");
            assert_eq!(a.headers["allow"], "GET, HEAD");
        }

        for path in ["/", "/v1/status/x", "/healthz/", "/../etc/passwd", "/v2/status"] {
            assert_eq!(server.get("GET", path).await.status, 404, "{path}");
        }

        let a = Answer::parse(
            &server
                .raw(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
                .await,
        );
        assert_eq!(a.status, 413);
        let a = Answer::parse(
            &server
                .raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .await,
        );
        assert_eq!(a.status, 413);
        // A body on a mutating method is refused too (405 first: the path is read-only anyway).
        let a = Answer::parse(
            &server.raw(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await,
        );
        assert_eq!(a.status, 405);
        // Garbage is a 400, the server lives on.
        let a = Answer::parse(&server.raw(b"\x00\x01 nonsense\r\n\r\n").await);
        assert_eq!(a.status, 400);
        assert_eq!(server.get("GET", "/healthz").await.status, 200);
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    }

    /// A client that sends its request head one byte a second is cut off by the header time-out.
    #[tokio::test]
    async fn slow_headers_are_cut_off() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;
        let s = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = rd.read_to_end(&mut got).await;
            got
        });
        // 60 bytes: a minute at this pace, against a 5 s header time-out.
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut sent = 0;
        for b in request {
            if reader.is_finished() || wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let got = reader.await.unwrap();
        assert!(sent < request.len(), "the whole request got through");
        assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
        assert_eq!(server.get("GET", "/healthz").await.status, 200);
    }

    /// Request heads over the buffer limit are refused (431, or the connection is reset).
    #[tokio::test]
    async fn big_headers_are_refused() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;
        // 64 KiB would pass hyper's default limit (~400 KB); 1 MiB would not.
        for size in [64 << 10, 1 << 20] {
            let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
            req.resize(req.len() + size, b'a');
            req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let s = TcpStream::connect(server.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move { wr.write_all(&req).await.is_ok() });
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await.unwrap();
            let _ = writer.await;
            let text = String::from_utf8_lossy(&got);
            if read.is_ok() && !got.is_empty() {
                assert!(text.starts_with("HTTP/1.1 431 "), "{size}: {text}");
            } else {
                assert!(!text.contains(" 200 "));
            }
        }
        assert_eq!(server.get("GET", "/healthz").await.status, 200);
    }

    /// Idle connections beyond the cap close the oldest ones, never block a new one.
    #[tokio::test]
    async fn idle_connections_do_not_block_requests() {
        // A long header time-out: only the cap can close the idle connections here.
        let limits = Limits { header_timeout: Duration::from_secs(120), ..Limits::default() };
        let server = Server::start(healthy(sample_status()), limits.clone()).await;
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(server.addr).await.unwrap());
        }
        let a = server.get("GET", "/healthz").await;
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
        // At most max_connections stay open: the others were closed by the server.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut closed = vec![false; idle.len()];
        loop {
            for (i, s) in idle.iter().enumerate() {
                let mut b = [0u8; 1];
                match s.try_read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => closed[i] = true,
                }
            }
            let open = closed.iter().filter(|c| !**c).count();
            if open <= limits.max_connections || Instant::now() > deadline {
                assert!(open <= limits.max_connections, "{open} idle connections still open");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The oldest went first.
        assert!(closed[0] && !closed[199]);
        assert_eq!(server.get("GET", "/metrics").await.status, 200);
    }

    /// A client that asks for a big answer and never reads it is cut off by the connection
    /// time-out, and holds nobody else up meanwhile.
    #[tokio::test]
    async fn connection_timeout_cuts_non_readers() {
        let mut status = sample_status();
        // ~32 MB of JSON: more than the socket buffers hold.
        status.services[0].warnings = vec!["w".repeat(1 << 20); 32];
        let limits = Limits { connection_timeout: Duration::from_secs(2), ..Limits::default() };
        let server = Server::start(healthy(status), limits).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(server.get("GET", "/healthz").await.status, 200);
        // Well past the connection time-out before reading anything.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await.unwrap();
        let text = String::from_utf8_lossy(&got[..got.len().min(4096)]);
        let (head, _) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
            .unwrap()
            .parse()
            .unwrap();
        assert!(got.len() < head.len() + 4 + length, "the whole answer came: {} bytes", got.len());
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let mut server = Server::start(healthy(sample_status()), Limits::default()).await;
        let idle = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(server.get("GET", "/healthz").await.status, 200);
        let _ = server.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut server.task).await.unwrap().unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err());
        // Open connections were closed too.
        let mut b = [0u8; 1];
        let mut idle = idle;
        let n = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut b)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
    }

    /// A burst of `/metrics` reads each replica's cgroup once per [`STATS_MAX_AGE`], and makes
    /// the text once per status and reading; the status JSON is made once per status.
    #[test]
    fn answers_are_kept_and_cgroups_read_once_a_second() {
        let cache = Cache::default();
        let status = Arc::new(sample_status()); // pids 4242 and 7
        let reads = std::cell::Cell::new(0);
        let read = |pid: i32| {
            reads.set(reads.get() + 1);
            Some(cgstats::Stats { memory_bytes: Some(pid as u64), cpu_seconds: None })
        };
        let t0 = Instant::now();
        let first = cache.metrics_with(&status, t0, read);
        for i in 0..1000 {
            let body = cache.metrics_with(&status, t0 + Duration::from_micros(i), read);
            assert_eq!(body.as_ptr(), first.as_ptr(), "the same text, not made again");
        }
        assert_eq!(reads.get(), 2, "one read per pid");
        // A new status within the second: a new text, from the numbers read already...
        let mut next = sample_status();
        next.services[0].desired_replicas = 3;
        let next = Arc::new(next);
        let body = cache.metrics_with(&next, t0 + Duration::from_millis(500), read);
        assert!(String::from_utf8_lossy(&body).contains("skiff_service_replicas_desired{service=\"web\"} 3\n"));
        assert_eq!(reads.get(), 2);
        // ...except for a pid not read yet (a replica restarted meanwhile).
        let mut moved = sample_status();
        moved.services[0].replicas[0].pid = Some(4343);
        let moved = Arc::new(moved);
        let body = cache.metrics_with(&moved, t0 + Duration::from_millis(600), read);
        assert!(String::from_utf8_lossy(&body).contains("} 4343\n"));
        assert_eq!(reads.get(), 3);
        // A second later, read again.
        cache.metrics_with(&moved, t0 + STATS_MAX_AGE, read);
        assert_eq!(reads.get(), 5);
        assert_eq!(lock(&cache.inner).reads, 5);

        let json = cache.status_json(&status).unwrap();
        assert_eq!(cache.status_json(&status).unwrap().as_ptr(), json.as_ptr());
        assert_ne!(cache.status_json(&next).unwrap().as_ptr(), json.as_ptr());
        let back: Status = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, sample_status());
    }

    /// Through the server: many `/metrics` requests, one cgroup reading.
    #[tokio::test]
    async fn metrics_requests_share_one_reading() {
        let server = Server::start(healthy(sample_status()), Limits::default()).await;
        let start = Instant::now();
        let mut bodies = HashSet::new();
        for _ in 0..50 {
            bodies.insert(server.get("GET", "/metrics").await.body);
        }
        // Within a second, the same answer each time (a slow machine may see two readings).
        if start.elapsed() < STATS_MAX_AGE {
            assert_eq!(bodies.len(), 1);
        }
    }

    /// The endpoint on its own thread answers while the caller's thread is blocked.
    #[test]
    fn the_endpoint_runs_on_its_own_thread() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut endpoint = rt.block_on(async { Endpoint::bind("127.0.0.1:0".parse().unwrap()) }).unwrap();
        let addr = endpoint.listener.as_ref().unwrap().local_addr().unwrap();
        let (_tx, rx) = watch::channel(healthy(sample_status()));
        rt.block_on(async { endpoint.serve(rx) });
        // This thread (the runtime's) does not run: the answer comes from skiff-http.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        endpoint.stop();
        // Stopped: the listener is closed (once the thread has seen the stop).
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still listening after stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/metrics` reads a real cgroup for a replica with a pid.
    #[tokio::test]
    async fn metrics_from_a_real_cgroup() {
        let mounts = cgstats::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        if !mounts.iter().any(|m| !m.v2 && m.controllers.iter().any(|c| c == "memory")) {
            eprintln!("no v1 memory controller: skipped");
            return;
        }
        let cg = cgstats::testutil::TestCgroup::new(|m| {
            !m.v2 && m.controllers.iter().any(|c| c == "memory" || c == "cpuacct")
        })
        .unwrap();
        cg.wait_settled();
        let mut status = sample_status();
        status.services[0].replicas[0].pid = Some(cg.pid());
        let server = Server::start(healthy(status), Limits::default()).await;
        let a = server.get("GET", "/metrics").await;
        let series = check_exposition(&a.body).unwrap();
        let web1 = [("service", "web"), ("replica", "web-1")];
        let mem = find(&series, "skiff_container_memory_bytes", &web1).unwrap_or_else(|| panic!("{}", a.body));
        assert!(mem.2 > 0.0);
        assert!(find(&series, "skiff_container_cpu_seconds_total", &web1).is_some());
        // Replicas without a pid, or whose pid has no readable cgroup, have no such series.
        let none = [("service", "web"), ("replica", "web-2")];
        assert!(find(&series, "skiff_container_memory_bytes", &none).is_none());
    }
}
