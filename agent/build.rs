//! Embeds the build date (`SKIFF_BUILD_EPOCH`, seconds since 1970) for the clock check
//! (`skiff check`, pulls): a clock before it is surely wrong.
//!
//! Reproducible: `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else the date of the
//! last git commit when git and a repository are there, else the time of the build.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or_else(git_commit_epoch)
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
        });
    println!("cargo:rustc-env=SKIFF_BUILD_EPOCH={epoch}");
}

/// The committer date of HEAD; rebuilds when HEAD moves (a commit, a checkout).
fn git_commit_epoch() -> Option<i64> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).current_dir(&dir).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let epoch = git(&["log", "-1", "--format=%ct"])?.parse::<i64>().ok()?;
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "logs/HEAD"] {
            let p = std::path::Path::new(&git_dir).join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    Some(epoch)
}
