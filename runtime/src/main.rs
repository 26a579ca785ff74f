//! skiff-runtime: runc's command line over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use skiff_runtime::container::{self, CreateOpts, ExecOpts};
use skiff_runtime::log::{self, Format, Level};
use skiff_runtime::{commands, Error};

#[derive(Parser)]
#[command(name = "skiff-runtime", about = "A runc-compatible OCI container runtime", disable_help_subcommand = true)]
struct Cli {
    /// Directory for container state (tmpfs recommended)
    #[arg(long, global = true, default_value = "/run/skiff-runtime")]
    root: PathBuf,
    /// Append logs (and errors) to FILE
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log debug messages
    #[arg(long, global = true)]
    debug: bool,
    /// Make each container's cgroup a systemd scope (cgroupsPath slice:prefix:name; cgroup v2)
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; ignored
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Print the version
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a default config.json into the bundle
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// Create a container (its process waits for `start`)
    Create {
        #[command(flatten)]
        c: CreateArgs,
    },
    /// Run the user process of a created container
    Start { id: String },
    /// Create and start a container; in the foreground, wait and exit with its status
    Run {
        #[command(flatten)]
        c: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "keep", hide = true)]
        keep: bool,
    },
    /// Print the state of a container as JSON
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or to all its processes
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it holds
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run another process in a running container
    Exec {
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(short, long = "cap")]
        cap: Vec<String>,
        /// Exec into a paused container too (the process waits for `resume`)
        #[arg(long = "ignore-paused")]
        ignore_paused: bool,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: ListFormat,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the processes of a container
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: ListFormat,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print what this runtime supports (runtime-spec features JSON)
    Features,
    /// Freeze every process of a running container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Change the resource limits of a live container
    Update {
        #[command(flatten)]
        u: UpdateArgs,
        id: String,
    },
}

/// `update`'s flags: runc's. `--resources` takes an OCI LinuxResources JSON (`-`: stdin),
/// which is what containerd's shim sends; the other flags override fields of it.
#[derive(clap::Args)]
struct UpdateArgs {
    /// LinuxResources JSON file, or - for stdin
    #[arg(short, long)]
    resources: Option<PathBuf>,
    /// Memory limit in bytes (k, m, g suffixes); -1 for none
    #[arg(short, long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory plus swap limit in bytes (k, m, g suffixes); -1 for none
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Memory soft limit in bytes (k, m, g suffixes)
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    /// CPU shares (relative weight)
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// CPU CFS quota in microseconds per period; -1 for none
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    /// CPUs the container may use (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Memory nodes the container may use
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Maximum number of processes; -1 for none
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
}

impl UpdateArgs {
    fn resources(self) -> Result<oci_spec::runtime::LinuxResources, Error> {
        use oci_spec::runtime::{LinuxPids, LinuxResources};
        let mut r: LinuxResources = match &self.resources {
            None => LinuxResources::default(),
            Some(p) => {
                let (what, data) = if p.as_os_str() == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .map_err(|e| Error::Io { what: "read --resources from stdin".into(), source: e })?;
                    ("stdin".to_string(), buf)
                } else {
                    let d =
                        std::fs::read(p).map_err(|e| Error::Io { what: format!("read {}", p.display()), source: e })?;
                    (p.display().to_string(), d)
                };
                serde_json::from_slice(&data).map_err(|e| {
                    Error::msg(format!("--resources {what}:{}:{}: invalid linux resources: {e}", e.line(), e.column()))
                })?
            }
        };
        if self.memory.is_some() || self.memory_swap.is_some() || self.memory_reservation.is_some() {
            let mut m = (*r.memory()).unwrap_or_default();
            if let Some(v) = &self.memory {
                m.set_limit(Some(bytes("--memory", v)?));
            }
            if let Some(v) = &self.memory_swap {
                m.set_swap(Some(bytes("--memory-swap", v)?));
            }
            if let Some(v) = &self.memory_reservation {
                m.set_reservation(Some(bytes("--memory-reservation", v)?));
            }
            r.set_memory(Some(m));
        }
        if self.cpu_shares.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
        {
            let mut c = r.cpu().clone().unwrap_or_default();
            if let Some(v) = self.cpu_shares {
                c.set_shares(Some(v));
            }
            if let Some(v) = self.cpu_quota {
                c.set_quota(Some(v));
            }
            if let Some(v) = self.cpu_period {
                c.set_period(Some(v));
            }
            if let Some(v) = self.cpuset_cpus {
                c.set_cpus(Some(v));
            }
            if let Some(v) = self.cpuset_mems {
                c.set_mems(Some(v));
            }
            r.set_cpu(Some(c));
        }
        if let Some(v) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(v);
            r.set_pids(Some(p));
        }
        Ok(r)
    }
}

