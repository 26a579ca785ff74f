//! `skiff-shim`: the per-container shim (`skiff shim`, [`skiff::shim`]) as a binary of its
//! own. One runs beside every container for its whole life, so it is kept small: it links
//! only the shim and the log writer, not the agent (no async runtime, no HTTP, no TLS),
//! which keeps each shim's resident memory a fraction of the whole binary's.
//!
//! The agent opens this file once at start (next to its own binary) and starts every shim
//! from that descriptor, so an upgrade that replaces the files on disk never leaves the
//! running agent without a shim to start. Its command line is `skiff-shim shim ARGS`, as
//! `skiff shim ARGS` is, so that the agent (and the tests) recognise a shim the same way.

use clap::Parser;

#[derive(Parser)]
#[command(name = "skiff-shim", about = "skiff's per-container shim (started by the agent)")]
enum Cmd {
    /// Keep one container's stdout/stderr and exit status
    Shim(skiff::shim::ShimArgs),
}

fn main() {
    let Cmd::Shim(a) = Cmd::parse();
    let code = match skiff::shim::shim(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff-shim: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
