//! `carnet`: the command line of Carnet, an encrypted patient-notes store.
//!
//! This file parses, dispatches, and is the one place that maps errors to exit codes
//! (../shared/contract/cli.md, "Exit codes").
#![forbid(unsafe_code)]

/// jemalloc, not the system allocator (ADR 0009): glibc's malloc fragments under the import's
/// pattern of 2 KiB records allocated on one thread and freed on another.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod args;
mod cmd;
mod context;
mod error;
mod harden;
mod progress;
mod render;

use std::process::ExitCode;

use clap::Parser;

/// In `carnet audit --user NAME` (../shared/contract/cli.md) `--user` after `audit` filters the
/// log by user; before `audit` (or as CARNET_USER) it still selects whose slot unlocks. clap's
/// global `--user` cannot tell the two apart, so the filter is renamed here.
fn audit_user_filter(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if let Some(at) = args.iter().position(|a| a == "audit") {
        for a in args.iter_mut().skip(at + 1) {
            if a == "--user" {
                *a = "--user-filter".into();
            } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--user=")) {
                *a = format!("--user-filter={v}").into();
            }
        }
    }
    args
}

fn main() -> ExitCode {
    // A panic is a bug. Its message could quote data, so print one fixed line instead of the
    // message and a backtrace; writes are atomic, so nothing half-written remains.
    std::panic::set_hook(Box::new(|_| {
        eprintln!(
            "carnet: internal error (a bug in carnet); the vault keeps every acknowledged write"
        );
    }));
    harden::no_core_dumps();
    // clap exits 2 on usage errors and 0 for --help and --version.
    let cli = args::Cli::parse_from(audit_user_filter(std::env::args_os().collect()));
    match std::panic::catch_unwind(|| cmd::run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}", e.line());
            ExitCode::from(e.exit as u8)
        }
        Err(_) => ExitCode::FAILURE,
    }
}
