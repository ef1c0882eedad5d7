//! The command line: clap's definitions of it, and the step from raw arguments to a validated
//! [`commands::Command`], before any work starts. The library's option types carry no clap
//! derives: the arguments that fill them (`BuildArgs`, `FormatArg`, ...) are defined here, with
//! their flags and help texts, and converted.
//!
//! Invariants: every check of an argument's value happens here, so a driver never sees a bad
//! one; a usage error is [`Error::Selection`] (exit 2); help and version print and exit 0.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    build::{BuildOptions, RunSelection, TestSelection},
    commands::{self, attach, exec, kernel, run, test, wrap},
    error::{Error, Result},
    gate::{FailOn, Gate},
    outcome,
    report::{self, Format, PeriodicOptions, SortKey, StackOptions, text::Short},
    session::TraceOptions,
    spawn::{Command, FollowChildren},
    testrun::{Display, MessageFormat, TestFilters, TestOptions},
    tracer::{Limits, Recording},
    watch,
};

#[derive(Debug, Parser)]
#[command(
    name = "cargo-memleak",
    bin_name = "cargo memleak",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (eBPF object: ",
        env!("CARGO_MEMLEAK_EBPF_ORIGIN"),
        ")"
    ),
    about = "Find memory leaks with eBPF uprobes on the allocator",
    long_about = "Traces every allocation of a program from its first instruction (eBPF uprobes \
                  on libc's allocator, attached before the program execs) and reports what it \
                  never freed, grouped by call stack, when it exits.",
    after_help = outcome::help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Trace any program: cargo memleak exec [OPTIONS] [INTERVAL [COUNT]] -- PROGRAM [ARGS]...
    #[command(
        override_usage = "cargo memleak exec [OPTIONS] [INTERVAL [COUNT]] -- PROGRAM [ARGS]...",
        after_help = "With INTERVAL (seconds; BCC's `memleak -c CMD INTERVAL`), the allocations \
                      outstanding for at least --older are reported on stdout every INTERVAL \
                      while the program runs (COUNT times at most), then the report at exit \
                      classifies them. With --sample-rate or --combined-only the report at exit \
                      lists the outstanding allocations unclassified: a scan for pointers needs \
                      every block and its address."
    )]
    Exec(ExecArgs),
    /// Build a bin target with frame pointers, trace it, and check its leaks against the
    /// baseline: cargo memleak run [OPTIONS] [INTERVAL [COUNT]] [-- ARGS]...
    Run(Box<RunArgs>),
    /// Build the test targets with frame pointers and run every test as its own traced
    /// process; a test fails if it fails or loses more than its budget. Doc tests too.
    #[command(
        after_help = "Builds like `cargo test --no-run`. Each test runs as `BIN --exact NAME \
                      --nocapture` in its package's directory, in a process group of its own. \
                      Doc tests (when no target is named, or with --doc) are collected from \
                      `cargo test --doc` with cargo-memleak as rustdoc's runner, then each runs \
                      as its own traced process.\n\nExit codes: 0 all passed, 100 a test \
                      failed or lost more than its budget, 101 build failed, 102 cargo \
                      metadata failed, 104 listing tests failed, 4 no tests matched, 96 \
                      malformed baseline or suppressions, 130 interrupted (SIGINT), 143 \
                      terminated (SIGTERM), 2 usage, 69/70/77 tool errors."
    )]
    Test(Box<TestArgs>),
    /// Trace a process that is already running and report its outstanding allocations every
    /// INTERVAL seconds, like BCC's `memleak -p PID`.
    #[command(
        after_help = "Allocations made before the probes were attached are not seen, and frees \
                      of them are counted, not reported; nothing is classified as lost or \
                      reachable (use `exec` or `run` for that, from the program's start). Ends \
                      after COUNT reports, on Ctrl-C, or when the process exits.\n\nExit \
                      codes: 0 ok, 3 a report was incomplete (the tracer dropped data), 2 \
                      usage, 127 no such process, 69/70/77 tool errors."
    )]
    Attach(AttachArgs),
    /// Trace the kernel's allocators (kmalloc, kmem_cache, pages; or per-CPU with --percpu) and
    /// report outstanding allocations by kernel stack every INTERVAL seconds, like BCC's
    /// `memleak` without -p.
    #[command(
        after_help = "Uses the kmem and percpu tracepoints (tracefs is mounted if it is not). \
                      Allocations made before tracing began are not seen. Ends after COUNT \
                      reports or on Ctrl-C.\n\nExit codes: 0 ok, 3 a report was incomplete \
                      (the tracer dropped data), 2 usage, 69/70/77 tool errors."
    )]
    Kernel(KernelArgs),
    /// Trace one test that a runner starts as its own process (cargo-nextest's wrapper
    /// scripts) and judge it against its budget: cargo memleak wrap [OPTIONS] -- BIN --exact
    /// NAME ...
    #[command(
        override_usage = "cargo memleak wrap [OPTIONS] -- TEST-BINARY [ARGS]...",
        after_help = "Under cargo-nextest (a `[scripts.wrapper]` whose command is \
                      `cargo-memleak memleak wrap --`), the test is the one nextest names in \
                      NEXTEST_BINARY_ID and NEXTEST_TEST_NAME, and the baseline is \
                      NEXTEST_WORKSPACE_ROOT's memleak-baseline.json; elsewhere give \
                      --binary-id and start the binary with `--exact NAME`. The test's output \
                      comes first, then its leak report when it fails. With --bless, its budget \
                      is written into the baseline under a lock (on its directory), so that \
                      every test of a run can bless at once; entries of tests that are gone stay \
                      (`cargo memleak test --bless` drops them).\n\nExit codes: 0 passed, 2 \
                      usage, 69/70/77 tool errors, 96 malformed baseline or suppressions, 100 \
                      the test failed or lost more than its budget, 126 not executable, 127 \
                      not found, 130 interrupted (SIGINT), 143 terminated (SIGTERM)."
    )]
    Wrap(Box<WrapArgs>),
}

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The test binary's id, as `cargo memleak test` and nextest name it (`pkg`,
    /// `pkg::test-name`, `pkg::bin/name`) [default: NEXTEST_BINARY_ID]
    #[arg(long, value_name = "ID")]
    pub binary_id: Option<String>,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Show this many lost stacks under a failed test.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
    #[command(flatten)]
    pub full_stacks: FullStacksArg,
    #[command(flatten)]
    pub follow: FollowArgs,
    /// Print where the time went (loading the probes, each phase of the test, removing them)
    /// on stderr.
    #[arg(long)]
    pub timings: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// The test binary and its arguments.
    #[arg(last = true, required = true, value_name = "TEST-BINARY")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process to trace (all its threads).
    #[arg(short, long)]
    pub pid: u32,
    /// Draw each report's outstanding stacks as an SVG flame graph of bytes here (the latest
    /// report's stays).
    #[arg(long, value_name = "PATH")]
    pub flamegraph: Option<PathBuf>,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Trace per-CPU allocations (percpu_alloc_percpu/percpu_free_percpu) instead of slab and
    /// page allocations.
    #[arg(long)]
    pub percpu: bool,
    /// BCC's workaround for frees the tracepoints miss: an allocation at an address still
    /// recorded is taken for the free of the old block (counted as missing_free) instead of
    /// being reported as a drop.
    #[arg(long, help_heading = "Tracing")]
    pub wa_missing_free: bool,
    #[command(flatten)]
    pub periodic: PeriodicArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// BCC memleak's periodic report options.
