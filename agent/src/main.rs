//! The `skiff` binary: see `skiff --help`.
use clap::Parser;

fn main() {
    let cli = skiff::cli::Cli::parse();
    match skiff::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Escaped and bounded: the chain may quote a registry's or an image's text.
            let text = skiff_images::text::one_line(&format!("{e:#}"), skiff_images::text::MESSAGE_MAX);
            eprintln!("skiff: error: {text}");
            std::process::exit(1)
        }
    }
}
