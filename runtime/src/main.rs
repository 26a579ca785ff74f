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
    /// Use systemd to manage cgroups (not supported yet)
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
    fn opts(self) -> CreateOpts {
        CreateOpts {
            id: self.id,
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            no_pivot: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            preserve_fds: self.preserve_fds,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
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

fn dispatch(cli: Cli) -> Result<u8, Error> {
    if cli.systemd_cgroup {
        return Err(Error::msg(
            "--systemd-cgroup is not supported yet: drop the flag (skiff-runtime manages cgroupfs directly)",
        ));
    }
    // Commands that put a process of ours inside a container run from a sealed copy.
    if matches!(cli.cmd, Some(Cmd::Create { .. } | Cmd::Run { .. } | Cmd::Exec { .. })) {
        skiff_runtime::cloned::reexec_protected()?;
    }
    let root = cli.root;
    let Some(cmd) = cli.cmd else {
        if cli.version {
            println!("skiff-runtime version {}", env!("CARGO_PKG_VERSION"));
            println!("spec: {}", skiff_runtime::state::OCI_VERSION);
            println!("libseccomp: {}", skiff_runtime::seccomp::library_version());
            return Ok(0);
        }
        return Err(Error::msg("no command given: see skiff-runtime --help"));
    };
    match cmd {
        Cmd::Spec { bundle, rootless } => commands::spec(&bundle, rootless).map(|_| 0),
        Cmd::Create { c } => container::create(&root, &c.opts(), container::Mode::Create).map(|_| 0),
        Cmd::Start { id } => container::start(&root, &id).map(|_| 0),
        Cmd::Run { c, detach, keep: _ } => container::run(&root, &c.opts(), detach).map(|c| c.clamp(0, 255) as u8),
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
            };
            container::exec(&root, &id, &o).map(|c| c.clamp(0, 255) as u8)
        }
        Cmd::List { format, quiet } => commands::list(&root, format == ListFormat::Json, quiet).map(|_| 0),
        Cmd::Ps { format, id, ps_args } => commands::ps(&root, &id, format == ListFormat::Json, &ps_args).map(|_| 0),
        Cmd::Features => commands::features().map(|_| 0),
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