#[derive(Debug, Args)]
#[command(next_help_heading = "Report")]
pub struct PeriodicArgs {
    /// Seconds between reports.
    #[arg(default_value_t = 5.0)]
    pub interval: f64,
    /// Number of reports [default: until Ctrl-C]
    pub count: Option<u64>,
    /// Leave out allocations younger than this many milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub older: u64,
    #[command(flatten)]
    pub stacks: StackArgs,
    /// Show the address (pages: frame number), size and age of every outstanding allocation.
    #[arg(short = 'a', long)]
    pub show_allocs: bool,
    /// Report format: text, bcc (BCC memleak's text, byte for byte), one JSON object per report
    /// per line, or folded stacks.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,
    #[command(flatten)]
    pub full_stacks: FullStacksArg,
}

/// `--full-stacks` for `exec`, `run`, `attach` and `kernel`.
#[derive(Debug, Args)]
pub struct FullStacksArg {
    /// Text reports: show every frame of a stack, with offsets, full paths and module names
    /// (by default a stack starts past the allocator and ends above the runtime's frames,
    /// paths are short, offsets and hashes hidden).
    #[arg(long = "full-stacks")]
    pub full: bool,
}

impl FullStacksArg {
    /// The short view's style: paths relative to `root`.
    fn style(&self, root: Option<PathBuf>) -> Short {
        Short {
            full: self.full,
            workspace_root: root,
        }
    }
}

impl PeriodicArgs {
    /// The options of `attach` (paths relative to `root`, the current directory) and `kernel`.
    fn options(&self, record: &RecordArgs, root: Option<PathBuf>) -> Result<watch::Options> {
        record.check(&self.stacks, self.show_allocs)?;
        periodic_options(
            self.interval,
            self.count,
            self.older,
            &self.stacks,
            self.show_allocs,
            (self.format, self.full_stacks.style(root)),
        )
    }
}

/// The periodic reports' options, checked: `attach` and `kernel`, and `exec INTERVAL`.
fn periodic_options(
    interval: f64,
    count: Option<u64>,
    older: u64,
    stacks: &StackArgs,
    show_allocs: bool,
    (format, style): (FormatArg, Short),
) -> Result<watch::Options> {
    if !(interval.is_finite() && interval > 0.0) {
        return Err(Error::Selection(format!(
            "INTERVAL {interval} is not a positive number of seconds"
        )));
    }
    stacks.check()?;
    Ok(watch::Options {
        interval: Duration::from_secs_f64(interval),
        count,
        report: PeriodicOptions {
            older: Duration::from_millis(older),
            stacks: StackOptions {
                top: stacks.top,
                sort: stacks.sort.into(),
                min_size: stacks.min_size,
                max_size: stacks.max_size,
                show_allocs,
            },
            missing_free_is_free: false,
        },
        format: format.into(),
        style,
    })
}

/// What the probes record besides the outstanding allocations: BCC memleak's `-t`, `-s` and
/// `--combined-only`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct RecordArgs {
    /// Print every allocation and free as it happens, on stderr: size, address, pid, tid, and
    /// an allocation's innermost frame. A line lost (ring buffer full) is a drop.
    #[arg(short = 't', long)]
    pub trace: bool,
    /// Record one allocation in N of each thread (a per-thread count: its first, its N+1th,
    /// ...), for watching a busy process cheaply. Figures are of the recorded allocations and
    /// say so; nothing is scaled. Not for `test` or `run` (the leak gate needs them all).
    #[arg(short = 's', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_rate: Option<u32>,
    /// Keep outstanding totals per stack in the kernel (16-byte key + 16-byte total per stack,
    /// updated atomically) and read only those, not every allocation's record (16-byte key +
    /// 24-byte value each; still kept, to account its free): a report then costs per stack,
    /// not per allocation. No single blocks: --older, -a, -z and -Z do not apply, and exec's
    /// report at exit is not classified. Not for `test` or `run`.
    #[arg(long)]
    pub combined_only: bool,
    /// Do not follow the heap's peak (an atomic add and a look at the peak per allocation,
    /// and a read of the block and an atomic add per free, less): no peak, allocation or
    /// allocated-bytes figures, and no peak or allocation budgets to gate.
    #[arg(long)]
    pub no_peak: bool,
}

impl RecordArgs {
    fn recording(&self) -> Recording {
        Recording {
            sample_rate: self.sample_rate.unwrap_or(1),
            combined: self.combined_only,
            trace: self.trace,
            no_ages: false,
            no_heap: self.no_peak,
        }
    }

