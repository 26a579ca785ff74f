//! `skiff status [--json]`: what the agent runs, read from its status endpoint.
//!
//! A tiny blocking HTTP/1.1 client (plain TCP, 5 s for the whole exchange, the answer bounded to
//! [`MAX_RESPONSE`]) fetches `/v1/status`; `--json` prints the body as it came, otherwise a table
//! with one line per replica.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::daemon::status::{Health, ReplicaState, Status};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's status endpoint
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7780", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Print the raw /v1/status JSON
    #[arg(long)]
    pub json: bool,
}

/// The longest answer read from the agent.
pub const MAX_RESPONSE: usize = 16 << 20;
/// The whole exchange (connect, request, answer) must fit in this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn status(a: StatusArgs) -> Result<i32> {
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "cannot reach the agent at {}: {e}: is `skiff agent` running? it listens on {}",
            a.listen,
            a.listen
        )
    };
    let (code, body) = match get(a.listen, "/v1/status", TIMEOUT, MAX_RESPONSE) {
        Ok(r) => r,
        Err(GetError::Connect(e)) => return Err(unreachable(&e)),
        Err(GetError::Other(e)) => return Err(e.context(format!("reading the status from the agent at {}", a.listen))),
    };
    if code != 200 {
        let text = String::from_utf8_lossy(&body);
        bail!("the agent at {} answered {code}: {}", a.listen, text.trim());
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        return Ok(0);
    }
    let status: Status = serde_json::from_slice(&body)
        .with_context(|| format!("the agent at {} sent a status this skiff does not understand", a.listen))?;
    out.write_all(render(&status, SystemTime::now()).as_bytes())?;
    Ok(0)
}

/// Why [`get`] failed: the agent could not be reached at all, or something else.
#[derive(Debug)]
pub enum GetError {
    Connect(std::io::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for GetError {
    fn from(e: anyhow::Error) -> Self {
        GetError::Other(e)
    }
}

/// `GET path` on `addr`: the status code and body. The whole exchange takes at most `timeout`
/// and the answer at most `max` bytes.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration, max: usize) -> Result<(u16, Vec<u8>), GetError> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(GetError::Connect)?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let timed_out = |e: std::io::Error| {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            anyhow::anyhow!("no answer within {}s", timeout.as_secs_f64())
        } else {
            anyhow::Error::new(e)
        }
    };
    s.set_write_timeout(Some(left())).map_err(|e| GetError::Other(e.into()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(request.as_bytes()).map_err(timed_out)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!("no complete answer within {}s", timeout.as_secs_f64()).into());
        }
        s.set_read_timeout(Some(left())).map_err(|e| GetError::Other(e.into()))?;
        let n = s.read(&mut buf).map_err(timed_out)?;
        if n == 0 {
            break;
        }
        // The head may add a little to the body's bound.
        if raw.len() + n > max + 64 * 1024 {
            return Err(anyhow::anyhow!("the answer is larger than {} MiB", max >> 20).into());
        }
        raw.extend_from_slice(&buf[..n]);
        // Done as soon as a Content-Length body is complete (do not wait for the close).
        if let Ok(Some(done)) = complete(&raw) {
            raw.truncate(done);
            break;
        }
    }
    Ok(parse_response(&raw, max)?)
}

