//! `cargo memleak exec`: trace any program from its first instruction and report what it left
//! outstanding at exit. `run` traces its binary the same way ([`trace_and_report`]).
//!
//! Invariants: the report is written (to `--output` or stderr) before the probes are detached,
//! so the user sees it while the kernel removes them; the outcome is the program's failure
//! first, then an incomplete trace, then success.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    error::Result,
    fsutil,
    outcome::Outcome,
    report::{self, Format, Report},
    session::{self, TraceOptions, TracedRun},
    spawn::Command,
    symbolize::Symbolizer,
};

/// `cargo memleak exec`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub command: Command,
    pub report: ReportOptions,
    pub trace: TraceOptions,
}

/// How the report at exit is made and where it goes (`exec` and `run`).
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    pub report: report::Options,
    pub format: Format,
    /// Write the report here instead of stderr.
    pub output: Option<PathBuf>,
    /// Print where the time went to stderr.
    pub timings: bool,
}

/// A traced run and the report written of it.
pub struct Traced {
    pub run: TracedRun,
    pub report: Report,
}

impl Traced {
    /// The outcome when the program failed or its trace is incomplete (and that is not
    /// allowed); `None` when it succeeded and was traced completely.
    pub fn failure(&self, allow_incomplete: bool) -> Option<Outcome> {
        if !self.report.exit.success() {
            return Some(Outcome::ProgramFailed);
        }
        if !self.report.is_complete() && !allow_incomplete {
            return Some(Outcome::Incomplete);
        }
        None
    }
}

pub fn exec(options: &Options) -> Result<Outcome> {
    let traced = trace_and_report(&options.command, &options.report, &options.trace)?;
    Ok(traced.failure(false).unwrap_or(Outcome::Ok))
}

/// Traces `command`, writes its report, and detaches.
pub fn trace_and_report(
    command: &Command,
    options: &ReportOptions,
    trace: &TraceOptions,
) -> Result<Traced> {
    let start = Instant::now();
    let tracer = Mutex::new(session::load_tracer(trace)?);
    let load = start.elapsed();
    let symbolizer = Symbolizer::new();
    let run = session::trace(&tracer, &symbolizer, command)?;
    let report = report::build(&run, &options.report);
    let rendered = report::render(&report, options.format);
    match &options.output {
        Some(path) => fsutil::write_atomically(path, rendered.as_bytes())?,
        None => {
            let _ = std::io::stderr().write_all(rendered.as_bytes());
        }
    }
    // Waits for the probes' removal (see Tracer::detach).
    let start = Instant::now();
    drop(tracer);
    if options.timings {
        let t = run.timings;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        eprintln!(
            "memleak: timings: load {:.1} ms, attach {:.1} ms, program {:.1} ms, read {:.1} ms, \
             symbolize {:.1} ms, scan {:.1} ms, detach {:.1} ms",
            ms(load),
            ms(t.attach),
            ms(t.program),
            ms(t.read),
            ms(t.symbolize),
            ms(t.scan),
            ms(start.elapsed())
        );
    }
    Ok(Traced { run, report })
}