    /// `--combined-only` has no single blocks to filter or list.
    fn check(&self, stacks: &StackArgs, show_allocs: bool) -> Result<()> {
        if !self.combined_only {
            return Ok(());
        }
        let per_block = [
            (show_allocs, "--show-allocs"),
            (stacks.min_size.is_some(), "--min-size"),
            (stacks.max_size.is_some(), "--max-size"),
        ];
        match per_block.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(Error::Selection(format!(
                "{flag} needs each allocation's record; --combined-only keeps totals per stack"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses what the leak gate (`test`, `run`) cannot take: sampled or combined figures,
    /// and, for `test` (tests run several at once), trace lines.
    fn refuse_for_gate(&self, command: &str, trace_too: bool) -> Result<()> {
        let refused = [
            (self.sample_rate.is_some(), "--sample-rate"),
            (self.combined_only, "--combined-only"),
            (trace_too && self.trace, "--trace"),
        ];
        match refused.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(Error::Selection(format!(
                "{flag} does not apply to `{command}`: its leak gate judges every allocation of \
                 every traced process; use `exec`, `attach` or `kernel`"
            ))),
            None => Ok(()),
        }
    }
}

/// Which stacks a report shows, and in what order.
#[derive(Debug, Args)]
#[command(next_help_heading = "Report")]
pub struct StackArgs {
    /// Show this many stacks, largest first.
    #[arg(short = 'T', long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Order stacks by outstanding bytes or by number of allocations.
    #[arg(long, value_enum, default_value_t = SortKeyArg::Size)]
    pub sort: SortKeyArg,
    /// Only count allocations of at least this many bytes.
    #[arg(short = 'z', long, value_name = "BYTES")]
    pub min_size: Option<u64>,
    /// Only count allocations of at most this many bytes.
    #[arg(short = 'Z', long, value_name = "BYTES")]
    pub max_size: Option<u64>,
}

impl StackArgs {
    fn check(&self) -> Result<()> {
        match (self.min_size, self.max_size) {
            (Some(min), Some(max)) if min > max => Err(Error::Selection(format!(
                "--min-size {min} is larger than --max-size {max}; swap them"
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub selection: TestSelectionArgs,
    #[command(flatten)]
    pub filters: TestFilterArgs,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Run this many tests at once [default: the number of CPUs].
    #[arg(short, long, value_name = "N", help_heading = "Test run")]
    pub jobs: Option<usize>,
    /// Kill a test (and its process group) that runs longer than this, and fail it.
    #[arg(long, value_name = "SECS", help_heading = "Test run")]
    pub timeout: Option<f64>,
    /// Write JUnit XML here: one testsuite per test binary, one testcase per test.
    #[arg(long, value_name = "PATH", help_heading = "Test run")]
    pub junit: Option<PathBuf>,
    /// Output: libtest's (human), or one JSON object per event on stdout.
    #[arg(long, value_enum, default_value_t = MessageFormatArg::Human, help_heading = "Test run")]
    pub message_format: MessageFormatArg,
    /// Also print an `::error file=,line=` workflow command per failed test, at the first
    /// workspace frame of its biggest lost stack, and append a table of the failures to
    /// $GITHUB_STEP_SUMMARY [default: github when GITHUB_ACTIONS=true, else none]
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Test run")]
    pub annotations: Option<AnnotationsArg>,
    /// `folded`: print the lost stacks as folded stacks (`[binary id] test;frame;... bytes`) on
    /// stdout instead of libtest's output.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        help_heading = "Test run",
        conflicts_with = "message_format"
    )]
    pub format: Option<TestFormatArg>,
    /// Draw the lost stacks of every test as an SVG flame graph of bytes here.
    #[arg(long, value_name = "PATH", help_heading = "Test run")]
    pub flamegraph: Option<PathBuf>,
    #[command(flatten)]
    pub follow: FollowArgs,
    #[command(flatten)]
    pub user: UserArgs,
    /// Show this many lost stacks under a failed test.
    #[arg(
        short = 'T',
        long,
        default_value_t = 10,
        value_name = "N",
        help_heading = "Test run"
    )]
    pub top: usize,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Start no test after the first failure (the running ones finish).
    #[arg(long, help_heading = "Test run", overrides_with = "no_fail_fast")]
    pub fail_fast: bool,
    /// Run every test whatever fails (the default; accepted for cargo's sake).
    #[arg(long, help_heading = "Test run", overrides_with = "fail_fast")]
    pub no_fail_fast: bool,
    /// Build the test targets, then stop.
    #[arg(long, help_heading = "Test run", conflicts_with = "list")]
    pub no_run: bool,
    /// List the selected tests (`[binary id] name: test`, or JSON with --message-format json)
    /// instead of running them.
    #[arg(long, help_heading = "Test run")]
    pub list: bool,
    /// Report a test still running after this many seconds (nextest's SLOW), and again after
    /// each further period.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60.0,
        help_heading = "Test run"
    )]
    pub slow_timeout: f64,
    /// Show every frame of a stack, with offsets, full paths and module names (by default a
    /// stack starts past the allocator, paths are short, offsets and hashes hidden).
    #[arg(long, help_heading = "Test run")]
    pub full_stacks: bool,
    /// Where the tests' time went: each test's phases in its JSON `test-finished` (`timings`),
    /// and the run's totals after the results.
    #[arg(long, help_heading = "Test run")]
    pub timings: bool,
    /// Run a test that failed by itself (its exit status, a panic, --timeout) again, up to N
    /// times; one that passes then is reported flaky (nextest's retries). A leak or incomplete
    /// verdict is not retried: a leak that shows in some runs only is a leak on a path the
    /// test takes in some runs only, and a retry would let it through (--retries-leaks).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Test run")]
    pub retries: u32,
    /// With --retries, retry a test whose leak (or incomplete) verdict failed it too.
    #[arg(long, help_heading = "Test run", requires = "retries")]
    pub retries_leaks: bool,
    /// No line for passing tests.
    #[arg(short, long, help_heading = "Test run", conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the captured output of passing tests too.
    #[arg(short, long, help_heading = "Test run")]
    pub verbose: bool,
    /// Coloring: auto (a terminal, unless NO_COLOR is set), always, never
    /// [default: CARGO_TERM_COLOR, else auto]
    #[arg(long, value_enum, value_name = "WHEN", help_heading = "Test run")]
    pub color: Option<ColorArg>,
    /// libtest arguments after `--`: TESTNAME, --exact, --skip, --ignored, --include-ignored;
    /// --test-threads N is -j N; --nocapture and --show-output are accepted.
    #[arg(last = true, value_name = "ARGS")]
    pub libtest_args: Vec<String>,
}

/// `cargo memleak test --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TestFormatArg {
    /// Folded stacks of lost memory, for flame graph tools.
    Folded,
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

impl ColorArg {
    /// Whether to color: the flag, else `CARGO_TERM_COLOR`, else auto (stdout a terminal and
    /// `NO_COLOR` unset or empty).
    fn resolve(choice: Option<ColorArg>) -> bool {
        let choice = choice.or_else(|| match std::env::var("CARGO_TERM_COLOR").ok()?.as_str() {
            "always" => Some(ColorArg::Always),
            "never" => Some(ColorArg::Never),
            _ => Some(ColorArg::Auto),
        });
        match choice.unwrap_or(ColorArg::Auto) {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
                    && std::io::IsTerminal::is_terminal(&std::io::stdout())
            }
        }
    }
}

/// The leak gate's options, shared by `run` and `test`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Leak gate")]
pub struct GateArgs {
    /// Leak budgets [default: memleak-baseline.json at the workspace root; absent: none].
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,
    /// LeakSanitizer-style suppressions, one `leak:PATTERN` per line (function, module or
    /// file), on top of the baseline's.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<PathBuf>,
    /// What fails the gate, comma-separated: lost memory (always), still-reachable memory,
    /// the heap's peak, the number of allocations, each over its budget.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lost")]
    pub fail_on: Vec<FailOnArg>,
    /// How far a peak or an allocation count may exceed its budget and still pass: a
    /// percentage (`10%` or `10`), and never less than 64 KiB of peak or 64 allocations
    /// (libtest's own threads move a test's figures a little); `0%` allows nothing more.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_TOLERANCE, value_parser = parse_percent)]
    pub tolerance: u32,
    /// Report an incomplete trace (drops, unreadable memory) but do not fail for it.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Write what this run lost as the budgets (atomically; refused if a test could not be
    /// measured), then pass.
    #[arg(long)]
    pub bless: bool,
}

/// `--tolerance`'s default, in percent.
const DEFAULT_TOLERANCE: u32 = 10;

/// `--tolerance`: a whole percentage, `10%` or `10`, up to 1000.
fn parse_percent(text: &str) -> std::result::Result<u32, String> {
    let number = text.strip_suffix('%').unwrap_or(text);
    match number.parse::<u32>() {
        Ok(percent) if percent <= 1000 => Ok(percent),
        _ => Err(format!(
            "`{text}` is not a percentage from 0 to 1000 (write it as 10% or 10)"
        )),
    }
}

impl GateArgs {
    /// `--no-peak` leaves nothing for `--fail-on peak` or `allocations` to check.
    fn check(&self, record: &RecordArgs) -> Result<()> {
        let fail_on = self.fail_on();
        if record.no_peak && (fail_on.peak || fail_on.allocations) {
            return Err(Error::Selection(
                "--no-peak leaves no peak or allocation count for --fail-on to check: drop one \
                 of them"
                    .into(),
            ));
        }
        Ok(())
    }

