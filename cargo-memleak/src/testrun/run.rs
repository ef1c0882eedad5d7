//! The scheduler: the listed tests are filtered as `cargo test` filters them, then run by `-j`
//! worker threads, each test its own traced process judged against its budget; the runner's
//! own thread turns what the workers report into [`TestEvent`]s for the reporters, watches
//! for slow tests, `--fail-fast` and interruption (SIGINT/SIGTERM: no new test starts, the
//! running ones are killed with their process groups).
//!
//! Invariants: every reporter is called from the runner's thread only, in run order; a test
//! is started only while the run is neither interrupted nor cancelled; the tracer is shared by
//! the workers and handed back when every worker has ended, so the probes come off after the
//! last result is out; a test that was running when the run was interrupted and did not pass
//! fails as interrupted, whatever its killing did to it.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use super::{
    Attempt, Failure, Failures, Stats, TestOptions, TestResult,
    interrupt::Interrupt,
    list::{Selection, TestCase},
    reporter::{Reporters, TestEvent},
    result::TestTimings,
};
use crate::{
    build::{
        Harness,
        doctests::{self, DocRun},
    },
    error::Result,
    gate::{self, Judgement, LoadedGate},
    incomplete::Reasons,
    report::{Amount, LeakSummary},
    session::{self, UnfollowedChildren},
    spawn::{Command, Follow, Groups, spawner::Spawner},
    symbolize::Symbolizer,
    tracer::Tracer,
};

/// What the worker threads share.
struct Shared<'a> {
    spawner: &'a Arc<Spawner>,
    tracer: &'a Mutex<Tracer>,
    follow: &'a Follow,
    gate: &'a LoadedGate,
    options: &'a TestOptions,
    groups: &'a Arc<Groups>,
}

/// A finished run, with what it borrowed handed back.
pub struct Ran {
    pub stats: Stats,
    /// Every test that ran, in the order they finished.
    pub results: Vec<TestResult>,
    /// Drop it after the last output: removing the probes takes the kernel a while (see
    /// Tracer::detach).
    pub tracer: Tracer,
    pub gate: LoadedGate,
    pub reporters: Reporters,
}

thread_local! {
    /// One symbolizer per worker thread: it caches each binary's symbols and line tables.
    static SYMBOLIZER: Symbolizer = Symbolizer::new();
}

/// What a worker tells the runner's thread.
enum Message {
    Started(usize),
    Finished(usize, Box<TestResult>),
}

/// A test that is running, as the runner's thread sees it.
struct Running {
    since: Instant,
    /// How many `--slow-timeout` periods it has been reported slow for.
    slow_periods: u32,
}

/// Runs the selected tests, `options.jobs` at once, reporting every event; stops early on an
/// interrupt or, with `--fail-fast`, after the first failure.
pub fn run(
    tracer: Tracer,
    gate: LoadedGate,
    options: &TestOptions,
    selection: &Selection,
    follow: Follow,
    reporters: Reporters,
    interrupt: &Interrupt,
) -> Result<Ran> {
    let start = Instant::now();
    let to_run = &selection.run;
    let named = |cases: &[&TestCase]| -> Vec<(String, String)> {
        cases
            .iter()
            .map(|case| (case.binary.id.clone(), case.name.clone()))
            .collect()
    };
    let ignored = named(&selection.ignored);
    reporters.report(&TestEvent::RunStarted {
        tests: &named(to_run),
        ignored: &ignored,
        jobs: options.jobs,
    })?;
    let tracer = Mutex::new(tracer);
    let groups = Arc::new(Groups::default());
    // Started here, on the thread that outlives the workers (it dies with its thread).
    let spawner = Arc::new(Spawner::start()?);
    let shared = Shared {
        spawner: &spawner,
        tracer: &tracer,
        follow: &follow,
        gate: &gate,
        options,
        groups: &groups,
    };
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let mut runner = Runner {
        to_run,
        options,
        reporters: &reporters,
        stop: &stop,
        groups: &groups,
        stats: Stats {
            ignored: ignored.len() as u64,
            filtered_out: selection.filtered_out as u64,
            ..Stats::default()
        },
        results: Vec::new(),
        started: 0,
        running: BTreeMap::new(),
        killed: Vec::new(),
        failure: None,
    };
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<Message>();
        for _ in 0..options.jobs.clamp(1, to_run.len().max(1)) {
            let sender = sender.clone();
            let (shared, stop, next) = (&shared, &stop, &next);
            scope.spawn(move || work(shared, to_run, stop, next, &sender));
        }
        drop(sender);
        loop {
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(Message::Started(index)) => runner.started(index),
                Ok(Message::Finished(index, result)) => runner.finished(index, *result),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            runner.check_interrupt(interrupt);
            runner.check_slow();
        }
    });
    let Runner {
        mut stats,
        results,
        started,
        failure,
        ..
    } = runner;
    if let Some(err) = failure {
        return Err(err);
    }
    stats.not_run = (to_run.len() - started) as u64;
    stats.elapsed = start.elapsed();
    Ok(Ran {
        stats,
        results,
        tracer: tracer
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        gate,
        reporters,
    })
}

