//! The libtest-mimic adapter: each listed test becomes a trial that runs it as its own traced
//! process, judges it against its budget and emits its `TestFinished` event; libtest-mimic
//! runs the trials (`--jobs` at once), filters them as `cargo test` does and prints libtest's
//! lines from their outcomes.
//!
//! Invariants: the tracer is shared by the worker threads and handed back when every trial has
//! ended, so the probes come off after the last result is out; a trial fails exactly when its
//! result has failures, and its failure text is the human reporter's.

use std::{
    ffi::OsString,
    sync::{Arc, Mutex},
    time::Instant,
};

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};

use super::{
    Failure, Failures, MessageFormat, TestOptions, TestResult,
    list::TestCase,
    reporter::{Reporters, TestEvent, human::failure_message},
};
use crate::{
    error::{Error, Result},
    gate::{self, Judgement, LoadedGate},
    incomplete::Reasons,
    report::{Amount, LeakSummary},
    session,
    spawn::{Command, Follow},
    symbolize::Symbolizer,
    tracer::Tracer,
};

/// What the worker threads share.
struct Shared {
    tracer: Mutex<Tracer>,
    follow: Follow,
    gate: LoadedGate,
    options: TestOptions,
    results: Mutex<Vec<TestResult>>,
    reporters: Reporters,
}

/// A finished run of the trials, with what it borrowed handed back.
pub struct Ran {
    /// libtest-mimic's counts.
    pub conclusion: Conclusion,
    /// Every test that ran, in the order they finished.
    pub results: Vec<TestResult>,
    /// Drop it after the last output: removing the probes takes the kernel a couple of seconds
    /// (see Tracer::detach).
    pub tracer: Tracer,
    pub gate: LoadedGate,
    pub reporters: Reporters,
}

thread_local! {
    /// One symbolizer per worker thread: it caches each binary's symbols and line tables.
    static SYMBOLIZER: Symbolizer = Symbolizer::new();
}

