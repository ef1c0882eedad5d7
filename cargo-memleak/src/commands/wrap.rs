//! `cargo memleak wrap -- BIN --exact NAME ...`: one test traced and judged, for a runner that
//! starts each test as its own process, cargo-nextest's wrapper scripts first of all. The test
//! is known by nextest's environment (`NEXTEST_BINARY_ID`, `NEXTEST_TEST_NAME`,
//! `NEXTEST_WORKSPACE_ROOT`) or by `--binary-id` and the `--exact NAME` it is started with; it
//! is traced from its first instruction like a test of `cargo memleak test`, judged against its
//! entry in the baseline, and the leak report follows its output. `--bless` writes its budget
//! into the baseline, under a lock, so that the processes of one nextest run can all bless.
//!
//! Invariants: the test's own output is passed on whole before the report; the exit code is 0
//! only when the test passed, its trace is complete (unless `--allow-incomplete`) and it lost
//! no more than its budget; interrupting cargo-memleak kills the test's process group.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    build::{Executable, Harness},
    error::{Error, Result},
    gate::{Blessing, Gate, Measured},
    outcome::Outcome,
    report::text::Short,
    session::{self, TraceOptions},
    spawn::FollowChildren,
    testrun::{TestOptions, interrupt::Interrupt, list::TestCase, reporter::failure, run},
};

/// `cargo memleak wrap`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    /// The test's binary and its arguments, as the runner gave them.
    pub command: Vec<OsString>,
    /// The test binary's id.
    pub binary_id: String,
    /// The test's name.
    pub test: String,
    pub gate: Gate,
    pub trace: TraceOptions,
    pub follow_children: FollowChildren,
    pub top: usize,
    pub full_stacks: bool,
    /// `--timings`: where the time went, on stderr.
    pub timings: bool,
}

/// The test a runner started: its binary id (`--binary-id`, else `NEXTEST_BINARY_ID`) and
/// name (`NEXTEST_TEST_NAME`, else the `--exact NAME` it was started with).
pub fn which_test(command: &[OsString], binary_id: Option<String>) -> Result<(String, String)> {
    if command.is_empty() {
        return Err(Error::Selection(
            "no test to run: give it after `--` (nextest does: `cargo-memleak memleak wrap --`)"
                .into(),
        ));
    }
    let binary_id = binary_id
        .or_else(|| std::env::var("NEXTEST_BINARY_ID").ok())
        .ok_or_else(|| {
            Error::Selection(
                "no binary id: run under cargo-nextest (NEXTEST_BINARY_ID), or give --binary-id"
                    .into(),
            )
        })?;
    let name = std::env::var("NEXTEST_TEST_NAME")
        .ok()
        .or_else(|| exact_name(&command[1..]))
        .ok_or_else(|| {
            Error::Selection(
                "no test name: run under cargo-nextest (NEXTEST_TEST_NAME), or start the test \
                 binary with `--exact NAME`"
                    .into(),
            )
        })?;
    Ok((binary_id, name))
}

