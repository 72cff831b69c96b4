//! `carnet`: the command line of Carnet, an encrypted patient-notes store.
//!
//! This file parses, dispatches, and is the one place that maps errors to exit codes
//! (docs/cli.md, "Exit codes").
#![forbid(unsafe_code)]

/// jemalloc, not the system allocator (ADR 0009): glibc's malloc fragments under the import's
/// pattern of 2 KiB records allocated on one thread and freed on another. Every block is
/// zeroized when freed (ADR 0024): plaintext that passed through a buffer (a JSON body, a TLS
/// record, a decrypted note) does not outlive it in freed memory.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: zalloc::ZeroizingAlloc<tikv_jemallocator::Jemalloc> =
    zalloc::ZeroizingAlloc(tikv_jemallocator::Jemalloc);

mod args;
mod cmd;
mod context;
mod error;
mod harden;
mod progress;
mod render;
mod state;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Args, Parser};

/// In `carnet audit --user NAME` (docs/cli.md, "audit") `--user` after the `audit` command
/// filters the log by user; anywhere else, and before `audit` (or as CARNET_USER), it selects
/// whose slot unlocks. clap's global `--user` cannot tell the two apart, so a first pass of clap
/// over the global options alone finds where the command starts (the options before it, and
/// their values, are clap's to recognise: `--vault audit` names a directory); only when that
/// command is `audit` is a later `--user` renamed to the filter, `--user-filter`.
fn audit_user_filter(mut args: Vec<OsString>) -> Vec<OsString> {
    let first_pass = args::Global::augment_args(clap::Command::new("carnet"))
        .allow_external_subcommands(true)
        .disable_help_flag(true)
        .disable_version_flag(true);
    let Ok(matches) = first_pass.try_get_matches_from(&args) else {
        // The real parse below reports the error.
        return args;
    };
    let Some(("audit", command)) = matches.subcommand() else {
        return args;
    };
    let after = command
        .get_many::<OsString>("")
        .map_or(0, |rest| rest.count());
    let start = args.len() - after;
    for a in &mut args[start..] {
        if a == "--user" {
            *a = "--user-filter".into();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--user=")) {
            *a = format!("--user-filter={v}").into();
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
    harden::private_files();
    // clap exits 2 on usage errors and 0 for --help and --version.
    let cli = args::Cli::parse_from(audit_user_filter(std::env::args_os().collect()));
    match std::panic::catch_unwind(|| cmd::run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if e.exit == error::Exit::Quiet => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}", e.line());
            ExitCode::from(e.exit as u8)
        }
        Err(_) => ExitCode::FAILURE,
    }
}