    fn fail_on(&self) -> FailOn {
        FailOn {
            reachable: self.fail_on.contains(&FailOnArg::Reachable),
            peak: self.fail_on.contains(&FailOnArg::Peak),
            allocations: self.fail_on.contains(&FailOnArg::Allocations),
            tolerance_percent: self.tolerance,
        }
    }

    /// The gate's own flags, as a rerun of one test needs them.
    fn rerun_args(&self) -> Vec<String> {
        let fail_on = self.fail_on();
        let mut gated = Vec::new();
        for (word, on) in [
            ("reachable", fail_on.reachable),
            ("peak", fail_on.peak),
            ("allocations", fail_on.allocations),
        ] {
            if on {
                gated.push(word);
            }
        }
        let mut args = Vec::new();
        if !gated.is_empty() {
            args.extend(["--fail-on".to_owned(), gated.join(",")]);
            if (fail_on.peak || fail_on.allocations) && self.tolerance != DEFAULT_TOLERANCE {
                args.extend(["--tolerance".to_owned(), format!("{}%", self.tolerance)]);
            }
        }
        args
    }

    fn gate(&self) -> Gate {
        Gate {
            baseline: self.baseline.clone(),
            suppressions: self.suppressions.clone(),
            fail_on: self.fail_on(),
            allow_incomplete: self.allow_incomplete,
            bless: self.bless,
        }
    }
}

/// The libtest arguments `cargo memleak test -- ...` accepts.
#[derive(Debug, Parser)]
#[command(name = "cargo memleak test --", no_binary_name = true)]
struct TrailingFilters {
    #[command(flatten)]
    filters: TestFilterArgs,
    /// Accepted for libtest compatibility: output is always captured per test.
    #[arg(long)]
    nocapture: bool,
    /// Accepted for libtest compatibility: the output of passing tests is shown with -v.
    #[arg(long)]
    show_output: bool,
    /// libtest's thread count: here, how many test processes run at once (-j).
    #[arg(long, value_name = "N")]
    test_threads: Option<usize>,
}

/// The libtest arguments after `--` that are accepted.
const TRAILING_ACCEPTED: &str = "TESTNAME, --exact, --skip FILTER, --ignored, --include-ignored, \
                                 --test-threads N, --nocapture, --show-output";

impl TestArgs {
    fn options(&self) -> Result<test::Options> {
        let mut filters = self.filters.options()?;
        let mut jobs = self.jobs;
        if !self.libtest_args.is_empty() {
            let trailing = TrailingFilters::try_parse_from(&self.libtest_args).map_err(|err| {
                // clap's first line without its `error: ` (ours precedes it), and no tip to
                // put `--` before what already follows it.
                let rendered = err.to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                Error::Selection(format!(
                    "after `--`: {first}; the libtest arguments accepted there are \
                     {TRAILING_ACCEPTED}"
                ))
            })?;
            if trailing.nocapture || trailing.show_output {
                eprintln!(
                    "memleak: note: --nocapture and --show-output change nothing here: each \
                     test's output is captured and shown when it fails (-v: always)"
                );
            }
            if let Some(threads) = trailing.test_threads {
                if jobs.is_some_and(|jobs| jobs != threads) {
                    return Err(Error::Selection(format!(
                        "-j {} and --test-threads {threads} disagree; give one",
                        jobs.unwrap_or_default()
                    )));
                }
                jobs = Some(threads);
            }
            let more = trailing.filters;
            if let Some(filter) = more.filter {
                if filters.filter.is_some() {
                    return Err(Error::Selection(
                        "give one TESTNAME filter, before or after `--`, not both".into(),
                    ));
                }
                filters.filter = Some(filter);
            }
            filters.exact |= more.exact;
            filters.skip.extend(more.skip);
            filters.ignored |= more.ignored;
            filters.include_ignored |= more.include_ignored;
            if more.partition.is_some() {
                return Err(Error::Selection(
                    "--partition is cargo memleak's option: give it before `--`".into(),
                ));
            }
        }
        if filters.ignored && filters.include_ignored {
            return Err(Error::Selection(
                "--ignored and --include-ignored exclude each other; pick one".into(),
            ));
        }
        let timeout = match self.timeout {
            None => None,
            Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
            Some(secs) => {
                return Err(Error::Selection(format!(
                    "--timeout {secs} is not a positive number of seconds"
                )));
            }
        };
        let jobs = match jobs {
            Some(0) => {
                return Err(Error::Selection("--jobs must be at least 1".into()));
            }
            Some(jobs) => jobs,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if !(self.slow_timeout.is_finite() && self.slow_timeout > 0.0) {
            return Err(Error::Selection(format!(
                "--slow-timeout {} is not a positive number of seconds",
                self.slow_timeout
            )));
        }
        Ok(test::Options {
            build: self.build.options(),
            selection: self.selection.options(),
            mode: if self.list {
                test::Mode::List
            } else if self.no_run {
                test::Mode::NoRun
            } else {
                test::Mode::Run
            },
            run: TestOptions {
                filters,
                jobs,
                timeout,
                gate: self.gate.gate(),
                junit: self.junit.clone(),
                message_format: match self.format {
                    Some(TestFormatArg::Folded) => MessageFormat::Folded,
                    None => self.message_format.into(),
                },
                flamegraph: self.flamegraph.clone(),
                top: self.top,
                trace: {
                    self.trace.record.refuse_for_gate("test", true)?;
                    self.gate.check(&self.trace.record)?;
                    let mut trace = self.trace.options(Limits::test_run());
                    // Nothing in a test run reads ages.
                    trace.recording.no_ages = true;
                    trace
                },
                follow_children: self.follow.or(FollowChildren::Workspace),
                github_annotations: match self.annotations {
                    Some(kind) => kind == AnnotationsArg::Github,
                    None => std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true"),
                },
                fail_fast: self.fail_fast && !self.no_fail_fast,
                slow_timeout: Some(Duration::from_secs_f64(self.slow_timeout)),
                display: Display {
                    quiet: self.quiet,
                    verbose: self.verbose,
                    color: ColorArg::resolve(self.color),
                    full_stacks: self.full_stacks,
                },
                rerun_args: self.rerun_args(),
                run_as: crate::user::select(self.user.user.as_deref())?,
                timings: self.timings,
                retries: self.retries,
                retry_leaks: self.retries_leaks,
            },
        })
    }

    /// The options of this run that a failed test's rerun command repeats: what changes the
    /// build or the verdict.
    fn rerun_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut path = |flag: &str, value: &Option<PathBuf>| {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value.display().to_string()]);
            }
        };
        path("--manifest-path", &self.build.manifest_path);
        path("--baseline", &self.gate.baseline);
        path("--suppressions", &self.gate.suppressions);
        for features in &self.build.features {
            args.extend(["--features".to_owned(), features.clone()]);
        }
        for (flag, on) in [
            ("--all-features", self.build.all_features),
            ("--no-default-features", self.build.no_default_features),
            ("--release", self.build.release),
            ("--allow-incomplete", self.gate.allow_incomplete),
        ] {
            if on {
                args.push(flag.to_owned());
            }
        }
        if let Some(profile) = &self.build.profile {
            args.extend(["--profile".to_owned(), profile.clone()]);
        }
        args.extend(self.gate.rerun_args());
        args
    }
}

