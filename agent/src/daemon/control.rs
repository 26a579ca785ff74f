//! The agent's control socket: imperative commands (`skiff scale`, `skiff rollback`,
//! `skiff rollout resume`, `skiff update`) reach the reconcile loop here. The HTTP endpoint
//! stays read-only; this socket is `<run>/control.sock`, which only root can open.
//!
//! One request per connection: one line of JSON ([`Request`]), one line of JSON back
//! ([`Reply`]).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};
use skiff_images::text;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::paths::Paths;
use super::reconcile::{log, Event};

/// A command for the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `skiff scale SERVICE=N...`: replicas of each service, over the manifest's, until the
    /// manifest changes that service's replicas.
    Scale { services: Vec<(String, u32)> },
    /// `skiff rollback SERVICE [--to N]`: run revision N (default: the one before the one in
    /// force) until the manifest changes that service.
    Rollback { service: String, to: Option<u32> },
    /// `skiff rollout resume SERVICE`: a paused update goes on.
    Resume { service: String },
    /// `skiff update [SERVICE...]`: check the registry for new digests now (all services when
    /// empty).
    Update { services: Vec<String> },
}

/// The agent's answer: `ok` false with what to do in `message`, or what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into() }
    }
    pub fn err(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into() }
    }
}

// ---------------------------------------------------------------------------------------
// The server.

/// The longest request line (its newline excluded).
pub const MAX_REQUEST: usize = 64 << 10;
/// A client has this long to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The loop has this long to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed at once (with a reply saying so).
pub const MAX_CONNECTIONS: usize = 8;

/// `<run>/control.sock`.
pub fn socket_path(paths: &Paths) -> PathBuf {
    paths.run.join("control.sock")
}

/// The bounds of a server (the constants above; tests shorten them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_request: usize,
    read_timeout: Duration,
    reply_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request: MAX_REQUEST,
            read_timeout: READ_TIMEOUT,
            reply_timeout: REPLY_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// The control socket being served; dropping it stops the accept loop and removes the socket.
pub struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Stops serving and removes the socket file.
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `<run>/control.sock` (0600, root's, from its first instant) and serves it on the
/// current tokio runtime: each request goes to the loop as [`Event::Control`].
///
/// The caller holds the agent's lock, so a socket file already there is a dead agent's: it is
/// replaced.
pub fn serve(paths: &Paths, tx: mpsc::UnboundedSender<Event>) -> Result<Server> {
    serve_with(socket_path(paths), tx, Limits::default())
}

fn serve_with(path: PathBuf, tx: mpsc::UnboundedSender<Event>, lim: Limits) -> Result<Server> {
    let std_listener = bind(&path)?;
    let listener = UnixListener::from_std(std_listener).with_context(|| format!("serving {}", path.display()))?;
    let task = tokio::spawn(accept_loop(listener, tx, lim));
    Ok(Server { path, task })
}

/// A listening socket at `path`, mode 0600 before it has a name: the mode of the socket's
/// inode, set with fchmod before bind(2), is what bind gives the file (less the umask).
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", path.display())),
    }
    let fd =
        socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
            .context("creating the control socket")?;
    nix::sys::stat::fchmod(fd.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .context("fchmod 0600 of the control socket")?;
    let addr = UnixAddr::new(path).with_context(|| format!("{}: not a socket address", path.display()))?;
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding {}", path.display()))?;
    // A kernel that ignored the inode's mode: narrow the file now (the run directory is 0700,
    // so no one else could reach it meanwhile).
    let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if md.mode() & 0o7777 != 0o600 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
    }
    let backlog = Backlog::new(16).context("listen backlog")?;
    socket::listen(&fd, backlog).with_context(|| format!("listening on {}", path.display()))?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

