//! `cargo memleak test`: build the test targets, list their tests, run every test as its own
//! traced process (several at once), judge each against its leak budget, and report the lot as
//! a test run (libtest-mimic), with JUnit XML, JSON events and `--bless` on the side.
//!
//! Invariants: one eBPF object is loaded and attached to every process once per run; each test
//! process is registered with it before it execs, and forgotten after its exit stop. A test
//! passes only if it passed, its trace is complete (unless `--allow-incomplete`), and what it
//! lost is within its budget. The baseline is written only by a `--bless` run in which every
//! test ran to completion and was traced completely.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Failed, Trial};
use serde::Serialize;

use crate::{
    build::{BuildOptions, Executable, TestSelection},
    error::{Error, Result},
    gate::{self, Blessing, Budget, Gate, Judgement, LoadedGate, Measured, OverBudget, StaleEntry},
    incomplete::{self, Incomplete, Reasons},
    outcome::Outcome,
    report::{
        Amount, LeakSummary, Stack,
        text::{Frames, write_amount, write_stack},
    },
    scan::Gap,
    session::{self, TraceOptions},
    spawn::{Command, ExitStatus},
    symbolize::Symbolizer,
    tracer::Tracer,
};

/// Which tests run, as `cargo test` takes it after the options.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Test filters")]
pub struct TestFilters {
    /// Run only tests whose name (or `[binary id] name`) contains this.
    #[arg(value_name = "TESTNAME")]
    pub filter: Option<String>,
    /// Match the filter (and --skip) exactly rather than as a substring.
    #[arg(long)]
    pub exact: bool,
    /// Skip tests whose name contains this (repeatable).
    #[arg(long, value_name = "FILTER")]
    pub skip: Vec<String>,
    /// Run only ignored tests.
    #[arg(long, conflicts_with = "include_ignored")]
    pub ignored: bool,
    /// Run ignored tests too.
    #[arg(long)]
    pub include_ignored: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// libtest's output.
    #[default]
    Human,
    /// One JSON object per line and event on stdout (and no libtest output).
    Json,
}

/// Everything `cargo memleak test` was asked to do besides building.
#[derive(Clone, Debug)]
pub struct TestOptions {
    pub filters: TestFilters,
    pub jobs: usize,
    pub timeout: Option<Duration>,
    pub gate: Gate,
    pub junit: Option<PathBuf>,
    pub message_format: MessageFormat,
    /// Stacks shown under a failed test.
    pub top: usize,
    pub trace: TraceOptions,
}

/// One test to run.
#[derive(Clone, Debug)]
struct TestCase {
    binary: Arc<Executable>,
    name: String,
    ignored: bool,
}

