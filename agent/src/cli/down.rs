//! `skiff down`: stops the agent, then every container it ran, gracefully (each with its stop
//! signal and stop_grace_period, then SIGKILL), and removes them (their veths, addresses and
//! network namespaces with them), then the bridge and its NAT rules. Named volumes and logs
//! stay.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::daemon::oci::Runtime;
use crate::daemon::paths::Paths;
use crate::daemon::replica::{self, ReplicaRecord};

#[derive(Args, Debug)]
pub struct DownArgs {
    /// OCI runtime (as given to the agent)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<std::path::PathBuf>,
}

pub fn down(root: &Path, a: DownArgs) -> Result<i32> {
    let paths = Paths::new(root);
    // The agent first, or it would start the containers again. Its network namespace is kept
    // open: the bridge it made is removed there at the end.
    let mut agent_netns = None;
    if let Some(pid) = crate::daemon::running_agent(root) {
        agent_netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok();
        eprintln!("stopping the agent (pid {pid})");
        // SAFETY: kill(2) on the pid of a process checked to be `skiff agent` just now.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::daemon::proc::alive(pid, None) {
            if Instant::now() > deadline {
                anyhow::bail!("the agent (pid {pid}) did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (records, bad) = ReplicaRecord::load_all(&paths);
    for (id, why) in &bad {
        eprintln!("skiff: warning: containers/{id}: {why}; left alone");
    }
    if records.is_empty() {
        eprintln!("nothing runs");
        let net_ok = remove_network(&paths, agent_netns.as_ref(), bad.is_empty());
        return Ok(if bad.is_empty() && net_ok { 0 } else { 1 });
    }
    let bin = super::run::find_runtime(a.runtime.as_deref())?;
    let rt = Runtime::new(bin, paths.runtime_root());
    let tokio_rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let failed = tokio_rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for rec in records {
            let (paths, rt) = (paths.clone(), rt.clone());
            set.spawn(async move {
                let grace = rec.spec.stop_timeout();
                let r = replica::stop(&paths, &rt, &rec.id, &rec.stop_signal, grace, rec.shim).await;
                let r = r.and_then(|_| replica::remove(&paths, &rec.id));
                (rec.id, r)
            });
        }
        let mut failed = false;
        while let Some(res) = set.join_next().await {
            match res {
                Ok((id, Ok(()))) => println!("stopped {id}"),
                Ok((id, Err(e))) => {
                    eprintln!("skiff: error: stopping {id}: {e:#}");
                    failed = true;
                }
                Err(e) => {
                    eprintln!("skiff: error: {e}");
                    failed = true;
                }
            }
        }
        failed
    });
    let failed = failed || !remove_network(&paths, agent_netns.as_ref(), !failed && bad.is_empty());
    Ok(if failed || !bad.is_empty() { 1 } else { 0 })
}

/// The bridge and its NAT rules, once every container is gone (`all_gone`; else they stay for
/// the containers left). Whether that went well.
fn remove_network(paths: &Paths, netns: Option<&std::fs::File>, all_gone: bool) -> bool {
    if !all_gone {
        return true;
    }
    match crate::daemon::network::teardown(paths, netns) {
        Ok(bridges) => {
            for bridge in bridges {
                println!("removed the bridge {bridge} and its NAT rules");
            }
            true
        }
        Err(e) => {
            eprintln!("skiff: error: removing the bridge network: {e:#}");
            false
        }
    }
}
