//! `skiff history SERVICE`: a service's revisions, newest first, from its record under the root
//! (no agent needed).

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;

use crate::daemon::paths::Paths;
use crate::daemon::revisions::{self, ServiceRecord};
use crate::rollout::Kind;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The service
    pub service: String,
    /// Print the record as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Path, a: HistoryArgs) -> Result<i32> {
    let paths = Paths::new(root);
    let p = revisions::path(&paths, &a.service);
    if !p.exists() {
        bail!("{}: no revisions of {:?} under {} (is it the service's name?)", p.display(), a.service, root.display());
    }
    let rec = revisions::load(&p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(0);
    }
    print!("{}", render(&rec));
    Ok(0)
}

/// The table: number, when, image digest (short), the keys changed from the one before, and
/// what it is (in force, failed, rolled back from, the manifest's).
pub fn render(rec: &ServiceRecord) -> String {
    let mut out = format!("{:<5} {:<21} {:<13} {:<30} {}\n", "REV", "CREATED", "IMAGE", "CHANGED", "");
    for r in rec.revisions.iter().rev() {
        let mut what = Vec::new();
        if r.n == rec.in_force {
            what.push("in force".to_string());
        }
        if rec.pin.as_ref().is_some_and(|p| p.manifest == r.n) {
            what.push("the manifest's".into());
        }
        if r.failed {
            what.push("failed".into());
        }
        if let Some(ro) = &rec.rollout {
            if ro.kind == Kind::Rollback && ro.from == r.n {
                what.push(format!("rolled back from ({})", ro.cause));
            }
            if ro.to == r.n && ro.state != crate::rollout::State::Completed {
                what.push(ro.state.as_str().replace('_', " "));
            }
        }
        let digest = r.image.digest.to_string();
        let short = digest.strip_prefix("sha256:").unwrap_or(&digest).chars().take(12).collect::<String>();
        let changed = if r.changed.is_empty() { "-".to_string() } else { r.changed.join(", ") };
        out.push_str(&format!("{:<5} {:<21} {:<13} {:<30} {}\n", r.n, r.at, short, changed, what.join(", ")));
    }
    out
}
