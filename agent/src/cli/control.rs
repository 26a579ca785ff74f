//! The imperative commands: `skiff scale`, `skiff rollback`, `skiff rollout resume`,
//! `skiff update`. Each sends one request to the running agent over its control socket
//! (`<run>/control.sock`, root's only: [`crate::daemon::control`]) and prints the reply: on
//! stdout with exit status 0 when the agent did it, on stderr with exit status 1 when not.
//! With no agent running nothing is changed, and the command says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use crate::daemon::control::{self, Reply, Request};
use crate::daemon::paths::Paths;

/// The most replicas `skiff scale` sets (the manifest's own bound on `replicas`).
pub const MAX_REPLICAS: u32 = 1000;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Replicas of each service, e.g. `web=3` (until the manifest changes that service's replicas)
    #[arg(required = true, value_name = "SERVICE=N")]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service to roll back
    pub service: String,
    /// The revision to run (default: the one before the one in force; see `skiff history`)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub to: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Resume a paused update of a service
    Resume {
        /// The service whose update is paused
        service: String,
    },
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The services to check (default: all)
    pub services: Vec<String>,
}

pub fn scale(root: &Path, a: ScaleArgs) -> Result<i32> {
    let services = parse_scale(&a.services).map_err(|e| anyhow!(e))?;
    send(root, &Request::Scale { services })
}

pub fn rollback(root: &Path, a: RollbackArgs) -> Result<i32> {
    send(root, &Request::Rollback { service: a.service, to: a.to })
}

pub fn rollout(root: &Path, a: RolloutArgs) -> Result<i32> {
    match a.command {
        RolloutCommand::Resume { service } => send(root, &Request::Resume { service }),
    }
}

pub fn update(root: &Path, a: UpdateArgs) -> Result<i32> {
    send(root, &Request::Update { services: a.services })
}

/// `SERVICE=N` arguments: each service once, N a whole number up to [`MAX_REPLICAS`].
pub fn parse_scale(args: &[String]) -> Result<Vec<(String, u32)>, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for arg in args {
        let shown = skiff_images::text::one_line(arg, skiff_images::text::NAME_SHOWN);
        let Some((name, n)) = arg.split_once('=') else {
            return Err(format!("{shown}: expected SERVICE=N (e.g. web=3)"));
        };
        if name.is_empty() {
            return Err(format!("{shown}: the service name is missing (SERVICE=N, e.g. web=3)"));
        }
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{shown}: N must be a whole number of replicas"));
        }
        let n = match n.parse::<u32>() {
            Ok(n) if n <= MAX_REPLICAS => n,
            _ => return Err(format!("{shown}: at most {MAX_REPLICAS} replicas")),
        };
        if let Some((_, m)) = out.iter().find(|(s, _)| s == name) {
            let name = skiff_images::text::escape(name);
            return Err(format!("{name} is given twice ({name}={m} and {shown}): give each service once"));
        }
        out.push((name.to_string(), n));
    }
    Ok(out)
}

/// Sends `req` to the agent of `root`, prints its reply; 0 when the agent did it.
fn send(root: &Path, req: &Request) -> Result<i32> {
    let reply = call(root, req)?;
    if reply.ok {
        println!("{}", reply.message);
        Ok(0)
    } else {
        eprintln!("skiff: {}", reply.message);
        Ok(1)
    }
}

/// Time to send the request.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest reply read.
const MAX_REPLY: u64 = 1 << 20;