/// "67108864", "64m", "1g", "-1" (no limit) as bytes.
fn bytes(flag: &str, v: &str) -> Result<i64, Error> {
    let bad = || Error::msg(format!("{flag} {v:?}: use a number of bytes, optionally with k, m or g (or -1)"));
    if v == "-1" {
        return Ok(-1);
    }
    let t = v.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1i64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(mul).ok_or_else(bad)
}

#[derive(clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

impl CreateArgs {
    fn opts(self, systemd_cgroup: bool) -> CreateOpts {
        CreateOpts {
            id: self.id,
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            no_pivot: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            preserve_fds: self.preserve_fds,
            systemd_cgroup,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                log_early_error(&e.to_string());
            }
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let fmt = match cli.log_format {
        LogFormat::Text => Format::Text,
        LogFormat::Json => Format::Json,
    };
    if let Err(e) = log::init(cli.log.as_deref(), fmt, cli.debug) {
        eprintln!("skiff-runtime: open log {}: {e}", cli.log.as_deref().unwrap_or(std::path::Path::new("")).display());
        return ExitCode::from(1);
    }
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = e.to_string();
            log::log(Level::Error, &msg);
            eprintln!("skiff-runtime: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A command line clap refused: still honour `--log FILE` / `--log-format json` when
/// they can be picked out of it, because containerd and podman read the error from there.
fn log_early_error(msg: &str) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut fmt = Format::Text;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let val = || inline.clone().or_else(|| args.get(i + 1).cloned());
        match key {
            "--log" => file = val(),
            "--log-format" if val().as_deref() == Some("json") => fmt = Format::Json,
            _ => {}
        }
        i += if inline.is_none() && (key == "--log" || key == "--log-format") { 2 } else { 1 };
    }
    if let Some(f) = file {
        if log::init(Some(std::path::Path::new(&f)), fmt, false).is_ok() {
            let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg);
            log::log(Level::Error, first.trim().trim_start_matches("error: "));
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8, Error> {
    // Commands that put a process of ours inside a container run from a sealed copy.
    if matches!(cli.cmd, Some(Cmd::Create { .. } | Cmd::Run { .. } | Cmd::Exec { .. })) {
        skiff_runtime::cloned::reexec_protected()?;
    }
    let root = cli.root;
    let Some(cmd) = cli.cmd else {
        if cli.version {
            commands::say(format_args!(
                "skiff-runtime version {}\nspec: {}\nlibseccomp: {}",
                env!("CARGO_PKG_VERSION"),
                skiff_runtime::state::OCI_VERSION,
                skiff_runtime::seccomp::library_version()
            ));
            return Ok(0);
        }
        return Err(Error::msg("no command given: see skiff-runtime --help"));
    };
    match cmd {
        Cmd::Spec { bundle, rootless } => commands::spec(&bundle, rootless).map(|_| 0),
        Cmd::Create { c } => container::create(&root, &c.opts(cli.systemd_cgroup), container::Mode::Create).map(|_| 0),
        Cmd::Start { id } => container::start(&root, &id).map(|_| 0),
        Cmd::Run { c, detach, keep: _ } => {
            container::run(&root, &c.opts(cli.systemd_cgroup), detach).map(|c| c.clamp(0, 255) as u8)
        }
        Cmd::State { id } => commands::state(&root, &id).map(|_| 0),
        Cmd::Kill { all, id, signal } => {
            let sig = skiff_runtime::signal::parse(&signal).map_err(Error::Msg)?;
            container::kill(&root, &id, sig, all).map(|_| 0)
        }
        Cmd::Delete { force, id } => container::delete(&root, &id, force).map(|_| 0),
        Cmd::Exec {
            process,
            detach,
            pid_file,
            env,
            cwd,
            tty,
            console_socket,
            preserve_fds,
            user,
            no_new_privs,
            cap,
            ignore_paused,
            id,
            args,
        } => {
            let o = ExecOpts {
                process_file: process,
                args,
                env,
                cwd,
                tty,
                detach,
                pid_file,
                console_socket,
                preserve_fds,
                user,
                no_new_privs,
                caps: cap,
                ignore_paused,
            };
            container::exec(&root, &id, &o).map(|c| c.clamp(0, 255) as u8)
        }
        Cmd::List { format, quiet } => commands::list(&root, format == ListFormat::Json, quiet).map(|_| 0),
        Cmd::Ps { format, id, ps_args } => commands::ps(&root, &id, format == ListFormat::Json, &ps_args).map(|_| 0),
        Cmd::Features => commands::features().map(|_| 0),
        Cmd::Pause { id } => container::pause(&root, &id).map(|_| 0),
        Cmd::Resume { id } => container::resume(&root, &id).map(|_| 0),
        Cmd::Update { u, id } => container::update(&root, &id, &u.resources()?).map(|_| 0),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