/// The length of a complete response with a Content-Length, `None` until it is complete.
fn complete(raw: &[u8]) -> Result<Option<usize>> {
    let Some(end) = find(raw, b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&raw[..end]).context("the answer's head is not text")?;
    let Some(len) = header(head, "content-length") else { return Ok(None) };
    if header(head, "transfer-encoding").is_some() {
        return Ok(None);
    }
    let len: usize = len.parse().context("bad Content-Length")?;
    Ok((raw.len() >= end + 4 + len).then_some(end + 4 + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Status code and body of a whole HTTP/1.x response (Content-Length, chunked, or up to the close).
fn parse_response(raw: &[u8], max: usize) -> Result<(u16, Vec<u8>)> {
    let end = find(raw, b"\r\n\r\n").context("the answer is not HTTP (no complete head)")?;
    let head = std::str::from_utf8(&raw[..end]).context("the answer's head is not text")?;
    let status_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let code = match (version.starts_with("HTTP/1."), code) {
        (true, Some(c)) if (100..600).contains(&c) => c,
        _ => bail!("the answer is not HTTP: {:?}", status_line.chars().take(80).collect::<String>()),
    };
    let rest = &raw[end + 4..];
    let body = if header(head, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        dechunk(rest, max)?
    } else if let Some(len) = header(head, "content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if len > max {
            bail!("the answer is larger than {} MiB", max >> 20);
        }
        if rest.len() < len {
            bail!("the answer was cut short ({} of {len} bytes)", rest.len());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > max {
        bail!("the answer is larger than {} MiB", max >> 20);
    }
    Ok((code, body))
}

fn dechunk(mut data: &[u8], max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").context("the answer was cut short (chunk size)")?;
        let size_text = std::str::from_utf8(&data[..eol]).context("bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len().saturating_add(size) > max {
            bail!("the answer is larger than {} MiB", max >> 20);
        }
        if data.len() < size + 2 {
            bail!("the answer was cut short (chunk data)");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The human-readable status.
/// A service's line under UPDATES: its rollout while one is under way or stopped short, and
/// what overrides its manifest (`revision 3 in force, manifest wants 5: rolled back by skiff
/// rollback`).
fn update_line(s: &crate::daemon::status::ServiceStatus) -> Option<String> {
    let r = &s.revisions;
    let mut parts = Vec::new();
    if let Some(u) = r.update.as_ref().filter(|u| u.state != "completed" && u.state != "rolled_back") {
        let verb = if u.state == "rolling_back" { "rolling back" } else { u.state.as_str() };
        parts.push(format!(
            "{verb} from revision {} to {}: {} of {} done, {} failed (since {})",
            u.from,
            u.to,
            u.updated.min(u.total),
            u.total,
            u.failed,
            one_line(&u.started)
        ));
        if let Some(m) = &u.message {
            parts.push(one_line(m));
        }
    }
    if let (Some(inf), Some(want)) = (r.revision, r.manifest_revision) {
        if inf != want {
            let why = r.override_.as_deref().map(one_line).unwrap_or_else(|| "updating".into());
            parts.push(format!("revision {inf} in force, manifest wants {want}: {why}"));
        }
    }
    if let (Some(o), true) = (&r.override_, r.scale.is_some()) {
        parts.push(one_line(o));
    }
    if let Some(c) = &s.image_check {
        if let Some(e) = &c.error {
            let at = c.at.as_deref().map(one_line).unwrap_or_default();
            parts.push(format!("image check failed ({at}): {}; what runs keeps running", one_line(e)));
        }
    }
    (!parts.is_empty()).then(|| format!("{}: {}", s.name, parts.join("; ")))
}

/// The store's filesystem, once it is past the image GC's high mark or a collection ran.
fn store_line(st: &crate::daemon::status::StoreStatus) -> Option<String> {
    let gc = &st.image_gc;
    let pct = (u128::from(st.used_bytes) * 100).checked_div(u128::from(st.size_bytes)).unwrap_or(0);
    let past = gc.enabled && pct > u128::from(gc.high_percent);
    if !past && gc.runs == 0 {
        return None;
    }
    let mut line = format!("store: its filesystem is {pct}% full of {}", crate::cli::human_size(st.size_bytes));
    if gc.enabled {
        line.push_str(&format!(
            "; image GC (above {}%, down to {}%): {} run{}, {} image{} removed, {} freed",
            gc.high_percent,
            gc.low_percent,
            gc.runs,
            if gc.runs == 1 { "" } else { "s" },
            gc.images_removed,
            if gc.images_removed == 1 { "" } else { "s" },
            crate::cli::human_size(gc.bytes_freed)
        ));
    } else {
        line.push_str("; image GC is off (x-skiff: {image_gc: false})");
    }
    line.push('\n');
    if let Some(last) = gc.last.as_deref().filter(|l| l.contains("more is used") || l.starts_with("image GC: ")) {
        line.push_str(&format!("warning: {}\n", one_line(last)));
    }
    Some(line)
}

pub fn render(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let m = &status.manifest;
    let revision = m.revision.as_deref().map(short_revision);
    match &revision {
        Some(r) => out.push_str(&format!("manifest {} (revision {r})\n", m.path)),
        None => out.push_str(&format!("manifest {} (none loaded yet)\n", m.path)),
    }
    if let Some(e) = &m.error {
        let keep = match &revision {
            Some(r) => format!("still running revision {r}"),
            None => "nothing is running from it".to_string(),
        };
        out.push_str(&format!("manifest error ({keep}):\n"));
        for l in e.lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    for w in &m.warnings {
        // The manifest's diagnostics carry their own label (`FILE:LINE:COL: warning: ...`).
        let w = one_line(w);
        if w.contains(": warning: ") || w.starts_with("warning: ") {
            out.push_str(&format!("{w}\n"));
        } else {
            out.push_str(&format!("warning: {w}\n"));
        }
    }
    for f in &status.host.findings {
        // `skiff check`'s findings (the fix is `skiff check`'s to show).
        let level = if f.level == crate::hostcheck::Level::Error { "error" } else { "warning" };
        out.push_str(&format!("{level}: host: {}: {}\n", f.topic, one_line(&f.message)));
    }
    for s in &status.services {
        for w in &s.warnings {
            out.push_str(&format!("warning: {}: {}\n", s.name, one_line(w)));
        }
    }
    if let Some(line) = status.store.as_ref().and_then(store_line) {
        out.push_str(&line);
    }
    if status.services.is_empty() {
        out.push_str("no services\n");
        return out;
    }
    out.push('\n');
    let header = ["SERVICE", "REPLICA", "REV", "STATE", "HEALTH", "PID", "ADDRESS", "RESTARTS", "EXIT", "UPTIME"]
        .map(String::from);
    let mut rows: Vec<[String; 10]> = Vec::new();
    let mut updates = Vec::new();
    let mut notes = Vec::new();
    for s in &status.services {
        if s.replicas.is_empty() {
            let what = if s.desired_replicas == 0 { "scaled to 0" } else { "no replica yet" };
            rows.push([&s.name, "-", "-", what, "-", "-", "-", "-", "-", "-"].map(String::from));
        }
        updates.extend(update_line(s));
        for r in &s.replicas {
            let state = match (r.state, r.next_restart_in) {
                (ReplicaState::Backoff, Some(secs)) => format!("backoff ({})", duration(secs.max(0.0) as u64)),
                (st, _) => state_name(st).to_string(),
            };
            let uptime = match (r.state, r.started_at.as_deref()) {
                (ReplicaState::Running, Some(t)) => uptime(t, now),
                _ => "-".to_string(),
            };
            rows.push([
                s.name.clone(),
                r.id.clone(),
                r.revision.map_or("-".into(), |n| n.to_string()),
                state,
                health_name(r.health).to_string(),
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.address.as_deref().map_or("-".into(), one_line),
                r.restarts.to_string(),
                r.last_exit_code.map_or("-".into(), |c| c.to_string()),
                uptime,
            ]);
            if let Some(msg) = &r.message {
                notes.push(format!("{}: {}", r.id, one_line(msg)));
            }
        }
    }
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !updates.is_empty() {
        out.push_str("\nUPDATES\n");
        for u in updates {
            out.push_str(&u);
            out.push('\n');
        }
    }
    let mut published = Vec::new();
    for s in &status.services {
        for p in &s.ports {
            published.push(match (&p.error, p.host_port) {
                (Some(e), _) => format!("{}: {} not published: {}", s.name, one_line(&p.mapping), one_line(e)),
                (None, Some(port)) => {
                    let ip = p.host_ip.as_deref().map_or("*".to_string(), |ip| match ip {
                        "::" | "0.0.0.0" => "*".to_string(),
                        ip if ip.contains(':') => format!("[{}]", one_line(ip)),
                        ip => one_line(ip),
                    });
                    let n = p.backends;
                    let to = if n == 1 { "1 replica".to_string() } else { format!("{n} replicas") };
                    let warning =
                        p.warning.as_deref().map(|w| format!("; warning: {}", one_line(w))).unwrap_or_default();
                    format!("{}: {ip}:{port} -> {}/{} ({to}){warning}", s.name, p.target, one_line(&p.protocol))
                }
                (None, None) => format!("{}: {} not published yet", s.name, one_line(&p.mapping)),
            });
        }
    }
    if !published.is_empty() {
        out.push_str("\nPORTS\n");
        for p in published {
            out.push_str(&p);
            out.push('\n');
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// `sha256:abcdef...` → the first 12 hex digits.
fn short_revision(r: &str) -> String {
    let hex = r.strip_prefix("sha256:").unwrap_or(r);
    hex.chars().take(12).collect()
}

/// Newlines and control characters of a message from the agent, made harmless for a terminal.
fn one_line(s: &str) -> String {
    skiff_images::text::one_line(s, skiff_images::text::MESSAGE_MAX)
}

fn state_name(s: ReplicaState) -> &'static str {
    match s {
        ReplicaState::Pulling => "pulling",
        ReplicaState::Created => "created",
        ReplicaState::Running => "running",
        ReplicaState::Exited => "exited",
        ReplicaState::Backoff => "backoff",
        ReplicaState::Stopping => "stopping",
        ReplicaState::Failed => "failed",
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::None => "-",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// How long ago an RFC 3339 time was (`3m12s`), or the time itself when it cannot be read.
fn uptime(started: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339_weak(started) {
        Ok(t) => duration(now.duration_since(t).unwrap_or_default().as_secs()),
        Err(_) => started.chars().filter(|c| !c.is_control()).collect(),
    }
}

/// `45s`, `3m12s`, `5h3m`, `2d4h`.
fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;

    use super::*;
    use crate::daemon::status::{ManifestStatus, PortStatus, ReplicaStatus, ServiceStatus, Snapshot};

    fn sample() -> Status {
        let replica = |id: &str, state, pid, restarts, exit, health| ReplicaStatus {
            id: id.to_string(),
            state,
            pid,
            restarts,
            last_exit_code: exit,
            health,
            started_at: Some("2024-05-01T10:00:00Z".into()),
            next_restart_in: None,
            message: None,
            address: None,
            revision: None,
            image_digest: None,
            slot: 1,
        };
        let mut backoff = replica("web-2", ReplicaState::Backoff, None, 4, Some(137), Health::Unhealthy);
        backoff.next_restart_in = Some(8.4);
        backoff.message = Some("exited with 137\n(killed)".into());
        backoff.revision = Some(2);
        backoff.slot = 2;
        let updating = crate::daemon::status::RevisionStatus {
            revision: Some(3),
            manifest_revision: Some(3),
            update: Some(crate::daemon::status::UpdateStatus {
                state: "updating".into(),
                from: 2,
                to: 3,
                updated: 1,
                failed: 0,
                total: 2,
                started: "2024-05-01T10:03:00Z".into(),
                message: None,
            }),
            ..Default::default()
        };
        Status {
            manifest: ManifestStatus {
                path: "/etc/skiff/compose.yaml".into(),
                revision: Some(format!("sha256:{}", "0123456789abcdef".repeat(4))),
                error: Some("/etc/skiff/compose.yaml:4:7: error: unknown service key".into()),
                warnings: vec!["/etc/skiff/compose.yaml:9:3: warning: unknown key x-foo".into()],
            },
            host: crate::daemon::status::HostStatus {
                findings: vec![crate::hostcheck::Finding {
                    level: crate::hostcheck::Level::Warning,
                    topic: "cgroups".into(),
                    message: "no memory controller (not offered by this kernel): services run without their mem_limit"
                        .into(),
                    fix: Some("append ` cgroup_enable=memory` ...".into()),
                }],
            },
            services: vec![
                ServiceStatus {
                    name: "web".into(),
                    revisions: updating,
                    image_check: None,
                    image: "nginx".into(),
                    desired_replicas: 2,
                    running_replicas: 1,
                    warnings: vec!["memory limit not applied: the kernel has no memory cgroup controller".into()],
                    replicas: vec![
                        ReplicaStatus {
                            address: Some("10.88.0.2".into()),
                            revision: Some(3),
                            ..replica("web-1", ReplicaState::Running, Some(4242), 0, None, Health::Healthy)
                        },
                        backoff,
                    ],
                    ports: vec![
                        PortStatus {
                            mapping: "8080:80/tcp".into(),
                            protocol: "tcp".into(),
                            host_ip: Some("::".into()),
                            host_port: Some(8080),
                            target: 80,
                            backends: 1,
                            error: None,
                            warning: None,
                        },
                        PortStatus {
                            mapping: "127.0.0.1:8443:443/tcp".into(),
                            protocol: "tcp".into(),
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(8443),
                            target: 443,
                            backends: 1,
                            error: None,
                            warning: Some("IPv4 served by the agent's proxy alone (retried): nft failed".into()),
                        },
                        PortStatus {
                            mapping: "127.0.0.1:53:53/udp".into(),
                            protocol: "udp".into(),
                            host_ip: Some("127.0.0.1".into()),
                            host_port: None,
                            target: 53,
                            backends: 0,
                            error: Some("host port 53/udp is already in use".into()),
                            warning: None,
                        },
                    ],
                    ..Default::default()
                },
                ServiceStatus { name: "idle".into(), image: "busybox".into(), ..Default::default() },
                ServiceStatus {
                    name: "db".into(),
                    image: "redis".into(),
                    revisions: crate::daemon::status::RevisionStatus {
                        revision: Some(4),
                        manifest_revision: Some(5),
                        override_: Some("rolled back to revision 4 by skiff rollback".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ],
            store: None,
        }
    }

    #[test]
    fn table() {
        let now = humantime::parse_rfc3339("2024-05-01T10:03:12Z").unwrap();
        let text = render(&sample(), now);
        let expected = "\
manifest /etc/skiff/compose.yaml (revision 0123456789ab)
manifest error (still running revision 0123456789ab):
  /etc/skiff/compose.yaml:4:7: error: unknown service key
/etc/skiff/compose.yaml:9:3: warning: unknown key x-foo
warning: host: cgroups: no memory controller (not offered by this kernel): services run without their mem_limit
warning: web: memory limit not applied: the kernel has no memory cgroup controller

SERVICE  REPLICA  REV  STATE         HEALTH     PID   ADDRESS    RESTARTS  EXIT  UPTIME
web      web-1    3    running       healthy    4242  10.88.0.2  0         -     3m12s
web      web-2    2    backoff (8s)  unhealthy  -     -          4         137   -
idle     -        -    scaled to 0   -          -     -          -         -     -
db       -        -    scaled to 0   -          -     -          -         -     -

UPDATES
web: updating from revision 2 to 3: 1 of 2 done, 0 failed (since 2024-05-01T10:03:00Z)
db: revision 4 in force, manifest wants 5: rolled back to revision 4 by skiff rollback

PORTS
web: *:8080 -> 80/tcp (1 replica)
web: 127.0.0.1:8443 -> 443/tcp (1 replica); warning: IPv4 served by the agent's proxy alone (retried): nft failed
web: 127.0.0.1:53:53/udp not published: host port 53/udp is already in use

web-2: exited with 137; (killed)
";
        assert_eq!(text, expected);
        let empty = render(&Status::default(), now);
        assert_eq!(empty, "manifest  (none loaded yet)\nno services\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(3 * 3600 + 125), "3h2m");
        assert_eq!(duration(2 * 86400 + 7200), "2d2h");
        assert_eq!(uptime("not a time\x1b[31m", SystemTime::now()), "not a time[31m");
    }

    /// A one-shot server that answers `answer` to the first connection.
    fn canned(answer: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&answer);
            }
        });
        (addr, t)
    }

    #[test]
    fn responses() {
        type Want = Result<(u16, &'static [u8]), &'static str>;
        let cases: Vec<(&[u8], Want)> = vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA", Ok((200, b"hello"))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                Ok((200, b"abcde")),
            ),
            (b"HTTP/1.0 503 Service Unavailable\r\n\r\nno manifest\n", Ok((503, b"no manifest\n"))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Err("cut short")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", Err("Content-Length")),
            (b"SSH-2.0-OpenSSH\r\n\r\n", Err("not HTTP")),
            (b"garbage without a head", Err("no complete head")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", Err("larger than")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n", Err("larger than")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Err("chunk size")),
        ];
        for (raw, want) in cases {
            let (addr, t) = canned(raw.to_vec());
            let got = get(addr, "/v1/status", Duration::from_secs(5), 1 << 20);
            t.join().unwrap();
            match (got, want) {
                (Ok((code, body)), Ok((c, b))) => assert_eq!((code, body.as_slice()), (c, b)),
                (Err(GetError::Other(e)), Err(w)) => assert!(format!("{e:#}").contains(w), "{e:#} vs {w}"),
                (got, want) => panic!("{:?}: {got:?} vs {want:?}", String::from_utf8_lossy(raw)),
            }
        }
    }

    #[test]
    fn oversized_answer() {
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.resize(3 << 20, b'x');
        let (addr, t) = canned(answer);
        let e = get(addr, "/", Duration::from_secs(5), 1 << 20).unwrap_err();
        t.join().unwrap();
        assert!(matches!(&e, GetError::Other(e) if e.to_string().contains("larger than 1 MiB")), "{e:?}");
    }

    #[test]
    fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Accepted by the kernel's backlog, never answered.
        let started = Instant::now();
        let e = get(addr, "/", Duration::from_secs(1), 1 << 20).unwrap_err();
        assert!(matches!(&e, GetError::Other(e) if e.to_string().contains("within 1s")), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(l);
    }

    #[test]
    fn agent_not_running() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // The listener is gone: nothing listens there any more.
        let e = status(StatusArgs { listen: addr, json: false }).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains(&format!("is `skiff agent` running? it listens on {addr}")), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

    /// Against the agent's real endpoint.
    #[test]
    fn from_the_endpoint() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let snapshot = Snapshot { status: Arc::new(sample()), manifest_loaded: true, tick: Instant::now() };
        let (_tx, rx) = tokio::sync::watch::channel(snapshot);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            rt.block_on(crate::daemon::http::serve(listener, rx, async move {
                let _ = stopped.await;
            }))
        });
        let got = get(addr, "/v1/status", TIMEOUT, MAX_RESPONSE);
        let _ = stop.send(());
        server.join().unwrap();
        let (code, body) = got.unwrap();
        assert_eq!(code, 200);
        let status: Status = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, sample());
    }

    #[test]
    fn the_store_line_once_the_disk_is_past_the_high_mark_or_a_gc_ran() {
        use crate::daemon::status::{ImageGcStatus, StoreStatus};
        let gc = ImageGcStatus { enabled: true, high_percent: 85, low_percent: 80, ..Default::default() };
        let st = |used, gc: ImageGcStatus| StoreStatus { size_bytes: 1000, used_bytes: used, image_gc: gc };
        assert_eq!(store_line(&st(850, gc.clone())), None, "at the mark, nothing ran: nothing to say");
        let past = store_line(&st(900, gc.clone())).unwrap();
        assert!(
            past.starts_with("store: its filesystem is 90% full of 1.0 kB; image GC (above 85%, down to 80%): 0 runs"),
            "{past}"
        );
        let ran = ImageGcStatus {
            runs: 1,
            images_removed: 3,
            bytes_freed: 2_000_000,
            last: Some("disk pressure: ...; 5 MB more is used by images in use or other files, above the low mark of 80%: free space or add disk".into()),
            ..gc.clone()
        };
        let text = store_line(&st(820, ran)).unwrap();
        assert!(
            text.contains("1 run, 3 images removed, 2.0 MB freed\nwarning: disk pressure: ...; 5 MB more is used"),
            "{text}"
        );
        let off = ImageGcStatus { enabled: false, runs: 0, ..gc };
        assert_eq!(store_line(&st(990, off)), None, "off: not past any mark");
        assert_eq!(store_line(&StoreStatus { size_bytes: 0, used_bytes: 0, image_gc: Default::default() }), None);
    }
}