pub fn wrap(options: &Options) -> Result<Outcome> {
    let Some((program, args)) = options.command.split_first() else {
        return Err(Error::Selection("no test to run".into()));
    };
    let (binary_id, name) = (options.binary_id.clone(), options.test.clone());
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        context: "reading the current directory".into(),
        source,
    })?;
    let workspace_root = std::env::var_os("NEXTEST_WORKSPACE_ROOT")
        .map(PathBuf::from)
        .or_else(|| lockfile_dir(&cwd))
        .unwrap_or_else(|| cwd.clone());
    let gate = options.gate.load(&workspace_root)?;
    // One process (and what it forks): its maps are made when it is attached, not ahead.
    let start = std::time::Instant::now();
    let tracer = session::load_tracer(&options.trace)?;
    let load = start.elapsed();
    let program_path = PathBuf::from(program);
    // The workspace's targets, as far as this process knows them: the test binary (forked)
    // and the package's binaries cargo and nextest name in CARGO_BIN_EXE_<name>.
    let follow = options.follow_children.follow(|| {
        std::iter::once(program_path.clone())
            .chain(
                std::env::vars_os()
                    .filter(|(name, _)| name.to_string_lossy().starts_with("CARGO_BIN_EXE_"))
                    .map(|(_, value)| PathBuf::from(value)),
            )
            .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
            .collect()
    });
    let case = TestCase {
        binary: Arc::new(Executable {
            path: program_path,
            id: binary_id,
            package_dir: cwd,
            env: Vec::new(),
            bins: Vec::new(),
            harness: Harness::Libtest,
        }),
        key: name.clone(),
        name,
        ignored: args.iter().any(|arg| arg == "--ignored"),
    };
    let test_options = TestOptions {
        gate: options.gate.clone(),
        trace: options.trace.clone(),
        follow_children: options.follow_children,
        top: options.top,
        timings: options.timings,
        ..TestOptions::default()
    };
    let interrupt = Interrupt::install()?;
    let (result, tracer) = run::run_alone(tracer, &gate, &test_options, &case, follow, &interrupt)?;
    // The test's output first, as the runner would show it unwrapped.
    if let Some(output) = &result.output {
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(output.as_bytes());
        let _ = std::io::stdout().flush();
    }
    let style = Short {
        workspace_root: Some(workspace_root.clone()),
        full: options.full_stacks,
    };
    let mut outcome = Outcome::Ok;
    // The output was passed on above: the failure text without it.
    let without_output = crate::testrun::TestResult {
        output: None,
        ..result.clone()
    };
    if let Some(message) = failure::failure_message(&without_output, options.top, &style, &[]) {
        eprint!(
            "---- memleak: [{}] {} ----\n{message}",
            result.binary_id, result.test
        );
        outcome = Outcome::Failed;
    } else {
        eprintln!(
            "memleak: [{}] {}: lost {} bytes in {} blocks (budget: {})",
            result.binary_id,
            result.test,
            result.lost.bytes,
            result.lost.blocks,
            result
                .budget
                .as_ref()
                .map_or("none".to_owned(), |budget| format!(
                    "{} bytes in {} blocks",
                    budget.lost.bytes, budget.lost.blocks
                ))
        );
    }
    if let Some(failure) = result.failures.0.iter().find_map(|failure| match failure {
        crate::testrun::Failure::Interrupted { signal } => Some(*signal),
        _ => None,
    }) {
        outcome = Outcome::Interrupted(failure);
    } else if options.gate.bless {
        let blessing = gate.bless_one(
            Measured {
                binary_id: &result.binary_id,
                test: &result.budget_key,
                judgement: &result.judgement,
                children: &result.children,
                measured: !result.failures.unmeasured(),
            },
            None,
        )?;
        match blessing {
            Blessing::Written { .. } => {
                eprintln!(
                    "memleak: blessed [{}] {} in {}",
                    result.binary_id,
                    result.test,
                    gate.path.display()
                );
            }
            Blessing::Refused { .. } => {
                eprintln!(
                    "memleak: not blessing [{}] {}: it failed or was not fully traced",
                    result.binary_id, result.test
                );
                outcome = Outcome::Failed;
            }
        }
    }
    let release = std::time::Instant::now();
    // Waits for the kernel to remove the probes.
    drop(tracer);
    if let Some(timings) = result.timings.as_ref().filter(|_| options.timings) {
        let phases = serde_json::to_value(timings).unwrap_or_default();
        let phases: Vec<String> = phases
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, ms)| {
                format!(
                    "{} {:.1}",
                    name.trim_end_matches("_ms"),
                    ms.as_f64().unwrap_or_default()
                )
            })
            .collect();
        eprintln!(
            "memleak: timings (ms): load {:.1}, {}, probes removed {:.1}, in all {:.1}",
            load.as_secs_f64() * 1e3,
            phases.join(", "),
            release.elapsed().as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(outcome)
}

/// The NAME of `--exact NAME` (the one test a process-per-test runner starts).
fn exact_name(args: &[OsString]) -> Option<String> {
    let exact = args.iter().any(|arg| arg == "--exact");
    let names: Vec<&OsString> = args
        .iter()
        .filter(|arg| !arg.to_string_lossy().starts_with('-'))
        .collect();
    match (exact, names.as_slice()) {
        (true, [name]) => Some(name.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// The nearest directory from `dir` up that holds a `Cargo.lock`: the workspace's root.
fn lockfile_dir(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
}
