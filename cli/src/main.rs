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
    // clap exits 2 on usage errors and 0 for --help and --version.
    let cli = args::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.line());
            ExitCode::from(e.exit as u8)
        }
    }
}
