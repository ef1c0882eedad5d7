//! `cargo memleak test`: build the test targets, list their tests, run every test as its own
//! traced process (several at once), judge each against its leak budget, and report the lot as
//! a test run ([`crate::testrun`]: libtest's output, JSON events, JUnit XML), with `--bless`.
//!
//! Invariants: privileges and kernel support, the output paths and the gate's files are
//! checked before the (slow) build; the run's verdict is computed once, here, from the
//! scheduler's counts; the baseline is written only by a `--bless` run that was not
//! interrupted and in which every test ran to completion and was traced completely; the
//! probes come off after the last event is reported.

use std::collections::BTreeSet;

use crate::{
    build::{BuildOptions, Built, TestSelection, doctests},
    error::Result,
    fsutil,
    gate::{Blessing, LoadedGate, Measured, StaleEntry},
    outcome::Outcome,
    session,
    testrun::{
        MessageFormat, TestOptions, TestResult,
        interrupt::Interrupt,
        list,
        reporter::{Reporters, TestEvent},
        run,
    },
    user::RunAs,
};

/// What `cargo memleak test` does once the tests are built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Run them (the default).
    #[default]
    Run,
    /// `--no-run`: build only.
    NoRun,
    /// `--list`: list the selected tests.
    List,
}

/// `cargo memleak test`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    pub selection: TestSelection,
    pub mode: Mode,
    pub run: TestOptions,
}

pub fn test(options: &Options) -> Result<Outcome> {
    let run_options = &options.run;
    // Every path the run writes is checked before the (slow) build, and so are the gate's
    // files, read now.
    if let Some(junit) = &run_options.junit {
        fsutil::check_writable(junit, "--junit")?;
    }
    if let Some(svg) = &run_options.flamegraph {
        fsutil::check_writable(svg, "--flamegraph")?;
    }
    let tracing = options.mode == Mode::Run;
    // Fail on privileges and kernel support before the (slow) build.
    let tracer = if tracing {
        Some(session::load_tracer(&run_options.trace)?)
    } else {
        None
    };
    let run_as = run_options.run_as.as_ref();
    let metadata = options.build.metadata(run_as)?;
    let workspace_root = metadata.workspace_root.clone().into_std_path_buf();
    let gate = run_options.gate.load(&workspace_root)?;
    let workspace_members: BTreeSet<String> = metadata
        .workspace_packages()
        .iter()
        .map(|package| package.name.to_string())
        .collect();
    // `--doc` builds only what the doc tests need, which `cargo test --doc` does.
    let mut built = if options.selection.doc {
        Built {
            executables: Vec::new(),
            workspace_root: workspace_root.clone(),
        }
    } else {
        options
            .build
            .build_tests(&metadata, &options.selection, run_as)?
    };
    // Doc tests are compiled by rustdoc, as cargo runs it; `--no-run` compiles none (as in
    // cargo).
    if options.selection.doc_tests() && options.mode != Mode::NoRun {
        built.executables.extend(doctests::collect(
            &options.build,
            &metadata,
            &options.selection,
            run_as,
        )?);
    }
    let (Some(mut tracer), Mode::Run) = (tracer, options.mode) else {
        if options.mode == Mode::List {
            let listed = list::list_all(built.executables, run_as)?;
            let selection = list::select(&listed.cases, &run_options.filters);
            list::print(&selection, run_options.message_format);
        }
        return Ok(Outcome::Ok);
    };
    // A test's children are followed when they run a target of the workspace (a test binary
    // forked, one of its package's bins), or as --follow-children says.
    let follow = run_options.follow_children.follow(|| {
        built
            .executables
            .iter()
            .filter(|executable| !executable.path.as_os_str().is_empty())
            .flat_map(|executable| {
                std::iter::once(executable.path.clone()).chain(executable.bins.iter().cloned())
            })
            .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
            .collect()
    });
    let listed = list::list_all(built.executables, run_as)?;
    let selection = list::select(&listed.cases, &run_options.filters);
    let note = tracer.prepare_for_many(run_options.jobs.min(selection.run.len()))?;
    if let Some(note) = &note {
        eprintln!("memleak: {note}");
    }
    // Only the perf-event fallback needs a note (the mode with probes everywhere): its
    // probes come off one by one, about 100 ms each, after the results.
    let slow_detach = note.is_some();
    let interrupt = Interrupt::install()?;
    let ran = run::run(
        tracer,
        gate,
        run_options,
        &selection,
        follow,
        Reporters::new(run_options, &workspace_root),
        &interrupt,
    )?;
    let run::Ran {
        stats,
        results,
        tracer,
        gate,
        reporters,
    } = ran;

    let stale = gate
        .baseline
        .stale_entries(&listed.names, &workspace_members);
    let used: BTreeSet<&str> = results
        .iter()
        .flat_map(|result| {
            std::iter::once(&result.judgement)
                .chain(result.children.iter().map(|child| &child.judgement))
        })
        .flat_map(|judgement| judgement.used_suppressions.iter().map(String::as_str))
        .collect();
    let unused: Vec<String> = gate
        .user_suppressions()
        .filter(|suppression| !used.contains(suppression.pattern.as_str()))
        .map(|suppression| String::from(suppression.clone()))
        .collect();
    reporters.report(&TestEvent::TestsFinished {
        stats: &stats,
        stale: &stale,
        unused: &unused,
    })?;

    let mut outcome = if let Some(signal) = stats.interrupted {
        Outcome::Interrupted(signal)
    } else if stats.failed > 0 {
        Outcome::Failed
    } else if stats.passed == 0 && stats.ignored == 0 {
        eprintln!("memleak: no tests matched; check the filters and target selection");
        Outcome::NoTests
    } else {
        Outcome::Ok
    };
    if gate.options.bless && stats.interrupted.is_none() {
        outcome = bless(&gate, &results, &stale, outcome, run_as)?;
    }
    reporters.report(&TestEvent::RunFinished {
        stats: &stats,
        outcome,
    })?;
    if run_options.message_format == MessageFormat::Human {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if slow_detach {
            // Measured: 2.6 s from `test result:` to the exit, all of it the kernel's.
            eprintln!(
                "memleak: removing the probes (perf-event mode: the kernel takes about 100 ms \
                 for each, one at a time)"
            );
        }
    }
    // Dropping the tracer waits for the kernel to remove the probes (see Tracer::detach).
    drop(tracer);
    Ok(outcome)
}

/// Writes the budgets this run measured; refuses when a test could not be measured.
fn bless(
    gate: &LoadedGate,
    results: &[TestResult],
    stale: &[StaleEntry],
    outcome: Outcome,
    owner: Option<&RunAs>,
) -> Result<Outcome> {
    let blessing = gate.bless_tests(
        results.iter().map(|result| Measured {
            binary_id: &result.binary_id,
            test: &result.budget_key,
            judgement: &result.judgement,
            children: &result.children,
            measured: !result.failures.unmeasured(),
        }),
        stale,
        owner,
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
                "memleak: blessed {}: {budgets} tests with budgets",
                gate.path.display()
            );
            Ok(outcome)
        }
    }
}
