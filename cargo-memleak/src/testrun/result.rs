//! How one test went, as data: [`TestResult`] and the typed reasons it failed ([`Failure`]),
//! which every reporter renders and the bless reads.
//!
//! Invariants: a result with no failures passed; a failure's `Display` is the sentence the
//! human output and JUnit show, and its serialized form keeps that sentence (`failures`) beside
//! the data (`failure_reasons`).

use std::time::Duration;

use serde::Serialize;

use crate::{
    gate::{self, Budget, ChildVerdict, Judgement, OverBudget},
    incomplete::{self, Incomplete, Reasons},
    outcome::Signal,
    report::{Amount, HeapUse, LeakSummary, LostCycle, Stack},
    scan::Gap,
    session::{Timings, UnfollowedChildren},
    spawn::ExitStatus,
};

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
    /// A `should_panic` doc test exited successfully.
    DidNotPanic,
    /// rustdoc failed the doc test itself: it did not compile, or a `compile_fail` one did
    /// (rustdoc's text is the test's output).
    Rustdoc,
    /// Its trace is incomplete (and `--allow-incomplete` was not given).
    Incomplete { reasons: Vec<Incomplete> },
    /// The processes it started that ran `executable` lost more than their budget.
    ChildOverBudget {
        executable: String,
        over: OverBudget,
    },
    /// The run was interrupted while it ran; it was killed with its process group.
    Interrupted { signal: Signal },
    /// It lost more than its budget.
    #[serde(untagged)]
    OverBudget(OverBudget),
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Failure {
    /// Whether the test failed by itself (its exit status or its timeout) rather than by a
    /// verdict of cargo-memleak's: what `--retries` runs again.
    pub fn by_the_test(&self) -> bool {
        matches!(
            self,
            Failure::TestFailed { .. } | Failure::TimedOut { .. } | Failure::DidNotPanic
        )
    }

    /// Whether this failure leaves what the test lost unknown (everything but a budget
    /// overrun): such a run cannot be blessed.
    pub fn unmeasured(&self) -> bool {
        !matches!(
            self,
            Failure::OverBudget(_) | Failure::ChildOverBudget { .. }
        )
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
            Failure::DidNotPanic => {
                f.write_str("the doc test is should_panic but exited successfully")
            }
            Failure::Rustdoc => f.write_str("rustdoc failed it (see its output)"),
            Failure::Incomplete { reasons } => write!(
                f,
                "the trace is incomplete ({}); --allow-incomplete accepts that",
                incomplete::joined(reasons)
            ),
            Failure::Interrupted { signal } => write!(
                f,
                "interrupted by {}: killed with its process group",
                signal.name()
            ),
            Failure::OverBudget(over) => over.fmt(f),
            Failure::ChildOverBudget { executable, over } => {
                f.write_str(&gate::child_over_budget(executable, over))
            }
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

    /// Whether `--retries` runs the test again after these failures: it failed by itself
    /// and nothing else, or (`leaks_too`, `--retries-leaks`) it failed by a leak or an
    /// incomplete trace too. Never after a tool error or an interrupt.
    pub fn retried(&self, leaks_too: bool) -> bool {
        !self.0.is_empty()
            && self.0.iter().all(|failure| {
                failure.by_the_test()
                    || (leaks_too
                        && matches!(
                            failure,
                            Failure::OverBudget(_)
                                | Failure::ChildOverBudget { .. }
                                | Failure::Incomplete { .. }
                        ))
            })
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
    /// Its budget's key in the baseline (its name, but for a doc test).
    pub budget_key: String,
    /// It is an ignored test (run with `--ignored` or `--include-ignored`).
    #[serde(skip)]
    pub ignored: bool,
    /// Processes of its process group outlived it and were killed (nextest's LEAK).
    pub left_processes: bool,
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
    /// The lost blocks that only point at each other (the report's).
    pub cycles: Vec<LostCycle>,
    /// Its heap over its life: peak, where it was reached, allocations.
    pub heap: Option<HeapUse>,
    #[serde(flatten)]
    pub incomplete: Reasons,
    /// Roots the scan could not see while nothing was lost (they cannot change the result).
    pub unseen: Vec<Gap>,
    pub budget: Option<Budget>,
    #[serde(skip)]
    pub judgement: Judgement,
    /// The test's stdout and stderr.
    pub output: Option<String>,
    /// The processes it started that were followed, judged by executable.
    pub children: Vec<ChildVerdict>,
    /// The processes it started that were let go at their exec.
    pub unfollowed_children: UnfollowedChildren,
    /// `--timings`: where its time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TestTimings>,
    /// How many times it ran: 1, or more when `--retries` ran it again.
    pub attempts: u32,
    /// The attempts before the last, which failed (`--retries`), in order.
    pub earlier_attempts: Vec<Attempt>,
}

impl TestResult {
    /// It passed after failing: a retry passed.
    pub fn flaky(&self) -> bool {
        self.failures.is_empty() && !self.earlier_attempts.is_empty()
    }
}

/// A failed attempt of a test that `--retries` ran again.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    #[serde(flatten)]
    pub failures: Failures,
    pub duration_ms: f64,
    pub exit: Option<ExitStatus>,
    /// The test's stdout and stderr in that attempt.
    pub output: Option<String>,
}

impl Attempt {
    pub fn of(result: &TestResult) -> Self {
        Self {
            failures: result.failures.clone(),
            duration_ms: result.duration_ms,
            exit: result.exit.clone(),
            output: result.output.clone(),
        }
    }
}

/// Where one test's time went, as a worker spent it: the traced run's phases, then judging it
/// against its budget; `duration_ms` is their sum and what lies between them.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TestTimings {
    #[serde(flatten)]
    pub trace: Timings,
    /// Building the report and judging it (children included).
    #[serde(rename = "judge_ms", serialize_with = "milliseconds")]
    pub judge: Duration,
}

impl TestTimings {
    /// Adds `other`'s phases to these.
    pub fn add(&mut self, other: &TestTimings) {
        let (ours, theirs) = (&mut self.trace, &other.trace);
        ours.spawn += theirs.spawn;
        ours.attach += theirs.attach;
        ours.program += theirs.program;
        ours.read += theirs.read;
        ours.symbolize += theirs.symbolize;
        ours.scan += theirs.scan;
        ours.finish += theirs.finish;
        self.judge += other.judge;
    }
}

fn milliseconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1e6).round() / 1e3)
}

/// A run's counts, for the summary line and the JSON `run-finished`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stats {
    pub passed: u64,
    pub failed: u64,
    /// Of the passed, those that passed on a retry (`--retries`).
    pub flaky: u64,
    /// Selected but ignored: not run.
    pub ignored: u64,
    pub filtered_out: u64,
    /// Selected to run but never started: the run was interrupted or `--fail-fast` stopped it.
    pub not_run: u64,
    #[serde(rename = "elapsed_secs", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// The signal that interrupted the run.
    pub interrupted: Option<Signal>,
    /// `--fail-fast` stopped the run after a failure.
    pub cancelled: bool,
}