/// Why a test failed. Serialized tagged by `kind` (a budget overrun by its own kind, see
/// [`OverBudget`]); `Display` is the sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failure {
    /// cargo-memleak could not run it traced.
    NotRun { error: String },
    /// `--timeout` killed it (and its process group).
    TimedOut {
        #[serde(rename = "after_secs", serialize_with = "seconds")]
        after: Duration,
    },
    /// The test itself failed: a non-zero exit or a signal.
    TestFailed { exit: ExitStatus },
    /// Its trace is incomplete (and `--allow-incomplete` was not given).
    Incomplete { reasons: Vec<Incomplete> },
    /// It lost more than its budget.
    #[serde(untagged)]
    OverBudget(OverBudget),
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Failure {
    /// Whether this failure leaves what the test lost unknown (everything but a budget
    /// overrun): such a run cannot be blessed.
    pub fn unmeasured(&self) -> bool {
        !matches!(self, Failure::OverBudget(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotRun { error } => write!(f, "cargo-memleak could not run it: {error}"),
            Failure::TimedOut { after } => write!(
                f,
                "timed out after {} s; its process group was killed",
                after.as_secs_f64()
            ),
            Failure::TestFailed { exit } => write!(f, "the test failed: {exit}"),
            Failure::Incomplete { reasons } => write!(
                f,
                "the trace is incomplete ({}); --allow-incomplete accepts that",
                incomplete::joined(reasons)
            ),
            Failure::OverBudget(over) => over.fmt(f),
        }
    }
}

/// Why a test failed; serialized (flattened into its result) as `failures`, the sentences, and
/// `failure_reasons`, the failures themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures(pub Vec<Failure>);

impl Failures {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any failure leaves what the test lost unknown: see [`Failure::unmeasured`].
    pub fn unmeasured(&self) -> bool {
        self.0.iter().any(Failure::unmeasured)
    }

    /// The sentences, joined by `; `.
    pub fn joined(&self) -> String {
        self.0
            .iter()
            .map(Failure::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Serialize for Failures {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let words: Vec<String> = self.0.iter().map(Failure::to_string).collect();
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("failures", &words)?;
        map.serialize_entry("failure_reasons", &self.0)?;
        map.end()
    }
}

/// How one test went.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    pub binary_id: String,
    pub test: String,
    /// Why it failed; empty when it passed.
    #[serde(flatten)]
    pub failures: Failures,
    pub exit: Option<ExitStatus>,
    pub timed_out: bool,
    pub duration_ms: f64,
    pub lost: Amount,
    pub reachable: Amount,
    pub suppressed: Amount,
    pub leak_summary: LeakSummary,
    /// Lost stacks, unsuppressed, with their frames.
    pub stacks: Vec<Stack>,
    #[serde(flatten)]
    pub incomplete: Reasons,
    /// Roots the scan could not see while nothing was lost (they cannot change the result).
    pub unseen: Vec<Gap>,
    pub budget: Option<Budget>,
    #[serde(skip)]
    pub judgement: Judgement,
    /// The test's stdout and stderr.
    pub output: Option<String>,
}

/// Events of `--message-format json`, one per line.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum JsonEvent<'a> {
    RunStarted {
        /// Tests that will run.
        tests: usize,
        /// Selected but ignored: they will not run.
        ignored: usize,
        jobs: usize,
    },
    TestFinished {
        result: &'static str,
        #[serde(flatten)]
        test: &'a TestResult,
    },
    StaleEntry {
        binary_id: &'a str,
        test: Option<&'a str>,
    },
    RunFinished {
        passed: u64,
        failed: u64,
        ignored: u64,
        filtered_out: u64,
        exit_code: u8,
    },
}

fn emit(event: &JsonEvent) {
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// What the worker threads share.
struct Shared {
    tracer: Mutex<Tracer>,
    gate: LoadedGate,
    options: TestOptions,
    results: Mutex<Vec<TestResult>>,
    progress: Progress,
}

/// A progress line on stderr for long runs (stderr a terminal, human output): redrawn every
/// half second once a run has lasted two, and erased before libtest prints each result.
struct Progress {
    enabled: bool,
    start: Instant,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    done: usize,
    /// Tests that will run (selected, not ignored).
    total: usize,
    drawn: bool,
    /// No redraw before this: libtest is about to print a result line.
    quiet_until: Option<Instant>,
    finished: bool,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            start: Instant::now(),
            state: Mutex::new(ProgressState::default()),
        }
    }

    /// A test finished: erase the line so libtest's result line starts clean.
    fn test_done(&self) {
        let mut state = lock(&self.state);
        state.done += 1;
        if state.drawn {
            eprint!("\r\x1b[K");
            state.drawn = false;
        }
        state.quiet_until = Some(Instant::now() + Duration::from_millis(200));
    }

    fn draw(&self) {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if state.finished
            || now.duration_since(self.start) < Duration::from_secs(2)
            || state.quiet_until.is_some_and(|until| now < until)
        {
            return;
        }
        eprint!(
            "\r\x1b[Kmemleak: {}/{} tests done, {:.0} s",
            state.done,
            state.total,
            now.duration_since(self.start).as_secs_f64()
        );
        state.drawn = true;
    }

    fn finish(&self) {
        let mut state = lock(&self.state);
        if state.drawn {
            eprint!("\r\x1b[K");
        }
        state.finished = true;
    }
}

thread_local! {
    /// One symbolizer per worker thread: it caches each binary's symbols and line tables.
    static SYMBOLIZER: Symbolizer = Symbolizer::new();
}

