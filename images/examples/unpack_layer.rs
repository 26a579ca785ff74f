//! Unpacks one layer blob into a new directory and prints what it did (a manual tool and a
//! benchmark: `cargo build --release -p skiff-images --example unpack_layer`).
//!
//!   unpack_layer BLOB DIR [--apply] [--diff-id sha256:HEX] [--media-type TYPE] [--sync]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use skiff_images::unpack::{sync_dir_tree, unpack_layer, UnpackOptions, WhiteoutMode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut blob, mut dir, mut opts, mut sync) = (None, None, UnpackOptions::default(), false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--apply" => opts.whiteouts = WhiteoutMode::Apply,
            "--sync" => sync = true,
            "--diff-id" => opts.expected_diff_id = args.next(),
            "--media-type" => opts.media_type = args.next(),
            _ if blob.is_none() => blob = Some(PathBuf::from(a)),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => {
                eprintln!("usage: unpack_layer BLOB DIR [--apply] [--diff-id D] [--media-type T] [--sync]");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(blob), Some(dir)) = (blob, dir) else {
        eprintln!("usage: unpack_layer BLOB DIR [--apply] [--diff-id D] [--media-type T] [--sync]");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let file = match std::fs::File::open(&blob) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("unpack_layer: {}: {e}", blob.display());
            return ExitCode::FAILURE;
        }
    };
    let res = unpack_layer(file, &dir, &opts).and_then(|s| {
        if sync {
            sync_dir_tree(&dir)?;
        }
        Ok(s)
    });
    match res {
        Ok(s) => {
            println!(
                "{} ({}): {} entries, {} files, {} file bytes, {} stream bytes, {} whiteouts in {:.3}s",
                s.diff_id,
                s.compression,
                s.entries,
                s.files,
                s.file_bytes,
                s.bytes,
                s.whiteouts,
                start.elapsed().as_secs_f64()
            );
            for n in &s.notes {
                println!("note: {n}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unpack_layer: {e}");
            ExitCode::FAILURE
        }
    }
}
