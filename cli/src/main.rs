//! `carnet`: the command line of Carnet, an encrypted patient-notes store.
//!
//! This file parses, dispatches, and is the one place that maps errors to exit codes
//! (../shared/contract/cli.md, "Exit codes").
#![forbid(unsafe_code)]

mod args;
mod cmd;
mod context;
mod error;
mod progress;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A panic is a bug. Its message could quote data, so print one fixed line instead of the
    // message and a backtrace; writes are atomic, so nothing half-written remains.
    std::panic::set_hook(Box::new(|_| {
        eprintln!(
            "carnet: internal error (a bug in carnet); the vault keeps every acknowledged write"
        );
    }));
    // clap exits 2 on usage errors and 0 for --help and --version.
    let cli = args::Cli::parse();
    match std::panic::catch_unwind(|| cmd::run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}", e.line());
            ExitCode::from(e.exit as u8)
        }
        Err(_) => ExitCode::FAILURE,
    }
}