/// Which processes the traced program (or test) starts are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FollowChildrenArg {
    /// Every child.
    All,
    /// Children that run one of the workspace's built targets, and children that do not exec.
    Workspace,
    /// None: only the program itself.
    None,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct FollowArgs {
    /// Trace the processes it starts too, from their first instruction, each scanned at its
    /// own exit [default: `test` and `run`: workspace; `exec`: none]
    #[arg(long, value_enum, value_name = "WHICH")]
    pub follow_children: Option<FollowChildrenArg>,
}

impl FollowArgs {
    fn or(&self, default: FollowChildren) -> FollowChildren {
        match self.follow_children {
            None => default,
            Some(FollowChildrenArg::All) => FollowChildren::All,
            Some(FollowChildrenArg::Workspace) => FollowChildren::Workspace,
            Some(FollowChildrenArg::None) => FollowChildren::None,
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct UserArgs {
    /// Run what cargo-memleak starts (cargo, build scripts, tests, the program) as this user,
    /// with its HOME, CARGO_HOME and RUSTUP_HOME; only the tracer keeps root's privileges
    /// [default: under sudo, the invoking user (SUDO_UID); `--user root` keeps root]
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub periodic: ExecPeriodicArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
    #[command(flatten)]
    pub user: UserArgs,
    /// [INTERVAL [COUNT]] -- the program to trace (looked up in PATH) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<OsString>,
}

/// `exec`'s and `run`'s periodic reports while the program runs (BCC's `memleak -c CMD
/// INTERVAL [COUNT]`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Report")]
pub struct ExecPeriodicArgs {
    /// With INTERVAL: leave allocations younger than this many milliseconds out of the
    /// reports while it runs.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub older: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub selection: RunSelectionArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
    #[command(flatten)]
    pub user: UserArgs,
    #[command(flatten)]
    pub periodic: ExecPeriodicArgs,
    /// Report the outstanding allocations every INTERVAL seconds while it runs.
    pub interval: Option<f64>,
    /// Number of reports while it runs [default: until it exits]
    pub count: Option<u64>,
    /// Arguments for the binary.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Report")]
pub struct ReportArgs {
    #[command(flatten)]
    pub stacks: StackArgs,
    /// Show the address and size of every outstanding allocation.
    #[arg(short = 'a', long)]
    pub show_allocs: bool,
    /// List still-reachable stacks too (memory a pointer still reaches at exit), not only
    /// lost ones.
    #[arg(long)]
    pub show_reachable: bool,
    /// Report format: text, bcc (BCC memleak's text, byte for byte), JSON, or folded stacks.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,
    #[command(flatten)]
    pub full_stacks: FullStacksArg,
    /// Write the report to this file instead of stderr.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Print where the time went (load, attach, program, read, symbolize, scan, detach) to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Draw the lost stacks (outstanding ones with --show-reachable) as an SVG flame graph of
    /// bytes here.
    #[arg(long, value_name = "PATH")]
    pub flamegraph: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct TraceArgs {
    /// The allocator's shared object [default: the libc this system runs programs with].
    #[arg(short = 'O', long, value_name = "PATH")]
    pub allocator_object: Option<PathBuf>,
    /// The allocator's functions are PREFIXmalloc, PREFIXfree, ... (BCC's option): probed in
    /// the allocator object instead of libc's names, and in the traced executable too.
    #[arg(long, value_name = "PREFIX", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub symbols_prefix: Option<String>,
    #[command(flatten)]
    pub record: RecordArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The eBPF maps' sizes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct LimitArgs {
    /// Room for this many outstanding allocations, across the processes traced at once
    /// [default: 1048576; `test`: 8388608]
    #[arg(long, value_name = "N")]
    pub max_allocs: Option<u32>,
    /// Room for this many distinct stacks, counted per process, across the processes traced at
    /// once.
    #[arg(long, default_value_t = Limits::default().max_stacks, value_name = "N")]
    pub max_stacks: u32,
}

impl ReportArgs {
    fn options(&self) -> Result<exec::ReportOptions> {
        self.stacks.check()?;
        Ok(exec::ReportOptions {
            report: report::Options {
                stacks: StackOptions {
                    top: self.stacks.top,
                    sort: self.stacks.sort.into(),
                    min_size: self.stacks.min_size,
                    max_size: self.stacks.max_size,
                    show_allocs: self.show_allocs,
                },
                show_reachable: self.show_reachable,
            },
            format: self.format.into(),
            style: self.full_stacks.style(current_dir()),
            output: self.output.clone(),
            timings: self.timings,
            periodic: None,
            flamegraph: self.flamegraph.clone(),
        })
    }

    /// The report options, with the reports every INTERVAL while it runs when asked.
    fn with_periodic(
        &self,
        interval: Option<f64>,
        count: Option<u64>,
        periodic: &ExecPeriodicArgs,
        record: &RecordArgs,
    ) -> Result<exec::ReportOptions> {
        record.check(&self.stacks, self.show_allocs)?;
        let mut options = self.options()?;
        if let Some(interval) = interval {
            options.periodic = Some(periodic_options(
                interval,
                count,
                periodic.older,
                &self.stacks,
                self.show_allocs,
                (self.format, self.full_stacks.style(current_dir())),
            )?);
        } else if count.is_some() {
            return Err(Error::Selection("COUNT needs an INTERVAL before it".into()));
        }
        Ok(options)
    }
}

impl TraceArgs {
    fn options(&self, defaults: Limits) -> TraceOptions {
        TraceOptions {
            allocator_object: self.allocator_object.clone(),
            symbols_prefix: self.symbols_prefix.clone(),
            limits: self.limits.limits(defaults),
            recording: self.record.recording(),
        }
    }
}

impl LimitArgs {
    fn limits(&self, defaults: Limits) -> Limits {
        Limits {
            max_allocs: self.max_allocs.unwrap_or(defaults.max_allocs),
            max_stacks: self.max_stacks,
        }
    }
}

// The library's options as clap takes them: the same fields, flags and help texts, so the
// library's types carry no clap derives.

/// How to build, shared by `run` and `test`: manifest, features, profile, target dir, lock
/// flags, as cargo takes them.
#[derive(Clone, Debug, Default, Args)]
pub struct BuildArgs {
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH", help_heading = "Package selection")]
    pub manifest_path: Option<PathBuf>,
    /// Space or comma separated list of features to activate.
    #[arg(
        short = 'F',
        long,
        value_name = "FEATURES",
        help_heading = "Feature selection"
    )]
    pub features: Vec<String>,
    /// Activate all available features.
    #[arg(long, help_heading = "Feature selection")]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long, help_heading = "Feature selection")]
    pub no_default_features: bool,
    /// Build artifacts in release mode, with optimizations.
    #[arg(
        short,
        long,
        help_heading = "Compilation options",
        conflicts_with = "profile"
    )]
    pub release: bool,
    /// Build artifacts with the specified profile.
    #[arg(long, value_name = "NAME", help_heading = "Compilation options")]
    pub profile: Option<String>,
    /// Directory for all generated artifacts [default: <cargo's target dir>/memleak].
    #[arg(long, value_name = "DIR", help_heading = "Compilation options")]
    pub target_dir: Option<PathBuf>,
    /// Assert that `Cargo.lock` will remain unchanged.
    #[arg(long, help_heading = "Manifest options")]
    pub locked: bool,
    /// Equivalent to specifying both --locked and --offline.
    #[arg(long, help_heading = "Manifest options")]
    pub frozen: bool,
    /// Run without accessing the network.
    #[arg(long, help_heading = "Manifest options")]
    pub offline: bool,
}

/// `cargo run`'s selection: one package, one bin or example.
#[derive(Clone, Debug, Default, Args)]
pub struct RunSelectionArgs {
    /// Package with the target to run.
    #[arg(short, long, value_name = "SPEC", help_heading = "Package selection")]
    pub package: Option<String>,
    /// Name of the bin target to run.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Target selection",
        conflicts_with = "example"
    )]
    pub bin: Option<String>,
    /// Name of the example target to run.
    #[arg(long, value_name = "NAME", help_heading = "Target selection")]
    pub example: Option<String>,
}

