//! The `skiff` binary: see `skiff --help`.
use clap::Parser;

fn main() {
    let cli = skiff::cli::Cli::parse();
    match skiff::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("skiff: error: {e:#}");
            std::process::exit(1)
        }
    }
}