/// A worker: takes the next test until there is none or the run stops, runs it, and tells the
/// runner's thread.
fn work(
    shared: &Shared,
    to_run: &[&TestCase],
    stop: &AtomicBool,
    next: &AtomicUsize,
    sender: &mpsc::Sender<Message>,
) {
    while !stop.load(Ordering::SeqCst) {
        let index = next.fetch_add(1, Ordering::SeqCst);
        let Some(case) = to_run.get(index) else {
            break;
        };
        if sender.send(Message::Started(index)).is_err() {
            break;
        }
        let result = run_retried(shared, case, stop);
        // Decided here, before this worker loops for its next test: the receiving loop may
        // see this result only after that.
        if shared.options.fail_fast && !result.failures.is_empty() {
            stop.store(true, Ordering::SeqCst);
        }
        if sender
            .send(Message::Finished(index, Box::new(result)))
            .is_err()
        {
            break;
        }
    }
}

/// The runner's thread: turns what the workers say into events, counts, and stops the run on
/// an interrupt or `--fail-fast`.
struct Runner<'a> {
    to_run: &'a [&'a TestCase],
    options: &'a TestOptions,
    reporters: &'a Reporters,
    stop: &'a AtomicBool,
    groups: &'a Groups,
    stats: Stats,
    /// Every test that ran, in the order they finished.
    results: Vec<TestResult>,
    started: usize,
    running: BTreeMap<usize, Running>,
    /// The tests that were running when the run was interrupted.
    killed: Vec<usize>,
    /// The first error a reporter returned: the run's error.
    failure: Option<crate::error::Error>,
}