/// `cargo test`'s selection of packages and targets.
#[derive(Clone, Debug, Default, Args)]
pub struct TestSelectionArgs {
    /// Package to test (repeatable).
    #[arg(short, long, value_name = "SPEC", help_heading = "Package selection")]
    pub package: Vec<String>,
    /// Test all packages in the workspace.
    #[arg(long, help_heading = "Package selection")]
    pub workspace: bool,
    /// Test all targets (lib, bins, tests, examples; not the doc tests, as in cargo).
    #[arg(long, help_heading = "Target selection")]
    pub all_targets: bool,
    /// Exclude packages from the test (with --workspace).
    #[arg(long, value_name = "SPEC", help_heading = "Package selection")]
    pub exclude: Vec<String>,
    /// Test only this package's library.
    #[arg(long, help_heading = "Target selection")]
    pub lib: bool,
    /// Test all binaries.
    #[arg(long, help_heading = "Target selection")]
    pub bins: bool,
    /// Test only the specified binary.
    #[arg(long, value_name = "NAME", help_heading = "Target selection")]
    pub bin: Vec<String>,
    /// Test all integration test targets.
    #[arg(long, help_heading = "Target selection")]
    pub tests: bool,
    /// Test only the specified integration test target.
    #[arg(long, value_name = "NAME", help_heading = "Target selection")]
    pub test: Vec<String>,
    /// Test all examples.
    #[arg(long, help_heading = "Target selection")]
    pub examples: bool,
    /// Test only the specified example.
    #[arg(long, value_name = "NAME", help_heading = "Target selection")]
    pub example: Vec<String>,
    /// Test only the libraries' documentation (doc tests also run when no target is named).
    #[arg(
        long,
        help_heading = "Target selection",
        conflicts_with_all = ["all_targets", "lib", "bins", "bin", "tests", "test", "examples", "example"]
    )]
    pub doc: bool,
}

