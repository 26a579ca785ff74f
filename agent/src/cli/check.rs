//! `skiff check`: whether skiff will work on this host, and what to do (see
//! [`crate::hostcheck`]). Exit status 0 when it will (warnings may be printed), 1 when it
//! cannot.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::hostcheck::{self, Finding, Level, Verdict};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// JSON output: {"verdict": "ok"|"warnings"|"fail", "findings": [{level, topic, message, fix}...]}
    #[arg(long)]
    pub json: bool,
    /// The OCI runtime the agent would be given (default: skiff-runtime next to skiff, else on PATH)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
}

pub fn check(root: &Path, a: CheckArgs) -> Result<i32> {
    let facts = hostcheck::read(root, a.runtime.as_deref());
    let findings = hostcheck::assess(&facts);
    let verdict = hostcheck::verdict(&findings);
    let mut out = std::io::stdout().lock();
    if a.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            verdict: Verdict,
            findings: &'a [Finding],
        }
        serde_json::to_writer_pretty(&mut out, &Report { verdict, findings: &findings })?;
        writeln!(out)?;
    } else {
        out.write_all(render(&findings, verdict).as_bytes())?;
    }
    Ok(if verdict == Verdict::Fail { 1 } else { 0 })
}

/// One line per finding, the fix on the next; the verdict last.
pub fn render(findings: &[Finding], verdict: Verdict) -> String {
    let mut s = String::new();
    for f in findings {
        let level = match f.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        s.push_str(&format!("{level:<8}{}: {}\n", f.topic, f.message));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("{:<8}fix: {fix}\n", ""));
        }
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    s.push_str(&match verdict {
        Verdict::Ok => "skiff will work here\n".to_string(),
        Verdict::Warnings => format!("skiff will work here, with {}\n", plural(count(Level::Warning), "warning")),
        Verdict::Fail => format!(
            "skiff cannot work here: {} to fix{}\n",
            plural(count(Level::Error), "error"),
            match count(Level::Warning) {
                0 => String::new(),
                n => format!(" ({})", plural(n, "warning")),
            }
        ),
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_a_line_per_finding_with_the_fix_below_and_the_verdict_last() {
        let f = vec![
            Finding { level: Level::Ok, topic: "cgroups".into(), message: "layout v2 (unified)".into(), fix: None },
            Finding {
                level: Level::Warning,
                topic: "cgroups".into(),
                message: "no memory controller".into(),
                fix: Some("append ...".into()),
            },
        ];
        assert_eq!(
            render(&f, hostcheck::verdict(&f)),
            "ok      cgroups: layout v2 (unified)\n\
             warning cgroups: no memory controller\n        fix: append ...\n\
             skiff will work here, with 1 warning\n"
        );
        let e = vec![Finding { level: Level::Error, topic: "clock".into(), message: "1970".into(), fix: None }];
        assert!(render(&e, Verdict::Fail).ends_with("skiff cannot work here: 1 error to fix\n"));
    }
}
