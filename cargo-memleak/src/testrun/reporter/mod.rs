//! The reporters of a test run and the one stream of events they consume (nextest's
//! `reporter/`): the adapter ([`super::run`]) and the driver ([`crate::commands::test`]) emit
//! [`TestEvent`]s; [`human`], [`json`], [`junit`], [`progress`] and [`github`] render them.
//!
//! Invariants: events arrive in run order: `RunStarted`, one `TestFinished` per test that ran
//! (from the worker threads, so a reporter is `Sync`), `TestsFinished` once libtest has printed
//! its summary, then `RunFinished` with the run's outcome. Reporters get each event in the
//! order they were listed: the progress line is erased before anything else prints, and the
//! JUnit file is written after the lines of the same event.

pub mod github;
pub mod human;
pub mod json;
pub mod junit;
pub mod progress;

use super::{MessageFormat, TestOptions, TestResult};
use crate::{error::Result, gate::StaleEntry, outcome::Outcome};

/// What happened in a test run.
#[derive(Clone, Copy, Debug)]
pub enum TestEvent<'a> {
    /// The tests are selected and about to run.
    RunStarted {
        /// Tests that will run.
        tests: usize,
        /// Selected but ignored, `(binary id, test)`: they will not run.
        ignored: &'a [(String, String)],
        jobs: usize,
    },
    /// A test ran and was judged (from the worker thread that ran it).
    TestFinished { result: &'a TestResult },
    /// Every test has run and libtest has printed its summary; `stale` are the baseline's
    /// entries for tests or binaries that no longer exist.
    TestsFinished { stale: &'a [StaleEntry] },
    /// The run's counts and its outcome (after any bless).
    RunFinished {
        passed: u64,
        failed: u64,
        ignored: u64,
        filtered_out: u64,
        outcome: Outcome,
    },
}

/// Something that renders a test run's events.
pub trait Reporter: Send + Sync {
    fn report(&self, event: &TestEvent) -> Result<()>;
}

/// The reporters a run's options ask for, in the order each event reaches them.
pub struct Reporters(Vec<Box<dyn Reporter>>);

impl Reporters {
    /// Human output (with the progress line when stderr is a terminal) or JSON events, JUnit
    /// XML when `--junit` is given, and GitHub's annotations when asked for (paths in them are
    /// relative to `workspace_root`).
    pub fn new(options: &TestOptions, workspace_root: &std::path::Path) -> Self {
        let mut reporters: Vec<Box<dyn Reporter>> = Vec::new();
        match options.message_format {
            MessageFormat::Human => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    reporters.push(Box::new(progress::Progress::new()));
                }
                reporters.push(Box::new(human::Human));
            }
            MessageFormat::Json => reporters.push(Box::new(json::Json)),
        }
        if let Some(path) = &options.junit {
            reporters.push(Box::new(junit::Junit::new(path.clone())));
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
