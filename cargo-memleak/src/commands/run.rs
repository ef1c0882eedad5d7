//! `cargo memleak run`: build a bin target with frame pointers, trace it like `exec`, and judge
//! what it lost against its budget in the baseline (`runs[binary id]`), or `--bless` it.
//!
//! Invariants: the build happens after every option was checked and before anything is traced;
//! the program's failure and an incomplete trace decide the outcome before the gate does; a
//! bless writes the budget whatever the program lost, and passes.

use std::ffi::OsString;

use super::exec::{self, ReportOptions};
use crate::{
    build::{BuildOptions, RunSelection},
    error::{Error, Result},
    gate::{self, Gate, LoadedGate},
    outcome::Outcome,
    session::{TraceOptions, TracedRun},
    spawn::{Command, FollowChildren},
    user::RunAs,
};

/// `cargo memleak run`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    pub selection: RunSelection,
    pub report: ReportOptions,
    pub gate: Gate,
    pub trace: TraceOptions,
    /// Which processes it starts are followed: `Workspace` means those running the binary.
    pub follow_children: FollowChildren,
    /// Arguments for the binary.
    pub args: Vec<OsString>,
    /// Under sudo (or `--user`): who the build and the binary run as, and who the files
    /// written for the user (baseline, report, picture) belong to.
    pub run_as: Option<RunAs>,
}

pub fn run(options: &Options) -> Result<Outcome> {
    options.report.check_outputs()?;
    let run_as = options.run_as.as_ref();
    let built = options.build.build_binary(&options.selection, run_as)?;
    let gate = options.gate.load(&built.workspace_root)?;
    let Some(executable) = built.executables.into_iter().next() else {
        return Err(Error::Selection("cargo built no binary to run".into()));
    };
    let path = std::fs::canonicalize(&executable.path).unwrap_or(executable.path.clone());
    let mut command = Command::new(executable.path.into_os_string(), options.args.clone());
    command.env = executable.env;
    command.run_as = options.run_as.clone();
    command.follow = options
        .follow_children
        .follow(|| std::iter::once(path).collect());
    let report = options.report.relative_to(&built.workspace_root);
    let traced = exec::trace_and_report(&command, &report, &options.trace)?;
    if let Some(outcome) = traced.failure(gate.options.allow_incomplete) {
        return Ok(outcome);
    }
    judge(&traced.run, &gate, &executable.id, run_as)
}

/// The run's lost memory against `runs[binary_id]`.
fn judge(
    run: &TracedRun,
    gate: &LoadedGate,
    binary_id: &str,
    owner: Option<&RunAs>,
) -> Result<Outcome> {
    let budget = gate.baseline.runs.get(binary_id);
    let (report, judgement) = gate.judge(run, budget);
    let children = gate.judge_children(run, &report, budget);
    if gate.options.bless {
        gate.bless_run(binary_id, &judgement, &children, owner)?;
        eprintln!(
            "memleak: blessed {}: {binary_id} may lose {} bytes in {} blocks",
            gate.path.display(),
            judgement.lost.bytes,
            judgement.lost.blocks
        );
        return Ok(Outcome::Ok);
    }
    let over: Vec<String> = judgement
        .over_budget
        .iter()
        .map(ToString::to_string)
        .chain(children.iter().flat_map(|child| {
            child
                .judgement
                .over_budget
                .iter()
                .map(|reason| gate::child_over_budget(&child.executable, reason))
        }))
        .collect();
    if over.is_empty() {
        return Ok(Outcome::Ok);
    }
    for reason in &over {
        eprintln!(
            "memleak: {binary_id}: {reason} (baseline {})",
            gate.path.display()
        );
    }
    Ok(Outcome::Failed)
}