/// Which tests run, as `cargo test` takes it after the options.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Test filters")]
pub struct TestFilterArgs {
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
    /// Run one shard of the tests: count:K/N deals them round-robin in list order, hash:K/N
    /// by a stable hash of binary id and name (for CI matrices).
    #[arg(long, value_name = "KIND:K/N")]
    pub partition: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AnnotationsArg {
    /// GitHub Actions workflow commands and step summary.
    Github,
    /// None.
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MessageFormatArg {
    /// libtest's output.
    #[default]
    Human,
    /// One JSON object per line and event on stdout (and no libtest output).
    Json,
}

/// What counts toward the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FailOnArg {
    /// Lost memory (definitely and indirectly lost); always counts.
    #[default]
    Lost,
    /// Still-reachable memory over its budget.
    Reachable,
    /// The most heap a test (or run) had live at once, over its budget.
    Peak,
    /// How many allocations it made, over its budget.
    Allocations,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SortKeyArg {
    /// Outstanding bytes.
    #[default]
    Size,
    /// Number of outstanding allocations.
    Count,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// BCC memleak's layout with the short view of each stack (the user's frames first).
    #[default]
    Text,
    /// BCC memleak's text, byte for byte.
    Bcc,
    Json,
    /// Folded stacks (`frame;frame;frame bytes`), for flame graph tools.
    Folded,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            manifest_path: self.manifest_path.clone(),
            features: self.features.clone(),
            all_features: self.all_features,
            no_default_features: self.no_default_features,
            release: self.release,
            profile: self.profile.clone(),
            target_dir: self.target_dir.clone(),
            locked: self.locked,
            frozen: self.frozen,
            offline: self.offline,
        }
    }
}

impl RunSelectionArgs {
    fn options(&self) -> RunSelection {
        RunSelection {
            package: self.package.clone(),
            bin: self.bin.clone(),
            example: self.example.clone(),
        }
    }
}

impl TestSelectionArgs {
    fn options(&self) -> TestSelection {
        TestSelection {
            package: self.package.clone(),
            workspace: self.workspace,
            all_targets: self.all_targets,
            exclude: self.exclude.clone(),
            lib: self.lib,
            bins: self.bins,
            bin: self.bin.clone(),
            tests: self.tests,
            test: self.test.clone(),
            examples: self.examples,
            example: self.example.clone(),
            doc: self.doc,
        }
    }
}

impl TestFilterArgs {
    fn options(&self) -> Result<TestFilters> {
        Ok(TestFilters {
            filter: self.filter.clone(),
            exact: self.exact,
            skip: self.skip.clone(),
            ignored: self.ignored,
            include_ignored: self.include_ignored,
            partition: self
                .partition
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(Error::Selection)?,
        })
    }
}

impl From<MessageFormatArg> for MessageFormat {
    fn from(arg: MessageFormatArg) -> Self {
        match arg {
            MessageFormatArg::Human => MessageFormat::Human,
            MessageFormatArg::Json => MessageFormat::Json,
        }
    }
}

impl From<SortKeyArg> for SortKey {
    fn from(arg: SortKeyArg) -> Self {
        match arg {
            SortKeyArg::Size => SortKey::Size,
            SortKeyArg::Count => SortKey::Count,
        }
    }
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Text => Format::Text,
            FormatArg::Bcc => Format::Bcc,
            FormatArg::Json => Format::Json,
            FormatArg::Folded => Format::Folded,
        }
    }
}

/// Parses `args` (argv, with or without cargo's `memleak` word).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // `cargo memleak ...` runs `cargo-memleak memleak ...`.
    if args.get(1).is_some_and(|arg| arg == "memleak") {
        args.remove(1);
    }
    Cli::try_parse_from(args)
}

/// The exit code for a command line clap would not parse (after it printed why), or for help
/// and `--version` (after they were printed).
pub fn parse_error_exit_code(err: &clap::Error) -> u8 {
    if err.use_stderr() {
        outcome::USAGE.code
    } else {
        outcome::OK.code
    }
}

/// What the short view's paths are relative to in `exec` and `attach` (`run`: the workspace).
fn current_dir() -> Option<PathBuf> {
    std::env::current_dir().ok()
}

