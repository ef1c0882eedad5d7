//! `cargo memleak test`: build the test targets, list their tests, run every test as its own
//! traced process (several at once), judge each against its leak budget, and report the lot as
//! a test run ([`crate::testrun`]: libtest's output, JSON events, JUnit XML), with `--bless`.
//!
//! Invariants: privileges and kernel support are checked before the (slow) build; the run's
//! verdict is computed once, here, from libtest-mimic's counts; the baseline is written only
//! by a `--bless` run in which every test ran to completion and was traced completely; the
//! probes come off after the last event is reported.

use std::collections::BTreeSet;

use crate::{
    build::{BuildOptions, TestSelection},
    error::Result,
    gate::{Blessing, LoadedGate, Measured, StaleEntry},
    outcome::Outcome,
    session,
    testrun::{
        TestOptions, TestResult, list,
        reporter::{Reporters, TestEvent},
        run,
    },
};

/// `cargo memleak test`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    pub selection: TestSelection,
    pub run: TestOptions,
}

pub fn test(options: &Options) -> Result<Outcome> {
    let run_options = &options.run;
    // Fail on privileges and kernel support before the (slow) build.
    let mut tracer = session::load_tracer(&run_options.trace)?;
    let built = options.build.build_tests(&options.selection)?;
    let workspace_members: BTreeSet<String> = options
        .build
        .metadata()?
        .workspace_packages()
        .iter()
        .map(|package| package.name.to_string())
        .collect();
    let gate = run_options.gate.load(&built.workspace_root)?;
    // A test's children are followed when they run a target of the workspace (a test binary
    // forked, a bin through CARGO_BIN_EXE_*), or as --follow-children says.
    let follow = run_options.follow_children.follow(|| {
        built
            .executables
            .iter()
            .flat_map(|executable| {
                let bins = executable
                    .env
                    .iter()
                    .filter(|(name, _)| name.to_string_lossy().starts_with("CARGO_BIN_EXE_"))
                    .map(|(_, path)| std::path::PathBuf::from(path));
                std::iter::once(executable.path.clone()).chain(bins)
            })
            .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
            .collect()
    });
    let listed = list::list_all(built.executables)?;
    if let Some(note) = tracer.prepare_for_many()? {
        eprintln!("memleak: {note}");
    }
    let ran = run::run(
        tracer,
        gate,
        run_options,
        &listed.cases,
        follow,
        Reporters::new(run_options, &built.workspace_root),
    )?;
    let run::Ran {
        conclusion,
        results,
        tracer: _tracer,
        gate,
        reporters,
    } = ran;

    let stale = gate
        .baseline
        .stale_entries(&listed.names, &workspace_members);
    reporters.report(&TestEvent::TestsFinished { stale: &stale })?;

    let mut outcome = if conclusion.num_failed > 0 {
        Outcome::Failed
    } else if conclusion.num_passed == 0 && conclusion.num_ignored == 0 {
        eprintln!("memleak: no tests matched; check the filters and target selection");
        Outcome::NoTests
    } else {
        Outcome::Ok
    };
    if gate.options.bless {
        outcome = bless(&gate, &results, &stale, outcome)?;
    }
    reporters.report(&TestEvent::RunFinished {
        passed: conclusion.num_passed,
        failed: conclusion.num_failed,
        ignored: conclusion.num_ignored,
        filtered_out: conclusion.num_filtered_out,
        outcome,
    })?;
    Ok(outcome)
}

/// Writes the budgets this run measured; refuses when a test could not be measured.
fn bless(
    gate: &LoadedGate,
    results: &[TestResult],
    stale: &[StaleEntry],
    outcome: Outcome,
) -> Result<Outcome> {
    let blessing = gate.bless_tests(
        results.iter().map(|result| Measured {
            binary_id: &result.binary_id,
            test: &result.test,
            judgement: &result.judgement,
            children: &result.children,
            measured: !result.failures.unmeasured(),
        }),
        stale,
    )?;
    match blessing {
        Blessing::Refused { unmeasured } => {
            eprintln!(
                "memleak: not blessing {}: {} tests failed or were not fully traced ({}); fix \
                 or --skip them and bless again",
                gate.path.display(),
                unmeasured.len(),
                unmeasured.join(", ")
            );
            Ok(Outcome::Failed)
        }
        Blessing::Written { budgets } => {
            eprintln!(
                "memleak: blessed {}: {budgets} tests with leak budgets",
                gate.path.display()
            );
            Ok(outcome)
        }
    }
}
