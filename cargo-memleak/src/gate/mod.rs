//! The leak gate, shared by `cargo memleak run` and `cargo memleak test`: the baseline file of
//! leak budgets (`baseline`), suppressions (`suppressions`), the gate's options and files
//! ([`Gate`], [`LoadedGate`]), the verdict on one traced run ([`judge`] → [`Judgement`]) and
//! `--bless`, which writes what a run lost as the budgets (`bless`).
//!
//! Invariants: a run is judged on a report of every stack (reachable ones included), whatever
//! the report shown to the user asks for; suppressed memory is counted, never gated; a budget
//! is recorded only for a run that lost something that counts (absent means zero), and the
//! baseline is written only by a bless that could measure every test it blesses.

mod baseline;
mod bless;
mod children;
mod judge;
mod suppressions;

use std::path::{Path, PathBuf};

pub use baseline::{
    Baseline, Budget, FILE_NAME, SCHEMA_VERSION, StackBudget, StaleEntry, Version, path, stack_key,
};
pub use bless::{Blessing, Measured};
pub use children::{ChildProcess, ChildVerdict, Fate, child_over_budget};
pub use judge::{FailOn, Judgement, KeyedStack, OverBudget, judge, lost_stacks};
pub use suppressions::{
    BUILTIN_SUPPRESSIONS, Suppression, builtin_suppressions, read_suppressions,
};

use crate::{error::Result, report, session::TracedRun};

/// The leak gate's options: budgets, suppressions, and what fails a run.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    /// `--baseline PATH`; the workspace root's `memleak-baseline.json` when `None`.
    pub baseline: Option<PathBuf>,
    pub suppressions: Option<PathBuf>,
    pub fail_on: FailOn,
    pub allow_incomplete: bool,
    pub bless: bool,
}

/// The gate with its files read.
#[derive(Debug)]
pub struct LoadedGate {
    pub path: PathBuf,
    pub baseline: Baseline,
    /// The built-in suppressions, the baseline's and the `--suppressions` file's.
    pub suppressions: Vec<Suppression>,
    pub options: Gate,
}

impl Gate {
    /// Reads the baseline and the suppressions file. The default baseline may be missing (no
    /// budgets); a `--baseline` that names no file is an error, unless `--bless` is to create
    /// it.
    pub fn load(&self, workspace_root: &Path) -> Result<LoadedGate> {
        let path = baseline::path(self.baseline.as_deref(), workspace_root);
        if self.baseline.is_some() && !self.bless && !path.exists() {
            return Err(crate::error::Error::GateFile {
                path,
                what: "baseline",
                reason: "no such file; check the path, or create it with --bless".into(),
            });
        }
        let baseline = Baseline::read(&path)?;
        let mut suppressions = builtin_suppressions();
        suppressions.extend(baseline.suppressions.iter().cloned());
        if let Some(file) = &self.suppressions {
            suppressions.extend(read_suppressions(file)?);
        }
        Ok(LoadedGate {
            path,
            baseline,
            suppressions,
            options: self.clone(),
        })
    }
}

impl LoadedGate {
    /// The suppressions the user gave (the baseline's and the `--suppressions` file's), not
    /// the built-in ones.
    pub fn user_suppressions(&self) -> impl Iterator<Item = &Suppression> {
        self.suppressions.iter().skip(BUILTIN_SUPPRESSIONS.len())
    }

    /// Judges one traced run against `budget`: the report of every stack it left, and the
    /// verdict on it.
    pub fn judge(&self, run: &TracedRun, budget: Option<&Budget>) -> (report::Report, Judgement) {
        let report = report::build(
            run,
            &report::Options {
                stacks: report::StackOptions {
                    top: usize::MAX,
                    ..report::StackOptions::default()
                },
                show_reachable: true,
            },
        );
        let judgement = judge(
            &report.stacks,
            run.trace.as_ref().and_then(|trace| trace.heap),
            budget,
            &self.suppressions,
            self.options.fail_on,
        );
        (report, judgement)
    }
}
