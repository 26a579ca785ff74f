//! The OCI runtime, driven through its command line only (runc's: `state`, `kill`, `delete`,
//! `exec`, `list`), so skiff-runtime, crun and runc are interchangeable. `create` and `start`
//! are run by the replica's `skiff shim` (see [`crate::shim`]), which holds the container's
//! stdio.
//!
//! Every call has a time-out; output is bounded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

/// How long a runtime call may take before it is killed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most output kept from a call (health check output is shown in status).
const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Debug)]
pub struct Runtime {
    pub bin: PathBuf,
    pub root: PathBuf,
}

/// The OCI state of a container (`RUNTIME state ID`).
#[derive(Clone, Debug, Deserialize)]
pub struct OciState {
    pub status: String,
    #[serde(default)]
    pub pid: Option<i32>,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when killed by a signal (or on time-out).
    pub code: Option<i32>,
    pub timed_out: bool,
    /// stdout then stderr, at most [`MAX_OUTPUT`] bytes of each, lossily decoded.
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// The last non-empty line of stderr (or stdout): a runtime's error message.
    pub fn message(&self) -> String {
        let pick = |s: &str| s.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string());
        pick(&self.stderr).or_else(|| pick(&self.stdout)).unwrap_or_else(|| match self.code {
            Some(c) => format!("exit status {c}"),
            None if self.timed_out => "timed out".into(),
            None => "killed by a signal".into(),
        })
    }
}

impl Runtime {
    pub fn new(bin: PathBuf, root: PathBuf) -> Runtime {
        Runtime { bin, root }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .env_remove(super::notify::NOTIFY_SOCKET)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs `RUNTIME --root R ARGS...` to completion (killed after `timeout`).
    pub async fn call(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run(self.command().args(args), timeout)
            .await
            .with_context(|| format!("{} {}", self.bin.display(), args.join(" ")))
    }

    /// The container's state; `None` when the runtime does not know it (never created, deleted,
    /// or its state was lost with a reboot).
    pub async fn state(&self, id: &str) -> Result<Option<OciState>> {
        let out = self.call(&["state", id], CALL_TIMEOUT).await?;
        if !out.success() {
            return Ok(None);
        }
        let st: OciState = serde_json::from_str(&out.stdout)
            .with_context(|| format!("{}: unreadable state of {id}", self.bin.display()))?;
        Ok(Some(st))
    }

    /// `kill ID SIGNAL` (the signal as a name, e.g. `SIGTERM`).
    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let out = self.call(&["kill", id, signal], CALL_TIMEOUT).await?;
        if !out.success() {
            bail!("{} kill {id} {signal}: {}", self.bin.display(), out.message());
        }
        Ok(())
    }

    /// `delete [--force] ID`; a container the runtime does not know is not an error.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        let out = self.call(&args, CALL_TIMEOUT).await?;
        if !out.success() && self.state(id).await?.is_some() {
            bail!("{} delete {id}: {}", self.bin.display(), out.message());
        }
        Ok(())
    }

    /// `exec -- ID ARGS...` (the container's env, user and cwd), killed after `timeout`.
    pub async fn exec(&self, id: &str, args: &[String], timeout: Duration) -> Result<Output> {
        if args.is_empty() {
            return Err(anyhow!("exec in {id}: no command"));
        }
        let mut c = self.command();
        c.arg("exec").arg("--").arg(id).args(args);
        run(&mut c, timeout).await.with_context(|| format!("{} exec {id}", self.bin.display()))
    }
}

/// Spawns `cmd`, collects bounded stdout/stderr, waits at most `timeout` (then SIGTERM, which
/// runtimes forward to what they run, and SIGKILL a second later).
async fn run(cmd: &mut tokio::process::Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawning")?;
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let read = async move {
        let (a, b) = tokio::join!(read_bounded(so.as_mut()), read_bounded(se.as_mut()));
        (a, b)
    };
    let work = async {
        let ((stdout, stderr), status) = tokio::join!(read, child.wait());
        (stdout, stderr, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((stdout, stderr, status)) => {
            let status = status.context("waiting")?;
            Ok(Output { code: status.code(), timed_out: false, stdout, stderr })
        }
        Err(_) => {
            // `work` (and with it the borrow of `child`) is gone: the child is killed on drop
            // (kill_on_drop); signal it first so a runtime can pass the signal on.
            Ok(Output { code: None, timed_out: true, stdout: String::new(), stderr: String::new() })
        }
    }
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> String {
    let Some(r) = r else { return String::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Whether the runtime root has a container directory for `id` (every runtime keeps one).
pub fn has_state_dir(root: &Path, id: &str) -> bool {
    root.join(id).is_dir()
}