/// One request to the agent of `root`, and its reply.
pub fn call(root: &Path, req: &Request) -> Result<Reply> {
    let paths = Paths::new(root);
    let path = control::socket_path(&paths);
    let not_running = || {
        anyhow!(
            "no agent is running for {}: nothing was changed (start it: `skiff agent` or `systemctl start skiff`)",
            root.display()
        )
    };
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => {
                bail!("permission denied: run as root (only root may reach {})", path.display())
            }
            Some(libc::ENOENT) => match crate::daemon::running_agent(root) {
                // An agent that is still adopting its containers, or one of an older skiff.
                Some(pid) => bail!(
                    "the agent for {} (pid {pid}) has no control socket yet ({} is missing): \
                     it may be starting, try again in a moment; nothing was changed",
                    root.display(),
                    path.display()
                ),
                None => return Err(not_running()),
            },
            Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR) => return Err(not_running()),
            _ => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        },
    };
    s.set_write_timeout(Some(WRITE_TIMEOUT)).context("setting a write timeout")?;
    // The agent answers within REPLY_TIMEOUT, or says it did not.
    s.set_read_timeout(Some(control::REPLY_TIMEOUT + Duration::from_secs(5))).context("setting a read timeout")?;
    let mut line = serde_json::to_vec(req).context("encoding the request")?;
    line.push(b'\n');
    // The agent may answer without reading (a refusal, or it is busy) and close: its reply is
    // read all the same.
    let sent = s.write_all(&line);
    let mut answer = Vec::new();
    let read = BufReader::new((&s).take(MAX_REPLY)).read_until(b'\n', &mut answer);
    if let Err(e) = sent {
        if answer.is_empty() {
            return Err(e).with_context(|| format!("sending the request to {}", path.display()));
        }
    }
    match read {
        Ok(_) => {}
        Err(_) if answer.ends_with(b"\n") => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => bail!(
            "the agent did not answer within {}s: the request may still be carried out (see `skiff status`)",
            (control::REPLY_TIMEOUT + Duration::from_secs(5)).as_secs()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading the agent's reply on {}", path.display())),
    }
    if answer.is_empty() {
        bail!("the agent closed the connection without a reply (is it stopping?)");
    }
    serde_json::from_slice(&answer).with_context(|| {
        format!("the agent's reply is not understood: {}", String::from_utf8_lossy(&answer).trim_end())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<(String, u32)>, String> {
        parse_scale(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn service_equals_n() {
        assert_eq!(parse(&["web=3", "db=0"]), Ok(vec![("web".into(), 3), ("db".into(), 0)]));
        assert_eq!(parse(&["web=1000"]), Ok(vec![("web".into(), 1000)]));
        assert_eq!(parse(&["web=x"]).unwrap_err(), "web=x: N must be a whole number of replicas");
        for bad in ["web=", "web=-1", "web=+2", "web=1.5", "web= 2", "a=b=3"] {
            assert!(parse(&[bad]).unwrap_err().ends_with(": N must be a whole number of replicas"), "{bad}");
        }
        assert_eq!(parse(&["=3"]).unwrap_err(), "=3: the service name is missing (SERVICE=N, e.g. web=3)");
        assert_eq!(parse(&["web"]).unwrap_err(), "web: expected SERVICE=N (e.g. web=3)");
        assert_eq!(parse(&["web=1001"]).unwrap_err(), "web=1001: at most 1000 replicas");
        assert_eq!(
            parse(&["web=99999999999999999999"]).unwrap_err(),
            "web=99999999999999999999: at most 1000 replicas"
        );
        assert_eq!(
            parse(&["web=2", "db=1", "web=3"]).unwrap_err(),
            "web is given twice (web=2 and web=3): give each service once"
        );
        assert_eq!(parse(&["we\u{1b}b"]).unwrap_err(), "we\\u{1b}b: expected SERVICE=N (e.g. web=3)");
    }

    #[test]
    fn no_agent_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nothing-here");
        let e = call(&root, &Request::Update { services: vec![] }).unwrap_err().to_string();
        assert!(e.starts_with(&format!("no agent is running for {}: nothing was changed", root.display())), "{e}");
        assert!(!root.exists(), "nothing was created");
        // A dead agent's socket: refused, the same.
        let paths = Paths::new(&root);
        std::fs::create_dir_all(&paths.run).unwrap();
        let l = std::os::unix::net::UnixListener::bind(control::socket_path(&paths)).unwrap();
        drop(l);
        let e = call(&root, &Request::Update { services: vec![] }).unwrap_err().to_string();
        assert!(e.starts_with("no agent is running for "), "{e}");
    }
}
