//! `skiff validate [FILE]`: checks a manifest and prints its errors and warnings.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::manifest;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The manifest (a compose file)
    #[arg(env = "SKIFF_MANIFEST", default_value = manifest::DEFAULT_MANIFEST, value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints `FILE:LINE:COLUMN: error|warning: ...` lines on stderr and a summary on stdout;
/// returns 1 when there are errors.
pub fn validate(a: ValidateArgs) -> Result<i32> {
    let report = manifest::load(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let file = a.file.display().to_string();
    let mut err = std::io::stderr().lock();
    for d in &report.diagnostics {
        writeln!(err, "{}", d.render(&file))?;
    }
    if let Some(m) = &report.manifest {
        for (name, profiles) in &m.inactive {
            println!("{file}: service `{name}` is not run: none of its profiles ({}) is active", profiles.join(", "));
        }
    }
    println!("{}", summary(&file, &report));
    Ok(if report.errors() > 0 { 1 } else { 0 })
}

/// `compose.yaml: 3 services, 1 warning` or `compose.yaml: 2 errors, 1 warning`.
pub fn summary(file: &str, report: &manifest::Report) -> String {
    let n = |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    match &report.manifest {
        Some(m) => parts.push(n(m.services.len(), "service")),
        None => parts.push(n(report.errors(), "error")),
    }
    if report.warnings() > 0 {
        parts.push(n(report.warnings(), "warning"));
    }
    format!("{file}: {}", parts.join(", "))
}
