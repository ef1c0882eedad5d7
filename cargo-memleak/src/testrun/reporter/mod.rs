//! The reporters of a test run and the one stream of events they consume (nextest's
//! `reporter/`): the scheduler ([`super::run`]) and the driver ([`crate::commands::test`]) emit
//! [`TestEvent`]s; [`human`], [`json`], [`junit`], [`pictures`] (folded stacks, flame graph),
//! [`progress`] and [`github`] render them ([`failure`]: a failed test's text, which human and
//! JUnit both show).
//!
//! Invariants: events arrive in run order, all from the runner's thread: `RunStarted`, then
//! per test `TestStarted`, any `TestSlow`, `TestFinished` (and `Interrupted` at most once in
//! between), `TestsFinished` once every started test has finished (the results so far when the
//! run was interrupted), then `RunFinished` with the run's outcome. Reporters get each event in
//! the order they were listed: the progress line is erased before anything else prints, and
//! the JUnit file is written after the lines of the same event. Reporters only format.

pub mod failure;
pub mod github;
pub mod human;
pub mod json;
pub mod junit;
pub mod pictures;
pub mod progress;

use std::time::Duration;

use super::{MessageFormat, Stats, TestOptions, TestResult};
use crate::{
    error::Result,
    gate::StaleEntry,
    outcome::{Outcome, Signal},
};

/// What happened in a test run.
#[derive(Clone, Copy, Debug)]
pub enum TestEvent<'a> {
    /// The tests are selected and about to run.
    RunStarted {
        /// `(binary id, test)` of the tests that will run, in list order.
        tests: &'a [(String, String)],
        /// Selected but ignored, `(binary id, test)`: they will not run.
        ignored: &'a [(String, String)],
        jobs: usize,
    },
    /// A worker started a test.
    TestStarted { binary_id: &'a str, test: &'a str },
    /// A test has been running for `elapsed` (a multiple of `--slow-timeout`).
    TestSlow {
        binary_id: &'a str,
        test: &'a str,
        elapsed: Duration,
    },
    /// A test ran and was judged.
    TestFinished { result: &'a TestResult },
    /// The first SIGINT or SIGTERM: no test starts any more, the `running` ones are killed.
    Interrupted { signal: Signal, running: usize },
    /// Every started test has finished; `stale` are the baseline's entries for tests or
    /// binaries that no longer exist, `unused` the suppressions that matched nothing.
    TestsFinished {
        stats: &'a Stats,
        stale: &'a [StaleEntry],
        unused: &'a [String],
    },
    /// The run's outcome (after any bless).
    RunFinished { stats: &'a Stats, outcome: Outcome },
}

/// Something that renders a test run's events.
pub trait Reporter: Send + Sync {
    fn report(&self, event: &TestEvent) -> Result<()>;
}

/// The reporters a run's options ask for, in the order each event reaches them.
pub struct Reporters(Vec<Box<dyn Reporter>>);

impl Reporters {
    /// Human output (with the progress line when stderr is a terminal), JSON events or folded
    /// stacks; JUnit XML with `--junit`, the flame graph with `--flamegraph`, and GitHub's
    /// annotations when asked for. Paths in stacks and annotations are relative to
    /// `workspace_root`.
    pub fn new(options: &TestOptions, workspace_root: &std::path::Path) -> Self {
        let mut reporters: Vec<Box<dyn Reporter>> = Vec::new();
        let style = crate::report::text::Short {
            full: options.display.full_stacks,
            workspace_root: Some(workspace_root.to_owned()),
        };
        match options.message_format {
            MessageFormat::Human => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    reporters.push(Box::new(progress::Progress::new()));
                }
                reporters.push(Box::new(human::Human::new(options, style.clone())));
            }
            MessageFormat::Json => reporters.push(Box::new(json::Json)),
            MessageFormat::Folded => {}
        }
        if options.message_format == MessageFormat::Folded || options.flamegraph.is_some() {
            reporters.push(Box::new(pictures::Pictures::new(
                options.message_format == MessageFormat::Folded,
                options.flamegraph.clone(),
                options.run_as.clone(),
            )));
        }
        if let Some(path) = &options.junit {
            reporters.push(Box::new(junit::Junit::new(path.clone(), options, style)));
        }
        if options.github_annotations {
            reporters.push(Box::new(github::Github::new(workspace_root)));
        }
        Self(reporters)
    }

    /// Hands `event` to every reporter in turn; the first error stops it.
    pub fn report(&self, event: &TestEvent) -> Result<()> {
        self.0
            .iter()
            .try_for_each(|reporter| reporter.report(event))
    }
}
