//! The test run of `cargo memleak test`: its tests listed from the built binaries ([`list`]),
//! filtered and run by the scheduler, each its own traced process judged against its budget
//! ([`run`], whose results are [`result::TestResult`]s), stopped early by SIGINT/SIGTERM
//! ([`interrupt`]) or `--fail-fast`, and one stream of events ([`reporter::TestEvent`]) that
//! the reporters consume: human (libtest's lines and the failure text), JSON, JUnit and the
//! status line. [`crate::commands::test`] strings them together.
//!
//! Invariants: one eBPF object is loaded and attached to every process once per run; each test
//! process is registered with it before it execs, and forgotten after its exit stop. A test
//! passes only if it passed, its trace is complete (unless `--allow-incomplete`), and what it
//! lost is within its budget. Nothing here writes a run's output but a reporter (`--list` prints
//! its listing through [`list::print`]).

pub mod interrupt;
pub mod list;
pub mod partition;
pub mod reporter;
pub mod result;
pub mod run;

use std::{path::PathBuf, time::Duration};

pub use result::{Attempt, Failure, Failures, Stats, TestResult};

use crate::{gate::Gate, session::TraceOptions, spawn::FollowChildren, user::RunAs};

/// Which tests run, as `cargo test` takes it after the options.
#[derive(Clone, Debug, Default)]
pub struct TestFilters {
    /// Run only tests whose name (or `[binary id] name`) contains this.
    pub filter: Option<String>,
    /// Match the filter (and --skip) exactly rather than as a substring.
    pub exact: bool,
    /// Skip tests whose name contains this (repeatable).
    pub skip: Vec<String>,
    /// Run only ignored tests.
    pub ignored: bool,
    /// Run ignored tests too.
    pub include_ignored: bool,
    /// `--partition`: run only this shard of the tests that would run.
    pub partition: Option<partition::Partition>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageFormat {
    /// libtest's output.
    #[default]
    Human,
    /// One JSON object per line and event on stdout (and no libtest output).
    Json,
    /// `--format folded`: the lost stacks, folded, on stdout (and no libtest output).
    Folded,
}

/// Everything `cargo memleak test` was asked to do besides building.
#[derive(Clone, Debug, Default)]
pub struct TestOptions {
    pub filters: TestFilters,
    pub jobs: usize,
    pub timeout: Option<Duration>,
    pub gate: Gate,
    pub junit: Option<PathBuf>,
    /// `--flamegraph PATH`: an SVG of every test's lost stacks.
    pub flamegraph: Option<PathBuf>,
    pub message_format: MessageFormat,
    /// Stacks shown under a failed test.
    pub top: usize,
    pub trace: TraceOptions,
    /// Which processes a test starts are followed (and judged with it).
    pub follow_children: FollowChildren,
    /// GitHub Actions annotations and step summary (see [`reporter::github`]).
    pub github_annotations: bool,
    /// `--fail-fast`: start no test after the first failure.
    pub fail_fast: bool,
    /// Report a test still running after this long (again after each further period).
    pub slow_timeout: Option<Duration>,
    /// How the human output looks.
    pub display: Display,
    /// The options a failed test's rerun command repeats (`--manifest-path`, `--baseline`,
    /// ...), as given.
    pub rerun_args: Vec<String>,
    /// Under sudo (or `--user`): who the build, the listing and the tests run as, and who the
    /// files written for the user (baseline, JUnit, pictures) belong to.
    pub run_as: Option<RunAs>,
    /// `--timings`: where each test's time went, in its JSON `test-finished` and as totals in
    /// the human output.
    pub timings: bool,
    /// `--retries N`: a test that failed by itself runs again up to N times.
    pub retries: u32,
    /// `--retries-leaks`: a leak or incomplete verdict is retried too.
    pub retry_leaks: bool,
}

/// The human output's choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Display {
    /// `-q`: no line per passing test.
    pub quiet: bool,
    /// `-v`: print the output of passing tests too.
    pub verbose: bool,
    /// Colored result words (`--color`, `CARGO_TERM_COLOR`, `NO_COLOR`).
    pub color: bool,
    /// `--full-stacks`: every frame with its offset, full paths and module names.
    pub full_stacks: bool,
}