impl Runner<'_> {
    fn report(&mut self, event: &TestEvent) {
        if let Err(err) = self.reporters.report(event)
            && self.failure.is_none()
        {
            self.failure = Some(err);
        }
    }

    fn started(&mut self, index: usize) {
        self.started += 1;
        self.running.insert(
            index,
            Running {
                since: Instant::now(),
                slow_periods: 0,
            },
        );
        let case = self.to_run[index];
        self.report(&TestEvent::TestStarted {
            binary_id: &case.binary.id,
            test: &case.name,
        });
    }

    fn finished(&mut self, index: usize, mut result: TestResult) {
        self.running.remove(&index);
        if let Some(signal) = self.stats.interrupted
            && self.killed.contains(&index)
            && !result.failures.is_empty()
        {
            result.failures = Failures(vec![Failure::Interrupted { signal }]);
        }
        if result.failures.is_empty() {
            self.stats.passed += 1;
            self.stats.flaky += u64::from(result.flaky());
        } else {
            self.stats.failed += 1;
            if self.options.fail_fast && !self.stats.cancelled && self.stats.interrupted.is_none() {
                self.stats.cancelled = true;
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        self.report(&TestEvent::TestFinished { result: &result });
        self.results.push(result);
    }

    /// The first SIGINT or SIGTERM stops the run: no test starts any more, the running ones
    /// are killed with their process groups.
    fn check_interrupt(&mut self, interrupt: &Interrupt) {
        if self.stats.interrupted.is_some() {
            return;
        }
        let Some(signal) = interrupt.signal() else {
            return;
        };
        self.stats.interrupted = Some(signal);
        self.stop.store(true, Ordering::SeqCst);
        self.groups.kill_all();
        self.killed = self.running.keys().copied().collect();
        let running = self.running.len();
        self.report(&TestEvent::Interrupted { signal, running });
    }

    /// Reports each test running past another `--slow-timeout` period.
    fn check_slow(&mut self) {
        let Some(slow) = self.options.slow_timeout else {
            return;
        };
        let mut slow_now = Vec::new();
        for (&index, test) in &mut self.running {
            if test.since.elapsed() >= slow * (test.slow_periods + 1) {
                test.slow_periods += 1;
                slow_now.push((index, slow * test.slow_periods));
            }
        }
        for (index, elapsed) in slow_now {
            let case = self.to_run[index];
            self.report(&TestEvent::TestSlow {
                binary_id: &case.binary.id,
                test: &case.name,
                elapsed,
            });
        }
    }
}

/// Runs one test, and again while `--retries` allows and it failed by itself (see
/// [`Failures::retried`]); the run stopping ends the retries.
fn run_retried(shared: &Shared, case: &TestCase, stop: &AtomicBool) -> TestResult {
    let options = shared.options;
    let mut earlier = Vec::new();
    let mut result = run_one(shared, case);
    while earlier.len() < options.retries as usize
        && result.failures.retried(options.retry_leaks)
        && !stop.load(Ordering::SeqCst)
    {
        earlier.push(Attempt::of(&result));
        result = run_one(shared, case);
    }
    result.attempts = earlier.len() as u32 + 1;
    result.earlier_attempts = earlier;
    result
}

/// Runs one test traced and judges it.
fn run_one(shared: &Shared, case: &TestCase) -> TestResult {
    let options = shared.options;
    let gate = shared.gate;
    let doc_test = match &case.binary.harness {
        Harness::Libtest => None,
        Harness::DocTests(tests) => tests.iter().find(|test| test.name == case.name),
    };
    let (args, extra_env): (Vec<OsString>, Vec<(OsString, OsString)>) =
        match doc_test.map(|test| &test.run) {
            None => {
                let mut args: Vec<OsString> = vec![
                    "--exact".into(),
                    case.name.clone().into(),
                    "--nocapture".into(),
                ];
                if case.ignored {
                    args.push("--ignored".into());
                }
                (args, Vec::new())
            }
            Some(DocRun::Alone { .. }) => (Vec::new(), Vec::new()),
            Some(DocRun::Merged { index, .. }) => (
                Vec::new(),
                vec![(doctests::RUN_NB_TEST.into(), index.to_string().into())],
            ),
            Some(DocRun::Rustdoc { .. } | DocRun::Ignored) => (Vec::new(), Vec::new()),
        };
    let mut command = Command::new(case.binary.path.clone().into_os_string(), args);
    command.cwd = Some(case.binary.package_dir.clone());
    command.env = case.binary.env.clone();
    command.env.extend(extra_env);
    command.isolated = true;
    command.timeout = options.timeout;
    command.follow = shared.follow.clone();
    command.groups = Some(Arc::clone(shared.groups));
    command.run_as = options.run_as.clone();
    command.spawner = Some(Arc::clone(shared.spawner));
    let budget = gate
        .baseline
        .tests
        .get(&case.binary.id)
        .and_then(|tests| tests.get(&case.key))
        .cloned();
    let mut result = TestResult {
        binary_id: case.binary.id.clone(),
        test: case.name.clone(),
        budget_key: case.key.clone(),
        ignored: case.ignored,
        left_processes: false,
        failures: Failures::default(),
        exit: None,
        timed_out: false,
        duration_ms: 0.0,
        lost: Amount::default(),
        reachable: Amount::default(),
        suppressed: Amount::default(),
        leak_summary: LeakSummary::default(),
        stacks: Vec::new(),
        cycles: Vec::new(),
        heap: None,
        incomplete: Reasons::default(),
        unseen: Vec::new(),
        budget,
        judgement: Judgement::default(),
        output: None,
        children: Vec::new(),
        unfollowed_children: UnfollowedChildren::default(),
        timings: None,
        attempts: 1,
        earlier_attempts: Vec::new(),
    };
    match doc_test.map(|test| &test.run) {
        Some(DocRun::Rustdoc { passed, text }) => {
            // Compiled only, or not compiled: rustdoc's verdict, nothing traced.
            if !passed {
                result.failures.0.push(Failure::Rustdoc);
            }
            result.output = (!text.is_empty()).then(|| text.clone());
            return result;
        }
        Some(DocRun::Ignored) => {
            result.failures.0.push(Failure::NotRun {
                error: "rustdoc compiles no `ignore` doc test; cargo memleak runs none".into(),
            });
            return result;
        }
        _ => {}
    }
    let start = Instant::now();
    let traced = SYMBOLIZER.with(|symbolizer| session::trace(shared.tracer, symbolizer, &command));
    result.duration_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut run = match traced {
        Ok(run) => run,
        Err(err) => {
            result.failures.0.push(Failure::NotRun {
                error: err.to_string(),
            });
            return result;
        }
    };
    if let Some(test) = doc_test {
        doctests::place_frames(
            run.frames.values_mut().flatten(),
            test,
            &case.binary.path,
            &case.binary.package_dir,
        );
    }
    let judging = Instant::now();
    let (report, judgement) = gate.judge(&run, result.budget.as_ref());
    result.exit = Some(run.status.clone());
    result.timed_out = run.timed_out;
    result.left_processes = run.left_processes;
    result.unfollowed_children = run.unfollowed;
    result.output = run.output.clone();
    result.lost = judgement.lost;
    result.reachable = judgement.reachable;
    result.suppressed = judgement.suppressed;
    result.leak_summary = report.leak_summary;
    result.children = gate.judge_children(&run, &report, result.budget.as_ref());
    let mut incomplete = report.incomplete.clone();
    for child in &result.children {
        incomplete.0.extend(child.incomplete.iter().cloned());
    }
    result.incomplete = incomplete.clone();
    result.unseen = report.unseen.clone();
    result.stacks = gate::lost_stacks(&report.stacks, &gate.suppressions)
        .cloned()
        .collect();
    result.cycles = report.cycles.clone();
    result.heap = report.heap.clone();

    let failures = &mut result.failures.0;
    if run.timed_out {
        failures.push(Failure::TimedOut {
            after: options.timeout.unwrap_or_default(),
        });
    } else if let Some(test) = doc_test {
        match (test.run.passed(run.status.success()), run.status.success()) {
            (true, _) => {}
            (false, true) => failures.push(Failure::DidNotPanic),
            (false, false) => failures.push(Failure::TestFailed {
                exit: run.status.clone(),
            }),
        }
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
    if options.timings {
        result.timings = Some(TestTimings {
            trace: run.timings,
            judge: judging.elapsed(),
        });
    }
    result.duration_ms = start.elapsed().as_secs_f64() * 1e3;
    result
}

/// One test run traced by itself, as `cargo memleak wrap` does for nextest: judged like any
/// test of a run, with the process group killed when the run is interrupted.
pub fn run_alone(
    tracer: Tracer,
    gate: &LoadedGate,
    options: &TestOptions,
    case: &TestCase,
    follow: Follow,
    interrupt: &Interrupt,
) -> Result<(TestResult, Tracer)> {
    let tracer = Mutex::new(tracer);
    let groups = Arc::new(Groups::default());
    let spawner = Arc::new(Spawner::start()?);
    let shared = Shared {
        spawner: &spawner,
        tracer: &tracer,
        follow: &follow,
        gate,
        options,
        groups: &groups,
    };
    let mut result = std::thread::scope(|scope| {
        let running = scope.spawn(|| run_one(&shared, case));
        let mut signal = None;
        while !running.is_finished() {
            if signal.is_none()
                && let Some(now) = interrupt.signal()
            {
                signal = Some(now);
                groups.kill_all();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut result = running
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Some(signal) = signal.or_else(|| interrupt.signal()) {
            result.failures = Failures(vec![Failure::Interrupted { signal }]);
        }
        result
    });
    result.attempts = 1;
    let tracer = tracer
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok((result, tracer))
}