async fn accept_loop(listener: UnixListener, tx: mpsc::UnboundedSender<Event>, lim: Limits) {
    let slots = Arc::new(Semaphore::new(lim.max_connections));
    let mut said_error = false;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                said_error = false;
                s
            }
            Err(e) => {
                // EMFILE and the like: say it once, and do not spin.
                if !said_error {
                    log(&format!("control socket: accept: {e}"));
                    said_error = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let busy = Reply::err(format!(
                "the agent is serving {} other control connections: try again",
                lim.max_connections
            ));
            let _ = stream.try_write(&reply_line(&busy));
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, &tx, lim).await;
        });
    }
}

/// One connection: the peer must be root; one request line in, one reply line out.
async fn serve_connection(mut stream: UnixStream, tx: &mpsc::UnboundedSender<Event>, lim: Limits) {
    let reply = match socket::getsockopt(&stream, sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == 0 => match read_request(&mut stream, lim).await {
            Ok(req) => ask(tx, req, lim.reply_timeout).await,
            Err(e) => Reply::err(e),
        },
        Ok(cred) => {
            log(&format!("control socket: refused a connection of uid {} (pid {})", cred.uid(), cred.pid()));
            Reply::err(format!("only root may use the agent's control socket (you are uid {})", cred.uid()))
        }
        Err(e) => Reply::err(format!("cannot tell who is connected (SO_PEERCRED): {e}")),
    };
    let line = reply_line(&reply);
    let _ = tokio::time::timeout(lim.read_timeout, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
}

/// One request line, read within the deadline and never more than `max_request` bytes (+1).
async fn read_request<R: AsyncRead + Unpin>(r: &mut R, lim: Limits) -> Result<Request, String> {
    let mut line = Vec::new();
    let read = async {
        let mut rd = BufReader::with_capacity(4096, r.take(lim.max_request as u64 + 1));
        rd.read_until(b'\n', &mut line).await
    };
    match tokio::time::timeout(lim.read_timeout, read).await {
        Err(_) => return Err(format!("no request within {}s: send one line of JSON", lim.read_timeout.as_secs_f64())),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > lim.max_request {
        return Err(format!(
            "request too long: more than {} bytes without a newline (one line of JSON is expected)",
            lim.max_request
        ));
    }
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("empty request: send one line of JSON".into());
    }
    serde_json::from_slice(&line)
        .map_err(|e| format!("bad request: {}", text::one_line(&e.to_string(), text::MESSAGE_MAX)))
}

/// The loop's answer to `req`, or why none came.
async fn ask(tx: &mpsc::UnboundedSender<Event>, req: Request, wait: Duration) -> Reply {
    let (reply, answer) = oneshot::channel();
    if tx.send(Event::Control { req, reply }).is_err() {
        return Reply::err("the agent is stopping: nothing was done");
    }
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Reply::err("the agent dropped the request without an answer (is it stopping?)"),
        Err(_) => Reply::err(format!(
            "the agent did not answer within {}s: the request may still be carried out (see `skiff status`)",
            wait.as_secs_f64()
        )),
    }
}

