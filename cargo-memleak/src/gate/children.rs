//! The processes a traced run started and followed ([`crate::spawn::Follow`]), judged by
//! executable: all the processes that ran one executable together, against the budget's
//! `children[executable name]` (absent means nothing may be lost).
//!
//! Invariants: a child that ended without an exit stop (killed by SIGKILL, usually by its
//! parent) or was still running when the program ended left nothing to read and is a note, not
//! a gap; a child that could not be traced, or whose trace is incomplete, makes the run
//! incomplete.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Budget, Judgement, LoadedGate, judge, lost_stacks};
use crate::{
    incomplete::Incomplete,
    report::{Amount, LeakSummary, LostCycle, Report, Stack},
    session::{ChildFate, ChildRun, TracedRun},
    spawn::ExitStatus,
};

/// One followed process.
#[derive(Clone, Debug, Serialize)]
pub struct ChildProcess {
    pub pid: u32,
    /// Its command line (after its last exec).
    pub command: String,
    #[serde(flatten)]
    pub fate: Fate,
}

/// How a followed process ended, as far as tracing goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// Held at its exit stop, read and scanned.
    Scanned { exit: ExitStatus },
    /// Ended without an exit stop (SIGKILL): nothing of it could be read or was left.
    Killed { exit: ExitStatus },
    /// Still running when the program ended: let go, unscanned.
    StillRunning,
    /// Let go, unscanned, for a `ptrace` call that asked for it.
    HandedOver,
    /// Could not be traced.
    Untraced { error: String },
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Scanned { exit } => exit.fmt(f),
            Fate::Killed { exit } => write!(f, "{exit}, nothing to read"),
            Fate::StillRunning => f.write_str("still running when the test ended, not scanned"),
            Fate::HandedOver => f.write_str(
                "ptraced by the test (PTRACE_TRACEME or an attach): let go, not scanned",
            ),
            Fate::Untraced { error } => write!(f, "not traced: {error}"),
        }
    }
}

/// How the processes running `executable` went over their budget, in words (`test`'s failure
/// text and `run`'s message).
pub fn child_over_budget(executable: &str, over: &super::OverBudget) -> String {
    format!("its child processes running {executable}: {over}")
}

/// The followed processes that ran one executable, judged together.
#[derive(Clone, Debug, Serialize)]
pub struct ChildVerdict {
    /// The executable's file name (the budget's key).
    pub executable: String,
    pub processes: Vec<ChildProcess>,
    pub lost: Amount,
    pub reachable: Amount,
    pub suppressed: Amount,
    pub leak_summary: LeakSummary,
    /// Lost stacks, unsuppressed, largest first.
    pub stacks: Vec<Stack>,
    /// The lost blocks that only point at each other, each process's, largest first.
    pub cycles: Vec<LostCycle>,
    pub budget: Option<Budget>,
    /// Why their trace is incomplete (each reason names its process).
    #[serde(skip)]
    pub incomplete: Vec<Incomplete>,
    #[serde(skip)]
    pub judgement: Judgement,
}

impl LoadedGate {
    /// Judges the children of `run`, by executable, against `budget`'s children, from their
    /// reports in `report` ([`LoadedGate::judge`]'s, which lists every stack).
    pub fn judge_children(
        &self,
        run: &TracedRun,
        report: &Report,
        budget: Option<&Budget>,
    ) -> Vec<ChildVerdict> {
        type Child<'a> = (&'a ChildRun, Option<&'a Report>);
        let mut by_executable: BTreeMap<String, Vec<Child>> = BTreeMap::new();
        // `report::build` made one child report per child of the run, in its order.
        debug_assert!(
            run.children
                .iter()
                .zip(&report.children)
                .all(|(child, its)| child.pid == its.pid)
        );
        for (child, its) in run.children.iter().zip(&report.children) {
            by_executable
                .entry(executable_name(child))
                .or_default()
                .push((child, its.report.as_ref()));
        }
        by_executable
            .into_iter()
            .map(|(executable, children)| {
                let mut stacks = Vec::new();
                let mut cycles: Vec<LostCycle> = Vec::new();
                let mut leak_summary = LeakSummary::default();
                let mut incomplete = Vec::new();
                let mut processes = Vec::new();
                for (child, child_report) in children {
                    let fate = match (&child.fate, &child.run) {
                        (ChildFate::Untraced(error), _) => {
                            incomplete.push(Incomplete::ChildUntraced {
                                pid: child.pid,
                                executable: executable.clone(),
                                error: error.clone(),
                            });
                            Fate::Untraced {
                                error: error.clone(),
                            }
                        }
                        (ChildFate::Killed(exit), _) => Fate::Killed { exit: exit.clone() },
                        (ChildFate::StillRunning, _) => Fate::StillRunning,
                        (ChildFate::HandedOver, _) => Fate::HandedOver,
                        (ChildFate::Scanned, Some(child_run)) => Fate::Scanned {
                            exit: child_run.status.clone(),
                        },
                        (ChildFate::Scanned, None) => Fate::StillRunning,
                    };
                    if let Some(report) = child_report {
                        leak_summary.merge(&report.leak_summary);
                        incomplete.extend(report.incomplete.0.iter().map(|reason| {
                            Incomplete::Child {
                                pid: child.pid,
                                executable: executable.clone(),
                                reason: Box::new(reason.clone()),
                            }
                        }));
                        stacks.extend(report.stacks.iter().cloned());
                        cycles.extend(report.cycles.iter().cloned());
                    }
                    processes.push(ChildProcess {
                        pid: child.pid,
                        command: child.program.clone(),
                        fate,
                    });
                }
                stacks.sort_by_key(|stack| std::cmp::Reverse((stack.bytes, stack.allocations)));
                cycles.sort_by_key(|cycle| std::cmp::Reverse(cycle.bytes));
                let budget = budget
                    .and_then(|budget| budget.children.get(&executable))
                    .cloned();
                // Leaks only: a child's heap is not budgeted.
                let judgement = judge(
                    &stacks,
                    None,
                    budget.as_ref(),
                    &self.suppressions,
                    self.options.fail_on,
                );
                let lost: Vec<Stack> = lost_stacks(&stacks, &self.suppressions).cloned().collect();
                ChildVerdict {
                    executable,
                    processes,
                    lost: judgement.lost,
                    reachable: judgement.reachable,
                    suppressed: judgement.suppressed,
                    leak_summary,
                    stacks: lost,
                    cycles,
                    budget,
                    incomplete,
                    judgement,
                }
            })
            .collect()
    }
}

/// The file name a child's budget is keyed by, without the hash cargo appends to a test
/// binary's (`children-565f254d053194d5` is `children`), which changes from build to build.
fn executable_name(child: &ChildRun) -> String {
    let name = child
        .executable
        .as_deref()
        .and_then(|path| path.file_name())
        .map_or_else(
            || "unknown".into(),
            |name| name.to_string_lossy().into_owned(),
        );
    match name.rsplit_once('-') {
        Some((stem, hash))
            if !stem.is_empty()
                && hash.len() == 16
                && hash.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
        {
            stem.to_owned()
        }
        _ => name,
    }
}