impl Cli {
    /// Checks every argument and builds the command's options.
    pub fn validate(self) -> Result<commands::Command> {
        Ok(match self.command {
            Commands::Exec(args) => commands::Command::Exec(Box::new(args.options()?)),
            Commands::Run(args) => commands::Command::Run(Box::new(args.options()?)),
            Commands::Test(args) => commands::Command::Test(Box::new(args.options()?)),
            Commands::Attach(args) => commands::Command::Attach(attach::Options {
                pid: args.pid,
                periodic: args.periodic.options(&args.trace.record, current_dir())?,
                trace: args.trace.options(Limits::default()),
                flamegraph: args.flamegraph,
            }),
            Commands::Wrap(args) => {
                let (binary_id, test) = wrap::which_test(&args.command, args.binary_id.clone())?;
                args.trace.record.refuse_for_gate("wrap", true)?;
                args.gate.check(&args.trace.record)?;
                // One test process, as `exec` traces one program: a test run's room for many
                // at once took 60 ms more a test to create (measured with --timings).
                let mut trace = args.trace.options(Limits::default());
                // Nothing in a test's verdict reads ages.
                trace.recording.no_ages = true;
                commands::Command::Wrap(Box::new(wrap::Options {
                    command: args.command,
                    binary_id,
                    test,
                    gate: args.gate.gate(),
                    trace,
                    follow_children: args.follow.or(FollowChildren::Workspace),
                    top: args.top,
                    full_stacks: args.full_stacks.full,
                    timings: args.timings,
                }))
            }
            Commands::Kernel(args) => {
                // Kernel frames have no source paths.
                let mut periodic = args.periodic.options(&args.record, None)?;
                periodic.report.missing_free_is_free = args.wa_missing_free;
                commands::Command::Kernel(kernel::Options {
                    percpu: args.percpu,
                    periodic,
                    limits: args.limits.limits(Limits::default()),
                    recording: args.record.recording(),
                })
            }
        })
    }
}

/// `exec`'s words before the program: `[INTERVAL [COUNT]] -- PROGRAM [ARGS]...` arrives as
/// `INTERVAL [COUNT] -- PROGRAM ...` (clap keeps a `--` that follows a value of the trailing
/// argument), `-- PROGRAM ...` as `PROGRAM ...`. Returns (interval, count, the command).
fn split_interval(words: &[OsString]) -> Result<(Option<f64>, Option<u64>, &[OsString])> {
    let Some(dashes) = words.iter().position(|word| word == "--") else {
        return Ok((None, None, words));
    };
    let before: Vec<&str> = words[..dashes]
        .iter()
        .map(|word| word.to_str().unwrap_or(""))
        .collect();
    let numeric = |word: &str| word.parse::<f64>().is_ok();
    if before.is_empty() || before.len() > 2 || !before.iter().all(|word| numeric(word)) {
        // A `--` among the program's own arguments.
        return Ok((None, None, words));
    }
    let interval = before[0].parse::<f64>().ok();
    let count = match before.get(1) {
        None => None,
        Some(count) => Some(count.parse::<u64>().map_err(|_| {
            Error::Selection(format!("COUNT {count} is not a whole number of reports"))
        })?),
    };
    Ok((interval, count, &words[dashes + 1..]))
}

impl ExecArgs {
    fn options(&self) -> Result<exec::Options> {
        let (interval, count, command) = split_interval(&self.command)?;
        let (program, rest) = command.split_first().ok_or_else(|| {
            Error::Selection(
                "no program given; usage: cargo memleak exec [INTERVAL [COUNT]] -- PROGRAM \
                 [ARGS]..."
                    .into(),
            )
        })?;
        let mut command = Command::new(program.clone(), rest.to_vec());
        command.run_as = crate::user::select(self.user.user.as_deref())?;
        // Outside a workspace, its targets are the program itself.
        command.follow = self.follow.or(FollowChildren::None).follow(|| {
            crate::spawn::resolve_program(program)
                .ok()
                .and_then(|path| std::fs::canonicalize(path).ok())
                .into_iter()
                .collect()
        });
        Ok(exec::Options {
            command,
            report: self.report.with_periodic(
                interval,
                count,
                &self.periodic,
                &self.trace.record,
            )?,
            trace: self.trace.options(Limits::default()),
        })
    }
}

impl RunArgs {
    fn options(&self) -> Result<run::Options> {
        self.trace.record.refuse_for_gate("run", false)?;
        self.gate.check(&self.trace.record)?;
        Ok(run::Options {
            build: self.build.options(),
            selection: self.selection.options(),
            report: self.report.with_periodic(
                self.interval,
                self.count,
                &self.periodic,
                &self.trace.record,
            )?,
            gate: self.gate.gate(),
            trace: self.trace.options(Limits::default()),
            follow_children: self.follow.or(FollowChildren::Workspace),
            args: self.args.clone(),
            run_as: crate::user::select(self.user.user.as_deref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;
    use crate::outcome::{self, Command};

    /// The codes of a help text's `Exit codes: ...` line (`69/70/77 tool errors` is three),
    /// ascending; `None` when it has none.
    fn listed_codes(help: &str) -> Option<Vec<u8>> {
        let line = help.split("Exit codes: ").nth(1)?.lines().next()?;
        let mut codes: Vec<u8> = line
            .split(", ")
            .filter_map(|item| {
                let first = item.split_whitespace().next()?;
                first
                    .split('/')
                    .map(|code| code.parse::<u8>().ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .collect();
        codes.sort_unstable();
        Some(codes)
    }

    #[test]
    fn help_texts_list_exactly_the_exit_codes_of_the_table() {
        let mut cli = Cli::command();
        let top = cli.render_long_help().to_string();
        assert!(top.contains(&outcome::help()), "{top}");
        let all: Vec<u8> = outcome::TABLE.iter().map(|row| row.code).collect();
        assert_eq!(listed_codes(&top), Some(all));
        for command in Command::ALL {
            let sub = cli
                .find_subcommand_mut(command.name())
                .unwrap_or_else(|| panic!("subcommand {}", command.name()));
            let help = sub.render_long_help().to_string();
            match listed_codes(&help) {
                Some(codes) => assert_eq!(
                    codes,
                    outcome::codes_of(command),
                    "`cargo memleak {} --help`: {help}",
                    command.name()
                ),
                // exec and run are documented by the top-level list only.
                None => assert!(
                    matches!(command, Command::Exec | Command::Run),
                    "`cargo memleak {} --help` lists its exit codes",
                    command.name()
                ),
            }
        }
    }
}