/// A reply as its JSON line.
fn reply_line(r: &Reply) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap_or_else(|_| br#"{"ok":false,"message":"unencodable reply"}"#.to_vec());
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            max_request: 100,
            read_timeout: Duration::from_millis(300),
            reply_timeout: Duration::from_millis(300),
            max_connections: 2,
        }
    }

    async fn read(bytes: &[u8]) -> (Result<Request, String>, usize) {
        let mut r = bytes;
        let res = read_request(&mut r, lim()).await;
        (res, bytes.len() - r.len())
    }

    #[tokio::test]
    async fn a_request_line_is_read_and_parsed() {
        let line = br#"{"command":"scale","services":[["web",3]]}"#;
        let want = Request::Scale { services: vec![("web".into(), 3)] };
        let mut with_nl = line.to_vec();
        with_nl.extend_from_slice(b"\nmore after it");
        assert_eq!(read(&with_nl).await.0, Ok(want.clone()));
        // The client may shut its side instead of sending a newline.
        assert_eq!(read(line).await.0, Ok(want));
        let r = Request::Rollback { service: "db".into(), to: Some(2) };
        let mut text = serde_json::to_vec(&r).unwrap();
        text.push(b'\n');
        assert_eq!(read(&text).await.0, Ok(r));
    }

    #[tokio::test]
    async fn a_long_line_is_refused_without_reading_on() {
        let big = vec![b'x'; 1 << 20];
        let (res, consumed) = read(&big).await;
        let e = res.unwrap_err();
        assert!(e.contains("request too long: more than 100 bytes"), "{e}");
        assert_eq!(consumed, 101, "read no more than the limit + 1");
        // Exactly the limit, then the newline: fine as far as the length goes.
        let mut at = vec![b' '; 100];
        at.push(b'\n');
        assert_eq!(read(&at).await.0.unwrap_err(), "empty request: send one line of JSON");
    }

    #[tokio::test]
    async fn garbage_gets_serdes_short_message() {
        let e = read(b"\x01garbage{{\n").await.0.unwrap_err();
        assert!(e.starts_with("bad request: expected value at line 1 column 1"), "{e}");
        let e = read(br#"{"command":"format_disk"}"#).await.0.unwrap_err();
        assert!(e.starts_with("bad request: unknown variant `format_disk`"), "{e}");
        let e = read(br#"{"command":"scale","services":[["web",-1]]}"#).await.0.unwrap_err();
        assert!(e.starts_with("bad request: invalid value"), "{e}");
        assert_eq!(read(b"").await.0.unwrap_err(), "empty request: send one line of JSON");
    }

    #[tokio::test]
    async fn a_silent_client_meets_the_deadline() {
        let (mut client, _keep) = tokio::io::duplex(64);
        let t = std::time::Instant::now();
        let e = read_request(&mut client, lim()).await.unwrap_err();
        assert!(e.starts_with("no request within 0.3s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    /// A loop that answers every request with its Debug form, or never when `answer` is false.
    fn fake_loop(answer: bool) -> mpsc::UnboundedSender<Event> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let Event::Control { req, reply } = ev {
                    if answer {
                        let _ = reply.send(Reply::ok(format!("did {req:?}")));
                    } else {
                        kept.push(reply);
                    }
                }
            }
        });
        tx
    }

    async fn call(path: &Path, line: &[u8]) -> Reply {
        let mut s = UnixStream::connect(path).await.expect("connect");
        let _ = s.write_all(line).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn the_server_binds_0600_and_answers_one_request_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "a dead agent's leftover").unwrap();
        let server = serve_with(path.clone(), fake_loop(true), lim()).unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(md.file_type().is_socket());
        assert_eq!(md.mode() & 0o7777, 0o600);
        let r = call(&path, b"{\"command\":\"update\",\"services\":[]}\n").await;
        if !root() {
            assert!(!r.ok && r.message.starts_with("only root may use"), "{r:?}");
            return;
        }
        assert_eq!(r, Reply::ok("did Update { services: [] }"));
        let r = call(&path, b"nonsense\n").await;
        assert!(!r.ok && r.message.starts_with("bad request: "), "{r:?}");
        let r = call(&path, &vec![b'{'; 4096]).await;
        assert!(!r.ok && r.message.starts_with("request too long"), "{r:?}");
        server.stop();
        assert!(!path.exists(), "the socket is removed");
    }

    #[tokio::test]
    async fn silent_clients_take_only_their_slots_and_a_mute_loop_is_reported() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _server = serve_with(path.clone(), fake_loop(false), lim()).unwrap();
        // Two silent clients fill the slots: a third is closed at once with a reply that says so.
        let _a = UnixStream::connect(&path).await.unwrap();
        let _b = UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = call(&path, b"{\"command\":\"resume\",\"service\":\"web\"}\n").await;
        assert!(!r.ok && r.message.contains("2 other control connections"), "{r:?}");
        // Their deadline passes, the slots come back; the loop never answers: said so in time.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        let r = call(&path, b"{\"command\":\"resume\",\"service\":\"web\"}\n").await;
        assert!(!r.ok && r.message.starts_with("the agent did not answer within 0.3s"), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