/// Builds, lists, runs and judges; returns the exit code.
pub fn run(
    build: &BuildOptions,
    selection: &TestSelection,
    options: TestOptions,
) -> Result<Outcome> {
    // Fail on privileges and kernel support before the (slow) build.
    let tracer = session::load_tracer(&options.trace)?;
    let built = build.build_tests(selection)?;
    let workspace_members: BTreeSet<String> = build
        .metadata()?
        .workspace_packages()
        .iter()
        .map(|package| package.name.to_string())
        .collect();
    let gate = options.gate.load(&built.workspace_root)?;
    let mut cases = Vec::new();
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for executable in built.executables {
        let binary = Arc::new(executable);
        let tests = list(&binary)?;
        let names = listed.entry(binary.id.clone()).or_default();
        for (name, ignored) in tests {
            names.insert(name.clone());
            cases.push(TestCase {
                binary: Arc::clone(&binary),
                name,
                ignored,
            });
        }
    }

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
    let mut tracer = tracer;
    if let Some(note) = tracer.prepare_for_many()? {
        eprintln!("memleak: {note}");
    }
    let progress_wanted = options.message_format == MessageFormat::Human
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let shared = Arc::new(Shared {
        tracer: Mutex::new(tracer),
        gate,
        options: options.clone(),
        results: Mutex::new(Vec::new()),
        progress: Progress::new(progress_wanted),
    });
    let trials: Vec<Trial> = cases
        .iter()
        .map(|case| {
            let shared = Arc::clone(&shared);
            let runner_case = case.clone();
            Trial::test(case.name.clone(), move || {
                let result = run_one(&shared, &runner_case);
                let failure = failure_message(&result, shared.options.top);
                if shared.options.message_format == MessageFormat::Json {
                    emit(&JsonEvent::TestFinished {
                        result: if result.failures.is_empty() {
                            "ok"
                        } else {
                            "failed"
                        },
                        test: &result,
                    });
                }
                lock(&shared.results).push(result);
                shared.progress.test_done();
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
    lock(&shared.progress.state).total = selected - skipped.len();
    if options.message_format == MessageFormat::Json {
        emit(&JsonEvent::RunStarted {
            tests: selected - skipped.len(),
            ignored: skipped.len(),
            jobs: options.jobs,
        });
    }

    let conclusion = std::thread::scope(|scope| {
        if shared.progress.enabled {
            let progress = &shared.progress;
            scope.spawn(move || {
                while !lock(&progress.state).finished {
                    std::thread::sleep(Duration::from_millis(500));
                    progress.draw();
                }
            });
        }
        let conclusion = libtest_mimic::run(&arguments, trials);
        shared.progress.finish();
        conclusion
    });
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
    // The probes come off when this goes out of scope, after every result is out: removing
    // them takes the kernel a couple of seconds (see Tracer::detach).
    let _tracer = shared.tracer;
    let gate = shared.gate;

    let stale = gate.baseline.stale_entries(&listed, &workspace_members);
    for StaleEntry { binary_id, test } in &stale {
        match options.message_format {
            MessageFormat::Json => emit(&JsonEvent::StaleEntry {
                binary_id,
                test: test.as_deref(),
            }),
            MessageFormat::Human => eprintln!(
                "memleak: stale baseline entry {binary_id}{}: no such {} any more; --bless \
                 removes it",
                test.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
                if test.is_some() {
                    "test"
                } else {
                    "test binary"
                },
            ),
        }
    }
    if let Some(path) = &options.junit {
        crate::fsutil::write_atomically(path, junit(&results, &skipped)?.as_bytes())?;
    }

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
    if options.message_format == MessageFormat::Json {
        emit(&JsonEvent::RunFinished {
            passed: conclusion.num_passed,
            failed: conclusion.num_failed,
            ignored: conclusion.num_ignored,
            filtered_out: conclusion.num_filtered_out,
            exit_code: outcome.exit_code().code,
        });
    }
    Ok(outcome)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `BIN --list --format terse` (and `--ignored`): every test, and whether it is ignored.
fn list(binary: &Executable) -> Result<Vec<(String, bool)>> {
    let run = |extra: &[&str]| -> Result<Vec<String>> {
        let output = std::process::Command::new(&binary.path)
            .args(["--list", "--format", "terse"])
            .args(extra)
            .current_dir(&binary.package_dir)
            .envs(binary.env.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|err| Error::Listing {
                binary: binary.path.clone(),
                detail: err.to_string(),
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(Error::Listing {
                binary: binary.path.clone(),
                detail: format!(
                    "{}: {}",
                    output.status,
                    stderr.trim().lines().last().unwrap_or_default()
                ),
            });
        }
        // The custom-harness contract: every line is `NAME: test` or `NAME: benchmark`.
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
            .map(str::to_owned)
            .collect())
    };
    let all = run(&[])?;
    let ignored: BTreeSet<String> = run(&["--ignored"])?.into_iter().collect();
    Ok(all
        .into_iter()
        .map(|name| {
            let is_ignored = ignored.contains(&name);
            (name, is_ignored)
        })
        .collect())
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
    result.incomplete = report.incomplete.clone();
    result.unseen = report.unseen.clone();
    result.stacks = gate::lost_stacks(&report, &gate.suppressions)
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
    if !report.is_complete() && !run.timed_out {
        if gate.options.allow_incomplete {
            // Reported, not failed.
        } else {
            failures.push(Failure::Incomplete {
                reasons: report.incomplete.0.clone(),
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
    }
    result.judgement = judgement;
    result
}

/// What libtest prints under a failed test: the reasons, the lost stacks, the summary and,
/// when the test itself failed, its output.
fn failure_message(result: &TestResult, top: usize) -> Option<String> {
    if result.failures.is_empty() {
        return None;
    }
    let mut out = String::new();
    // libtest's heading names the test only; several binaries may have one of that name.
    let _ = writeln!(out, "in test binary {}", result.binary_id);
    for failure in &result.failures.0 {
        let _ = writeln!(out, "memleak: {failure}");
    }
    if result.lost.blocks > 0 {
        for stack in result.stacks.iter().take(top) {
            // Below the test's own frames lies libtest's harness: leave it out.
            write_stack(&mut out, stack, Frames::AboveHarness);
        }
        if result.stacks.len() > top {
            let _ = writeln!(out, "\t({} more stacks)", result.stacks.len() - top);
        }
    }
    let summary = &result.leak_summary;
    for (words, amount) in [
        ("definitely lost", summary.definitely_lost),
        ("indirectly lost", summary.indirectly_lost),
        ("still reachable", summary.still_reachable),
        ("suppressed", result.suppressed),
    ] {
        write_amount(&mut out, words, amount);
    }
    if result.failures.unmeasured()
        && let Some(output) = &result.output
        && !output.is_empty()
    {
        out.push_str("---- output ----\n");
        out.push_str(output);
        if !output.ends_with('\n') {
            out.push('\n');
        }
    }
    Some(out)
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

/// JUnit XML: one testsuite per test binary, one testcase per test.
fn junit(results: &[TestResult], skipped: &[(String, String)]) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suites: BTreeMap<&str, TestSuite> = BTreeMap::new();
    let mut total = Duration::ZERO;
    for result in results {
        let status = match failure_message(result, usize::MAX) {
            None => TestCaseStatus::success(),
            Some(message) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status
                    .set_message(result.failures.joined())
                    .set_type(if result.failures.unmeasured() {
                        "test failure"
                    } else {
                        "leak over budget"
                    })
                    .set_description(message);
                status
            }
        };
        let mut case = TestCase::new(result.test.clone(), status);
        let time = Duration::from_secs_f64(result.duration_ms / 1e3);
        total += time;
        case.set_classname(result.binary_id.clone()).set_time(time);
        if let Some(output) = &result.output {
            case.set_system_out_lossy(output.as_bytes());
        }
        suites
            .entry(&result.binary_id)
            .or_insert_with(|| TestSuite::new(result.binary_id.clone()))
            .add_test_case(case);
    }
    for (binary_id, name) in skipped {
        let mut case = TestCase::new(name.clone(), TestCaseStatus::skipped());
        case.set_classname(binary_id.clone());
        suites
            .entry(binary_id)
            .or_insert_with(|| TestSuite::new(binary_id.clone()))
            .add_test_case(case);
    }
    let mut report = Report::new("cargo-memleak");
    report.set_time(total);
    report.add_test_suites(suites.into_values());
    report.to_string().map_err(|err| Error::Io {
        context: "writing JUnit XML".into(),
        source: std::io::Error::other(err.to_string()),
    })
}
