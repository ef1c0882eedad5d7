//! cargo-memleak: finds memory leaks with eBPF uprobes on the allocator.
//!
//! The pipeline, one module per stage, data flowing one way:
//! [`build`] (cargo build with frame pointers) → [`spawn`] (gated, ptraced child) →
//! [`tracer`] (eBPF maps, pid-scoped probes at [`allocator`] entry points) →
//! [`symbolize`] (at the exit stop) → [`report`] (data, then text or JSON).
//! [`session`] strings one traced run together; [`cli`] parses, [`commands`] drives.
//! BCC's periodic modes: [`watch`] (reports every interval; `attach` to a running process) and
//! [`kernel`] (tracepoints on the kernel's allocators).

pub mod allocator;
pub mod build;
pub mod classify;
pub mod cli;
pub mod commands;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod gate;
pub mod incomplete;
pub mod kernel;
pub mod outcome;
pub mod privileges;
pub mod report;
pub mod scan;
pub mod session;
pub mod spawn;
pub mod symbolize;
pub mod testrun;
pub mod tracer;
pub mod user;
pub mod watch;

use std::{ffi::OsString, process::ExitCode};

/// Parses `args` (argv, with or without cargo's `memleak` word), runs the command, and returns
/// its exit code (see [`outcome`]); an error is printed on stderr first.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    // A merged doc test binary probed for its tests' numbers (see build::doctests).
    if std::env::var_os(build::doctests::PROBE_VAR).is_some() {
        return build::doctests::serve_probe();
    }
    // rustdoc's runner for a doc test being collected (see build::doctests).
    if args
        .get(1)
        .is_some_and(|arg| arg == build::doctests::COLLECT_ARGUMENT)
    {
        return build::doctests::serve_collect(&args);
    }
    // A test run's spawner (see spawn::spawner): this binary again, started by the run.
    if args
        .get(1)
        .is_some_and(|arg| arg == spawn::spawner::ARGUMENT)
    {
        return spawn::spawner::serve();
    }
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(cli::parse_error_exit_code(&err));
        }
    };
    match cli.validate().and_then(commands::run) {
        Ok(outcome) => ExitCode::from(outcome.exit_code().code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code().code)
        }
    }
}