/// Runs `cases` as libtest-mimic trials, emitting `RunStarted` and each `TestFinished`; each
/// test's children are followed as `follow` says.
pub fn run(
    tracer: Tracer,
    gate: LoadedGate,
    options: &TestOptions,
    cases: &[TestCase],
    follow: Follow,
    reporters: Reporters,
) -> Result<Ran> {
    let arguments = Arguments {
        filter: options.filters.filter.clone(),
        exact: options.filters.exact,
        skip: options.filters.skip.clone(),
        ignored: options.filters.ignored,
        include_ignored: options.filters.include_ignored,
        test_threads: Some(options.jobs.max(1)),
        logfile: (options.message_format == MessageFormat::Json).then(|| "/dev/null".into()),
        ..Arguments::default()
    };
    let shared = Arc::new(Shared {
        tracer: Mutex::new(tracer),
        follow,
        gate,
        options: options.clone(),
        results: Mutex::new(Vec::new()),
        reporters,
    });
    let trials: Vec<Trial> = cases
        .iter()
        .map(|case| {
            let shared = Arc::clone(&shared);
            let runner_case = case.clone();
            Trial::test(case.name.clone(), move || {
                let result = run_one(&shared, &runner_case);
                let failure = failure_message(&result, shared.options.top);
                let _ = shared
                    .reporters
                    .report(&TestEvent::TestFinished { result: &result });
                lock(&shared.results).push(result);
                failure.map_or(Ok(()), |message| Err(Failed::from(message)))
            })
            .with_kind(case.binary.id.clone())
            .with_ignored_flag(case.ignored)
        })
        .collect();
    let selected = trials
        .iter()
        .filter(|trial| !arguments.is_filtered_out(trial))
        .count();
    let skipped: Vec<(String, String)> = trials
        .iter()
        .filter(|trial| !arguments.is_filtered_out(trial) && arguments.is_ignored(trial))
        .map(|trial| (trial.kind().to_owned(), trial.name().to_owned()))
        .collect();
    shared.reporters.report(&TestEvent::RunStarted {
        tests: selected - skipped.len(),
        ignored: &skipped,
        jobs: options.jobs,
    })?;

    let conclusion = libtest_mimic::run(&arguments, trials);
    let results = std::mem::take(&mut *lock(&shared.results));
    let shared = match Arc::try_unwrap(shared) {
        Ok(shared) => shared,
        Err(_) => {
            return Err(Error::Io {
                context: "finishing the test run".into(),
                source: std::io::Error::other("a test runner outlived the run"),
            });
        }
    };
    Ok(Ran {
        conclusion,
        results,
        tracer: shared
            .tracer
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        gate: shared.gate,
        reporters: shared.reporters,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs one test traced and judges it.
fn run_one(shared: &Shared, case: &TestCase) -> TestResult {
    let options = &shared.options;
    let gate = &shared.gate;
    let mut args: Vec<OsString> = vec![
        "--exact".into(),
        case.name.clone().into(),
        "--nocapture".into(),
    ];
    if case.ignored {
        args.push("--ignored".into());
    }
    let mut command = Command::new(case.binary.path.clone().into_os_string(), args);
    command.cwd = Some(case.binary.package_dir.clone());
    command.env = case.binary.env.clone();
    command.isolated = true;
    command.timeout = options.timeout;
    command.follow = shared.follow.clone();
    let budget = gate
        .baseline
        .tests
        .get(&case.binary.id)
        .and_then(|tests| tests.get(&case.name))
        .cloned();
    let mut result = TestResult {
        binary_id: case.binary.id.clone(),
        test: case.name.clone(),
        failures: Failures::default(),
        exit: None,
        timed_out: false,
        duration_ms: 0.0,
        lost: Amount::default(),
        reachable: Amount::default(),
        suppressed: Amount::default(),
        leak_summary: LeakSummary::default(),
        stacks: Vec::new(),
        incomplete: Reasons::default(),
        unseen: Vec::new(),
        budget,
        judgement: Judgement::default(),
        output: None,
        children: Vec::new(),
    };
    let start = Instant::now();
    let traced = SYMBOLIZER.with(|symbolizer| session::trace(&shared.tracer, symbolizer, &command));
    result.duration_ms = start.elapsed().as_secs_f64() * 1e3;
    let run = match traced {
        Ok(run) => run,
        Err(err) => {
            result.failures.0.push(Failure::NotRun {
                error: err.to_string(),
            });
            return result;
        }
    };
    let (report, judgement) = gate.judge(&run, result.budget.as_ref());
    result.exit = Some(run.status.clone());
    result.timed_out = run.timed_out;
    result.output = run.output.clone();
    result.lost = judgement.lost;
    result.reachable = judgement.reachable;
    result.suppressed = judgement.suppressed;
    result.leak_summary = report.leak_summary;
    result.children = gate.judge_children(&run, result.budget.as_ref());
    let mut incomplete = report.incomplete.clone();
    for child in &result.children {
        incomplete.0.extend(child.incomplete.iter().cloned());
    }
    result.incomplete = incomplete.clone();
    result.unseen = report.unseen.clone();
    result.stacks = gate::lost_stacks(&report.stacks, &gate.suppressions)
        .cloned()
        .collect();

    let failures = &mut result.failures.0;
    if run.timed_out {
        failures.push(Failure::TimedOut {
            after: options.timeout.unwrap_or_default(),
        });
    } else if !run.status.success() {
        failures.push(Failure::TestFailed {
            exit: run.status.clone(),
        });
    }
    if !incomplete.is_empty() && !run.timed_out {
        if gate.options.allow_incomplete {
            // Reported, not failed.
        } else {
            failures.push(Failure::Incomplete {
                reasons: incomplete.0,
            });
        }
    }
    if !gate.options.bless && !run.timed_out {
        failures.extend(
            judgement
                .over_budget
                .iter()
                .cloned()
                .map(Failure::OverBudget),
        );
        for child in &result.children {
            failures.extend(child.judgement.over_budget.iter().map(|over| {
                Failure::ChildOverBudget {
                    executable: child.executable.clone(),
                    over: over.clone(),
                }
            }));
        }
    }
    result.judgement = judgement;
    result
}
